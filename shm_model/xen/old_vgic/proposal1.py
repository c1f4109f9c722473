"""``drop-vgic-then-rank``: Stefano Stabellini's proposal 1 in the thread (xen-devel Dec
2016, "xen/arm: fix rank/vgic locks inversion bug"), his choice there, never merged, on
RELEASE-4.8.0 (:mod:`.xen_4_8_0`).

What it changes: gic_update_one_lr only notes the EOIed IRQs that are MIGRATING; after
gic_clear_lrs drops the vgic lock, each is handled under the rank lock (test_and_clear
MIGRATING, read the target, irq_set_affinity): the rank lock is never taken under the vgic
lock. The rest is 4.8.0's.
"""

from __future__ import annotations

from typing import Any

from ...cpu import Cpu
from ...spinlock import spin_lock_irqsave, spin_unlock_irqrestore
from .common import GIC_IRQ_GUEST_MIGRATING, test_bit
from .xen_4_8_0 import Xen480


class DropVgicThenRank(Xen480):
    """RELEASE-4.8.0 + proposal 1."""

    name = "drop-vgic-then-rank"
    base = Xen480.base + " + proposal 1"

    def __init__(self, d: Any, cpu: Cpu, trace: Any, **sched: Any) -> None:
        super().__init__(d, cpu, trace, **sched)
        self.deferred: list[int] = []  # MIGRATING irqs noted by gic_update_one_lr

    def gic_clear_lrs(self, v: int) -> None:
        """gic.c ``gic_clear_lrs`` (RELEASE-4.8.0 + proposal 1): 4.8.0's, then, the vgic lock
        dropped, the noted MIGRATING IRQs under rank->lock (:meth:`_migrate_deferred`)."""
        super().gic_clear_lrs(v)
        if self.deferred:
            self._migrate_deferred()

    def _migrating_on_eoi(self, v: int, virq: int, p: Any) -> None:
        """gic.c ``gic_update_one_lr`` (RELEASE-4.8.0 + proposal 1), the MIGRATING tail: the
        IRQ is noted, handled after the vgic lock is dropped."""
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            self.deferred.append(virq)  # handled after the vgic lock is dropped

    def _migrate_deferred(self) -> None:
        """Proposal 1 (drop-vgic-then-rank): after gic_clear_lrs dropped the vgic lock, for
        each noted IRQ: rank->lock, test_and_clear MIGRATING, read target, set affinity."""
        todo, self.deferred = self.deferred, []
        for virq in todo:
            p = self.irq_to_pending(virq)
            rank = self.vgic_rank_irq(virq)
            flags = spin_lock_irqsave(rank.lock)
            if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
                p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
                t = self._vgic_get_target_vcpu(virq)
                self.trace("eoi_migrate", virq, self.cpu.wid, t)
                self.irq_set_affinity(virq, self.processor(t))
            spin_unlock_irqrestore(rank.lock, flags)
