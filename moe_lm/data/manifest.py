"""A prepared domain's manifest (`<shards>/<domain>/meta.json`) and the checks that its token files match it:
a truncated, padded or foreign shard, or a damaged manifest, is named and refused, never read short."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from moe_lm.config import ConfigError

SHARD_DTYPES = ("uint16", "uint32")
REPREPARE = "delete the domain's folder and prepare it again (python -m moe_lm.prepare data=domains)"


def read_meta(path: Path, key: str = "data.shards", splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """A domain's meta.json, checked to be the manifest `prepare` writes (dtype, token counts of `splits`)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {path} is not valid JSON ({e}); {REPREPARE}") from e
    tokens = meta.get("tokens") if isinstance(meta, dict) else None
    if (not isinstance(tokens, dict) or meta.get("dtype") not in SHARD_DTYPES
            or not all(isinstance(tokens.get(s), int) and tokens[s] >= 0 for s in splits)):
        raise ConfigError(f"{key}: {path} is not a shard manifest written by moe_lm.prepare (it needs dtype "
                          f"{' or '.join(SHARD_DTYPES)} and token counts for {' and '.join(splits)}); {REPREPARE}")
    return meta


def check_shard_files(folder: Path, meta: dict[str, Any], key: str = "data.shards",
                      splits: tuple[str, ...] = ("train", "val")) -> None:
    """Each split's .bin holds exactly the tokens its meta.json counts: a truncated, padded or foreign file is
    refused, never read short."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in splits:
        path = folder / f"{split}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"{key}: {path} not found; {REPREPARE}")
        want, size = meta["tokens"][split] * itemsize, path.stat().st_size
        if size != want:
            raise ConfigError(f"{key}: {path} holds {size:,} bytes, but its meta.json counts {meta['tokens'][split]:,} "
                              f"{meta['dtype']} tokens ({want:,} bytes): truncated or not written by prepare; "
                              f"{REPREPARE}")


def check_token_ids(folder: Path, meta: dict[str, Any], vocab_size: int, key: str = "data.shards") -> None:
    """Every token id of the domain's shards is below the model's vocabulary (read in chunks of 16M tokens)."""
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        if not meta["tokens"][split]:
            continue
        ids = np.memmap(path, dtype=meta["dtype"], mode="r")
        top = max(int(ids[i:i + 2 ** 24].max()) for i in range(0, len(ids), 2 ** 24))
        if top >= vocab_size:
            raise ConfigError(f"{key}: {path} holds token id {top:,}, not below model.vocab_size={vocab_size:,}: "
                              f"made with another tokenizer, or not a token shard; {REPREPARE}")
