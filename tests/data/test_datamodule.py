import json

import numpy as np
import pytest
import torch

from moe_lm.config import DataConfig, DomainConfig, SourceConfig
from moe_lm.data.datamodule import DomainDataModule
from moe_lm.data.sampling import BatchPlan


def make_cfg(shards, **kw) -> DataConfig:
    domains = {n: DomainConfig(expert=e, token_budget=1000, sources=[SourceConfig(formatter="text")])
               for n, e in (("math", 0), ("code", 1), ("web", None))}
    base = dict(name="domains", shards=str(shards), seq_len=8, batch_size=4, token_budget_range=[1, 10 ** 9],
                domains=domains)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture
def shards(tmp_path):
    """Each domain's tokens encode (domain, position): domain d holds d*10000 + arange(n)."""
    for d, (name, n) in enumerate((("math", 3000), ("code", 1000), ("web", 6000))):
        root = tmp_path / name
        root.mkdir()
        (d * 10000 + np.arange(n)).astype(np.uint16).tofile(root / "train.bin")
        (d * 10000 + 5000 + np.arange(200)).astype(np.uint16).tofile(root / "val.bin")
        (root / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"train": n, "val": 200}}))
    return tmp_path


def test_windows_are_shifted_by_one_and_come_from_the_labelled_domain(shards):
    dm = DomainDataModule(make_cfg(shards), seed=0)
    batch = next(iter(dm.train_dataloader()))
    x, y, dom = batch["input_ids"], batch["targets"], batch["domain"]
    assert x.shape == y.shape == (4, 8)
    torch.testing.assert_close(y[:, :-1], x[:, 1:])  # targets are inputs shifted by one
    assert (y[:, -1] == x[:, -1] + 1).all()  # consecutive tokens of the shard
    assert ((x // 10000) == dom[:, None]).all()


def test_round_robin_then_mixture_frequencies(shards):
    cfg = make_cfg(shards, round_robin_steps=6, round_robin_web=False, mixture="explicit",
                   mixture_weights={"math": 0.5, "code": 0.3, "web": 0.2}, batch_size=10)
    plan = BatchPlan(cfg, [3000, 1000, 6000], seed=1, accumulate=2)
    firsts = [plan.batch(k)[0] for k in range(12)]  # 6 optimizer steps x 2 micro-batches
    assert all(len(set(d.tolist())) == 1 for d in firsts)  # phase 1: whole batches from one domain
    assert [int(d[0]) for d in firsts] == [0, 0, 1, 1] * 3  # expert domains only, per optimizer step
    draws = np.concatenate([plan.batch(k)[0] for k in range(12, 12 + 1000)])  # 10k samples in phase 2
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - [0.5, 0.3, 0.2]).max() < 0.02


def test_token_and_temperature_mixtures(shards):
    from moe_lm.data.sampling import mixture_weights

    cfg = make_cfg(shards)
    w = mixture_weights(cfg, {"math": 3000, "code": 1000, "web": 6000})
    np.testing.assert_allclose(w, [0.3, 0.1, 0.6])
    hot = mixture_weights(make_cfg(shards, mixture="temperature", mixture_temperature=1e6), {"math": 3000, "code": 1000, "web": 6000})
    np.testing.assert_allclose(hot, [1 / 3] * 3, atol=1e-4)  # high temperature flattens


def test_resume_from_state_sees_the_same_batches(shards):
    dm = DomainDataModule(make_cfg(shards), seed=3)
    it = iter(dm.train_dataloader())
    stream = [next(it) for _ in range(7)]
    dm.consumed = 4  # as the LightningModule records after batch 3
    fresh = DomainDataModule(make_cfg(shards), seed=3)
    fresh.load_state_dict(dm.state_dict())
    resumed = next(iter(fresh.train_dataloader()))
    for key in ("input_ids", "targets", "domain", "batch_id"):
        torch.testing.assert_close(resumed[key], stream[4][key])


def test_workers_give_the_same_batches(shards):
    a = DomainDataModule(make_cfg(shards), seed=5)
    b = DomainDataModule(make_cfg(shards, num_workers=2), seed=5)
    ia, ib = iter(a.train_dataloader()), iter(b.train_dataloader())
    for _ in range(5):
        torch.testing.assert_close(next(ia)["input_ids"], next(ib)["input_ids"])


def test_validation_is_fixed_per_domain(shards):
    dm = DomainDataModule(make_cfg(shards, val_batches_per_domain=2), seed=0)
    loaders = dm.val_dataloader()
    assert len(loaders) == 3
    for d, loader in enumerate(loaders):
        batches = list(loader)
        assert len(batches) == 2 and all((b["domain"] == d).all() for b in batches)
        assert int(batches[0]["input_ids"][0, 0]) == d * 10000 + 5000


def test_missing_shards_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.shards"):
        DomainDataModule(make_cfg(tmp_path), seed=0)
