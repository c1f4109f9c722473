"""Weak memory: ARMv8's ordering, emulated on relaxed fields (``Relaxed(Int())``).

This machine is x86 (TSO) and Python orders the arena's accesses more strongly still, so a
store-store or load-load reordering never happens by itself. A workload that declares a
field ``Relaxed(Int())`` gets ARMv8's behaviour on it; plain ``Int`` fields keep today's
behaviour and cost.

The model (operational; its rules are those of Promising-ARM, Pulte et al., PLDI 2019,
without promises, plus store buffers and deferred loads to give the reorderings promises
would):

- **Memory.** Every relaxed location keeps its last ``WM_HIST`` (8) committed messages
  (value, timestamp, writer) in the arena (``shm_model._fastlock.MemWords``). A commit takes
  the next timestamp of one clock word: the order in which stores became visible to every
  other CPU. ARMv8 is other-multi-copy-atomic: once a store is visible to one other CPU it
  is visible to all, so one global order of commits is exact. The location's own word
  holds the newest committed value (what the coordinator and plain readers see).
- **Stores** go to the writing CPU's store buffer and commit later: a store to a location
  never overtakes an older buffered store to the same location (coherence), ``smp_wmb``
  closes an epoch (no store after it commits before every store before it), and otherwise
  the order of commits is a seeded choice. A CPU reads its own newest buffered store.
- **Loads** may return an older message than the newest, as far as coherence and the
  barriers allow: a load of ``x`` reads the newest message of ``x`` at or below its *floor*,
  or any newer one. The floor is the newest of: the CPU's last read or write of ``x``
  (coherence), its read view after ``smp_rmb``/``smp_mb``/an acquire, and the load an
  address dependency names (:meth:`MemCpu.addr_dep`). Which of the allowed messages is
  read is a seeded choice (C11Tester's reads-from choice), the newest most often.
- **Deferred loads** give load-to-store reordering (LB): a load may return a value that is
  read only when first used (any use: a compare, arithmetic, a store of it, an index), so a
  later store of the same CPU can commit first. A dependency is a use, which is why
  LB+deps is forbidden and plain LB allowed, as on ARMv8. A deferred load is also performed
  at ``smp_rmb``, ``smp_mb``, a release, any later access to its own location, and the end
  of the operation.
- **Barriers** (Linux/Xen names, ARMv8 instructions): ``smp_wmb`` (DMB ISHST) orders stores
  with stores; ``smp_rmb`` (DMB ISHLD) orders loads with later loads and stores;
  ``smp_mb`` (DMB ISH) orders everything (the store buffer drains, the read floor rises to
  every message this CPU read or wrote). ``load_acquire``/``store_release`` (LDAR/STLR), and
  every lock: an acquisition is an acquire (its floor rises to the view the last release of
  that lock published, in the lock record's ``L_VIEW`` word), a release drains the store
  buffer, performs deferred loads and publishes this CPU's view (cumulativity).
  ``READ_ONCE``/``WRITE_ONCE`` are the plain relaxed accesses (no tearing exists here).
- **Atomics** (``set_bit``, ``clear_bit``, ``test_and_set_bit``, ``test_and_clear_bit``,
  ``xchg``, ``atomic_add[_return]``) read the newest message and commit the new one at once
  (LDXR/STXR); this CPU's own buffered stores to the location commit first. As Xen's
  arm64 bitops (arm64/lib/bitops.c, 4.15): ``set_bit``/``clear_bit`` order nothing; the
  ``test_and_*`` forms are a release (STLXR) followed by a full barrier (DMB ISH).

Where it runs:

- Free mode: each relaxed access may commit one buffered store (seeded, ``p_drain``); a
  full buffer (``SB_CAP``) commits one of its eligible stores; the buffer drains before a
  CPU blocks (a contended lock, ``Cpu.delay``) and at the end of every operation, so a store
  is never invisible across an idle CPU (hardware drains within nanoseconds; a model with
  stores stuck in a parked CPU's buffer would invent hangs).
- Controlled mode: every relaxed access is a scheduling point, and the seeded choices are
  the worker's own, so a weak-memory finding replays exactly with its seed.

Simplifications (and why they do not change what a run can find): relaxed fields hold
ints (the model's values); relaxed fields are not allowed inside heap objects (an object's
reallocation would have to reset its history); only the last eight messages of a location
are kept (a load's choice is among those: older ones were overwritten eight times, which
none of the models' races needs); a rwlock's concurrent read releases publish the newest
view of any of them (an atomic max), as the release sequence of Xen's ``cnts`` does.

Locking rules: a location's ring is guarded by its own lock word, taken only inside
``MemWords``' C calls (never across Python); nothing here takes a model lock.
"""

