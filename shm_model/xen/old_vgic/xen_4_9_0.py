"""``xen-4.9.0``: RELEASE-4.9.0's old vGIC, RELEASE-4.8.0 (:mod:`.xen_4_8_0`) with:

- 378384399e: ``vgic_get_target_vcpu`` reads ``rank->vcpu`` with ``read_atomic``, without
  the rank lock (vgic_enable_irqs/vgic_disable_irqs call it too); vgic_store_itargetsr
  ``write_atomic``s the new target only if vgic_migrate_irq returned true;
- 91ef736493: vgic_migrate_irq returns bool and refuses while MIGRATING ("irq %u migration
  failed: requested while in progress"), the test still made without a lock;
- 31bc6a93a0: gic_update_one_lr's MIGRATING tail: ``smp_wmb()``, ``test_bit``, target,
  irq_set_affinity, then ``clear_bit`` (MIGRATING stays set until the affinity is written);
- 408f16ddb3 "ARM: vGIC: avoid rank lock when reading priority": vgic_get_virq_priority
  reads with ``ACCESS_ONCE``, no rank lock ("It seems like this code path has never been
  exercised before"): no lr_pending self-deadlock, no desc -> rank edge;
- 471d9ca43c (XSA-223): gic_raise_inflight_irq returns when the IRQ is disabled.

:class:`Backport408f16ddb3` is 408f16ddb3 alone, the mixin ``--backport 408f16ddb3`` applies
on top of a 4.8-based design (``make_vgic``).
"""

from __future__ import annotations

from typing import Any

from ...spinlock import spin_lock_irqsave
from .common import GIC_IRQ_GUEST_ENABLED, GIC_IRQ_GUEST_MIGRATING, LPI_OFFSET, test_bit
from .xen_4_8_0 import Xen480


class Xen490(Xen480):
    """RELEASE-4.9.0: 4.8.0 + 378384399e, 31bc6a93a0, 91ef736493, 408f16ddb3, 471d9ca43c."""

    name = "xen-4.9.0"
    base = "RELEASE-4.9.0 (378384399e, 31bc6a93a0, 91ef736493, 408f16ddb3, 471d9ca43c)"

    # -- targets and priority ---------------------------------------------------------------------
    def vgic_get_target_vcpu(self, virq: int) -> int:
        """vgic.c ``vgic_get_target_vcpu`` from 378384399e (stable-4.8, 4.9.0, 4.10.0):
        ``read_atomic(&rank->vcpu[..])``, no lock."""
        rank = self.vgic_rank_irq(virq)
        return rank.vcpu[self.rank_offset(virq)]  # read_atomic()

    def vgic_get_virq_priority(self, virq: int) -> int:
        """vgic.c ``vgic_get_virq_priority``, 408f16ddb3 (4.9.0) / 43208a9cb4 (4.10.0):
        ``ACCESS_ONCE(rank->priority[..])``, no rank lock; an LPI's is
        ``vgic_v3_lpi_get_priority`` ("LPIs don't have a rank", 4.10.0)."""
        if virq >= LPI_OFFSET:
            return self.lpi_get_priority(virq)  # "LPIs don't have a rank" (4.10.0)
        rank = self.vgic_rank_irq(virq)
        return rank.priority[self.rank_offset(virq)]  # ACCESS_ONCE()

    def _priority_before_vgic_lock(self, virq: int) -> int | None:
        """vgic.c ``vgic_vcpu_inject_irq`` with 408f16ddb3: 4.9.0 reads the priority
        (``ACCESS_ONCE``) before the vgic lock, 4.10.0 under it after the inflight test
        (5f66da6590). Either is a read without a lock of a priority the guest never writes
        here, so the model reads it where 4.10.0 does: nothing before the lock (None)."""
        return None

    # -- ITARGETSR ----------------------------------------------------------------------------------
    def _write_target_after_migrate(self, rank: Any, off: int, virq: int, old: int, new: int,
                                    moved: bool) -> None:
        """vgic-v2.c ``vgic_store_itargetsr`` from 378384399e (stable-4.8, 4.9.0, 4.10.0):
        ``if ( vgic_migrate_irq(..) ) write_atomic(&rank->vcpu[offset], new_target)``, after
        vgic_migrate_irq returned; a refused migration leaves the target."""
        if moved:
            rank.vcpu[off] = new  # write_atomic(), after vgic_migrate_irq returned
        else:
            self.d.refused_migrations += 1  # "migration failed: requested while in progress"
            self.trace("migrate_refused", virq, old, new)

    def _migrate_lock_old(self, old: int, new: int, virq: int, p: Any) -> tuple[int, int] | bool:
        """vgic.c ``vgic_migrate_irq`` (91ef736493: bool; stable-4.8, 4.9.0): MIGRATING is
        tested without a lock and refused (gprintk "irq %u migration failed: requested while
        in progress"); else old's vgic lock (irqsave)."""
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            return False  # gprintk "irq %u migration failed: requested while in progress"
        return old, spin_lock_irqsave(self.d.vcpus[old].lock)

    # -- ISENABLER / ICENABLER ------------------------------------------------------------------
    def _target_under_rank_lock(self, virq: int) -> int:
        """vgic.c ``vgic_enable_irqs``/``vgic_disable_irqs`` from 378384399e (stable-4.8,
        4.9.0, 4.10.0): ``v_target = vgic_get_target_vcpu(v, irq)`` (read_atomic)."""
        return self.vgic_get_target_vcpu(virq)

    # -- list registers ---------------------------------------------------------------------------
    def _skip_disabled(self, p: Any) -> bool:
        """gic.c ``gic_raise_inflight_irq`` from 471d9ca43c (XSA-223; stable-4.8, 4.9.0,
        4.10.0): "Don't try to update the LR if the interrupt is disabled"."""
        return not test_bit(p.status, GIC_IRQ_GUEST_ENABLED)

    def _migrating_on_eoi(self, v: int, virq: int, p: Any) -> None:
        """gic.c ``gic_update_one_lr``, the MIGRATING tail from 31bc6a93a0 (stable-4.8,
        4.9.0, 4.10.0): ``list_del_init(&p->inflight); smp_wmb();`` then, if MIGRATING:
        vgic_get_target_vcpu (read_atomic), irq_set_affinity, ``clear_bit``."""
        # 31bc6a93a0 (stable-4.8, 4.9.0, 4.10.0): list_del_init(&p->inflight); smp_wmb();
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            t = self.vgic_get_target_vcpu(virq)
            self.trace("eoi_migrate", virq, v, t)
            self.irq_set_affinity(virq, self.processor(t))
            p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)


class Backport408f16ddb3:
    """``--backport 408f16ddb3`` (a mixin, applied before the design's class by ``make_vgic``):
    4.9.0's vgic_get_virq_priority, ``ACCESS_ONCE`` without the rank lock, and no priority
    read before the vgic lock — removes the 4.8 lr_pending self-deadlock and the desc -> rank
    edge of the priority read."""

    vgic_get_virq_priority = Xen490.vgic_get_virq_priority
    _priority_before_vgic_lock = Xen490._priority_before_vgic_lock
