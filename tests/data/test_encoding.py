"""Batch tokenisation: the fast path gives encode_batch's ids, and a worker pool gives them in input order."""

import numpy as np

from moe_lm.data.bpe import train_bpe
from moe_lm.data.encoding import Encoder, batched, encode

TEXTS = [f"document {i}: {'naïve café ' * (i % 4)}x = {i * 37} \\u2028 end" for i in range(50)] + ["", "€" * 9]


def test_fast_encode_gives_the_ids_and_utf8_sizes_of_encode_batch():
    tok = train_bpe(TEXTS, 300)
    ids, sizes = encode(tok, TEXTS)
    assert [a.tolist() for a in ids] == [e.ids for e in tok.encode_batch(TEXTS)]
    assert sizes == [len(t.encode("utf-8")) for t in TEXTS]
    assert all(a.dtype == np.uint32 for a in ids)


def test_pool_returns_batches_in_input_order():
    tok = train_bpe(TEXTS, 300)
    batches = list(batched(TEXTS, 3))
    assert [len(b) for b in batches] == [3] * 17 + [1]
    with Encoder(tok, 0) as here, Encoder(tok, 2) as pool:
        a, b = list(here.map(iter(batches))), list(pool.map(iter(batches)))
    assert len(a) == len(b) == len(batches)
    for (ids_a, n_a), (ids_b, n_b) in zip(a, b):
        assert n_a == n_b and [x.tolist() for x in ids_a] == [x.tolist() for x in ids_b]
