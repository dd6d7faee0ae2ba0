"""Training speed as data: the tokens/s measured per device (moe_lm/resources/measured_throughput.json), and for
a device or model without a measurement a range derived from the measured ones, labelled as derived.

A measurement gives an MFU: tokens/s x training FLOPs per token / the device's peak. For another GPU the MFU is
bounded two ways: unchanged (the step is compute-bound: speed scales with peak FLOP/s) and scaled by the ratio of
memory bandwidth to peak (the step is bandwidth-bound: speed scales with GB/s). The range spans both, over every
measured GPU. Another model on a measured device keeps that device's measured MFU (the same kernels, other sizes).
The CPU is derived from CPU measurements only. Nothing here assumes an MFU that was never measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from moe_lm.config import resources_dir
from moe_lm.model.counting import CPU_PEAK_FLOPS, MEMORY_BANDWIDTH_GBPS, PEAK_FLOPS


@dataclass(frozen=True)
class Speed:
    """Training speed on one device: tokens/s (low == high when measured) and the MFU behind it."""

    tokens_per_s: tuple[float, float]
    mfu: tuple[float, float]
    measured: bool
    basis: str  # where the numbers come from, said in a line

    @property
    def label(self) -> str:
        return "measured" if self.measured else "derived"


@lru_cache(maxsize=1)
def measurements() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads((resources_dir() / "measured_throughput.json").read_text())["measurements"])


def peak_flops(device: str) -> float:
    return CPU_PEAK_FLOPS if device == "cpu" else PEAK_FLOPS[device]


def measured_mfu(m: dict[str, Any]) -> float:
    return m["tokens_per_s"] * m["flops_per_token"] / peak_flops(m["device"])


def _where(m: dict[str, Any]) -> str:
    return (f"{m['device']} {m['model']} at {m['batch']} x {m['seq_len']}, {m['precision']}"
            f"{', compiled' if m['compiled'] else ''}, {m['date']}, commit {m['commit']}")


def _closest(rows: list[dict[str, Any]], batch: Optional[int]) -> dict[str, Any]:
    return min(rows, key=lambda m: abs(m["batch"] - batch) if batch else -m["tokens_per_s"])


def speed(device: str, model: str, flops_per_token: float, batch: Optional[int] = None,
          compiled: Optional[bool] = None) -> Speed:
    """The training speed of `model` (its FLOPs per token at the run's seq_len) on `device`: measured where a row
    matches the device and model (the one nearest `batch`), else derived. compiled: only rows of a compiled (or an
    eager) step, where there are any."""
    rows = [m for m in measurements() if compiled is None or m["compiled"] == compiled] or list(measurements())
    peak = peak_flops(device)
    exact = [m for m in rows if m["device"] == device and m["model"] == model]
    if exact:
        m = _closest(exact, batch)
        tps = m["tokens_per_s"] * m["flops_per_token"] / flops_per_token  # the same at the measured seq_len
        at = "" if batch in (None, m["batch"]) else f" (at micro-batch {m['batch']}, not {batch})"
        if flops_per_token != m["flops_per_token"]:
            at += "; at the measured MFU for this seq_len's FLOPs per token"
        return Speed((tps, tps), (measured_mfu(m),) * 2, True, f"measured: {_where(m)}{at}")
    same_device = [m for m in rows if m["device"] == device]
    if same_device:
        m = _closest(same_device, batch)
        mfu = measured_mfu(m)
        return _derived(mfu, mfu, peak, flops_per_token, f"derived from the measured MFU of {_where(m)}")
    refs = [m for m in rows if (m["device"] == "cpu") == (device == "cpu") and m["device"] in MEMORY_BANDWIDTH_GBPS]
    if not refs or device not in MEMORY_BANDWIDTH_GBPS:
        raise KeyError(f"no measured speed on {device} and nothing to derive one from")
    bounds = []
    for m in refs:
        by_bandwidth = (MEMORY_BANDWIDTH_GBPS[device] / MEMORY_BANDWIDTH_GBPS[m["device"]]) / (
            peak / peak_flops(m["device"]))
        bounds += [measured_mfu(m), measured_mfu(m) * by_bandwidth]
    names = ", ".join(sorted({m["device"] for m in refs}))
    return _derived(min(bounds), max(bounds), peak, flops_per_token,
                    f"derived from {names} (measured) by peak FLOP/s and memory bandwidth; not measured on {device}")


def _derived(lo: float, hi: float, peak: float, flops_per_token: float, basis: str) -> Speed:
    return Speed((lo * peak / flops_per_token, hi * peak / flops_per_token), (lo, hi), False, basis)


def span(lo: float, hi: float, fmt: str = "{:.2f}") -> str:
    """"x" for a point, "x-y" for a range, in one format."""
    a, b = fmt.format(lo), fmt.format(hi)
    return a if a == b else f"{a}-{b}"
