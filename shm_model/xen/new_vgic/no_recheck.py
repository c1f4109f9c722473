"""Design ``no-recheck``: Xen 4.11's ``vgic_queue_irq_unlock`` with step 4 (the re-check
under both locks) left out (PROTOCOLS.md section 003's buggy variant, inferred: "Did
something change behind our backs?" is what keeps an IRQ on one list). Between dropping the
irq lock and taking the ap_list lock, another CPU may queue the same IRQ (two injections, an
injection and an ISPENDR/ISENABLER) or retarget it; the late one adds it to a list again:
on two lists, or twice on one (a corrupted list). Caught by ``one-ap-list``.

Locking order: as ``upstream``.
"""

from __future__ import annotations

from typing import Any

from ...spinlock import assert_held, spin_lock, spin_unlock
from .common import NO_VCPU
from .upstream import Upstream


class NoRecheck(Upstream):
    """4.11 without the re-check of ``vgic_queue_irq_unlock``."""

    name = "no-recheck"

    def vgic_queue_irq_unlock(self, irq: Any, flags: int | None) -> None:
        """``vgic_queue_irq_unlock`` (vgic.c, 4.11) without step 4: whatever the oracle said
        before the irq lock was dropped is trusted after it is taken again."""
        assert_held(irq.irq_lock)
        vcpu = self.vgic_target_oracle(irq)
        if irq.vcpu != NO_VCPU or vcpu == NO_VCPU:
            self.unlock_restore(irq.irq_lock, flags)
            if vcpu != NO_VCPU:
                self.trace("queued_already", irq.intid, irq.vcpu, vcpu)
                self.vcpu_kick(vcpu, irq.intid)
            return
        self.unlock_restore(irq.irq_lock, flags)
        self.cpu.yield_point()
        vc = self.s.vcpus[vcpu]
        flags = self.lock_irqsave(vc.ap_list_lock)
        spin_lock(irq.irq_lock)
        # (no re-check)
        self.queue_add(irq, vcpu)
        spin_unlock(irq.irq_lock)
        self.unlock_irqrestore(vc.ap_list_lock, flags)
        self.vcpu_kick(vcpu, irq.intid)
