"""The expert knockout matrix on a hand-built model whose router sends domain d's tokens to expert d alone."""

import pytest
import torch

from moe_lm.config import ConfigError
from moe_lm.eval.expert_vocab import expert_vocabulary
from moe_lm.eval.heldout import evaluate_domains
from moe_lm.eval.knockout import experts_removed, knockout_matrix
from moe_lm.model import MoETransformer

N_DOMAINS, IDS_PER_DOMAIN = 5, 20


def routed_by_domain(make_model_cfg) -> MoETransformer:
    """One MoE layer, top-1 of 6 experts, no attention output: token ids d*20..d*20+19 are domain d's, their
    embeddings lie along axis d, and router row d reads that axis; expert 5's row points away from every
    domain, so it never gets a token."""
    cfg = make_model_cfg(vocab_size=N_DOMAINS * IDS_PER_DOMAIN, n_layers=1, first_k_dense=0, top_k=1,
                         n_routed_experts=6)
    model = MoETransformer(cfg).eval()
    with torch.no_grad():
        model.layers[0].self_attn.o_proj.weight.zero_()
        emb = model.embed_tokens.weight
        for d in range(N_DOMAINS):
            emb[d * IDS_PER_DOMAIN:(d + 1) * IDS_PER_DOMAIN, d] = 1.0  # the domain axis dominates the norm
        gate = model.layers[0].mlp.gate.weight
        gate.zero_()
        gate[:N_DOMAINS, :N_DOMAINS] = 2 * torch.eye(N_DOMAINS)  # own logit ~16, others < 1
        gate[N_DOMAINS, :N_DOMAINS] = -2.0
        model.layers[0].mlp.experts.down_proj.mul_(20)  # experts that matter to the loss
    return model


def streams() -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(0)
    return {f"d{d}": (d * IDS_PER_DOMAIN + torch.randint(0, IDS_PER_DOMAIN, (300,), generator=g)).tolist()
            for d in range(N_DOMAINS)}


def test_a_router_by_domain_gives_a_diagonal_matrix(make_model_cfg):
    model = routed_by_domain(make_model_cfg)
    result = knockout_matrix(model, streams(), list(range(N_DOMAINS)), context=32, stride=32, batch_size=4)
    rise = torch.tensor(result["rise"])  # (D, E)
    assert rise.shape == (N_DOMAINS, 6)
    off = rise[:, :N_DOMAINS][~torch.eye(N_DOMAINS, dtype=torch.bool)]
    assert torch.equal(off, torch.zeros_like(off))  # another expert's removal leaves a domain's tokens alone
    assert (rise.diagonal().abs() > 1e-4).all(), rise.diagonal()
    assert torch.equal(rise[:, N_DOMAINS], torch.zeros(N_DOMAINS, dtype=rise.dtype))  # expert 5 had no token
    for name, r in result["ratios"].items():
        assert r["max_other_rise"] == 0 and r["ratio_mean"] is None and r["own_3x_any_other"] == (r["own_rise"] > 0)


def test_knocking_out_nothing_is_the_plain_evaluation(make_model_cfg):
    model = routed_by_domain(make_model_cfg)
    s = streams()
    infos = {n: {"files": [], "documents": 0, "skipped": {}, "bytes": None} for n in s}
    plain = [r["loss"] for r in evaluate_domains(model, s, infos, 32, 16, 4, "fp32")[0]]
    with experts_removed(model, []):
        none = [r["loss"] for r in evaluate_domains(model, s, infos, 32, 16, 4, "fp32")[0]]
    assert plain == none
    assert knockout_matrix(model, s, list(range(N_DOMAINS)), 32, 16, 4)["base_loss"] == plain
    assert all(m.gate.removed_experts is None for m in model.moe_layers())  # restored after the block


def test_removing_too_many_experts_or_unknown_ones_is_refused(make_model_cfg):
    model = MoETransformer(make_model_cfg())  # 5 experts, top-2
    with pytest.raises(ConfigError, match="fewer than top_k"):
        with experts_removed(model, [0, 1, 2, 3]):
            pass
    with pytest.raises(ConfigError, match="routed experts 0..4"):
        with experts_removed(model, [7]):
            pass


def test_expert_vocabulary_ranks_tokens_by_lift():
    counts = torch.zeros(6, 2, dtype=torch.long)
    counts[0] = torch.tensor([90, 10])  # token 0 mostly on expert 0
    counts[1] = torch.tensor([50, 50])
    counts[2] = torch.tensor([5, 95])
    vocab = expert_vocabulary(counts, None, top=2, min_count=20)
    total, e0 = 300, 145
    assert [t["id"] for t in vocab[0]] == [0, 1]
    assert vocab[0][0]["lift"] == pytest.approx((90 / e0) / (100 / total), abs=1e-3)
    assert [t["id"] for t in vocab[1]] == [2, 1]  # token 0 has 10 < 20 slots on expert 1
