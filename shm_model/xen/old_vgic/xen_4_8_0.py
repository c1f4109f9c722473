"""``rank-lock-inversion``: RELEASE-4.8.0 (xen/arch/arm/vgic.c, vgic-v2.c, gic.c), the code
the thread ("xen/arm: fix rank/vgic locks inversion bug", Dec 2016) is about, and the base
of every other design (4.9.0 and the thread's patches are 4.8.0 + commits).

What 4.8.0 does where later versions differ:

- ``vgic_get_target_vcpu`` takes the rank lock (irqsave) and ``__vgic_get_target_vcpu``
  ASSERTs it; gic_update_one_lr calls vgic_get_target_vcpu with the vgic lock held: vgic ->
  rank, against the store path's rank -> vgic (the thread's bug);
- ``vgic_get_virq_priority`` takes the rank lock, and vgic_vcpu_inject_irq calls it before
  the vgic lock: vgic_migrate_irq's lr_pending branch, under vgic_store_itargetsr's rank
  lock, self-deadlocks (fixed by 408f16ddb3); do_IRQ's desc->lock -> rank->lock meets
  vgic_enable_irqs/vgic_disable_irqs' rank->lock -> desc->lock;
- vgic_migrate_irq tests MIGRATING without a lock and returns as if done ("migration already
  in progress, no need to do anything"); vgic_store_itargetsr writes rank->vcpu after it
  under the rank lock;
- gic_update_one_lr's MIGRATING tail: ``test_and_clear_bit``, vgic_get_target_vcpu,
  irq_set_affinity;
- vgic_enable_irqs/vgic_disable_irqs: the target by ``__vgic_get_target_vcpu`` under the
  MMIO handler's rank lock, ENABLED set/cleared before the vgic lock, ``gic_remove_from_queues``
  taking it;
- gic_raise_inflight_irq does not test ENABLED (XSA-223, fixed by 471d9ca43c).
"""

from __future__ import annotations

from typing import Any

from ...spinlock import assert_held, spin_lock_irqsave, spin_unlock_irqrestore
from .common import (GIC_IRQ_GUEST_ENABLED, GIC_IRQ_GUEST_MIGRATING, GIC_IRQ_GUEST_VISIBLE, INVALID_VCPU, OldVgic,
                     test_bit)


