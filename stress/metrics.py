"""Reading counters out of the arena: per worker, per operation, per lock class, and the
detectors' own counters. Plain data, for the console, metrics.jsonl and the summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shm_model.arena import (H_HOLD, H_WAIT, HBUCKETS, E_FROM_SITE, E_G0, E_GUARD, E_SEQ, E_TO_SITE, E_WORKER, H_CAP_CLASSES, H_CAP_EDGES, H_EDGES, MAX_OPS, S_ACQ, S_CONTENDED, S_HOLD_MAX,
                             S_RACQ, S_RCONTENDED, S_WAIT_MAX, S_WAIT_NS, W_CHAIN_MISS, W_IRQS, W_IRQS_DEFERRED, W_OP,
                             W_OPS, W_PID, W_STATE, WORKER_STATES, WS_PARKED, H_PARK)
from shm_model.records import MODE_NAMES, WaitRecord, holders


@dataclass
class ClassStats:
    cls: str
    acquisitions: int = 0
    contended: int = 0
    wait_ns: int = 0
    wait_max_ns: int = 0
    hold_max_ns: int = 0
    #: of the acquisitions and contentions, those for reading (reader-writer locks: the rest
    #: are writes; a spinlock has none)
    read_acquisitions: int = 0
    read_contended: int = 0

    @property
    def contended_pct(self) -> float:
        return 100.0 * self.contended / self.acquisitions if self.acquisitions else 0.0


@dataclass
class WorkerRow:
    wid: int
    role: str
    pid: int
    state: str
    op: str
    ops: int
    irqs: int
    irqs_deferred: int
    held: list[str]
    waiting: str


@dataclass
class Snapshot:
    t_s: float
    ops: dict[str, int]
    workers: list[WorkerRow]
    classes: list[ClassStats]
    edges: int
    chain_misses: int
    acquisitions: int
    capacity_hits: int
    irqs: int
    extra: dict[str, int] = field(default_factory=dict)
    #: each heap pool's counters (shm_model.heap.HeapView.stats): allocations, live, faults,
    #: and how often it was exhausted (an allocation refused)
    heaps: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def cache_hit_rate(self) -> float:
        # misses count attempts (a waiter that never got its lock missed too): clamp
        return max(0.0, 1.0 - self.chain_misses / self.acquisitions) if self.acquisitions else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total_ops"] = self.total_ops
        return d


def snapshot(world: Any, t_s: float) -> Snapshot:
    mv, geo = world.mv, world.geo
    ops = {o.spec.name: 0 for o in world.ops}
    for w in range(geo.n_workers):
        base = geo.ops + w * MAX_OPS
        for o in world.ops:
            ops[o.spec.name] += mv[base + o.oid]
    owners: dict[int, list[str]] = {}
    for lk in range(geo.n_locks):
        for h in holders(mv, geo, lk):
            owners.setdefault(h.owner // 2, []).append(
                world.plan.locks[lk].path + (f" ({h.how})" if h.how != "lock" else ""))
    rows = []
    irqs = 0
    misses = 0
    for w, info in enumerate(world.workers):
        s = geo.wslot(w)
        op = mv[s + W_OP]
        waiting = ""
        for c in (0, 1):
            wr = WaitRecord.read(mv, geo, w, c)
            if wr is not None:
                waiting = (world.plan.locks[wr.lock].path + (f" ({MODE_NAMES[wr.mode]})" if wr.mode else "")
                           + (" [irq]" if c else ""))
                break
        irqs += mv[s + W_IRQS]
        misses += mv[s + W_CHAIN_MISS]
        state = WORKER_STATES.get(mv[s + W_STATE], "?")
        if mv[s + W_STATE] == WS_PARKED and not mv[H_PARK] & 1:
            state = "resuming"  # the check is over; this worker has not left its park yet
        rows.append(WorkerRow(w, info.role, mv[s + W_PID], state,
                              world.ops[op].spec.name if 0 <= op < len(world.ops) else "",
                              mv[s + W_OPS], mv[s + W_IRQS], mv[s + W_IRQS_DEFERRED], owners.get(w, []), waiting))
    classes = []
    acq_total = 0
    for c, name in enumerate(world.class_names):
        cs = ClassStats(name)
        for w in range(geo.n_workers):
            b = geo.sslot(w, c)
            cs.acquisitions += mv[b + S_ACQ]
            cs.contended += mv[b + S_CONTENDED]
            cs.wait_ns += mv[b + S_WAIT_NS]
            cs.wait_max_ns = max(cs.wait_max_ns, mv[b + S_WAIT_MAX])
            cs.hold_max_ns = max(cs.hold_max_ns, mv[b + S_HOLD_MAX])
            cs.read_acquisitions += mv[b + S_RACQ]
            cs.read_contended += mv[b + S_RCONTENDED]
        acq_total += cs.acquisitions
        classes.append(cs)
    return Snapshot(t_s, ops, rows, classes, mv[H_EDGES], misses, acq_total,
                    mv[H_CAP_EDGES] + mv[H_CAP_CLASSES], irqs,
                    heaps=world.heap_stats() if hasattr(world, "heap_stats") else {})


def class_graph(world: Any) -> dict:
    """The lock-class dependency graph as lockdep built it: every edge A -> B (B taken while
    A was held) in the order first seen, with the first sites, the first worker and the
    classes held outside both on every occasion (the guards)."""
    mv, geo = world.mv, world.geo
    n = world.n_classes_now()
    names = [world.class_name(c) for c in range(n)]
    edges = []
    for a in range(n):
        for b in range(n):
            e = geo.eslot(a, b)
            if not mv[e + E_SEQ]:
                continue
            g = mv[e + E_GUARD]
            edges.append({"from": names[a], "to": names[b], "seq": mv[e + E_SEQ],
                          "from_site": world.site(mv[e + E_FROM_SITE]), "to_site": world.site(mv[e + E_TO_SITE]),
                          "first_by": world.owner_label(mv[e + E_WORKER]),
                          # lock instances held outside on every occasion (the guard candidates)
                          "guards": [world.lock_path(x) for x in mv[e + E_G0:e + E_G0 + g]] if g > 0 else []})
    edges.sort(key=lambda d: d["seq"])
    return {"classes": names, "edges": edges}


def class_histograms(world: Any) -> dict[str, dict[str, list[int]]]:
    """Per class, log2 histograms summed over workers: ``hold`` (every release) and
    ``wait`` (every contended acquire). Element b counts times t (ns) with
    2**(b-1) <= t < 2**b; trailing empty buckets are cut."""
    mv, geo = world.mv, world.geo
    out: dict[str, dict[str, list[int]]] = {}
    for c, name in enumerate(world.class_names):
        hold, wait = [0] * HBUCKETS, [0] * HBUCKETS
        for w in range(geo.n_workers):
            b = geo.hslot(w, c)
            for i in range(HBUCKETS):
                hold[i] += mv[b + H_HOLD + i]
                wait[i] += mv[b + H_WAIT + i]
        out[name] = {"hold": _trim(hold), "wait": _trim(wait)}
    return out


def _trim(h: list[int]) -> list[int]:
    n = len(h)
    while n and not h[n - 1]:
        n -= 1
    return h[:n]
