"""``null-entries-under-vgic-lock``: Andre Przywara's proposal in the thread (seed 004,
"having NULL pointer entries in the radix tree and letting Xen handle that is a valid
case"; his its/v8-pre branch, not in the mirror), and ``null-entries-as-posted``, the mail
alone.

Its locking order is common.py's (vcmd -> ITS -> its_devices -> vgic -> pend_lpi_tree).

"DISCARD translates the DevID/EvID pair to a vCPU/vLPI pair. This is done under the vcmd
lock and ITS lock. We then lock the respective vCPU VGIC lock, take the radix tree lock and
remove the pending_irq from the radix tree (making it read NULL), drop the radix tree lock
and vCPU VGIC lock again. We clean up the pending_irq (removing from lists) under the lock
still. [...] MAPD(V=0) just does the above in a loop with every mapped event. At the end it
can safely free the pend_irq array." DISCARD, MAPD and MAPTI are those of
:mod:`.lookup_outside_lock` (rendered as the proposal writes them); what the proposal
changes is the rule "the pending_irq pointer is only retrieved and used under the lock":

- ``vgic_vcpu_inject_irq`` looks ``n`` up under the vgic lock and returns on NULL
  ("vgic_vcpu_inject_irq(): PROTECTED, moved under VCPU VGIC lock"; 56e1b3ebc9 in 4.10.0);
- ``gic_raise_guest_irq``, ``gic_raise_inflight_irq``, ``gic_update_one_lr``,
  ``gic_remove_from_queues``: under the lock, NULL handled ("A VCPU returning will just clear
  the LR when it reads NULL");
- ``vgic_vcpu_inject_lpi`` must then know the vCPU without the pointer (the mail does not
  say how; reading ``p->lpi_vcpu_id`` outside the lock would break its own rule). Rendered
  (inferred) with the host LPI entry's ``vcpu_id`` (dcb6cb2636, the v7 series; written by
  MAPTI with the vLPI, read atomically with it in ``gicv3_do_LPI``), and, under that vCPU's
  vgic lock, the pointer accepted only if ``p->lpi_vcpu_id`` is that vCPU (else the LPI was
  unmapped and mapped again elsewhere meanwhile: dropped like a NULL one). Without the
  re-check a vCPU read before the lock puts another vCPU's pending_irq on its own lists
  (Xen 4.10 has that window: the TODOs "This relies on the VCPU being correct").

``null-entries-under-vgic-lock`` adds bccfbe70a3 (PRISTINE LPIs: Andre's patch of the same
series, authored 2017-04-12, in 4.10.0): "a *new* LPI may get mapped with the same number
while the old LPI is *still* in some LR". ``null-entries-as-posted`` is the mail without
it: a vCPU whose LR still holds a discarded LPI takes a new mapping of that number for its
own when it returns (``gic_update_one_lr`` finds a non-NULL pointer).
"""

from __future__ import annotations

from typing import Any

from .lookup_outside_lock import LookupOutsideLock


class NullEntriesAsPosted(LookupOutsideLock):
    """The mail alone: NULL entries under the vgic lock, no PRISTINE."""

    name = "null-entries-as-posted"
    inject_lookup_under_lock = True
    lpi_pristine = False

    def vgic_vcpu_inject_lpi(self, vlpi: int, host_vcpu: int) -> None:
        """The proposal's injection (inferred, header): the vCPU from the host LPI entry
        (read atomically with the vLPI by gicv3_do_LPI), then ``vgic_vcpu_inject_irq``, which
        looks the pending_irq up under that vCPU's vgic lock: NULL, or a pending_irq of
        another vCPU (:meth:`lpi_target_ok`), is nothing to inject."""
        if host_vcpu >= self.nr_vcpus:
            return
        self.d.lpi_injections += 1
        self.trace("inject_lpi", vlpi, host_vcpu, 0)
        self.vgic_vcpu_inject_irq(host_vcpu, vlpi)

    def lpi_target_ok(self, v: int, p: Any) -> bool:
        """Under v's vgic lock: ``p->lpi_vcpu_id == v->vcpu_id`` (inferred, header)."""
        return p.lpi_vcpu_id == v


class NullEntriesUnderVgicLock(NullEntriesAsPosted):
    """The proposal with bccfbe70a3 (PRISTINE LPIs, in 4.10.0): MAPTI marks the new
    pending_irq PRISTINE before the insert; gic_update_one_lr retires an LR whose LPI reads
    PRISTINE; gic_find_unused_lr reuses the LR of an older LPI of that number; gic_set_lr
    clears it."""

    name = "null-entries-under-vgic-lock"
    lpi_pristine = True
