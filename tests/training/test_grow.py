"""grow.domain: a trained MoE gains one routed expert for a new domain; with the new expert out of routing the grown
model is the old one, the new expert starts from the stated rule, training forces the new domain onto it, and
grow.freeze_old keeps the old experts exactly."""

import dataclasses

import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.model import MoETransformer
from moe_lm.training.grow import grown_state

from tests.training.test_guidance import _fit

NO_CHAT = ["~data.domains.chat", "model.n_routed_experts=4"]


def pair(make_model_cfg):
    torch.manual_seed(0)
    old = MoETransformer(make_model_cfg(n_routed_experts=4))
    with torch.no_grad():
        for moe in old.moe_layers():
            moe.gate.e_score_correction_bias.copy_(torch.randn(4) * 0.1)
    return old, MoETransformer(make_model_cfg(n_routed_experts=5))


@pytest.mark.parametrize("rule", ["shared", "most_used"])
def test_with_the_new_expert_out_of_routing_the_grown_model_is_the_old_one(rule, make_model_cfg):
    old, new = pair(make_model_cfg)
    source = old.state_dict()
    new.load_state_dict(grown_state(source, new, rule, 0.0, [1, 3]), strict=False)
    for i, moe in enumerate(new.moe_layers()):
        p = f"layers.{i}.mlp."
        got = moe.experts.gate_up_proj[4]
        if rule == "shared":  # one shared expert of the experts' width: an exact copy of it
            want = torch.cat([source[f"{p}shared_experts.gate_proj.weight"], source[f"{p}shared_experts.up_proj.weight"]])
            torch.testing.assert_close(moe.gate.weight[4], source[f"{p}gate.weight"].mean(0))
        else:
            want = source[f"{p}experts.gate_up_proj"][[1, 3][i]]
            torch.testing.assert_close(moe.gate.weight[4], source[f"{p}gate.weight"][[1, 3][i]])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(moe.gate.e_score_correction_bias[4], source[f"{p}gate.e_score_correction_bias"].mean())
        moe.gate.removed_experts = torch.tensor([False] * 4 + [True])
    ids = torch.randint(0, 101, (2, 12))
    torch.testing.assert_close(new.eval()(ids).logits, old.eval()(ids).logits, atol=1e-6, rtol=1e-6)


def test_noise_perturbs_the_copy_by_its_relative_size(make_model_cfg):
    old, new = pair(make_model_cfg)
    state = grown_state(old.state_dict(), new, "most_used", 0.01, [0, 0])
    copy, src = state["layers.0.mlp.experts.down_proj"][4], old.state_dict()["layers.0.mlp.experts.down_proj"][0]
    rel = ((copy - src) / src).std()
    assert 0.005 < float(rel) < 0.02


def test_a_grown_run_forces_the_new_domain_and_keeps_frozen_experts(fake_shards, tmp_path):
    base, _ = _fit(fake_shards, *NO_CHAT, steps=4)
    base.save_checkpoint(tmp_path / "base.ckpt")
    before = [m.experts.gate_up_proj.detach().clone() for m in base.lightning_module.model.moe_layers()]
    grow = [f"init_from=ckpt:{tmp_path / 'base.ckpt'}", "grow.domain=chat", "routing.warm_routing=forced",
            "routing.forced_domains=[chat]", "data.round_robin_steps=12", "trainer.log_every_n_steps=1"]
    trainer, _ = _fit(fake_shards, *grow, "grow.freeze_old=true", monitor=True, steps=12)
    layers = trainer.lightning_module.model.moe_layers()
    for old, moe in zip(before, layers):
        assert torch.equal(moe.experts.gate_up_proj[:4], old)  # frozen: exactly as loaded
        assert moe.experts.gate_up_proj.shape[0] == 5
    m = trainer.callback_metrics
    assert float(m["moe/domain_load/chat/expert4"]) == 0.5  # forced: one of each chat token's two slots
    assert float(m["moe/domain_load/math/expert0"]) < 0.5  # other domains are not forced
    trainable, _ = _fit(fake_shards, *grow, steps=3)
    assert not torch.equal(trainable.lightning_module.model.moe_layers()[0].experts.gate_up_proj[:4], before[0])


