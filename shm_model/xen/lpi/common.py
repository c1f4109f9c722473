"""LPIs on the old VGIC: the shared state and the helpers every design uses (seed 004,
PROTOCOLS.md section 004, issue 25).

Xen 4.10 (RELEASE-4.10.0): ``xen/arch/arm/vgic-v3-its.c`` (the virtual ITS and its command
queue), ``gic-v3-lpi.c`` (``gicv3_do_LPI``, ``vgic_vcpu_inject_lpi``, the host LPI table),
``gic-v3-its.c`` (``gicv3_its_map_guest_device``, ``get_event_pending_irq``,
``gicv3_assign_guest_event``, ``gicv3_remove_guest_event``), ``vgic-v3.c``
(``vgic_v3_lpi_to_pending``, ``vgic_v3_lpi_get_priority``), and for the list registers the
old VGIC of ``migration-storm``, reused, not forked: :class:`LpiVgic` is a
:class:`~shm_model.xen.old_vgic.xen_4_10_0.Xen4100` (design ``xen-4.10.0``) whose LPI hooks
(``irq_to_pending`` of an LPI, the list entries' handles, ``gic_find_unused_lr``'s PRISTINE
scan) are this package's.

What is here is what the designs do not disagree about: the objects, the ITS tables, the
pend_lpi_tree lookup, INV, ``gicv3_do_LPI`` and the model's bookkeeping for the invariants.
Each design (``lookup_outside_lock``, ``null_entries_under_vgic_lock``, ``upstream``)
writes MAPD, MAPTI, DISCARD and ``vgic_vcpu_inject_lpi``.

Locking order (the comment at the top of vgic-v3-its.c, 4.10.0), outermost first::

    its->vcmd_lock                        the command queue: vgic_v3_its_mmio_write (CWRITER)
        its->its_lock                     the ITS tables: read_itte/write_itte, DISCARD, INV
            d->its_devices_lock           the device tree: get_event_pending_irq, MAPD
                v->arch.vgic.lock         the struct pending_irq (irqsave: taken in IRQ context)
                    d->pend_lpi_tree_lock the radix tree (rwlock: read in IRQ context)

``vcmd_lock``, ``its_lock`` and ``its_devices_lock`` are plain ``spin_lock`` (task context
only); the vgic lock is taken with interrupts disabled everywhere but in the ISR. lockdep's
class graph checks this order in every run.

The world (what the model simplifies, said once here; the designs say theirs):

- One domain, the hardware domain (MAPD's ``gicv3_its_map_guest_device`` and
  ``its_unmap_device``'s ASSERT are for it only in 4.10), ``--vcpus`` vCPUs, vCPU ``v``
  pinned on pCPU ``v``; one virtual ITS; collection ``c`` is mapped to vCPU ``c`` at boot
  (MAPC, not re-issued).
- ``--devices`` devices (DevID ``0 ..``) of ``--events`` events each; the ITT is an array in
  the model (Xen keeps it in guest memory and reads it with ``access_guest_memory_by_ipa``
  under ``its_lock``: the same lock rule). Guest DevID = host DevID, as for Dom0.
- ``--lpis`` virtual LPIs, ``8192 ..``. ``pend_lpi_tree`` is an array indexed by LPI with
  the same semantics as the radix tree (lookup, insert failing on an existing entry,
  delete returning the old one).
- Host LPIs: event ``e`` of device ``d`` is host LPI ``HOST_LPI_BASE + d * events + e``
  for as long as the device is mapped (Xen allocates blocks of 32 at MAPD; the number is
  irrelevant to the races). ``union host_lpi``'s ``data`` is one word here:
  ``virt_lpi | vcpu_id << 32`` (the ``vcpu_id`` half is dcb6cb2636's, removed by
  41aca705ed; only the proposal's rendering reads it), read and written atomically.
- The physical device raises the host LPI of a mapped event at pCPU 0 ("For now we map every
  host LPI to host CPU 0", gic-v3-its.c ``gicv3_its_map_host_events``, 4.10.0; the workload's
  ``--host-lpi-cpu any`` spreads them): ``gicv3_do_LPI`` runs there in interrupt context. An
  LPI raised before its event was unmapped may still arrive (a real signal).
- ``struct pending_irq`` of an LPI is a heap object (``pirqs``); a pointer is its handle.
  Xen 4.10 allocates a device's ``pend_irqs`` as one array; here as ``events`` objects
  allocated and freed together (the same sites), so that a pointer into the array is a
  handle and a stale one a KASAN report naming the allocation and the free.
- The property table (``prop_table``: enabled bit and priority per LPI) is guest memory;
  ``rdists_enabled`` is true from the start. The guest writes it and sends INV.
- LPIs have no active state: the guest's acknowledge empties the LR (old_vgic/common.py).
- MOVI, MOVALL, INVALL, CLEAR, INT and SYNC are not issued.
"""

