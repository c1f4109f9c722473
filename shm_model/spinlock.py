"""Instrumented spinlocks on POSIX semaphores, with Xen's API.

A lock is a named POSIX semaphore (initial value 1) plus a 64-byte record in the arena:
owner (worker * 2 + context), class, the site of the current acquisition and its time.
Per worker and class the arena keeps acquisitions, contentions, wait and hold maxima, and
log2 histograms of hold times (every release) and wait times (every contended acquire).

Fast path, in C (``shm_model/_fastlock.c``; ``spin_lock`` of a free lock whose held-class
chain this worker has seen): chain-cache lookup, ``sem_trywait``, four arena writes and the
held stack; ``spin_unlock``: the hold time and its histogram bucket, ``sem_post``. It runs no
Python bytecode, so it is atomic with respect to the ISR (a signal's handler runs only
between bytecodes) without touching the soft mask. Slow paths, here in Python, called by
the C code with interrupts soft-masked:

- first sighting of a held-class chain: the engine's lockdep validates it (class graph,
  interrupt usage) and the exact call site is captured (``Hooks.new_chain``);
- contention (:meth:`Lock._contended`): the exact site is captured, the waiting record
  (lock, site, since, seq) is published for the wait-for graph, and the worker blocks in
  ``sem_timedwait`` slices of 5 ms with interrupts in the state the caller had them: a
  signal interrupts the wait, the ISR runs, the wait resumes (posix_ipc raises
  ``SignalError`` without taking the lock, FACTS.md); the slices also catch a signal that
  landed just before the kernel wait and the coordinator's stop request, so a deadlocked
  worker still exits cleanly;
- in controlled mode (``cpu.sched`` set), a contended acquisition does not wait in the
  kernel: the waiting record is published the same way, and the worker blocks in the
  scheduler, which runs it again once the lock is free (or to take an interrupt);
- an unlock that is not of the innermost held lock (:meth:`Lock._unlock_out_of_order`),
  and an unlock of a lock this context does not hold (lockdep's "bad unlock balance").

Locking rules: bookkeeping runs with interrupts off (C) or soft-masked (Python); the only
lock taken inside is the semaphore itself. Model spinlocks are not recursive: taking one
this context already holds is reported (lockdep's "possible recursive locking") and then
deadlocks for real, as in Xen.
"""

from __future__ import annotations

import posix_ipc

from . import sites
from ._fastlock import (KEY_DIGIT_BITS, LockCore, spin_is_locked, spin_lock, spin_lock_irq, spin_lock_irqsave,
                        spin_lock_irqsave_nested, spin_lock_nested, spin_trylock, spin_unlock, spin_unlock_irq,
                        spin_unlock_irqrestore)
from .arena import (H_HOLD, H_WAIT, L_CLASS, L_KIND, L_OWNER, L_SINCE, L_SITE, LK_SPIN, NO_OWNER, S_ACQ,
                    S_CONTENDED, S_HOLD_MAX, S_RCONTENDED, S_WAIT_MAX, S_WAIT_NS, WAIT_CALLERS, Geometry)
from .records import SPIN, publish_wait, withdraw_wait
from .cpu import Cpu
from .trace import EV_ACQUIRED, EV_CONTEND

sites.internal(__file__)

WAIT_SLICE_S = 0.005
_Busy = posix_ipc.BusyError
_Signal = posix_ipc.SignalError

# the C fast path hard-codes these layout facts: keep them true
assert S_ACQ == 0 and S_HOLD_MAX == 4 and H_HOLD == 0

DIGIT_MASK = (1 << KEY_DIGIT_BITS) - 1
#: locks a run may declare: a chain-key digit holds (lock index + 1) << 5 | subclass << 2 | ctx << 1 | masked
MAX_LOCKS = (1 << (KEY_DIGIT_BITS - 5)) - 2


def key_digit(index: int) -> int:
    """The chain-key digit of lock ``index`` (subclass, context and irq state are or'ed in)."""
    return (index + 1) << 5


