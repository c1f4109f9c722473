"""Typed records of the arena, and the rules of each lock *kind*.

The detectors (stress/: the watchdog, the scheduler, metrics, lockdep) read locks and waits
through these, never by raw word positions, and ask a lock's kind who holds it and whom a
waiter waits for. A new lock kind is one class here (its record words, holders and
wait-for rule) plus its primitive module (its fast path and slow paths); the detectors need
no change.

Records:

- :class:`WaitRecord`: what a context is waiting for (lock, mode, site, since, a sequence
  number, the waiting site's callers); written by the waiter with interrupts masked, the
  lock index last (published) and first to go (withdrawn).
- :class:`LockRecord`: one lock's words (owner, class, site and time of the acquisition,
  kind, and the kind's own words).
- :class:`ReadHold`: one owner's read depth of a reader-writer lock, with its first site and
  time (readers are many: the lock record names only the writer).

Wait modes: a spinlock is waited for in mode ``SPIN`` (until its owner releases it). A
reader-writer lock (Xen's queued rwlock, xen/common/rwlock.c) is waited for in one of
four: ``QUEUE`` (for the lock's wait queue, held by the context at its head), ``WRITER``
(at the head, for the writer bits to clear: a reader, or a writer before it may announce
itself), ``UNLOCK`` (for a writer that holds the lock to unlock, a waiting one
notwithstanding: Xen's ``rspin_until_writer_unlock``, and a recursive reader's only wait),
``READERS`` (a writer that announced itself, for the readers to leave).

Nothing here takes a lock: readers of the arena see a moment's words, which the detectors
treat as such (a cycle is believed only when seen twice, or frozen under the scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass

from .arena import (L_CLASS, L_CNTS, L_KIND, L_OWNER, L_QOWNER, L_SINCE, L_SITE, LK_RW, LK_SPIN, NO_OWNER,
                    RH_DEPTH, RH_SINCE, RH_SITE, WAIT_CALLERS, Geometry)

# ---- wait records ---------------------------------------------------------------------------
WAIT_LOCK, WAIT_SITE, WAIT_SINCE, WAIT_SEQ, WAIT_MODE, WAIT_CALLER0 = range(6)
SPIN, QUEUE, WRITER, READERS, UNLOCK = range(5)
MODE_NAMES = {SPIN: "lock", QUEUE: "queue", WRITER: "writer", READERS: "readers", UNLOCK: "writer"}

# ---- Xen's rwlock cnts word (xen/include/xen/rwlock.h, 4.19) --------------------------------
QW_SHIFT = 14
QW_CPUMASK = (1 << QW_SHIFT) - 1  # the writer's CPU (here: the worker)
QW_WAITING = 1 << QW_SHIFT  # a writer is waiting
QW_LOCKED = 3 << QW_SHIFT  # a writer holds the lock
QW_WMASK = 3 << QW_SHIFT
QR_SHIFT = QW_SHIFT + 2
QR_BIAS = 1 << QR_SHIFT


@dataclass(frozen=True)
class WaitRecord:
    """One context's waiting record, read at one moment."""

    lock: int
    mode: int
    site: int
    since: int
    seq: int
    callers: tuple[int, ...]

    @staticmethod
    def read(mv, geo: Geometry, w: int, c: int) -> "WaitRecord | None":
        b = geo.wait_slot(w, c)
        lk = mv[b + WAIT_LOCK]
        if lk < 0:
            return None
        return WaitRecord(lk, mv[b + WAIT_MODE], mv[b + WAIT_SITE], mv[b + WAIT_SINCE], mv[b + WAIT_SEQ],
                          tuple(k for k in mv[b + WAIT_CALLER0:b + WAIT_CALLER0 + WAIT_CALLERS] if k))


def publish_wait(mv, base: int, lock: int, mode: int, site: int, since: int, callers: list[int]) -> None:
    """Publish a wait at record ``base`` (geo.wait_slot): the lock index last."""
    for k in range(WAIT_CALLERS):
        mv[base + WAIT_CALLER0 + k] = callers[k] if k < len(callers) else 0
    mv[base + WAIT_SITE] = site
    mv[base + WAIT_SINCE] = since
    mv[base + WAIT_MODE] = mode
    mv[base + WAIT_SEQ] += 1
    mv[base + WAIT_LOCK] = lock


def withdraw_wait(mv, base: int) -> None:
    mv[base + WAIT_LOCK] = -1


