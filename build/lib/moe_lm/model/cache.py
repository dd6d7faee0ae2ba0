"""KV cache: per layer, the tensors an attention layer needs to attend to past tokens.

MLA stores only its compressed latent (B, S, C) and the shared RoPE key (B, 1, S, R);
GQA stores K and V per kv head (B, G, S, E). The sequence axis is dim -2 for 4-D tensors
and dim 1 for the 3-D latent.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int) -> None:
        self.layers: list[tuple[torch.Tensor, ...] | None] = [None] * n_layers

    @staticmethod
    def _seq_dim(t: torch.Tensor) -> int:
        return 1 if t.dim() == 3 else 2

    def update(self, layer_idx: int, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Append this step's tensors to layer `layer_idx` and return the full cached tensors."""
        past = self.layers[layer_idx]
        if past is not None:
            new = tuple(torch.cat((p, n), dim=self._seq_dim(n)) for p, n in zip(past, new))
        self.layers[layer_idx] = new
        return new

    def reorder(self, index: torch.Tensor) -> None:
        """Select / repeat batch rows (beam search): row i becomes old row index[i]."""
        self.layers = [None if layer is None else tuple(t.index_select(0, index) for t in layer)
                       for layer in self.layers]

    @property
    def seq_len(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[self._seq_dim(first[0])]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers if layer for t in layer)
