"""``unlocked-target-read`` and ``unlocked-target-read-assert``: Stefano Stabellini's patch in
the thread (xen-devel Dec 2016, "xen/arm: fix rank/vgic locks inversion bug") on
RELEASE-4.8.0 (:mod:`.xen_4_8_0`).

What the patch changes:

- rank->vcpu is written inside vgic_migrate_irq, under the old vCPU's vgic lock (also when
  a migration is already in progress), not by vgic_store_itargetsr after it;
- gic_update_one_lr's MIGRATING tail reads the target with ``__vgic_get_target_vcpu``
  without the rank lock: no vgic -> rank edge, but Stefano's race (a second migration
  between the read and irq_set_affinity leaves desc->affinity at an intermediate pCPU);
- ``__vgic_get_target_vcpu`` loses its ASSERT(spin_is_locked(&rank->lock))
  (``unlocked-target-read``); ``unlocked-target-read-assert`` keeps it, as Julien asked, and
  the unlocked read in gic_update_one_lr fails it.

The rest is 4.8.0's (its priority read under the rank lock included).
"""

from __future__ import annotations

from typing import Any

from ...spinlock import spin_lock_irqsave, spin_unlock_irqrestore
from .common import GIC_IRQ_GUEST_MIGRATING, test_bit
from .xen_4_8_0 import Xen480


class UnlockedTargetRead(Xen480):
    """RELEASE-4.8.0 + the thread's patch (ASSERT dropped)."""

    name = "unlocked-target-read"
    base = Xen480.base + " + the thread's patch"

    def _vgic_get_target_vcpu(self, virq: int) -> int:
        """vgic.c ``__vgic_get_target_vcpu`` (RELEASE-4.8.0 + the thread's patch): the
        ASSERT(spin_is_locked(&rank->lock)) dropped."""
        rank = self.vgic_rank_irq(virq)
        return rank.vcpu[self.rank_offset(virq)]

    def _write_target_after_migrate(self, rank: Any, off: int, virq: int, old: int, new: int,
                                    moved: bool) -> None:
        """vgic-v2.c ``vgic_store_itargetsr`` (RELEASE-4.8.0 + the thread's patch): no write
        after vgic_migrate_irq, which wrote rank->vcpu under a vgic lock."""

    def _migration_in_progress(self, old: int, new: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0 + the thread's patch), MIGRATING already
        set (the unlocked test): rank->vcpu written under the old vCPU's vgic lock."""
        ol = self.d.vcpus[old].lock
        flags = spin_lock_irqsave(ol)
        self._write_target(virq, new)
        spin_unlock_irqrestore(ol, flags)

    def _write_target_under_vgic_lock(self, virq: int, p: Any, new: int, guard: int) -> None:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0 + the thread's patch): rank->vcpu written
        under the old vCPU's vgic lock (the model also notes ``guard`` in ``p->old_vcpu``, as
        proposal 3 does; nothing here reads it)."""
        self._write_target(virq, new)
        p.old_vcpu = guard

    def _migrating_on_eoi(self, v: int, virq: int, p: Any) -> None:
        """gic.c ``gic_update_one_lr`` (RELEASE-4.8.0 + the thread's patch), the MIGRATING
        tail: ``test_and_clear_bit``, the target by ``__vgic_get_target_vcpu`` without the rank
        lock, irq_set_affinity."""
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):  # test_and_clear_bit (4.8.0)
            p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
            t = self._vgic_get_target_vcpu(virq)  # unlocked-read: the thread's patch
            self.trace("eoi_migrate", virq, v, t)
            self.irq_set_affinity(virq, self.processor(t))


class UnlockedTargetReadAssert(UnlockedTargetRead):
    """The thread's patch with the ASSERT kept."""

    name = "unlocked-target-read-assert"
    base = Xen480.base + " + the thread's patch, ASSERT kept"

    #: vgic.c ``__vgic_get_target_vcpu``: RELEASE-4.8.0's, ASSERT(spin_is_locked(&rank->lock)) kept
    _vgic_get_target_vcpu = Xen480._vgic_get_target_vcpu