def test_growing_is_checked_before_any_work(fake_shards, tmp_path):
    base, _ = _fit(fake_shards, *NO_CHAT, steps=1)
    base.save_checkpoint(tmp_path / "base.ckpt")
    common = ["model=moe_tiny", "data=domains", f"data.shards={fake_shards}", "data.seq_len=16", "precision=fp32"]
    with pytest.raises(ConfigError, match="grow.domain: grows a trained MoE"):
        compose(common + ["grow.domain=chat"])
    with pytest.raises(ConfigError, match="data.domains.chat.expert: must be the new routed expert 5"):
        compose(common + [f"init_from=ckpt:{tmp_path / 'base.ckpt'}", "grow.domain=chat", "model.n_routed_experts=6"])
    from moe_lm.training.init_from import resolve_init

    cfg = compose(common + [f"init_from=ckpt:{tmp_path / 'base.ckpt'}", "grow.domain=web", "model.n_routed_experts=6",
                            "data.domains.web.expert=5"])
    with pytest.raises(ConfigError, match="model.n_routed_experts: growing 4 experts by one needs 5"):
        resolve_init(cfg)


def test_the_new_router_row_can_start_from_the_new_domains_mean_router_input(fake_shards, tmp_path):
    from moe_lm.data.shards import DomainDataModule
    from moe_lm.training.grow import grow_from_checkpoint
    from moe_lm.training.router_init import domain_batches, domain_mean_router_inputs

    base, _ = _fit(fake_shards, *NO_CHAT, steps=2)
    base.save_checkpoint(tmp_path / "base.ckpt")
    cfg = compose(["model=moe_tiny", "data=domains", f"data.shards={fake_shards}", "data.seq_len=16",
                   "data.batch_size=4", "precision=fp32", f"init_from=ckpt:{tmp_path / 'base.ckpt'}",
                   "grow.domain=chat", "grow.router_row=domain_mean"])
    dm = DomainDataModule(cfg.data, cfg.seed)
    model = MoETransformer(cfg.model)
    assert "router row from its domain's mean router input" in grow_from_checkpoint(model, cfg, dm)
    batches = domain_batches(dm.train_shards, dm.plan, cfg.routing.router_init_batches, cfg.seed)
    means = domain_mean_router_inputs(model, batches, len(dm.names))[0]  # (D, C), the first MoE layer's input
    want = means[dm.names.index("chat")] - means.mean(0)
    row = model.moe_layers()[0].gate.weight[4].double()
    assert torch.nn.functional.cosine_similarity(row, want, dim=0) > 0.999
    old = base.lightning_module.model.moe_layers()[0].gate.weight
    torch.testing.assert_close(model.moe_layers()[0].gate.weight[:4], old)  # the old rows as they were


def test_a_grown_model_exports_and_round_trips_through_transformers(fake_shards, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the [dev] extra")
    from moe_lm.data.bpe import train_bpe
    from moe_lm.io.hf_dir import load_hf_dir, write_hf_dir

    base, _ = _fit(fake_shards, *NO_CHAT, steps=2)
    base.save_checkpoint(tmp_path / "base.ckpt")
    grown, _ = _fit(fake_shards, f"init_from=ckpt:{tmp_path / 'base.ckpt'}", "grow.domain=chat",
                    "routing.warm_routing=forced", "routing.forced_domains=[chat]", "data.round_robin_steps=2",
                    steps=3)
    model = grown.lightning_module.model.eval()
    tok = train_bpe(["math code science legal chat web"] * 4, 300)
    write_hf_dir(model, model.cfg, tok, tmp_path / "hf", "# card\n")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    back, _, cfg = load_hf_dir(tmp_path / "hf")
    assert hf.config.n_routed_experts == cfg.n_routed_experts == 5
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(back.eval()(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
