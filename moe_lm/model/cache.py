"""KV cache: per layer, the tensors an attention layer needs to attend to past tokens.

MLA stores only its compressed latent (B, S, C) and the shared RoPE key (B, 1, S, R);
GQA stores K and V per kv head (B, G, S, E). The sequence axis is dim -2 for 4-D tensors
and dim 1 for the 3-D latent.

A sliding-window layer (update(..., keep=w - 1)) stores only its last w - 1 positions, all a later token can see;
its buffers are never preallocated (they stay short, so the copy per step is bounded).

With max_len, each layer's buffers are allocated once, at the first update, for max_len positions; every step
then writes its tokens in place and attention reads a view of the filled part (no per-step concatenation, whose
copies grow with the sequence). Without it the cache grows by concatenation (any length).
"""

from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    def __init__(self, n_layers: int, max_len: Optional[int] = None) -> None:
        self.layers: list[tuple[torch.Tensor, ...] | None] = [None] * n_layers  # full buffers when max_len
        self.max_len = max_len
        self.lengths = [0] * n_layers  # positions seen
        self.windowed: set[int] = set()  # layers that keep only the last positions (their tensors are all stored)

    @staticmethod
    def _seq_dim(t: torch.Tensor) -> int:
        return 1 if t.dim() == 3 else 2

    def update(self, layer_idx: int, *new: torch.Tensor, keep: Optional[int] = None) -> tuple[torch.Tensor, ...]:
        """Append this step's tensors to layer `layer_idx` and return the full cached tensors. keep: store only
        the last `keep` positions afterwards (returned: the stored ones before this step, then the new ones)."""
        dims = [self._seq_dim(n) for n in new]
        start, end = self.lengths[layer_idx], self.lengths[layer_idx] + new[0].shape[dims[0]]
        past = self.layers[layer_idx]
        if keep is not None:
            if past is not None:
                new = tuple(torch.cat((p, n), d) for p, n, d in zip(past, new, dims))
            S = new[0].shape[dims[0]]
            self.layers[layer_idx] = tuple(n.narrow(d, max(0, S - keep), min(S, keep)) for n, d in zip(new, dims))
            self.lengths[layer_idx] = end
            self.windowed.add(layer_idx)
            return new
        if self.max_len is None:
            if past is not None:
                new = tuple(torch.cat((p, n), d) for p, n, d in zip(past, new, dims))
            self.layers[layer_idx], self.lengths[layer_idx] = new, end
            return new
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions, allocated for max_len={self.max_len}")
        if past is None:
            past = self.layers[layer_idx] = tuple(
                n.new_empty(n.shape[:d] + (self.max_len,) + n.shape[d + 1:]) for n, d in zip(new, dims))
        for buf, n, d in zip(past, new, dims):
            buf.narrow(d, start, end - start).copy_(n)
        self.lengths[layer_idx] = end
        return tuple(buf.narrow(d, 0, end) for buf, d in zip(past, dims))

    def filled(self, layer_idx: int) -> tuple[torch.Tensor, ...]:
        """Layer `layer_idx`'s cached tensors: seq_len positions long, or its window's."""
        layer = self.layers[layer_idx]
        if layer is None:
            return ()
        if layer_idx in self.windowed:
            return layer
        return tuple(t.narrow(self._seq_dim(t), 0, self.lengths[layer_idx]) for t in layer)

    def reorder(self, index: torch.Tensor) -> None:
        """Select / repeat batch rows (beam search): row i becomes old row index[i]."""
        self.layers = [None if layer is None else tuple(t.index_select(0, index) for t in layer)
                       for layer in self.layers]

    @property
    def seq_len(self) -> int:
        return self.lengths[0]

    def nbytes(self) -> int:
        """Bytes of the cached positions (not of the unused part of preallocated buffers)."""
        return sum(t.numel() * t.element_size() for i in range(len(self.layers)) for t in self.filled(i))
