"""The one checkpoint loader, for inference and for resuming: safe (`weights_only=True`), checked, and clear
about what is wrong. A checkpoint carries the run's resolved config and tokenizer, so it alone rebuilds both."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from moe_lm.config import ConfigError, ModelConfig
from moe_lm.errors import CheckpointError
from moe_lm.io.hf_dir import is_hf_dir, load_hf_dir
from moe_lm.model import MoETransformer


def read_checkpoint(path: str | Path, key: str = "ckpt", map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True; `key` is the setting that named the file (ckpt, checkpoint.resume)."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{key}: {p} is a directory without config.json: neither a checkpoint file nor an "
                              f"exported model directory")
    if not p.is_file():
        raise FileNotFoundError(f"{key}: no such checkpoint: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or corrupt file, or not a checkpoint at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, pickle.UnpicklingError):  # never suggest weights_only=False, as torch's message does
            first = "not written by torch.save, or holding objects other than tensors and plain data"
        raise CheckpointError(f"{key}: {p} is not a readable checkpoint ({type(e).__name__}: {first})") from e


def load_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """A moe_lm checkpoint: readable, with weights and the run's config."""
    ckpt = read_checkpoint(path, key)
    for name in ("state_dict", "moe_lm_config"):
        if name not in ckpt:
            raise CheckpointError(f"{key}: {path} has no '{name}' (not written by moe_lm.train?)")
    return ckpt


def model_config_from(saved: dict[str, Any], key: str = "ckpt") -> ModelConfig:
    """The ModelConfig a checkpoint was trained with; keys this version does not know are named."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise CheckpointError(f"{key}: the checkpoint's model config has keys this version of moe_lm does not know: "
                              f"{unknown} (written by a newer version?)")
    return ModelConfig(**saved)


def check_device(device: str) -> None:
    """A device this machine has, named in the error otherwise (before any weight is read)."""
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device} asked for, but torch {torch.__version__} sees no CUDA GPU here; use "
                          f"device=cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {device} asked for, but MPS is not available here; use device=cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {device!r} is not a device (cpu, cuda, cuda:N or mps)")


def check_finite(model: MoETransformer, path: str | Path, key: str = "ckpt") -> None:
    """Weights that are NaN or infinite are named: such a model generates nothing and scores nan without a word."""
    bad = [(name, int((~torch.isfinite(t)).sum())) for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(f"{name} ({n:,} values)" for name, n in bad[:3])
        raise CheckpointError(f"{key}: {path} holds non-finite weights in {len(bad)} tensors: {shown}"
                              f"{', ...' if len(bad) > 3 else ''}; the run that wrote it diverged")


def load_model(path: str | Path, device: str = "cpu") -> tuple[MoETransformer, Tokenizer | None, dict[str, Any]]:
    """(model in eval mode, tokenizer or None, the run's config as a dict) from a checkpoint file or a model
    directory (`moe_lm.export`'s, or a compatible HF DeepseekV3/V2 one: its config then holds only `model`)."""
    check_device(device)
    if is_hf_dir(path):
        model, tok, model_cfg = load_hf_dir(path)
        check_finite(model, path)
        return model.to(device).eval(), tok, {"model": dataclasses.asdict(model_cfg)}
    ckpt = load_checkpoint(path)
    cfg = ckpt["moe_lm_config"]
    model = MoETransformer(model_config_from(cfg["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    check_finite(model, path)
    tok = Tokenizer.from_str(ckpt["tokenizer_json"]) if "tokenizer_json" in ckpt else None
    return model.to(device).eval(), tok, cfg
