"""A worker process: one CPU of the model running one role's operations.

Forked from the coordinator (``multiprocess``, fork context) after the arena exists. It
binds the locks to its :class:`Cpu`, installs the interrupt handler, waits for the start
signal, then runs operations (weighted mix, paced ones at their rates) until asked to
stop. Between operations it is at a *safe point*: no lock held, task context; it parks
there when the coordinator stops the world to check invariants.

In controlled mode (``--schedule pct|random``) the worker joins the scheduler after its
setup (:mod:`stress.schedule`): it runs only while it holds the run token, every operation
boundary is a scheduling point, paced operations follow the virtual clock, and the
invariants are checked by the scheduler at drained safe points instead of a park. All
workers are pinned to one CPU: only one runs at a time, and a hand-over between two
processes on one CPU costs a few microseconds against tens across CPUs (FACTS.md).
"""

from __future__ import annotations

import bisect
import ctypes
import os
import random
import signal
import time
import traceback
from typing import Any

from shm_model.arena import (H_EXPECT_SEEN, H_PARK, H_START_NS, H_STOP, MAX_OPS, SC_CHECKS, SC_STEP, STOP_PANIC, W_OP,
                             W_OP_START, W_OPS,
                             W_PARK_ACK, W_PID, W_STATE, WS_EXITED, WS_FAILED, WS_PARKED, WS_RUNNING)
from shm_model import sites
from shm_model.cpu import Cpu, Panic, Stop
from shm_model.trace import EV_OP_START

from .evidence import snapshot_traces
from .findings import Finding, now_ns, write_finding
from .invariants import check as check_invariants
from .lockdep import Lockdep
from .schedule import DONE_FINDING, Controlled
from .world import World

DRAINED = "checked with every worker between operations (the controlled scheduler's safe point)"

PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29

sites.internal(__file__)  # the hooks below run inside lock operations: sites are their callers'


class WorkerHooks:
    """What the engine plugs into this worker's Cpu: lockdep and the finding writer."""

    def __init__(self, world: World, wid: int, findings_dir: str) -> None:
        self.world = world
        self.wid = wid
        self.dir = findings_dir
        self.count = 0
        self._reported: set[str] = set()  # a finding repeats at its site: write its evidence once
        self.lockdep = Lockdep(world, self.write)
        self.sched: Controlled | None = None
        self.cpu: Cpu | None = None  # this worker's Cpu, once made
        variant = world.cls.variant_named(world.cfg.variant)
        self.known = variant.known
        # Variant(stop="all"): an expected finding ends a controlled run only once every
        # expected outcome has been seen (the arena keeps which, for every worker)
        self.expected = list(variant.outcomes) if getattr(variant, "stop", "first") == "all" else []

    def new_chain(self, cpu: Cpu, lock: Any, key: int, held: list, irqs_on: bool, trylock: bool) -> int:
        return self.lockdep.new_chain(cpu, lock, key, held, irqs_on, trylock)

    def irqs_enabled_holding(self, cpu: Cpu) -> None:
        self.lockdep.irqs_enabled_holding(cpu)

    def finding(self, cpu: Cpu, outcome: str, title: str, details: dict) -> None:
        d = dict(details)
        for k in ("site",):
            if isinstance(d.get(k), int):
                d[k] = self.world.site(d[k])
        if isinstance(d.get("stack"), list):
            d["stack"] = [self.world.site(s) for s in d["stack"]]
        d.setdefault("owner_of_report", cpu.oid[cpu.ctx])
        op = self.world.mv[cpu.ws + W_OP]
        d.setdefault("op", self.world.ops[op].spec.name if 0 <= op < len(self.world.ops) else None)
        sig = f"{outcome}:{d.get('lock', '')}:{d.get('type', '')}:{d.get('site', '')}"
        if "location" in d:  # a weak-memory finding: one per function and location read stale
            sig += f":{d.get('function', '')}:{d['location']}"
        if sig in self._reported:
            return
        self._reported.add(sig)
        self.write(Finding(outcome, title, self.wid, d, t_ns=now_ns(), signature=sig))

    def write(self, f: Finding) -> None:
        """Attach every worker's last trace events and write the finding file. In
        controlled mode a finding that ends the run ends it at this very step, so that a
        replay stops where the recorded run stopped."""
        sched = self.sched
        if sched is not None:
            f.details.setdefault("step", self.world.mv[self.world.geo.sched + SC_STEP])
        try:
            f.traces = snapshot_traces(self.world)
        except Exception as e:  # evidence is best effort; the finding itself is not
            f.traces = {"error": [{"text": f"trace snapshot failed: {e}"}]}
        self.count += 1
        boot = self.world.boot  # workers of a later boot number their files afresh: keep them apart
        write_finding(self.dir, f"w{self.wid}-{self.count}" if not boot else f"b{boot}-w{self.wid}-{self.count}", f)
        if sched is not None and not f.info and not f.potential and f.outcome not in self.known:
            if f.outcome in self.expected:
                mv = self.world.mv
                mv[H_EXPECT_SEEN] |= 1 << self.expected.index(f.outcome)
                if mv[H_EXPECT_SEEN] != (1 << len(self.expected)) - 1:
                    return  # another expected outcome is still to be found: the run goes on
            sched.finish(DONE_FINDING)

    def check_invariants(self) -> None:
        """The controlled scheduler's stop-the-world check, run by this worker. The check is
        not the model: what it reads (a heap dereference, a lock) is no scheduling point,
        so the token stays here until it is done."""
        world = self.world
        if world.mv[H_STOP]:
            return  # the run or this boot is over (a fault where the hypervisor panics): its state is not checked
        n = world.mv[world.geo.sched + SC_CHECKS]
        cpu = self.cpu
        sched = cpu.sched if cpu is not None else None
        if cpu is not None:
            cpu.sched = None
        try:
            found = check_invariants(world, world.cls.invariants(), n, DRAINED)
        finally:
            if cpu is not None:
                cpu.sched = sched
        for f in found:
            if f.signature not in self._reported:
                self._reported.add(f.signature)
                self.write(f)


