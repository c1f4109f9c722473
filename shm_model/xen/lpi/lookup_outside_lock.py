"""``lookup-outside-lock``: the v7 ITS series before Andre's proposal (seed 004), with DISCARD
freeing the ``pending_irq`` at once (PROTOCOLS.md section 004).

Its locking order is common.py's (vcmd -> ITS -> its_devices -> vgic -> pend_lpi_tree).

What differs from the proposal (:mod:`.null_entries_under_vgic_lock`) is only where the
pointer is looked up, the thread's question: ``irq_to_pending`` before the vCPU's vgic lock,
the pointer used after it —

- ``vgic_vcpu_inject_irq`` looks ``n`` up before ``spin_lock_irqsave(&v->arch.vgic.lock)``
  (vgic.c at RELEASE-4.9.0, the base of the v7 series: "struct pending_irq *iter, *n =
  irq_to_pending(v, virq)" before the lock; 56e1b3ebc9 "moved under VCPU VGIC lock" is the
  change the proposal relies on);
- ``vgic_vcpu_inject_lpi`` reads ``p->lpi_vcpu_id`` of the pointer it looked up, holding no
  lock (gic-v3-lpi.c, f98d6a0862, as merged in 4.10.0 with its TODO: "this assumes that the
  struct pending_irq stays valid all of the time").

The rest is rendered as the proposal does it (so that a run isolates the lookup): MAPTI
allocates the ``pending_irq`` (``xzalloc``) and inserts it under the vgic lock of its vCPU
and the tree's write lock; DISCARD, under its_lock, takes the vgic lock of the ITTE's
vCPU, then the tree's write lock, deletes the entry (NULL), drops the tree lock, unlinks
the ``pending_irq`` from inflight/lr_pending and frees it under the vgic lock; MAPD V=0
discards every event, then frees the device. The list-register side is 4.10.0's: the NULL
checks of 56e1b3ebc9 (the v7 series' patch 10/34) and PRISTINE (bccfbe70a3, which came with
v8: here so that a stale LR of a number mapped again does not end the run before the
thread's race is seen; ``null-entries-as-posted`` shows what it prevents).
"""

from __future__ import annotations

from ...heap import NULL, SLOT_MASK
from ...rwlock import write_lock, write_unlock
from ...spinlock import spin_lock, spin_lock_irqsave, spin_unlock, spin_unlock_irqrestore
from .common import EINVAL, ENOENT, INVALID_LPI, LpiVgic, lpi_k


