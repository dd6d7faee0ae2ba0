"""A moe_lm checkpoint as an HF directory (`python -m moe_lm.export`): the model, its tokenizer and its model card."""

from __future__ import annotations

from pathlib import Path

from moe_lm.errors import CheckpointError
from moe_lm.io.checkpoint import load_model, model_config_from
from moe_lm.io.hf_dir import check_out, write_hf_dir
from moe_lm.io.model_card import model_card
from moe_lm.model.counting import param_breakdown


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "float32", max_shard_mb: int = 2000) -> list[str]:
    """moe_lm checkpoint -> HF directory with tokenizer and model card; returns the file names written."""
    check_out(Path(out))  # before the (slow) load
    model, tok, run_cfg = load_model(ckpt)
    if tok is None:
        raise CheckpointError(f"ckpt: {ckpt} carries no tokenizer; the directory would be unusable without one")
    cfg = model_config_from(run_cfg["model"])
    card = model_card(cfg, run_cfg, param_breakdown(model, cfg), Path(ckpt), Path(out).resolve().name)
    return write_hf_dir(model, cfg, tok, Path(out), card, dtype, max_shard_mb * 2**20)
