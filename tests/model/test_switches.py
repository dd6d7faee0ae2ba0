"""The architecture switches (model.activation, qk_norm, attn_softcap, logit_softcap,
output_z_loss_coef, sliding_window/window_pattern, mtp_depth): each against its formula or an invariant it
implies, cached decoding where it applies, and validation that names the key."""

import pytest
import torch
import torch.nn.functional as F

from moe_lm.config import ConfigError, ModelConfig
from moe_lm.inference.decode import SamplingConfig, generate_ids
from moe_lm.model import MoETransformer
from moe_lm.model.attention import _attend, window_mask
from moe_lm.model.cache import KVCache
from moe_lm.model.layers import FeedForward, rope_cos_sin
from moe_lm.model.loss import IGNORE_INDEX, linear_cross_entropy
from moe_lm.model.experts import RoutedExperts


# ---- activations -------------------------------------------------------------------------------------------
def test_feed_forward_formulas():
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    for name, ref in [("swiglu", lambda m: m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x))),
                      ("geglu", lambda m: m.down_proj(F.gelu(m.gate_proj(x)) * m.up_proj(x))),
                      ("gelu", lambda m: m.down_proj(F.gelu(m.up_proj(x))))]:
        m = FeedForward(8, 12, name)
        torch.testing.assert_close(m(x), ref(m))
    m = FeedForward(8, 12, "learned_gelu")
    assert not hasattr(m, "gate_proj") and m.act_scale.shape == (12,)
    torch.testing.assert_close(m(x), m.down_proj(F.gelu(m.up_proj(x))))  # init: scale 1, shift 0 = plain GELU
    with torch.no_grad():
        m.act_scale.uniform_(0.5, 2.0)
        m.act_shift.uniform_(-1.0, 1.0)
    torch.testing.assert_close(m(x), m.down_proj(F.gelu(m.up_proj(x) * m.act_scale + m.act_shift)))
    m(x).sum().backward()
    assert m.act_scale.grad.abs().sum() > 0 and m.act_shift.grad.abs().sum() > 0  # both learn


