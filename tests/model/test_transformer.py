"""Whole-model invariants that belong to no single layer."""

import torch

from moe_lm.model import MoETransformer


def test_gradient_checkpointing_gives_the_same_loss_gradients_and_expert_loads(make_model_cfg):
    torch.manual_seed(0)
    cfg = make_model_cfg(dropout=0.1)  # dropout too: the recomputation must replay the same masks
    model = MoETransformer(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    results = []
    for recompute in (False, True):
        model.gradient_checkpointing = recompute
        model.zero_grad()
        for moe in model.moe_layers():
            moe.tokens_per_expert.zero_()
        torch.manual_seed(1)
        out = model(ids)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids.flatten()) + out.aux_loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        [moe.tokens_per_expert.clone() for moe in model.moe_layers()]))
    (loss_a, grads_a, load_a), (loss_b, grads_b, load_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-7, msg=n)
    for a, b in zip(load_a, load_b):  # counted once, not again when the forward is recomputed
        assert a.tolist() == b.tolist() and a.sum() == ids.numel() * cfg.top_k
