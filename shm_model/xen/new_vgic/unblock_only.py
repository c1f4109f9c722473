"""Design ``unblock-only``: "[Xen-devel,RFC,22/49] ARM: new VGIC: Implement virtual IRQ
injection" (Andre Przywara, 9 Feb 2018), as posted: the already-queued path of
``vgic_queue_irq_unlock`` calls ``vcpu_unblock(vcpu)`` only. Julien Grall's review (12 Feb
2018): "vcpu_unblock will only "unblock" a vCPU that is blocked. It won't notify a running
vCPU." An IRQ that becomes pending again while it is on the list of a vCPU running in the
guest (an edge IRQ re-fired while its first instance is active in an LR) waits for that
vCPU's next exit for another reason: a lost wake-up while the guest spins. Fixed before the
merge (4.11's ``vcpu_kick`` on both paths).

Locking order: as ``upstream`` (the RFC's comment at the top of vgic.c is KVM's, with
``kvm->lock`` and the ITS mutexes above ``ap_list_lock``; Julien asked for Xen's).
"""

from __future__ import annotations

from .common import BLOCKED
from .upstream import Upstream


class UnblockOnly(Upstream):
    """RFC 22/49 as posted: ``vcpu_unblock`` on the already-queued path."""

    name = "unblock-only"

    def kick_already_queued(self, vcpu: int, intid: int) -> None:
        """RFC 22/49's step 2 (vgic.c as posted): ``if ( vcpu ) vcpu_unblock(vcpu);`` (no
        event-check IPI for a vCPU running in the guest)."""
        was_running = int(self.s.vcpus[vcpu].state != BLOCKED)
        self.s.unblock_only += 1
        self.trace("unblock_only", intid, vcpu, was_running)
        self.vcpu_unblock(vcpu)