@dataclass(frozen=True)
class Holder:
    """One holder of a lock: owner id (worker * 2 + context), how (``lock``, ``write``,
    ``read``), the site and time of its (first) acquisition."""

    owner: int
    how: str
    site: int
    since: int


@dataclass(frozen=True)
class LockRecord:
    """One lock's record, read at one moment."""

    index: int
    kind: int
    owner: int
    cls: int
    site: int
    since: int
    cnts: int
    qowner: int

    @staticmethod
    def read(mv, geo: Geometry, index: int) -> "LockRecord":
        b = geo.lslot(index)
        return LockRecord(index, mv[b + L_KIND], mv[b + L_OWNER], mv[b + L_CLASS], mv[b + L_SITE],
                          mv[b + L_SINCE], mv[b + L_CNTS], mv[b + L_QOWNER])

    @property
    def rules(self) -> "type[SpinKind] | type[RwKind]":
        return KINDS.get(self.kind, SpinKind)


class SpinKind:
    """A spinlock: one owner; a waiter waits for it."""

    name = "spin"

    @staticmethod
    def holders(mv, geo: Geometry, rec: LockRecord) -> list[Holder]:
        return [Holder(rec.owner, "lock", rec.site, rec.since)] if rec.owner != NO_OWNER else []

    @staticmethod
    def waits_for(mv, geo: Geometry, rec: LockRecord, mode: int) -> list[int]:
        return [rec.owner] if rec.owner != NO_OWNER else []

    @staticmethod
    def can_go(mv, geo: Geometry, index: int, mode: int) -> bool:
        return mv[geo.lslot(index) + L_OWNER] == NO_OWNER


class RwKind:
    """Xen's queued reader-writer lock (xen/common/rwlock.c, 4.19): ``cnts`` counts readers
    and holds the writer's state and CPU; a wait queue (a spinlock in Xen, the lock's
    semaphore here) orders the slow paths. A waiting writer holds the queue and blocks new
    readers; a CPU that holds the write lock may take the read lock too."""

    name = "rw"

    @staticmethod
    def readers(mv, geo: Geometry, index: int) -> list[Holder]:
        out = []
        for owner in range(2 * geo.n_workers):
            b = geo.rhslot(index, owner)
            if mv[b + RH_DEPTH] > 0:
                out.append(Holder(owner, "read", mv[b + RH_SITE], mv[b + RH_SINCE]))
        return out

    @staticmethod
    def holders(mv, geo: Geometry, rec: LockRecord) -> list[Holder]:
        out = [Holder(rec.owner, "write", rec.site, rec.since)] if rec.owner != NO_OWNER else []
        return out + RwKind.readers(mv, geo, rec.index)

    @staticmethod
    def waits_for(mv, geo: Geometry, rec: LockRecord, mode: int) -> list[int]:
        if mode == QUEUE:
            return [rec.qowner] if rec.qowner != NO_OWNER else []
        if mode == READERS:
            return [h.owner for h in RwKind.readers(mv, geo, rec.index)]
        return [rec.owner] if rec.owner != NO_OWNER else []  # WRITER, UNLOCK

    @staticmethod
    def can_go(mv, geo: Geometry, index: int, mode: int) -> bool:
        b = geo.lslot(index)
        if mode == QUEUE:
            return mv[b + L_QOWNER] == NO_OWNER
        cnts = mv[b + L_CNTS]
        if mode == READERS:
            return cnts == QW_WAITING
        if mode == UNLOCK:
            return cnts & QW_WMASK != QW_LOCKED
        return not cnts & QW_WMASK  # WRITER


KINDS: dict[int, type[SpinKind] | type[RwKind]] = {LK_SPIN: SpinKind, LK_RW: RwKind}


def holders(mv, geo: Geometry, index: int) -> list[Holder]:
    rec = LockRecord.read(mv, geo, index)
    return rec.rules.holders(mv, geo, rec)


def waits_for(mv, geo: Geometry, wait: WaitRecord) -> list[int]:
    """The owners a waiting context waits for, by the kind's rule."""
    rec = LockRecord.read(mv, geo, wait.lock)
    return rec.rules.waits_for(mv, geo, rec, wait.mode)


def can_go(mv, geo: Geometry, index: int, mode: int) -> bool:
    """Would a context waiting for lock ``index`` in ``mode`` get past its wait now?"""
    return KINDS.get(mv[geo.lslot(index) + L_KIND], SpinKind).can_go(mv, geo, index, mode)
