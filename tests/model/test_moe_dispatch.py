"""model.moe_impl: every dispatch path gives the loop's outputs and gradients; the host-sync-free ones compile
without a graph break."""

import math

import pytest
import torch

from moe_lm.model import MoETransformer
from moe_lm.model.loss import IGNORE_INDEX
from moe_lm.model.experts import expert_counts, traceable_grouped_mm
from moe_lm.model.moe import MoE

PATHS = ["grouped_mm", "bmm", "capacity"]  # capacity at its default C = N: nothing dropped


def _pair(make_model_cfg, impl: str, **overrides) -> tuple[MoE, MoE]:
    torch.manual_seed(0)
    ref = MoE(make_model_cfg(moe_impl="loop", **overrides))
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    other = MoE(make_model_cfg(moe_impl=impl, **overrides))
    other.load_state_dict(ref.state_dict())
    return ref, other


def _forward_backward(moe: MoE, x: torch.Tensor, mask, upstream: torch.Tensor):
    x = x.clone().requires_grad_()
    y, stats = moe(x, token_mask=mask)
    (y * upstream).sum().backward()
    return y, stats, x.grad, {n: p.grad for n, p in moe.named_parameters()}


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("shape", [dict(), dict(n_routed_experts=20, top_k=8, moe_intermediate_size=16)],
                         ids=["5-top2", "20-top8"])
@pytest.mark.parametrize("masked", [False, True])
def test_dispatch_paths_match_the_loop_in_outputs_and_gradients(impl, shape, masked, make_model_cfg):
    ref, other = _pair(make_model_cfg, impl, **shape)
    x = torch.randn(3, 11, ref.cfg.d_model)
    mask = torch.rand(3, 11) > 0.3 if masked else None
    upstream = torch.randn_like(x)
    y_ref, s_ref, gx_ref, g_ref = _forward_backward(ref, x, mask, upstream)
    y, s, gx, g = _forward_backward(other, x, mask, upstream)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    assert set(g) == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(s.expert_counts, s_ref.expert_counts)
    torch.testing.assert_close(s.aux_loss, s_ref.aux_loss)


def _expert_mlp(moe: MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    gate, up = torch.nn.functional.linear(x, moe.experts.gate_up_proj[e]).chunk(2, -1)
    return torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, moe.experts.down_proj[e])


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.25])
def test_capacity_keeps_first_choices_first_and_counts_what_it_drops(factor, make_model_cfg):
    """C = ceil(factor * N * K / E) rows per expert; slots are placed first choices first, in token order; a slot
    past its expert's C rows adds nothing. Checked against a per-slot reference of that rule."""
    ref, _ = _pair(make_model_cfg, "capacity", n_shared_experts=0)
    moe = MoE(make_model_cfg(moe_impl="capacity", capacity_factor=factor, n_shared_experts=0))
    moe.load_state_dict(ref.state_dict())
    x = torch.randn(40, ref.cfg.d_model)
    y, stats = moe(x)
    N, K, E = 40, moe.cfg.top_k, moe.cfg.n_routed_experts
    C = math.ceil(factor * N * K / E)
    taken, want = [0] * E, torch.zeros_like(x)
    for k in range(K):
        for n in range(N):
            e = int(stats.topk_idx[n, k])
            if taken[e] < C:
                taken[e] += 1
                want[n] += stats.topk_weight[n, k] * _expert_mlp(moe, e, x[n])
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    assert int(stats.dropped) == int((stats.expert_counts - C).clamp_min(0).sum()) == N * K - sum(taken)
    assert factor >= 1.25 or int(stats.dropped) > 0  # the rule is exercised
    moe.eval()  # evaluation and decoding drop nothing
    torch.testing.assert_close(moe(x)[0], ref.eval()(x)[0], atol=1e-5, rtol=1e-5)


def test_capacity_settings_are_checked_at_start_up():
    from moe_lm.cli import compose
    from moe_lm.config import ConfigError

    with pytest.raises(ConfigError, match="model.capacity_factor"):
        compose(["model.capacity_factor=1.25"])  # the default dispatch drops nothing: the key would be ignored
    with pytest.raises(ConfigError, match="model.capacity_factor"):
        compose(["model.moe_impl=capacity", "model.capacity_factor=0"])
    with pytest.raises(ConfigError, match="trainer.compile_mode"):
        compose(["model.moe_impl=loop", "trainer.compile=true", "trainer.compile_mode=reduce-overhead"])
    compose(["model.moe_impl=capacity", "model.capacity_factor=1.25", "trainer.compile=true",
             "trainer.compile_mode=reduce-overhead"])


def test_grouped_mm_under_bf16_autocast_matches_the_loop(make_model_cfg):
    ref, other = _pair(make_model_cfg, "grouped_mm", d_model=64, moe_intermediate_size=32)
    x = torch.randn(64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = ref(x)[0], other(x)[0]
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)  # bf16: one rounding apart


