"""Section ``primitives``: the cost of one lock pair, bare and instrumented, of interrupt
masking, of call-site capture, and of starting workers.

Micro-benchmarks run in this process on a real arena (named semaphores and a shared-memory
segment, unlinked in ``finally``) with locks bound to a :class:`shm_model.cpu.Cpu` whose
engine hooks are stubs, as in tests/test_spinlock.py. Each case is a ``timeit.Timer``
whose setup binds what the statement uses to locals of the timing function; the loop count
comes from ``autorange`` scaled to a short timing; the cases are timed in rounds (every case
once per round) so that a change in machine load hits all of them alike. A row is the median
over the rounds of ns per statement minus that round's empty-loop cost; a ratio is the median
of the per-round ratios.
"""

from __future__ import annotations

import gc
import mmap
import os
import sys
import time
import timeit
from dataclasses import dataclass
from typing import Any

from shm_model import sites
from shm_model import spinlock as sl
from shm_model.arena import NO_OWNER, S_ACQ, S_CONTENDED, Arena, Geometry, new_run_id
from shm_model.cpu import Cpu
from shm_model import rwlock as rw
from shm_model.heap import Heap
from shm_model.layout import AttachCtx, Int, Struct, attach, plan_struct
from shm_model.rwlock import RwLock
from shm_model.spinlock import Lock
from shm_model.weak import Relaxed, smp_mb

from .common import Context, StressRunError, Table, fmt_ns, fmt_ratio, median, run_stress, stress_cmd

TARGET_INSTRUMENTED = 3.0  # instrumented pair <= 3.0 x bare pair
TARGET_MASKING = 1.0  # extra cost of the masking pair <= 1 x bare pair
TARGET_RW = 1.5  # read_lock and write_lock pairs <= 1.5 x bare pair (issue 21)
TARGET_DEREF = 2.0  # a checked field read through a heap handle <= 2 x a plain field read (issue 21)
TARGET_RELAXED = 3.0  # a relaxed store or load <= 3 x a plain field's (issue 22)


class _Obj(Struct):
    cmd = Int()


class _HeapState(Struct):
    x = Int()
    objs = Heap(_Obj, slots=2, ctype="struct obj")
    rx = Relaxed(Int())  # weak memory (issue 22)


class _Hooks:
    """Engine stubs: a chain miss returns a new site; findings are only counted."""

    def __init__(self) -> None:
        self.chains = 0
        self.findings: list[str] = []

    def new_chain(self, cpu: Cpu, lock: Any, key: int, held: list, irqs_on: bool, trylock: bool) -> int:
        self.chains += 1
        return 1000 + self.chains

    def finding(self, cpu: Cpu, outcome: str, title: str, details: dict) -> None:
        self.findings.append(outcome)

    def irqs_enabled_holding(self, cpu: Cpu) -> None:
        self.findings.append("irqs-enabled-holding")


class Rig:
    """A real arena with four semaphores: locks A (class 0) and C (class 2) bound to CPU 0,
    lock B (class 1) bound to CPU 1 whose lock tracing is on, and a bare semaphore for the
    baseline. The geometry is a real run's (full-size trace rings)."""

    def __init__(self) -> None:
        self.geo = Geometry(2, 5, 4, 0)
        self.arena = Arena(new_run_id(), self.geo)
        mv = self.arena.mv
        self.hooks = _Hooks()
        self.a = Lock(0, 0, "A", "a", self.arena.sems[0], mv, self.geo)
        self.b = Lock(1, 1, "B", "b", self.arena.sems[1], mv, self.geo)
        self.c = Lock(3, 2, "C", "c", self.arena.sems[3], mv, self.geo)
        self.rw = RwLock(4, 3, "R", "r", self.arena.sems[4], mv, self.geo)
        self.bare = self.arena.sems[2]
        self.cpu = Cpu(mv, self.geo, 0, self.hooks)
        self.cpu_traced = Cpu(mv, self.geo, 1, self.hooks, trace_locks=True)
        # a second arena for the heap rows: a state with a plain Int and a heap of one-Int objects
        self.hplan = plan_struct(_HeapState, None)
        self.hgeo = Geometry(1, 0, 1, self.hplan.words, trace_events=16, n_aux=self.hplan.aux)
        self.harena = Arena(new_run_id(), self.hgeo)
        actx = AttachCtx(aux=self.harena.aux)
        self.hs = attach(self.hplan.node, self.harena.mv, self.hgeo.state, [], ctx=actx)
        self.hcpu = Cpu(self.harena.mv, self.hgeo, 0, self.hooks)
        for b in actx.bound:  # the heap and the weak memory
            b.bind(self.hcpu, None)
        self.handle = self.hs.objs.alloc()
        self.a.bind(self.cpu)
        self.c.bind(self.cpu)
        self.rw.bind(self.cpu)
        self.b.bind(self.cpu_traced)

    def stat(self, lock: Lock, field: int) -> int:
        return self.arena.mv[lock.st - S_ACQ + field]

    def destroy(self) -> None:
        self.hs = None
        self.harena.destroy()
        self.arena.destroy()


