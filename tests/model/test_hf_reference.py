"""Equivalence with HF transformers' DeepseekV3 (sigmoid) and DeepseekV2 (softmax) on tiny configs."""

import pytest
import torch

from moe_lm.model.hf_mapping import hf_config_kwargs, to_hf_state_dict
from moe_lm.model import MoETransformer

transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[dev]'")


@pytest.mark.parametrize("scoring,q_lora_rank", [("sigmoid", None), ("sigmoid", 24), ("softmax", None), ("softmax", 24)])
def test_logits_match_hf_deepseek(scoring, q_lora_rank, make_model_cfg):
    sigmoid = scoring == "sigmoid"
    cfg = make_model_cfg(n_layers=3, first_k_dense=1, scoring=scoring, q_lora_rank=q_lora_rank,
                            norm_topk_prob=sigmoid, tie_embeddings=False, routed_scaling_factor=1.5 if sigmoid else 1.0)
    model = MoETransformer(cfg).eval()
    if sigmoid:  # DeepseekV3 also applies the aux-free selection bias
        for moe in model.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.05)
    hf_cfg_cls = transformers.DeepseekV3Config if sigmoid else transformers.DeepseekV2Config
    hf_cls = transformers.DeepseekV3ForCausalLM if sigmoid else transformers.DeepseekV2ForCausalLM
    hf_cfg = hf_cfg_cls(**hf_config_kwargs(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = hf_cls(hf_cfg).eval()
    sd = to_hf_state_dict(model.state_dict())
    if not sigmoid:
        sd = {k: v for k, v in sd.items() if "e_score_correction_bias" not in k}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    x = torch.randint(0, cfg.vocab_size, (2, 19))
    with torch.no_grad():
        ours, ref = model(x).logits, hf(x).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
