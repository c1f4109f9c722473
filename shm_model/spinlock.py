"""Instrumented spinlocks on POSIX semaphores, with Xen's API.

A lock is a named POSIX semaphore (initial value 1) plus a 64-byte record in the arena:
owner (worker * 2 + context), class, the site of the current acquisition and its time.
Per worker and class the arena keeps acquisitions, contentions, wait and hold maxima, and
log2 histograms of hold times (every release) and wait times (every contended acquire).

Fast path (``spin_lock`` of a free lock whose held-class chain this worker has seen):
mask, chain-cache lookup, ``sem_trywait``, four arena writes, unmask. Slow paths:

- first sighting of a held-class chain: the engine's lockdep validates it (class graph,
  interrupt usage) and the exact call site is captured;
- contention: the exact site is captured, the waiting record (lock, site, since, seq) is
  published for the wait-for graph, and the worker blocks in ``sem_timedwait`` slices of
  5 ms with interrupts in the state the caller had them: a signal interrupts the wait, the
  ISR runs, the wait resumes (posix_ipc raises ``SignalError`` without taking the lock,
  FACTS.md); the slices also catch a signal that landed just before the kernel wait and
  the coordinator's stop request, so a deadlocked worker still exits cleanly.

Locking rules: bookkeeping runs with the soft interrupt mask set; the only lock taken
inside is the semaphore itself. Model spinlocks are not recursive: taking one this
context already holds is reported (lockdep's "possible recursive locking") and then
deadlocks for real, as in Xen.
"""

from __future__ import annotations

from typing import Any

import posix_ipc

from . import sites
from .arena import (H_HOLD, H_WAIT, L_CLASS, L_OWNER, L_SINCE, L_SITE, NO_OWNER, S_ACQ, S_CONTENDED, S_HOLD_MAX,
                    S_WAIT_MAX, S_WAIT_NS, W_WAIT, W_WAIT_CALLERS, WAIT_CALLERS, Geometry)
from .cpu import TASK, Cpu
from .trace import EV_ACQUIRE, EV_ACQUIRED, EV_CONTEND, EV_RELEASE, EV_TRYLOCK_FAIL

sites.internal(__file__)

WAIT_SLICE_S = 0.005
_Busy = posix_ipc.BusyError
_Signal = posix_ipc.SignalError


