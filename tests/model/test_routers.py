"""Routing baselines (model.router_type: expert_choice, hash) and DeepSeek-V3's sequence-wise balance loss
(model.aux_loss_scope=sequence), against reference computations."""

import pytest
import torch

from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache
from moe_lm.model.layers import rope_cos_sin
from moe_lm.model.balance import load_balance_loss, sequence_balance_loss
from moe_lm.model.moe import MoE


def _moe(make_model_cfg, **kw) -> MoE:
    torch.manual_seed(0)
    moe = MoE(make_model_cfg(**kw))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return moe


def _expert(moe: MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    gate, up = (x @ moe.experts.gate_up_proj[e].T).chunk(2, -1)
    return (torch.nn.functional.silu(gate) * up) @ moe.experts.down_proj[e].T


def test_expert_choice_each_expert_takes_its_top_c_tokens(make_model_cfg):
    moe = _moe(make_model_cfg, router_type="expert_choice", n_shared_experts=0).train()
    x = torch.randn(2, 10, 64)
    y, stats = moe(x)
    x2 = x.reshape(20, 64)
    scores = moe.gate(x2).scores  # (N, E)
    C = round(20 * 2 / 5)
    ref = torch.zeros(20, 64)
    for e in range(5):
        w, tok = scores[:, e].topk(C)
        ref[tok] += w[:, None] * _expert(moe, e, x2[tok])
    torch.testing.assert_close(y.reshape(20, 64), ref, atol=1e-5, rtol=1e-5)
    assert stats.expert_counts.tolist() == [C] * 5  # balanced by construction
    assert stats.aux_loss == 0  # nothing to balance


def test_expert_choice_never_picks_padding_and_cannot_decode(make_model_cfg):
    moe = _moe(make_model_cfg, router_type="expert_choice").train()
    x = torch.randn(1, 12, 64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 8:] = False
    y_masked, stats = moe(x, mask)
    assert stats.expert_counts.sum() == 5 * round(12 * 2 / 5)  # every chosen token is a real one
    moe.shared_experts = None
    y_only, _ = moe(x, mask)
    assert y_only[0, 8:].abs().max() == 0  # no expert ran on the padding
    model = MoETransformer(make_model_cfg(router_type="expert_choice")).eval()
    with pytest.raises(ValueError, match=r"model\.router_type=expert_choice cannot decode"):
        model(torch.tensor([[1, 2, 3]]), cache=KVCache(2))


def test_hash_routing_is_a_fixed_balanced_map_of_token_ids(make_model_cfg):
    moe = _moe(make_model_cfg, router_type="hash", n_shared_experts=0).train()
    ids = torch.randint(0, 101, (2, 15))
    x = torch.randn(2, 15, 64)
    y, stats = moe(x, token_ids=ids)
    first = moe.hash_table[ids.reshape(-1)]
    assert torch.equal(stats.topk_idx, torch.stack([first, (first + 1) % 5], 1))
    counts = torch.bincount(moe.hash_table, minlength=5)
    assert counts.max() - counts.min() <= 1  # every expert gets the same share of the vocabulary
    x2 = x.reshape(30, 64)
    ref = torch.stack([(_expert(moe, int(a), x2[n]) + _expert(moe, int(b), x2[n])) / 2
                       for n, (a, b) in enumerate(stats.topk_idx)])
    torch.testing.assert_close(y.reshape(30, 64), ref, atol=1e-5, rtol=1e-5)
    again = MoE(make_model_cfg(router_type="hash"))  # the same map in every process and run
    assert torch.equal(again.hash_table, moe.hash_table)
    with pytest.raises(ValueError, match="token ids"):
        moe(x)


def test_hash_routed_model_decodes_like_its_full_forward(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(router_type="hash")).eval()
    x = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(2)
        steps = [model(x[:, :5], cache=cache).logits] + [model(x[:, t:t + 1], cache=cache).logits for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_sequence_loss_is_the_batch_loss_of_each_sequence_averaged():
    torch.manual_seed(0)
    scores = torch.rand(3, 8, 5)
    idx = scores.topk(2, dim=-1).indices
    mask = torch.ones(4, 8)
    mask[2, 5:] = 0
    mask[3] = 0  # all padding: left out of the mean
    scores, idx = torch.cat([scores, torch.rand(1, 8, 5)]), torch.cat([idx, idx[:1]])
    per_seq = []
    for b in range(3):
        keep = mask[b] > 0
        counts = torch.bincount(idx[b][keep].reshape(-1), minlength=5)
        per_seq.append(load_balance_loss(scores[b][keep], counts, 2, "sigmoid"))
    torch.testing.assert_close(sequence_balance_loss(scores, idx, 2, "sigmoid", mask), torch.stack(per_seq).mean())


def test_sequence_loss_sees_imbalance_the_batch_loss_averages_away():
    """Sequence 0 sends everything to experts 0-1, sequence 1 to experts 2-3: balanced over the batch only."""
    scores = torch.full((2, 4, 4), 0.1)
    scores[0, :, :2] = scores[1, :, 2:] = 0.9
    idx = scores.topk(2, dim=-1).indices
    counts = torch.bincount(idx.reshape(-1), minlength=4)
    batch = load_balance_loss(scores.reshape(8, 4), counts, 2, "sigmoid")
    seq = sequence_balance_loss(scores, idx, 2, "sigmoid")
    torch.testing.assert_close(batch, torch.tensor(1.0))
    assert seq > 1.5


def test_the_model_uses_the_configured_scope(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(aux_loss_scope="sequence")).train()
    x = torch.randint(0, 101, (3, 10))
    out = model(x)
    ref = []  # each MoE layer's loss, recomputed from its own routing output
    h = model.embed_tokens(x)
    cos, sin = rope_cos_sin(torch.arange(10), model.rope_dim, 1e4)
    for layer in model.layers:
        a = h + layer.self_attn(layer.input_layernorm(h), cos, sin)
        r = layer.mlp.gate(layer.post_attention_layernorm(a).reshape(30, -1))
        ref.append(sequence_balance_loss(r.scores.view(3, 10, 5), r.topk_idx.view(3, 10, 2), 2, "sigmoid"))
        h = layer(h, cos, sin, token_ids=x)[0]
    torch.testing.assert_close(out.aux_loss, torch.stack(ref).mean(), atol=1e-5, rtol=1e-5)
