import itertools
import math
from types import SimpleNamespace

import torch
from torch import nn

from moe_lm.inference.beam import beam_search
from moe_lm.inference.decode import greedy_decode
from moe_lm.model import MoETransformer

EOS = 4


class MarkovToy(nn.Module):
    """Next-token distribution depends on the last token only (a table), same call interface as the model."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(table.log())
        self.cfg = SimpleNamespace(n_layers=1, max_seq_len=64)

    def forward(self, ids, cache=None, positions=None, attn_mask=None, routing_stats=True):
        if cache is not None:
            cache.update(0, torch.zeros(ids.shape[0], ids.shape[1], 1))
        return SimpleNamespace(logits=self.logits[ids])


def toy() -> MarkovToy:
    eps = 1e-6
    t = torch.full((5, 5), eps)
    t[0, 1], t[0, 2] = 0.6, 0.4  # start: greedy takes 1 ...
    t[1, :] = 0.2  # ... but after 1 everything is equally unlikely
    t[2, 3], t[2, 0] = 0.9, 0.1  # 2 -> 3 is near certain
    t[3, EOS] = 1.0
    return MarkovToy(t / t.sum(-1, keepdim=True))


@torch.no_grad()
def seq_logp(model, prompt, seq):
    ids = prompt + seq
    lp = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
    return sum(float(lp[i - 1, ids[i]]) for i in range(len(prompt), len(ids)))


def test_beam_finds_the_most_probable_sequence_where_greedy_does_not():
    model = toy()
    greedy = greedy_decode(model, [0], max_new_tokens=3, eos_id=EOS)
    best, score = beam_search(model, [0], num_beams=3, max_new_tokens=3, length_penalty=0.0, eos_id=EOS)
    assert greedy[0] == 1 and best == [2, 3]
    # brute force over every continuation of length <= 3 that ends in EOS (or is cut at 3 tokens)
    def full(seq):
        return seq_logp(model, [0], seq + ([EOS] if len(seq) < 3 else []))
    cands = [list(c) for n in (1, 2, 3) for c in itertools.product(range(4), repeat=n)]
    assert best == max(cands, key=full)
    assert math.isclose(score, full(best), rel_tol=1e-5)


def test_one_beam_equals_greedy_on_the_real_model(make_model_cfg):
    model = MoETransformer(make_model_cfg()).eval()
    prompt = [5, 6, 7]
    best, _ = beam_search(model, prompt, num_beams=1, max_new_tokens=12)
    assert best == greedy_decode(model, prompt, max_new_tokens=12)
