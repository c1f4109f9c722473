"""The CPU a worker process runs on: its interrupt state, contexts, held locks and trace.

One :class:`Cpu` exists per worker process (a physical CPU of the model). It owns:

- the **soft interrupt mask** (``masked``): physical interrupts are real signals
  (``IRQ_SIGNAL``) whose handler runs the model's ISR at once when interrupts are enabled
  and only records them as pending when masked; ``local_irq_restore`` replays pending
  ones. A flag in the C base class costs ~35 ns a save/restore pair against 1.5-4 us for
  ``pthread_sigmask`` (FACTS.md). The lock fast path is C and runs no bytecode, so a
  signal's handler cannot run inside it; its calls back into Python run masked, so an
  ISR never sees a half-recorded lock;
- two **contexts**, task (0) and interrupt (1), each with its own held-lock stack and
  waiting record, so the wait-for graph stays right when an ISR blocks on a lock its own
  task holds (a one-worker cycle). As in Linux hardirq context, an ISR runs with
  interrupts masked: interrupts do not nest;
- the interrupt **rings**: a sender writes the IRQ number to its (sender, target) ring in
  the arena and then signals the target; signals coalesce, rings do not, and raised and
  handled interrupts are counted in shm;
- its **trace ring** and per-worker **chain cache** (lockdep's held-class sequences);
- in controlled mode, its **scheduler** (``sched``, plugged in by the engine): every lock
  operation, ``raise_irq``, ``yield_point`` and ``delay`` is a scheduling point where the
  run token may pass to another worker. An interrupt is then no signal: the sender writes
  the ring and the scheduler delivers it at a scheduling point of the target that it
  chooses, with the target's interrupts enabled; time is the scheduler's virtual clock
  (:meth:`clock_ns`), so a run depends only on its seed and configuration.

Locking rules: the Cpu takes no lock itself; every mutation of its held stacks happens with
``masked`` set. Interrupt handlers never raise into the interrupted code (an exception in
an ISR is reported as a finding: a signal handler's exception is lost inside a blocked
``sem_wait``, FACTS.md).
"""

from __future__ import annotations

import os
import random
import signal
import time
import traceback
from typing import Any, Callable, Protocol

from . import sites
try:
    from ._fastlock import CpuCore
except ImportError as e:  # a source tree used without installing it
    raise ImportError("shm_model's C fast path (shm_model/_fastlock.c) is not built: run `pip install -e .` in "
                      "the repository (it needs gcc and the Python headers)") from e
from .arena import H_STOP, IRQ_RING, W_FINDINGS, W_IN_IRQ, W_IRQS, W_IRQS_DEFERRED, Geometry
from .trace import EV_IRQ_ENTER, EV_IRQ_EXIT, EV_IRQ_RAISE, EV_USER

IRQ_SIGNAL = signal.SIGUSR1
TASK, IRQ = 0, 1

sites.internal(__file__)


class Stop(BaseException):
    """Raised inside a worker when the coordinator asks every worker to stop (even one
    blocked in a lock wait, e.g. a member of a deadlock)."""


class Panic(BaseException):
    """A model fault where Xen would panic (a NULL dereference in the heap, reported as a
    finding first, with ``panic`` in its details). It ends the current operation (raised in
    an ISR, the interrupted one too); the engine releases what the operation held and ends
    this boot of the model: it reboots the model on a fresh state if the run goes on."""


class Hooks(Protocol):
    """What the engine plugs into a Cpu (shm_model knows nothing more of the engine)."""

    def new_chain(self, cpu: "Cpu", lock: Any, key: int, held: list, irqs_on: bool, trylock: bool) -> int:
        """Validate a held-class sequence not seen before by this worker; return its site."""

    def finding(self, cpu: "Cpu", outcome: str, title: str, details: dict) -> None:
        """Record a finding raised inside the model (assertion, bad unlock, ISR crash)."""

    def irqs_enabled_holding(self, cpu: "Cpu") -> None:
        """Interrupts are being enabled while task-context locks are held."""


class Sched(Protocol):
    """Controlled mode's scheduler, as a Cpu sees it (the engine implements it)."""

    def point(self, cpu: "Cpu", irqs_on: bool) -> None:
        """A scheduling point: the run token may pass to another worker, or this CPU's
        pending interrupts may be delivered here (only if ``irqs_on``)."""

    def block(self, cpu: "Cpu", lock_index: int, irqs_on: bool) -> None:
        """This CPU waits for lock ``lock_index`` (its wait record is published): return
        when it is chosen again, the lock free or an interrupt taken meanwhile."""

    def sleep_until(self, cpu: "Cpu", t_ns: int, irqs_on: bool) -> None:
        """Not runnable until the virtual clock reaches ``t_ns``."""

    def clock_ns(self) -> int:
        """The virtual clock."""


