"""``spin_lock(&obj->lock)`` for a lock inside a heap object, as KASAN sees it.

Instrumentation, not model: registered with :func:`shm_model.sites.internal`, so a report
(and a lock's acquisition site) names the modelled function that takes the lock.
"""

from __future__ import annotations

from typing import Any

from ... import sites
from ...spinlock import spin_lock

sites.internal(__file__)


def spin_lock_obj(obj: Any) -> None:
    """``spin_lock(&obj->lock)``: the address is computed (a checked access of the heap
    view), the CPU may wait, then the acquisition writes the lock word, which KASAN checks
    too: a second checked access after the wait catches an object freed while this CPU
    waited for (or raced to) its lock."""
    spin_lock(obj.lock)
    obj.lock  # noqa: B018 -- the acquisition's write to the object
