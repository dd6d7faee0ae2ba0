import os

# Nothing in the test suite may wait on a network time-out.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from moe_lm.config import ModelConfig  # noqa: E402


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=101, d_model=64, n_layers=2, n_heads=4, max_seq_len=128, q_lora_rank=24,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_shared_experts=1,
                n_routed_experts=5, moe_intermediate_size=32, top_k=2, dense_intermediate_size=48,
                n_kv_heads=2, head_dim=16)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
