"""Controlled scheduling: real worker processes, one running at a time, a seeded scheduler
choosing who runs next at every scheduling point, every choice recorded for exact replay.

Why: a seed fixes a workload's choices, not the OS's interleavings, so a free run finds a
race that needs a preemption in a short window by luck, and cannot repeat it. Here the
workers stay separate processes over the same arena, but exactly one holds the *run token*
(a POSIX semaphore per worker in the arena); at each scheduling point the holder runs the
scheduler itself (its state is in the arena: no coordinator round trip) and, if another
worker is chosen, posts that worker's token and waits on its own.

Scheduling points (declared by the primitives, so free and controlled runs see the same
protocol): every lock acquisition (at the API call, before ``_irqsave`` masks interrupts),
trylock and release (after the release and the interrupt restore), ``raise_irq``,
``Cpu.yield_point()``, ``Cpu.delay()``, and every operation boundary.

Threads: the scheduler chooses among *threads*, two per worker: the worker's running context
(choice ``2w``: its task, or its ISR when one is running) and its interrupt line (choice
``2w + 1``: deliver the worker's pending interrupts now, at its current scheduling point).
A context is enabled unless it waits for a lock that is held, or sleeps until a virtual
time not yet reached; an interrupt thread is enabled while the
worker has interrupts pending in its rings, has interrupts enabled at its scheduling point
and is not already in its ISR. No enabled thread and someone blocked is a deadlock: the
state is frozen by construction, so the coordinator reports the wait-for cycle at once.

Time is virtual: each step advances the clock by ``step_ns``; when every live thread
sleeps, the clock jumps to the earliest wake-up. Paced operations, ``Cpu.delay`` and
``Cpu.clock_ns`` read it, so a run depends only on its seed and configuration.

Invariant checks: every ``check_interval`` of virtual time (by default the workload's, but at
least every :data:`CHECK_STEPS` steps) the scheduler *drains*: it runs
only workers that are inside an operation until every worker is between operations, and
the worker that completes the drain checks the invariants there (a safe point, as the free
mode's park). A drain that cannot complete (those inside wait on each other) is skipped
and counted.

Policies:

- ``random``: a uniformly random enabled thread at each step (Shuttle's RandomScheduler);
- ``pct`` (Burckhardt et al., ASPLOS 2010): distinct random priorities, ``d - 1`` change
  points drawn over ``k`` steps; the highest-priority enabled thread runs; at change point
  ``i`` the running thread's priority drops to ``i``, below every initial one. A workload
  runs forever, so a run is a sequence of *rounds* of ``k`` steps, each with fresh
  priorities and change points, from the state the previous round left: each round finds a
  given bug of depth ``d`` (reachable within ``k`` steps of the round's start) with
  probability at least ``1 / (n * k ** (d - 1))``, ``n`` the number of threads;
- ``replay``: the recorded choices, in order; a recorded choice that is not enabled when
  its turn comes is a divergence (the workload is not deterministic under its seed): it is
  noted (step, wanted choice) and the run continues under the fallback policy (the
  recorded run's own, or ``steady`` when shrinking: keep running the current thread).

Recording: every choice is appended to a run-length encoded log in the arena
(``choice | count << 8`` per entry), saved as ``schedule.bin`` in the run directory and in
the store.

Locking rules: the scheduler takes no model lock; its state is written only by the token
holder (one process at a time), and the token semaphores are its only synchronisation.
"""

from __future__ import annotations

import array
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import posix_ipc

from shm_model import sites
from shm_model.arena import (AT_BOUNDARY, AT_MIDOP, H_STOP, L_OWNER, LSLOT, NO_OWNER, SC_CHANGE, SC_CHECK_NS,
                             SC_CHECKS, SC_CHECKS_SKIPPED, SC_CUR, SC_DELIVER, SC_DEPTH, SC_DIVERGE_WANT,
                             SC_DIVERGED, SC_DONE, SC_DRAIN, SC_FALLBACK, SC_IRQS, SC_K, SC_LOG, SC_LOG_LOST,
                             SC_LENIENT, SC_LOG_N, SC_MAX_STEPS, SC_MISSES, SC_MODE, SC_NEXT_CHECK, SC_POLICY, SC_PREEMPT, SC_PRIO,
                             SC_RNG, SC_ROUND, SC_ROUND_AT, SC_SCRIPT, SC_SCRIPT_N, SC_SCRIPT_POS, SC_SCRIPT_USED,
                             SC_STEP, SC_STEP_NS, SC_STUCK, SC_SWITCHES, SC_VCLOCK, SCHED_GONE, SCHED_IN,
                             SCHED_LOG_CAP, W_IN_IRQ, W_SCHED_AT, W_SCHED_HAS_ISR, W_SCHED_IRQOK, W_SCHED_STATE,
                             W_SCHED_WAKE, MAX_DEPTH, WAIT_WORDS)