from __future__ import annotations

from typing import Any

from ...heap import NULL, SLOT_MASK, Heap
from ...layout import Array, Int, Nested, RwLock, Spinlock, Struct
from ...rwlock import read_lock, read_unlock, write_lock, write_unlock
from ...spinlock import assert_held, spin_lock, spin_lock_irqsave, spin_unlock, spin_unlock_irqrestore
from ..old_vgic.common import (GIC_IRQ_GUEST_ENABLED, GIC_IRQ_GUEST_PRISTINE_LPI, GIC_IRQ_GUEST_VISIBLE,
                               INVALID_VCPU, LPI_OFFSET, OldVgicDomain, test_bit)
from ..old_vgic.xen_4_10_0 import Xen4100

INVALID_LPI = 0  # xen/include/asm-arm/irq.h (4.10.0)
MAX_VIRT_CPUS = 128
INVALID_VCPU_ID = MAX_VIRT_CPUS  # xen/include/xen/sched.h
UNMAPPED_COLLECTION = 0xffff  # vgic-v3-its.c ((coll_table_entry_t)~0)
LPI_PROP_ENABLED = 1 << 0  # gic_v3_defs.h
LPI_PROP_PRIO_MASK = 0xfc
LPI_PROP_DEFAULT = 0xa0 | LPI_PROP_ENABLED  # the guest's boot-time property byte
HOST_LPI_BASE = 1 << 16  # model: host LPI numbers (physical INTIDs, beside the guest's)
ENOENT, EINVAL, EBUSY, ENOMEM = 2, 22, 16, 12

#: trace events of the model (a: the vLPI unless said)
EVENTS = {
    "cmd_mapd": "ITS MAPD DevID {a} V={b} -> {c}",
    "cmd_mapti": "ITS MAPTI DevID {b} EvID {c} -> LPI {a}",
    "cmd_discard": "ITS DISCARD DevID {b} EvID {c} (LPI {a})",
    "cmd_inv": "ITS INV LPI {a} (prop {b})",
    "tree_insert": "LPI {a}: pending_irq {b:#x} inserted in pend_lpi_tree (vcpu{c})",
    "tree_delete": "LPI {a}: pending_irq {b:#x} removed from pend_lpi_tree (vcpu{c}'s vgic lock)",
    "pirq_free": "LPI {a}: pending_irq {b:#x} freed",
    "pend_irqs_free": "DevID {a}: pend_irqs freed ({b} pending_irqs)",
    "lpi_fire": "host LPI {a} (DevID {b}) raised at pcpu{c}",
    "do_lpi": "LPI {a}: gicv3_do_LPI (host LPI {b})",
    "do_lpi_unmapped": "host LPI {b}: gicv3_do_LPI: no vLPI (INVALID_LPI)",
    "inject_lpi": "LPI {a}: vgic_vcpu_inject_lpi -> vcpu{b} (pending_irq {c:#x})",
    "inject_lpi_null": "LPI {a}: vgic_vcpu_inject_lpi: irq_to_pending NULL",
    "inject": "irq {a}: injected to vcpu{b}",
    "lr_set": "irq {a}: into LR{c} of vcpu{b}",
    "lr_eoi": "irq {a}: LR{c} of vcpu{b} EOIed, freed",
    "lr_retire": "irq {a}: LR{c} of vcpu{b} cleared (NULL or PRISTINE: an unmapped LPI)",
    "guest_ack": "irq {a}: guest acknowledges it on vcpu{b} (LPI: LR emptied)",
    "raise_inflight": "irq {a}: gic_raise_inflight_irq: gic_update_one_lr(vcpu{b}, LR{c})",
    "inject_inflight_elsewhere": "irq {a}: injection to vcpu{b} found it inflight on vcpu{c}",
    "kick": "vcpu{a}: vcpu_unblock",
    "block": "vcpu{a}: WFI, blocked",
}
KEY_EVENTS = ("cmd_mapd", "cmd_mapti", "cmd_discard", "cmd_inv", "tree_insert", "tree_delete", "pirq_free",
              "pend_irqs_free", "do_lpi", "inject_lpi", "inject_lpi_null", "inject", "lr_set", "lr_eoi", "lr_retire",
              "guest_ack")
#: inline checks (the model's and old_vgic's)
CHECKS = ("freed-unlinked", "lpi-discarded-in-lr", "vgic-list-lock", "raise-inflight-lr")


