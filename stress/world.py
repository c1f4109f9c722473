"""A run's world: the validated configuration, the arena built from the workload's state
declaration, its locks and views, and the tables that name things in reports.

Built in the coordinator before any worker exists; workers are forked from it and use the
same objects (same code objects too, which is what makes site ints portable)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from shm_model.arena import (H_START_NS, H_STOP, MAX_CLASSES, MAX_OPS, W_HEARTBEAT_NS, W_IN_IRQ, W_OP, W_OP_START,
                             W_PARK_ACK, W_PID, W_STATE, WAIT_WORDS, Arena, Geometry)
from shm_model.layout import LayoutError, plan_struct
from shm_model.sites import SiteResolver
from shm_model.locks import MAX_LOCKS, make_lock
from shm_model.trace import (EV_ACQUIRE, EV_ACQUIRED, EV_ALLOC, EV_CONTEND, EV_FREE, EV_IRQ_ENTER, EV_IRQ_EXIT,
                             EV_WM_COMMIT, EV_WM_LOAD, EV_WM_STORE,
                             EV_IRQ_RAISE, EV_OP_START, EV_RELEASE, EV_TRYLOCK_FAIL, EV_USER)

from .loader import Found
from .workload import Counts, OpSpec, Workload, WorkloadError


@dataclass
class RunConfig:
    """Everything that determines a run; written to config.json before workers start."""

    workload: str
    variant: str
    seed: int
    duration: float
    counts: dict[str, int]
    rates: dict[str, float] = field(default_factory=dict)
    noise: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    out: str = "stress-runs"
    trace_locks: bool = False
    hung_timeout: float = 10.0
    run_id: str = ""
    command: str = ""
    #: "free" (OS scheduling, real signals) or a controlled policy: "pct", "random"
    schedule: str = "free"
    pct_depth: int = 3
    pct_steps: int = 0  # PCT's k, steps per round (0: the scheduler's default)
    steps: int = 0  # controlled: stop after this many scheduling steps (0: no budget)
    step_ns: int = 10_000  # controlled: virtual time per scheduling step
    check_interval: float | None = None  # seconds between stop-the-world checks (None: the workload's)
    replay_of: str = ""  # the run whose recorded schedule this run replays
    #: "" (no script), "replay" (a divergence is reported, then the recorded policy goes on),
    #: "shrink" (a candidate schedule: a choice that cannot run is skipped; then "steady")
    script_mode: str = ""

    @property
    def controlled(self) -> bool:
        return self.schedule != "free"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class WorkerInfo:
    wid: int
    role: str
    index: int  # within the role
    pid: int = 0

    def label(self) -> str:
        return f"worker {self.wid} ({self.role}"  + (f", pid {self.pid})" if self.pid else ")")


@dataclass
class OpRef:
    oid: int
    role: str
    spec: OpSpec
    rate: float | None  # for the role, after --rate


class World:
    def __init__(self, found: Found, cfg: RunConfig, counts: Counts) -> None:
        cls = found.cls
        self.found = found
        self.cls = cls
        self.cfg = cfg
        self.opts = SimpleNamespace(**cfg.options)
        try:
            self.plan = plan_struct(cls.state, self.opts)
        except LayoutError as e:
            raise WorkloadError(str(e)) from None
        self.class_names: list[str] = []
        for d in self.plan.locks:
            if d.cls not in self.class_names:
                self.class_names.append(d.cls)
        if len(self.class_names) > MAX_CLASSES:
            raise WorkloadError(f"{len(self.class_names)} lock classes: at most {MAX_CLASSES} are supported")
        if len(self.plan.locks) > MAX_LOCKS:
            raise WorkloadError(f"{len(self.plan.locks)} locks: at most {MAX_LOCKS} are supported")
        self.workers: list[WorkerInfo] = []
        for role, n in counts.per_role.items():
            for i in range(n):
                self.workers.append(WorkerInfo(len(self.workers), role, i))
        self.ops: list[OpRef] = []
        for rname, role in cls.roles().items():
            for spec in role.ops():
                rate = cfg.rates.get(spec.name, spec.rate)
                self.ops.append(OpRef(len(self.ops), rname, spec, rate))
        if len(self.ops) > MAX_OPS:
            raise WorkloadError(f"{len(self.ops)} operations: at most {MAX_OPS} are supported")
        self.event_names = list(cls.events)
        self.geo = Geometry(len(self.workers), len(self.plan.locks), len(self.class_names), self.plan.words,
                            n_aux=self.plan.aux)
        self.arena: Arena | None = None
        self.locks: list[Any] = []  # Lock or RwLock (shm_model.locks.make_lock)
        self.state: Any = None
        self.heaps: list[Any] = []  # every heap view of the state (their statistics)
        self.bound: list[Any] = []  # what each worker binds to its Cpu after fork (heaps, weak memory)
        self.resolver = SiteResolver()
        self.heap_carry: dict[str, dict[str, int]] = {}  # heap counters of the boots before this one
        self.boot = 0  # which boot of the model the workers forked now run (reboot() counts them)

    # -- lifecycle ----------------------------------------------------------------------------
    def create(self) -> None:
        """Create the arena and its semaphores, build locks and state views, initialise."""
        self.arena = Arena(self.cfg.run_id, self.geo)
        self._build()

    def _build(self) -> None:
        """Lock objects (they write their records), the state's initial values, its views."""
        from shm_model.layout import AttachCtx, attach

        mv = self.arena.mv
        cid = {n: i for i, n in enumerate(self.class_names)}
        self.locks = [make_lock(d, cid[d.cls], self.arena.sems[d.index], mv, self.geo) for d in self.plan.locks]
        base = self.geo.state
        for off, val in self.plan.inits:
            mv[base + off] = val
        ctx = AttachCtx(aux=self.arena.aux)
        self.state = attach(self.plan.node, mv, base, self.locks, ctx=ctx)
        self.heaps = ctx.heaps
        self.bound = ctx.bound  # heaps and weak memory: bound to each worker's Cpu after fork
        for i, hp in enumerate(self.heaps):  # alloc/free trace events name their pool by this index
            hp.trace_id = i
        self.heap_names = [(hp.ctype, hp.path) for hp in self.heaps]  # kept past destroy, for the traces
        wm = ctx.shared.get("weak")  # relaxed fields: location word -> path, for the traces
        self.weak_names: dict[int, str] = dict(wm.names) if wm is not None else {}

    def reboot(self) -> None:
        """A new boot of the model in the same arena, after the model faulted where the hypervisor panics
        (a NULL dereference): what a machine has after a reboot is reset, what the harness
        learned is kept. The caller has stopped every worker.

        Reset: the state (heap pools and weak memory's histories included) to its initial
        values, every lock's record and semaphore, the read-hold records, the interrupt
        rings, the scheduler's region, each worker's pid/state/operation/wait records, the
        stop and start words. Kept: the lock-class graph and chain caches, the per-class and
        per-worker statistics, the traces (they go on), operation and interrupt counts, the
        heap pools' counters (carried into :meth:`heap_stats`)."""
        mv, geo, arena = self.mv, self.geo, self.arena
        for hp in self.heaps:  # the counters of the boots before, added to the new boot's
            self.heap_carry[hp.path] = _add_heap_stats(self.heap_carry.get(hp.path), hp.stats())
        for lo, hi in ((geo.state, geo.state + self.plan.words), (geo.locks, geo.classes),
                       (geo.irq_rings, geo.traces), (geo.sched, geo.state)):
            if hi > lo:
                mv[lo:hi] = memoryview(bytearray(8 * (hi - lo))).cast("q")
        for w in range(geo.n_workers):
            ws = geo.wslot(w)
            for word in (W_PID, W_STATE, W_OP_START, W_IN_IRQ, W_PARK_ACK, W_HEARTBEAT_NS, *range(27, 32)):
                mv[ws + word] = 0
            mv[ws + W_OP] = -1
            for c in (0, 1):
                b = geo.wait_slot(w, c)
                mv[b:b + WAIT_WORDS] = memoryview(bytearray(8 * WAIT_WORDS)).cast("q")
                mv[b] = -1
        for sem in [*arena.sems, *arena.aux]:
            _set_sem(sem, 1)
        for sem in arena.tokens:
            _set_sem(sem, 0)
        mv[H_START_NS] = 0
        mv[H_STOP] = 0
        self.boot += 1
        self._build()

    def heap_stats(self) -> dict[str, dict[str, int]]:
        """Each pool's counters over every boot of the run (``live``/``quarantined``: now)."""
        return {hp.path: _add_heap_stats(self.heap_carry.get(hp.path), hp.stats()) for hp in self.heaps}

    def destroy(self) -> None:
        if self.arena is not None:
            self.state = None
            self.locks = []
            self.heaps = []
            self.bound = []
            self.arena.destroy()

    @property
    def mv(self) -> memoryview:
        assert self.arena is not None
        return self.arena.mv

    # -- naming -------------------------------------------------------------------------------
    def worker_label(self, wid: int) -> str:
        if 0 <= wid < len(self.workers):
            return self.workers[wid].label()
        return "coordinator" if wid == len(self.workers) else f"worker {wid}"

    def owner_label(self, owner: int) -> str:
        """Owner ids are worker * 2 + context."""
        w, c = divmod(owner, 2)
        return self.worker_label(w) + (" [irq]" if c else "")

    def lock_path(self, index: int) -> str:
        """The lock instance's path in the state, e.g. ``ranks[0].lock``."""
        return self.plan.locks[index].path if 0 <= index < len(self.plan.locks) else f"lock#{index}"

    def class_name(self, c: int) -> str:
        """Any class id's name: declared, or a subclass made by spin_lock_nested (``A/1``)."""
        from .lockdep import class_name
        return class_name(self.mv, self.geo, self.class_names, c)

    def n_classes_now(self) -> int:
        """Classes in use now: declared ones plus subclasses made so far."""
        from shm_model.arena import H_NCLASSES
        return max(len(self.class_names), min(self.mv[H_NCLASSES], MAX_CLASSES))

    def lock_label(self, index: int) -> str:
        if 0 <= index < len(self.plan.locks):
            d = self.plan.locks[index]
            return f"{d.cls} ({d.path})" if d.cls != d.path else d.cls
        return f"lock#{index}"

    def process_state(self, w: int) -> dict:
        """What the OS says of worker ``w``'s process (psutil): status, CPU time, RSS."""
        import psutil

        try:
            p = psutil.Process(self.workers[w].pid)
            with p.oneshot():
                t = p.cpu_times()
                return {"status": p.status(), "cpu_s": round(t.user + t.system, 3),
                        "rss_mib": round(p.memory_info().rss / 2**20, 1)}
        except (psutil.Error, IndexError):
            return {"status": "gone"}

    def site(self, key: int) -> str:
        return str(self.resolver.resolve(key))

    def namer(self, kind: int, name: int, a: int, b: int, c: int) -> str:
        """Text of one trace event."""
        if kind == EV_OP_START:
            return self.ops[a].spec.name if 0 <= a < len(self.ops) else f"op#{a}"
        if kind in (EV_ACQUIRE, EV_CONTEND):
            return f"{self.lock_label(a)} at {self.site(b)}" if b else self.lock_label(a)
        if kind == EV_ACQUIRED:
            return f"{self.lock_label(a)} after {b / 1e3:.1f} us"
        if kind in (EV_ALLOC, EV_FREE):  # a heap object: its type, pool slot and generation
            names = getattr(self, "heap_names", [])
            what = (f"{names[b][0]} {names[b][1]}[{a & 0xFFFF}]" if 0 <= b < len(names)
                    else f"heap#{b}[{a & 0xFFFF}]")
            return f"{what} gen {a >> 16} (handle {a:#x})"
        if kind in (EV_RELEASE, EV_TRYLOCK_FAIL):
            return self.lock_label(a)
        if kind in (EV_WM_STORE, EV_WM_COMMIT, EV_WM_LOAD):  # weak memory: a relaxed location
            loc = getattr(self, "weak_names", {}).get(a, f"word {a}")
            if kind == EV_WM_STORE:
                return f"{loc} = {b} (buffered)"
            if kind == EV_WM_COMMIT:
                return f"{loc} = {b} visible (ts {c})"
            return f"{loc} -> {b} (ts {c}" + (f"; {name} newer passed over)" if name else ")")
        if kind in (EV_IRQ_ENTER, EV_IRQ_EXIT):
            return f"irq {a}"
        if kind == EV_IRQ_RAISE:
            return f"irq {a} -> cpu {b}"
        if kind == EV_USER:
            if 0 <= name < len(self.event_names):
                ev = self.event_names[name]
                try:
                    return f"{ev}: " + self.cls.events[ev].format(a=a, b=b, c=c)
                except (KeyError, IndexError, ValueError):
                    return f"{ev}: {a} {b} {c}"
            return f"event#{name} {a} {b} {c}"
        return f"{a} {b} {c}"