from shm_model.records import SPIN, WAIT_MODE, can_go, waits_for, WaitRecord
from shm_model.cpu import Cpu, Stop

sites.internal(__file__)  # scheduling points run inside lock operations: sites are their callers'

SCHEDULES = ("free", "pct", "random")
POLICY_IDS = {"random": 1, "pct": 2, "steady": 3}
DONE_STEPS, DONE_FINDING = 1, 2  # SC_DONE: the step budget was spent / a finding ended the run

DEFAULT_DEPTH = 3
DEFAULT_STEP_NS = 10_000  # virtual time per step (see the README: paced rates are per virtual second)
DEFAULT_K = 64  # steps per PCT round when nothing was learned yet
ROUND_OPS = 4  # a learned round lets every worker run about this many operations
#: the scheduler checks invariants at least every this many steps: a drain costs a few steps and
#: the check runs in the worker that completes it (no park, no round trip), while a violated
#: state may last only until the next operation on it. Measured on migration-storm's
#: unlocked-target-read under PCT: checking every 2,000 steps (its 20 ms) needed a median of
#: ~300 k steps to detection, every 200 steps 29 k.
CHECK_STEPS = 200
TOKEN_SLICE_S = 0.05  # a worker waiting for the token looks at the stop flag this often

_M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    return x - (1 << 64) if x >> 63 else x


@dataclass
class SchedConfig:
    """What the coordinator writes into the scheduler region before the workers start."""

    policy: str  # "pct" or "random"
    seed: int
    depth: int = DEFAULT_DEPTH
    k: int = DEFAULT_K
    step_ns: int = DEFAULT_STEP_NS
    check_ns: int = 0  # virtual time between invariant checks (0: none)
    max_steps: int = 0  # stop after this many steps (0: no budget)
    script: list[int] = field(default_factory=list)  # RLE entries to replay first
    fallback: str = ""  # policy after the script: "" = ``policy``, or "steady"
    lenient: bool = False  # shrinking: a scripted choice that cannot run is skipped, not a divergence


