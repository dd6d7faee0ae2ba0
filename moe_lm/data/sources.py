"""Read local files with the upstream record schemas: JSONL (one object per line) or parquet.

Malformed records are not fatal: a line that is not UTF-8 or not JSON comes back as a Skip with its reason,
so the caller can count it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Union

from moe_lm.config import ConfigError, DomainsDataConfig, SourceConfig
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
        for chunk in f:
            for raw in chunk.splitlines():  # records end at \n, \r\n or \r (JSON text holds no raw CR)
                if raw.strip():
                    yield parse_record(raw)


def parse_record(raw: bytes) -> Union[dict[str, Any], Skip]:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Skip("not UTF-8")
    except json.JSONDecodeError:
        return Skip("bad JSON")
    return rec if isinstance(rec, dict) else Skip("record is not a JSON object")


def mirror_repo(src: SourceConfig, mirror: str) -> Path:
    """A hub repo's copy under data.hub_mirror: <mirror>/<owner>/<name>, or <mirror>/<owner>/<name>@<revision>."""
    return Path(mirror) / (f"{src.hub_id}@{src.revision}" if src.revision else src.hub_id)


def hub_load_args(src: SourceConfig, mirror: str = "") -> tuple[tuple, dict[str, Any]]:
    """`load_dataset` arguments for a source: the repo (its loading code, or its card's configs), or its files
    through the generic json/parquet builders, which never run a repo's loading script. With a mirror (a local
    copy of the repos), the same calls with the repo's directory in place of its hub id."""
    if not src.data_files:
        if mirror:
            return (str(mirror_repo(src, mirror)), src.config), {"split": src.split, "streaming": True}
        revision = {"revision": src.revision} if src.revision else {}
        return (src.hub_id, src.config), {"split": src.split, "streaming": True, **revision}
    name = src.data_files.lower()
    builder = "parquet" if name.endswith(".parquet") else "json" if ".json" in name else None
    if builder is None:
        raise ConfigError(f"data_files of {src.hub_id}: {src.data_files!r} is neither JSON lines nor parquet")
    at = f"@{src.revision}" if src.revision else ""
    files = (f"{mirror_repo(src, mirror)}/{src.data_files}" if mirror
             else f"hf://datasets/{src.hub_id}{at}/{src.data_files}")
    return (builder,), {"data_files": files, "split": "train", "streaming": True}  # one glob = one "train" split


OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, or a saved login), if any."""
    from huggingface_hub import get_token

    return get_token()


def iter_hub(src: SourceConfig, retries: int = 5, backoff_s: float = 2.0, mirror: str = "") -> Iterator[dict[str, Any]]:
    """Stream a source from the HF hub (or from its copy under `mirror`), retrying the connection with exponential
    backoff.

    A failure mid-stream restarts the stream and skips the rows already yielded.
    """
    from datasets import load_dataset

    if mirror and not mirror_repo(src, mirror).is_dir():
        raise FileNotFoundError(f"data.hub_mirror: no copy of {src.hub_id} at {mirror_repo(src, mirror)}")
    for var in OFFLINE_VARS if not mirror else ():  # streaming always reads the hub: offline, say so now instead of retrying for a minute
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise ConnectionError(f"source {src.hub_id}: {var} is set, so the hub cannot be streamed; use "
                                  f"data.source=local (with paths.data_root) or unset {var}")
    if src.gated and not mirror and not hub_token():
        warnings.warn(f"source {src.hub_id}: gated on the hub (accept its terms on the dataset page, then "
                      f"`huggingface-cli login` or set HF_TOKEN); skipped")
        return
    done, attempt = 0, 0
    while True:
        try:
            args, kwargs = hub_load_args(src, mirror)
            ds = load_dataset(*args, **kwargs)
            for i, row in enumerate(ds):
                if i >= done:
                    done += 1
                    yield row
            return
        except (ConnectionError, TimeoutError, OSError) as e:
            attempt += 1
            if attempt > retries:
                raise ConnectionError(f"source {src.hub_id} ({src.config}, {src.split}): hub unreachable after "
                                   f"{retries} retries: {e}") from e
            time.sleep(backoff_s * 2 ** (attempt - 1))


def iter_source(src: SourceConfig, data: DomainsDataConfig) -> Iterator[Union[dict[str, Any], Skip]]:
    """The records of one source: streamed from the hub, or read from data.local_root with the same schema."""
    if data.source == "hub":
        return iter_hub(src, mirror=data.hub_mirror)
    if not src.local_file:
        return iter(())
    return read_records(Path(data.local_root) / src.local_file)