@dataclass
class Case:
    key: str
    label: str
    stmt: str
    setup: str = "pass"


def _cases() -> list[Case]:
    return [
        Case("empty", "empty timeit loop iteration (subtracted from every row)", "pass"),
        Case("bare", "posix_ipc `acq(); rel()` (bound methods in locals)", "acq(); rel()",
             "acq = sem.acquire; rel = sem.release"),
        Case("bare_try", "posix_ipc `acq(0); rel()` (the fast path's non-blocking try)", "acq(0); rel()",
             "acq = sem.acquire; rel = sem.release"),
        Case("spin", "`spin_lock(l); spin_unlock(l)` (instrumented, chain cache warm)",
             "spin_lock(l); spin_unlock(l)",
             "spin_lock = sl.spin_lock; spin_unlock = sl.spin_unlock; l = lock"),
        Case("method", "`l.lock(); l.unlock()` (instrumented, method calls)", "l.lock(); l.unlock()", "l = lock"),
        Case("with", "`with l: pass` (instrumented, context manager)", "with l:\n    pass", "l = lock"),
        Case("read", "`read_lock(r); read_unlock(r)` (reader-writer lock, instrumented)",
             "read_lock(r); read_unlock(r)", "read_lock = rw.read_lock; read_unlock = rw.read_unlock; r = rwl"),
        Case("write", "`write_lock(r); write_unlock(r)` (reader-writer lock, instrumented)",
             "write_lock(r); write_unlock(r)", "write_lock = rw.write_lock; write_unlock = rw.write_unlock; r = rwl"),
        Case("field", "`s.x` (a plain Int field read through a struct view: the baseline of the heap rows)",
             "s.x", "s = hs"),
        Case("checked", "`v.cmd` (an Int field read through a checked heap view `v = s.objs[h]`)", "v.cmd",
             "v = hs.objs[h]"),
        Case("deref", "`s.objs[h].cmd` (dereference a handle, then the checked read)", "objs[h].cmd",
             "objs = hs.objs; h = handle"),
        Case("fstore", "`s.x = 1` (a plain Int field store: the baseline of the relaxed store row)", "s.x = 1",
             "s = hs"),
        Case("rstore", "`s.rx = 1` (a relaxed store: into the store buffer, committed at 30 % of accesses or "
             "when full)", "s.rx = 1", "s = hs"),
        Case("rload", "`s.rx` (a relaxed load, nothing buffered: a snapshot of the location's messages and a "
             "seeded reads-from choice; 3 % deferred)", "s.rx", "s = hs; wm.quiesce()"),
        Case("mb", "`smp_mb(cpu)` with nothing buffered", "mb(c)", "mb = smp_mb; c = hcpu; wm.quiesce()"),
        Case("store_mb", "`s.rx = 1; smp_mb(cpu)` (a store, then a full barrier that commits it)", "s.rx = 1; mb(c)",
             "s = hs; mb = smp_mb; c = hcpu"),
        Case("traced", "`spin_lock(l); spin_unlock(l)` with --trace-locks (2 trace events)",
             "spin_lock(l); spin_unlock(l)",
             "spin_lock = sl.spin_lock; spin_unlock = sl.spin_unlock; l = lock_traced"),
        Case("irqsave", "`f = spin_lock_irqsave(l); spin_unlock_irqrestore(l, f)`",
             "f = save(l); restore(l, f)",
             "save = sl.spin_lock_irqsave; restore = sl.spin_unlock_irqrestore; l = lock"),
        Case("softmask", "`f = cpu.local_irq_save(); cpu.local_irq_restore(f)` (soft-mask pair)",
             "f = save(); restore(f)", "save = cpu.local_irq_save; restore = cpu.local_irq_restore"),
        Case("trace", "`cpu.trace(kind, 0, a, b, c)` (one trace event: 5 shm words + head)", "tr(1, 0, 1, 2, 3)",
             "tr = cpu.trace"),
        Case("nested", "nested: `spin_lock(a); spin_lock(c); spin_unlock(c); spin_unlock(a)`, per pair",
             "spin_lock(a); spin_lock(c); spin_unlock(c); spin_unlock(a)",
             "spin_lock = sl.spin_lock; spin_unlock = sl.spin_unlock; a = lock; c = lock_c"),
        Case("getframe", "`sys._getframe(1).f_lineno`", "gf(1).f_lineno", "gf = sys._getframe"),
        Case("capture", "`sites.capture()`", "cap()", "cap = sites.capture"),
        Case("capture_stack4", "`sites.capture_stack(1, 4)` (as on the contended path)", "cs(1, 4)",
             "cs = sites.capture_stack"),
        Case("capture_stack6", "`sites.capture_stack()` (default limit 6)", "cs()", "cs = sites.capture_stack"),
    ]