class Lock:
    """One spinlock instance in one process. Built before fork; :meth:`bind` gives it the
    worker's :class:`Cpu` after fork."""

    __slots__ = ("index", "cls", "cls_name", "path", "sem", "mv", "o_owner", "o_site", "o_since",
                 "key", "cpu", "st", "hh", "_try", "_wait", "_rel", "geo")

    def __init__(self, index: int, cls: int, cls_name: str, path: str, sem: posix_ipc.Semaphore,
                 mv: memoryview, geo: Geometry) -> None:
        self.index = index
        self.cls = cls
        self.cls_name = cls_name
        self.path = path
        self.sem = sem
        self.mv = mv
        self.geo = geo
        base = geo.lslot(index)
        self.o_owner = base + L_OWNER
        self.o_site = base + L_SITE
        self.o_since = base + L_SINCE
        mv[self.o_owner] = NO_OWNER
        mv[base + L_CLASS] = cls
        self.key = (cls + 1) << 2  # chain-key digit: class, then ctx and irq-state bits
        self.cpu: Cpu | None = None
        self.st = 0
        self.hh = 0
        self._try = sem.acquire
        self._wait = sem.acquire
        self._rel = sem.release

    def __repr__(self) -> str:
        return f"<lock {self.path} ({self.cls_name})>"

    def bind(self, cpu: Cpu) -> None:
        self.cpu = cpu
        self.st = self.geo.sslot(cpu.wid, self.cls)
        self.hh = self.geo.hslot(cpu.wid, self.cls) + H_HOLD

    # -- acquire ----------------------------------------------------------------------------
    def lock(self) -> None:
        """``spin_lock``: take the lock, spinning (blocking) while another context holds it."""
        cpu = self.cpu
        m = cpu.masked
        cpu.masked = True
        ctx = cpu.ctx
        held = cpu.held[ctx]
        key = ((held[-1][1] << 9) if held else 0) | self.key | (ctx << 1) | m
        site = cpu.chains.get(key)
        if site is None:
            site = cpu.hooks.new_chain(cpu, self, key, held, not m and ctx == TASK, False)
            cpu.chains[key] = site
        if cpu.noise:
            cpu.jitter()
        try:
            self._try(0)
        except _Busy:
            site = self._contended(cpu, ctx, m)
        mv = self.mv
        mv[self.o_owner] = cpu.oid[ctx]
        mv[self.o_site] = site
        mv[self.o_since] = cpu.now()
        mv[self.st] += 1
        held.append((self, key))
        if cpu.trace_locks:
            cpu.trace(EV_ACQUIRE, 0, self.index, site)
        cpu.masked = m
        if cpu.irq_pending and not m:
            cpu.run_irqs()

    def trylock(self) -> bool:
        """``spin_trylock``: take the lock if it is free. Adds no dependency edge into the
        lock (a trylock cannot deadlock), as lockdep; locks taken under it do get edges."""
        cpu = self.cpu
        m = cpu.masked
        cpu.masked = True
        ctx = cpu.ctx
        held = cpu.held[ctx]
        key = ((held[-1][1] << 9) if held else 0) | self.key | (ctx << 1) | m
        try:
            self._try(0)
        except _Busy:
            if cpu.trace_locks:
                cpu.trace(EV_TRYLOCK_FAIL, 0, self.index)
            cpu.masked = m
            if cpu.irq_pending and not m:
                cpu.run_irqs()
            return False
        site = cpu.chains.get(~key)  # trylock chains: their own keys
        if site is None:
            site = cpu.hooks.new_chain(cpu, self, key, held, not m and ctx == TASK, True)
            cpu.chains[~key] = site
        mv = self.mv
        mv[self.o_owner] = cpu.oid[ctx]
        mv[self.o_site] = site
        mv[self.o_since] = cpu.now()
        mv[self.st] += 1
        held.append((self, key))
        cpu.masked = m
        if cpu.irq_pending and not m:
            cpu.run_irqs()
        return True

    def _contended(self, cpu: Cpu, ctx: int, m: bool) -> int:
        """Slow path: publish the wait, block in slices taking interrupts, then account."""
        mv = self.mv
        stack = sites.capture_stack(2, 1 + WAIT_CALLERS)
        site = stack[0] if stack else 0
        callers = cpu.ws + W_WAIT_CALLERS + WAIT_CALLERS * ctx
        for k in range(WAIT_CALLERS):
            mv[callers + k] = stack[k + 1] if k + 1 < len(stack) else 0
        w = cpu.ws + W_WAIT + 4 * ctx
        t0 = cpu.now()
        mv[w + 1] = site
        mv[w + 2] = t0
        mv[w + 3] += 1
        mv[w] = self.index  # published last: the watchdog reads lock, then the rest
        cpu.trace(EV_CONTEND, 0, self.index, site)
        cpu.masked = m  # wait with interrupts as the caller had them
        try:
            while True:
                try:
                    self._wait(WAIT_SLICE_S)
                    break
                except _Busy:
                    cpu.check_stop()
                    if not m and cpu.irqs_waiting():
                        cpu.run_irqs()
                except _Signal:
                    pass  # the handler ran (maybe our ISR); resume waiting
                if cpu.irq_pending and not m:
                    cpu.run_irqs()
        finally:
            cpu.masked = True
            mv[w] = -1
        waited = cpu.now() - t0
        st = self.st
        mv[st - S_ACQ + S_CONTENDED] += 1
        mv[st - S_ACQ + S_WAIT_NS] += waited
        if waited > mv[st - S_ACQ + S_WAIT_MAX]:
            mv[st - S_ACQ + S_WAIT_MAX] = waited
        mv[self.hh - H_HOLD + H_WAIT + waited.bit_length()] += 1
        cpu.trace(EV_ACQUIRED, 0, self.index, waited)
        return site

    # -- release ----------------------------------------------------------------------------
    def unlock(self) -> None:
        """``spin_unlock``."""
        cpu = self.cpu
        m = cpu.masked
        cpu.masked = True
        held = cpu.held[cpu.ctx]
        if held and held[-1][0] is self:
            held.pop()
        elif not self._unlock_out_of_order(cpu, held):
            cpu.masked = m
            if cpu.irq_pending and not m:
                cpu.run_irqs()
            return
        mv = self.mv
        hold = cpu.now() - mv[self.o_since]
        if hold > mv[self.st - S_ACQ + S_HOLD_MAX]:
            mv[self.st - S_ACQ + S_HOLD_MAX] = hold
        mv[self.hh + hold.bit_length()] += 1
        mv[self.o_owner] = NO_OWNER
        self._rel()
        if cpu.trace_locks:
            cpu.trace(EV_RELEASE, 0, self.index)
        cpu.masked = m
        if cpu.irq_pending and not m:
            cpu.run_irqs()

    def _unlock_out_of_order(self, cpu: Cpu, held: list) -> bool:
        for i in range(len(held) - 1, -1, -1):
            if held[i][0] is self:
                rest = held[i + 1:]
                del held[i:]
                for lk, k in rest:  # recompute the chain keys above the released lock
                    held.append((lk, ((held[-1][1] << 9) if held else 0) | (k & 0x1FF)))
                return True
        owner = self.mv[self.o_owner]
        cpu.finding("bad-unlock", "WARNING: bad unlock balance detected!",
                    lock=self.path, cls=self.cls_name, owner=owner, site=sites.capture(2),
                    ctx="irq" if cpu.ctx else "task")
        return False

    def _force_release(self, cpu: Cpu) -> None:
        """Release on behalf of a context that cannot (an ISR that returned holding it)."""
        self.mv[self.o_owner] = NO_OWNER
        self._rel()

    # -- queries ----------------------------------------------------------------------------
    def is_locked(self) -> bool:
        """``spin_is_locked``: held by anyone."""
        return self.mv[self.o_owner] != NO_OWNER

    def held_by_me(self) -> bool:
        """Held by this CPU, in either context (lockdep's ``lockdep_is_held``)."""
        return self.mv[self.o_owner] // 2 == self.cpu.wid and self.mv[self.o_owner] != NO_OWNER

    def owner(self) -> int:
        return self.mv[self.o_owner]

    # -- context manager: ``with lock:`` is spin_lock/spin_unlock ---------------------------
    def __enter__(self) -> "Lock":
        self.lock()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unlock()


