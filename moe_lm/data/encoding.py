"""Tokenising documents in batches, in this process or in a pool of worker processes, results in input order.

In this process, `encode_batch_fast` spreads each batch over the tokenizer's threads (all cores). With
prepare.workers = N, N spawned processes each hold the tokenizer (one thread each) and encode whole batches; at
most 2N batches are in flight and results come back in submission order, so the shards are byte-identical to the
in-process path. Both return token ids as arrays and the UTF-8 size of each document.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from itertools import islice
from typing import Iterable, Iterator, Optional

import numpy as np
from tokenizers import Tokenizer

Encoded = tuple[list[np.ndarray], list[int]]  # token ids per document, UTF-8 bytes per document

_worker_tok: Optional[Tokenizer] = None  # set in each worker process by _init_worker


def encode(tok: Tokenizer, docs: list[str]) -> Encoded:
    """Token ids (no offsets tracked: the fast path) and the UTF-8 byte count of each document."""
    return ([np.asarray(e.ids, dtype=np.uint32) for e in tok.encode_batch_fast(docs)],
            [len(d.encode()) for d in docs])


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tok
    os.environ["RAYON_NUM_THREADS"] = "1"  # one thread per process: the pool is the parallelism
    _worker_tok = Tokenizer.from_str(tokenizer_json)


def _encode_in_worker(docs: list[str]) -> Encoded:
    assert _worker_tok is not None
    return encode(_worker_tok, docs)


def batched(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(docs)
    while batch := list(islice(it, size)):
        yield batch


class Encoder:
    """`with Encoder(tok, workers) as enc: for ids, nbytes in enc.map(batches): ...`"""

    def __init__(self, tok: Tokenizer, workers: int = 0) -> None:
        self.tok, self.workers = tok, workers
        self.pool = None
        if workers > 0:  # spawn: a forked child would inherit the parent's tokenizer thread pool in a broken state
            self.pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(tok.to_str(),))

    def map(self, batches: Iterable[list[str]]) -> Iterator[Encoded]:
        """Encoded batches in input order. Reads at most 2 x workers batches ahead of what it has yielded."""
        if self.pool is None:
            for batch in batches:
                yield encode(self.tok, batch)
            return
        pending: deque = deque()
        for batch in batches:
            pending.append(self.pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __enter__(self) -> "Encoder":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()  # results still in flight (a source that reached its share) are not needed
            self.pool.join()