def itt_size(o: Any) -> int:
    return o.devices * o.events


class LpiPendingIrq(Struct):
    """``struct pending_irq`` of an LPI (xen/include/asm-arm/vgic.h, 4.10.0): the old VGIC's
    fields (old_vgic.common.PendingIrq, same names) and the LPI's ``irq``, ``lpi_vcpu_id``,
    ``lpi_priority``."""

    status = Int()
    lr = Int()
    priority = Int()
    inflight = Int(init=INVALID_VCPU)
    lr_queue = Int(init=INVALID_VCPU)
    lr_queue_seq = Int()
    old_vcpu = Int(init=INVALID_VCPU)
    irq = Int()
    lpi_vcpu_id = Int(init=INVALID_VCPU_ID)
    lpi_priority = Int()


class ItsDevice(Struct):
    """``struct its_device`` (gic-v3-its.c, 4.10.0): DevID, events, its host LPIs and
    ``pend_irqs`` (a handle per event: upstream's pre-allocated array elements, or the
    per-event object a MAPTI allocated)."""

    guest_devid = Int()
    eventids = Int()
    host_lpi_base = Int()
    pend_irqs = Array(Int, "events")


class VirtIts(Struct):
    """``struct virt_its`` (vgic-v3-its.c, 4.10.0) and the tables it points to: the
    collection table, the device table (ITT size per DevID, 0: unmapped) and the ITTs."""

    vcmd_lock = Spinlock("&its->vcmd_lock")
    its_lock = Spinlock("&its->its_lock")
    creadr = Int()  # commands processed
    coll_table = Array(Int, "vcpus")
    dev_table = Array(Int, "devices")
    itte_vlpi = Array(Int, itt_size)
    itte_coll = Array(Int, itt_size, init=UNMAPPED_COLLECTION)


class LpiDomain(OldVgicDomain):
    """The old-VGIC domain (``migration-storm``'s state) with GICv3 LPIs and a virtual ITS."""

    its = Nested(VirtIts)
    its_devices_lock = Spinlock("&d->arch.vgic.its_devices_lock")
    its_devices = Array(Int, "devices")  # the rb tree: guest DevID -> struct its_device handle
    devs = Heap(ItsDevice, slots=lambda o: 4 * o.devices, ctype="struct its_device")
    pend_lpi_tree_lock = RwLock("&d->arch.vgic.pend_lpi_tree_lock")
    pend_lpi_tree = Array(Int, "lpis")  # LPI - 8192 -> pending_irq handle, NULL: unmapped
    pirqs = Heap(LpiPendingIrq, slots=lambda o: 4 * o.devices * o.events, ctype="struct pending_irq")
    prop_table = Array(Int, "lpis", init=LPI_PROP_DEFAULT)  # the guest's LPI property table
    host_lpis = Array(Int, itt_size)  # union host_lpi .data per host LPI: virt_lpi | vcpu_id << 32
    hw_mapped = Array(Int, "devices")  # the host ITS has the device mapped (its events can fire)
    # model bookkeeping (not Xen): which MAPTI a pending_irq carries, for the LR invariant
    slot_seq = Array(Int, lambda o: 4 * o.devices * o.events)
    map_seq = Int()
    # model counters
    cmds = Int()
    mapd_valid = Int()
    mapd_invalid = Int()
    maptis = Int()
    mapti_failed = Int()
    discards = Int()
    invs = Int()
    lpis_fired = Int()
    lpis_handled = Int()
    lpi_injections = Int()
    lpi_null = Int()
    lr_retired = Int()


def lpi_k(virq: int) -> int:
    return virq - LPI_OFFSET