def boot_seed(seed: int, boot: int) -> int:
    """The seed of a run's boot ``boot`` (boot 0 is the run's own seed): a run with this seed
    starts where that boot started."""
    if boot == 0:
        return seed
    h = hashlib.sha256(f"stress-boot/{seed}/{boot}".encode()).digest()
    return int.from_bytes(h[:8], "big") % (2**31 - 1) + 1


def _add_heap_stats(before: dict[str, int] | None, now: dict[str, int]) -> dict[str, int]:
    if not before:
        return dict(now)
    out = {k: before.get(k, 0) + v for k, v in now.items()}
    for k in ("live", "quarantined"):  # a state, not a count: the current boot's
        if k in now:
            out[k] = now[k]
    if "max_live" in now:
        out["max_live"] = max(before.get("max_live", 0), now["max_live"])
    return out


def _set_sem(sem: Any, value: int) -> None:
    """Bring a semaphore nobody uses any more to ``value``."""
    import posix_ipc

    while True:
        try:
            sem.acquire(0)
        except posix_ipc.BusyError:
            break
    for _ in range(value):
        sem.release()


def make_workload_instance(cls: type[Workload], variant: str, opts: SimpleNamespace) -> Workload:
    w = cls()
    w.variant = variant
    w.opts = opts
    return w
