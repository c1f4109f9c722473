"""Design ``unsynchronised-removal``: vPCI as the thread analyses it (Xen 4.16, RELEASE-4.16.0:
xen/drivers/vpci/vpci.c, xen/drivers/vpci/header.c, xen/drivers/passthrough/pci.c), with the
thread's series' assign/deassign hooks (v4 04/11, "vpci: add hooks for PCI device
assign/de-assign", freeing ``pdev->vpci`` on deassign as Roger asked in its review).

Locking order, outermost first:

    pcidevs_lock      the toolstack's hypercalls (pci_add_device, pci_remove_device,
                      assign_device, deassign_device)
      vpci->lock      vpci_read/vpci_write around the handlers; vpci_remove_device around
                      the handler removal; vpci_process_pending around modify_decoding
        r->lock       the range set's own lock (modify_bars adds ranges under vpci->lock)

Nothing else: ``vpci_read``/``vpci_write`` find the pdev on ``d->pdev_list`` and take
``pdev->vpci->lock`` with no lock that keeps the pdev or its ``vpci`` alive, and
``vpci_process_pending`` dereferences ``v->vpci.pdev->vpci`` with none either, while the
toolstack frees ``pdev->vpci`` (``vpci_remove_device``) and the pdev (``free_pdev``). That
is the bug; the crash paths of the thread:

1. ``PHYSDEVOP_pci_device_add``: ``init_bars`` -> ``modify_bars`` -> ``defer_map`` on the
   calling vCPU; ``iommu_add_device`` fails -> ``vpci_remove_device`` frees ``pdev->vpci``;
   that vCPU's ``vpci_process_pending`` then takes ``v->vpci.pdev->vpci->lock``: NULL.
2. ``vpci_process_pending`` on one vCPU fails to map and calls ``vpci_remove_device``
   while another vCPU's ``vpci_process_pending`` or MMIO uses the same ``vpci``.
3. MMIO (``vpci_read``/``vpci_write``) after or during ``PHYSDEVOP_pci_device_remove``.

Model notes: a hypercall's order in assign follows the series (IOMMU assignment, which may
return -ERESTART before anything changed; the pdev moves to the new owner; its old vPCI is
removed and a new one set up for the owner); deassign removes the DomU's vPCI, moves the
pdev back and sets up Dom0's vPCI (Xen 4.19's structure, which the series grew into).
"""

from __future__ import annotations

from typing import Any

from ...heap import NULL
from ...spinlock import spin_lock, spin_unlock
from .common import (DOM0, ENOMEM, ERESTART, NO_DOMAIN, NR_BARS, PCI_COMMAND_MEMORY, VPCI_BAR_MEM32, VpciCpu)