from __future__ import annotations

from typing import Any, Iterator

from . import sites
from ._fastlock import WM_ENTRY, WM_HIST, WM_WORDS, MemCpuCore, MemWords, capture_site
from .layout import AttachCtx, Field, Int, LayoutError, Node, Plan

sites.internal(__file__)

#: entries a store buffer holds before its oldest eligible store must commit
SB_CAP = 4
#: a message's ``who`` word: writer << 32 | the store's program-order number on that CPU;
#: WHO_INIT for a location's initial value (and stores made before the run)
WHO_INIT = -1

#: a relaxed location's words: newest value, lock, commits, then WM_HIST entries of
#: WM_ENTRY words (value, ts, site, who)
LOC_VALUE, LOC_LOCK, LOC_N, LOC_RING = 0, 1, 2, 3


# ---- the field kind ------------------------------------------------------------------------

class Relaxed(Field):
    """A word with ARMv8 ordering: ``Relaxed(Int())`` or ``Relaxed(Int(init))``.

    ``s.flag = 1`` buffers a store; ``s.flag`` is a load (possibly of an older message, or
    deferred). Arrays: ``Array(Relaxed(Int()), n)``."""

    def __init__(self, of: Int | None = None, doc: str = "") -> None:
        of = Int() if of is None else of
        if not isinstance(of, Int):
            raise LayoutError(f"Relaxed() wraps an Int(), not {of!r}")
        self.init = of.init
        self.doc = doc or of.doc

    def _loc(self, plan: Plan, init: int, path: str) -> int:
        if "heap" in plan.within:
            raise LayoutError(f"{path}: a relaxed field inside a heap object is not supported")
        mp = plan.shared.get("weak")
        if mp is None:
            mp = plan.shared["weak"] = MemoryPlan()
        off = plan.reserve(WM_WORDS)
        plan.inits.append((off + LOC_N, 1))  # the initial message: (init, ts 0, site 0, WHO_INIT)
        plan.inits.append((off + LOC_RING + 3, WHO_INIT))
        if init:
            plan.inits.append((off + LOC_VALUE, init))
            plan.inits.append((off + LOC_RING, init))
        mp.locations.append((off, path))
        return off

    def plan(self, options: Any, plan: Plan, cname: str, fname: str, path: str) -> Node:
        off = self._loc(plan, self.init, path)
        return RelaxedNode(off, plan.shared["weak"])

    def plan_array(self, n: int, init: int, options: Any, plan: Plan, cname: str, fname: str,
                   path: str) -> Node:
        offs = [self._loc(plan, init or self.init, f"{path}[{i}]") for i in range(n)]
        return RelaxedsNode(offs, plan.shared["weak"])


class MemoryPlan:
    """The plan's weak memory: its clock word and every relaxed location (offset, path)."""

    def __init__(self) -> None:
        self.clock = -1
        self.locations: list[tuple[int, str]] = []

    def finish(self, plan: Plan) -> None:
        self.clock = plan.reserve(1)

    def attach(self, mv: memoryview, base: int, ctx: AttachCtx) -> "WeakMemory":
        wm = ctx.shared.get("weak")
        if wm is None:
            wm = ctx.shared["weak"] = WeakMemory(self, mv, base)
            ctx.bound.append(wm)
        return wm


class RelaxedNode(Node):
    scalar = True

    def __init__(self, off: int, mp: MemoryPlan) -> None:
        self.off = off
        self.mp = mp

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        wm = self.mp.attach(mv, base, ctx)
        return wm.location(base + self.off)  # outside a struct view: a cell with .value

    def prop(self, rel: int, ctx: AttachCtx) -> property:
        wm = self.mp.attach(ctx.mv, ctx.base, ctx)
        get_word = wm.words.get

        def get(view: Any) -> Any:
            me = wm.me
            if me is None:  # the coordinator or setup: the newest committed value, no ordering
                return get_word(view._base + rel)
            return me.load(view._base + rel)

        def put(view: Any, value: Any) -> None:
            me = wm.me
            if me is None:
                wm.cpu_store(view._base + rel, value)
            else:
                me.store(view._base + rel, value)

        return property(get, put)

    def offsets(self) -> Iterator[int]:
        return iter(range(self.off, self.off + WM_WORDS))


