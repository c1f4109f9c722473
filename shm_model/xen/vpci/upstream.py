"""Design ``upstream``: vPCI as Xen 4.19 ships it (RELEASE-4.19.0; unchanged in the points
modelled here up to the mirror's master): xen/drivers/vpci/vpci.c, xen/drivers/vpci/header.c,
xen/drivers/passthrough/pci.c and the IOMMU drivers' ``reassign_device``.

- ``8862c7b8b6`` "pci: introduce per-domain PCI rwlock": ``d->pci_lock`` protects
  ``d->pdev_list``; taken for writing wherever the list changes (``pci_add_device``,
  ``pci_remove_device``, ``reassign_device``), after ``pcidevs_lock``.
- ``4f78438b45`` "vpci: use per-domain PCI lock to protect vpci structure": readers
  ``vpci_read`` and ``vpci_process_pending``; writers ``vpci_write`` (a BAR change can touch
  several pdevs) and the assign/deassign paths; ``modify_bars``, ``vpci_assign_device``
  and ``vpci_deassign_device`` ``ASSERT(rw_is_write_locked(&pdev->domain->pci_lock))``.
- ``f20dde9259``: ``vpci_remove_device`` became ``vpci_deassign_device`` (and
  ``vpci_add_handlers`` ``vpci_assign_device``), called on every assignment change.
- ``622bdd9628`` "vpci/header: handle p2m range sets per BAR": each BAR owns its range set
  (``bar->mem``, created with the vPCI, destroyed by ``vpci_deassign_device``);
  ``defer_map`` only records ``v->vpci.pdev``/``cmd``/``rom_only``.

``vpci_deassign_device`` leaves every vCPU's ``v->vpci.pdev`` alone; the next
``vpci_process_pending`` of that vCPU re-checks ``!pdev->vpci || v->domain != pdev->domain``
under the read lock and drops the stale work. ``pci_remove_device`` frees the pdev after
``vpci_deassign_device``: the question of this variant is whether that re-check reads a
freed pdev.

Locking order, outermost first (the commit message of 8862c7b8b6: "In case both the newly
introduced per-domain rwlock and the pcidevs lock is taken, the latter must be acquired
first"):

    pcidevs_lock     the toolstack's hypercalls
      d->pci_lock    read: vpci_read, vpci_process_pending; write: vpci_write, the list
                     changes, vpci_{,de}assign_device (two domains' locks are never nested:
                     reassign_device takes the source's, drops it, takes the target's)
        vpci->lock   the handlers, modify_decoding, the handler removal
          r->lock    range-set operations

Model notes: the ``ASSERT(rangeset_is_empty(bar->mem))`` of ``modify_bars`` is the inline
check ``bar-rangeset-empty`` (a debug build's panic; a release build merges the ranges): a
guest whose two vCPUs toggle one device's decoding reaches it (the FIXME in ``defer_map``:
"parallel mapping operations being started for the same device if the domain is not
well-behaved"). DomXEN's hidden devices and quarantine (``dom_io``) are not modelled.
"""

from __future__ import annotations

from ...heap import NULL
from ...rwlock import assert_write_held, read_lock, read_unlock, write_lock, write_unlock
from ...spinlock import spin_lock, spin_unlock
from .common import (DOM0, ENOMEM, ERESTART, NO_DOMAIN, NR_BARS, PCI_COMMAND_MEMORY, VPCI_BAR_MEM32, VpciCpu)


