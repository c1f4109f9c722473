"""``old-vcpu-lock`` and ``old-vcpu-lock-recheck``: Stefano Stabellini's proposal 3 in the
thread (xen-devel Dec 2016, "xen/arm: fix rank/vgic locks inversion bug") on RELEASE-4.8.0
(:mod:`.xen_4_8_0`): rank->vcpu guarded by the vgic lock of the pre-migration vCPU, whose
id ``pending_irq`` keeps (``p->old_vcpu``).

What it changes:

- rank->vcpu is written inside vgic_migrate_irq under a vgic lock (not by
  vgic_store_itargetsr): the old vCPU's, or, for a migration already in progress,
  ``p->old_vcpu``'s; the vgic_migrate_irq that sets MIGRATING hands the guard to the vCPU
  whose LR holds the IRQ;
- gic_update_one_lr's MIGRATING tail reads rank->vcpu under its own vgic lock (the guard)
  and makes the target the new ``p->old_vcpu``.

``old-vcpu-lock`` renders it with 4.8's unlocked MIGRATING test and ``p->old_vcpu`` read
before its lock is taken, no re-check; ``old-vcpu-lock-recheck`` as it would have to be
written: lock ``p->old_vcpu``, re-check the owner and MIGRATING under it, retry. The rest is
4.8.0's.
"""

from __future__ import annotations

from typing import Any

from ...spinlock import spin_lock_irqsave, spin_unlock_irqrestore
from .common import GIC_IRQ_GUEST_MIGRATING, test_bit
from .xen_4_8_0 import Xen480


class OldVcpuLock(Xen480):
    """RELEASE-4.8.0 + proposal 3, with 4.8's unlocked MIGRATING test and no re-check."""

    name = "old-vcpu-lock"
    base = Xen480.base + " + proposal 3"

    def _write_target_after_migrate(self, rank: Any, off: int, virq: int, old: int, new: int,
                                    moved: bool) -> None:
        """vgic-v2.c ``vgic_store_itargetsr`` (RELEASE-4.8.0 + proposal 3): no write after
        vgic_migrate_irq, which wrote rank->vcpu under the guarding vgic lock."""

    def _migration_in_progress(self, old: int, new: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0 + proposal 3), MIGRATING already set (the
        unlocked test): rank->vcpu written under ``p->old_vcpu``'s vgic lock, read before the
        lock is taken."""
        owner = p.old_vcpu if p.old_vcpu >= 0 else old
        ol = self.d.vcpus[owner].lock
        flags = spin_lock_irqsave(ol)
        self._write_target(virq, new)
        spin_unlock_irqrestore(ol, flags)

    def _write_target_under_vgic_lock(self, virq: int, p: Any, new: int, guard: int) -> None:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0 + proposal 3): rank->vcpu written under
        the old vCPU's vgic lock; ``p->old_vcpu = guard``: the new target, or, once MIGRATING
        is set, the vCPU whose LR holds the IRQ guards the target now."""
        self._write_target(virq, new)
        p.old_vcpu = guard

    def _migrating_on_eoi(self, v: int, virq: int, p: Any) -> None:
        """gic.c ``gic_update_one_lr`` (RELEASE-4.8.0 + proposal 3), the MIGRATING tail:
        ``test_and_clear_bit``, rank->vcpu read under our vgic lock (the guard), handed over
        (``p->old_vcpu`` = the target), irq_set_affinity."""
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):  # test_and_clear_bit (4.8.0)
            p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
            t = self.vgic_rank_irq(virq).vcpu[self.rank_offset(virq)]  # guarded by our vgic lock
            p.old_vcpu = t
            self.trace("eoi_migrate", virq, v, t)
            self.irq_set_affinity(virq, self.processor(t))


class OldVcpuLockRecheck(OldVcpuLock):
    """Proposal 3 re-checked under the lock."""

    name = "old-vcpu-lock-recheck"
    base = Xen480.base + " + proposal 3, re-checked under the lock"

    def _migrate_lock_old(self, old: int, new: int, virq: int, p: Any) -> tuple[int, int] | bool:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0 + proposal 3, re-checked): takes
        ``p->old_vcpu``'s vgic lock (:meth:`_lock_old_vcpu_recheck`) and tests MIGRATING under
        it: set, rank->vcpu is written for the EOI on that vCPU to read; else the migration
        goes on with the locked owner as the old vCPU."""
        vold, flags, old = self._lock_old_vcpu_recheck(virq, old)
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            self._write_target(virq, new)  # the EOI on p->old_vcpu will read it
            spin_unlock_irqrestore(vold.lock, flags)
            return True
        return old, flags

    def _lock_old_vcpu_recheck(self, virq: int, old: int) -> tuple[Any, int, int]:
        """Proposal 3 as the thread left it to write (variant old-vcpu-lock-recheck): read
        ``p->old_vcpu``, take its vgic lock, re-check that it is still the owner, else drop
        it and retry. Returns (the locked vCPU's state, flags, its id)."""
        p = self.irq_to_pending(virq)
        while True:
            owner = p.old_vcpu if p.old_vcpu >= 0 else old
            vo = self.d.vcpus[owner]
            flags = spin_lock_irqsave(vo.lock)
            if (p.old_vcpu if p.old_vcpu >= 0 else old) == owner:
                return vo, flags, owner
            spin_unlock_irqrestore(vo.lock, flags)
            self.trace("migrate_retry", virq, owner, p.old_vcpu)