def _time_cases(ctx: Context, rig: Rig, repeats: int, min_time: float) -> dict[str, list[float]]:
    ns = {"sem": rig.bare, "lock": rig.a, "lock_c": rig.c, "lock_traced": rig.b, "cpu": rig.cpu, "sl": sl, "sites": sites,
          "sys": sys, "rw": rw, "rwl": rig.rw, "hs": rig.hs, "h": rig.handle, "handle": rig.handle,
          "hcpu": rig.hcpu, "wm": rig.hcpu.wm, "smp_mb": smp_mb}
    cases = _cases()
    timers = {c.key: timeit.Timer(c.stmt, c.setup, globals=ns) for c in cases}
    # warm up: the first pair of each chain goes through the (stub) lockdep and fills the
    # chain cache; after this every instrumented pair is the fast path
    for t in timers.values():
        t.timeit(1000)
    chains_warm = rig.hooks.chains
    acq0 = rig.stat(rig.a, S_ACQ)
    numbers: dict[str, int] = {}
    for c in cases:
        n, _ = timers[c.key].autorange()
        numbers[c.key] = max(1, int(n * min_time / 0.2))
    per: dict[str, list[float]] = {c.key: [] for c in cases}
    for r in range(repeats):
        if r % 5 == 0 or r == repeats - 1:
            ctx.progress(f"primitives: micro-benchmarks, round {r + 1}/{repeats}")
        for c in cases:
            n = numbers[c.key]
            per[c.key].append(timers[c.key].timeit(n) / n * 1e9)
    # the fast path really was the fast path
    ctx.facts["primitives_chain_misses_while_timing"] = rig.hooks.chains - chains_warm
    ctx.facts["primitives_contended"] = sum(rig.stat(lk, S_CONTENDED) for lk in (rig.a, rig.b, rig.c))
    ctx.facts["primitives_acquisitions"] = rig.stat(rig.a, S_ACQ) - acq0
    assert rig.arena.mv[rig.a.o_owner] == NO_OWNER and rig.a.sem.value == 1
    return per


# ---- worker start-up ----------------------------------------------------------------------------

def _ready(mv: memoryview, i: int) -> None:
    mv[i] = os.getpid()


def bare_fork_startup(n: int) -> float:
    """Seconds until ``n`` processes forked as the coordinator forks its workers
    (multiprocess fork context, daemon, gc frozen) have each written a ready flag to a
    shared anonymous mapping. Nothing is created in /dev/shm."""
    import multiprocess

    fctx = multiprocess.get_context("fork")
    mm = mmap.mmap(-1, 8 * n)
    mv = memoryview(mm).cast("q")
    procs = []
    gc.collect()
    gc.freeze()
    try:
        t = time.monotonic()
        for i in range(n):
            p = fctx.Process(target=_ready, args=(mv, i), daemon=True)
            p.start()
            procs.append(p)
        while any(mv[i] == 0 for i in range(n)):
            time.sleep(0.001)
        dt = time.monotonic() - t
    finally:
        for p in procs:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join()
        gc.unfreeze()
        mv.release()
        mm.close()
    return dt