class Upstream(VpciCpu):
    """Xen 4.19's vPCI (see the module's docstring)."""

    name = "upstream"
    _asserted = False

    # -- config space access ------------------------------------------------------------------
    def vpci_read(self, sbdf: int) -> int:
        """``vpci_read`` (vpci.c, 4.19): ``read_lock(&d->pci_lock)``, find the pdev; no pdev
        or no ``vpci``: the hardware; else the handler under ``pdev->vpci->lock``."""
        s = self.s
        s.mmio_reads += 1
        d = self.d
        read_lock(d.pci_lock)
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        if h == NULL or not s.pdevs[h].vpci:
            read_unlock(d.pci_lock)
            return self.pci_conf_read16_cmd(sbdf)
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        self.spin_lock_obj(vp)
        val = self.pci_conf_read16_cmd(sbdf) if vp.handlers else 0xffff
        spin_unlock(vp.lock)
        read_unlock(d.pci_lock)
        return val

    def vpci_write(self, sbdf: int, cmd: int) -> None:
        """``vpci_write`` (vpci.c, 4.19): ``write_lock(&d->pci_lock)`` ("We need to take
        pci_locks in exclusive mode only if we are modifying BARs"), then as ``vpci_read``."""
        s = self.s
        s.mmio_writes += 1
        self.trace("mmio_write", sbdf, self.dom, 1 if cmd & PCI_COMMAND_MEMORY else 0)
        d = self.d
        write_lock(d.pci_lock)
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        if h == NULL or not s.pdevs[h].vpci:
            write_unlock(d.pci_lock)
            if self.is_hardware_domain(self.dom):
                self.pci_conf_write16_cmd(sbdf, cmd)
            return
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        self.spin_lock_obj(vp)
        if vp.handlers:
            self.cmd_write(h, cmd)
        spin_unlock(vp.lock)
        write_unlock(d.pci_lock)

    def cmd_write(self, h: int, cmd: int) -> None:
        """``cmd_write`` (header.c, 4.19): a DomU's value is kept in ``guest_cmd``; a change
        of ``bars_mapped`` goes through ``modify_bars``, anything else to the hardware."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        if not self.is_hardware_domain(pdev.domain):
            vp.guest_cmd = cmd
        if vp.bars_mapped != (1 if cmd & PCI_COMMAND_MEMORY else 0):
            self.modify_bars(h, cmd, False)
        else:
            self.pci_conf_write16_cmd(pdev.sbdf, cmd)

    # -- BAR mapping --------------------------------------------------------------------------
    def modify_bars(self, h: int, cmd: int, rom_only: bool) -> int:
        """``modify_bars`` (header.c, 4.19): each BAR not yet in the requested state gets its
        range in its own ``bar->mem``; other pdevs of the domain with a ``vpci`` are checked
        for overlaps (``!tmp->vpci`` skipped); then ``defer_map``."""
        s = self.s
        pdev = s.pdevs[h]
        dom = pdev.domain
        assert_write_held(self.domain_deref(dom, "modify_bars").pci_lock)
        vp = s.vpcis[pdev.vpci]
        want = 1 if cmd & PCI_COMMAND_MEMORY else 0
        for i in range(NR_BARS):
            mem = vp.bar_mem[i]
            if not mem:
                continue
            if vp.bar_type[i] != VPCI_BAR_MEM32 or vp.bar_enabled[i] == want:
                continue
            if not self.rangeset_is_empty(mem) and not self._asserted:
                self._asserted = True  # ASSERT(rangeset_is_empty(bar->mem)); a release build goes on
                self.cpu.finding("invariant:bar-rangeset-empty",
                                 "BUG: Assertion 'rangeset_is_empty(bar->mem)' failed in modify_bars "
                                 "(xen/drivers/vpci/header.c)", sbdf=pdev.sbdf, bar=i,
                                 note="another vCPU's map/unmap of this device is still pending")
            start = vp.bar_addr[i]
            rc = self.rangeset_add_range(mem, start, start + vp.bar_size[i] - 1)
            if rc:
                return rc
        dev = NULL
        for tmp in self.for_each_pdev(dom):
            tp = s.pdevs[tmp]
            if not tp.vpci:
                continue
            if tmp == h:
                dev = tmp
                if not rom_only:
                    continue
            tvp = s.vpcis[tp.vpci]
            for i in range(NR_BARS):
                if tvp.bar_enabled[i]:
                    pass  # an enabled BAR of another device: never overlaps in the model
        self.defer_map(dev, cmd, rom_only)
        return 0

    def defer_map(self, h: int, cmd: int, rom_only: bool) -> None:
        """``defer_map`` (header.c, 4.19): ``current``'s ``v->vpci.pdev``, ``cmd``,
        ``rom_only``; ``raise_softirq(SCHEDULE_SOFTIRQ)``."""
        v = self.v
        v.pdev = h
        v.cmd = cmd
        v.rom_only = 1 if rom_only else 0
        sbdf = self.s.pdevs[h].sbdf if h else -1
        self.note_pending(v, sbdf)
        self.s.defer_maps += 1
        self.trace("defer_map", sbdf, self.dom, self.vid)

    def vpci_process_pending(self) -> bool:
        """``vpci_process_pending(v)`` (header.c, 4.19)::

            pdev = v->vpci.pdev; if ( !pdev ) return false;
            read_lock(&v->domain->pci_lock);
            if ( !pdev->vpci || (v->domain != pdev->domain) ) { drop it }
            per BAR: rangeset_consume_ranges(bar->mem, map_range, &data) ...
        """
        s = self.s
        v = self.v
        h = v.pdev
        if not h:
            return False
        d = self.d
        read_lock(d.pci_lock)
        pdev = s.pdevs[h]
        if not pdev.vpci or self.dom != pdev.domain:
            self.trace("pending_dropped", v.pending_sbdf, self.dom, self.vid)
            s.pending_dropped += 1
            v.pdev = NULL
            v.pending_sbdf = -1
            read_unlock(d.pci_lock)
            return False
        s.pending_steps += 1
        vp = s.vpcis[pdev.vpci]
        sbdf = v.pending_sbdf
        data = (self.dom, bool(v.cmd & PCI_COMMAND_MEMORY), sbdf)
        for i in range(NR_BARS):
            mem = vp.bar_mem[i]
            if self.rangeset_is_empty(mem):
                continue
            rc = self.rangeset_consume_ranges(mem, self.map_range, data)
            if rc == -ERESTART:
                read_unlock(d.pci_lock)
                return True
            if rc:
                self.spin_lock_obj(s.vpcis[pdev.vpci])
                # Disable memory decoding unconditionally on failure.
                self.modify_decoding(h, v.cmd & ~PCI_COMMAND_MEMORY, False)
                spin_unlock(s.vpcis[pdev.vpci].lock)
                for j in range(NR_BARS):  # Clean all the rangesets
                    if not self.rangeset_is_empty(vp.bar_mem[j]):
                        self.rangeset_purge(vp.bar_mem[j])
                v.pdev = NULL
                v.pending_sbdf = -1
                read_unlock(d.pci_lock)
                if not self.is_hardware_domain(self.dom):
                    self.domain_crash(self.dom, sbdf)
                return False
        v.pdev = NULL
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        self.modify_decoding(h, v.cmd, bool(v.rom_only))
        spin_unlock(s.vpcis[pdev.vpci].lock)
        v.pending_sbdf = -1
        s.pending_done += 1
        self.trace("pending_done", sbdf, self.dom, self.vid)
        read_unlock(d.pci_lock)
        return False

    def modify_decoding(self, h: int, cmd: int, rom_only: bool) -> None:
        """``modify_decoding`` (header.c, 4.19): BARs' ``enabled``, PCI_COMMAND,
        ``header->bars_mapped``."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        on = 1 if cmd & PCI_COMMAND_MEMORY else 0
        for i in range(NR_BARS):
            if vp.bar_type[i] == VPCI_BAR_MEM32:
                vp.bar_enabled[i] = on
        sbdf = pdev.sbdf
        self.pci_conf_write16_cmd(sbdf, cmd)
        vp.bars_mapped = on
        self.note_decoding(pdev.domain, sbdf, on)

    # -- vPCI set-up and tear-down (vpci.c) -----------------------------------------------------
    def vpci_assign_device(self, h: int) -> int:
        """``vpci_assign_device(pdev)`` (vpci.c, 4.19), ``pdev->domain->pci_lock`` held for
        writing: a fresh ``vpci``, then ``init_header``; failure: ``vpci_deassign_device``."""
        s = self.s
        pdev = s.pdevs[h]
        assert_write_held(self.domain_deref(pdev.domain, "vpci_assign_device").pci_lock)
        vh = s.vpcis.alloc()
        if vh == NULL:
            return -ENOMEM
        pdev.vpci = vh
        self.note_vpci(pdev.domain, pdev.sbdf)
        self.trace("vpci_alloc", pdev.sbdf, pdev.domain)
        rc = self.init_header(h)
        if rc:
            self.vpci_deassign_device(h)
        return rc

    def init_header(self, h: int) -> int:
        """``init_header`` (header.c, 4.19): PCI_COMMAND handler; a DomU's decoding starts
        off; the BARs sized, each with its range set; decoding on: ``modify_bars``."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        sbdf = pdev.sbdf
        hwdom = self.is_hardware_domain(pdev.domain)
        vp.handlers += 1
        cmd = self.pci_conf_read16_cmd(sbdf)
        if not hwdom:
            cmd &= ~PCI_COMMAND_MEMORY
        vp.guest_cmd = cmd
        if not hwdom or cmd & PCI_COMMAND_MEMORY:
            self.pci_conf_write16_cmd(sbdf, cmd & ~PCI_COMMAND_MEMORY)
        self.size_bars(vp, sbdf)
        for i in range(NR_BARS):
            r = self.rangeset_new()
            if r == NULL:
                return -ENOMEM
            vp.bar_mem[i] = r
        return self.modify_bars(h, cmd, False) if cmd & PCI_COMMAND_MEMORY else 0

    def vpci_deassign_device(self, h: int) -> None:
        """``vpci_deassign_device(pdev)`` (vpci.c, 4.19), ``pdev->domain->pci_lock`` held for
        writing: handlers, the BARs' range sets, ``xfree(pdev->vpci); pdev->vpci = NULL``.
        Nothing about the vCPUs whose ``v->vpci.pdev`` is this pdev."""
        s = self.s
        pdev = s.pdevs[h]
        assert_write_held(self.domain_deref(pdev.domain, "vpci_deassign_device").pci_lock)
        if not pdev.vpci:
            return
        vp = s.vpcis[pdev.vpci]
        self.spin_lock_obj(vp)
        vp.handlers = 0
        spin_unlock(vp.lock)
        for i in range(NR_BARS):
            self.rangeset_destroy(vp.bar_mem[i])
        self.note_teardown(pdev.domain, pdev.sbdf, vp)
        self.trace("vpci_free", pdev.sbdf, pdev.domain)
        s.vpcis.free(pdev.vpci)
        pdev.vpci = NULL

    # -- hypercalls (pci.c, 4.19) ---------------------------------------------------------------
    def pci_add_device(self, sbdf: int) -> int:
        """``pci_add_device`` (pci.c, 4.19)."""
        s = self.s
        d0 = s.domains[DOM0]
        spin_lock(s.pcidevs_lock)
        ret = -ENOMEM
        h = self.alloc_pdev(sbdf)
        if h != NULL:
            ret = 0
            pdev = s.pdevs[h]
            if pdev.domain == NO_DOMAIN:
                pdev.domain = DOM0
                write_lock(d0.pci_lock)
                self.list_add(DOM0, h, sbdf)
                ret = self.vpci_assign_device(h)
                if ret:
                    self.list_del(DOM0, sbdf)
                    write_unlock(d0.pci_lock)
                    pdev.domain = NO_DOMAIN
                else:
                    write_unlock(d0.pci_lock)
                    ret = self.iommu_add_device(sbdf)
                    if ret:
                        write_lock(d0.pci_lock)
                        self.vpci_deassign_device(h)
                        self.list_del(DOM0, sbdf)
                        write_unlock(d0.pci_lock)
                        pdev.domain = NO_DOMAIN
        spin_unlock(s.pcidevs_lock)
        return ret

    def pci_remove_device(self, sbdf: int) -> int:
        """``pci_remove_device`` (pci.c, 4.19): ``vpci_deassign_device`` and ``list_del``
        under the owner's write lock, then ``free_pdev`` (``xfree(pdev)``)."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        ret = -19
        h = s.alldevs[sbdf]
        if h:
            pdev = s.pdevs[h]
            if pdev.domain != NO_DOMAIN:
                lk = s.domains[pdev.domain].pci_lock
                write_lock(lk)
                self.vpci_deassign_device(h)
                self.list_del(pdev.domain, sbdf)
                write_unlock(lk)
            ret = 0
            self.free_pdev(h, sbdf)
        spin_unlock(s.pcidevs_lock)
        return ret

    def reassign_device(self, h: int, sbdf: int, source: int, target: int) -> None:
        """The IOMMU drivers' ``reassign_device`` list move (8862c7b8b6)."""
        s = self.s
        write_lock(s.domains[source].pci_lock)
        self.list_del(source, sbdf)
        write_unlock(s.domains[source].pci_lock)
        s.pdevs[h].domain = target
        write_lock(s.domains[target].pci_lock)
        self.list_add(target, h, sbdf)
        write_unlock(s.domains[target].pci_lock)

    def assign_device(self, dom: int, sbdf: int) -> int:
        """``assign_device`` (pci.c, 4.19) under ``pcidevs_lock``: the current owner's vPCI
        goes first (under its write lock), then the IOMMU (-ERESTART: continued; the pdev
        stays with its owner, without vPCI), the move, the new owner's vPCI."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        h = s.alldevs[sbdf]
        pdev = s.pdevs[h]
        lk = s.domains[pdev.domain].pci_lock
        write_lock(lk)
        self.vpci_deassign_device(h)
        write_unlock(lk)
        rc = self.iommu_assign_device()
        if rc == 0:
            self.reassign_device(h, sbdf, pdev.domain, dom)
            tl = s.domains[dom].pci_lock
            write_lock(tl)
            rc = self.vpci_assign_device(h)
            write_unlock(tl)
        spin_unlock(s.pcidevs_lock)
        return rc

    def deassign_device(self, dom: int, sbdf: int) -> int:
        """``deassign_device`` (pci.c, 4.19) under ``pcidevs_lock``."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        rc = self.deassign_locked(dom, sbdf)
        spin_unlock(s.pcidevs_lock)
        return rc

    def deassign_locked(self, dom: int, sbdf: int) -> int:
        s = self.s
        h = self.pci_get_pdev_by_domain(dom, sbdf)
        if h == NULL:
            return -19
        lk = s.domains[dom].pci_lock
        write_lock(lk)
        self.vpci_deassign_device(h)
        write_unlock(lk)
        self.reassign_device(h, sbdf, dom, DOM0)
        tl = s.domains[DOM0].pci_lock
        write_lock(tl)
        rc = self.vpci_assign_device(h)  # "Re-assign back to hardware_domain"
        write_unlock(tl)
        return rc

    def release_device(self, dom: int, sbdf: int) -> int:
        return self.deassign_device(dom, sbdf)
