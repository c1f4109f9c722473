"""Instrumented reader-writer locks with Xen's API and Xen's semantics (queued rwlock).

Xen's ``rwlock_t`` (xen/include/xen/rwlock.h, xen/common/rwlock.c, 4.19) is a queued,
writer-fair lock: one ``cnts`` word (readers << 16 | writer state << 14 | writer CPU) and a
wait queue (a spinlock). The model keeps exactly that:

- fast paths in C (``shm_model/_fastlock.c``, ``RwLockCore``): ``read_lock`` adds a reader
  bias and keeps it if no writer holds or waits (or this CPU holds the write lock: Xen's
  ``_is_write_locked_by_me``); ``write_lock`` is one compare-and-swap of 0 to
  ``LOCKED | cpu``; the trylocks are Xen's ``_read_trylock``/``_write_trylock``; the unlocks
  are one atomic each. ``cnts`` is the lock record's ``L_CNTS`` word in the arena;
- the slow paths here, as ``queue_read_lock_slowpath`` and ``queue_write_lock_slowpath``:
  take the queue (the lock's POSIX semaphore; its holder in ``L_QOWNER``), then a reader
  waits for the writer to go and adds its bias, a writer waits for the writer bits to clear,
  sets ``WAITING`` (new readers now queue behind it) and waits for the readers to leave.
  Each wait publishes its waiting record with its mode (``QUEUE``, ``WRITER``, ``READERS``;
  shm_model/records.py), so the watchdog's wait-for graph has an edge to every context the
  waiter really waits for: the queue holder, the writer, or each reader.

So the deadlocks of Xen's rwlock are real here: a CPU that read-holds a lock and takes it
again while a writer waits (the writer blocks new readers) deadlocks with that writer; a
writer that read-holds its own lock waits for itself.

Waiting: in free mode the queue is a blocking semaphore wait in slices (interrupts taken,
the stop flag checked, as a spinlock's contended path); the waits on ``cnts`` (Xen spins
with ``cpu_relax()``) yield the CPU, then sleep in growing steps up to 200 us. In
controlled mode every wait blocks in the scheduler until the kind's rule
(:meth:`shm_model.records.RwKind.can_go`) says it can go on.

Lockdep: a read acquisition has its own chain-key digit (``rkey``), so read and write
chains differ; ``recursive_read`` (a declaration's choice: Linux's rwlock_t in interrupt
context, lockdep's ``read == 2``) tells lockdep a read of this lock cannot wait behind a
waiting writer. Xen's readers are *not* recursive (a waiting writer blocks them), which is
the default.

Locking rules: the slow path runs with interrupts soft-masked except while it waits (with
interrupts as the caller had them, as a spinning CPU in Xen); the queue semaphore is the
only lock it takes, and it never nests.
"""

from __future__ import annotations

import os
import time

import posix_ipc

from . import sites
from ._fastlock import (RwLockCore, read_lock, read_lock_irqsave, read_trylock, read_unlock, read_unlock_irqrestore,
                        rw_is_locked, rw_is_write_locked, write_lock, write_lock_irqsave, write_trylock, write_unlock,
                        write_unlock_irqrestore)
from .arena import L_CNTS, L_QOWNER, LK_RW, NO_OWNER, WAIT_CALLERS, Geometry
from .cpu import Cpu
from .records import (QR_BIAS, QUEUE, QW_CPUMASK, QW_LOCKED, QW_WAITING, QW_WMASK, READERS, UNLOCK, WRITER,
                      publish_wait, withdraw_wait)
from .spinlock import LockBase, assert_failed, key_digit
from .trace import EV_CONTEND

sites.internal(__file__)

#: a read acquisition's chain-key digit is that of lock index ``index + READ_KEY_BASE``: one
#: digit space, read identities above every lock index (rw locks must sit below it)
READ_KEY_BASE = 511
MAX_RW_INDEX = READ_KEY_BASE

_Busy = posix_ipc.BusyError

__all__ = ["RwLock", "read_lock", "read_unlock", "write_lock", "write_unlock", "read_trylock", "write_trylock",
           "read_lock_irqsave", "read_unlock_irqrestore", "write_lock_irqsave", "write_unlock_irqrestore",
           "rw_is_locked", "rw_is_write_locked", "is_read_key", "READ_KEY_BASE"]


def is_read_key(key: int, index: int) -> bool:
    """Is the chain key's innermost digit a read acquisition of lock ``index``?"""
    from .spinlock import DIGIT_MASK
    return (((key & DIGIT_MASK) >> 5) - 1) == index + READ_KEY_BASE


