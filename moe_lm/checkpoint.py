"""Rebuild model and tokenizer from a Lightning checkpoint alone (its config and tokenizer travel with it)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from moe_lm.config import ModelConfig
from moe_lm.model import MoETransformer


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ckpt: no such file: {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or corrupt file, or not a checkpoint at all
        raise ValueError(f"ckpt: {p} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "moe_lm_config"):
        if key not in ckpt:
            raise ValueError(f"ckpt: {p} has no '{key}' (not written by moe_lm.train?)")
    return ckpt


def load_model(path: str | Path, device: str = "cpu") -> tuple[MoETransformer, Tokenizer | None, dict]:
    """(model in eval mode, tokenizer or None, the run's config as a dict)."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["moe_lm_config"]
    model = MoETransformer(ModelConfig(**cfg["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    tok = Tokenizer.from_str(ckpt["tokenizer_json"]) if "tokenizer_json" in ckpt else None
    return model.to(device).eval(), tok, cfg