def subclass_of(key: int) -> int:
    """The lockdep subclass (``spin_lock_nested``) of the acquisition whose chain key is ``key``."""
    return (key >> 2) & 7


__all__ = ["Lock", "assert_held", "spin_is_locked", "spin_lock", "spin_lock_irq", "spin_lock_irqsave",
           "spin_lock_nested", "spin_lock_irqsave_nested", "key_digit", "subclass_of", "MAX_LOCKS",
           "spin_trylock", "spin_unlock", "spin_unlock_irq", "spin_unlock_irqrestore"]


class LockBase:
    """What every lock kind shares in Python: naming, binding to a CPU after fork, and the
    out-of-order unlock slow path. (A mixin: the C base classes hold the fast-path state.)"""

    __slots__ = ()
    kind = "spin"

    def __repr__(self) -> str:
        return f"<{self.kind}lock {self.path} ({self.cls_name})>"

    def _init_record(self, index: int, cls: int, cls_name: str, path: str, sem: posix_ipc.Semaphore,
                     mv: memoryview, geo: Geometry, kind: int) -> int:
        """What every kind does at construction: names, the lock record's common words (no
        owner, class, kind) and the C fast path's view of them. Returns the record's base."""
        self.cls = cls
        self.cls_name = cls_name
        self.path = path
        self.sem = sem
        self.mv = mv
        self.geo = geo
        base = geo.lslot(index)
        mv[base + L_OWNER] = NO_OWNER
        mv[base + L_CLASS] = cls
        mv[base + L_KIND] = kind
        # chain-key digit: the lock instance, then subclass, ctx and irq-state bits
        self._open(sem.name, index, key_digit(index), base + L_OWNER, base + L_SITE, base + L_SINCE)
        return base

    def held_here(self) -> bool:
        """Held by this CPU in any mode (``assert_held``'s question)."""
        return self.held_by_me()

    def release_held(self, key: int) -> None:
        """Release this CPU's hold whose chain key is ``key``, by the kind's own unlock (the
        engine's recovery after a model fault)."""
        spin_unlock(self)

    def _bad_unlock(self, cpu: Cpu, **extra) -> None:
        """Lockdep's "bad unlock balance": an unlock of a hold this context does not have."""
        cpu.finding("bad-unlock", "WARNING: bad unlock balance detected!",
                    lock=self.path, cls=self.cls_name, owner=self.mv[self.o_owner], site=sites.capture(3),
                    ctx="irq" if cpu.ctx else "task", **extra)

    def bind(self, cpu: Cpu) -> None:
        self.st = self.geo.sslot(cpu.wid, self.cls)
        self.hh = self.geo.hslot(cpu.wid, self.cls) + H_HOLD
        self.cpu = cpu

    def _sem_wait(self, cpu: Cpu, acquire, m: bool) -> None:
        """Block until ``acquire`` (a semaphore's) succeeds, the wait record published by the
        caller: in the scheduler (controlled mode), or in the kernel in slices of
        WAIT_SLICE_S taking interrupts as the caller had them (``m``: masked) and the stop."""
        sched = cpu.sched
        while sched is not None:  # controlled mode: wait in the scheduler, not in the kernel
            sched.block(cpu, self.index, not m)
            try:
                acquire(0)
                return
            except _Busy:
                continue
        while True:
            try:
                acquire(WAIT_SLICE_S)
                return
            except _Busy:
                cpu.check_stop()
                if not m and cpu.irqs_waiting():
                    cpu.run_irqs()
            except _Signal:
                pass  # the handler ran (maybe our ISR); resume waiting
            if cpu.irq_pending and not m:
                cpu.run_irqs()

    def _account_wait(self, cpu: Cpu, t0: int, read: bool = False) -> None:
        """A contended acquisition's statistics (its class, this worker) and trace event."""
        mv = self.mv
        waited = cpu.now() - t0
        st = self.st
        mv[st - S_ACQ + S_CONTENDED] += 1
        if read:
            mv[st - S_ACQ + S_RCONTENDED] += 1
        mv[st - S_ACQ + S_WAIT_NS] += waited
        if waited > mv[st - S_ACQ + S_WAIT_MAX]:
            mv[st - S_ACQ + S_WAIT_MAX] = waited
        mv[self.hh - H_HOLD + H_WAIT + waited.bit_length()] += 1
        cpu.trace(EV_ACQUIRED, 0, self.index, waited)

    def _unlock_out_of_order(self, cpu: Cpu, held: list) -> bool:
        for i in range(len(held) - 1, -1, -1):
            if held[i][0] is self:
                rest = held[i + 1:]
                del held[i:]
                for lk, k in rest:  # recompute the chain keys above the released lock
                    held.append((lk, ((held[-1][1] << KEY_DIGIT_BITS) if held else 0) | (k & DIGIT_MASK)))
                return True
        self._bad_unlock(cpu)
        return False