def configure(mv: Any, geo: Any, cfg: SchedConfig) -> None:
    """Write the scheduler's configuration into a fresh arena (coordinator, before fork)."""
    s = geo.sched
    if not 2 <= cfg.depth <= MAX_DEPTH:
        raise ValueError(f"PCT depth must be 2..{MAX_DEPTH}")
    if len(cfg.script) > SCHED_LOG_CAP:
        raise ValueError(f"a schedule of {len(cfg.script)} entries is longer than {SCHED_LOG_CAP}")
    mv[s + SC_MODE] = 1
    mv[s + SC_POLICY] = POLICY_IDS[cfg.policy]
    mv[s + SC_FALLBACK] = POLICY_IDS[cfg.fallback or cfg.policy]
    mv[s + SC_CUR] = -1
    mv[s + SC_RNG] = _signed((cfg.seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _M64)
    mv[s + SC_DEPTH] = cfg.depth
    mv[s + SC_K] = max(1, cfg.k)
    mv[s + SC_STEP_NS] = max(1, cfg.step_ns)
    mv[s + SC_CHECK_NS] = cfg.check_ns
    mv[s + SC_NEXT_CHECK] = cfg.check_ns
    mv[s + SC_MAX_STEPS] = cfg.max_steps
    for i, e in enumerate(cfg.script):
        mv[s + SC_SCRIPT + i] = e
    mv[s + SC_SCRIPT_N] = len(cfg.script)
    mv[s + SC_LENIENT] = int(cfg.lenient)



class Controlled:
    """The scheduler as one process runs it: a worker at its scheduling points (``wid`` >= 0,
    with its Cpu's ``sched`` set to this), or the coordinator (``wid`` = -1) handing out the
    first token and the token of a worker that died holding it.

    ``on_check`` (workers) runs the workload's invariants at a drained safe point;
    ``on_done`` is told when this process ends the run (a step budget spent)."""

    def __init__(self, world: Any, wid: int, on_check: Callable[[], None] | None = None) -> None:
        self.mv = world.mv
        geo = world.geo
        self.s = geo.sched
        self.n = geo.n_workers
        self.wid = wid
        self.tokens: list[posix_ipc.Semaphore] = world.arena.tokens
        self.wss = [geo.wslot(w) for w in range(self.n)]
        self.ws = self.wss[wid] if wid >= 0 else -1
        self.owner_of = geo.locks + L_OWNER  # + lock * LSLOT
        self.on_check = on_check
        # per worker, the words the options read: (state, at, in_irq, wait, wake, irqok, has_isr, rings)
        self.geo = geo
        self._slots = [(ws + W_SCHED_STATE, ws + W_SCHED_AT, ws + W_IN_IRQ, geo.wait_slot(w, 0), ws + W_SCHED_WAKE,
                        ws + W_SCHED_IRQOK, ws + W_SCHED_HAS_ISR,
                        tuple(geo.ring(src, w) for src in range(self.n + 1)))
                       for w, ws in enumerate(self.wss)]
        self._conf: tuple | None = None  # configuration words, fixed once the run starts

    def _config(self) -> tuple:
        """(policy, fallback, k, depth, step_ns, check_ns, max_steps, script_n, lenient): written
        by the coordinator before the fork and never changed after, so read once."""
        mv, s = self.mv, self.s
        self._conf = (mv[s + SC_POLICY], mv[s + SC_FALLBACK], mv[s + SC_K], mv[s + SC_DEPTH], mv[s + SC_STEP_NS],
                      mv[s + SC_CHECK_NS], mv[s + SC_MAX_STEPS], mv[s + SC_SCRIPT_N], mv[s + SC_LENIENT])
        return self._conf

    # -- the clock --------------------------------------------------------------------------
    def clock_ns(self) -> int:
        return self.mv[self.s + SC_VCLOCK]

    # -- what Cpu calls (shm_model.cpu.Sched) -------------------------------------------------
    def point(self, cpu: Cpu, irqs_on: bool) -> None:
        self.mv[self.ws + W_SCHED_IRQOK] = bool(irqs_on)
        self._run(cpu)

    def block(self, cpu: Cpu, lock_index: int, irqs_on: bool) -> None:
        # the wait record (W_WAIT) is published by the caller: the options leave us out
        # until the lock's owner word is clear
        self.mv[self.ws + W_SCHED_IRQOK] = bool(irqs_on)
        if self._closes_cycle():
            self.freeze()
        self._run(cpu)

    def _closes_cycle(self) -> bool:
        """Does this wait close a wait-for cycle? Under the scheduler the waits of a cycle's
        members cannot change (each waits for a lock only another member can release), so a
        cycle is a deadlock the moment it closes, whoever else can still run (a device that
        keeps raising interrupts). Nodes are (worker, context); a task whose ISR runs waits
        for that ISR; a waiter waits for every owner its lock kind names (a writer for each
        reader), and a cycle through any of them is a deadlock."""
        mv, geo = self.mv, self.geo
        start = (self.wid, mv[self.ws + W_IN_IRQ])
        todo, seen = [start], {start}
        while todo:
            w, c = todo.pop()
            ws = self.wss[w]
            if c == 0 and mv[ws + W_IN_IRQ]:
                nxt = [(w, 1)]  # the task cannot go on before its interrupt handler returns
            else:
                wt = WaitRecord.read(mv, geo, w, c)
                if wt is None or can_go(mv, geo, wt.lock, wt.mode):
                    continue
                nxt = [divmod(o, 2) for o in waits_for(mv, geo, wt)]
            for n in nxt:
                if n == start:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    def freeze(self) -> None:
        """No progress is possible: keep the token and stop here, every other worker parked
        at its scheduling point, so the coordinator reports this very state; the run's stop
        request ends the wait."""
        mv = self.mv
        mv[self.s + SC_STUCK] = mv[self.s + SC_STEP] or 1
        while True:
            self._wait_token()

    def sleep_until(self, cpu: Cpu, t_ns: int, irqs_on: bool) -> None:
        mv, ws = self.mv, self.ws
        mv[ws + W_SCHED_WAKE] = t_ns
        mv[ws + W_SCHED_IRQOK] = bool(irqs_on)
        try:
            self._run(cpu)
        finally:
            mv[ws + W_SCHED_WAKE] = 0

    def boundary(self, cpu: Cpu) -> None:
        """Between two operations: a safe point (no lock held, interrupts enabled)."""
        self.mv[self.ws + W_SCHED_AT] = AT_BOUNDARY
        self.point(cpu, True)

    def begin_op(self) -> None:
        self.mv[self.ws + W_SCHED_AT] = AT_MIDOP

    # -- entering and leaving ---------------------------------------------------------------
    def enter(self, cpu: Cpu) -> None:
        """The worker joins the schedule (after its setup) and waits for its first turn."""
        mv, ws = self.mv, self.ws
        mv[ws + W_SCHED_HAS_ISR] = cpu.isr is not None
        mv[ws + W_SCHED_AT] = AT_BOUNDARY
        mv[ws + W_SCHED_IRQOK] = 1
        mv[ws + W_SCHED_WAKE] = 0
        mv[ws + W_SCHED_STATE] = SCHED_IN
        self._wait_token()
        if mv[self.s + SC_DELIVER]:
            mv[self.s + SC_DELIVER] = 0
            self._deliver(cpu)
            self._run(cpu)

    def leave(self) -> None:
        """The worker exits (orderly, or after a crash): it hands the token on if it has it."""
        mv = self.mv
        mv[self.ws + W_SCHED_STATE] = SCHED_GONE
        if mv[self.s + SC_CUR] == self.wid and not mv[H_STOP]:
            self.hand_on()

    def all_in(self, alive: list[bool]) -> bool:
        """Every live worker has joined the schedule (coordinator, before the first token)."""
        return all(not a or self.mv[ws + W_SCHED_STATE] != 0 for a, ws in zip(alive, self.wss))

    def hand_on(self) -> bool:
        """Choose the next thread and give it the token without waiting for it back (the
        coordinator's first choice; a worker leaving; a worker that died holding it)."""
        c = self._decide(-1)
        if c < 0:
            return False
        self._post(c >> 1, c & 1)
        return True

    def mark_gone(self, w: int) -> None:
        self.mv[self.wss[w] + W_SCHED_STATE] = SCHED_GONE

    # -- the core loop at a scheduling point --------------------------------------------------
    def _run(self, cpu: Cpu) -> None:
        mv, s, me = self.mv, self.s, self.wid
        while True:
            if mv[H_STOP]:
                raise Stop()
            c = self._decide(2 * me)  # the worker's running context: task, or its ISR
            if c < 0:  # stuck (the coordinator reports it) or done: wait for the stop
                self._wait_token()
                continue
            w = c >> 1
            if w == me:
                if c & 1:
                    self._deliver(cpu)
                    continue
                return
            self._post(w, c & 1)
            self._wait_token()
            if mv[s + SC_DELIVER]:
                mv[s + SC_DELIVER] = 0
                self._deliver(cpu)
                continue
            return

    def _deliver(self, cpu: Cpu) -> None:
        self.mv[self.s + SC_IRQS] += 1
        cpu.run_irqs()

    def _post(self, w: int, irq: int) -> None:
        mv, s = self.mv, self.s
        mv[s + SC_CUR] = w
        mv[s + SC_DELIVER] = irq
        mv[s + SC_SWITCHES] += 1
        self.tokens[w].release()

    def _wait_token(self) -> None:
        sem = self.tokens[self.wid]
        mv = self.mv
        while True:
            try:
                sem.acquire(TOKEN_SLICE_S)
                return
            except posix_ipc.BusyError:
                if mv[H_STOP]:
                    raise Stop()
            except posix_ipc.SignalError:
                if mv[H_STOP]:
                    raise Stop()

    # -- deciding -----------------------------------------------------------------------------
    def _options(self, drain: bool, vt: int) -> tuple[list[int], int]:
        """Enabled threads (choices), and the earliest wake-up of a sleeping task (0: none).
        (The body inlines _runnable and _irq_ready: it runs at every step.)"""
        mv = self.mv
        owner_of = self.owner_of
        out = []
        wake = 0
        w2 = 0
        for st, at, in_irq, wait, wk, irqok, has_isr, rings in self._slots:
            irq = mv[in_irq]
            # draining: only those inside an operation run on (an ISR in progress is inside one)
            if mv[st] != SCHED_IN or (drain and mv[at] == AT_BOUNDARY and not irq):
                w2 += 2
                continue
            wr = wait + WAIT_WORDS * irq
            lk = mv[wr]
            if lk < 0 or (mv[owner_of + lk * LSLOT] == NO_OWNER if mv[wr + WAIT_MODE] == SPIN
                          else can_go(mv, self.geo, lk, mv[wr + WAIT_MODE])):
                t = mv[wk]
                if t > vt:
                    wake = t if not wake or t < wake else wake
                else:
                    out.append(w2)
            if not drain and not irq and mv[irqok] and mv[has_isr]:
                for r in rings:
                    if mv[r] != mv[r + 1]:
                        out.append(w2 + 1)
                        break
            w2 += 2
        return out, wake

    def _all_at_boundary(self) -> bool:
        """Every scheduled worker is between operations and not in an ISR: a safe point."""
        mv = self.mv
        for ws in self.wss:
            if mv[ws + W_SCHED_STATE] == SCHED_IN and (mv[ws + W_SCHED_AT] != AT_BOUNDARY or mv[ws + W_IN_IRQ]):
                return False
        return True

    def _decide(self, cur: int) -> int:
        """One step: choose the next thread (a choice ``2w + irq``), record it; -1 when no
        thread can run (stuck: SC_STUCK is set) or the run is over."""
        mv, s = self.mv, self.s
        policy, fallback, k, depth, step_ns, check_ns, budget, script_n, lenient = self._conf or self._config()
        step = mv[s + SC_STEP] + 1
        mv[s + SC_STEP] = step
        vt = mv[s + SC_VCLOCK] + step_ns
        mv[s + SC_VCLOCK] = vt
        if budget and step > budget:
            self.finish(DONE_STEPS)
            return -1
        drain = mv[s + SC_DRAIN]
        if check_ns and self.on_check is not None:
            if not drain and vt >= mv[s + SC_NEXT_CHECK]:
                drain = mv[s + SC_DRAIN] = 1
            if drain and self._all_at_boundary():
                mv[s + SC_CHECKS] += 1
                self._end_drain(vt)
                drain = 0
                self.on_check()
                if mv[H_STOP]:
                    return -1
        while True:
            opts, wake = self._options(bool(drain), vt)
            if opts:
                break
            if wake:  # everyone who could run sleeps: the clock jumps to the first wake-up
                vt = mv[s + SC_VCLOCK] = wake
                continue
            if drain:  # those inside an operation wait on each other: no safe point now
                mv[s + SC_CHECKS_SKIPPED] += 1
                self._end_drain(vt)
                drain = 0
                continue
            mv[s + SC_STUCK] = step
            return -1
        if len(opts) == 1 and not script_n:
            c = opts[0]
            if policy == 2:  # PCT's rounds and change points count every step
                self._pct(opts, cur, step, k, depth)
        else:
            c = self._choose(opts, cur, step, policy, fallback, k, depth, script_n)
        if cur >= 0 and c >> 1 != cur >> 1 and cur in opts:
            mv[s + SC_PREEMPT] += 1  # the running thread could have gone on
        # record (inlined _record): run-length encoded
        n = mv[s + SC_LOG_N]
        if n:
            last = mv[s + SC_LOG + n - 1]
            if last & 0xFF == c:
                mv[s + SC_LOG + n - 1] = last + 256
                return c
        if n < SCHED_LOG_CAP:
            mv[s + SC_LOG + n] = c | 256
            mv[s + SC_LOG_N] = n + 1
        else:
            mv[s + SC_LOG_LOST] += 1
        return c

    def _end_drain(self, vt: int) -> None:
        mv, s = self.mv, self.s
        mv[s + SC_DRAIN] = 0
        mv[s + SC_NEXT_CHECK] = vt + mv[s + SC_CHECK_NS]

    def _choose(self, opts: list[int], cur: int, step: int, policy: int, fallback: int, k: int, depth: int,
                script_n: int) -> int:
        if script_n:
            c = self._scripted(opts, step)
            if c >= 0:
                return c
            if c == -2:  # lenient: this step's scripted choice could not run; the steady one does
                return cur if cur in opts else opts[0]
            policy = fallback  # after the script (ended, or diverged): its fallback
        if policy == 1:  # random
            return opts[self._below(len(opts))]
        if policy == 3:  # steady: the current thread if it can go on, else the lowest
            return cur if cur in opts else opts[0]
        return self._pct(opts, cur, step, k, depth)

    def _scripted(self, opts: list[int], step: int) -> int:
        mv, s = self.mv, self.s
        pos = mv[s + SC_SCRIPT_POS]
        n = mv[s + SC_SCRIPT_N]
        if pos >= n:
            return -1
        e = mv[s + SC_SCRIPT + pos]
        c = e & 0xFF
        if c not in opts and mv[s + SC_LENIENT]:
            mv[s + SC_MISSES] += 1
            self._advance_script(pos, e)
            return -2
        if c not in opts:
            mv[s + SC_DIVERGED] = step
            mv[s + SC_DIVERGE_WANT] = c
            mv[s + SC_SCRIPT_POS] = n  # the rest of the script no longer applies
            return -1
        self._advance_script(pos, e)
        return c

    def _advance_script(self, pos: int, e: int) -> None:
        mv, s = self.mv, self.s
        used = mv[s + SC_SCRIPT_USED] + 1
        if used >= e >> 8:
            mv[s + SC_SCRIPT_POS] = pos + 1
            mv[s + SC_SCRIPT_USED] = 0
        else:
            mv[s + SC_SCRIPT_USED] = used

    def _pct(self, opts: list[int], cur: int, step: int, k: int, d: int) -> int:
        mv, s = self.mv, self.s
        if not mv[s + SC_ROUND] or step - mv[s + SC_ROUND_AT] >= k:
            self._new_round(step)
        off = step - mv[s + SC_ROUND_AT]
        if cur >= 0:
            for i in range(d - 1):
                if mv[s + SC_CHANGE + i] == off:
                    mv[s + SC_PRIO + cur] = i + 1  # below every initial priority (>= d)
        prio = s + SC_PRIO
        best = opts[0]
        bp = mv[prio + best]
        for c in opts:
            p = mv[prio + c]
            if p > bp:
                best, bp = c, p
        return best

    def _new_round(self, step: int) -> None:
        mv, s = self.mv, self.s
        d = mv[s + SC_DEPTH]
        k = mv[s + SC_K]
        threads = list(range(2 * self.n))
        for i in range(len(threads) - 1, 0, -1):  # Fisher-Yates with the shared generator
            j = self._below(i + 1)
            threads[i], threads[j] = threads[j], threads[i]
        for rank, c in enumerate(threads):
            mv[s + SC_PRIO + c] = d + rank
        for i in range(d - 1):
            mv[s + SC_CHANGE + i] = 1 + self._below(k)
        mv[s + SC_ROUND] += 1
        mv[s + SC_ROUND_AT] = step

    def _below(self, n: int) -> int:
        """A uniform draw from the arena's splitmix64 generator (shared by every process)."""
        mv, i = self.mv, self.s + SC_RNG
        st = (mv[i] + 0x9E3779B97F4A7C15) & _M64
        mv[i] = _signed(st)
        z = ((st ^ (st >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return (z ^ (z >> 31)) % n

    def finish(self, why: int) -> None:
        """End the run at this step: every worker stops at its next scheduling point."""
        mv = self.mv
        if not mv[self.s + SC_DONE]:
            mv[self.s + SC_DONE] = why
        mv[H_STOP] = 1


# ---- after the run: reading, saving and loading a schedule ------------------------------------

@dataclass
class ScheduleInfo:
    """A controlled run's schedule, as summary.json and the store keep it."""

    policy: str
    seed: int
    depth: int
    k: int
    step_ns: int
    steps: int
    rounds: int
    switches: int
    preemptions: int
    irqs_delivered: int
    checks: int
    checks_skipped: int
    entries: int
    lost: int  # steps not recorded (the log was full): a replay continues under the scheduler there
    virtual_ns: int
    threads: int
    stuck_step: int = 0
    diverged_step: int = 0
    diverged_want: str = ""
    replay_of: str = ""
    ops: int = 0

    @property
    def steps_per_op(self) -> float:
        return self.steps / self.ops if self.ops else 0.0

    def round_bound(self) -> float:
        """PCT's bound for one round: 1 / (n * k^(d-1))."""
        return 1.0 / (self.threads * float(self.k) ** (self.depth - 1))

    def run_bound(self) -> float:
        """At least this chance that some round of the run found a given depth-d bug."""
        return cumulative(self.round_bound(), self.rounds)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["steps_per_op"] = round(self.steps_per_op, 3)
        if self.policy == "pct":
            d["round_bound"] = self.round_bound()
            d["run_bound"] = self.run_bound()
        return d


def cumulative(p: float, rounds: int) -> float:
    """1 - (1 - p)^rounds, computed without losing a small p."""
    if p <= 0 or rounds <= 0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return -math.expm1(rounds * math.log1p(-p))


def read_info(world: Any, sc: SchedConfig, threads: int, ops: int, replay_of: str = "") -> ScheduleInfo:
    mv, s = world.mv, world.geo.sched
    want = mv[s + SC_DIVERGE_WANT]
    return ScheduleInfo(
        policy=sc.policy, seed=sc.seed, depth=sc.depth, k=mv[s + SC_K], step_ns=mv[s + SC_STEP_NS],
        steps=min(mv[s + SC_STEP], mv[s + SC_MAX_STEPS] or mv[s + SC_STEP]), rounds=mv[s + SC_ROUND],
        switches=mv[s + SC_SWITCHES], preemptions=mv[s + SC_PREEMPT], irqs_delivered=mv[s + SC_IRQS],
        checks=mv[s + SC_CHECKS], checks_skipped=mv[s + SC_CHECKS_SKIPPED], entries=mv[s + SC_LOG_N],
        lost=mv[s + SC_LOG_LOST], virtual_ns=mv[s + SC_VCLOCK], threads=threads, stuck_step=mv[s + SC_STUCK],
        diverged_step=mv[s + SC_DIVERGED],
        diverged_want=choice_name(want, world) if mv[s + SC_DIVERGED] else "", replay_of=replay_of, ops=ops)


def read_log(world: Any) -> list[int]:
    mv, s = world.mv, world.geo.sched
    n = mv[s + SC_LOG_N]
    return list(mv[s + SC_LOG:s + SC_LOG + n])


def choice_name(c: int, world: Any = None) -> str:
    w, irq = c >> 1, c & 1
    who = world.worker_label(w) if world is not None else f"worker {w}"
    return f"{who}{' [irq]' if irq else ''}"


def encode(entries: list[int]) -> bytes:
    return zlib.compress(array.array("q", entries).tobytes(), 6)


def decode(blob: bytes) -> list[int]:
    a = array.array("q")
    a.frombytes(zlib.decompress(blob))
    return a.tolist()


SCHEDULE_FILE = "schedule.bin"


def save(run_dir: str, entries: list[int]) -> str:
    path = os.path.join(run_dir, SCHEDULE_FILE)
    with open(path, "wb") as fh:
        fh.write(encode(entries))
    return path


def load(run_dir: str) -> list[int]:
    with open(os.path.join(run_dir, SCHEDULE_FILE), "rb") as fh:
        return decode(fh.read())


def rle_steps(entries: list[int]) -> int:
    return sum(e >> 8 for e in entries)


def learned_k(steps_per_op: float, n_workers: int) -> int:
    """PCT's k from what earlier runs measured: a round long enough for every worker to run
    about ``ROUND_OPS`` operations."""
    return max(16, int(round(steps_per_op * n_workers * ROUND_OPS)))
