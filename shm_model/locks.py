"""Lock kinds by name: the one place that maps a declaration's ``kind`` to its primitive.

A new lock kind adds its primitive module (fast path in C, slow paths in Python), its
record rules in :mod:`shm_model.records`, its field in :mod:`shm_model.layout`, and one
line here; the engine builds every lock through :func:`make_lock`.
"""

from __future__ import annotations

from typing import Any

import posix_ipc

from .arena import Geometry
from .rwlock import MAX_RW_INDEX, RwLock
from .spinlock import MAX_LOCKS, Lock

__all__ = ["make_lock", "MAX_LOCKS", "MAX_RW_INDEX", "KINDS"]

KINDS = ("spin", "rw")


def make_lock(decl: Any, cls: int, sem: posix_ipc.Semaphore, mv: memoryview, geo: Geometry) -> Lock | RwLock:
    """The lock object of one declared instance (``shm_model.layout.LockDecl``)."""
    kind = getattr(decl, "kind", "spin")
    if kind == "rw":
        return RwLock(decl.index, cls, decl.cls, decl.path, sem, mv, geo,
                      recursive_read=getattr(decl, "recursive_read", False))
    if kind != "spin":
        raise ValueError(f"{decl.path}: unknown lock kind {kind!r}")
    return Lock(decl.index, cls, decl.cls, decl.path, sem, mv, geo)