def _startup(ctx: Context, ns_: list[int], repeats: int) -> dict[int, dict[str, list[float]]]:
    out: dict[int, dict[str, list[float]]] = {}
    for n in ns_:
        stress_ms: list[float] = []
        bare_ms: list[float] = []
        for r in range(repeats):
            ctx.progress(f"primitives: worker start-up, {n} workers, repeat {r + 1}/{repeats}")
            bare_ms.append(bare_fork_startup(n) / n * 1e3)
            d = ctx.scratch("startup")
            cmd = stress_cmd("examples/abba.py", "ordered", "1s", workers=n, out=d)
            try:
                res = run_stress(ctx, cmd, timeout_s=90)
            except StressRunError as e:
                ctx.progress(f"primitives: start-up run failed: {e}")
                continue
            stress_ms.append(res.summary["startup_s"] / n * 1e3)
        out[n] = {"stress": stress_ms, "bare": bare_ms}
    return out


# ---- the section ------------------------------------------------------------------------------

def run(ctx: Context) -> list[Table]:
    rounds = 12 if ctx.quick else 30
    min_time = 0.02 if ctx.quick else 0.03
    rig = Rig()
    try:
        per = _time_cases(ctx, rig, rounds, min_time)
    finally:
        rig.destroy()
    empty_r = per["empty"]
    # each round's figures minus that round's empty-loop cost
    raw = {k: [x - e for x, e in zip(v, empty_r)] for k, v in per.items() if k != "empty"}
    raw["empty"] = list(empty_r)
    # derived: what masking adds to a plain instrumented pair, round by round
    raw["mask_extra"] = [a - b for a, b in zip(raw["irqsave"], raw["spin"])]
    raw["nested"] = [x / 2 for x in raw["nested"]]  # two pairs per statement
    med = {k: median(v) for k, v in raw.items()}
    mins = {k: min(v) for k, v in raw.items()}
    maxs = {k: max(v) for k, v in raw.items()}

    labels = {c.key: c.label for c in _cases()}
    labels["mask_extra"] = "masking extra: irqsave pair − plain instrumented pair"
    t = Table("primitives: cost per operation (ns, uncontended, one process)",
              ["measurement", "median", "min", "max", "unit", "ratio", "ratio of mins", "ratio against", "target",
               "met"])

    def row(key: str, base: str | None, base_label: str = "", target: float | None = None,
            fact: str | None = None) -> None:
        ratio = rmin = None
        if base:
            # paired: the ratio within each round, then the median over rounds
            ratio = median([a / b for a, b in zip(raw[key], raw[base]) if b > 0])
            if key == "mask_extra":  # a difference: compare the difference of the mins
                rmin = (mins["irqsave"] - mins["spin"]) / mins[base] if mins[base] > 0 else None
            else:
                rmin = mins[key] / mins[base] if mins[base] > 0 else None
        met = "" if target is None or ratio is None else ("yes" if ratio <= target else "NO")
        derived = key == "mask_extra"  # a difference: its per-round min/max are noise
        t.add(labels[key], fmt_ns(med[key]), "–" if derived else fmt_ns(mins[key]),
              "–" if derived else fmt_ns(maxs[key]), "ns/op",
              fmt_ratio(ratio) if base else "", fmt_ratio(rmin) if base else "", base_label if base else "",
              f"≤ {target:g}×" if target is not None else "", met)
        ctx.facts[fact or f"ratio_{key}"] = ratio

    row("empty", None)
    row("bare", "bare", "bare pair (baseline)")
    row("bare_try", "bare", "bare pair")
    row("spin", "bare", "bare pair", TARGET_INSTRUMENTED)
    row("method", "bare", "bare pair", TARGET_INSTRUMENTED)
    row("with", "bare", "bare pair")
    row("read", "bare", "bare pair", TARGET_RW)
    row("write", "bare", "bare pair", TARGET_RW)
    row("read", "spin", "spinlock pair", fact="ratio_read_vs_spin")
    row("write", "spin", "spinlock pair", fact="ratio_write_vs_spin")
    row("field", "field", "plain Int field read (baseline)")
    row("checked", "field", "plain Int field read", TARGET_DEREF)
    row("deref", "field", "plain Int field read", TARGET_DEREF)
    row("fstore", "fstore", "plain Int field store (baseline)")
    row("rstore", "fstore", "plain Int field store", TARGET_RELAXED)
    row("rload", "field", "plain Int field read", TARGET_RELAXED)
    row("mb", "field", "plain Int field read")
    row("store_mb", "rstore", "relaxed store")
    row("traced", "spin", "plain instrumented pair")
    row("irqsave", "spin", "plain instrumented pair")
    row("mask_extra", "bare", "bare pair", TARGET_MASKING)
    row("softmask", "bare", "bare pair", TARGET_MASKING)
    row("trace", "bare", "bare pair")
    row("nested", "bare", "bare pair", TARGET_INSTRUMENTED)
    row("getframe", "getframe", "sys._getframe(1).f_lineno (baseline)")
    row("capture", "getframe", "sys._getframe(1).f_lineno")
    row("capture_stack4", "getframe", "sys._getframe(1).f_lineno")
    row("capture_stack6", "getframe", "sys._getframe(1).f_lineno")

    # worker start-up
    ns_ = [2, 8, 32]
    st = _startup(ctx, ns_, 2 if ctx.quick else 3)
    for n in ns_:
        sm, bm = st[n]["stress"], st[n]["bare"]
        ms, mb = median(sm), median(bm)
        t.add(f"worker start-up, {n} workers (`stress run`, abba ordered, summary.json startup_s / N)",
              f"{ms:.2f}" if ms is not None else "–", f"{min(sm):.2f}" if sm else "–",
              f"{max(sm):.2f}" if sm else "–", "ms/worker",
              fmt_ratio(ms / mb) if ms and mb else "–", "", f"bare fork of {n} ({mb:.2f} ms/worker)", "", "")
        ctx.facts[f"startup_ms_per_worker_{n}"] = ms
    t.notes += [
        f"{rounds} rounds; in each round every case is timed once (timeit loop of ≥ {1e3 * min_time:.0f} ms), and "
        f"that round's empty-loop cost is subtracted. median/min/max are over the rounds; 'ratio' is the median "
        f"of the per-round ratios (paired, so a load change hits both sides), 'ratio of mins' compares the least "
        f"disturbed rounds (for a difference row: the difference of the mins). Figures move ±25 % between runs "
        f"on a quiet machine (FACTS.md) and more on this shared one: trust the ratios.",
        f"Instrumented rows: Lock bound to a Cpu on a real arena (shm_model.arena.Arena), engine hooks stubbed; "
        f"the fast path is C (shm_model/_fastlock.c), the slow paths Python; "
        f"chain-cache misses while timing: {ctx.facts['primitives_chain_misses_while_timing']}, contended "
        f"acquisitions: {ctx.facts['primitives_contended']} (so every timed pair took the fast path).",
        "Reader-writer lock rows: Xen's queued rwlock (shm_model/rwlock.py), one atomic on the arena's cnts word "
        "per operation plus the same instrumentation as a spinlock (chain cache, held stack, statistics, the "
        "read-hold record); target ≤ 1.5× a bare pair (issue 21).",
        "Relaxed rows (shm_model/weak.py): one CPU bound to a weak memory, nothing else running; a store goes "
        "to the store buffer (its commit is one C call holding the location's lock word), a load takes a C "
        "snapshot of the messages it may read and makes a seeded choice; target ≤ 3× the plain field's (issue 22).",
        "Targets: instrumented pair ≤ 3.0× a bare pair; interrupt masking ≤ 1× a bare pair — both the extra cost "
        "of `spin_lock_irqsave`/`spin_unlock_irqrestore` over `spin_lock`/`spin_unlock` and the bare soft-mask pair.",
        "Start-up: the median of the runs' `startup_s` (first fork to every worker's pid in the arena) divided by "
        "N, against forking N bare processes that write a ready flag (same multiprocess fork context, gc frozen). "
        "FACTS.md: fork ~2 ms/worker.",
    ]
    for k in ("bare", "bare_try", "spin", "read", "write", "field", "checked", "deref", "fstore", "rstore", "rload",
              "mb", "store_mb", "method", "irqsave", "softmask", "mask_extra", "traced", "trace", "capture",
              "capture_stack4", "getframe"):
        ctx.facts[f"ns_{k}"] = med[k]
    return [t]


def quick_facts(ctx: Context) -> None:
    """The micro-benchmarks alone, briefly (for a section run without ``primitives``)."""
    rig = Rig()
    try:
        per = _time_cases(ctx, rig, 3, 0.05)
    finally:
        rig.destroy()
    empty = median(per["empty"]) or 0.0
    for k, v in per.items():
        ctx.facts[f"ns_{k}"] = (median(v) or 0.0) - empty


if __name__ == "__main__":  # python -m benchmarks.primitives: the micro-benchmarks alone
    c = Context(quick=True)
    try:
        r = Rig()
        try:
            p = _time_cases(c, r, 3, 0.05)
        finally:
            r.destroy()
        for k, v in p.items():
            print(f"{k:16s} {median(v):8.1f} ns")
    finally:
        c.close()