class LpiVgic(Xen4100):
    """The old VGIC (RELEASE-4.10.0's list-register code: ``Xen4100``, issue 25) with LPIs
    and a virtual ITS, as one CPU (worker) runs them. A design subclasses it
    (:mod:`.lookup_outside_lock`, :mod:`.null_entries_under_vgic_lock`, :mod:`.upstream`) and
    writes MAPD, MAPTI, DISCARD and ``vgic_vcpu_inject_lpi``."""

    name = ""

    def __init__(self, d: Any, cpu: Any, trace: Any) -> None:
        super().__init__(d, cpu, trace)
        self.nr_lpis = len(d.pend_lpi_tree)
        self.nr_devices = len(d.its.dev_table)
        self.nr_events = len(d.its.itte_vlpi) // max(1, self.nr_devices)

    # -- the hooks of old_vgic.common.OldVgic -----------------------------------------------------
    def lpi_to_pending(self, virq: int) -> Any:
        """vgic-v3.c ``vgic_v3_lpi_to_pending`` (4.10.0): ``read_lock(pend_lpi_tree_lock)``,
        ``radix_tree_lookup``, ``read_unlock``: the pointer (a view), None for NULL. Nothing
        keeps the object alive once the read lock is dropped."""
        d = self.d
        read_lock(d.pend_lpi_tree_lock)
        h = d.pend_lpi_tree[lpi_k(virq)]
        read_unlock(d.pend_lpi_tree_lock)
        return d.pirqs[h] if h != NULL else None

    def lpi_get_priority(self, virq: int) -> int:
        """vgic-v3.c ``vgic_v3_lpi_get_priority`` (4.10.0): looks the LPI up again,
        ``ASSERT(p)``, reads ``p->lpi_priority`` (a NULL p is dereferenced: a release build)."""
        p = self.lpi_to_pending(virq)
        if p is None:
            p = self.d.pirqs[NULL]
        return p.lpi_priority

    def lpi_deref(self, h: int) -> Any:
        return self.d.pirqs[h]

    def lpi_handle(self, p: Any) -> int:
        return p._g  # the handle the view was made from: the pointer

    def lr_set_note(self, v: int, i: int, virq: int, p: Any) -> None:
        vv = self.d.vcpus[v]
        h = p._g
        vv.lr_p[i] = h
        vv.lr_seq[i] = self.d.slot_seq[h & SLOT_MASK] if h > 0 else 0

    def lrs_cleared(self, v: int) -> None:
        """Invariant ``lpi-discarded-in-lr`` (issue 25: "at quiescence no LR refers to a
        discarded LPI"): once ``gic_clear_lrs`` has run every used LR through
        ``gic_update_one_lr``, an LR holding an LPI holds the mapping the tree has now (the
        pending_irq gic_set_lr wrote there, with the same MAPTI); an older one must have been
        retired (NULL or PRISTINE)."""
        d = self.d
        vv = d.vcpus[v]
        for i in range(self.nr_lrs):
            virq = vv.lr[i]
            if not vv.lr_mask[i] or virq < LPI_OFFSET:
                continue
            h = vv.lr_p[i]
            now = d.pend_lpi_tree[lpi_k(virq)]
            if now == h and d.slot_seq[h & SLOT_MASK] == vv.lr_seq[i]:
                continue
            why = ("unmapped (NULL in pend_lpi_tree)" if now == NULL else
                   f"mapped again (pending_irq {now:#x}, MAPTI #{d.slot_seq[now & SLOT_MASK]})")
            self.cpu.finding("invariant:lpi-discarded-in-lr",
                             f"BUG: vcpu{v}'s LR{i} still holds LPI {virq} of a discarded mapping after gic_clear_lrs",
                             message=f"LR{i} was written for pending_irq {h:#x} (MAPTI #{vv.lr_seq[i]}); LPI {virq} "
                                     f"is {why}: gic_update_one_lr took the LR for the new mapping instead of "
                                     f"retiring it, and changed that pending_irq's state from vcpu{v}",
                             subject=virq)
            return

    def lpi_in_range(self, vlpi: int) -> bool:
        """MAPTI's check ``intid >= its->d->arch.vgic.nr_lpis`` (the guest's LPI range)."""
        return LPI_OFFSET <= vlpi < LPI_OFFSET + self.nr_lpis

    # -- ITS tables (vgic-v3-its.c, 4.10.0) ---------------------------------------------------------
    def read_itte(self, devid: int, evid: int) -> tuple[int, int] | None:
        """``read_itte`` (4.10.0): requires its_lock (ASSERT). (vCPU, vLPI) of the event, or
        None (device unmapped, event out of range, collection unmapped)."""
        its = self.d.its
        assert_held(its.its_lock)
        if not its.dev_table[devid] or evid >= its.dev_table[devid]:
            return None
        e = devid * self.nr_events + evid
        coll = its.itte_coll[e]
        if coll == UNMAPPED_COLLECTION or coll >= len(its.coll_table):
            return None
        return its.coll_table[coll], its.itte_vlpi[e]

    def write_itte(self, devid: int, evid: int, coll: int, vlpi: int) -> bool:
        """``write_itte`` (4.10.0): requires its_lock (ASSERT)."""
        its = self.d.its
        assert_held(its.its_lock)
        if not its.dev_table[devid] or evid >= its.dev_table[devid]:
            return False
        e = devid * self.nr_events + evid
        its.itte_coll[e] = coll
        its.itte_vlpi[e] = vlpi
        return True

    def its_set_itt_address(self, devid: int, size: int) -> None:
        """``its_set_itt_address`` (4.10.0): the device table entry (0: INVALID_PADDR).
        Requires its_lock. Model: a MAPD V=1 gives the device a fresh ITT (the guest's zeroed
        memory: every event unmapped); a guest reusing an ITT with stale entries is not
        modelled (a DISCARD would then act on another event's LPI)."""
        its = self.d.its
        assert_held(its.its_lock)
        if size and not its.dev_table[devid]:
            for e in range(devid * self.nr_events, (devid + 1) * self.nr_events):
                its.itte_vlpi[e] = INVALID_LPI
                its.itte_coll[e] = UNMAPPED_COLLECTION
        its.dev_table[devid] = size

    # -- host side (gic-v3-its.c, gic-v3-lpi.c, 4.10.0) ---------------------------------------------
    def get_event_pending_irq(self, devid: int, evid: int) -> tuple[int, int]:
        """gic-v3-its.c ``get_event_pending_irq`` (4.10.0): takes its_devices_lock,
        ``get_its_device``, ``&dev->pend_irqs[eventid]`` and the host LPI. Returns (the
        pending_irq handle or NULL, the host LPI index or -1)."""
        d = self.d
        spin_lock(d.its_devices_lock)
        h, host = NULL, -1
        dh = d.its_devices[devid]
        if dh != NULL:
            dev = d.devs[dh]
            if evid < dev.eventids:
                h = dev.pend_irqs[evid]
                host = dev.host_lpi_base + evid
        spin_unlock(d.its_devices_lock)
        return h, host

    def gicv3_lpi_update_host_entry(self, host: int, vlpi: int, vcpu: int = INVALID_VCPU_ID) -> None:
        """gic-v3-lpi.c ``gicv3_lpi_update_host_entry`` (4.10.0): ``write_u64_atomic`` of the
        host LPI's entry (``virt_lpi``; dcb6cb2636's ``vcpu_id`` beside it)."""
        self.d.host_lpis[host] = vlpi | vcpu << 32

    def gicv3_remove_guest_event(self, devid: int, evid: int) -> int:
        """gic-v3-its.c ``gicv3_remove_guest_event`` (4.10.0): the host LPI's entry gets
        INVALID_LPI (later LPIs of the event are dropped in gicv3_do_LPI)."""
        _, host = self.get_event_pending_irq(devid, evid)
        if host < 0:
            return -EINVAL
        self.gicv3_lpi_update_host_entry(host, INVALID_LPI)
        return 0

    def gicv3_do_LPI(self, plpi: int) -> None:
        """gic-v3-lpi.c ``gicv3_do_LPI`` (4.10.0), in interrupt context on the pCPU the host
        LPI arrived at: EOI at once, ``read_u64_atomic`` of the host entry, an INVALID_LPI is
        ignored, else ``vgic_vcpu_inject_lpi(d, hlpi.virt_lpi)``."""
        d = self.d
        host = plpi - HOST_LPI_BASE
        data = d.host_lpis[host]
        vlpi = data & 0xffffffff
        d.lpis_handled += 1
        if vlpi == INVALID_LPI:
            self.trace("do_lpi_unmapped", 0, host)
            return
        self.trace("do_lpi", vlpi, host)
        self.vgic_vcpu_inject_lpi(vlpi, data >> 32)

    def vgic_vcpu_inject_lpi(self, vlpi: int, host_vcpu: int) -> None:
        """gic-v3-lpi.c ``vgic_vcpu_inject_lpi`` (f98d6a0862; 4.10.0): ``p = irq_to_pending(
        d->vcpu[0], virq)`` (the tree's read lock, dropped again), ``vcpu_id =
        ACCESS_ONCE(p->lpi_vcpu_id)`` with no lock held, ``vgic_vcpu_inject_irq``. Nothing
        keeps ``p`` alive meanwhile: a DISCARD or MAPD V=0 may free it (the designs' question)."""
        d = self.d
        p = self.irq_to_pending(vlpi)
        if p is None:
            d.lpi_null += 1
            self.trace("inject_lpi_null", vlpi)
            return
        vcpu_id = p.lpi_vcpu_id  # ACCESS_ONCE: the object may be freed by now
        if vcpu_id >= self.nr_vcpus:
            return
        d.lpi_injections += 1
        self.trace("inject_lpi", vlpi, vcpu_id, p._g)
        self.vgic_vcpu_inject_irq(vcpu_id, vlpi)

    # -- pending_irq ------------------------------------------------------------------------------
    def vgic_init_pending_irq(self, p: Any, virq: int) -> None:
        """vgic.c ``vgic_init_pending_irq`` (4.10.0): memset 0, INIT_LIST_HEAD of both list
        heads, ``p->irq = virq``, ``p->lpi_vcpu_id = INVALID_VCPU_ID``."""
        p.status = 0
        p.lr = 0
        p.priority = 0
        p.inflight = INVALID_VCPU
        p.lr_queue = INVALID_VCPU
        p.lr_queue_seq = 0
        p.irq = virq
        p.lpi_vcpu_id = INVALID_VCPU_ID
        p.lpi_priority = 0

    def new_mapping(self, h: int) -> int:
        """Model: number the MAPTI that gives pending_irq ``h`` its LPI (the LR invariant)."""
        d = self.d
        d.map_seq += 1
        d.slot_seq[h & SLOT_MASK] = d.map_seq
        return d.map_seq

    def check_unlinked(self, h: int, p: Any, where: str) -> None:
        """Invariant ``freed-unlinked``: a pending_irq about to be freed is on no inflight and
        no lr_pending list (Xen's list_del would then walk freed memory)."""
        inflight, queued = p.inflight, p.lr_queue
        if inflight == INVALID_VCPU and queued == INVALID_VCPU:
            return
        on = ", ".join(f"vcpu{w}'s {n}" for w, n in ((inflight, "inflight_irqs"), (queued, "lr_pending"))
                       if w != INVALID_VCPU)
        self.cpu.finding("invariant:freed-unlinked", f"BUG: {where} frees pending_irq {h:#x} still on {on}",
                         message=f"pending_irq {h:#x} (irq {p.irq}) is freed while linked on {on}", subject=p.irq)

    # -- commands ---------------------------------------------------------------------------------
    def vgic_its_handle_cmds(self, cmd: tuple) -> int:
        """vgic-v3-its.c ``vgic_v3_its_mmio_write`` (GITS_CWRITER: ``spin_lock(&its->vcmd_lock)``)
        -> ``vgic_its_handle_cmds`` (4.10.0) for one command, ``creadr`` advanced after it."""
        its = self.d.its
        spin_lock(its.vcmd_lock)
        op = cmd[0]
        if op == "MAPD":
            ret = self.its_handle_mapd(cmd[1], cmd[2])
        elif op == "MAPTI":
            ret = self.its_handle_mapti(cmd[1], cmd[2], cmd[3], cmd[4])
        elif op == "DISCARD":
            ret = self.its_handle_discard(cmd[1], cmd[2])
        elif op == "INV":
            ret = self.its_handle_inv(cmd[1], cmd[2])
        else:
            raise ValueError(op)
        its.creadr += 1
        self.d.cmds += 1
        spin_unlock(its.vcmd_lock)
        return ret

    #: whether MAPD V=1 allocates the device's ``pend_irqs`` array (4.10.0's
    #: ``gicv3_its_map_guest_device``), or MAPTI allocates each event's pending_irq
    pend_irqs_at_mapd = False

    def its_handle_mapd(self, devid: int, valid: bool) -> int:
        """vgic-v3-its.c ``its_handle_mapd`` (08055c8ea7, 4.10.0): V=0: ``its_unmap_device``
        (every event discarded), then ``gicv3_its_map_guest_device(valid = false)`` ->
        the design's :meth:`remove_mapped_guest_device`; V=1: the device mapped
        (:meth:`_map_device`); then ``its_set_itt_address`` under its_lock."""
        d = self.d
        if not valid:
            self.its_unmap_device(devid)
            ret = self.remove_mapped_guest_device(devid)
            d.mapd_invalid += 1
        else:
            ret = self._map_device(devid, alloc_pend_irqs=self.pend_irqs_at_mapd)
            if ret and ret != -EBUSY:
                return ret
            d.mapd_valid += 1
        spin_lock(d.its.its_lock)
        self.its_set_itt_address(devid, self.nr_events if valid else 0)
        spin_unlock(d.its.its_lock)
        self.trace("cmd_mapd", devid, int(valid), ret)
        return ret

    def remove_mapped_guest_device(self, devid: int) -> int:
        raise NotImplementedError

    def its_device_erase(self, devid: int) -> int:
        """gic-v3-its.c ``gicv3_its_map_guest_device(.., valid = false)`` (4.10.0): the
        device's ``rb_erase`` under its_devices_lock, dropped again. Its handle, or NULL when
        none was mapped."""
        d = self.d
        spin_lock(d.its_devices_lock)
        dh = d.its_devices[devid]
        if dh != NULL:
            d.its_devices[devid] = NULL  # rb_erase
        spin_unlock(d.its_devices_lock)
        return dh

    def its_handle_mapti(self, devid: int, evid: int, vlpi: int, coll: int) -> int:
        raise NotImplementedError

    def mapti_write_itte(self, devid: int, evid: int, vlpi: int, coll: int) -> int:
        """The start of every design's ``its_handle_mapti`` (vgic-v3-its.c, 5e8d02560a,
        4.10.0), under its_lock: refuse an event mapped already, check the collection and the
        LPI, ``write_itte``. Returns the collection's vCPU, or -1 (its_lock dropped either way)."""
        its = self.d.its
        spin_lock(its.its_lock)
        vcpu = -1
        r = self.read_itte(devid, evid)
        if (r is None or r[1] == INVALID_LPI) and coll < len(its.coll_table) and self.lpi_in_range(vlpi):
            vcpu = its.coll_table[coll]
            if not self.write_itte(devid, evid, coll, vlpi):
                vcpu = -1
        spin_unlock(its.its_lock)
        return vcpu

    def mapti_init_pending_irq(self, p: Any, h: int, vlpi: int, vcpu: int) -> None:
        """``its_handle_mapti`` once it has the event's pending_irq ``p`` (handle ``h``):
        ``vgic_init_pending_irq``, ``update_lpi_property`` ("We don't need the VGIC VCPU lock
        here"), ``p->lpi_vcpu_id``, and PRISTINE where the design has it (bccfbe70a3)."""
        self.vgic_init_pending_irq(p, vlpi)
        self.update_lpi_property(p)
        p.lpi_vcpu_id = vcpu
        if self.lpi_pristine:
            p.status |= 1 << GIC_IRQ_GUEST_PRISTINE_LPI  # set_bit(GIC_IRQ_GUEST_PRISTINE_LPI)
        self.new_mapping(h)

    def mapti_failed_unmap(self, devid: int, evid: int) -> None:
        """``its_handle_mapti``'s ``out_remove_mapping``: the ITTE back to unmapped, under
        its_lock."""
        self.d.mapti_failed += 1
        spin_lock(self.d.its.its_lock)
        self.write_itte(devid, evid, UNMAPPED_COLLECTION, INVALID_LPI)
        spin_unlock(self.d.its.its_lock)

    def its_discard_event(self, devid: int, evid: int) -> int:
        raise NotImplementedError

    def discard_unlink(self, devid: int, evid: int) -> tuple[Any, int, int, Any, int] | int:
        """The steps every design's ``its_discard_event`` starts with (vgic-v3-its.c, 4.10.0;
        the thread's version has the same), under its_lock: ``read_itte``; the ITTE's vCPU's
        vgic lock ("TODO: This relies on the VCPU being correct in the ITS tables"); the
        tree's write lock, ``radix_tree_delete``, ``write_unlock``;
        ``gic_remove_irq_from_queues``. Returns (the vCPU's vgic, the flags of its still held
        lock, the handle, the pending_irq, the vLPI), or the error (nothing held)."""
        d = self.d
        assert_held(d.its.its_lock)
        r = self.read_itte(devid, evid)
        if r is None:
            return -ENOENT
        vcpu, vlpi = r
        if vlpi == INVALID_LPI:
            return -ENOENT
        vv = d.vcpus[vcpu]
        flags = spin_lock_irqsave(vv.lock)
        write_lock(d.pend_lpi_tree_lock)
        k = lpi_k(vlpi)
        h = d.pend_lpi_tree[k]
        d.pend_lpi_tree[k] = NULL
        write_unlock(d.pend_lpi_tree_lock)
        if h == NULL:
            spin_unlock_irqrestore(vv.lock, flags)
            return -ENOENT
        self.trace("tree_delete", vlpi, h, vcpu)
        self.trace("cmd_discard", vlpi, devid, evid)
        p = d.pirqs[h]
        self.gic_remove_irq_from_queues(vcpu, vlpi, p)
        return vv, flags, h, p, vlpi

    def its_handle_discard(self, devid: int, evid: int) -> int:
        """vgic-v3-its.c ``its_handle_discard`` (4.10.0): its_lock, its_discard_event, then
        the ITTE unmapped."""
        its = self.d.its
        spin_lock(its.its_lock)
        ret = self.its_discard_event(devid, evid)
        if not ret:
            self.d.discards += 1
            if not self.write_itte(devid, evid, UNMAPPED_COLLECTION, INVALID_LPI):
                ret = -1
        spin_unlock(its.its_lock)
        return ret

    def its_unmap_device(self, devid: int) -> None:
        """vgic-v3-its.c ``its_unmap_device`` (4.10.0): under its_lock, its_discard_event for
        every event of the device ("Don't care about errors here")."""
        its = self.d.its
        spin_lock(its.its_lock)
        size = its.dev_table[devid]
        for evid in range(size):
            if not self.its_discard_event(devid, evid):
                self.d.discards += 1
        spin_unlock(its.its_lock)

    def update_lpi_property(self, p: Any) -> None:
        """vgic-v3-its.c ``update_lpi_property`` (4.10.0): the property byte from the guest's
        table: ``lpi_priority`` and ENABLED."""
        prop = self.d.prop_table[lpi_k(p.irq)]
        p.lpi_priority = prop & LPI_PROP_PRIO_MASK
        if prop & LPI_PROP_ENABLED:
            p.status |= 1 << GIC_IRQ_GUEST_ENABLED
        else:
            p.status &= ~(1 << GIC_IRQ_GUEST_ENABLED)

    def update_lpi_vgic_status(self, v: int, p: Any, virq: int) -> None:
        """vgic-v3-its.c ``update_lpi_vgic_status`` (4.10.0): requires v's vgic lock. Enabled
        and inflight but not visible: gic_raise_guest_irq; disabled: off lr_pending."""
        assert_held(self.d.vcpus[v].lock)
        st = p.status
        if test_bit(st, GIC_IRQ_GUEST_ENABLED):
            if p.inflight != INVALID_VCPU and not test_bit(st, GIC_IRQ_GUEST_VISIBLE):
                self.gic_raise_guest_irq(v, virq)
        else:
            self.gic_remove_from_lr_pending(v, virq, p)

    def its_handle_inv(self, devid: int, evid: int) -> int:
        """vgic-v3-its.c ``its_handle_inv`` (4.10.0): its_lock, read_itte, the event's
        pending_irq (gicv3_its_get_event_pending_irq), the vCPU's vgic lock,
        update_lpi_property and update_lpi_vgic_status."""
        d = self.d
        its = d.its
        ret = -1
        spin_lock(its.its_lock)
        r = self.read_itte(devid, evid)
        if r is not None and r[1] != INVALID_LPI:
            vcpu, vlpi = r
            h, _ = self.get_event_pending_irq(devid, evid)
            if h != NULL:
                p = d.pirqs[h]
                vv = d.vcpus[vcpu]
                flags = spin_lock_irqsave(vv.lock)
                self.update_lpi_property(p)
                self.update_lpi_vgic_status(vcpu, p, vlpi)
                spin_unlock_irqrestore(vv.lock, flags)
                d.invs += 1
                self.trace("cmd_inv", vlpi, d.prop_table[lpi_k(vlpi)])
                ret = 0
        spin_unlock(its.its_lock)
        return ret

    # -- shared pieces of MAPD ------------------------------------------------------------------------
    def _map_device(self, devid: int, alloc_pend_irqs: bool) -> int:
        """gic-v3-its.c ``gicv3_its_map_guest_device`` (4.10.0), valid: under its_devices_lock,
        -EBUSY if mapped, else ``xzalloc(struct its_device)``, ``xzalloc_array(struct
        pending_irq, nr_events)`` (``alloc_pend_irqs``), the host MAPD, rb insert; then the
        host LPI block (entries INVALID_LPI)."""
        d = self.d
        spin_lock(d.its_devices_lock)
        if d.its_devices[devid] != NULL:
            spin_unlock(d.its_devices_lock)
            return -EBUSY
        dh = d.devs.alloc()
        if dh == NULL:
            spin_unlock(d.its_devices_lock)
            return -ENOMEM
        dev = d.devs[dh]
        dev.guest_devid = devid
        dev.eventids = self.nr_events
        dev.host_lpi_base = devid * self.nr_events
        if alloc_pend_irqs:
            for e in range(self.nr_events):  # xzalloc_array(struct pending_irq, nr_events)
                h = d.pirqs.alloc()
                if h == NULL:
                    for f in range(e):
                        d.pirqs.free(dev.pend_irqs[f])
                    d.devs.free(dh)
                    spin_unlock(d.its_devices_lock)
                    return -ENOMEM
                dev.pend_irqs[e] = h
        d.hw_mapped[devid] = 1  # its_send_cmd_mapd(host, valid)
        d.its_devices[devid] = dh  # rb_insert_color
        spin_unlock(d.its_devices_lock)
        for e in range(self.nr_events):  # gicv3_allocate_host_lpi_block: entries INVALID_LPI
            self.gicv3_lpi_update_host_entry(devid * self.nr_events + e, INVALID_LPI)
        return 0
