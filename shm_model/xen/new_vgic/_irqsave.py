"""Xen's ``spin_lock_irqsave``/``spin_unlock_irqrestore`` and ``local_irq_save``/``restore``
for the new VGIC model, counting the interrupt-disabled sections this pCPU's task is inside
(``irqsave_depth``): an interrupt handler that finds it non-zero ran inside one, which the
soft mask must never allow (the workload's ``irqsave-interrupted`` check).

Instrumentation, not model: registered with :func:`shm_model.sites.internal`, so a report
(and a lock's acquisition site) names the modelled function that takes the lock.
"""

from __future__ import annotations

from typing import Any

from ... import sites
from ...spinlock import spin_lock_irqsave, spin_unlock_irqrestore

sites.internal(__file__)


def lock_irqsave(m: Any, lock: Any) -> int:
    """``spin_lock_irqsave(lock, flags)``: counted once interrupts are off (the acquisition's
    scheduling point comes before, with interrupts as the caller has them)."""
    flags = spin_lock_irqsave(lock)
    m.irqsave_depth += 1
    return flags


def unlock_irqrestore(m: Any, lock: Any, flags: int) -> None:
    """``spin_unlock_irqrestore(lock, flags)``: uncounted first (pending interrupts run inside
    the restore when it enables them)."""
    m.irqsave_depth -= 1
    spin_unlock_irqrestore(lock, flags)


def irq_save(m: Any) -> int:
    """``local_irq_save(flags)``."""
    flags = m.cpu.local_irq_save()
    m.irqsave_depth += 1
    return flags


def irq_restore(m: Any, flags: int) -> None:
    """``local_irq_restore(flags)``."""
    m.irqsave_depth -= 1
    m.cpu.local_irq_restore(flags)
