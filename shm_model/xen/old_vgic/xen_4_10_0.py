"""``xen-4.10.0`` (also ``upstream``, the newest old-vGIC release): RELEASE-4.10.0's old
vGIC, RELEASE-4.9.0 (:mod:`.xen_4_9_0`) with:

- 5f66da6590: vgic_migrate_irq tests MIGRATING under the old vCPU's vgic lock (and still
  refuses); vgic_enable_irqs/vgic_disable_irqs set/clear ENABLED and unlink lr_pending
  (``gic_remove_from_lr_pending``) under the target's vgic lock; vgic_vcpu_inject_irq reads
  the priority under the vgic lock, after the inflight test;
- 43208a9cb4: vgic_get_virq_priority without the rank lock (4.9.0's 408f16ddb3 on this
  branch; the same code here).

The LPI designs (``shm_model/xen/lpi/``) build on this class.
"""

from __future__ import annotations

from typing import Any

from ...spinlock import assert_held, spin_lock_irqsave, spin_unlock_irqrestore
from .common import GIC_IRQ_GUEST_ENABLED, GIC_IRQ_GUEST_MIGRATING, GIC_IRQ_GUEST_VISIBLE, INVALID_VCPU, test_bit
from .xen_4_9_0 import Xen490


class Xen4100(Xen490):
    """RELEASE-4.10.0: 4.9.0 + 5f66da6590, 43208a9cb4."""

    name = "xen-4.10.0"
    base = "RELEASE-4.10.0 (4.9.0's + 5f66da6590, 43208a9cb4)"

    def _migrate_lock_old(self, old: int, new: int, virq: int, p: Any) -> tuple[int, int] | bool:
        """vgic.c ``vgic_migrate_irq`` (RELEASE-4.10.0, 5f66da6590): takes old's vgic lock
        (irqsave), then tests MIGRATING under it and refuses."""
        vold = self.d.vcpus[old]
        flags = spin_lock_irqsave(vold.lock)
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            spin_unlock_irqrestore(vold.lock, flags)
            return False  # 5f66da6590: the test under the old vCPU's vgic lock
        return old, flags

    def _enable_and_raise(self, t: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_enable_irqs`` (RELEASE-4.10.0, 5f66da6590): takes the target's vgic
        lock (irqsave), then ``set_bit(GIC_IRQ_GUEST_ENABLED)`` and gic_raise_guest_irq if
        inflight and not VISIBLE, under it."""
        vt = self.d.vcpus[t]
        flags = spin_lock_irqsave(vt.lock)
        p.status |= 1 << GIC_IRQ_GUEST_ENABLED
        if p.inflight != INVALID_VCPU and not test_bit(p.status, GIC_IRQ_GUEST_VISIBLE):
            self.gic_raise_guest_irq(t, virq)
        spin_unlock_irqrestore(vt.lock, flags)

    def _disable_and_unqueue(self, t: int, virq: int, p: Any) -> None:
        """vgic.c ``vgic_disable_irqs`` (RELEASE-4.10.0, 5f66da6590): under the target's vgic
        lock (irqsave), ``clear_bit(GIC_IRQ_GUEST_ENABLED)`` and
        ``gic_remove_from_lr_pending(v_target, p)``."""
        vt = self.d.vcpus[t]
        flags = spin_lock_irqsave(vt.lock)
        p.status &= ~(1 << GIC_IRQ_GUEST_ENABLED)
        self.gic_remove_from_lr_pending(t, virq)
        spin_unlock_irqrestore(vt.lock, flags)

    def gic_remove_from_lr_pending(self, v: int, virq: int, p: Any = None) -> None:
        """gic.c ``gic_remove_from_lr_pending(v, p)`` (4.10.0): requires v's vgic lock."""
        assert_held(self.d.vcpus[v].lock)
        self._lr_queue_del(virq, p)
