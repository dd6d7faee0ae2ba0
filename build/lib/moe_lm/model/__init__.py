"""Pure-PyTorch model code (no Lightning, Hydra or wandb imports here)."""

from moe_lm.model.transformer import MoETransformer, ModelOutput

__all__ = ["MoETransformer", "ModelOutput"]