# ---- Xen's API ------------------------------------------------------------------------------

def spin_lock(lock: Lock) -> None:
    """Take ``lock`` with interrupts as they are."""
    lock.lock()


def spin_unlock(lock: Lock) -> None:
    lock.unlock()


def spin_trylock(lock: Lock) -> bool:
    return lock.trylock()


def spin_lock_irq(lock: Lock) -> None:
    """Disable interrupts, then take ``lock`` (``spin_unlock_irq`` enables them again)."""
    lock.cpu.masked = True
    lock.lock()


def spin_unlock_irq(lock: Lock) -> None:
    lock.unlock()
    lock.cpu.local_irq_enable()


def spin_lock_irqsave(lock: Lock) -> bool:
    """Save the interrupt state, disable interrupts, take ``lock``; returns the flags."""
    cpu = lock.cpu
    flags = cpu.masked
    cpu.masked = True
    lock.lock()
    return flags


def spin_unlock_irqrestore(lock: Lock, flags: bool) -> None:
    lock.unlock()
    lock.cpu.local_irq_restore(flags)


def spin_is_locked(lock: Lock) -> bool:
    return lock.is_locked()


def assert_held(lock: Lock) -> bool:
    """Xen's ``ASSERT(spin_is_locked(&lock))``, checked strictly: the lock must be held by
    *this* CPU (lockdep's ``lockdep_assert_held``). Xen's check passes whenever any CPU holds
    the lock, which hides exactly the races this tool looks for. A failure is a finding
    ``invariant:assert-held``; execution continues, as in a release build."""
    if lock.held_by_me():
        return True
    cpu = lock.cpu
    owner = lock.owner()
    cpu.finding("invariant:assert-held", "Assertion 'spin_is_locked(lock)' failed",
                lock=lock.path, cls=lock.cls_name, owner=owner, site=sites.capture(2),
                stack=list(sites.capture_stack(2)), ctx="irq" if cpu.ctx else "task",
                held=[lk.path for lk in cpu.held_locks()])
    return False
