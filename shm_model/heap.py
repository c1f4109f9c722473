"""A typed heap in the arena, with KASAN-grade use-after-free detection.

Objects that the modelled code allocates and frees are declared like any shared struct and
live in a fixed pool of *slots* in the arena::

    class Obj(Struct):
        lock = Spinlock()
        cmd = Int()

    class State(Struct):
        objs = Heap(Obj, slots=8)             # ctype "struct obj"; slots: int, option or function
        users = Heap(User, slots="users", ctype="struct user_info")
        ptr = Int()                           # a handle is stored in an Int word

    h = s.objs.alloc()          # a handle, or NULL when the pool is exhausted (counted)
    s.objs[h].cmd = 3           # a checked dereference: every field access is checked
    s.ptr = h
    s.objs.free(h)              # later s.objs[s.ptr].cmd is a use-after-free: a finding

**Handles.** A handle is the int ``generation << 16 | slot`` (:func:`handle`): slot < 65536,
generation >= 1, so a handle is never 0 and :data:`NULL` (0) is no object. It fits an
``Int`` word, so the model stores it in shared state like a C pointer. Each slot's
*generation* starts at 1 and increments when its object is freed: a stale handle never
matches the slot again, even after the slot is reused (KASAN cannot say that; its shadow
memory only knows the slot is allocated again).

**Per-slot metadata** (in the arena, :data:`META` words per slot): the *tag* (the live
object's handle while allocated; ``-next_generation`` once freed; 0 never allocated), the
state (free / allocated / quarantined), a refcount, and who allocated and who freed the
object last: owner (``worker * 2 + context``, -1 outside the workers), time
(``cpu.clock_ns()``, virtual in controlled mode) and a stack of up to :data:`STACK` call
sites (``shm_model.sites`` ints, resolved to ``function() file:line`` when reported).

**Checked dereference.** ``s.objs[h]`` (or ``s.objs.deref(h)``) is a view of the object;
every get and set of a scalar ``Int`` field and every get of a lock field through it first
compares the slot's tag with the handle (one arena read and one comparison), then accesses
the memory. A mismatch is a *fault*, classified from the metadata:

- handle ``NULL``: ``null-deref`` ("BUG: kernel NULL pointer dereference, address:" the
  field's offset), then :class:`~shm_model.cpu.Panic`: the operation ends there and, Xen
  having panicked, so does this boot of the model (the engine reboots it if the run goes on);
- a generation that was allocated and freed: ``use-after-free``; the access then proceeds on
  the memory as a real one would (reads whatever the slot holds now: poison-free, like
  Xen's allocator, the old object's values until the slot is reused and zeroed);
- a generation never allocated in that slot (a forged or corrupted handle): ``invalid-access``
  (KASAN's wild-memory-access); the access proceeds; a slot out of the pool panics.

An ``Array`` of ``Int`` inside a heap object is returned, after one check at the field
access, as a ``memoryview`` slice of the object (per-element checks would cost each read a
Python call); so are other non-scalar members (lock arrays). A ``Nested`` struct or an
``Array`` of structs is a checked view again (its scalars checked per access).

**Scheduling points.** Every checked access is a scheduling point of the controlled
scheduler (``cpu.yield_point()`` semantics, inlined: a free run pays one attribute read),
taken *before* the check, so the check and the access it guards are one step and a
use-after-free found under ``--schedule pct`` replays exactly. ``alloc``, ``free``, ``get``
and ``put`` are scheduling points too.

**Allocation policy: KASAN's quarantine, least recently freed reuse.** ``alloc`` takes a
never-used slot while there is one (in slot order), then the freed slot that waited
longest: freed slots form one FIFO (the quarantine, in the arena), so a freed slot is reused
only after every other free slot. A dangling handle thus keeps pointing at dead, unreused
memory for as long as the pool allows, which is when a use-after-free is the most
recognisable; the generation catches it after reuse too. An exhausted pool returns
:data:`NULL` and counts it (``stats()["exhausted"]``).

**Refcounts.** ``alloc`` sets the object's refcount to 1; ``get(h)`` increments it,
``put(h)`` decrements it and frees the object at zero. Both check the handle like a
dereference (a ``get``/``put`` through a stale handle is a use-after-free: Linux's
"refcount_t: addition on 0; use-after-free" / "underflow; use-after-free").

**Frees.** ``free(NULL)`` does nothing (``xfree(NULL)``). Freeing a handle whose object was
already freed is ``double-free``; a handle that was never allocated (or a slot out of the
pool) is ``invalid-free``. Either is a finding and the free does nothing.

**Locking.** Allocation, free and refcount changes of one pool are serialised by an
auxiliary semaphore of the arena (``Arena.aux``, not a model lock: lockdep never sees it),
taken with interrupts soft-masked so an ISR on the same CPU cannot deadlock on it; no
scheduling point is taken while it is held. Dereferences take no lock: a check and the
access after it race with a free on another CPU in free mode, as KASAN's shadow check
does with the access it guards.

**Findings** go through ``cpu.finding`` with KASAN's words as data (``details["kasan"]``:
the bug kind; access, address, object type, slot and generations, the access stack, the
allocation and free records), rendered by the engine (``stress/splat.py``). A worker
reports a given (outcome, access site, object type) once. Addresses are stable fake kernel
addresses computed from the object's word in the arena: ``ADDR_BASE + 8 * word``.

A heap may not be declared inside a heap object. Heaps must be bound to each worker's Cpu
after fork (:meth:`HeapView.bind`), as locks are; unbound (in the coordinator, e.g. in
``Workload.setup``) a heap allocates with owner -1, and a fault raises :class:`HeapError`.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import posix_ipc

from . import sites
from .cpu import Panic
from .trace import EV_ALLOC, EV_FREE
from .layout import (AttachCtx, Field, LayoutError, Node, Plan, Size, Struct, StructNode, StructsNode,
                     plan_instance, resolve_size, scalar_offsets)

sites.internal(__file__)

NULL = 0
SLOT_BITS = 16
SLOT_MASK = (1 << SLOT_BITS) - 1
MAX_SLOTS = 1 << SLOT_BITS

# ---- pool header words --------------------------------------------------------------------
P_ALLOCS, P_FREES, P_LIVE, P_MAX_LIVE, P_EXHAUSTED, P_QUARANTINED, P_REPORTS = range(7)
P_FRESH = 7  # never-used slots handed out so far (slots P_FRESH.. are still fresh)
P_QHEAD, P_QTAIL = 8, 9  # the quarantine FIFO: ring[qhead % n] .. ring[(qtail - 1) % n]
P_ZERO = 10  # always 0: the tag a NULL view compares with (its expected tag is -1)
HEADER = 16

# ---- per-slot metadata words --------------------------------------------------------------
M_TAG, M_STATE, M_REF, M_AOWNER, M_ATIME, M_FOWNER, M_FTIME, M_FGEN = range(8)
STACK = 4  # call sites kept per allocation and per free
M_ASTACK = 8  # the live (or last) allocation's stack
M_FSTACK = M_ASTACK + STACK  # the last free's stack
# the last freed object's own allocation (copied at free: a reallocation overwrites M_A*)
M_FAOWNER, M_FATIME = M_FSTACK + STACK, M_FSTACK + STACK + 1
M_FASTACK = M_FATIME + 1
META = M_FASTACK + STACK  # 26 words
ST_FREE, ST_ALLOCATED, ST_QUARANTINED = 0, 1, 2
STATE_NAMES = {ST_FREE: "free", ST_ALLOCATED: "allocated", ST_QUARANTINED: "quarantined"}

ADDR_BASE = 0xFFFF830000A00000  # Xen's direct map, a megabyte in
WAIT_SLICE_S = 0.005

#: the outcomes this module reports
OUTCOMES = ("use-after-free", "null-deref", "double-free", "invalid-free", "invalid-access")


class HeapError(RuntimeError):
    """A heap fault outside any worker (no Cpu to report it through)."""


def handle(slot: int, gen: int) -> int:
    """The handle of generation ``gen`` (>= 1) of ``slot``."""
    return gen << SLOT_BITS | slot


def slot_of(h: int) -> int:
    return h & SLOT_MASK


def gen_of(h: int) -> int:
    return h >> SLOT_BITS


# ---- declaration and plan -----------------------------------------------------------------

class Heap(Field):
    """A pool of ``slots`` objects of ``struct`` (a :class:`Struct` subclass). ``slots``: an
    int, an option name or a function of the options, like ``Array`` sizes. ``ctype``: the
    object's C type in reports (default ``"struct <lowercase class name>"``). Lock fields of
    the struct are one lock instance per slot (path ``"<field>[<slot>].<lock>"``, class as
    declared); they persist across free and reallocation."""

    def __init__(self, struct: type, slots: Size, ctype: str | None = None) -> None:
        self.struct = struct
        self.slots = slots
        self.ctype = ctype

    def plan(self, options: Any, plan: Plan, cname: str, fname: str, path: str) -> Node:
        st = self.struct
        if not (isinstance(st, type) and issubclass(st, Struct)):
            raise LayoutError(f"{path}: Heap() takes a Struct subclass, not {st!r}")
        n = resolve_size(self.slots, options, path)
        if not 1 <= n <= MAX_SLOTS:
            raise LayoutError(f"{path}: a heap has 1 to {MAX_SLOTS} slots, not {n}")
        if "heap" in plan.within:
            raise LayoutError(f"{path}: a Heap inside a heap object is not supported")
        hdr = plan.reserve(HEADER)
        ring = plan.reserve(n)
        meta = plan.reserve(n * META)
        aux = plan.new_aux()
        plan.within.append("heap")
        try:
            items = []
            obj_inits: list[tuple[int, int]] = []
            for i in range(n):
                k = len(plan.inits)
                items.append(plan_instance(st, options, plan, f"{path}[{i}]"))
                if i == 0:
                    obj_inits = [(off - items[0].start, v) for off, v in plan.inits[k:]]
        finally:
            plan.within.pop()
        words = plan.words - items[-1].start
        return HeapNode(st, n, hdr, ring, meta, items, aux, self.ctype or f"struct {st.__name__.lower()}",
                        path, words, obj_inits)


@dataclass
class HeapNode(Node):
    """A planned heap: header, quarantine ring and metadata words, then the objects."""

    struct: type
    n: int
    hdr: int
    ring: int
    meta: int
    items: list[StructNode]
    aux: int  # index of its semaphore in Arena.aux
    ctype: str
    path: str
    obj_words: int
    obj_inits: list[tuple[int, int]]  # (offset in the object, value): what alloc(zero=True) writes

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> "HeapView":
        sem = ctx.aux[self.aux] if ctx.aux is not None else _LocalSem()
        hv = HeapView(self, mv, base, locks, cache, ctx, sem)
        ctx.heaps.append(hv)
        ctx.bound.append(hv)
        return hv

    def offsets(self) -> Iterator[int]:
        yield from range(self.hdr, self.hdr + HEADER)
        yield from range(self.ring, self.ring + self.n)
        yield from range(self.meta, self.meta + self.n * META)
        for it in self.items:
            yield from it.offsets()


class _LocalSem:
    """Stand-in for the arena's semaphore when a heap is attached without an arena (a
    single-process test): same acquire/release protocol."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, timeout: float | None = None) -> None:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise posix_ipc.BusyError("busy")

    def release(self) -> None:
        self._lock.release()


