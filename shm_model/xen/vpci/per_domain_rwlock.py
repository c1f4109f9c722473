"""Design ``per-domain-rwlock``: Oleksandr Andrushchenko's proposal in the thread (Re: [PATCH v4
02/11] vpci: cancel pending map/unmap on vpci removal, 18 Nov 2021), on Xen 4.16's vPCI.

The proposal: a per-domain ``rwlock_t vpci_rwlock`` and ``bool vpci_terminating``;
``vpci_process_pending`` and ``vpci_mmio_{read,write}`` are readers, ``vpci_remove_device``
the writer::

    vpci_remove_device() {
        d->vpci_terminating = true;
        remove vPCI register handlers   <- cuts off PCI_COMMAND emulation
        if ( !write_trylock(d->vpci_rwlock) )
            return -ERESTART;           <- PHYSDEVOP_pci_device_remove continues
        xfree(pdev->vpci);
        pdev->vpci = NULL;
    }

and ``vpci_process_pending`` no longer calls ``vpci_remove_device`` on a mapping failure: it
crashes a DomU (``domain_crash``) and tolerates the failure for Dom0.

What the proposal leaves unsaid, and the model fills in (each inferred):

- Readers re-check ``pdev->vpci`` under the read lock and drop pending work for a removed
  device (PROTOCOLS.md); they check ``vpci_terminating`` under the read lock too: an MMIO
  access then exits to the guest to be retried (Jan: "The MMIO trap path should simply exit
  to the guest to have the insn retried"), so the writer's trylock is not starved.
  ``vpci_process_pending`` does not back off (the toolstack's own vCPU must be able to finish
  its work between continuations, or the continuation would never run).
- The flag is cleared when the hypercall that set it ends (after ``free_pdev`` or the move
  to the new owner): readers keep off the pdev until it is off the domain's list, which the
  rwlock does not protect (``pcidevs_lock`` does, and readers do not take it).
- The writer keeps patch 02/11's cancel, now race free under the write lock and for every
  vCPU of the domain (as Jan asked): no ``v->vpci.pdev`` outlives the pdev. So
  ``vpci_process_pending`` checks ``v->vpci.mem`` again once it holds the read lock.
- ``modify_bars`` skips devices of the domain that have no ``vpci`` (Roger's ee045f3a4a,
  Xen 4.18): a 4.16 bug of its own (a reader walking ``d->pdev_list`` meets a device that
  ``pci_add_device`` listed before ``vpci_add_handlers`` allocated its ``vpci``), outside
  the proposal's question; without the fix this design reports that NULL dereference.
- A failed IOMMU set-up in ``pci_add_device`` removes the vPCI the same way; its -ERESTART
  continues at the removal (the proposal does not say how ``pci_add_device``'s error path
  continues; a continuation that resumed from the top would find the pdev still assigned).

Locking order, outermost first:

    pcidevs_lock           the toolstack's hypercalls
      d->vpci_rwlock       read: vpci_read, vpci_write, vpci_process_pending;
                           write (trylock only): vpci_remove_device
        vpci->lock         the handlers; modify_decoding; the handler removal (taken *before*
                           the write trylock in vpci_remove_device, not inside it)
          r->lock          range-set operations
"""

from __future__ import annotations

from ...heap import NULL
from ...rwlock import read_lock, read_unlock, write_trylock, write_unlock
from ...spinlock import spin_lock, spin_unlock
from .common import DOM0, ENOMEM, ERESTART, NO_DOMAIN, NR_BARS, PCI_COMMAND_MEMORY, VPCI_BAR_MEM32
from .unsynchronised import UnsynchronisedRemoval