def test_auto_picks_grouped_mm_on_cpu_and_refuses_it_where_widths_are_misaligned(make_model_cfg):
    moe = MoE(make_model_cfg(moe_impl="auto", d_model=64, moe_intermediate_size=32))
    assert moe.experts.resolved_impl(torch.zeros(1, 64)) == "grouped_mm"
    odd = MoE(make_model_cfg(moe_impl="auto", d_model=64, moe_intermediate_size=12))  # 12 bf16 = 24 bytes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert odd.experts.resolved_impl(torch.zeros(1, 64)) == "loop"
        forced = MoE(make_model_cfg(moe_impl="grouped_mm", d_model=64, moe_intermediate_size=12))
        with pytest.raises(ValueError, match="model.moe_impl"):
            forced(torch.zeros(4, 64))


def test_expert_counts_equal_bincount():
    idx = torch.randint(0, 7, (50, 3))
    torch.testing.assert_close(expert_counts(idx, 7), torch.bincount(idx.flatten(), minlength=7))


def test_traceable_grouped_mm_equals_torchs_in_fp32_values_and_gradients():
    """The opaque op compiled fp32 code calls: torch's own op's values and gradients, an empty group included;
    its fake (shapes) and autograd registrations pass torch's checker."""
    torch.manual_seed(0)
    a, b = torch.randn(7, 16, requires_grad=True), torch.randn(3, 16, 8, requires_grad=True)
    offs = torch.tensor([3, 3, 7], dtype=torch.int32)  # group 1 is empty
    upstream = torch.randn(7, 8)
    ref = torch.nn.functional.grouped_mm(a, b, offs=offs)
    ga, gb = torch.autograd.grad((ref * upstream).sum(), (a, b))
    out = traceable_grouped_mm(a, b, offs)
    ta, tb = torch.autograd.grad((out * upstream).sum(), (a, b))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ta, ga)
    torch.testing.assert_close(tb, gb)
    assert tb[1].abs().max() == 0
    torch.library.opcheck(traceable_grouped_mm, (a, b, offs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("impl", PATHS)
def test_training_forward_has_no_graph_break_without_the_loop(impl, dtype, make_model_cfg):
    """The call training makes (padding masked, loss fused with the head) traces as one graph, in bf16 (torch's
    grouped GEMM) and fp32 (through traceable_grouped_mm)."""
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg(moe_impl=impl)).train()
    ids, targets = torch.randint(0, model.cfg.vocab_size, (2, 2, 16))
    targets[1, 10:] = IGNORE_INDEX  # padding
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        explained = torch._dynamo.explain(model)(ids, token_mask=targets != IGNORE_INDEX, targets=targets)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    torch._dynamo.reset()


def test_the_loop_path_does_break_the_graph(make_model_cfg):
    """The check above can fail: the loop's host sync shows up as graph breaks."""
    model = MoETransformer(make_model_cfg(moe_impl="loop")).train()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16))
    assert torch._dynamo.explain(model)(ids).graph_break_count > 0
    torch._dynamo.reset()


@pytest.mark.parametrize("capability,want", [((9, 0), "grouped_mm"), ((8, 0), "loop"), ((7, 5), "loop")])
def test_auto_on_cuda_follows_the_measured_table_and_is_the_loop_where_unmeasured(capability, want, monkeypatch):
    """sm90 in bf16 was measured (grouped_mm fastest); an unmeasured GPU gets the loop, which runs everywhere.
    The device is faked: the table's decision is what is tested, not the kernels."""
    from moe_lm.model import experts

    monkeypatch.setattr(experts, "grouped_mm_supported", lambda x, widths: capability >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    fake = type("FakeCuda", (), {"device": torch.device("cuda"), "dtype": torch.bfloat16})()
    monkeypatch.setattr(experts, "compute_dtype", lambda t: torch.bfloat16)
    assert experts.auto_dispatch(fake, (64, 32)) == want


def _sm80() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.skipif(not _sm80(), reason="needs a CUDA GPU of compute capability 8.0 or newer (none here)")
def test_auto_runs_grouped_mm_on_cuda_in_bf16_and_matches_the_loop(make_model_cfg):
    """grouped_mm equals the loop on any sm80+ GPU; auto picks it where the table measured it fastest (sm90)."""
    from moe_lm.model.experts import MEASURED_CUDA_DISPATCH

    ref, other = _pair(make_model_cfg, "grouped_mm", d_model=64, moe_intermediate_size=32)
    ref, other = ref.cuda(), other.cuda()
    auto = MoE(make_model_cfg(moe_impl="auto", d_model=64, moe_intermediate_size=32)).cuda()
    x = torch.randn(256, 64, device="cuda")
    major = torch.cuda.get_device_capability()[0]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert auto.experts.resolved_impl(x) == MEASURED_CUDA_DISPATCH.get((major, torch.bfloat16), "loop")
        assert other.experts.resolved_impl(x) == "grouped_mm"
        y_ref, y = ref(x)[0], other(x)[0]
    torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)
