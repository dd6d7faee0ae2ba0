"""Shared fixtures: a tiny model config, fake domain shards, the shared sample data (skipped when absent)."""

import json
import os
from pathlib import Path

# Nothing in the test suite may wait on a network time-out.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from moe_lm.config import ModelConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # real samples of every domain's datasets (../shared/data)
DOMAINS = ["math", "code", "science", "legal", "chat", "web"]


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=101, d_model=64, n_layers=2, n_heads=4, max_seq_len=128, q_lora_rank=24,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_shared_experts=1,
                n_routed_experts=5, moe_intermediate_size=32, top_k=2, dense_intermediate_size=48,
                n_kv_heads=2, head_dim=16)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def make_model_cfg():
    """A factory: make_model_cfg(**overrides) -> a tiny ModelConfig (MLA, 5 routed experts, 2 layers)."""
    return tiny_model_config


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA} (the shared/ folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def fake_shards(tmp_path) -> Path:
    """Six domains of prepared shards (4,000 train and 400 val tokens each) under tmp_path/shards; domain d uses
    its own 80 token ids (d * 80 ...), so a router can tell the domains apart."""
    root = tmp_path / "shards"
    for d, name in enumerate(DOMAINS):
        (root / name).mkdir(parents=True)
        (d * 80 + np.arange(4000) % 80).astype(np.uint16).tofile(root / name / "train.bin")
        (d * 80 + np.arange(400) % 80).astype(np.uint16).tofile(root / name / "val.bin")
        (root / name / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"train": 4000, "val": 400}}))
    return root


@pytest.fixture
def make_domains_cfg():
    """A factory: make_domains_cfg(shards_dir, **overrides) -> DomainsDataConfig with math, code (experts 0, 1)
    and web (no expert), seq_len 8, batch 4."""
    from moe_lm.config import DomainConfig, DomainsDataConfig, SourceConfig

    def make(shards, **overrides) -> DomainsDataConfig:
        domains = {n: DomainConfig(expert=e, token_budget=1000, sources=[SourceConfig(formatter="text")])
                   for n, e in (("math", 0), ("code", 1), ("web", None))}
        base = dict(shards=str(shards), seq_len=8, batch_size=4, token_budget_range=[1, 10 ** 9], domains=domains)
        base.update(overrides)
        return DomainsDataConfig(**base)

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A moe_tiny checkpoint trained 2 steps on three lines (with its tokenizer)."""
    from moe_lm.cli import compose
    from moe_lm.training.run import train

    tmp = tmp_path_factory.mktemp("evalckpt")
    (tmp / "lines.txt").write_text("Question: what is 2 plus 2?\nAnswer: 4 #### 4\nthe quick brown fox.\n")
    cfg = compose(["+experiment=overfit_100_lines", "model=moe_tiny", "model.vocab_size=1024", "precision=fp32",
                   f"data.path={tmp / 'lines.txt'}", "data.sampling=lines", "trainer.max_steps=2",
                   "eval.reproduce_lines=0", "trainer.progress_bar=false", "logger.csv=false", f"out_dir={tmp}/run"])
    train(cfg, cfg.out_dir)
    return tmp / "run" / "checkpoints" / "final.ckpt"