class LookupOutsideLock(LpiVgic):
    name = "lookup-outside-lock"
    inject_lookup_under_lock = False
    lpi_pristine = True

    # -- MAPD ---------------------------------------------------------------------------------------
    def remove_mapped_guest_device(self, devid: int) -> int:
        """``gicv3_its_map_guest_device`` (valid = 0) -> ``remove_mapped_guest_device``: rb
        erase under its_devices_lock, the host MAPD V=0 (the events stop firing), host
        entries invalid, ``xfree(dev)`` (every event's pending_irq was freed by its DISCARD;
        one left, a DISCARD that failed, is freed here)."""
        d = self.d
        dh = self.its_device_erase(devid)
        if dh == NULL:
            return -ENOENT
        d.hw_mapped[devid] = 0
        for e in range(self.nr_events):
            self.gicv3_lpi_update_host_entry(devid * self.nr_events + e, INVALID_LPI)
        dev = d.devs[dh]
        for e in range(self.nr_events):
            h = dev.pend_irqs[e]
            if h != NULL:
                self.check_unlinked(h, d.pirqs[h], "remove_mapped_guest_device")
                d.pirqs.free(h)
        d.devs.free(dh)
        return 0

    # -- MAPTI --------------------------------------------------------------------------------------
    def gicv3_assign_guest_event(self, devid: int, evid: int, vlpi: int, vcpu: int) -> int:
        """gic-v3-its.c ``gicv3_assign_guest_event`` (4.10.0) for a design that allocates per
        event: under its_devices_lock, ``xzalloc(struct pending_irq)`` into
        ``dev->pend_irqs[eventid]``, the host entry set to the vLPI. The handle, or NULL."""
        d = self.d
        spin_lock(d.its_devices_lock)
        dh = d.its_devices[devid]
        h = NULL
        if dh != NULL:
            dev = d.devs[dh]
            if evid < dev.eventids and dev.pend_irqs[evid] == NULL:
                h = d.pirqs.alloc()
                if h != NULL:
                    dev.pend_irqs[evid] = h
                    self.gicv3_lpi_update_host_entry(dev.host_lpi_base + evid, vlpi, vcpu)
        spin_unlock(d.its_devices_lock)
        return h

    def _release_event(self, devid: int, evid: int, h: int) -> None:
        """The error path of MAPTI: ``dev->pend_irqs[eventid]`` cleared and freed."""
        d = self.d
        spin_lock(d.its_devices_lock)
        dh = d.its_devices[devid]
        if dh != NULL and d.devs[dh].pend_irqs[evid] == h:
            d.devs[dh].pend_irqs[evid] = NULL
        spin_unlock(d.its_devices_lock)
        d.pirqs.free(h)

    def its_handle_mapti(self, devid: int, evid: int, vlpi: int, coll: int) -> int:
        """vgic-v3-its.c ``its_handle_mapti`` (5e8d02560a; 4.10.0's order): under its_lock
        refuse an existing mapping, check the collection and the LPI, write_itte; then
        gicv3_assign_guest_event, vgic_init_pending_irq, update_lpi_property,
        ``lpi_vcpu_id``; the insert into the tree under the vCPU's vgic lock (the proposal's
        rule for every tree change) and the tree's write lock; errors undo it all."""
        d = self.d
        vcpu = self.mapti_write_itte(devid, evid, vlpi, coll)
        if vcpu < 0:
            return -1
        ret = -1
        h = self.gicv3_assign_guest_event(devid, evid, vlpi, vcpu)
        if h != NULL:
            p = d.pirqs[h]
            self.mapti_init_pending_irq(p, h, vlpi, vcpu)
            if self._tree_insert(vlpi, h, vcpu):
                d.maptis += 1
                self.trace("cmd_mapti", vlpi, devid, evid)
                return 0
            self.gicv3_remove_guest_event(devid, evid)
            self._release_event(devid, evid, h)
        self.mapti_failed_unmap(devid, evid)
        return ret

    def _tree_insert(self, vlpi: int, h: int, vcpu: int) -> bool:
        """``radix_tree_insert`` under the vCPU's vgic lock (irqsave) and the tree's write
        lock; False if the LPI is mapped already."""
        d = self.d
        vv = d.vcpus[vcpu]
        flags = spin_lock_irqsave(vv.lock)
        write_lock(d.pend_lpi_tree_lock)
        k = lpi_k(vlpi)
        ok = d.pend_lpi_tree[k] == NULL
        if ok:
            d.pend_lpi_tree[k] = h
            self.trace("tree_insert", vlpi, h, vcpu)
        write_unlock(d.pend_lpi_tree_lock)
        spin_unlock_irqrestore(vv.lock, flags)
        return ok

    # -- DISCARD ------------------------------------------------------------------------------------
    def its_discard_event(self, devid: int, evid: int) -> int:
        """DISCARD of one event (``its_discard_event``, the thread's version), under its_lock:
        :meth:`discard_unlink` (read_itte, the vCPU's vgic lock, the tree delete, unlinked
        from inflight/lr_pending); then the pending_irq is freed, still under the vgic lock;
        then the host entry (INVALID_LPI) and ``dev->pend_irqs[eventid]``."""
        r = self.discard_unlink(devid, evid)
        if isinstance(r, int):
            return r
        vv, flags, h, p, vlpi = r
        d = self.d
        self.check_unlinked(h, p, "DISCARD")
        d.slot_seq[h & SLOT_MASK] = 0
        d.pirqs.free(h)
        self.trace("pirq_free", vlpi, h)
        spin_unlock_irqrestore(vv.lock, flags)
        spin_lock(d.its_devices_lock)
        dh = d.its_devices[devid]
        host = -1
        if dh != NULL:
            dev = d.devs[dh]
            if dev.pend_irqs[evid] == h:
                dev.pend_irqs[evid] = NULL
            host = dev.host_lpi_base + evid
        spin_unlock(d.its_devices_lock)
        if host < 0:
            return -EINVAL
        self.gicv3_lpi_update_host_entry(host, INVALID_LPI)
        return 0