class Xen480(OldVgic):
    """RELEASE-4.8.0's old vGIC."""

    name = "rank-lock-inversion"
    base = "RELEASE-4.8.0 (xen/arch/arm/vgic.c, vgic-v2.c, gic.c)"

    # -- targets and priority ---------------------------------------------------------------------
    def _vgic_get_target_vcpu(self, virq: int) -> int:
        """vgic.c ``__vgic_get_target_vcpu`` (RELEASE-4.8.0): requires rank->lock, ASSERTed
        (the thread's patch drops the ASSERT: variant unlocked-target-read)."""
        rank = self.vgic_rank_irq(virq)
        assert_held(rank.lock)  # ASSERT(spin_is_locked(&rank->lock))
        return rank.vcpu[self.rank_offset(virq)]

    def vgic_get_target_vcpu(self, virq: int) -> int:
        """vgic.c ``vgic_get_target_vcpu`` (RELEASE-4.8.0): takes rank->lock (irqsave, "takes
        the rank lock") around ``__vgic_get_target_vcpu``."""
        rank = self.vgic_rank_irq(virq)
        flags = spin_lock_irqsave(rank.lock)
        v = self._vgic_get_target_vcpu(virq)
        spin_unlock_irqrestore(rank.lock, flags)
        return v

    def vgic_get_virq_priority(self, virq: int) -> int:
        """vgic.c ``vgic_get_virq_priority`` (RELEASE-4.8.0, and stable-4.8, which lacks
        408f16ddb3): takes rank->lock (irqsave, ``vgic_lock_rank``)."""
        rank = self.vgic_rank_irq(virq)
        flags = spin_lock_irqsave(rank.lock)
        prio = rank.priority[self.rank_offset(virq)]
        spin_unlock_irqrestore(rank.lock, flags)
        return prio

    #: vgic.c ``vgic_vcpu_inject_irq`` (RELEASE-4.8.0, stable-4.8): ``priority =
    #: vgic_get_virq_priority(v, virq)`` before ``spin_lock_irqsave(&v->arch.vgic.lock)``: the
    #: rank lock, taken before the vgic lock (the function itself, so that a report's stack
    #: shows vgic_vcpu_inject_irq calling it; a class that replaces vgic_get_virq_priority
    #: must replace this too: XenStable48, Backport408f16ddb3)
    _priority_before_vgic_lock = vgic_get_virq_priority

    # -- ITARGETSR ----------------------------------------------------------------------------------
    def _write_target_after_migrate(self, rank: Any, off: int, virq: int, old: int, new: int,
                                    moved: bool) -> None:
        """vgic-v2.c ``vgic_store_itargetsr`` (RELEASE-4.8.0): ``rank->vcpu[offset] =
        new_target`` after vgic_migrate_irq, under the rank lock (it returns nothing)."""
        rank.vcpu[off] = new

    def _migrate_lock_old(self, old: int, new: int, virq: int, p: Any) -> tuple[int, int] | bool:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0: void): the MIGRATING test is made
        without a lock and a migration in progress is taken as done ("migration already in
        progress, no need to do anything": :meth:`_migration_in_progress`); else old's vgic
        lock (irqsave)."""
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            self._migration_in_progress(old, new, virq, p)
            return True
        return old, spin_lock_irqsave(self.d.vcpus[old].lock)

    def _migration_in_progress(self, old: int, new: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0), MIGRATING already set (an unlocked
        test): "migration already in progress, no need to do anything"."""

    def _write_target_under_vgic_lock(self, virq: int, p: Any, new: int, guard: int) -> None:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.8.0): rank->vcpu is not written here
        (vgic_store_itargetsr writes it under the rank lock)."""

    # -- ISENABLER / ICENABLER ------------------------------------------------------------------
    def _target_under_rank_lock(self, virq: int) -> int:
        """vgic.c ``vgic_enable_irqs``/``vgic_disable_irqs`` (RELEASE-4.8.0): ``v_target =
        __vgic_get_target_vcpu(v, irq)`` under the MMIO handler's rank lock."""
        return self._vgic_get_target_vcpu(virq)

    def _enable_and_raise(self, t: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_enable_irqs`` (RELEASE-4.8.0-4.9.0): ``set_bit(GIC_IRQ_GUEST_ENABLED)``
        before the target's vgic lock, then, under it (irqsave), gic_raise_guest_irq if
        inflight and not VISIBLE."""
        vt = self.d.vcpus[t]
        p.status |= 1 << GIC_IRQ_GUEST_ENABLED
        flags = spin_lock_irqsave(vt.lock)
        if p.inflight != INVALID_VCPU and not test_bit(p.status, GIC_IRQ_GUEST_VISIBLE):
            self.gic_raise_guest_irq(t, virq)
        spin_unlock_irqrestore(vt.lock, flags)

    def _disable_and_unqueue(self, t: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_disable_irqs`` (RELEASE-4.8.0-4.9.0): ``clear_bit(GIC_IRQ_GUEST_ENABLED)``
        without the vgic lock, then ``gic_remove_from_queues(v_target, irq)``, which takes it."""
        p.status &= ~(1 << GIC_IRQ_GUEST_ENABLED)
        self.gic_remove_from_queues(t, virq)

    def gic_remove_from_queues(self, v: int, virq: int) -> None:
        """gic.c ``gic_remove_from_queues(v, irq)`` (4.8.0, stable-4.8, 4.9.0; called by
        vgic_disable_irqs): takes v's vgic lock (irqsave) and unlinks lr_queue only."""
        vv = self.d.vcpus[v]
        flags = spin_lock_irqsave(vv.lock)
        self._lr_queue_del(virq)
        spin_unlock_irqrestore(vv.lock, flags)

    # -- list registers ---------------------------------------------------------------------------
    def _skip_disabled(self, p: Any) -> bool:
        """gic.c ``gic_raise_inflight_irq`` (RELEASE-4.8.0): no ENABLED test (XSA-223): a
        disabled inflight IRQ's ``p->lr`` is used."""
        return False

    def _migrating_on_eoi(self, v: int, virq: int, p: Any) -> None:
        """gic.c ``gic_update_one_lr`` (RELEASE-4.8.0), the MIGRATING tail, vgic lock held:
        ``test_and_clear_bit(GIC_IRQ_GUEST_MIGRATING)``, ``vgic_get_target_vcpu`` — which
        takes rank->lock under the vgic lock: the inversion — and irq_set_affinity."""
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):  # test_and_clear_bit (4.8.0)
            p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
            t = self.vgic_get_target_vcpu(virq)  # takes rank->lock under the vgic lock
            self.trace("eoi_migrate", virq, v, t)
            self.irq_set_affinity(virq, self.processor(t))
