import json

import numpy as np
import pytest
import torch

from moe_lm.config import ConfigError
from moe_lm.data.shards import DomainDataModule


@pytest.fixture
def shards(tmp_path, make_domains_cfg):
    """Each domain's tokens encode (domain, position): domain d holds d*10000 + arange(n)."""
    for d, (name, n) in enumerate((("math", 3000), ("code", 1000), ("web", 6000))):
        root = tmp_path / name
        root.mkdir()
        (d * 10000 + np.arange(n)).astype(np.uint16).tofile(root / "train.bin")
        (d * 10000 + 5000 + np.arange(200)).astype(np.uint16).tofile(root / "val.bin")
        (root / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"train": n, "val": 200}}))
    return tmp_path


def test_windows_are_shifted_by_one_and_come_from_the_labelled_domain(shards, make_domains_cfg):
    dm = DomainDataModule(make_domains_cfg(shards), seed=0)
    batch = next(iter(dm.train_dataloader()))
    x, y, dom = batch["input_ids"], batch["targets"], batch["domain"]
    assert x.shape == y.shape == (4, 8)
    torch.testing.assert_close(y[:, :-1], x[:, 1:])  # targets are inputs shifted by one
    assert (y[:, -1] == x[:, -1] + 1).all()  # consecutive tokens of the shard
    assert ((x // 10000) == dom[:, None]).all()


def test_resume_from_state_sees_the_same_batches(shards, make_domains_cfg):
    dm = DomainDataModule(make_domains_cfg(shards), seed=3)
    it = iter(dm.train_dataloader())
    stream = [next(it) for _ in range(7)]
    for batch in stream[:4]:  # what Lightning hands the data module before each training step
        assert dm.on_before_batch_transfer(batch, 0) is batch
    assert dm.consumed == 4
    dm.on_before_batch_transfer(dm.val_batches(0)[0], 0)  # validation batches do not count
    assert dm.consumed == 4
    fresh = DomainDataModule(make_domains_cfg(shards), seed=3)
    fresh.load_state_dict(dm.state_dict())
    resumed = next(iter(fresh.train_dataloader()))
    for key in ("input_ids", "targets", "domain", "batch_id"):
        torch.testing.assert_close(resumed[key], stream[4][key])


def test_workers_give_the_same_batches(shards, make_domains_cfg):
    a = DomainDataModule(make_domains_cfg(shards), seed=5)
    b = DomainDataModule(make_domains_cfg(shards, num_workers=2), seed=5)
    ia, ib = iter(a.train_dataloader()), iter(b.train_dataloader())
    for _ in range(5):
        torch.testing.assert_close(next(ia)["input_ids"], next(ib)["input_ids"])


def test_validation_is_fixed_per_domain(shards, make_domains_cfg):
    dm = DomainDataModule(make_domains_cfg(shards, val_batches_per_domain=2), seed=0)
    loaders = dm.val_dataloader()
    assert len(loaders) == 3
    for d, loader in enumerate(loaders):
        batches = list(loader)
        assert len(batches) == 2 and all((b["domain"] == d).all() for b in batches)
        assert int(batches[0]["input_ids"][0, 0]) == d * 10000 + 5000


def test_missing_shards_name_the_key(tmp_path, make_domains_cfg):
    with pytest.raises(FileNotFoundError, match="data.shards"):
        DomainDataModule(make_domains_cfg(tmp_path), seed=0)


def _damage(folder, how):
    train = folder / "train.bin"
    if how == "empty":
        train.write_bytes(b"")
    elif how == "odd length":
        train.write_bytes(train.read_bytes() + b"\x01")
    elif how == "truncated":
        train.write_bytes(train.read_bytes()[:1000])
    elif how == "random bytes":  # the right size, but not token ids of this vocabulary
        train.write_bytes(np.random.default_rng(0).integers(0, 256, train.stat().st_size, dtype=np.uint8).tobytes())
    elif how == "corrupt meta":
        (folder / "meta.json").write_text('{"dtype": "uint16", "tokens": {"train": 30')
    elif how == "foreign meta":
        (folder / "meta.json").write_text('{"dtype": "float64", "tokens": {"train": 3000, "val": 200}}')


@pytest.mark.parametrize("how,named", [
    ("empty", r"code/train.bin holds 0 bytes, but its meta.json counts 1,000 uint16 tokens \(2,000 bytes\)"),
    ("odd length", r"code/train.bin holds 2,001 bytes"),
    ("truncated", r"code/train.bin holds 1,000 bytes"),
    ("random bytes", r"code/train.bin holds token id [\d,]+, not below model.vocab_size=30,000"),
    ("corrupt meta", r"code/meta.json is not valid JSON"),
    ("foreign meta", r"code/meta.json is not a shard manifest written by moe_lm.prepare"),
])
def test_a_damaged_shard_is_named_and_never_read(shards, make_domains_cfg, how, named):
    _damage(shards / "code", how)
    with pytest.raises(ConfigError, match=named):
        DomainDataModule(make_domains_cfg(shards), seed=0, vocab_size=30000)


def test_intact_shards_pass_the_vocabulary_check_and_a_smaller_vocabulary_fails(shards, make_domains_cfg):
    DomainDataModule(make_domains_cfg(shards), seed=0, vocab_size=26000)  # web's largest id is 25999
    with pytest.raises(ConfigError, match="web/train.bin holds token id 25,999"):
        DomainDataModule(make_domains_cfg(shards), seed=0, vocab_size=25999)
