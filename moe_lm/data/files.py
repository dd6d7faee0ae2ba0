"""Safe file operations: atomic writes (a temporary file beside the target, then a rename, so a crash never leaves
half a file) and a directory lock (so two processes never write one output directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from moe_lm.config import ConfigError


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


class DirectoryLock:
    """An exclusive lock on `<directory>/.lock`, held while the context is open.

    The OS releases it when the process ends, however it ends (SIGKILL included), so a stale lock never blocks a
    rerun. A second process gets a ConfigError naming `key`, the directory and the holder's pid.
    """

    def __init__(self, directory: Path, key: str, what: str) -> None:
        self.path, self.key, self.what = Path(directory) / ".lock", key, what
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.key}: {self.path.parent} is in use by another {self.what} (pid {holder}); "
                              f"wait for it to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
