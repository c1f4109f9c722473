"""Design ``cancel-pending``: "[PATCH v4 02/11] vpci: cancel pending map/unmap on vpci removal"
(Oleksandr Andrushchenko, 5 Nov 2021, on Xen 4.16's vPCI), as posted; never merged.

The patch adds ``vpci_cancel_pending(pdev)`` (header.c)::

    void vpci_cancel_pending(const struct pci_dev *pdev)
    {
        struct vcpu *v = current;

        /* Cancel any pending work now. */
        if ( v->vpci.mem && v->vpci.pdev == pdev)
        {
            rangeset_destroy(v->vpci.mem);
            v->vpci.mem = NULL;
        }
    }

called from ``vpci_remove_device`` after the handlers are removed (before the ``xfree``s),
and from ``vpci_process_pending`` in place of its ``rangeset_destroy``. It cancels the work
of ``current`` only: crash path 1 (the toolstack's own vCPU deferred the map in
``pci_add_device``) is fixed; another vCPU's pending work on the device is left pointing at
a ``pdev`` that ``pci_remove_device`` frees next (Jan Beulich's review, 15 Nov 2021:
"Doesn't 'any' include pending work on all vCPU-s of the guest, not just current? ... you
need to properly (i.e. in a race free manner) drain pending work").

:class:`CancelPendingAllVcpus` is the reading PROTOCOLS.md section 001 gives of this
variant: the cancel walks every vCPU of the device's domain (Oleksandr's reply of 16 Nov
2021 without its ``vcpu_pause``), with no synchronisation against a vCPU inside
``vpci_process_pending``: the range set is freed under the consumer.

Locking order: Xen 4.16's (``pcidevs_lock -> vpci->lock -> r->lock``, see
``unsynchronised``); the cancel takes no lock.
"""

from __future__ import annotations

from typing import Any

from ...heap import NULL
from ...spinlock import spin_unlock
from .unsynchronised import UnsynchronisedRemoval


class CancelPending(UnsynchronisedRemoval):
    """Patch v4 02/11 as posted: ``vpci_cancel_pending`` of ``current`` only."""

    name = "cancel-pending"

    def vpci_cancel_pending(self, h: int) -> None:
        """``vpci_cancel_pending(pdev)`` (v4 02/11): ``current``'s pending work on ``pdev``."""
        self.cancel_one(self.v, self.vid, self.dom, h)

    def cancel_one(self, v: Any, vid: int, dom: int, h: int) -> None:
        if v.mem and v.pdev == h:
            sbdf = v.pending_sbdf
            self.rangeset_destroy(v.mem)
            v.mem = NULL
            v.pending_sbdf = -1
            self.s.pending_cancelled += 1
            self.trace("pending_cancelled", sbdf, dom, vid)

    def finish_pending(self, v: Any) -> None:
        """``vpci_process_pending``: ``vpci_cancel_pending(v->vpci.pdev)`` replaces
        ``rangeset_destroy(v->vpci.mem); v->vpci.mem = NULL;``."""
        self.trace("pending_done", v.pending_sbdf, self.dom, self.vid)
        self.s.pending_done += 1
        self.vpci_cancel_pending(v.pdev)

    def vpci_remove_device(self, h: int) -> int:
        """``vpci_remove_device(pdev)`` with the patch: handlers dropped under
        ``pdev->vpci->lock``, then ``vpci_cancel_pending(pdev)``, then the ``xfree``s."""
        s = self.s
        pdev = s.pdevs[h]
        self.domain_deref(pdev.domain, "vpci_remove_device")
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        s.vpcis[pdev.vpci].handlers = 0
        spin_unlock(s.vpcis[pdev.vpci].lock)
        self.vpci_cancel_pending(h)
        self.vpci_free(h)
        return 0


class CancelPendingAllVcpus(CancelPending):
    """PROTOCOLS.md's reading: the cancel walks ``for_each_vcpu(pdev->domain, v)`` with no
    ``vcpu_pause``, racing the owner's ``rangeset_consume_ranges``."""

    name = "cancel-pending-all-vcpus"

    def finish_pending(self, v: Any) -> None:
        """``vpci_process_pending`` ends its own work only (PROTOCOLS.md puts the walk in
        ``vpci_remove_device``)."""
        self.trace("pending_done", v.pending_sbdf, self.dom, self.vid)
        self.s.pending_done += 1
        self.cancel_one(v, self.vid, self.dom, v.pdev)

    def vpci_cancel_pending(self, h: int) -> None:
        s = self.s
        dom = s.pdevs[h].domain
        d = self.domain_deref(dom, "vpci_cancel_pending")
        for vid, v in enumerate(d.vcpus):
            self.cancel_one(v, vid, dom, h)
            self.cpu.yield_point()  # read v->vpci.mem of another vCPU, then free it: no lock between
