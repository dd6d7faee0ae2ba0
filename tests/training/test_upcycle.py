"""init_from=ckpt:PATH of a dense checkpoint: every routed expert starts as the dense MLP (or a slice of it), so the
upcycled MoE starts at the dense model's loss; mismatched architectures are named."""

import dataclasses

import pytest
import torch

from moe_lm.cli import compose
from moe_lm.config import ConfigError
from moe_lm.model import MoETransformer
from moe_lm.training.init_from import load_init_weights, resolve_init
from moe_lm.training.upcycle import upcycled_state


def cfg_(make_model_cfg, **kw):
    return make_model_cfg(max_seq_len=256, **kw)  # the experiment's seq_len


def _dense_checkpoint(path, cfg):
    torch.manual_seed(0)
    model = MoETransformer(cfg)
    for p in model.parameters():  # not the init: a model that has moved
        p.data.add_(torch.randn_like(p) * 0.02)
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "moe_lm_config": {"model": dataclasses.asdict(cfg)}}, path)
    return model.eval()


def _loss(model, x):
    with torch.no_grad():
        return model(x[:, :-1], targets=x[:, 1:]).ce_sum / x[:, 1:].numel()


@pytest.mark.parametrize("activation", ["swiglu", "learned_gelu"])
def test_upcycled_moe_starts_at_the_dense_models_loss(tmp_path, make_model_cfg, activation, capsys):
    dense_cfg = cfg_(make_model_cfg, first_k_dense=2, dense_intermediate_size=32, activation=activation)
    dense = _dense_checkpoint(tmp_path / "dense.ckpt", dense_cfg)
    run = compose(["+experiment=overfit_100_lines", f"init_from=ckpt:{tmp_path / 'dense.ckpt'}"])
    moe_cfg = cfg_(make_model_cfg, moe_intermediate_size=32, n_shared_experts=1, activation=activation)  # 5 experts, top-2
    run = dataclasses.replace(run, model=moe_cfg)
    cfg, tok = resolve_init(run)
    assert cfg.model == moe_cfg and tok is None  # the run's architecture; this checkpoint has no tokenizer
    moe = MoETransformer(cfg.model)
    load_init_weights(moe, cfg)
    assert "left at random init: layers.0.mlp.gate.weight" in capsys.readouterr().out
    x = torch.randint(0, 101, (4, 20))
    torch.testing.assert_close(_loss(moe.eval(), x), _loss(dense, x), atol=1e-5, rtol=0)
    e3 = moe.layers[1].mlp.experts.in_proj[3]
    first = dense.layers[1].mlp.gate_proj.weight if activation == "swiglu" else dense.layers[1].mlp.up_proj.weight
    assert torch.equal(e3[:32], first)  # an expert is a copy of the dense MLP


def test_fine_grained_experts_take_slices_of_the_dense_mlp(tmp_path, make_model_cfg, capsys):
    dense_cfg = cfg_(make_model_cfg, first_k_dense=2, dense_intermediate_size=48)
    dense = _dense_checkpoint(tmp_path / "dense.ckpt", dense_cfg)
    moe_cfg = cfg_(make_model_cfg, moe_intermediate_size=16, n_routed_experts=6, top_k=3)  # G = 3 slices, each twice
    moe = MoETransformer(moe_cfg)
    state, random = upcycled_state({k: v for k, v in dense.state_dict().items()}, dense_cfg, moe)
    mlp = dense.layers[0].mlp
    gate_up = state["layers.0.mlp.experts.gate_up_proj"]  # (6, 32, 64)
    for e in range(6):
        g = e % 3
        assert torch.equal(gate_up[e, :16], mlp.gate_proj.weight[g * 16:(g + 1) * 16])
        assert torch.equal(gate_up[e, 16:], mlp.up_proj.weight[g * 16:(g + 1) * 16])
        assert torch.equal(state["layers.0.mlp.experts.down_proj"][e], mlp.down_proj.weight[:, g * 16:(g + 1) * 16])
    assert random == ["layers.0.mlp.gate.weight", "layers.1.mlp.gate.weight"]
    assert not state["layers.0.mlp.shared_experts.down_proj.weight"].any()


def test_what_cannot_be_upcycled_is_named(tmp_path, make_model_cfg):
    _dense_checkpoint(tmp_path / "dense.ckpt", cfg_(make_model_cfg, first_k_dense=2, dense_intermediate_size=48))
    run = compose(["+experiment=overfit_100_lines", f"init_from=ckpt:{tmp_path / 'dense.ckpt'}"])
    with pytest.raises(ConfigError, match=r"model\.d_model"):
        resolve_init(dataclasses.replace(run, model=cfg_(make_model_cfg, d_model=32, q_lora_rank=None)))
    bad = dataclasses.replace(run, model=cfg_(make_model_cfg, moe_intermediate_size=20))
    with pytest.raises(ConfigError, match=r"model\.moe_intermediate_size=20 must divide"):
        load_init_weights(MoETransformer(bad.model), bad)
    with pytest.raises(FileNotFoundError, match="init_from: no such checkpoint"):
        resolve_init(compose(["+experiment=overfit_100_lines", f"init_from=ckpt:{tmp_path / 'none.ckpt'}"]))