class RwLock(LockBase, RwLockCore):
    """One reader-writer lock instance in one process (see the module's docstring).
    ``read_lock``/``read_unlock``/``write_lock``/``write_unlock`` are methods as well as
    Xen-style functions; ``held_by_me`` is the write hold, ``read_held_by_me`` a read hold."""

    __slots__ = ("cls", "cls_name", "path", "sem", "mv", "geo", "recursive_read")
    kind = "rw"

    def __init__(self, index: int, cls: int, cls_name: str, path: str, sem: posix_ipc.Semaphore,
                 mv: memoryview, geo: Geometry, recursive_read: bool = False) -> None:
        if index >= MAX_RW_INDEX:
            raise ValueError(f"reader-writer lock {path}: index {index} >= {MAX_RW_INDEX}")
        self.recursive_read = recursive_read
        base = self._init_record(index, cls, cls_name, path, sem, mv, geo, LK_RW)
        mv[base + L_CNTS] = 0
        mv[base + L_QOWNER] = NO_OWNER
        self._open_rw(base + L_CNTS, base + L_QOWNER, geo.rhslot(index, 0), key_digit(index + READ_KEY_BASE))

    def is_read_key(self, key: int) -> bool:
        return is_read_key(key, self.index)

    def held_here(self) -> bool:
        return self.held_by_me() or self.read_held_by_me()

    def release_held(self, key: int) -> None:
        (read_unlock if self.is_read_key(key) else write_unlock)(self)

    def _bad_mode_unlock(self, cpu: Cpu, read: bool) -> None:
        """``read_unlock`` without a read hold, or ``write_unlock`` without the write hold, by
        this context: lockdep's bad unlock balance; nothing is released."""
        self._bad_unlock(cpu, how="read_unlock" if read else "write_unlock")

    # -- the slow path (queue_read_lock_slowpath / queue_write_lock_slowpath) -------------------
    def _rw_slow(self, cpu: Cpu, ctx: int, m: bool, read: bool) -> int:
        """Called by the C fast path, masked, when the lock cannot be taken at once. Returns
        the acquisition's site; the caller records the hold."""
        mv = self.mv
        stack = sites.capture_stack(2, 1 + WAIT_CALLERS)
        site = stack[0] if stack else 0
        callers = list(stack[1:])
        cpu.quiesce()  # a blocked CPU's stores become visible (weak memory)
        wrec = self.geo.wait_slot(cpu.wid, ctx)
        me = cpu.oid[ctx]
        wid = cpu.wid
        t0 = cpu.now()
        cpu.trace(EV_CONTEND, 0, self.index, site)
        cpu.masked = m
        try:
            if read and self.recursive_read:  # Linux's interrupt-context reader: no queue, only the writer
                while True:
                    self._spin(cpu, wrec, UNLOCK, site, callers, t0, m, self._not_write_locked)
                    c = self._cnts_add(QR_BIAS)
                    if c & QW_WMASK != QW_LOCKED or c & QW_CPUMASK == wid:
                        break
                    self._cnts_add(-QR_BIAS)
            else:
                self._queued(cpu, wrec, site, callers, t0, m, me, wid, read)
        finally:
            cpu.masked = True
            withdraw_wait(mv, wrec)
        self._account_wait(cpu, t0, read)
        return site

    def _not_write_locked(self) -> bool:
        return self._cnts() & QW_WMASK != QW_LOCKED

    def _queued(self, cpu: Cpu, wrec: int, site: int, callers: list, t0: int, m: bool, me: int, wid: int,
                read: bool) -> None:
        """queue_read_lock_slowpath / queue_write_lock_slowpath (xen/common/rwlock.c, 4.19)."""
        mv = self.mv
        self._queue(cpu, wrec, site, callers, t0, m)  # Xen: _spin_lock(&lock->lock)
        mv[self.o_qowner] = me
        try:
            if read:
                self._spin(cpu, wrec, WRITER, site, callers, t0, m, lambda: not self._cnts() & QW_WMASK)
                if self._cnts_add(QR_BIAS) & QW_WMASK == QW_LOCKED:  # a writer stole it meanwhile
                    self._spin(cpu, wrec, UNLOCK, site, callers, t0, m, self._not_write_locked)
            elif not (self._cnts() == 0 and self._cnts_cas(0, QW_LOCKED | wid)):
                while True:  # announce the writer, or wait for a previous writer to go
                    self._spin(cpu, wrec, WRITER, site, callers, t0, m, lambda: not self._cnts() & QW_WMASK)
                    c = self._cnts()
                    if not c & QW_WMASK and self._cnts_cas(c, c | QW_WAITING):
                        break
                while True:  # when no more readers, set the locked flag
                    self._spin(cpu, wrec, READERS, site, callers, t0, m, lambda: self._cnts() == QW_WAITING)
                    if self._cnts_cas(QW_WAITING, QW_LOCKED | wid):
                        break
        finally:
            mv[self.o_qowner] = NO_OWNER
            self.sem.release()  # Xen: spin_unlock(&lock->lock)

    def _queue(self, cpu: Cpu, wrec: int, site: int, callers: list, t0: int, m: bool) -> None:
        """Take the wait queue: a blocking semaphore wait (free mode) or the scheduler's."""
        try:
            self.sem.acquire(0)
            return
        except _Busy:
            pass
        mv = self.mv
        publish_wait(mv, wrec, self.index, QUEUE, site, t0, callers)
        try:
            self._sem_wait(cpu, self.sem.acquire, m)
        finally:
            withdraw_wait(mv, wrec)

    def _spin(self, cpu: Cpu, wrec: int, mode: int, site: int, callers: list, t0: int, m: bool, ready) -> None:
        """Xen's ``while ( cond ) cpu_relax();`` with the wait published in ``mode``."""
        if ready():
            return
        mv = self.mv
        publish_wait(mv, wrec, self.index, mode, site, t0, callers)
        sched = cpu.sched
        try:
            if sched is not None:
                while not ready():
                    sched.block(cpu, self.index, not m)
                return
            n = 0
            while not ready():
                n += 1
                if n < 20:
                    os.sched_yield()
                else:
                    time.sleep(min(200e-6, 10e-6 * (n - 19)))
                cpu.check_stop()
                if not m and (cpu.irq_pending or cpu.irqs_waiting()):
                    cpu.run_irqs()
        finally:
            withdraw_wait(mv, wrec)


def assert_write_held(lock: RwLock) -> bool:
    """Xen's ``ASSERT(rw_is_write_locked(&lock))``, checked strictly: by *this* CPU."""
    if lock.held_by_me():
        return True
    return assert_failed(lock, "rw_is_write_locked(lock)")