class RelaxedsNode(Node):
    def __init__(self, offs: list[int], mp: MemoryPlan) -> None:
        self.offs = offs
        self.mp = mp

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        return RelaxedArray(self.mp.attach(mv, base, ctx), [base + o for o in self.offs])

    def offsets(self) -> Iterator[int]:
        for o in self.offs:
            yield from range(o, o + WM_WORDS)


class RelaxedArray:
    """``Array(Relaxed(Int()), n)`` as the model sees it: ``a[i]`` loads, ``a[i] = v`` stores."""

    __slots__ = ("_wm", "_locs")

    def __init__(self, wm: "WeakMemory", locs: list[int]) -> None:
        self._wm = wm
        self._locs = locs

    def __len__(self) -> int:
        return len(self._locs)

    def __getitem__(self, i: int) -> Any:
        return self._wm.cpu_load(self._locs[i])

    def __setitem__(self, i: int, v: Any) -> None:
        self._wm.cpu_store(self._locs[i], v)

    def loc(self, i: int) -> int:
        return self._locs[i]


class _Cell:
    """A relaxed field attached outside a struct view (the state itself is never one)."""

    __slots__ = ("_wm", "loc")

    def __init__(self, wm: "WeakMemory", loc: int) -> None:
        self._wm = wm
        self.loc = loc

    @property
    def value(self) -> Any:
        return self._wm.cpu_load(self.loc)

    @value.setter
    def value(self, v: Any) -> None:
        self._wm.cpu_store(self.loc, v)


# ---- the shared memory and each CPU's view of it ---------------------------------------------

class WeakMemory:
    """The weak memory of one attached state: the clock, the locations' names, and (after
    :meth:`bind`) this process's CPU (:class:`MemCpu`)."""

    def __init__(self, mp: MemoryPlan, mv: memoryview, base: int) -> None:
        self.mv = mv
        self.words = MemWords(mv)
        self.base = base
        self.clock = base + mp.clock
        self.names = {base + off: path for off, path in mp.locations}
        self.me: MemCpu | None = None

    def location(self, loc: int) -> _Cell:
        return _Cell(self, loc)

    def bind(self, cpu: Any, resolve: Any = None) -> None:
        """This worker's CPU: loads and stores go through its store buffer and views."""
        self.me = MemCpu(self, cpu, cpu.wid, cpu.rng.getrandbits(64), resolve=resolve)
        cpu.wm = self.me

    def cpu_load(self, loc: int) -> Any:
        me = self.me
        if me is None:  # the coordinator or setup: the newest committed value, no ordering
            return self.words.get(loc)
        return me.load(loc)

    def cpu_store(self, loc: int, v: Any) -> None:
        me = self.me
        if me is None:  # setup before the run: straight to memory (a message like any other)
            self.words.commit(loc, self.clock, int(v), 0, WHO_INIT)
            return
        me.store(loc, v)

    def name(self, loc: int) -> str:
        return self.names.get(loc, f"word {loc}")

    def messages(self, loc: int) -> list[tuple[int, int, int, int]]:
        """Every retained message of ``loc``, newest first: (value, ts, site, who)."""
        t = self.words.snapshot(loc, -1)
        return [tuple(t[i:i + WM_ENTRY]) for i in range(0, len(t), WM_ENTRY)]  # type: ignore[misc]


def who_of(wid: int, po: int) -> int:
    return (wid << 32) | po


def writer_of(who: int) -> tuple[int, int]:
    """(writer, program-order number) of a message; writer -1 for the initial value."""
    if who == WHO_INIT:
        return -1, 0
    return who >> 32, who & 0xFFFFFFFF


class Deferred:
    """A load not yet performed: performed at its first use (any use is a dependency), or
    when a barrier, a release, an access to its location or the end of the operation
    requires it."""

    __slots__ = ("_mc", "_loc", "_site", "_v", "_ts")

    def __init__(self, mc: "MemCpu", loc: int, site: int) -> None:
        self._mc = mc
        self._loc = loc
        self._site = site
        self._v: int | None = None
        self._ts = 0  # the timestamp of the message it read, once performed

    def force(self) -> int:
        v = self._v
        if v is None:
            v = self._mc._perform(self)
        return v

    def __index__(self) -> int:
        return self.force()

    __int__ = __index__

    def __bool__(self) -> bool:
        return bool(self.force())

    def __hash__(self) -> int:
        return hash(self.force())

    def __repr__(self) -> str:
        return repr(self.force())

    def __format__(self, spec: str) -> str:
        return format(self.force(), spec)