class PerDomainRwlock(UnsynchronisedRemoval):
    """The thread's per-domain rwlock proposal (see the module's docstring)."""

    name = "per-domain-rwlock"

    # -- readers ------------------------------------------------------------------------------
    def _reader(self, sbdf: int) -> int | None:
        """Take the read lock; None (lock dropped) when the access must be retried, else the
        pdev's handle (NULL: not an emulated device; lock dropped)."""
        d = self.d
        read_lock(d.vpci_rwlock)
        if d.vpci_terminating:
            read_unlock(d.vpci_rwlock)
            self.s.mmio_retried += 1
            return None
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        if h == NULL or not self.s.pdevs[h].vpci:
            read_unlock(d.vpci_rwlock)
            return NULL
        return h

    def vpci_write(self, sbdf: int, cmd: int) -> None:
        """``vpci_write`` as a reader of ``d->vpci_rwlock``."""
        s = self.s
        s.mmio_writes += 1
        self.trace("mmio_write", sbdf, self.dom, 1 if cmd & PCI_COMMAND_MEMORY else 0)
        h = self._reader(sbdf)
        if h is None:
            return
        if h == NULL:
            self.vpci_write_hw(sbdf, cmd)
            return
        pdev = s.pdevs[h]
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        if s.vpcis[pdev.vpci].handlers:
            self.cmd_write(h, cmd)
        else:
            self.vpci_write_hw(sbdf, cmd)
        spin_unlock(s.vpcis[pdev.vpci].lock)
        read_unlock(self.d.vpci_rwlock)

    def vpci_read(self, sbdf: int) -> int:
        """``vpci_read`` as a reader of ``d->vpci_rwlock``."""
        s = self.s
        s.mmio_reads += 1
        h = self._reader(sbdf)
        if h is None:
            return 0xffff
        if h == NULL:
            return self.pci_conf_read16_cmd(sbdf)
        pdev = s.pdevs[h]
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        val = self.pci_conf_read16_cmd(sbdf) if s.vpcis[pdev.vpci].handlers else 0xffff
        spin_unlock(s.vpcis[pdev.vpci].lock)
        read_unlock(self.d.vpci_rwlock)
        return val

    def vpci_process_pending(self) -> bool:
        """``vpci_process_pending(v)`` as a reader: drop the work of a device whose vPCI is
        gone; a mapping failure crashes a DomU and is tolerated for Dom0 (no
        ``vpci_remove_device``)."""
        s = self.s
        v = self.v
        if not v.mem:
            return False
        d = self.d
        read_lock(d.vpci_rwlock)
        if not v.mem:  # cancelled by a writer between the check and the lock
            read_unlock(d.vpci_rwlock)
            return False
        h = v.pdev
        if not s.pdevs[h].vpci:
            self.trace("pending_dropped", v.pending_sbdf, self.dom, self.vid)
            s.pending_dropped += 1
            self.rangeset_destroy(v.mem)
            v.mem = NULL
            v.pdev = NULL
            v.pending_sbdf = -1
            read_unlock(d.vpci_rwlock)
            return False
        s.pending_steps += 1
        cmd = v.cmd
        sbdf = v.pending_sbdf
        rc = self.rangeset_consume_ranges(v.mem, self.map_range, (self.dom, bool(cmd & PCI_COMMAND_MEMORY), sbdf))
        if rc == -ERESTART:
            read_unlock(d.vpci_rwlock)
            return True
        pdev = s.pdevs[h]
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        self.modify_decoding(h, cmd & ~PCI_COMMAND_MEMORY if rc else cmd, not rc and bool(v.rom_only))
        spin_unlock(s.vpcis[pdev.vpci].lock)
        self.finish_pending(v)
        read_unlock(d.vpci_rwlock)
        if rc and not self.is_hardware_domain(self.dom):
            self.domain_crash(self.dom, sbdf)
        return False

    def modify_bars(self, h: int, cmd: int, rom_only: bool) -> int:
        """``modify_bars`` (4.16) with ee045f3a4a: the overlap walk skips ``!tmp->vpci``."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        mem = self.rangeset_new()
        if mem == NULL:
            return -ENOMEM
        for i in range(NR_BARS):
            if vp.bar_type[i] != VPCI_BAR_MEM32:
                continue
            start = vp.bar_addr[i]
            rc = self.rangeset_add_range(mem, start, start + vp.bar_size[i] - 1)
            if rc:
                self.rangeset_destroy(mem)
                return rc
        dev = NULL
        for tmp in self.for_each_pdev(pdev.domain):
            tp = s.pdevs[tmp]
            if not tp.vpci:  # ee045f3a4a
                continue
            if tmp == h:
                dev = tmp
                if not rom_only:
                    continue
            tvp = s.vpcis[tp.vpci]
            for i in range(NR_BARS):
                if tvp.bar_enabled[i]:
                    pass  # never overlaps in the model
        self.defer_map(dev, mem, cmd, rom_only)
        return 0

    # -- the writer ---------------------------------------------------------------------------
    def vpci_remove_device(self, h: int) -> int:
        """The proposal's ``vpci_remove_device``: ``vpci_terminating``, the handlers, then
        ``write_trylock`` or -ERESTART; under the write lock every vCPU's pending work on
        ``pdev`` is cancelled and ``pdev->vpci`` freed."""
        s = self.s
        pdev = s.pdevs[h]
        dom = pdev.domain
        d = self.domain_deref(dom, "vpci_remove_device")
        d.vpci_terminating = 1
        if pdev.vpci:
            self.spin_lock_obj(s.vpcis[pdev.vpci])
            s.vpcis[pdev.vpci].handlers = 0
            spin_unlock(s.vpcis[pdev.vpci].lock)
        if not write_trylock(d.vpci_rwlock):
            return -ERESTART
        for vid, v in enumerate(d.vcpus):  # vpci_cancel_pending, every vCPU, no reader running
            if v.mem and v.pdev == h:
                self.trace("pending_cancelled", v.pending_sbdf, dom, vid)
                self.rangeset_destroy(v.mem)
                v.mem = NULL
                v.pdev = NULL
                v.pending_sbdf = -1
                s.pending_cancelled += 1
        if pdev.vpci:
            self.vpci_free(h)
        write_unlock(d.vpci_rwlock)
        return 0

    def terminated(self, dom: int) -> None:
        """The hypercall that set ``vpci_terminating`` is done with the device."""
        if dom != NO_DOMAIN:
            self.s.domains[dom].vpci_terminating = 0

    # -- hypercalls ---------------------------------------------------------------------------
    def pci_add_device(self, sbdf: int) -> int:
        """``pci_add_device`` (4.16) with the proposal's removal on the IOMMU failure path."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        ret = -ENOMEM
        h = self.alloc_pdev(sbdf)
        if h != NULL:
            ret = 0
            pdev = s.pdevs[h]
            if pdev.domain == NO_DOMAIN:
                pdev.domain = DOM0
                self.list_add(DOM0, h, sbdf)
                ret = self.vpci_add_handlers(h)
                if ret:
                    self.list_del(DOM0, sbdf)
                    pdev.domain = NO_DOMAIN
                    self.terminated(DOM0)
                else:
                    ret = self.iommu_add_device(sbdf)
                    if ret and self._add_failed_locked(h, sbdf) == -ERESTART:
                        self.cont = lambda err=ret: self._add_failed(h, sbdf, err)
                        ret = -ERESTART
        spin_unlock(s.pcidevs_lock)
        return ret

    def _add_failed_locked(self, h: int, sbdf: int) -> int:
        """``pci_add_device``'s IOMMU failure path, ``pcidevs_lock`` held."""
        rc = self.vpci_remove_device(h)
        if rc == -ERESTART:
            return rc
        self.list_del(DOM0, sbdf)
        self.s.pdevs[h].domain = NO_DOMAIN
        self.terminated(DOM0)
        return 0

    def _add_failed(self, h: int, sbdf: int, ret: int) -> int:
        """The continuation of ``pci_add_device`` after -ERESTART on its failure path."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        rc = self._add_failed_locked(h, sbdf)
        spin_unlock(s.pcidevs_lock)
        return rc or ret

    def pci_remove_device(self, sbdf: int) -> int:
        """``pci_remove_device`` (4.16) with the proposal: -ERESTART from
        ``vpci_remove_device`` leaves through ``hypercall_create_continuation``."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        ret = -19
        h = s.alldevs[sbdf]
        if h:
            pdev = s.pdevs[h]
            ret = self.vpci_remove_device(h)
            if ret == -ERESTART:
                spin_unlock(s.pcidevs_lock)
                return ret
            dom = pdev.domain
            if dom != NO_DOMAIN:
                self.list_del(dom, sbdf)
            self.free_pdev(h, sbdf)
            self.terminated(dom)
        spin_unlock(s.pcidevs_lock)
        return ret

    def assign_device(self, dom: int, sbdf: int) -> int:
        """``assign_device``: the IOMMU assignment (-ERESTART before anything changed), the
        previous owner's vPCI removed (-ERESTART: continued), the move, the new vPCI."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        h = s.alldevs[sbdf]
        rc = self.iommu_assign_device()
        if rc == 0:
            source = s.pdevs[h].domain
            rc = self.vpci_remove_device(h)
            if rc == 0:
                self.reassign(h, sbdf, source, dom)
                self.terminated(source)
                rc = self.vpci_add_handlers(h)
        spin_unlock(s.pcidevs_lock)
        return rc

    def deassign_locked(self, dom: int, sbdf: int) -> int:
        h = self.pci_get_pdev_by_domain(dom, sbdf)
        if h == NULL:
            return -19
        rc = self.vpci_remove_device(h)
        if rc:
            return rc
        self.reassign(h, sbdf, dom, DOM0)
        self.terminated(dom)
        return self.vpci_add_handlers(h)