@pytest.mark.parametrize("activation", ["gelu", "learned_gelu", "geglu"])
def test_every_dispatch_path_agrees_for_each_activation(activation, make_model_cfg):
    torch.manual_seed(0)
    outs = {}
    for impl in ("loop", "bmm", "grouped_mm", "capacity"):
        torch.manual_seed(0)
        experts = RoutedExperts(make_model_cfg(activation=activation, moe_impl=impl))
        for p in experts.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(20, 64, requires_grad=True)
        idx = torch.stack([torch.randperm(5)[:2] for _ in range(20)])
        w = torch.rand(20, 2)
        y = experts(x, idx, w)
        y.pow(2).sum().backward()
        outs[impl] = (y, x.grad, [p.grad for p in experts.parameters()])
    for impl in ("bmm", "grouped_mm", "capacity"):
        torch.testing.assert_close(outs[impl][0], outs["loop"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outs[impl][1], outs["loop"][1], atol=1e-4, rtol=1e-4)
        for a, b in zip(outs[impl][2], outs["loop"][2]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("extra", [dict(activation="learned_gelu"), dict(activation="gelu"),
                                   dict(router_type="expert_choice"), dict(router_type="hash"), dict(mtp_depth=1),
                                   dict(qk_norm=True, attn_softcap=5.0, logit_softcap=5.0, output_z_loss_coef=1e-3,
                                        sliding_window=4, window_pattern="LG", aux_loss_scope="sequence")])
@pytest.mark.parametrize("impl", ["auto", "loop", "bmm"])
def test_every_switch_trains_under_bf16_autocast(extra, impl, make_model_cfg):
    """The training forward and backward run in bf16 autocast (the experiments' precision) on every dispatch path,
    and stay close to fp32."""
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(moe_impl=impl, **extra)).train()
    x = torch.randint(0, 101, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x[:, :-1], targets=x[:, 1:], ce_chunk_size=7)
    loss = out.ce_sum + (out.mtp_loss if out.mtp_loss is not None else 0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    ref = model(x[:, :-1], targets=x[:, 1:]).ce_sum
    torch.testing.assert_close(out.ce_sum, ref, rtol=2e-2, atol=0)


def test_expert_reference_for_learned_gelu(make_model_cfg):
    """Expert e on its tokens is gelu(scale_e * (x W_up_e) + shift_e) W_down_e, times the router weight."""
    torch.manual_seed(0)
    experts = RoutedExperts(make_model_cfg(activation="learned_gelu", moe_impl="loop"))
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, idx, w = torch.randn(6, 64), torch.tensor([[0, 3]] * 6), torch.rand(6, 2)
    ref = sum(w[:, k:k + 1] * (F.gelu(x @ experts.up_proj[e].T * experts.act_scale[e] + experts.act_shift[e])
                               @ experts.down_proj[e].T) for k, e in enumerate((0, 3)))
    torch.testing.assert_close(experts(x, idx, w), ref, atol=1e-5, rtol=1e-5)


# ---- QK-norm -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(attention, make_model_cfg):
    """With RMSNorm on every query and key (per part), scaling the projections that make them changes nothing."""
    torch.manual_seed(0)
    for qk_norm in (True, False):
        model = MoETransformer(make_model_cfg(attention=attention, qk_norm=qk_norm)).eval()
        attn = model.layers[0].self_attn
        x = torch.randn(2, 9, 64)
        cos, sin = rope_cos_sin(torch.arange(9), model.rope_dim, 10000.0)
        with torch.no_grad():
            before = attn(x, cos, sin)
            if attention == "mla":
                attn.q_b_proj.weight.mul_(3.0)  # both query parts
                w = attn.kv_b_proj.weight.view(4, 16 + 12, -1)
                w[:, :16].mul_(5.0)  # the nope keys only (not the values)
                attn.kv_a_proj_with_mqa.weight[-8:].mul_(2.0)  # the rope key
            else:
                attn.q_proj.weight.mul_(3.0)
                attn.k_proj.weight.mul_(5.0)
            after = attn(x, cos, sin)
        if qk_norm:
            torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
        else:
            assert (after - before).abs().max() > 1e-3


# ---- soft-caps and the output z-loss ------------------------------------------------------------------------
def test_attention_softcap_formula():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 6)
    mask = torch.ones(5, 7, dtype=torch.bool).tril(2)
    cap = 0.7
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    logits = cap * torch.tanh((q @ kk.transpose(-1, -2)) * 0.3 / cap)
    ref = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ vv
    torch.testing.assert_close(_attend(q, k, v, 0.3, mask, 0.0, cap, True), ref, atol=1e-5, rtol=1e-5)
    sdpa = _attend(q, kk, vv, 0.3, mask, 0.0)
    torch.testing.assert_close(_attend(q, kk, vv, 0.3, mask, 0.0, 1e4), sdpa, atol=1e-5, rtol=1e-5)  # cap >> logits
    assert (_attend(q, k, v, 0.3, mask, 0.0, cap, True) - sdpa).abs().max() > 1e-3


def _same_weights(cfg_a: ModelConfig, cfg_b: ModelConfig):
    a = MoETransformer(cfg_a)
    b = MoETransformer(cfg_b)
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


def test_logit_softcap_caps_the_logits_of_both_paths(make_model_cfg):
    torch.manual_seed(0)
    plain, capped = _same_weights(make_model_cfg(init_std=0.5), make_model_cfg(init_std=0.5, logit_softcap=2.0))
    x = torch.randint(0, 101, (2, 12))
    with torch.no_grad():
        raw, out = plain(x).logits, capped(x).logits
        torch.testing.assert_close(out, 2.0 * torch.tanh(raw / 2.0))
        assert raw.abs().max() > 2.0 and out.abs().max() < 2.0
        for chunk in (0, 5):  # the fused head + loss sees the same capped logits
            ce = capped(x[:, :-1], targets=x[:, 1:], ce_chunk_size=chunk).ce_sum
            ref = F.cross_entropy(out[:, :-1].reshape(-1, 101), x[:, 1:].reshape(-1), reduction="sum")
            torch.testing.assert_close(ce, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("chunk", [0, 1, 7, 64])
@pytest.mark.parametrize("cap", [0.0, 1.5])
def test_chunked_head_with_cap_and_z_loss_matches_autograd(chunk, cap):
    """Values and gradients of ce + c * z (z = sum of logsumexp^2) equal autograd through the full logits."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(40, 16), torch.randn(53, 16) * 0.5
    targets = torch.randint(0, 53, (40,))
    targets[::7] = IGNORE_INDEX
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logits = h @ w.T
    logits = cap * torch.tanh(logits / cap) if cap else logits
    keep = targets != IGNORE_INDEX
    ce_ref = F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)
    z_ref = (logits.logsumexp(-1).pow(2) * keep).sum()
    (0.3 * ce_ref + 0.05 * z_ref).backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ce, z = linear_cross_entropy(h2, w2, targets, chunk, cap, z_loss=True)
    (0.3 * ce + 0.05 * z).backward()
    torch.testing.assert_close(ce, ce_ref.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(z, z_ref.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(h2.grad, h.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w2.grad, w.grad, atol=1e-5, rtol=1e-4)


def test_output_z_loss_reaches_the_training_loss(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(output_z_loss_coef=1e-3)).train()
    x = torch.randint(0, 101, (2, 10))
    out = model(x[:, :-1], targets=x[:, 1:])
    with torch.no_grad():
        logits = model.eval()(x[:, :-1]).logits
    torch.testing.assert_close(out.lm_z_sum, logits.float().logsumexp(-1).pow(2).sum(), atol=1e-3, rtol=1e-5)
    assert MoETransformer(make_model_cfg()).train()(x[:, :-1], targets=x[:, 1:]).lm_z_sum is None  # off by default


# ---- sliding window ----------------------------------------------------------------------------------------
def test_window_mask():
    m = window_mask(4, 6, 3, torch.device("cpu"))  # queries at slots 2..5 of 6
    expect = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]).bool()
    assert torch.equal(m, expect)


@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_a_local_layer_never_sees_past_its_window(attention, make_model_cfg):
    """One local layer: the logits at t do not depend on tokens before t - window + 1, and do without a window."""
    torch.manual_seed(0)
    for window in (4, 0):
        model = MoETransformer(make_model_cfg(attention=attention, n_layers=1, sliding_window=window)).eval()
        x = torch.randint(0, 101, (2, 16))
        y = x.clone()
        y[:, 2] = (y[:, 2] + 5) % 101
        with torch.no_grad():
            a, b = model(x).logits, model(y).logits
        changed = (a - b).abs().amax(dim=(0, 2)) > 1e-5  # (T,)
        if window:
            assert changed[2:6].all() and not changed[6:].any()  # t - 3 <= 2 <= t
        else:
            assert changed[2:].all()


@pytest.mark.parametrize("attention", ["mla", "gqa"])
@pytest.mark.parametrize("extra", [dict(sliding_window=3, window_pattern="LG"), dict(qk_norm=True),
                                   dict(attn_softcap=0.5), dict(qk_norm=True, sliding_window=5, attn_softcap=2.0)])
def test_cached_decoding_equals_the_full_forward(attention, extra, make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(attention=attention, n_layers=3, **extra)).eval()
    x = torch.randint(0, 101, (2, 14))
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(3)
        got = [model(x[:, :6], cache=cache).logits, model(x[:, 6:9], cache=cache).logits]  # prefill, a chunk
        got += [model(x[:, t:t + 1], cache=cache).logits for t in range(9, 14)]
    torch.testing.assert_close(torch.cat(got, 1), full, atol=1e-5, rtol=1e-5)
    if extra.get("sliding_window"):
        w = extra["sliding_window"]
        for i in range(3):
            stored = cache.filled(i)[0].shape[-2 if attention == "gqa" else 1]
            assert stored == (w - 1 if model.cfg.window_of(i) else 14)  # a local layer keeps its window only


def test_windowed_generation_with_left_padding_equals_one_prompt_at_a_time(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(sliding_window=4, window_pattern="LG", n_layers=2)).eval()
    prompts = [[5, 9, 13, 2, 7, 8, 1], [3, 4]]
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0)
    together = list(generate_ids(model, prompts, cfg))
    alone = [list(generate_ids(model, [p], cfg))[0] for p in prompts]
    assert together == alone


# ---- multi-token prediction --------------------------------------------------------------------------------
def test_mtp_loss_is_the_token_after_next_and_leaves_the_main_path_alone(make_model_cfg):
    torch.manual_seed(0)
    with_mtp = MoETransformer(make_model_cfg(mtp_depth=1)).train()
    without = MoETransformer(make_model_cfg()).train()
    without.load_state_dict({k: v for k, v in with_mtp.state_dict().items() if not k.startswith("mtp.")})
    x = torch.randint(0, 101, (2, 12))
    inp, tgt = x[:, :-1], x[:, 1:].clone()
    tgt[1, 4] = IGNORE_INDEX
    out = with_mtp(inp, targets=tgt, return_hidden=True)
    torch.testing.assert_close(out.ce_sum, without(inp, targets=tgt).ce_sum)
    # reference: h_t and Emb(x_{t+1}) through the MTP module, the shared norm and head, scored on x_{t+2}
    cos, sin = rope_cos_sin(torch.arange(10), with_mtp.rope_dim, 10000.0)
    h = with_mtp.mtp(out.hidden_states[-1][:, :-1], with_mtp.embed_tokens(tgt[:, :-1].clamp_min(0)), cos, sin)
    logits = with_mtp.lm_head(with_mtp.norm(h))
    t2 = tgt[:, 1:].clone()
    t2[tgt[:, :-1] == IGNORE_INDEX] = IGNORE_INDEX  # x_{t+1} is padding: nothing to predict from
    ref = F.cross_entropy(logits.reshape(-1, 101), t2.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.mtp_loss, ref, atol=1e-5, rtol=1e-5)
    out.mtp_loss.backward()
    assert with_mtp.mtp.eh_proj.weight.grad.abs().sum() > 0
    assert with_mtp.eval()(inp, targets=tgt).mtp_loss is None  # dropped at inference


# ---- validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,key", [
    (dict(activation="relu"), "model.activation"), (dict(window_pattern="LX"), "model.window_pattern"),
    (dict(sliding_window=8, window_pattern="GG"), "model.window_pattern"), (dict(mtp_depth=2), "model.mtp_depth"),
    (dict(router_type="random"), "model.router_type"), (dict(attn_softcap=-1.0), "model.attn_softcap"),
    (dict(logit_softcap=-1.0), "model.logit_softcap"), (dict(sliding_window=-2), "model.sliding_window"),
    (dict(aux_loss_scope="token"), "model.aux_loss_scope"), (dict(output_z_loss_coef=-1.0), "model.output_z_loss_coef"),
])
def test_impossible_switches_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ModelConfig(**overrides)


def test_switches_label_and_the_old_activation_name():
    assert ModelConfig().switches() == "baseline"
    assert ModelConfig(qk_norm=True, sliding_window=64, window_pattern="LG").switches() == \
        "qk_norm=True; sliding_window=64; window_pattern=LG"
    assert ModelConfig(activation="silu").activation == "swiglu"  # checkpoints written before the switches
