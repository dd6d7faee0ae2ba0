"""A recipe of the real run, shrunk to the CPU, end to end as a user runs it: the tokenizer and prepare streaming
from a local copy laid out like the hub repos (`data.hub_mirror`, the same `datasets` calls as the hub), training
with the recipe's warm start and checkpointing, the knockout matrix, and the export. Slow tier."""

from pathlib import Path

import pytest

from tests.data.test_hub_layout import DOMAINS, build_mirror

SHRINK = ["model=moe_tiny", "model.vocab_size=1024", "precision=fp32", "data.seq_len=64", "data.batch_size=4",
          "trainer.accumulate_grad_batches=1", "trainer.max_steps=20", "data.round_robin_steps=6",
          "trainer.val_check_interval=10", "trainer.limit_val_batches=1", "data.val_batches_per_domain=1",
          "trainer.progress_bar=false", "checkpoint.every_minutes=0", "scheduler.warmup_steps=2",
          "data.token_budget_range=[1,1000000000]", "prepare.val_fraction=0.1", "tokenizer.vocab_size=1024",
          "tokenizer.sample_bytes_per_domain=50000"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["recipe_t4"])
def test_a_shrunk_recipe_runs_from_the_hub_layout_to_an_export(recipe, shared_data, tmp_path, capsys):
    from moe_lm.cli import compose
    from moe_lm.evaluate import cli as evaluate
    from moe_lm.export import cli as export
    from moe_lm.prepare import cli as prepare
    from moe_lm.tokenizer import cli as tokenizer
    from moe_lm.training.run import train

    mirror = tmp_path / "mirror"
    build_mirror(shared_data, compose(["data=domains"]).data, mirror, tmp_path / "local")
    others = [f"~data.domains.{d}" for d in ("math", "code", "science", "legal", "chat", "web") if d not in DOMAINS]
    budgets = [f"data.domains.{d}.token_budget=4000" for d in DOMAINS]
    args = [f"+experiment={recipe}", *others, *budgets, *SHRINK, "data.source=hub", f"data.hub_mirror={mirror}",
            f"tokenizer.out={tmp_path}/tok", f"prepare.tokenizer={tmp_path}/tok/tokenizer.json",
            f"prepare.out={tmp_path}/shards", f"data.shards={tmp_path}/shards", f"out_dir={tmp_path}/run"]
    tokenizer(args)
    prepare(args)
    cfg = compose(args)
    assert cfg.routing.warm_routing == "forced" and sorted(cfg.data.domains) == sorted(DOMAINS)
    result = train(cfg, cfg.out_dir)
    assert result["steps"] == 20 and result["warm_start"] == "forced"
    assert 0 < result["val/loss"] < 7 and set(DOMAINS) <= {k.split("/")[-1] for k in result if k.startswith("val/loss/")}
    ckpt = Path(cfg.out_dir) / "checkpoints" / "final.ckpt"
    evaluate([f"ckpt={ckpt}", "task=knockout", f"data.shards={tmp_path}/shards", "context=64", "stride=64",
              f"out={tmp_path}/knockout"])
    assert "own / mean other" in capsys.readouterr().out
    export([f"ckpt={ckpt}", f"out={tmp_path}/hf"])
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    transformers = pytest.importorskip("transformers", reason="loading the export needs the test extra")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
