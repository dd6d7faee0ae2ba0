import pytest
import torch

from moe_lm.model import MoETransformer
from moe_lm.model.cache import KVCache, StaticKVCache
from moe_lm.model.layers import apply_rope, rope_cos_sin


@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_changing_token_t_never_changes_earlier_logits(attention, make_model_cfg):
    model = MoETransformer(make_model_cfg(attention=attention, use_aux_free_bias=False)).eval()
    x = torch.randint(0, 101, (2, 24))
    t = 13
    y = x.clone()
    y[:, t] = (y[:, t] + 7) % 101
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    # up to float noise: expert matmuls group different rows when a later token changes its routing
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4  # the change is visible from t on


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_cos_sin(torch.tensor([pq]), 16, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([pk]), 16, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(5, 2), score(105, 102), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(9, 9), (q * k).sum(), rtol=1e-5, atol=1e-5)  # offset 0 = no rotation
    assert (score(5, 2) - score(6, 2)).abs() > 1e-4


def test_rope_preserves_norm():
    x = torch.randn(2, 3, 7, 8)
    cos, sin = rope_cos_sin(torch.arange(7), 8, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("kind", ["growing", "preallocated", "static"])
@pytest.mark.parametrize("attention,absorb", [("mla", True), ("mla", False), ("gqa", False)])
def test_cached_decoding_equals_full_forward(attention, absorb, kind, make_model_cfg):
    """The static cache attends over all its 96 slots: its own causal mask hides the unwritten ones."""
    cfg = make_model_cfg(attention=attention, mla_absorb=absorb)
    model = MoETransformer(cfg).eval()
    x = torch.randint(0, 101, (2, 88))
    with torch.no_grad():
        full = model(x).logits
        if kind == "static":
            cache = StaticKVCache(cfg.n_layers, 96, x.device)
        else:
            cache = KVCache(cfg.n_layers, 96 if kind == "preallocated" else None)
        parts = [model(x[:, :24], cache=cache).logits]  # prefill, then one token at a time
        parts += [model(x[:, i:i + 1], cache=cache).logits for i in range(24, 88)]  # 64 decode steps
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-4)


def test_mla_cache_holds_only_latent_and_rope_key(make_model_cfg):
    cfg = make_model_cfg()
    model = MoETransformer(cfg).eval()
    cache = KVCache(cfg.n_layers)
    with torch.no_grad():
        model(torch.randint(0, 101, (3, 10)), cache=cache)
    latent, k_rope = cache.layers[0]
    assert latent.shape == (3, 10, cfg.kv_lora_rank)
    assert k_rope.shape == (3, 1, 10, cfg.qk_rope_head_dim)


def test_preallocated_cache_writes_in_place_and_refuses_to_overflow(make_model_cfg):
    cfg = make_model_cfg()
    model = MoETransformer(cfg).eval()
    grow, fixed = KVCache(cfg.n_layers), KVCache(cfg.n_layers, max_len=12)
    x = torch.randint(0, 101, (2, 12))
    with torch.no_grad():
        for cache in (grow, fixed):
            model(x[:, :10], cache=cache)
        buffer = fixed.layers[0][0]
        for cache in (grow, fixed):
            model(x[:, 10:12], cache=cache)
        assert fixed.layers[0][0] is buffer  # the same storage, written in place
        for i in range(cfg.n_layers):
            for a, b in zip(grow.filled(i), fixed.filled(i)):
                assert torch.equal(a, b)
        assert fixed.seq_len == 12 and fixed.nbytes() == grow.nbytes()
        with pytest.raises(ValueError, match="KV cache full"):
            model(x[:, :1], cache=fixed)


def test_static_cache_holds_the_written_slots_and_a_window_layer_masks_by_slot_distance(make_model_cfg):
    """A sliding-window model decodes through the static cache (every slot kept, the window applied by the mask) as
    through the growing one (which keeps only the window); filled() and seq_len see the written slots."""
    cfg = make_model_cfg(sliding_window=5, window_pattern="LG")
    model = MoETransformer(cfg).eval()
    x = torch.randint(0, 101, (2, 20))
    grow, static = KVCache(cfg.n_layers), StaticKVCache(cfg.n_layers, 32, x.device)
    with torch.no_grad():
        out = {}
        for name, cache in (("grow", grow), ("static", static)):
            out[name] = [model(x[:, :8], cache=cache).logits] + [model(x[:, i:i + 1], cache=cache).logits
                                                                 for i in range(8, 20)]
    torch.testing.assert_close(torch.cat(out["static"], 1), torch.cat(out["grow"], 1), atol=1e-5, rtol=1e-5)
    assert static.seq_len == 20 and static.layers[0][0].shape[1] == 32
    torch.testing.assert_close(static.filled(1)[0], grow.filled(1)[0])  # the global layer: all 20 positions
    assert grow.filled(0)[0].shape[1] == 4 and static.filled(0)[0].shape[1] == 20  # window 5 keeps 4 in grow