class UnsynchronisedRemoval(VpciCpu):
    """Xen 4.16's vPCI (see the module's docstring)."""

    name = "unsynchronised-removal"

    # -- config space access on a vCPU (vpci_mmio_{read,write} -> vpci_ecam_* -> vpci_*) --------
    def vpci_write(self, sbdf: int, cmd: int) -> None:
        """``vpci_write(sbdf, PCI_COMMAND, 2, cmd)`` (vpci.c, 4.16): find the pdev, take
        ``pdev->vpci->lock``, run the handler (``cmd_write``) or write the hardware."""
        s = self.s
        s.mmio_writes += 1
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        self.trace("mmio_write", sbdf, self.dom, 1 if cmd & PCI_COMMAND_MEMORY else 0)
        if h == NULL:
            self.vpci_write_hw(sbdf, cmd)
            return
        pdev = s.pdevs[h]
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        if s.vpcis[pdev.vpci].handlers:  # list_for_each_entry(r, &pdev->vpci->handlers, node)
            self.cmd_write(h, cmd)
        else:
            self.vpci_write_hw(sbdf, cmd)  # no handler: the tailing gap goes to the hardware
        spin_unlock(s.vpcis[pdev.vpci].lock)

    def vpci_write_hw(self, sbdf: int, cmd: int) -> None:
        """A write no handler traps: Dom0 reaches the hardware; a DomU's is dropped."""
        if self.is_hardware_domain(self.dom):
            self.pci_conf_write16_cmd(sbdf, cmd)

    def vpci_read(self, sbdf: int) -> int:
        """``vpci_read(sbdf, PCI_COMMAND, 2)`` (vpci.c, 4.16): the handler reads the hardware."""
        s = self.s
        s.mmio_reads += 1
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        if h == NULL:
            return self.pci_conf_read16_cmd(sbdf)
        pdev = s.pdevs[h]
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        val = self.pci_conf_read16_cmd(sbdf) if s.vpcis[pdev.vpci].handlers else 0xffff
        spin_unlock(s.vpcis[pdev.vpci].lock)
        return val

    def cmd_write(self, h: int, cmd: int) -> None:
        """``cmd_write`` (header.c, 4.16), ``pdev->vpci->lock`` held: a change of memory
        decoding goes through ``modify_bars``; anything else to the hardware."""
        sbdf = self.s.pdevs[h].sbdf
        current_cmd = self.pci_conf_read16_cmd(sbdf)
        if (cmd ^ current_cmd) & PCI_COMMAND_MEMORY:
            self.modify_bars(h, cmd, False)  # the error is ignored
        else:
            self.pci_conf_write16_cmd(sbdf, cmd)

    # -- BAR mapping (header.c) ---------------------------------------------------------------
    def modify_bars(self, h: int, cmd: int, rom_only: bool) -> int:
        """``modify_bars(pdev, cmd, rom_only)`` (header.c, 4.16): a new range set of this
        device's BARs, minus the enabled BARs of every other pdev of the domain
        (``for_each_pdev`` dereferences each ``tmp->vpci``), then ``defer_map``."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]  # header = &pdev->vpci->header
        mem = self.rangeset_new()
        if mem == NULL:
            return -ENOMEM
        for i in range(NR_BARS):
            if vp.bar_type[i] != VPCI_BAR_MEM32:  # !MAPPABLE_BAR(bar)
                continue
            start = vp.bar_addr[i]
            rc = self.rangeset_add_range(mem, start, start + vp.bar_size[i] - 1)
            if rc:
                self.rangeset_destroy(mem)
                return rc
        dev = NULL
        for tmp in self.for_each_pdev(pdev.domain):
            if tmp == h:
                dev = tmp
                if not rom_only:
                    continue
            tvp = s.vpcis[s.pdevs[tmp].vpci]  # tmp->vpci->header.bars: no NULL check before 4.19
            for i in range(NR_BARS):
                if tvp.bar_enabled[i]:
                    pass  # an enabled BAR of another device: never overlaps in the model
        self.defer_map(dev, mem, cmd, rom_only)
        return 0

    def defer_map(self, h: int, mem: int, cmd: int, rom_only: bool) -> None:
        """``defer_map`` (header.c, 4.16): the work goes to ``current``'s ``v->vpci``, then
        ``raise_softirq(SCHEDULE_SOFTIRQ)`` (the vCPU may be descheduled before it runs)."""
        v = self.v
        v.pdev = h
        v.mem = mem
        v.cmd = cmd
        v.rom_only = 1 if rom_only else 0
        sbdf = self.s.pdevs[h].sbdf if h else -1
        self.note_pending(v, sbdf)
        self.s.defer_maps += 1
        self.trace("defer_map", sbdf, self.dom, self.vid)

    def vpci_process_pending(self) -> bool:
        """``vpci_process_pending(v)`` (header.c, 4.16), on the way back to the guest: map
        or unmap the next chunk of ``v->vpci.mem``; -ERESTART: again later (True). Then
        ``spin_lock(&v->vpci.pdev->vpci->lock)`` with no guarantee either still exists, and
        on a mapping failure ``vpci_remove_device`` while other vCPUs may use the device."""
        s = self.s
        v = self.v
        if not v.mem:
            return False
        s.pending_steps += 1
        cmd = v.cmd
        data = (self.dom, bool(cmd & PCI_COMMAND_MEMORY), v.pending_sbdf)
        rc = self.rangeset_consume_ranges(v.mem, self.map_range, data)
        if rc == -ERESTART:
            return True
        pdev = s.pdevs[v.pdev]
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        # Disable memory decoding unconditionally on failure.
        self.modify_decoding(v.pdev, cmd & ~PCI_COMMAND_MEMORY if rc else cmd, not rc and bool(v.rom_only))
        spin_unlock(s.vpcis[s.pdevs[v.pdev].vpci].lock)
        self.finish_pending(v)
        if rc:
            # FIXME (4.16): remove the device from the domain; leftover mappings possible
            self.vpci_remove_device(v.pdev)
        return False

    def finish_pending(self, v: Any) -> None:
        """``rangeset_destroy(v->vpci.mem); v->vpci.mem = NULL;`` (4.16)."""
        self.trace("pending_done", v.pending_sbdf, self.dom, self.vid)
        self.rangeset_destroy(v.mem)
        v.mem = NULL
        v.pending_sbdf = -1
        self.s.pending_done += 1

    def modify_decoding(self, h: int, cmd: int, rom_only: bool) -> None:
        """``modify_decoding`` (header.c, 4.16), ``pdev->vpci->lock`` held: every mappable
        BAR's ``enabled`` follows the memory bit, then PCI_COMMAND is written."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        on = 1 if cmd & PCI_COMMAND_MEMORY else 0
        for i in range(NR_BARS):
            if vp.bar_type[i] == VPCI_BAR_MEM32:
                vp.bar_enabled[i] = on
        vp.bars_mapped = on
        sbdf = pdev.sbdf
        self.pci_conf_write16_cmd(sbdf, cmd)
        self.note_decoding(pdev.domain, sbdf, on)

    # -- device set-up and removal (vpci.c) ------------------------------------------------------
    def vpci_add_handlers(self, h: int) -> int:
        """``vpci_add_handlers(pdev)`` (vpci.c, 4.16): ``pdev->vpci = xzalloc(...)``, then the
        init functions (``init_bars``); on failure ``vpci_remove_device``."""
        s = self.s
        pdev = s.pdevs[h]
        self.domain_deref(pdev.domain, "vpci_add_handlers")  # has_vpci(pdev->domain)
        vh = s.vpcis.alloc()
        if vh == NULL:
            return -ENOMEM
        pdev.vpci = vh
        self.note_vpci(pdev.domain, pdev.sbdf)
        self.trace("vpci_alloc", pdev.sbdf, pdev.domain)
        rc = self.init_bars(h)
        if rc:
            self.vpci_remove_device(h)
        return rc

    def init_bars(self, h: int) -> int:
        """``init_bars`` (header.c, 4.16): the PCI_COMMAND handler, decoding off while the
        BARs are sized, one handler per BAR; if decoding was on, ``modify_bars`` to map
        them (deferred to ``current``). A DomU starts with decoding off (see common)."""
        s = self.s
        pdev = s.pdevs[h]
        vp = s.vpcis[pdev.vpci]
        sbdf = pdev.sbdf
        vp.handlers += 1  # vpci_add_register(..., cmd_write, PCI_COMMAND, ...)
        cmd = self.pci_conf_read16_cmd(sbdf)
        if not self.is_hardware_domain(pdev.domain):
            cmd &= ~PCI_COMMAND_MEMORY
        if cmd & PCI_COMMAND_MEMORY or not self.is_hardware_domain(pdev.domain):
            self.pci_conf_write16_cmd(sbdf, cmd & ~PCI_COMMAND_MEMORY)
        self.size_bars(vp, sbdf)
        return self.modify_bars(h, cmd, False) if cmd & PCI_COMMAND_MEMORY else 0

    def vpci_remove_device(self, h: int) -> int:
        """``vpci_remove_device(pdev)`` (vpci.c, 4.16): under ``pdev->vpci->lock`` drop the
        handlers, then ``xfree(pdev->vpci); pdev->vpci = NULL``. No NULL check of
        ``pdev->vpci``; nothing about other vCPUs' pending work."""
        s = self.s
        pdev = s.pdevs[h]
        self.domain_deref(pdev.domain, "vpci_remove_device")  # has_vpci(pdev->domain)
        self.spin_lock_obj(s.vpcis[pdev.vpci])
        s.vpcis[pdev.vpci].handlers = 0
        spin_unlock(s.vpcis[pdev.vpci].lock)
        self.vpci_free(h)
        return 0

    def vpci_free(self, h: int) -> None:
        """``xfree(pdev->vpci->msix); ...; xfree(pdev->vpci); pdev->vpci = NULL;``"""
        s = self.s
        pdev = s.pdevs[h]
        vh = pdev.vpci
        self.note_teardown(pdev.domain, pdev.sbdf, s.vpcis[vh])
        self.trace("vpci_free", pdev.sbdf, pdev.domain)
        s.vpcis.free(vh)
        pdev.vpci = NULL

    # -- hypercalls (the toolstack: Dom0's vCPU 0) ------------------------------------------
    def pci_add_device(self, sbdf: int) -> int:
        """``PHYSDEVOP_pci_device_add`` -> ``pci_add_device`` (pci.c, 4.16): under
        ``pcidevs_lock``: the pdev goes to the hardware domain, ``vpci_add_handlers``, then
        ``iommu_add_device``, whose failure calls ``vpci_remove_device``."""
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
                else:
                    ret = self.iommu_add_device(sbdf)
                    if ret:
                        self.vpci_remove_device(h)
                        self.list_del(DOM0, sbdf)
                        pdev.domain = NO_DOMAIN
        spin_unlock(s.pcidevs_lock)
        return ret

    def pci_remove_device(self, sbdf: int) -> int:
        """``PHYSDEVOP_pci_device_remove`` -> ``pci_remove_device`` (pci.c, 4.16): under
        ``pcidevs_lock``: ``vpci_remove_device``, off the domain's list, ``free_pdev``."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        ret = -19
        h = s.alldevs[sbdf]
        if h:
            pdev = s.pdevs[h]
            self.vpci_remove_device(h)
            ret = 0  # pci_cleanup_msi, iommu_remove_device
            if pdev.domain != NO_DOMAIN:
                self.list_del(pdev.domain, sbdf)
            self.free_pdev(h, sbdf)
        spin_unlock(s.pcidevs_lock)
        return ret

    def reassign(self, h: int, sbdf: int, source: int, target: int) -> None:
        """``hd->platform_ops->reassign_device``'s list move: ``list_move(&pdev->domain_list,
        &target->pdev_list); pdev->domain = target``."""
        self.list_del(source, sbdf)
        self.s.pdevs[h].domain = target
        self.list_add(target, h, sbdf)

    def assign_device(self, dom: int, sbdf: int) -> int:
        """``XEN_DOMCTL_assign_device`` -> ``assign_device`` (pci.c, 4.16, under
        ``pcidevs_lock``) with the series' hook ``vpci_assign_device``: the IOMMU assignment
        (may return -ERESTART: ``hypercall_create_continuation``), the move, the old owner's
        vPCI removed, the new owner's set up."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        h = s.alldevs[sbdf]
        rc = self.iommu_assign_device()
        if rc == 0:
            source = s.pdevs[h].domain
            self.reassign(h, sbdf, source, dom)
            self.vpci_remove_device(h)  # vpci_assign_device: the previous owner's state goes
            rc = self.vpci_add_handlers(h)
        spin_unlock(s.pcidevs_lock)
        return rc

    def deassign_device(self, dom: int, sbdf: int) -> int:
        """``XEN_DOMCTL_deassign_device`` -> ``deassign_device`` (pci.c, 4.16, under
        ``pcidevs_lock``) with the series' hook ``vpci_deassign_device`` (frees
        ``pdev->vpci``), then the pdev goes back to the hardware domain with its vPCI."""
        s = self.s
        spin_lock(s.pcidevs_lock)
        rc = self.deassign_locked(dom, sbdf)
        spin_unlock(s.pcidevs_lock)
        return rc

    def deassign_locked(self, dom: int, sbdf: int) -> int:
        h = self.pci_get_pdev_by_domain(dom, sbdf)
        if h == NULL:
            return -19
        self.vpci_remove_device(h)  # vpci_deassign_device(d, pdev)
        self.reassign(h, sbdf, dom, DOM0)
        return self.vpci_add_handlers(h)

    def release_device(self, dom: int, sbdf: int) -> int:
        s = self.s
        spin_lock(s.pcidevs_lock)
        rc = self.deassign_locked(dom, sbdf)
        spin_unlock(s.pcidevs_lock)
        return rc

    def vcpu_destroy(self, vv: Any) -> None:
        self.rangeset_destroy(vv.mem)
        vv.mem = NULL
        super().vcpu_destroy(vv)