class Cpu(CpuCore):
    """Execution context of one worker process. The state the lock fast path reads
    (``masked``, ``irq_pending``, ``ctx``, ``held``, ``chains``, ``hooks``, ``noise``,
    ``trace_locks``) lives in the C base class, as do ``local_irq_save``/``restore``/
    ``disable``/``enable``, ``trace`` and ``now``: an interrupt's handler never runs inside
    them (they run no bytecode), which is what the soft mask gave the Python bookkeeping."""

    __slots__ = ("mv", "geo", "wid", "ws", "oid", "isr", "rng", "_rings_in", "_pids", "user_events", "_stop_i",
                 "stats_base")

    def __init__(self, mv: memoryview, geo: Geometry, wid: int, hooks: Hooks, *, seed: int = 0,
                 noise: float = 0.0, trace_locks: bool = False) -> None:
        self._attach(mv, wid, geo.trace(wid), geo.trace_events)
        self.mv = mv
        self.geo = geo
        self.wid = wid
        self.ws = geo.wslot(wid)
        self.ctx = TASK
        self.masked = False
        self.irq_pending = False
        self.held = ([], [])
        self.oid = (wid * 2, wid * 2 + 1)  # owner ids of the task and irq contexts
        self.chains = {}
        self.hooks = hooks
        self.isr: Callable[[int], None] | None = None
        self.noise = noise
        self.rng = random.Random(seed)
        self.trace_locks = trace_locks
        self._rings_in = [geo.ring(s, wid) for s in range(geo.n_workers + 1)]
        self._pids: list[int] = []
        self.user_events: dict[str, int] = {}
        self._stop_i = H_STOP
        self.stats_base = geo.sslot(wid, 0)

    def in_irq(self) -> bool:
        return self.ctx == IRQ

    # -- interrupts -------------------------------------------------------------------------
    def install_irq_handler(self) -> None:
        """Route ``IRQ_SIGNAL`` to this CPU, before anyone may send one (the default action
        of SIGUSR1 kills). Interrupted system calls are *not* restarted: a blocked lock wait
        must take interrupts (FACTS.md: never ``siginterrupt(sig, False)``)."""
        signal.signal(IRQ_SIGNAL, self._on_signal)
        signal.siginterrupt(IRQ_SIGNAL, True)

    def set_peers(self, pids: list[int]) -> None:
        """Worker id -> process id, for :meth:`raise_irq`."""
        self._pids = pids

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.masked:
            self.irq_pending = True
            self.mv[self.ws + W_IRQS_DEFERRED] += 1
            return
        self.run_irqs()

    def irqs_waiting(self) -> bool:
        mv = self.mv
        for r in self._rings_in:
            if mv[r] != mv[r + 1]:
                return True
        return False

    def run_irqs(self) -> None:
        """Handle every interrupt in this CPU's rings, in interrupt context, masked."""
        mv = self.mv
        while True:
            self.irq_pending = False
            if self.ctx == IRQ or self.isr is None:
                return
            self.masked = True
            self.ctx = IRQ
            mv[self.ws + W_IN_IRQ] = 1
            stopping = False
            try:
                for r in self._rings_in:
                    while mv[r + 1] != mv[r]:
                        tail = mv[r + 1]
                        irq = mv[r + 2 + tail % IRQ_RING]
                        mv[r + 1] = tail + 1
                        self._handle(irq)
            except (Stop, Panic):
                stopping = True  # the run ends under the ISR (e.g. in a lock wait), or it faulted: it did not return
                raise
            finally:
                held = self.held[IRQ]
                if held:
                    if not stopping:
                        self.hooks.finding(self, "invariant:irq-returned-with-locks",
                                           "BUG: ISR returned with locks held", {"locks": [lk.path for lk, _ in held]})
                    for lk, _ in reversed(held):
                        lk._force_release()
                    held.clear()
                mv[self.ws + W_IN_IRQ] = 0
                self.ctx = TASK
                self.masked = False
            if not self.irq_pending:
                return

    def _handle(self, irq: int) -> None:
        self.trace(EV_IRQ_ENTER, 0, irq)
        self.mv[self.ws + W_IRQS] += 1
        try:
            self.isr(irq)  # type: ignore[misc]
        except Stop:
            raise
        except Exception as e:  # an ISR bug: a finding, never a lost exception
            self.hooks.finding(self, "crash", f"BUG: exception in interrupt handler: {type(e).__name__}: {e}",
                               {"traceback": traceback.format_exc(), "irq": irq})
        self.trace(EV_IRQ_EXIT, 0, irq)

    def raise_irq(self, target: int, irq: int) -> bool:
        """Raise physical interrupt ``irq`` on CPU ``target``: ring entry, then a signal.
        Returns False when the ring is full (counted as dropped by the reader)."""
        mv = self.mv
        r = self.geo.ring(self.wid, target)
        # the ring's head is this CPU's alone, written by its task and its ISR alike: masked,
        # so an ISR that raises to the same target cannot interleave with the task's write
        # (FACTS.md: the soft mask, not pthread_sigmask)
        m = self.masked
        self.masked = True
        try:
            head = mv[r]
            if head - mv[r + 1] >= IRQ_RING:
                return False
            mv[r + 2 + head % IRQ_RING] = irq
            mv[r] = head + 1
            self.trace(EV_IRQ_RAISE, 0, irq, target)
        finally:
            self.masked = m
        if not m and self.irq_pending:
            self.run_irqs()
        sched = self.sched
        if sched is not None:  # no signal: the scheduler delivers it at a point of the target's
            sched.point(self, not self.masked)
            return True
        try:
            os.kill(self._pids[target], IRQ_SIGNAL)
        except ProcessLookupError:
            pass
        return True

    # -- stop, noise ------------------------------------------------------------------------
    def check_stop(self) -> None:
        if self.mv[self._stop_i]:
            raise Stop()

    # -- time and scheduling points ---------------------------------------------------------
    def clock_ns(self) -> int:
        """The model's clock: CLOCK_MONOTONIC in free mode, the scheduler's virtual clock in
        controlled mode. Model code that measures time (a guest handler's run time, a
        timeout) reads this, never ``time`` directly, so a controlled run replays exactly."""
        sched = self.sched
        return time.monotonic_ns() if sched is None else sched.clock_ns()

    def delay(self, seconds: float, spin: bool = False) -> None:
        """Let ``seconds`` pass on this CPU (Xen's ``udelay`` with ``spin``, else a sleep).
        Free mode: a busy wait or a real sleep, interrupts taken as they come. Controlled
        mode: the virtual clock must advance that far before this CPU runs on; others run
        meanwhile and interrupts may be delivered (if enabled)."""
        self.quiesce()
        sched = self.sched
        if sched is not None:
            sched.sleep_until(self, sched.clock_ns() + int(seconds * 1e9), not self.masked)
        elif spin:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(seconds)

    def quiesce(self) -> None:
        """This CPU goes idle or blocks: with weak memory (relaxed fields), its deferred loads
        are performed and its store buffer drains (shm_model.weak)."""
        wm = self.wm
        if wm is not None:
            wm.quiesce()

    def yield_point(self) -> None:
        """An explicit scheduling point (controlled mode); nothing in free mode. Place one
        between a read of shared state and the action that depends on it."""
        sched = self.sched
        if sched is not None:
            sched.point(self, not self.masked)

    def jitter(self) -> None:
        """Seeded scheduling noise at a lock operation: widen race windows."""
        r = self.rng.random()
        if r < self.noise:
            if r < self.noise * 0.7:
                os.sched_yield()
            else:
                time.sleep(self.rng.random() * 50e-6)

    # -- trace (``trace`` itself is the C base class's) -----------------------------------
    def event(self, name: str, a: int = 0, b: int = 0, c: int = 0) -> None:
        """A model event for the trace, e.g. ``cpu.event("migrate", irq, old, new)``."""
        nid = self.user_events.get(name)
        if nid is None:
            raise KeyError(f"trace event {name!r} is not declared by the workload")
        self.trace(EV_USER, nid, a, b, c)

    # -- findings ---------------------------------------------------------------------------
    def finding(self, outcome: str, title: str, **details: Any) -> None:
        self.mv[self.ws + W_FINDINGS] += 1
        self.hooks.finding(self, outcome, title, details)

    def held_locks(self) -> list:
        return [lk for ctx_held in self.held for lk, _ in ctx_held]
