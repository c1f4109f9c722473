"""Design ``irq-unsafe``: Xen 4.11's new VGIC with a plain ``spin_lock(&irq->irq_lock)``
outside interrupt context (PROTOCOLS.md section 003's buggy variant, inferred: the rule the
comment at the top of vgic.c states, "we have to use the spin_lock_irqsave/
spin_unlock_irqrestore versions of outer spinlocks for any lock that may be taken while
injecting an interrupt", broken in the guest's MMIO handlers and the re-check's retry).
``vgic_inject_irq`` still runs in interrupt context with ``spin_lock_irqsave``: lockdep sees
the class ``&irq->irq_lock`` taken in hardirq context and with interrupts enabled
(inconsistent lock state), and an injection of the same IRQ that interrupts its own pCPU's
MMIO handler spins on the lock its task holds: the self-deadlock.

Locking order: as ``upstream``.
"""

from __future__ import annotations

from typing import Any

from ...spinlock import spin_lock
from .upstream import Upstream


class IrqUnsafe(Upstream):
    """4.11 with ``spin_lock`` for ``irq_lock`` in task context."""

    name = "irq-unsafe"

    def irq_lock_task(self, irq: Any) -> int | None:
        """``spin_lock(&irq->irq_lock)`` in task context (interrupts stay enabled); an ISR
        still uses ``spin_lock_irqsave``. Returns None (no flags)."""
        if self.cpu.in_irq():
            return self.lock_irqsave(irq.irq_lock)
        spin_lock(irq.irq_lock)
        self.cpu.yield_point()  # an interrupt may arrive while it is held
        return None

    def irq_lock_retry(self, irq: Any) -> int | None:
        return self.irq_lock_task(irq)
