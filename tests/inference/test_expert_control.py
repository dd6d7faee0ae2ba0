"""experts.drop / experts.force in generate, inspect and evaluate: dropping an expert is the knockout, forcing
puts the expert in every token's top-k, and a continuation changes when the own expert is dropped."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError, ExpertControlConfig
from moe_lm.data.bpe import tokenizer_hash
from moe_lm.inference.expert_control import apply_expert_control, resolve
from moe_lm.io.checkpoint import load_model

TEXT = {"math": "Question: what is 2 plus 2? Answer: 4 #### 4. ",
        "code": "def add(a, b):\n    return a + b\n",
        "science": "We measure the spectrum of the quasar at high redshift. ",
        "legal": "The court held that the contract was void for lack of consideration. ",
        "chat": "User: hello there! Assistant: hi, how can I help you today? ",
        "web": "the quick brown fox jumps over the lazy dog. "}


@pytest.fixture(scope="module")
def domains_ckpt(tmp_path_factory):
    """moe_tiny trained 200 steps (~10 s) on one text per domain of data=domains (math E0, code E1, science E2,
    legal E3, chat E4, web none) with the forced warm start throughout: each domain's tokens always used its
    expert. Its checkpoint (with the tokenizer) and the val shards of the texts."""
    import lightning as L

    from moe_lm.data.bpe import EOT, train_bpe
    from moe_lm.data.shards import DomainDataModule
    from moe_lm.training.lit_module import MoELitModule

    tmp = tmp_path_factory.mktemp("steer")
    tok = train_bpe(list(TEXT.values()) * 4, 400, min_frequency=1)
    for name, text in TEXT.items():
        ids = np.array(([tok.token_to_id(EOT)] + tok.encode(text).ids) * 40, dtype=np.uint16)  # as prepare writes
        (tmp / "shards" / name).mkdir(parents=True)
        ids.tofile(tmp / "shards" / name / "train.bin")
        ids[:len(ids) // 4].tofile(tmp / "shards" / name / "val.bin")
        (tmp / "shards" / name / "meta.json").write_text(json.dumps(
            {"dtype": "uint16", "tokenizer_hash": tokenizer_hash(tok), "documents": {"train": 40, "val": 10},
             "tokens": {"train": len(ids), "val": len(ids) // 4}}))
    cfg = compose(["model=moe_tiny", f"model.vocab_size={tok.get_vocab_size()}", "data=domains",
                   f"data.shards={tmp / 'shards'}", "data.seq_len=32", "data.batch_size=4", "precision=fp32",
                   "optimizer.lr=1e-2", "scheduler.warmup_steps=5", "data.round_robin_steps=200",
                   "routing.warm_routing=forced"])
    dm = DomainDataModule(cfg.data, cfg.seed)
    module = MoELitModule(cfg, tok, dm.names, [cfg.data.domains[d].expert for d in dm.names])
    trainer = L.Trainer(max_steps=200, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(tmp))
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp / "domains.ckpt")
    return tmp / "domains.ckpt", tmp / "shards"


def evaluate(ckpt, shards, out, *extra):
    from moe_lm.evaluate import cli

    cli([f"ckpt={ckpt}", f"data.shards={shards}", "context=32", "stride=16", f"out={out}", *extra])
    return json.loads((out / "eval.json").read_text())


def test_dropping_an_expert_scores_what_the_knockout_scores(domains_ckpt, tmp_path, capsys):
    ckpt, shards = domains_ckpt
    knockout = evaluate(ckpt, shards, tmp_path / "ko", "task=knockout")
    dropped = evaluate(ckpt, shards, tmp_path / "drop", "experts.drop=[code]")
    assert "experts: dropped E1 (code) in every MoE layer" in capsys.readouterr().out
    assert dropped["experts"]["drop"] == ["code"]
    losses = {r["domain"]: r["loss"] for r in dropped["domains"]}
    for d, name in enumerate(knockout["domains"]):
        assert losses[name] == pytest.approx(knockout["loss"][d][1], rel=1e-6, abs=1e-6)  # column E1 removed
    plain = evaluate(ckpt, shards, tmp_path / "plain")
    assert any(abs(r["loss"] - losses[r["domain"]]) > 1e-4 for r in plain["domains"])  # dropping does something


def test_forcing_puts_the_expert_in_every_tokens_top_k_and_keeps_the_rest_to_the_router(domains_ckpt):
    ckpt, _ = domains_ckpt
    model, tok, run_cfg = load_model(ckpt)
    ids = torch.tensor([tok.encode(TEXT["math"] + TEXT["code"]).ids])
    plain = model(ids).topk_idx  # (L, N, K)
    line = apply_expert_control(model, ExpertControlConfig(force="chat"), run_cfg)
    forced = model(ids).topk_idx
    assert line == "experts: forced E4 (chat) in every MoE layer"
    assert (forced == 4).any(-1).all()  # every token, every MoE layer
    # in the first MoE layer (whose input forcing cannot change) the other slot is the router's first choice among
    # the rest: the plain top-1, or its top-2 where that was E4
    other = torch.where(forced[0, :, 0] == 4, forced[0, :, 1], forced[0, :, 0])
    want = torch.where(plain[0, :, 0] == 4, plain[0, :, 1], plain[0, :, 0])
    assert torch.equal(other, want) and not (plain == 4).any(-1).all()


def test_a_continuation_changes_when_the_own_expert_is_dropped(domains_ckpt, capsys):
    from moe_lm.generate import cli

    ckpt, _ = domains_ckpt
    args = [f"ckpt={ckpt}", "prompt=Question: what is", "temperature=0", "max_new_tokens=16", "echo=false"]
    cli(args)
    plain = capsys.readouterr().out
    cli(args + ["experts.drop=[math]"])
    out = capsys.readouterr()
    assert "dropped E0 (math)" in out.err and "experts" not in out.out  # stdout holds the text alone
    assert out.out != plain, plain


def test_inspect_shows_the_forced_expert_on_every_token(domains_ckpt, capsys):
    from moe_lm.inspect import cli

    cli([f"ckpt={domains_ckpt[0]}", "prompt=def add(a, b):", "experts.force=4"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "experts: forced E4 (chat) in every MoE layer"


@pytest.mark.parametrize("control, key, words", [
    (ExpertControlConfig(drop=["poetry"]), "experts.drop", "'poetry' is neither a domain of the checkpoint"),
    (ExpertControlConfig(force="web"), "experts.force", "math (E0), code (E1)"),  # web has no routed expert
    (ExpertControlConfig(drop=["math", "code", "science", "legal"]), "experts.drop", "fewer than top_k=2"),
    (ExpertControlConfig(drop=["0"], force="math"), "experts.drop", "names one expert twice")])
def test_bad_expert_settings_are_named(domains_ckpt, control, key, words):
    model, _, run_cfg = load_model(domains_ckpt[0])
    with pytest.raises(ConfigError, match=key) as e:
        resolve(control, model, run_cfg)
    assert words in str(e.value)


def test_a_dense_model_or_one_trained_without_domains_is_refused(tiny_ckpt, make_model_cfg):
    from moe_lm.model import MoETransformer

    dense = MoETransformer(make_model_cfg(first_k_dense=2))
    with pytest.raises(ConfigError, match="experts.force: the model .* is dense"):
        resolve(ExpertControlConfig(force="0"), dense, {})
    model, _, run_cfg = load_model(tiny_ckpt)  # the lines demo: experts by number only
    with pytest.raises(ConfigError, match="none: the run had no expert domains"):
        resolve(ExpertControlConfig(drop=["math"]), model, run_cfg)
    assert resolve(ExpertControlConfig(drop=["3"]), model, run_cfg) == ([3], None)
    with pytest.raises(ConfigError, match="experts.force: 5 is also in experts.drop"):
        ExpertControlConfig(drop=["5"], force="5")


def test_the_export_refuses_a_steered_routing():
    with pytest.raises(ConfigError, match="experts.drop: the export writes the routing the model was trained with"):
        compose(["ckpt=x.ckpt", "out=/tmp/x", "experts.drop=[math]"], "export")