def _fwd(name: str) -> None:
    op = getattr(int, name)

    def f(self: Deferred, *a: Any) -> Any:
        return op(self.force(), *(x.force() if isinstance(x, Deferred) else x for x in a))

    setattr(Deferred, name, f)


for _n in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__radd__", "__sub__",
           "__rsub__", "__mul__", "__rmul__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
           "__lshift__", "__rshift__", "__floordiv__", "__mod__", "__neg__", "__invert__", "__abs__"):
    _fwd(_n)


def value(v: Any) -> int:
    """The int of a load's result (performing a deferred load)."""
    return v.force() if isinstance(v, Deferred) else v


class MemCpu(MemCpuCore):
    """One CPU's side of weak memory: its store buffer, views, deferred loads, and a log of
    its recent loads (the evidence of a stale read). Per process, never shared. The hot
    paths (``load``, ``store``, commits, ``smp_wmb``, the log) are the C base class's
    (shm_model/_fastlock.c, ``MemCpuCore``); what is rare is here.

    ``p_drain`` (a relaxed access commits one buffered store), ``p_stale`` (a load reads an
    older allowed message), ``p_defer`` (a load is deferred to its first use): 0.3, 0.35 and
    0.03 by default (a deferral costs ~1 us of Python: rare keeps a relaxed load within 3x a
    plain field's; LB is still observed, ``stress litmus``); ``seed`` seeds the CPU's choices."""

    def __init__(self, wm: WeakMemory, cpu: Any, wid: int, seed: int, resolve: Any = None) -> None:
        super().__init__(wm.mv, wm.clock, cpu, wid, seed & 0xFFFFFFFFFFFFFFFF)
        self.wm = wm
        self.cpu = cpu
        self.resolve = resolve
        self.deferred: list[Deferred] = []

    # -- scheduling -------------------------------------------------------------------------
    def _point(self) -> None:
        cpu = self.cpu
        if cpu is not None and cpu.sched is not None:
            cpu.yield_point()

    # -- deferred loads (called by the C load) -------------------------------------------------
    def _defer(self, loc: int, site: int) -> Deferred:
        d = Deferred(self, loc, site)
        self.deferred.append(d)
        self.n_deferred += 1
        return d

    def _perform(self, d: Deferred) -> int:
        if d._v is None:
            try:
                self.deferred.remove(d)
                self.n_deferred -= 1
            except ValueError:
                pass
            d._v = self._read(d._loc, d._site)
            d._ts = self.last_ts
        return d._v

    def _perform_loc(self, loc: int) -> None:
        for d in [d for d in self.deferred if d._loc == loc]:
            self._perform(d)

    def perform_deferred(self) -> None:
        for d in list(self.deferred):
            self._perform(d)

    # -- acquire, release, dependencies ---------------------------------------------------------
    def load_acquire(self, loc: int) -> int:
        """LDAR: later loads read at least what was visible to this one."""
        self._point()
        if self.deferred:
            self._perform_loc(loc)
        for e in reversed(self.sb):
            if e[0] == loc:
                return e[1]
        v = self._read(loc, capture_site())
        if self.last_ts > self.vlow:
            self.vlow = self.last_ts
        return v

    def store_release(self, loc: int, v: Any) -> None:
        """STLR: every earlier access is visible before this store is."""
        self._point()
        v = value(v)
        site = capture_site()
        self.release_view()
        self.commit_direct(loc, v, site)

    def addr_dep(self, ts: int | None = None) -> None:
        """The next load's address depends on a load's value (ARMv8 orders them): the load
        that read the message at ``ts`` (default: the last load)."""
        self.dep_floor = self.last_ts if ts is None else ts

    # -- barriers ---------------------------------------------------------------------------
    def rmb(self) -> None:
        """smp_rmb (DMB ISHLD): earlier loads are performed; later loads read at least what
        they read."""
        self._point()
        if self.deferred:
            self.perform_deferred()
        if self.vrold > self.vlow:
            self.vlow = self.vrold

    def mb(self) -> None:
        """smp_mb (DMB ISH): the store buffer drains; later loads read at least every
        message this CPU read or wrote."""
        self._point()
        if self.deferred:
            self.perform_deferred()
        self.drain()
        self.vlow = max(self.vlow, self.vrold, self.vwold)

    def release_view(self) -> int:
        """Before a release: loads performed, stores committed; returns the view to publish."""
        if self.deferred:
            self.perform_deferred()
        self.drain()
        return max(self.vrold, self.vwold)

    # -- locks (called by the C fast path, masked) ------------------------------------------
    def acquired(self, view_word: int) -> None:
        """A lock was taken: an acquire of the view its last release published."""
        v = self.wm.words.get(view_word)
        if v > self.vlow:
            self.vlow = v

    def releasing(self, view_word: int) -> None:
        """A lock is being released: a release; its view goes into the lock record."""
        self.wm.words.amax(view_word, self.release_view())

    def settle_one(self) -> bool:
        """One step of settling, in a seeded order (nothing orders them): perform a deferred
        load or commit a buffered store. False when nothing is left."""
        d = self.deferred
        nsb = self.n_sb
        if not d and not nsb:
            return False
        if d and (not nsb or self.random() < 0.5):
            self._perform(d[self.randrange(len(d))] if len(d) > 1 else d[0])
        else:
            self.drain_one()
        return True

    def quiesce(self) -> None:
        """This CPU goes idle or blocks (the end of an operation, a wait): its deferred loads
        are performed and its stores committed, each step a scheduling point in controlled
        mode (another CPU may run between them, as between any two accesses)."""
        while self.deferred or self.n_sb:
            self._point()
            self.settle_one()

    # -- evidence ---------------------------------------------------------------------------
    def last_read(self, loc: int) -> tuple | None:
        """(value, ts, writer's site, who, load site, snapshot) of this CPU's last logged read
        of ``loc``."""
        for e in reversed(self.log()):
            if e[0] == loc:
                return e[1:]
        return None

    def explain(self, loc: int) -> dict[str, Any]:
        """Why this CPU's last read of ``loc`` returned what it did, as evidence: the value
        read and its writer, the newer messages of ``loc`` with their writers, and the
        program-order pair that was reordered, found from an earlier load of this CPU that
        saw a later store (in the writer's program order) of a newer message's writer:
        committed first, the writer's two stores were reordered (it needs ``smp_wmb``);
        committed in order, this CPU's two loads were (it needs ``smp_rmb``)."""
        wm = self.wm
        log = self.log()
        rd = None
        for k in range(len(log) - 1, -1, -1):
            if log[k][0] == loc:
                rd = log[k]
                before = log[:k][::-1]  # this CPU's loads before that read, most recent first
                break
        out: dict[str, Any] = {"location": wm.name(loc)}
        if rd is None:
            return out
        _, v, ts, wsite, who, site, snap = rd
        out.update(value=v, ts=ts, read_site=self._text(site), written_by=self._writer(wsite, who))
        # the newer messages: those the load could have read (its snapshot) and those committed since
        seen = {snap[i + 1]: tuple(snap[i:i + WM_ENTRY]) for i in range(0, len(snap), WM_ENTRY)}
        seen.update({m[1]: m for m in wm.messages(loc)})
        newer = sorted((m for t_, m in seen.items() if t_ > ts), key=lambda m: m[1])
        visible = {snap[i + 1] for i in range(0, len(snap), WM_ENTRY)}
        out["newer"] = [{"value": m[0], "ts": m[1], "visible_at_read": m[1] in visible, **self._writer(m[2], m[3])}
                        for m in newer]
        for nv, nts, nsite, nwho in reversed(newer):  # the newest store that precedes a store seen earlier
            nwid, npo = writer_of(nwho)
            if nwid < 0:
                continue
            for (l2, v2, ts2, s2w, who2, s2, _) in before:
                w2, po2 = writer_of(who2)
                if l2 == loc or w2 != nwid or po2 <= npo:
                    continue
                # this CPU read the writer's later store (l2) before its read of loc
                if ts2 < nts:
                    out["reordered"] = {
                        "kind": "store-store", "cpu": nwid, "missing": "smp_wmb",
                        "first": {"location": wm.name(loc), "value": nv, "site": self._text(nsite)},
                        "then": {"location": wm.name(l2), "value": v2, "site": self._text(s2w)},
                        "why": f"worker {nwid}'s store to {wm.name(l2)} became visible before its store to "
                               f"{wm.name(loc)}, which precedes it in program order"}
                else:
                    out["reordered"] = {
                        "kind": "load-load", "cpu": self.wid, "missing": "smp_rmb",
                        "first": {"location": wm.name(l2), "value": v2, "site": self._text(s2)},
                        "then": {"location": wm.name(loc), "value": v, "site": self._text(site)},
                        "why": f"the load of {wm.name(loc)} read an older value than the one visible when the "
                               f"load of {wm.name(l2)} before it in program order was performed"}
                return out
        return out

    def _writer(self, site: int, who: int) -> dict[str, Any]:
        wid, _ = writer_of(who)
        if wid < 0:
            return {"writer": None, "site": "initial value"}
        return {"writer": wid, "site": self._text(site)}

    def _text(self, site: int) -> Any:
        if self.resolve is not None and site:
            try:
                return self.resolve(site)
            except Exception:  # a site the resolver cannot name stays a number
                return site
        return site