class _NoCpu:
    """The Cpu of an unbound heap (the coordinator): no scheduler, no interrupts."""

    sched = None
    oid = (-1, -1)
    ctx = 0

    @staticmethod
    def local_irq_save() -> int:
        return 0

    @staticmethod
    def local_irq_restore(flags: int) -> None:
        pass

    @staticmethod
    def yield_point() -> None:
        pass

    @staticmethod
    def clock_ns() -> int:
        return time.monotonic_ns()

    @staticmethod
    def check_stop() -> None:
        pass

    @staticmethod
    def finding(outcome: str, title: str, **details: Any) -> None:
        raise HeapError(f"{title} ({details.get('type')}, handle {details.get('handle')}; no worker to report it)")


_NO_CPU = _NoCpu()


# ---- checked views ------------------------------------------------------------------------

class CheckedView:
    """A dereferenced handle: the object's fields, each access checked against the slot.
    ``_b``: the struct's first word in the arena; ``_t``: the word holding the slot's tag;
    ``_g``: the tag this handle expects (the handle itself; -1 for NULL and wild handles);
    ``_m``: the slot's attached non-scalar members (locks, memoryviews, sub-member tuples)."""

    __slots__ = ("_b", "_t", "_g", "_m")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} handle {self._g:#x}>" if self._g >= 0 else f"<{type(self).__name__} NULL>"


def _model_frames(limit: int) -> tuple[str, list[int]]:
    """The accessing function's name and up to ``limit`` model call sites (innermost first)."""
    f = sys._getframe(1)
    internal = sites._INTERNAL_FILES
    while f is not None and f.f_code.co_filename in internal:
        f = f.f_back
    if f is None:
        return "?", []
    code = f.f_code
    func = getattr(code, "co_qualname", code.co_name)
    out = []
    while f is not None and len(out) < limit and f.f_code.co_filename not in internal:
        out.append(sites.key_of(f))
        f = f.f_back
    return func, out


class HeapView(dict):
    """A heap as the model sees it (``s.objs``), bound per worker by :meth:`bind`.

    It is a dict of the views it has made, by handle: ``s.objs[h]`` is then one C-level
    lookup, and only a handle not seen yet builds its view (``__missing__``). The dict is
    an implementation detail: ``len()``, ``in`` and iteration are the pool's (slots, live
    handles)."""

    __hash__ = object.__hash__

    def __init__(self, node: HeapNode, mv: memoryview, base: int, locks: list[Any], cache: dict,
                 ctx: AttachCtx, sem: Any) -> None:
        super().__init__()
        self.node = node
        self.n = node.n
        self.ctype = node.ctype
        self.path = node.path
        self.trace_id = 0  # this pool's number in its trace events (the engine's index of it)
        self._mv = mv
        self._sem = sem
        self._p = base + node.hdr
        self._ring = base + node.ring
        self._meta = base + node.meta
        self._zero_i = self._p + P_ZERO
        self._starts = [base + it.start for it in node.items]
        self._rel_starts = [it.start for it in node.items]  # state-relative: addresses
        self._obj_words = node.obj_words
        self._zeros = memoryview(bytearray(8 * node.obj_words)).cast("q")
        self._inits = node.obj_inits
        self._cpu: Any = _NO_CPU
        self._resolve: Callable[[int], Any] | None = None
        self._seen: set = set()
        self._build(mv, base, locks, cache, ctx)

    def __repr__(self) -> str:
        return f"<heap {self.path}: {self.n} x {self.ctype}>"

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def __contains__(self, h: object) -> bool:
        return isinstance(h, int) and self.is_live(h)

    def __iter__(self) -> Iterator[int]:
        return iter(self.live_handles())

    # -- per worker ------------------------------------------------------------------------
    def bind(self, cpu: Any, resolve: Callable[[int], Any] | None = None) -> None:
        """Give the heap this worker's Cpu (after fork). ``resolve`` turns a site int into
        its text (the engine's resolver): allocation and free stacks are then reported as
        text; without it they stay ints."""
        self._cpu = cpu
        self._bind_cell(cpu)
        self._resolve = resolve
        self._seen = set()
        self.clear()

    # -- view classes ----------------------------------------------------------------------
    def _build(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> None:
        cpu: Any = _NO_CPU
        fault = self._fault
        classes: dict[type, type] = {}

        def bind_cell(c: Any) -> None:
            nonlocal cpu
            cpu = c

        def int_prop(name: str, off: int) -> property:
            def get(self: CheckedView) -> int:
                if cpu.sched is not None:
                    cpu.yield_point()
                if mv[self._t] != self._g:
                    fault(self, name, off, False)
                return mv[self._b + off]

            def put(self: CheckedView, value: int) -> None:
                if cpu.sched is not None:
                    cpu.yield_point()
                if mv[self._t] != self._g:
                    fault(self, name, off, True)
                mv[self._b + off] = value

            return property(get, put)

        def member_prop(name: str, k: int, off: int) -> property:
            def get(self: CheckedView) -> Any:
                if cpu.sched is not None:
                    cpu.yield_point()
                if mv[self._t] != self._g:
                    fault(self, name, off, False)
                return self._m[k]

            return property(get)

        def struct_prop(name: str, k: int, off: int, sub: type, rel: int) -> property:
            def get(self: CheckedView) -> CheckedView:
                if cpu.sched is not None:
                    cpu.yield_point()
                if mv[self._t] != self._g:
                    fault(self, name, off, False)
                return _view(sub, self._b + rel, self._t, self._g, self._m[k])

            return property(get)

        def structs_prop(name: str, k: int, off: int, sub: type, rels: list[int]) -> property:
            def get(self: CheckedView) -> tuple:
                if cpu.sched is not None:
                    cpu.yield_point()
                if mv[self._t] != self._g:
                    fault(self, name, off, False)
                b, t, g, ms = self._b, self._t, self._g, self._m[k]
                return tuple(_view(sub, b + r, t, g, m) for r, m in zip(rels, ms))

            return property(get)

        def checked_class(node: StructNode) -> type:
            hit = classes.get(node.struct)
            if hit is not None:
                return hit
            ns: dict[str, Any] = {"__slots__": ()}
            rel = dict(scalar_offsets(node.members, node.start))
            off = 0
            for k, (name, sub) in enumerate(node.members):
                if sub.scalar:
                    ns[name] = int_prop(name, rel[name])
                elif isinstance(sub, StructNode):
                    ns[name] = struct_prop(name, k, off, checked_class(sub), sub.start - node.start)
                elif isinstance(sub, StructsNode):
                    sc = checked_class(sub.items[0]) if sub.items else CheckedView
                    ns[name] = structs_prop(name, k, off, sc, [it.start - node.start for it in sub.items])
                else:
                    ns[name] = member_prop(name, k, off)
                off += sum(1 for _ in sub.offsets())
            vc = type(node.struct.__name__, (CheckedView,), ns)
            classes[node.struct] = vc
            return vc

        def members(node: StructNode) -> tuple:
            """The slot's attached non-scalar members, by member index (None for scalars)."""
            out = []
            for _, sub in node.members:
                if sub.scalar:
                    out.append(None)
                elif isinstance(sub, StructNode):
                    out.append(members(sub))
                elif isinstance(sub, StructsNode):
                    out.append(tuple(members(it) for it in sub.items))
                else:
                    out.append(sub.attach(mv, base, locks, cache, ctx))
            return tuple(out)

        self._bind_cell = bind_cell
        self._root = checked_class(self.node.items[0])
        self._members = [members(it) for it in self.node.items]
        self._tags = [self._meta + i * META + M_TAG for i in range(self.n)]

    # -- dereference ------------------------------------------------------------------------
    #: ``deref(h)`` is ``self[h]``: the object of handle ``h``, every field access through
    #: the view checked
    deref = dict.__getitem__

    def __missing__(self, h: int) -> CheckedView:
        if not isinstance(h, int):
            raise TypeError(f"a heap handle is an int, not {type(h).__name__}")
        if dict.__len__(self) > 4 * self.n + 64:
            self.clear()
        slot = h & SLOT_MASK
        if h <= 0 or slot >= self.n:  # NULL or no slot of this pool: every access faults
            v = _view(self._root, self._starts[0], self._zero_i, -1, ("null" if h == 0 else "wild", h))
        else:
            v = _view(self._root, self._starts[slot], self._tags[slot], h, self._members[slot])
        dict.__setitem__(self, h, v)
        return v

    _make = __missing__

    def __setitem__(self, h: Any, v: Any) -> None:
        raise TypeError("heap objects are made by alloc(), not assigned")

    # -- reading the pool (no finding, no scheduling point) -----------------------------------
    def is_live(self, h: int) -> bool:
        """Whether ``h`` is the handle of a live object of this pool."""
        slot = h & SLOT_MASK
        return h > 0 and slot < self.n and self._mv[self._tags[slot]] == h

    def live_handles(self) -> list[int]:
        """The handles of every live object (a snapshot; for invariants and tests)."""
        mv = self._mv
        return [t for t in (mv[i] for i in self._tags) if t > 0]

    def refcount(self, h: int) -> int:
        return self._mv[self._meta + (h & SLOT_MASK) * META + M_REF]

    def slot_state(self, slot: int) -> str:
        return STATE_NAMES.get(self._mv[self._meta + slot * META + M_STATE], "?")

    def stats(self) -> dict[str, int]:
        """The pool's counters: allocations and frees done, objects live now and at most,
        allocations refused because every slot was live (``exhausted``: a capacity hit),
        freed slots waiting in the quarantine, and faults detected (``reports``: every
        detection, including those a worker did not report again at the same site)."""
        mv, p = self._mv, self._p
        return {"allocs": mv[p + P_ALLOCS], "frees": mv[p + P_FREES], "live": mv[p + P_LIVE],
                "max_live": mv[p + P_MAX_LIVE], "exhausted": mv[p + P_EXHAUSTED],
                "quarantined": mv[p + P_QUARANTINED], "reports": mv[p + P_REPORTS]}

    # -- the allocator lock -----------------------------------------------------------------
    def _lock(self, cpu: Any) -> int:
        flags = cpu.local_irq_save()
        sem = self._sem
        try:
            sem.acquire(0)
        except posix_ipc.BusyError:
            while True:
                try:
                    sem.acquire(WAIT_SLICE_S)
                    break
                except posix_ipc.BusyError:
                    try:
                        cpu.check_stop()
                    except BaseException:
                        cpu.local_irq_restore(flags)
                        raise
                except posix_ipc.SignalError:
                    pass
        return flags

    def _unlock(self, cpu: Any, flags: int) -> None:
        self._sem.release()
        cpu.local_irq_restore(flags)

    # -- allocation -------------------------------------------------------------------------
    def alloc(self, zero: bool = True) -> int:
        """A new object's handle (refcount 1), or :data:`NULL` when every slot is live
        (exhausted: counted in ``stats()``). ``zero``: the object's
        words are zeroed and its fields' declared initial values written (``xzalloc``);
        ``zero=False`` leaves what the slot held (``xmalloc``)."""
        cpu = self._cpu
        if cpu.sched is not None:
            cpu.yield_point()
        _, stack = _model_frames(STACK)
        owner = cpu.oid[cpu.ctx]
        now = cpu.clock_ns()
        mv, p, n = self._mv, self._p, self.n
        flags = self._lock(cpu)
        try:
            fresh = mv[p + P_FRESH]
            if fresh < n:
                slot = fresh
                mv[p + P_FRESH] = fresh + 1
                gen = 1
            elif mv[p + P_QHEAD] != mv[p + P_QTAIL]:
                head = mv[p + P_QHEAD]
                slot = mv[self._ring + head % n]
                mv[p + P_QHEAD] = head + 1
                mv[p + P_QUARANTINED] -= 1
                gen = -mv[self._tags[slot]]
            else:
                mv[p + P_EXHAUSTED] += 1
                return NULL
            h = gen << SLOT_BITS | slot
            m = self._meta + slot * META
            mv[m + M_TAG] = h
            mv[m + M_STATE] = ST_ALLOCATED
            mv[m + M_REF] = 1
            mv[m + M_AOWNER] = owner
            mv[m + M_ATIME] = now
            for k in range(STACK):
                mv[m + M_ASTACK + k] = stack[k] if k < len(stack) else 0
            mv[p + P_ALLOCS] += 1
            live = mv[p + P_LIVE] + 1
            mv[p + P_LIVE] = live
            if live > mv[p + P_MAX_LIVE]:
                mv[p + P_MAX_LIVE] = live
        finally:
            self._unlock(cpu, flags)
        if cpu is not _NO_CPU:
            cpu.trace(EV_ALLOC, 0, h, self.trace_id)
        if zero and self._obj_words:
            b = self._starts[slot]
            mv[b:b + self._obj_words] = self._zeros
            for off, val in self._inits:
                mv[b + off] = val
        return h

    def free(self, h: int) -> None:
        """Free the object of ``h`` (its slot goes to the quarantine). ``NULL``: nothing."""
        if h == NULL:
            return
        self._free(h, "free")

    def _free(self, h: int, how: str) -> None:
        cpu = self._cpu
        if cpu.sched is not None:
            cpu.yield_point()
        func, stack = _model_frames(STACK)
        bad = self._free_locked(cpu, h, stack)
        if bad is not None:
            self._free_fault(cpu, h, bad, func, stack, how)
        elif cpu is not _NO_CPU:
            cpu.trace(EV_FREE, 0, h, self.trace_id)

    def _free_locked(self, cpu: Any, h: int, stack: list[int]) -> str | None:
        """Free under the allocator lock; the bug's kind when ``h`` cannot be freed."""
        slot = h & SLOT_MASK
        if h < 0 or slot >= self.n:
            return "invalid-free"
        owner = cpu.oid[cpu.ctx]
        now = cpu.clock_ns()
        flags = self._lock(cpu)
        try:
            tag = self._mv[self._tags[slot]]
            if tag != h:
                return "double-free" if self._stale(h, tag) else "invalid-free"
            self._release(slot, h, owner, now, stack)
        finally:
            self._unlock(cpu, flags)
        return None

    def _release(self, slot: int, h: int, owner: int, now: int, stack: list[int]) -> None:
        """The free itself (allocator lock held): new generation, records, quarantine."""
        mv, p, n = self._mv, self._p, self.n
        m = self._meta + slot * META
        gen = h >> SLOT_BITS
        mv[m + M_TAG] = -(gen + 1)
        mv[m + M_STATE] = ST_QUARANTINED
        mv[m + M_REF] = 0
        mv[m + M_FOWNER] = owner
        mv[m + M_FTIME] = now
        mv[m + M_FGEN] = gen
        mv[m + M_FAOWNER] = mv[m + M_AOWNER]
        mv[m + M_FATIME] = mv[m + M_ATIME]
        for k in range(STACK):
            mv[m + M_FSTACK + k] = stack[k] if k < len(stack) else 0
            mv[m + M_FASTACK + k] = mv[m + M_ASTACK + k]
        tail = mv[p + P_QTAIL]
        mv[self._ring + tail % n] = slot
        mv[p + P_QTAIL] = tail + 1
        mv[p + P_QUARANTINED] += 1
        mv[p + P_FREES] += 1
        mv[p + P_LIVE] -= 1

    # -- refcounts --------------------------------------------------------------------------
    def get(self, h: int) -> int:
        """Take a reference (refcount + 1); checked like a dereference. Returns ``h``."""
        self._ref(h, +1)
        return h

    def put(self, h: int) -> None:
        """Drop a reference; the last one frees the object. Checked like a dereference."""
        self._ref(h, -1)

    def _ref(self, h: int, delta: int) -> None:
        cpu = self._cpu
        if cpu.sched is not None:
            cpu.yield_point()
        mv = self._mv
        slot = h & SLOT_MASK
        how = "get" if delta > 0 else "put"
        if h <= 0 or slot >= self.n:
            self._fault(self._make(h), "refcount", -1, True, how=how)
            return
        flags = self._lock(cpu)
        try:
            m = self._meta + slot * META
            ok = mv[m + M_TAG] == h
            if ok:
                r = mv[m + M_REF] + delta
                mv[m + M_REF] = r
                if r <= 0:  # the last reference: freed at once, by the caller of put()
                    self._release(slot, h, cpu.oid[cpu.ctx], cpu.clock_ns(), _model_frames(STACK)[1])
        finally:
            self._unlock(cpu, flags)
        if not ok:
            self._fault(self._make(h), "refcount", -1, True, how=how)

    # -- faults -----------------------------------------------------------------------------
    @staticmethod
    def _stale(h: int, tag: int) -> bool:
        """Whether ``h`` names an object of its slot that was allocated and freed since."""
        hg = h >> SLOT_BITS
        if tag > 0:
            return 1 <= hg < (tag >> SLOT_BITS)
        if tag < 0:
            return 1 <= hg < -tag
        return False

    def _record(self, slot: int, gen: int = 0) -> dict:
        """The slot's state and records as report data, for a handle of generation ``gen``:
        ``alloc`` and ``free``, the allocation and the free of the last freed object (that
        handle's object unless the slot was freed again since: their ``gen`` says), and
        ``realloc``, the live object's allocation when the slot holds a newer object."""
        mv = self._mv
        m = self._meta + slot * META
        tag = mv[m + M_TAG]
        fgen = mv[m + M_FGEN]
        res = self._resolve

        def rec(owner: int, t: int, at: int, g: int) -> dict:
            ks = [mv[m + at + k] for k in range(STACK) if mv[m + at + k]]
            return {"owner": mv[m + owner], "t_ns": mv[m + t], "gen": g,
                    "stack": [str(res(k)) for k in ks] if res is not None else ks}

        out: dict[str, Any] = {"slot": slot, "state": STATE_NAMES.get(mv[m + M_STATE], "?"),
                               "slot_gen": tag >> SLOT_BITS if tag > 0 else -tag, "refcount": mv[m + M_REF]}
        live = rec(M_AOWNER, M_ATIME, M_ASTACK, tag >> SLOT_BITS) if tag > 0 else None
        if live is not None and live["gen"] <= gen:
            out["alloc"] = live  # the handle's own object is the live one (or newer than any)
            live = None
        elif fgen:
            out["alloc"] = rec(M_FAOWNER, M_FATIME, M_FASTACK, fgen)
        if fgen:
            out["free"] = rec(M_FOWNER, M_FTIME, M_FSTACK, fgen)
        if live is not None:
            if "alloc" in out:
                out["realloc"] = live
            else:
                out["alloc"] = live
        return out

    def _addr(self, slot: int, word: int) -> str:
        return f"{ADDR_BASE + 8 * (self._rel_starts[slot] + word):016x}"

    def _report(self, cpu: Any, outcome: str, title: str, site: int, details: dict) -> None:
        """Count every detection (exactly: under the allocator lock); report a worker's
        first one per (outcome, site) (the heap is one object type)."""
        flags = self._lock(cpu)
        try:
            self._mv[self._p + P_REPORTS] += 1
        finally:
            self._unlock(cpu, flags)
        key = (outcome, site)
        if key in self._seen:
            return
        self._seen.add(key)
        cpu.finding(outcome, title, **details)

    def _fault(self, view: CheckedView, name: str, off: int, write: bool, how: str = "") -> None:
        """A checked access that did not match: report it; panic for NULL and wild handles."""
        cpu = self._cpu
        func, stack = _model_frames(STACK + 2)
        site = stack[0] if stack else 0
        access = "write" if write else "read"
        base = {"kasan": "", "heap": self.path, "type": self.ctype, "field": name, "access": access, "size": 8,
                "function": func, "site": site, "stack": stack}
        if how:
            base["refcount_op"] = how
        if view._t == self._zero_i:  # NULL or no slot of this pool
            what, h = view._m
            word = view._b - self._starts[0] + off  # the field's word in the object
            base["handle"] = h
            base["panic"] = True  # Xen panics here: the engine ends this boot of the model
            if what == "null":
                base.update(kasan="null-ptr-deref", address=f"{max(word, 0) * 8:016x}", offset=max(word, 0) * 8)
                self._report(cpu, "null-deref",
                             f"BUG: kernel NULL pointer dereference, address: {max(word, 0) * 8:016x}", site, base)
            else:
                base.update(kasan="wild-memory-access", slot=h & SLOT_MASK, gen=h >> SLOT_BITS, slots=self.n)
                self._report(cpu, "invalid-access", f"BUG: KASAN: wild-memory-access in {func}()", site, base)
            raise Panic()
        h = view._g
        slot = h & SLOT_MASK
        mv = self._mv
        tag = mv[self._tags[slot]]
        if tag == h:
            return  # it became valid again between the check and here (cannot happen: a new gen)
        word = view._b - self._starts[slot] + off if off >= 0 else -1
        rec = self._record(slot, h >> SLOT_BITS)
        base.update(rec)
        base.update(handle=h, gen=h >> SLOT_BITS, address=self._addr(slot, word), offset=8 * word,
                    object=self._addr(slot, 0), object_size=8 * self._obj_words)
        if self._stale(h, tag):
            sg = rec["slot_gen"]
            base["reallocated"] = tag > 0 or (h >> SLOT_BITS) < sg - 1
            if base["reallocated"]:
                base["realloc_gen"] = sg if tag > 0 else sg - 1
            base["kasan"] = "use-after-free"
            self._report(cpu, "use-after-free", f"BUG: KASAN: use-after-free in {func}()", site, base)
        else:
            base["kasan"] = "wild-memory-access"
            self._report(cpu, "invalid-access", f"BUG: KASAN: wild-memory-access in {func}()", site, base)

    def _free_fault(self, cpu: Any, h: int, kind: str, func: str, stack: list[int], how: str) -> None:
        site = stack[0] if stack else 0
        slot = h & SLOT_MASK
        d: dict[str, Any] = {"kasan": kind, "heap": self.path, "type": self.ctype, "function": func, "site": site,
                             "stack": stack, "handle": h, "gen": h >> SLOT_BITS, "access": "free", "size": 8,
                             "free_op": how}
        if 0 <= h and slot < self.n:
            rec = self._record(slot, h >> SLOT_BITS)
            d.update(rec)
            d.update(address=self._addr(slot, 0), object=self._addr(slot, 0), offset=0,
                     object_size=8 * self._obj_words)
            sg = rec["slot_gen"]
            tag = self._mv[self._tags[slot]]
            if kind == "double-free":
                d["reallocated"] = tag > 0 or (h >> SLOT_BITS) < sg - 1
                if d["reallocated"]:
                    d["realloc_gen"] = sg if tag > 0 else sg - 1
        else:
            d["slots"] = self.n
        self._report(cpu, kind, f"BUG: KASAN: {kind} in {func}()", site, d)


def _view(cls: type, b: int, t: int, g: int, m: Any) -> CheckedView:
    v = CheckedView.__new__(cls)
    v._b = b
    v._t = t
    v._g = g
    v._m = m
    return v


__all__ = ["Heap", "HeapView", "HeapNode", "HeapError", "CheckedView", "NULL", "handle", "slot_of", "gen_of",
           "OUTCOMES", "MAX_SLOTS"]
