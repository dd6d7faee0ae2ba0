"""A context manager that turns every way a step can read a device value on the host into an error: `.item()`,
`.tolist()`, `.cpu()`, `.numpy()`, a tensor's truth value or Python number, and the ops whose output shape
depends on the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, `bincount`, tensor splits).
On the CPU nothing syncs, so this is how a CPU test sees what would stall a GPU."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class HostSync(RuntimeError):
    """A device value was read on the host, or a shape depended on the data."""


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    T = torch.Tensor
    saved: list[tuple[object, str, object]] = []

    def patch(owner, name: str, replacement) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def refuse(what: str):
        def raiser(*args, **kwargs):
            raise HostSync(f"{what} reads a device value on the host")
        return raiser

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero", "masked_select",
                 "unique", "bincount"):
        patch(T, name, refuse(f"Tensor.{name}"))
    for name in ("nonzero", "masked_select", "unique", "bincount", "argwhere"):
        patch(torch, name, refuse(f"torch.{name}"))
    getitem = T.__getitem__

    def guarded_getitem(self, index):
        if _is_bool_index(index):
            raise HostSync("boolean-mask indexing gives a data-dependent shape")
        return getitem(self, index)

    patch(T, "__getitem__", guarded_getitem)
    split = T.split

    def guarded_split(self, sizes, dim=0):
        if isinstance(sizes, torch.Tensor) or (isinstance(sizes, (list, tuple))
                                               and any(isinstance(s, torch.Tensor) for s in sizes)):
            raise HostSync("split sizes from a tensor")
        return split(self, sizes, dim)

    patch(T, "split", guarded_split)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
