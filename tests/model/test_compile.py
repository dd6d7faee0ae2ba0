"""`trainer.compile=true`: the compiled model computes what the eager one does (CPU inductor here)."""

import copy

import pytest
import torch

from moe_lm.model import MoETransformer


@pytest.mark.slow
def test_compiled_model_matches_eager_forward_and_gradients(make_model_cfg):
    torch.manual_seed(0)
    eager = MoETransformer(make_model_cfg())
    compiled = copy.deepcopy(eager)
    compiled.compile()
    x = torch.randint(0, eager.cfg.vocab_size, (2, 16))
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c.logits, out_e.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c.aux_loss, out_e.aux_loss)
    (out_e.logits.square().mean() + out_e.aux_loss).backward()
    (out_c.logits.square().mean() + out_c.aux_loss).backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, atol=1e-5, rtol=1e-4, msg=name)
