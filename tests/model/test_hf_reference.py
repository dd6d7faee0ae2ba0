"""Equivalence with HF transformers' DeepseekV3 (sigmoid) and DeepseekV2 (softmax) on tiny configs, for every
routing variant the export accepts, on briefly trained weights (a non-zero selection bias included); and the
variants it refuses really do differ in the HF class."""

import pytest
import torch

from moe_lm.config import ConfigError
from moe_lm.model import MoETransformer
from moe_lm.model.hf_mapping import (from_hf_state_dict, hf_config_kwargs, hf_model_type, model_config_from_hf,
                                     to_hf_state_dict)

transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[dev]'")

HF = {"deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM"),
      "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM")}


def trained(cfg, steps: int = 12) -> MoETransformer:
    """A model after a few AdamW steps on random tokens, with the aux-free bias updated where the config uses it."""
    model = MoETransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randint(0, cfg.vocab_size, (4, 24))
        out = model(x[:, :-1], targets=x[:, 1:])
        (out.ce_sum / x[:, 1:].numel() + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        model.update_router_biases()
    for moe in model.moe_layers():  # a bias large enough to change choices, as a long run's would be
        if cfg.use_aux_free_bias:
            moe.gate.e_score_correction_bias.add_(torch.randn(cfg.n_routed_experts) * 0.05)
    return model.eval()


def hf_model(cfg, state):
    config_cls, model_cls = (getattr(transformers, n) for n in HF[hf_model_type(cfg)])
    hf_cfg = config_cls(**hf_config_kwargs(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = model_cls(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:  # the head is the embedding, which was loaded
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
        missing = [k for k in missing if k != "lm_head.weight"]
    assert not missing and not unexpected
    return hf


VARIANTS = [  # (scoring, norm_topk_prob, use_aux_free_bias, q_lora_rank, routed_scaling_factor)
    ("sigmoid", True, True, None, 1.0), ("sigmoid", True, False, 24, 2.5), ("sigmoid", False, True, 24, 1.0),
    ("sigmoid", False, False, None, 1.5), ("softmax", False, False, None, 1.0), ("softmax", False, False, 24, 2.0)]


@pytest.mark.parametrize("scoring,norm,bias,q_lora_rank,scale", VARIANTS)
def test_logits_match_hf_deepseek(scoring, norm, bias, q_lora_rank, scale, make_model_cfg):
    cfg = make_model_cfg(n_layers=3, first_k_dense=1, scoring=scoring, q_lora_rank=q_lora_rank, norm_topk_prob=norm,
                         use_aux_free_bias=bias, tie_embeddings=scoring == "sigmoid", routed_scaling_factor=scale)
    model = trained(cfg)
    hf = hf_model(cfg, to_hf_state_dict(model.state_dict(), cfg))
    x = torch.randint(0, cfg.vocab_size, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)


def test_dense_models_map_too(make_model_cfg):
    cfg = make_model_cfg(n_layers=2, first_k_dense=2)
    assert hf_model_type(cfg) == "deepseek_v3"
    model = trained(cfg, steps=3)
    hf = hf_model(cfg, to_hf_state_dict(model.state_dict(), cfg))
    x = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides,key", [
    (dict(scoring="softmax", norm_topk_prob=True, use_aux_free_bias=False), "model.norm_topk_prob"),
    (dict(scoring="softmax", norm_topk_prob=False, use_aux_free_bias=True), "model.use_aux_free_bias"),
    (dict(attention="gqa"), "model.attention"),
    (dict(n_shared_experts=0), "model.n_shared_experts"),
    (dict(activation="gelu"), "model.activation"), (dict(activation="learned_gelu"), "model.activation"),
    (dict(qk_norm=True), "model.qk_norm"), (dict(attn_softcap=30.0), "model.attn_softcap"),
    (dict(logit_softcap=30.0), "model.logit_softcap"), (dict(sliding_window=16), "model.sliding_window"),
    (dict(router_type="hash"), "model.router_type"), (dict(router_type="expert_choice"), "model.router_type"),
])
def test_configs_the_hf_classes_cannot_compute_are_refused_by_name(overrides, key, make_model_cfg):
    with pytest.raises(ConfigError, match=key):
        hf_model_type(make_model_cfg(**overrides))


@pytest.mark.parametrize("norm,bias", [(True, False), (False, True)])
def test_the_refused_softmax_variants_really_differ_in_deepseek_v2(norm, bias, make_model_cfg):
    """Why they are refused: loaded into DeepseekV2 anyway, the logits are not ours."""
    cfg = make_model_cfg(scoring="softmax", norm_topk_prob=norm, use_aux_free_bias=bias)
    model = trained(cfg)
    plain = make_model_cfg(scoring="softmax", norm_topk_prob=False, use_aux_free_bias=False)
    hf = hf_model(plain, to_hf_state_dict(model.state_dict(), plain))
    x = torch.randint(0, cfg.vocab_size, (2, 19))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() > 1e-3


@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
def test_the_inverse_mapping_restores_config_and_weights(scoring, make_model_cfg):
    cfg = make_model_cfg(scoring=scoring, norm_topk_prob=scoring == "sigmoid", use_aux_free_bias=scoring == "sigmoid",
                         first_k_dense=1, routed_scaling_factor=1.5)
    model = trained(cfg, steps=2)
    hf = hf_model(cfg, to_hf_state_dict(model.state_dict(), cfg))
    back = model_config_from_hf(hf.config.to_dict(), make_model_cfg())
    arch = {f: getattr(cfg, f) for f in ("scoring", "norm_topk_prob", "use_aux_free_bias", "first_k_dense",
                                         "routed_scaling_factor", "q_lora_rank", "v_head_dim", "tie_embeddings")}
    assert {f: getattr(back, f) for f in arch} == arch
    state = from_hf_state_dict(hf.state_dict(), back)
    again = MoETransformer(back)
    again.load_state_dict(state, strict=False)
    for name, t in model.state_dict().items():
        if not name.endswith("tokens_per_expert"):
            assert torch.equal(again.state_dict()[name], t), name


def test_hf_configs_moe_lm_cannot_compute_are_refused_by_key(make_model_cfg):
    hf_cfg = transformers.DeepseekV3Config(**hf_config_kwargs(make_model_cfg(scoring="sigmoid"))).to_dict()
    for key, value in [("n_group", 2), ("rope_interleave", False), ("model_type", "llama")]:
        with pytest.raises(ConfigError, match=key):
            model_config_from_hf({**hf_cfg, key: value}, make_model_cfg())


def test_geglu_and_training_only_switches_export_exactly(make_model_cfg):
    """GeGLU is DeepSeek's MLP with hidden_act=gelu; the sequence-wise loss, the output z-loss and the MTP module
    change training only, and the MTP weights are left out of the export."""
    cfg = make_model_cfg(n_layers=3, first_k_dense=1, activation="geglu", mtp_depth=1, aux_loss_scope="sequence",
                         output_z_loss_coef=1e-4)
    model = trained(cfg, steps=4)
    state = to_hf_state_dict(model.state_dict(), cfg)
    assert not any("mtp" in k for k in state) and hf_config_kwargs(cfg)["hidden_act"] == "gelu"
    hf = hf_model(cfg, state)
    x = torch.randint(0, cfg.vocab_size, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)
    back = model_config_from_hf(hf.config.to_dict(), cfg, "test")
    assert back.activation == "geglu" and back.mtp_depth == 0