def _prepare_process() -> None:
    """Die with the coordinator; and set a 1 ns timer slack, so that the noise's short sleeps
    (0-50 us) last about what they ask for instead of the default 50 us slack more
    (measured: a 25 us sleep took 94 us by default, 41 us with this)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_TIMERSLACK, 1)
    except (OSError, AttributeError):
        pass


def _pin_one_cpu() -> None:
    """Controlled mode: every worker of the run on one CPU (one runs at a time), chosen by
    the coordinator's pid so that two controlled runs on one host use different CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[os.getppid() % len(cpus)]})
    except (OSError, AttributeError, IndexError):
        pass


def worker_main(world: World, wid: int, findings_dir: str) -> None:
    """Entry point of a forked worker process."""
    _prepare_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    mv = world.mv
    geo = world.geo
    cfg = world.cfg
    ws = geo.wslot(wid)
    info = world.workers[wid]
    hooks = WorkerHooks(world, wid, findings_dir)
    controlled = cfg.controlled
    cpu = Cpu(mv, geo, wid, hooks, seed=cfg.seed * 1_000_003 + wid, noise=0.0 if controlled else cfg.noise,
              trace_locks=cfg.trace_locks or controlled)  # controlled: the scheduler is the noise
    hooks.cpu = cpu
    sched = None
    if controlled:
        _pin_one_cpu()
        sched = hooks.sched = Controlled(world, wid, on_check=hooks.check_invariants)
    cpu.user_events = {n: i for i, n in enumerate(world.event_names)}
    for lk in world.locks:
        lk.bind(cpu)
    for b in world.bound:  # heap views, weak memory: this CPU, and the resolver for the sites they report
        b.bind(cpu, world.site)
    role_cls = world.cls.roles()[info.role]
    role = role_cls()
    role.workload = world.workload
    role.cpu = cpu
    role.index = info.index
    role.wid = wid
    role.random = random.Random(cfg.seed * 7_919 + wid)
    role.variant = cfg.variant
    role.peers = {}
    for w in world.workers:
        role.peers.setdefault(w.role, []).append(w.wid)
    role.options = world.opts
    state = world.state
    isr = role_cls.isr_fn()
    if isr is not None:
        cpu.isr = lambda irq: isr(role, state, irq)
    status = 0
    flags = cpu.local_irq_save()  # interrupts wait until the run starts
    cpu.install_irq_handler()
    mv[ws + W_PID] = os.getpid()  # ready: others may signal us from now on
    try:
        while not mv[H_START_NS]:
            if mv[H_STOP]:
                raise Stop()
            time.sleep(0.0005)
        cpu.set_peers([mv[geo.wslot(w) + W_PID] for w in range(geo.n_workers)])
        role.setup(state)  # before interrupts: the ISR may use what setup builds
        mv[ws + W_STATE] = WS_RUNNING
        cpu.local_irq_restore(flags)
        if sched is not None:
            cpu.sched = sched
            sched.enter(cpu)
        _loop(world, wid, cpu, role, state, sched)
    except Stop:
        pass
    except Panic:  # a model fault outside an operation (setup): its finding is written
        _panic(mv)
    except Exception as e:
        status = 1
        hooks.finding(cpu, "crash", f"BUG: exception in {info.role}: {type(e).__name__}: {e}",
                      {"traceback": traceback.format_exc()})
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if sched is not None:
            cpu.sched = None
            try:
                sched.leave()
            except Stop:
                pass
        mv[ws + W_STATE] = WS_FAILED if status else WS_EXITED
    os._exit(status)


