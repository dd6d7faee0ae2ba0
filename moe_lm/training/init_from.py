"""`init_from`: start training from another model's weights instead of a random init.

- `hf:DIR`: a directory written by `moe_lm.export`, or a compatible HF DeepseekV3/V2 one. The architecture is the
  directory's (config.json; the run's `model.*` keys that differ are replaced, and printed); training-only keys
  (balance losses, dropout, dispatch) stay the run's. The data must use the directory's tokenizer when it has
  one. On resume the checkpoint's weights win; the architecture is resolved the same way, so they fit.
- `ckpt:PATH`: a moe_lm checkpoint. The architecture is this run's; what the two share is copied, and a dense
  checkpoint's MLPs become this run's experts (upcycling, moe_lm/training/upcycle.py). The data must use the
  checkpoint's tokenizer. With grow.domain, the checkpoint's MoE gains one routed expert (moe_lm/training/grow.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer

from moe_lm.config import TrainConfig
from moe_lm.data.bpe import load_tokenizer
from moe_lm.model import MoETransformer
from moe_lm.model.hf_mapping import ARCHITECTURE_FIELDS


def source_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.init_from.removeprefix("hf:"))


def _checkpoint_path(cfg: TrainConfig) -> str | None:
    return cfg.init_from.removeprefix("ckpt:") if cfg.init_from.startswith("ckpt:") else None


def resolve_init(cfg: TrainConfig) -> tuple[TrainConfig, Tokenizer | None]:
    """(cfg with the model architecture of init_from, the tokenizer that comes with it or None)."""
    if not cfg.init_from:
        return cfg, None
    path = _checkpoint_path(cfg)
    if path is not None:
        from moe_lm.training.upcycle import check_compatible, read_source

        src_cfg, _, tok_json = read_source(path)
        if cfg.grow.domain:
            from moe_lm.training.grow import check_growable

            check_growable(src_cfg, cfg.model)
        else:
            check_compatible(src_cfg, cfg.model)
        return cfg, Tokenizer.from_str(tok_json) if tok_json else None
    from moe_lm.io.hf_dir import hf_model_config

    path = source_dir(cfg)
    model = hf_model_config(path, cfg.model)
    changed = [f"{f}={getattr(cfg.model, f)}->{getattr(model, f)}" for f in ARCHITECTURE_FIELDS
               if getattr(cfg.model, f) != getattr(model, f)]
    if changed:
        print(f"init_from: the architecture is {path}'s: model.{', model.'.join(changed)}")
    tok_file = path / "tokenizer.json"
    return dataclasses.replace(cfg, model=model), load_tokenizer(tok_file) if tok_file.is_file() else None


def load_init_weights(model: MoETransformer, cfg: TrainConfig) -> None:
    from moe_lm.io.hf_dir import load_hf_weights

    path = _checkpoint_path(cfg)
    if path is not None:
        from moe_lm.training.upcycle import load_upcycled

        return load_upcycled(model, path)

    load_hf_weights(model, source_dir(cfg))
    print(f"init_from: weights from {source_dir(cfg)}")
