"""Read local files with the upstream record schemas: JSONL (one object per line) or parquet.

Malformed records are not fatal: a line that is not UTF-8 or not JSON comes back as a Skip with its reason,
so the caller can count it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Union

from moe_lm.data.formatters import Skip


def read_records(path: str | Path) -> Iterator[Union[dict[str, Any], Skip]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"local source: no such file: {p}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(p).iter_batches():
            yield from batch.to_pylist()
        return
    with p.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield Skip("not UTF-8")
                continue
            except json.JSONDecodeError:
                yield Skip("bad JSON")
                continue
            yield rec if isinstance(rec, dict) else Skip("record is not a JSON object")