def loc_of(view: Any, name: str) -> int:
    """The location (arena word) of relaxed field ``name`` of a struct view: what
    :meth:`MemCpu.explain` and :meth:`MemCpu.load_acquire` take."""
    return view._base + view._offsets[name]


# ---- Xen's names, for model code ----------------------------------------------------------------

def _mc(cpu: Any) -> MemCpu | None:
    return cpu.wm


def smp_wmb(cpu: Any) -> None:
    """``smp_wmb()`` on ``cpu`` (no effect without relaxed fields)."""
    mc = cpu.wm
    if mc is not None:
        mc.wmb()


def smp_rmb(cpu: Any) -> None:
    """``smp_rmb()`` on ``cpu``."""
    mc = cpu.wm
    if mc is not None:
        mc.rmb()


def smp_mb(cpu: Any) -> None:
    """``smp_mb()`` on ``cpu``."""
    mc = cpu.wm
    if mc is not None:
        mc.mb()


RMW_ADD, RMW_OR, RMW_ANDNOT, RMW_XCHG = 0, 1, 2, 3


def _rmw(cpu: Any, loc: int, op: int, arg: int, ordered: bool) -> int:
    mc = cpu.wm
    if mc is None:
        raise RuntimeError("an atomic on a relaxed field needs a worker's CPU bound to weak memory")
    if ordered:  # LDXR ... STLXR: every earlier access is visible before the store
        mc._point()
        mc.release_view()
    old = mc.rmw(loc, op, arg)
    if ordered:  # ... then DMB ISH
        mc.mb()
    return old


