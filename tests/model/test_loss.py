"""The chunked LM head + cross-entropy equals the plain one in value and gradients, and holds less memory."""

import pytest
import torch
import torch.nn.functional as F

from moe_lm.model import MoETransformer
from moe_lm.model.loss import IGNORE_INDEX, linear_cross_entropy


def _grads(hidden, weight, targets, chunk, scale=1.0):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, _ = linear_cross_entropy(h, w, targets, chunk)
    (scale * loss).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_plain_in_fp32(chunk):
    torch.manual_seed(0)
    hidden, weight = torch.randn(50, 16), torch.randn(97, 16)
    targets = torch.randint(0, 97, (50,))
    ref = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    loss, gh, gw = _grads(hidden, weight, targets, chunk, scale=0.37)  # a downstream scale reaches the grads
    loss0, gh0, gw0 = _grads(hidden, weight, targets, 0, scale=0.37)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss0, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh, gh0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, gw0, atol=1e-5, rtol=1e-5)


def test_chunked_under_bf16_autocast_matches_plain():
    torch.manual_seed(0)
    hidden, weight = torch.randn(64, 32), torch.randn(211, 32) * 0.1
    targets = torch.randint(0, 211, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, gh, gw = _grads(hidden, weight, targets, 16)
        loss0, gh0, gw0 = _grads(hidden, weight, targets, 0)
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(loss, loss0, atol=1e-4, rtol=1e-5)  # the same bf16 logits, summed in fp32
    torch.testing.assert_close(gh, gh0, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(gw, gw0, atol=1e-2, rtol=1e-2)


def test_without_grad_no_gradient_is_computed():
    hidden, weight = torch.randn(8, 4, requires_grad=True), torch.randn(11, 4, requires_grad=True)
    with torch.no_grad():
        loss, _ = linear_cross_entropy(hidden, weight, torch.randint(0, 11, (8,)), 3)
    assert not loss.requires_grad


def test_model_fused_loss_equals_cross_entropy_of_its_logits(make_model_cfg):
    torch.manual_seed(0)
    model = MoETransformer(make_model_cfg()).train()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12))
    targets = torch.randint(0, model.cfg.vocab_size, (2, 12))
    valid = torch.rand(2, 12) > 0.2
    plain = model(ids, logits_at=valid, token_mask=valid)
    fused = model(ids, logits_at=valid, token_mask=valid, targets=targets[valid], ce_chunk_size=5)
    assert fused.logits is None
    ref = F.cross_entropy(plain.logits.float(), targets[valid], reduction="sum")
    torch.testing.assert_close(fused.ce_sum, ref, atol=1e-5, rtol=1e-5)
    ref.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    fused.ce_sum.backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_chunks_hold_less_memory_than_the_full_logits():
    """The saved tensors of the chunked path are the gradients (M x D + V x D), never the M x V logits."""
    hidden = torch.randn(512, 16, requires_grad=True)
    weight = torch.randn(5000, 16, requires_grad=True)
    targets = torch.randint(0, 5000, (512,))
    saved = {}
    for chunk in (0, 64):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            linear_cross_entropy(hidden, weight, targets, chunk)
        saved[chunk] = sum(total)
    assert saved[0] >= 512 * 5000 * 4  # the fp32 logits
    assert saved[64] <= (512 * 16 + 5000 * 16) * 4 * 1.01


@pytest.mark.parametrize("chunk", [0, 4])
def test_ignored_targets_count_for_nothing(chunk):
    torch.manual_seed(0)
    hidden, weight = torch.randn(10, 8), torch.randn(13, 8)
    targets = torch.randint(0, 13, (10,))
    targets[[1, 6, 7]] = IGNORE_INDEX
    keep = targets != IGNORE_INDEX
    loss, gh, gw = _grads(hidden, weight, targets, chunk)
    ref, rgh, rgw = _grads(hidden[keep], weight, targets[keep], 0)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh[keep], rgh, atol=1e-5, rtol=1e-5)
    assert gh[~keep].abs().max() == 0
    torch.testing.assert_close(gw, rgw, atol=1e-5, rtol=1e-5)
