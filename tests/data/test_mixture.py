"""The batch plan: round-robin single-domain batches, then the mixture; a pure function of (seed, k)."""

import numpy as np

from moe_lm.data.mixture import BatchPlan


def test_round_robin_then_mixture_frequencies(make_domains_cfg):
    cfg = make_domains_cfg("unused", round_robin_steps=6, round_robin_web=False, mixture="explicit",
                           mixture_weights={"math": 0.5, "code": 0.3, "web": 0.2}, batch_size=10)
    plan = BatchPlan(cfg, [3000, 1000, 6000], seed=1, accumulate=2)
    firsts = [plan.batch(k)[0] for k in range(12)]  # 6 optimizer steps x 2 micro-batches
    assert all(len(set(d.tolist())) == 1 for d in firsts)  # phase 1: whole batches from one domain
    assert [int(d[0]) for d in firsts] == [0, 0, 1, 1] * 3  # expert domains only, per optimizer step
    draws = np.concatenate([plan.batch(k)[0] for k in range(12, 12 + 1000)])  # 10k samples in phase 2
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - [0.5, 0.3, 0.2]).max() < 0.02


def test_token_and_temperature_mixtures(make_domains_cfg):
    from moe_lm.data.mixture import mixture_weights

    cfg = make_domains_cfg("unused")
    w = mixture_weights(cfg, {"math": 3000, "code": 1000, "web": 6000})
    np.testing.assert_allclose(w, [0.3, 0.1, 0.6])
    hot = mixture_weights(make_domains_cfg("unused", mixture="temperature", mixture_temperature=1e6),
                          {"math": 3000, "code": 1000, "web": 6000})
    np.testing.assert_allclose(hot, [1 / 3] * 3, atol=1e-4)  # high temperature flattens
