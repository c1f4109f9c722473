"""``xen-stable-4.8``: the stable-4.8 branch head, RELEASE-4.8.0 + c75fe6473b, 9e6b2ddf33,
125e4d4a8d, 670bb9dd9e — the backports of 378384399e, 31bc6a93a0, 91ef736493 and 471d9ca43c
— but not of 408f16ddb3: 4.9.0's vGIC (:mod:`.xen_4_9_0`) with 4.8.0's priority read.

What it changes against 4.9.0: vgic_get_virq_priority still takes the rank lock and
vgic_vcpu_inject_irq still calls it before the vgic lock (RELEASE-4.8.0's code), so the
lr_pending self-deadlock (vgic_migrate_irq -> vgic_vcpu_inject_irq under
vgic_store_itargetsr's rank lock) and do_IRQ's desc -> rank edge remain on the 4.8 branch.
"""

from __future__ import annotations

from .xen_4_8_0 import Xen480
from .xen_4_9_0 import Xen490


class XenStable48(Xen490):
    """stable-4.8: 4.9.0's old vGIC without 408f16ddb3."""

    name = "xen-stable-4.8"
    base = ("stable-4.8 (4.8.0 + c75fe6473b, 9e6b2ddf33, 125e4d4a8d, 670bb9dd9e: the backports "
            "of 378384399e, 31bc6a93a0, 91ef736493, 471d9ca43c; not 408f16ddb3)")

    #: vgic.c ``vgic_get_virq_priority`` and ``vgic_vcpu_inject_irq``'s priority read before
    #: the vgic lock: RELEASE-4.8.0's (408f16ddb3 never backported to stable-4.8)
    vgic_get_virq_priority = Xen480.vgic_get_virq_priority
    _priority_before_vgic_lock = Xen480.vgic_get_virq_priority