def _loop(world: World, wid: int, cpu: Cpu, role: Any, state: Any, sched: Controlled | None = None) -> None:
    mv = world.mv
    geo = world.geo
    ws = geo.wslot(wid)
    n_role = world.cfg.counts[world.workers[wid].role]
    mine = [o for o in world.ops if o.role == world.workers[wid].role]
    mixed = [o for o in mine if o.rate is None and o.spec.weight > 0]
    paced = [o for o in mine if o.rate is not None]
    cum = []
    total = 0.0
    for o in mixed:
        total += o.spec.weight
        cum.append(total)
    fns = [o.spec.fn for o in mixed]
    oids = [o.oid for o in mixed]
    intervals = [n_role / o.rate for o in paced]
    if sched is not None:  # the scheduler's virtual clock
        def mono() -> float:
            return cpu.clock_ns() / 1e9
    else:
        mono = time.monotonic
    due = [mono() + role.random.random() * iv for iv in intervals]
    ops_base = geo.ops + wid * MAX_OPS
    rnd = role.random.random
    trace = cpu.trace
    mono_ns = time.monotonic_ns
    parked_seq = 0
    quiesce = cpu.wm.quiesce if cpu.wm is not None else None  # relaxed fields only
    while True:
        if mv[H_STOP]:
            return
        if sched is not None:
            sched.boundary(cpu)  # a scheduling point; the scheduler's checks happen at these
        else:
            park = mv[H_PARK]
            if park & 1 and park != parked_seq:
                parked_seq = park
                _park(mv, ws, cpu, park)
                continue
        fn = None
        if paced:
            now = mono()
            i = min(range(len(due)), key=due.__getitem__)
            if due[i] <= now:
                o = paced[i]
                fn, oid = o.spec.fn, o.oid
                due[i] = max(due[i] + intervals[i], now - intervals[i])
            elif not mixed:
                if sched is not None:
                    sched.sleep_until(cpu, int(due[i] * 1e9) + 1, True)
                else:
                    time.sleep(min(due[i] - now, 0.005))
                continue
        if fn is None:
            if len(fns) == 1:
                fn, oid = fns[0], oids[0]
            else:
                j = bisect.bisect_right(cum, rnd() * total)
                j = min(j, len(fns) - 1)
                fn, oid = fns[j], oids[j]
        mv[ws + W_OP_START] = mono_ns()  # before the op: the watchdog reads W_OP, then its start
        mv[ws + W_OP] = oid
        trace(EV_OP_START, 0, oid)
        if sched is not None:
            sched.begin_op()
        try:
            fn(role, state)
        except Panic:
            _recover(cpu)  # the operation faulted (its finding is written)
            _panic(mv)  # the hypervisor panics there: this boot is over (the loop's next turn leaves)
        if quiesce is not None:
            quiesce()  # the operation's buffered effects become visible (weak memory)
        mv[ws + W_OP] = -1
        mv[ops_base + oid] += 1
        mv[ws + W_OPS] += 1


def _panic(mv: memoryview) -> None:
    """End this boot of the model: every worker leaves, and the coordinator reboots the model
    or ends the run (stress.coordinator)."""
    if not mv[H_STOP]:
        mv[H_STOP] = STOP_PANIC


def _recover(cpu: Cpu) -> None:
    """After a model fault (``Panic``: a NULL dereference) aborted an operation: release what
    the operation held, innermost first, each by its kind's unlock, and enable interrupts.
    the hypervisor panics there: the worker then ends this boot of the model (``_panic``), and the
    coordinator reboots it on a fresh state if the run goes on."""
    cpu.masked = True
    for lk, key in reversed(list(cpu.held[0])):
        lk.release_held(key)
    cpu.local_irq_restore(False)


def _park(mv: memoryview, ws: int, cpu: Cpu, seq: int) -> None:
    """Stop at this safe point until the coordinator's check is done (interrupts masked:
    an ISR must not change the state under the check; they run on resume)."""
    flags = cpu.local_irq_save()
    mv[ws + W_STATE] = WS_PARKED
    mv[ws + W_PARK_ACK] = seq
    while mv[H_PARK] == seq and not mv[H_STOP]:
        time.sleep(0.0002)
    mv[ws + W_STATE] = WS_RUNNING
    cpu.local_irq_restore(flags)
