"""Shared entry-point wrapper: bad input ends in one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import sys
from typing import Callable


def run(main: Callable[[list[str]], None], errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> None:
    try:
        main(sys.argv[1:])
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