def set_bit(cpu: Any, nr: int, loc: int) -> None:
    """Xen's Arm ``set_bit(nr, p)`` (arm64/lib/bitops.c, 4.15: LDXR/ORR/STXR, no barrier)."""
    _rmw(cpu, loc, RMW_OR, 1 << nr, False)


def clear_bit(cpu: Any, nr: int, loc: int) -> None:
    """Xen's Arm ``clear_bit`` (LDXR/BIC/STXR, no barrier)."""
    _rmw(cpu, loc, RMW_ANDNOT, 1 << nr, False)


def test_and_set_bit(cpu: Any, nr: int, loc: int) -> bool:
    """Xen's Arm ``test_and_set_bit`` (LDXR/ORR/STLXR then DMB ISH: fully ordered)."""
    return bool(_rmw(cpu, loc, RMW_OR, 1 << nr, True) >> nr & 1)


def test_and_clear_bit(cpu: Any, nr: int, loc: int) -> bool:
    """Xen's Arm ``test_and_clear_bit`` (LDXR/BIC/STLXR then DMB ISH: fully ordered)."""
    return bool(_rmw(cpu, loc, RMW_ANDNOT, 1 << nr, True) >> nr & 1)


def xchg(cpu: Any, loc: int, v: int) -> int:
    """Xen's ``xchg`` (fully ordered, as Linux's value-returning atomics)."""
    return _rmw(cpu, loc, RMW_XCHG, v, True)


def atomic_add(cpu: Any, loc: int, v: int) -> None:
    """``atomic_add`` (relaxed)."""
    _rmw(cpu, loc, RMW_ADD, v, False)


def atomic_add_return(cpu: Any, loc: int, v: int) -> int:
    """``atomic_add_return`` (fully ordered): the new value."""
    return _rmw(cpu, loc, RMW_ADD, v, True) + v


__all__ = ["Relaxed", "RelaxedArray", "loc_of", "set_bit", "clear_bit", "test_and_set_bit", "test_and_clear_bit",
           "xchg", "atomic_add", "atomic_add_return", "WeakMemory", "MemCpu", "Deferred", "value", "smp_wmb", "smp_rmb", "smp_mb",
           "writer_of", "SB_CAP", "WM_HIST"]
