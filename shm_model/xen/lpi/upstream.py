"""``upstream``: Xen 4.10 (RELEASE-4.10.0) — 56e1b3ebc9 (NULL checks of ``irq_to_pending``),
bccfbe70a3 (PRISTINE LPIs), 08055c8ea7 (MAPD), 5928960ee7 (DISCARD), 5e8d02560a (MAPTI/MAPI),
with f98d6a0862 (``vgic_vcpu_inject_lpi``).

Its locking order is common.py's (the comment at the top of vgic-v3-its.c), with two
departures the C makes and the model keeps: MAPTI takes ``pend_lpi_tree_lock`` for writing
with interrupts enabled, outside any vgic lock, while ``gicv3_do_LPI`` reads it in
interrupt context (``vgic_v3_lpi_to_pending``); and ``remove_mapped_guest_device`` frees
``pend_irqs`` holding no lock at all.

- DISCARD (``its_discard_event``, under its_lock): the ITTE's vCPU's vgic lock, the tree's
  write lock, ``radix_tree_delete``, ``gic_remove_irq_from_queues`` and
  ``vgic_init_pending_irq(p, INVALID_LPI)`` under the vgic lock, then the host entry
  (INVALID_LPI). Nothing is freed: the pending_irq is an element of ``dev->pend_irqs``.
- MAPD V=1 (``gicv3_its_map_guest_device``): ``xzalloc_array(struct pending_irq,
  nr_events)``. MAPD V=0: ``its_unmap_device`` (every event discarded, under its_lock), then
  ``gicv3_its_map_guest_device(valid = false)`` -> ``remove_mapped_guest_device``:
  ``xfree(dev->pend_irqs)`` with no lock and no grace period.
- MAPTI: ``vgic_init_pending_irq``, ``update_lpi_property``, ``lpi_vcpu_id``, PRISTINE set,
  then ``radix_tree_insert`` under the tree's write lock (``write_lock``, interrupts on).
- ``vgic_vcpu_inject_lpi``: ``irq_to_pending`` (read lock, dropped), ``ACCESS_ONCE(
  p->lpi_vcpu_id)`` with no lock ("TODO: this assumes that the struct pending_irq stays valid
  all of the time"), ``vgic_vcpu_inject_irq`` (which looks it up again under the vgic lock).
- The LR side: 4.10.0's gic.c (NULL checks, PRISTINE in ``gic_update_one_lr`` and
  ``gic_find_unused_lr``, cleared by ``gic_set_lr``).
"""

from __future__ import annotations

from ...heap import NULL, SLOT_MASK
from ...rwlock import write_lock, write_unlock
from ...spinlock import spin_unlock_irqrestore
from .common import ENOENT, INVALID_LPI, LpiVgic, lpi_k


class Upstream(LpiVgic):
    name = "upstream"
    inject_lookup_under_lock = True
    lpi_pristine = True
    pend_irqs_at_mapd = True

    # -- MAPD -----------------------------------------------------------------------------------------
    def remove_mapped_guest_device(self, devid: int) -> int:
        """gic-v3-its.c ``gicv3_its_map_guest_device(.., valid = false)`` (4.10.0): rb_erase
        under its_devices_lock, dropped; ``remove_mapped_guest_device``: the host MAPD V=0,
        ``gicv3_free_host_lpi_block`` (host entries empty), ``xfree(dev->pend_irqs)``,
        ``xfree(dev)`` — no lock held, nothing waits for a CPU still using a pointer into
        ``pend_irqs``."""
        d = self.d
        dh = self.its_device_erase(devid)
        if dh == NULL:
            return -ENOENT
        d.hw_mapped[devid] = 0  # its_send_cmd_mapd(.., false): the host ITS discards the events
        for e in range(self.nr_events):
            self.gicv3_lpi_update_host_entry(devid * self.nr_events + e, INVALID_LPI)
        dev = d.devs[dh]
        n = 0
        for e in range(self.nr_events):  # xfree(dev->pend_irqs)
            h = dev.pend_irqs[e]
            p = d.pirqs[h]
            self.check_unlinked(h, p, "remove_mapped_guest_device (xfree(dev->pend_irqs))")
            d.slot_seq[h & SLOT_MASK] = 0
            d.pirqs.free(h)
            n += 1
        self.trace("pend_irqs_free", devid, n)
        d.devs.free(dh)  # xfree(dev)
        return 0

    # -- MAPTI ------------------------------------------------------------------------------------------
    def its_handle_mapti(self, devid: int, evid: int, vlpi: int, coll: int) -> int:
        """vgic-v3-its.c ``its_handle_mapti`` (5e8d02560a, bccfbe70a3; 4.10.0)."""
        d = self.d
        vcpu = self.mapti_write_itte(devid, evid, vlpi, coll)
        if vcpu < 0:
            return -1
        # gicv3_assign_guest_event: the still unused pending_irq, host entry = vLPI
        h, host = self.get_event_pending_irq(devid, evid)
        if h != NULL:
            self.gicv3_lpi_update_host_entry(host, vlpi)
            p = d.pirqs[h]
            self.mapti_init_pending_irq(p, h, vlpi, vcpu)
            write_lock(d.pend_lpi_tree_lock)  # interrupts enabled
            k = lpi_k(vlpi)
            ok = d.pend_lpi_tree[k] == NULL
            if ok:
                d.pend_lpi_tree[k] = h
                self.trace("tree_insert", vlpi, h, vcpu)
            write_unlock(d.pend_lpi_tree_lock)
            if ok:
                d.maptis += 1
                self.trace("cmd_mapti", vlpi, devid, evid)
                return 0
            self.gicv3_remove_guest_event(devid, evid)  # out_remove_host_entry
        self.mapti_failed_unmap(devid, evid)  # out_remove_mapping
        return -1

    # -- DISCARD -------------------------------------------------------------------------------------------
    def its_discard_event(self, devid: int, evid: int) -> int:
        """vgic-v3-its.c ``its_discard_event`` (5928960ee7, 4.10.0): requires its_lock.
        :meth:`discard_unlink` (read_itte, the vCPU's vgic lock, the tree delete,
        ``gic_remove_irq_from_queues``); ``vgic_init_pending_irq(p, INVALID_LPI)``; unlock;
        ``gicv3_remove_guest_event``. The pending_irq stays in ``dev->pend_irqs``."""
        r = self.discard_unlink(devid, evid)
        if isinstance(r, int):
            return r
        vv, flags, h, p, vlpi = r
        self.vgic_init_pending_irq(p, INVALID_LPI)
        self.d.slot_seq[h & SLOT_MASK] = 0
        spin_unlock_irqrestore(vv.lock, flags)
        return self.gicv3_remove_guest_event(devid, evid)
