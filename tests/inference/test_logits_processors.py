
import pytest
import torch

from moe_lm.config import SamplingConfig
from moe_lm.inference.logits_processors import (build_processors, epsilon_cutoff, min_p, next_token, no_repeat_ngram,
                                                presence_frequency_penalty, repetition_penalty, top_k, top_p)

EMPTY = torch.zeros((1, 0), dtype=torch.long)


def logits_of(probs):
    return torch.tensor([probs]).log()


def kept(logits):
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_p_keeps_smallest_set_reaching_p():
    x = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(top_p(0.5)(x, EMPTY)) == [0]  # 0.5 alone reaches 0.5
    assert kept(top_p(0.6)(x, EMPTY)) == [0, 1]
    assert kept(top_p(0.95)(x, EMPTY)) == [0, 1, 2]
    assert kept(top_p(1.0)(x, EMPTY)) == [0, 1, 2, 3]


def test_top_k_and_min_p_relative_to_top_probability():
    x = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(top_k(2)(x, EMPTY)) == [0, 1]
    assert kept(min_p(0.5)(x, EMPTY)) == [0, 1]  # threshold 0.25
    assert kept(min_p(0.2)(x, EMPTY)) == [0, 1, 2]  # threshold 0.10


def test_epsilon_cutoff_never_empties_the_distribution():
    x = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(epsilon_cutoff(0.1)(x, EMPTY)) == [0, 1, 2]
    assert kept(epsilon_cutoff(0.9)(x, EMPTY)) == [0]


def test_penalties_on_known_history():
    x = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    hist = torch.tensor([[0, 1, 1]])
    out = repetition_penalty(2.0)(x, hist)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # positive divided, negative multiplied, unseen unchanged
    out = presence_frequency_penalty(0.5, 0.25)(x, hist)
    assert out.tolist() == [[2.0 - 0.5 - 0.25, -2.0 - 0.5 - 0.5, 1.0, 0.5]]


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    hist = torch.tensor([[5, 6, 7, 5, 6]])  # the bigram (5, 6) was followed by 7 -> ban 7 after ... 5, 6?
    out = no_repeat_ngram(3)(torch.zeros(1, 10), hist)
    assert kept(out) == [i for i in range(10) if i != 7]
    out = no_repeat_ngram(2)(torch.zeros(1, 10), hist)  # after 6, 7 was seen
    assert kept(out) == [i for i in range(10) if i != 7]


def test_greedy_and_seeded_sampling_are_reproducible():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = SamplingConfig(temperature=0.0)
    assert next_token(logits, EMPTY, greedy, build_processors(greedy)).tolist() == logits.argmax(-1).tolist()
    cfg = SamplingConfig(temperature=0.8, top_k=20, top_p=0.9)
    procs = build_processors(cfg)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [next_token(logits, EMPTY, cfg, procs, g).tolist() for _ in range(10)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0), dict(top_k=-1),
                                 dict(min_p=1.0), dict(repetition_penalty=0.0), dict(max_new_tokens=0)])
def test_invalid_parameters_raise_naming_them(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**bad)
