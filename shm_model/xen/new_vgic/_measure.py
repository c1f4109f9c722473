"""The DoS measurement of the new VGIC model (the thread's question: how long
``vgic_flush_lr_state`` runs, interrupts off, on a list a guest made long): timed wrappers
around ``vgic_flush_lr_state`` and ``vgic_prune_ap_list``, recording into the vCPU's arena
histograms (:func:`hist_add`) with the model's clock (``cpu.clock_ns()``: CLOCK_MONOTONIC
in free mode, virtual in controlled mode).

Instrumentation, not model: registered with :func:`shm_model.sites.internal`, so a report's
call chain goes from ``vgic_sync_to_lrs`` straight to ``vgic_flush_lr_state``.
"""

from __future__ import annotations

import math
from typing import Any

from ... import sites

sites.internal(__file__)


#: buckets of a time histogram (:func:`hist_add`): up to 2**41 ns
HIST_BUCKETS = 8 * 40


def hist_bucket(v: int) -> int:
    """The bucket of ``v`` (ns, or any count) in a log-linear histogram: ``v`` itself below 8,
    then 8 buckets per power of two (HdrHistogram's layout with 3 significant bits)."""
    if v < 8:
        return max(v, 0)
    e = v.bit_length() - 1
    return min((e - 2) * 8 + ((v >> (e - 3)) & 7), HIST_BUCKETS - 1)


def hist_value(b: int) -> float:
    """The middle of bucket ``b`` (the inverse of :func:`hist_bucket`, within 1/16)."""
    if b < 8:
        return float(b)
    e, sub = b // 8 + 2, b % 8
    w = 1 << (e - 3)
    return (8 + sub) * w + (w - 1) / 2


def hist_add(hist: Any, v: int) -> None:
    """Count ``v`` in ``hist`` (an arena ``Array(Int, HIST_BUCKETS)``)."""
    hist[hist_bucket(v)] += 1


def hist_quantile(counts: list[int], q: float, exact: bool = False) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of a histogram's counts; ``exact``: the
    counts are indexed by the value itself (the ap_list length's)."""
    n = sum(counts)
    if not n:
        return None
    rank = max(1, math.ceil(round(q * n, 9)))
    acc = 0
    for b, c in enumerate(counts):
        acc += c
        if acc >= rank:
            return float(b) if exact else hist_value(b)
    return None


def timed_flush(m: Any, vcpu: int) -> None:
    """``vgic_flush_lr_state(vcpu)``, timed: the list's length at entry (``ap_len``, the model's
    counter, read under the ap_list lock the caller holds) and the call's time."""
    vc = m.s.vcpus[vcpu]
    hist = vc.ap_len_hist
    hist[min(vc.ap_len, len(hist) - 1)] += 1
    clock = m.cpu.clock_ns
    t0 = clock()
    m.vgic_flush_lr_state(vcpu)
    dt = clock() - t0
    vc.flushes += 1
    vc.flush_ns += dt
    if dt > vc.flush_max_ns:
        vc.flush_max_ns = dt
    vc.flush_hist[hist_bucket(dt)] += 1


def timed_prune(m: Any, vcpu: int) -> None:
    """``vgic_prune_ap_list(vcpu)``, timed."""
    vc = m.s.vcpus[vcpu]
    clock = m.cpu.clock_ns
    t0 = clock()
    m.vgic_prune_ap_list(vcpu)
    dt = clock() - t0
    vc.prunes += 1
    vc.prune_ns += dt
    if dt > vc.prune_max_ns:
        vc.prune_max_ns = dt
    vc.prune_hist[hist_bucket(dt)] += 1