class Lock(LockBase, LockCore):
    """One spinlock instance in one process. Built before fork (it opens its semaphore);
    :meth:`bind` gives it the worker's :class:`Cpu` after fork. ``lock``, ``unlock``,
    ``trylock``, ``with lock:``, ``is_locked``, ``held_by_me`` and ``owner`` are the C base
    class's."""

    __slots__ = ("cls", "cls_name", "path", "sem", "mv", "geo", "_wait")

    def __init__(self, index: int, cls: int, cls_name: str, path: str, sem: posix_ipc.Semaphore,
                 mv: memoryview, geo: Geometry) -> None:
        self._init_record(index, cls, cls_name, path, sem, mv, geo, LK_SPIN)
        self._wait = sem.acquire

    def __repr__(self) -> str:
        return f"<lock {self.path} ({self.cls_name})>"

    # -- slow paths, called by the C fast path with interrupts soft-masked ------------------
    def _contended(self, cpu: Cpu, ctx: int, m: bool) -> int:
        """Slow path: publish the wait, block in slices taking interrupts, then account."""
        mv = self.mv
        stack = sites.capture_stack(2, 1 + WAIT_CALLERS)
        site = stack[0] if stack else 0
        cpu.quiesce()  # a blocked CPU's stores become visible (weak memory)
        w = self.geo.wait_slot(cpu.wid, ctx)
        t0 = cpu.now()
        publish_wait(mv, w, self.index, SPIN, site, t0, list(stack[1:]))
        cpu.trace(EV_CONTEND, 0, self.index, site)
        cpu.masked = m  # wait with interrupts as the caller had them
        try:
            self._sem_wait(cpu, self._wait, m)
        finally:
            cpu.masked = True
            withdraw_wait(mv, w)
        self._account_wait(cpu, t0)
        return site


# ---- Xen's API ------------------------------------------------------------------------------

def assert_held(lock: Lock) -> bool:
    """Xen's ``ASSERT(spin_is_locked(&lock))``, checked strictly: the lock must be held by
    *this* CPU (lockdep's ``lockdep_assert_held``). Xen's check passes whenever any CPU holds
    the lock, which hides exactly the races this tool looks for. A failure is a finding
    ``invariant:assert-held``; execution continues, as in a release build."""
    if lock.held_here():  # a reader-writer lock: in either mode (Xen's rw_is_locked)
        return True
    return assert_failed(lock, "spin_is_locked(lock)")


def assert_failed(lock: "LockBase", expr: str) -> bool:
    """An ``ASSERT(expr)`` on ``lock`` that failed in the caller's caller: the finding
    ``invariant:assert-held`` with the site and the locks this CPU holds. Returns False."""
    cpu = lock.cpu
    cpu.finding("invariant:assert-held", f"Assertion '{expr}' failed",
                lock=lock.path, cls=lock.cls_name, owner=lock.owner(), site=sites.capture(3),
                stack=list(sites.capture_stack(3)), ctx="irq" if cpu.ctx else "task",
                held=[lk.path for lk in cpu.held_locks()])
    return False