class UnsynchronisedRemoval4163(UnsynchronisedRemoval):
    """Xen 4.16.3 (RELEASE-4.16.3): 4.16 with 96d26f11f5, the stable backport of 6ccb5e308c
    "vpci: don't assume that vpci per-device data exists unconditionally" (Roger Pau Monne,
    Oct 2022): ``vpci_read``, ``vpci_write`` and ``vpci_remove_device`` return (or go to the
    hardware) when ``pdev->vpci`` is NULL, as it is after a failed ``vpci_process_pending``
    removed it. The thread's crash paths 1 and 3 through those functions are gone;
    ``vpci_process_pending``'s ``spin_lock(&v->vpci.pdev->vpci->lock)`` and everything the
    thread is about (no lock keeps the pdev and its vpci alive) are unchanged."""

    name = "unsynchronised-removal-4.16.3"

    def vpci_write(self, sbdf: int, cmd: int) -> None:
        """``vpci_write`` (vpci.c, 4.16.3): ``if ( !pdev || !pdev->vpci )`` -> the hardware."""
        s = self.s
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        if h != NULL and s.pdevs[h].vpci == NULL:
            s.mmio_writes += 1
            self.trace("mmio_write", sbdf, self.dom, 1 if cmd & PCI_COMMAND_MEMORY else 0)
            self.vpci_write_hw(sbdf, cmd)
            return
        super().vpci_write(sbdf, cmd)

    def vpci_read(self, sbdf: int) -> int:
        """``vpci_read`` (vpci.c, 4.16.3): ``if ( !pdev || !pdev->vpci )`` -> the hardware."""
        s = self.s
        h = self.pci_get_pdev_by_domain(self.dom, sbdf)
        if h != NULL and s.pdevs[h].vpci == NULL:
            s.mmio_reads += 1
            return self.pci_conf_read16_cmd(sbdf)
        return super().vpci_read(sbdf)

    def vpci_remove_device(self, h: int) -> int:
        """``vpci_remove_device`` (vpci.c, 4.16.3): ``if ( !has_vpci(pdev->domain) ||
        !pdev->vpci ) return;``."""
        pdev = self.s.pdevs[h]
        self.domain_deref(pdev.domain, "vpci_remove_device")
        if pdev.vpci == NULL:
            return 0
        return super().vpci_remove_device(h)
