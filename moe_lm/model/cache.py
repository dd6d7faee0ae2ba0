"""KV cache: per layer, the tensors an attention layer needs to attend to past tokens.

MLA stores only its compressed latent (B, S, C) and the shared RoPE key (B, 1, S, R);
GQA stores K and V per kv head (B, G, S, E). The sequence axis is dim -2 for 4-D tensors
and dim 1 for the 3-D latent.

A sliding-window layer (update(..., keep=w - 1)) stores only its last w - 1 positions, all a later token can see;
its buffers are never preallocated (they stay short, so the copy per step is bounded).

With max_len, each layer's buffers are allocated once, at the first update, for max_len positions; every step
then writes its tokens in place and attention reads a view of the filled part (no per-step concatenation, whose
copies grow with the sequence). Without it the cache grows by concatenation (any length).

StaticKVCache is the fixed-shape variant a compiled one-token step needs: every layer attends over all max_len
slots under the caller's mask, and the slot a step writes is a device tensor, so no shape and no Python number
changes from one step to the next (one compiled graph; a CUDA graph can replay it).
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

    def query_slots(self, layer_idx: int, T: int, S: int) -> torch.Tensor:
        """(T,) the key slots, among the S that update() returned, of the T tokens it just added: the last T."""
        return torch.arange(S - T, S, device=self.layers[layer_idx][0].device)

    def causal_mask(self, T: int, device: torch.device) -> Optional[torch.Tensor]:
        """(T, S) bool mask for T new tokens after the cached ones (before update), None where plain attention
        over every key is right (nothing cached yet: causal; or one new token)."""
        if self.seq_len == 0 or T == 1:
            return None
        S = self.seq_len + T
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)

    @property
    def seq_len(self) -> int:
        return self.lengths[0]

    def nbytes(self) -> int:
        """Bytes of the cached positions (not of the unused part of preallocated buffers)."""
        return sum(t.numel() * t.element_size() for i in range(len(self.layers)) for t in self.filled(i))


class StaticKVCache(KVCache):
    """Every layer's buffers hold max_len slots, zero-filled, from the first update on; update() writes the new tokens
    at slot `next_slot[layer]` (a device tensor it then advances) and returns the whole buffers, which attention
    reads under the caller's mask (B, 1, T, max_len): zeros rather than uninitialised memory, since a masked NaN
    would still poison the softmax. Sliding-window layers keep every slot too and mask by slot distance."""

    def __init__(self, n_layers: int, max_len: int, device: torch.device) -> None:
        super().__init__(n_layers, max_len)
        self.next_slot = torch.zeros(n_layers, dtype=torch.long, device=device)  # (L,) slot of each layer's next token
        self._mark_static(self.next_slot)

    @staticmethod
    def _mark_static(t: torch.Tensor) -> None:
        """Tell torch.compile that a compiled step mutates t in place at a fixed address, so that a CUDA graph
        keeps it rather than copying it per replay (guard=False: a new cache does not force a recompile)."""
        if t.is_cuda:
            torch._dynamo.mark_static_address(t, guard=False)

    def update(self, layer_idx: int, *new: torch.Tensor, keep: Optional[int] = None) -> tuple[torch.Tensor, ...]:
        dims = [self._seq_dim(n) for n in new]
        bufs = self.layers[layer_idx]
        if bufs is None:
            bufs = self.layers[layer_idx] = tuple(
                n.new_zeros(n.shape[:d] + (self.max_len,) + n.shape[d + 1:]) for n, d in zip(new, dims))
            for buf in bufs:
                self._mark_static(buf)
        T = new[0].shape[dims[0]]
        slots = self.next_slot[layer_idx] + torch.arange(T, device=self.next_slot.device)  # (T,)
        for buf, n, d in zip(bufs, new, dims):
            buf.index_copy_(d, slots, n)
        self.next_slot[layer_idx] += T
        return bufs

    def query_slots(self, layer_idx: int, T: int, S: int) -> torch.Tensor:
        return self.next_slot[layer_idx] - T + torch.arange(T, device=self.next_slot.device)

    def causal_mask(self, T: int, device: torch.device) -> torch.Tensor:
        """(T, max_len): query i sees the slots up to its own (the buffers are attended whole, never sliced)."""
        own = self.next_slot[0] + torch.arange(T, device=device)  # (T,) the new tokens' slots
        return torch.arange(self.max_len, device=device) <= own[:, None]

    @property
    def seq_len(self) -> int:
        return int(self.next_slot[0])  # a host transfer: compiled code is handed positions and masks instead

    def filled(self, layer_idx: int) -> tuple[torch.Tensor, ...]:
        layer, n = self.layers[layer_idx], int(self.next_slot[layer_idx])
        return () if layer is None else tuple(t.narrow(self._seq_dim(t), 0, n) for t in layer)
