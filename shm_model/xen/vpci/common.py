"""vPCI shared state and the helpers every design uses (seed 001, PROTOCOLS.md section 001).

What is here is what Xen's designs do not disagree about: the objects (``struct pci_dev``,
``struct vpci``, ``struct rangeset``, ``v->vpci``, a domain's ``pdev_list`` and p2m), the
range-set library (xen/common/rangeset.c), ``map_range`` and the p2m it writes, the pdev
list helpers of xen/drivers/passthrough/pci.c, the physical config space, and the model's
own bookkeeping for the invariant. Each design (one module each: ``unsynchronised``,
``cancel_pending``, ``per_domain_rwlock``, ``upstream``) writes the protocol itself: config
space access, ``modify_bars``/``defer_map``, ``vpci_process_pending``, device removal and
the toolstack's hypercalls, with the locks that design takes. Their locking orders are in
their own headers.

The world (simplifications that do not change what a run can find are said here; the
designs say theirs):

- Domains: index 0 is Dom0 (the hardware domain), index 1 a DomU. Every domain has vPCI
  (``has_vpci``), as on Arm with the thread's series (CONFIG_HAS_VPCI_GUEST_SUPPORT).
- Devices: ``--devices`` physical functions, sbdf ``0 .. devices-1``, each with
  :data:`NR_BARS` memory BARs of ``--bar-frames`` frames (Xen sizes up to 6 BARs and a ROM;
  two BARs keep 4.19's per-BAR range sets meaningful; the ROM BAR is not modelled, so
  ``rom_only`` is always false: the thread's races do not involve it). BARs never overlap,
  so ``modify_bars``'s overlap loop removes nothing, but it still dereferences every other
  pdev of the domain and its ``vpci``, as Xen does. Addresses are identity-mapped
  (gfn == mfn: Xen 4.16's only mode; 4.19's ``guest_addr`` for a DomU is a translation that
  no race here depends on).
- The p2m: per domain, one word per frame: 1 mapped, 0 not. ``map_mmio_regions`` maps at
  most ``--chunk`` frames per call and ``general_preempt_check()`` is always true after a
  partial call, so ``rangeset_consume_ranges`` returns ``-ERESTART`` after every chunk:
  ``vpci_process_pending`` is restartable at every chunk boundary, the window the races
  need. A failing ``map_mmio_regions`` is injected at ``--map-fail`` (p2m allocation
  failure, -ENOMEM). The p2m's own lock is not modelled (a leaf lock).
- ``struct rangeset``'s lock is Xen's ``rwlock_t``; the model takes a spinlock
  ``&r->lock`` for every range-set operation (no two readers of one range set overlap in
  any design), so lockdep sees the nesting ``vpci->lock -> r->lock`` Xen has.
- ``pcidevs_lock`` is recursive in Xen (``spin_lock_recursive``); no path here takes it
  twice, so it is a plain spinlock.
- Physical config space: only PCI_COMMAND's memory decoding bit (``hw_cmd[sbdf]``). A
  hot-plugged device arrives with decoding enabled by firmware at ``--hotplug-decoding``,
  which makes ``init_bars`` call ``modify_bars`` (the thread's crash path 1).
- A DomU's device starts with memory decoding disabled (Xen 4.19 ``init_header``: "Devices
  assigned to DomUs will start with memory decoding disabled"); every design does this.
- The toolstack is one worker: Dom0's vCPU 0 issuing hypercalls one at a time, with its
  own ``v->vpci``: ``defer_map`` during ``PHYSDEVOP_pci_device_add`` lands on it (the
  "calling vCPU context") and its ``vpci_process_pending`` runs before its next hypercall,
  as Xen runs it before returning to the guest.

Heap objects (``shm_model.heap``): ``pdevs`` (``struct pci_dev``), ``vpcis``
(``struct vpci``), ``rangesets`` (``struct rangeset``). Pointers are handles in ``Int``
words; every field access through ``s.pdevs[h]`` is checked (a freed object is a
``use-after-free`` finding shaped as KASAN's, NULL a ``null-deref`` that ends the operation) and
is a scheduling point. ``domain`` fields are domain indices (-1: NULL); a NULL domain
dereferenced by the code is reported by :meth:`VpciCpu.domain_deref` the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ...cpu import Panic
from ...heap import NULL, Heap
from ...layout import Array, Int, RwLock, Spinlock, Struct
from ...spinlock import spin_unlock
from ._heaplock import spin_lock_obj

# xen/include/xen/pci_regs.h, xen/include/public/errno.h
PCI_COMMAND_MEMORY = 0x2
EIO, ENOMEM, ENODEV, EINVAL = 5, 12, 19, 22
ERESTART = 85
ENOSPC = 28

NR_BARS = 2
VPCI_BAR_EMPTY, VPCI_BAR_MEM32 = 0, 1
DOM0, DOMU = 0, 1
NR_DOMAINS = 2
NO_DOMAIN = -1
MAX_RANGES = NR_BARS  # ranges one range set can hold: BARs never overlap, nothing splits them

#: trace events of the model (the workload declares them): first argument is the sbdf
EVENTS = {
    "mmio_write": "sbdf {a}: d{b} vCPU writes PCI_COMMAND.MEMORY={c}",
    "defer_map": "sbdf {a}: defer_map on d{b}v{c}",
    "map_chunk": "sbdf {a}: {c} frames mapped in d{b}'s p2m",
    "unmap_chunk": "sbdf {a}: {c} frames unmapped from d{b}'s p2m",
    "map_failed": "sbdf {a}: map_mmio_regions failed for d{b}",
    "pending_done": "sbdf {a}: vpci_process_pending finished on d{b}v{c}",
    "pending_dropped": "sbdf {a}: stale pending work dropped on d{b}v{c}",
    "pending_cancelled": "sbdf {a}: pending work of d{b}v{c} cancelled",
    "vpci_alloc": "sbdf {a}: vpci allocated for d{b}",
    "vpci_free": "sbdf {a}: vpci freed (was d{b}'s)",
    "pdev_free": "sbdf {a}: pdev freed",
    "teardown_leftover": "sbdf {a}: vPCI of d{b} torn down with decoding off and {c} frames still mapped",
    "add": "sbdf {a}: PHYSDEVOP_pci_device_add -> {b}",
    "add_iommu_fail": "sbdf {a}: iommu_add_device failed",
    "remove": "sbdf {a}: PHYSDEVOP_pci_device_remove -> {b}",
    "assign": "sbdf {a}: XEN_DOMCTL_assign_device to d{b} -> {c}",
    "deassign": "sbdf {a}: XEN_DOMCTL_deassign_device from d{b} -> {c}",
    "restart": "sbdf {a}: hypercall -ERESTART, continued",
    "domain_crash": "sbdf {a}: domain_crash(d{b})",
    "domain_rebuilt": "sbdf {a}: crashed d{b} destroyed and built again",
}
KEY_EVENTS = ("defer_map", "map_chunk", "unmap_chunk", "map_failed", "pending_done", "pending_dropped",
              "pending_cancelled", "vpci_alloc", "vpci_free", "pdev_free", "teardown_leftover", "add", "add_iommu_fail",
              "remove", "assign", "deassign", "domain_crash")


# ---- objects --------------------------------------------------------------------------------

class PciDev(Struct):
    """``struct pci_dev`` (xen/include/xen/pci.h): the fields the protocol reads."""

    sbdf = Int()
    domain = Int(init=NO_DOMAIN)  # pdev->domain: a domain index; NO_DOMAIN is NULL
    vpci = Int()  # pdev->vpci: a handle into vpcis, NULL when the device has no vPCI


class Vpci(Struct):
    """``struct vpci`` (xen/include/xen/vpci.h): its lock, the register handlers (a count:
    the handler list's length) and ``header`` (BARs, ``bars_mapped``, ``guest_cmd``).
    ``bar_mem`` is 4.19's per-BAR range set (622bdd9628); earlier designs leave it NULL."""

    lock = Spinlock("&vpci->lock")
    handlers = Int()
    bars_mapped = Int()  # header->bars_mapped (4.19)
    guest_cmd = Int()  # header->guest_cmd (4.19, DomU)
    bar_type = Array(Int, NR_BARS)
    bar_addr = Array(Int, NR_BARS)  # first frame
    bar_size = Array(Int, NR_BARS)  # frames
    bar_enabled = Array(Int, NR_BARS)
    bar_mem = Array(Int, NR_BARS)


class RangeSet(Struct):
    """``struct rangeset`` (xen/common/rangeset.c): a few disjoint frame ranges, sorted."""

    lock = Spinlock("&r->lock")
    nr = Int()
    s = Array(Int, MAX_RANGES)
    e = Array(Int, MAX_RANGES)


class VcpuVpci(Struct):
    """``v->vpci`` (``struct vpci_vcpu``) of one vCPU, and the model's bookkeeping of it."""

    pdev = Int()  # v->vpci.pdev
    mem = Int()  # v->vpci.mem (a range set; before 4.19)
    cmd = Int()
    rom_only = Int()
    # model bookkeeping, not in Xen:
    pending_sbdf = Int(init=-1)  # the device whose map/unmap is deferred here (-1: none): the invariant skips it
    in_op = Int()  # this vCPU's worker is inside an operation (a crashed domain is rebuilt only at 0)


def _vcpus(o: Any) -> int:
    return max(getattr(o, "dom0-vcpus") + 1, getattr(o, "domu-vcpus"))


def _frames(o: Any) -> int:
    return o.devices * NR_BARS * getattr(o, "bar-frames")


class Domain(Struct):
    """``struct domain``: ``pdev_list`` (one word per sbdf: the pdev's handle while it is on
    this domain's list, in sbdf order), the per-design lock (``vpci_rwlock`` and
    ``vpci_terminating`` of the thread's proposal; 4.19's ``pci_lock``), its vCPUs' vPCI
    state, and its p2m (one word per frame)."""

    crashed = Int()  # domain_crash() was called: the domain is dying
    pdev_list = Array(Int, "devices")
    vpci_rwlock = RwLock("&d->vpci_rwlock")
    vpci_terminating = Int()
    pci_lock = RwLock("&d->pci_lock")
    vcpus = Array(VcpuVpci, _vcpus)
    p2m = Array(Int, _frames)
    # model bookkeeping (plain words the invariant reads; it never dereferences the heap):
    # a vPCI of the device exists with this domain as owner; its committed decoding
    # (modify_decoding); and whether it left this domain with decoding committed on (its
    # frames then stay mapped by design: no version unmaps BARs on deassign; not stale)
    vpci_on = Array(Int, "devices")
    decoding = Array(Int, "devices")
    left_mapped = Array(Int, "devices")
    crashes = Int()


class VpciWorld(Struct):
    """The host: ``pcidevs_lock``, ``alldevs_list`` (the pdev of each sbdf Xen knows), the
    physical command registers, the domains and the three heaps; then model counters."""

    pcidevs_lock = Spinlock("pcidevs_lock")
    alldevs = Array(Int, "devices")
    hw_cmd = Array(Int, "devices")
    domains = Array(Domain, NR_DOMAINS)
    pdevs = Heap(PciDev, slots=lambda o: 3 * o.devices + 4, ctype="struct pci_dev")
    vpcis = Heap(Vpci, slots=lambda o: 3 * o.devices + 4, ctype="struct vpci")
    rangesets = Heap(RangeSet, slots=lambda o: 3 * (o.devices * NR_BARS + _vcpus(o) * NR_DOMAINS) + 4,
                     ctype="struct rangeset")
    busy_sbdf = Int(init=-1)  # the device of the toolstack's hypercall in flight (continuations)
    # counters (the summary)
    mmio_writes = Int()
    mmio_reads = Int()
    mmio_retried = Int()  # MMIO exits retried because the device is being removed
    defer_maps = Int()
    pending_steps = Int()
    pending_done = Int()
    pending_dropped = Int()
    pending_cancelled = Int()
    frames_mapped = Int()
    frames_unmapped = Int()
    map_failures = Int()
    adds = Int()
    add_failures = Int()
    removes = Int()
    assigns = Int()
    deassigns = Int()
    restarts = Int()  # -ERESTART continuations
    rebuilt = Int()  # crashed DomUs destroyed and built again
    dom0_leftover_checks = Int()  # invariant checks that saw Dom0 frames left mapped (counted, not failed)
    dom0_leftover_max = Int()
    left_mapped_at_deassign = Int()  # devices that left a DomU with decoding on (frames stay mapped by design)


# ---- the model's CPU ------------------------------------------------------------------------

class VpciCpu:
    """One CPU of the model: a pCPU running vCPU ``vcpu`` of domain ``dom`` (the toolstack is
    Dom0's vCPU 0). A design subclasses it with the protocol's functions; these are the
    helpers they share, named as Xen names them.

    ``rng``: the worker's seeded random (injected failures, the guest's choices);
    ``trace(event, a, b, c)``: a model event (:data:`EVENTS`)."""

    #: the variant id (set by each design)
    name = "?"

    def __init__(self, s: Any, cpu: Any, dom: int, vcpu: int, rng: Any, opts: Any,
                 trace: Callable[..., None]) -> None:
        self.s = s
        self.cpu = cpu
        self.dom = dom
        self.vid = vcpu
        self.d = s.domains[dom]
        self.v = self.d.vcpus[vcpu]
        self.rng = rng
        self.trace = trace
        self.nr_devices = len(s.alldevs)
        self.bar_frames = getattr(opts, "bar-frames")
        self.chunk = opts.chunk
        self.map_fail = getattr(opts, "map-fail")
        self.iommu_fail = getattr(opts, "iommu-fail")
        self.assign_restart = getattr(opts, "assign-restart")
        self.hotplug_decoding = getattr(opts, "hotplug-decoding")
        self.cont: Callable[[], int] | None = None  # a hypercall continuation (toolstack)

    #: ``spin_lock(&obj->lock)`` of a heap object (see _heaplock)
    spin_lock_obj = staticmethod(spin_lock_obj)

    # -- domains ------------------------------------------------------------------------------
    @staticmethod
    def is_hardware_domain(dom: int) -> bool:
        return dom == DOM0

    def domain_deref(self, dom: int, what: str) -> Any:
        """``pdev->domain`` dereferenced (``has_vpci(pdev->domain)``, ``pdev->domain->...``):
        the domain, or for a NULL domain a null-deref finding that ends the operation."""
        if dom == NO_DOMAIN:
            self.cpu.finding("null-deref", f"BUG: kernel NULL pointer dereference in {what} (pdev->domain)",
                             function=what, field="domain", type="struct domain")
            raise Panic()
        return self.s.domains[dom]

    def domain_crash(self, dom: int, sbdf: int) -> None:
        """``domain_crash(d)``: the domain is dying; its vCPUs stop at their next exit."""
        d = self.s.domains[dom]
        if not d.crashed:
            d.crashed = 1
            d.crashes += 1
            self.trace("domain_crash", sbdf, dom)

    # -- the pdev lists (xen/drivers/passthrough/pci.c) ---------------------------------------
    def for_each_pdev(self, dom: int) -> Iterator[int]:
        """``for_each_pdev(d, pdev)``: the handles on ``d->pdev_list`` (a walk of the list)."""
        lst = self.s.domains[dom].pdev_list
        for i in range(self.nr_devices):
            h = lst[i]
            if h:
                yield h

    def pci_get_pdev_by_domain(self, dom: int, sbdf: int) -> int:
        """``pci_get_pdev_by_domain(d, seg, bus, devfn)`` (4.16; ``pci_get_pdev(d, sbdf)`` in
        4.19): walks ``d->pdev_list`` comparing each pdev's sbdf (a dereference each)."""
        for h in self.for_each_pdev(dom):
            if self.s.pdevs[h].sbdf == sbdf:
                return h
        return NULL

    def list_add(self, dom: int, h: int, sbdf: int) -> None:
        """``list_add(&pdev->domain_list, &d->pdev_list)``."""
        self.s.domains[dom].pdev_list[sbdf] = h

    def list_del(self, dom: int, sbdf: int) -> None:
        """``list_del(&pdev->domain_list)``."""
        self.s.domains[dom].pdev_list[sbdf] = NULL

    def alloc_pdev(self, sbdf: int) -> int:
        """``alloc_pdev(pseg, bus, devfn)``: the known pdev of ``sbdf``, or a new one
        (``xzalloc``; NULL when the pool is exhausted) put on ``alldevs_list``."""
        h = self.s.alldevs[sbdf]
        if h:
            return h
        h = self.s.pdevs.alloc()
        if h == NULL:
            return NULL
        p = self.s.pdevs[h]
        p.sbdf = sbdf
        p.domain = NO_DOMAIN
        self.s.alldevs[sbdf] = h
        return h

    def free_pdev(self, h: int, sbdf: int) -> None:
        """``free_pdev(pseg, pdev)``: off ``alldevs_list``, then ``xfree(pdev)``."""
        self.s.alldevs[sbdf] = NULL
        self.s.pdevs.free(h)
        self.trace("pdev_free", sbdf)

    # -- the IOMMU (injected failures) ----------------------------------------------------------
    def iommu_add_device(self, sbdf: int) -> int:
        """``iommu_add_device(pdev)``: fails at ``--iommu-fail`` (the thread's crash path 1)."""
        if self.rng.random() < self.iommu_fail:
            self.trace("add_iommu_fail", sbdf)
            return -ENODEV
        return 0

    def iommu_assign_device(self) -> int:
        """``hd->platform_ops->assign_device``: -ERESTART at ``--assign-restart`` (page-table
        population is preemptible), before anything changed."""
        return -ERESTART if self.rng.random() < self.assign_restart else 0

    # -- physical config space ---------------------------------------------------------------
    def pci_conf_read16_cmd(self, sbdf: int) -> int:
        return self.s.hw_cmd[sbdf]

    def pci_conf_write16_cmd(self, sbdf: int, cmd: int) -> None:
        self.s.hw_cmd[sbdf] = cmd

    def bar_frame(self, sbdf: int, i: int) -> int:
        """First frame of BAR ``i`` of ``sbdf`` (every BAR its own window)."""
        return (sbdf * NR_BARS + i) * self.bar_frames

    def size_bars(self, vp: Any, sbdf: int) -> None:
        """``init_bars``'s sizing loop: every BAR a 32-bit memory BAR of ``--bar-frames``.
        Each BAR gets its handler (``vpci_add_register``)."""
        for i in range(NR_BARS):
            vp.bar_type[i] = VPCI_BAR_MEM32
            vp.bar_addr[i] = self.bar_frame(sbdf, i)
            vp.bar_size[i] = self.bar_frames
            vp.handlers += 1

    # -- range sets (xen/common/rangeset.c) ------------------------------------------------------
    def rangeset_new(self) -> int:
        """``rangeset_new()``: an empty range set, NULL when allocation fails."""
        return self.s.rangesets.alloc()

    def rangeset_destroy(self, r: int) -> None:
        """``rangeset_destroy(r)`` (NULL: nothing): frees the ranges and the set."""
        if r == NULL:
            return
        self.s.rangesets.free(r)

    def rangeset_add_range(self, r: int, s: int, e: int) -> int:
        """``rangeset_add_range(r, s, e)``: merged with a range it overlaps or touches, else
        inserted in order; 0, or -ENOMEM when the set has no room for another range."""
        rs = self.s.rangesets[r]
        self.spin_lock_obj(rs)
        n = rs.nr
        for k in range(n):
            if not (e < rs.s[k] - 1 or s > rs.e[k] + 1):
                rs.s[k] = min(s, rs.s[k])
                rs.e[k] = max(e, rs.e[k])
                spin_unlock(rs.lock)
                return 0
        if n >= MAX_RANGES:
            spin_unlock(rs.lock)
            return -ENOMEM
        k = n
        while k > 0 and rs.s[k - 1] > s:
            rs.s[k] = rs.s[k - 1]
            rs.e[k] = rs.e[k - 1]
            k -= 1
        rs.s[k] = s
        rs.e[k] = e
        rs.nr = n + 1
        spin_unlock(rs.lock)
        return 0

    def rangeset_is_empty(self, r: int) -> bool:
        """``rangeset_is_empty(r)`` (a NULL set is empty)."""
        if r == NULL:
            return True
        rs = self.s.rangesets[r]
        self.spin_lock_obj(rs)
        empty = rs.nr == 0
        spin_unlock(rs.lock)
        return empty

    def rangeset_purge(self, r: int) -> None:
        """``rangeset_purge(r)``: remove every range."""
        rs = self.s.rangesets[r]
        self.spin_lock_obj(rs)
        rs.nr = 0
        spin_unlock(rs.lock)

    def rangeset_consume_ranges(self, r: int, cb: Callable[[int, int, Any], tuple[int, int]], data: Any) -> int:
        """``rangeset_consume_ranges(r, cb, ctxt)``: under the set's lock, call ``cb`` on the
        first range until the set is empty or ``cb`` returns non-zero; what ``cb`` consumed
        (``*c``) is removed either way. Returns the last ``cb`` result."""
        rs = self.s.rangesets[r]
        self.spin_lock_obj(rs)
        rc = 0
        while rs.nr > 0:
            s, e = rs.s[0], rs.e[0]
            c, rc = cb(s, e, data)
            if s + c > e:  # the whole range consumed: drop it
                n = rs.nr
                for k in range(1, n):
                    rs.s[k - 1] = rs.s[k]
                    rs.e[k - 1] = rs.e[k]
                rs.nr = n - 1
            else:
                rs.s[0] = s + c
            if rc:
                break
        spin_unlock(rs.lock)
        return rc

    # -- the p2m ---------------------------------------------------------------------------------
    def map_mmio_regions(self, dom: int, gfn: int, nr: int, map_: bool) -> int:
        """``{,un}map_mmio_regions(d, gfn, nr, mfn)``: at most ``--chunk`` frames per call;
        returns 0 when all ``nr`` are done, the count done when fewer (Xen's partial
        return), or -ENOMEM when the p2m cannot be allocated (``--map-fail``, mapping only)."""
        if map_ and self.rng.random() < self.map_fail:
            return -ENOMEM
        p2m = self.s.domains[dom].p2m
        n = min(nr, self.chunk)
        for f in range(gfn, gfn + n):
            p2m[f] = 1 if map_ else 0
        if map_:
            self.s.frames_mapped += n
        else:
            self.s.frames_unmapped += n
        return 0 if n == nr else n

    def map_range(self, s: int, e: int, data: tuple[int, bool, int]) -> tuple[int, int]:
        """``map_range(s, e, data, c)`` (xen/drivers/vpci/header.c): (frames consumed, rc).
        After a partial ``map_mmio_regions``, ``general_preempt_check()`` is true: -ERESTART."""
        dom, map_, sbdf = data
        c = 0
        while True:
            size = e - s + 1
            rc = self.map_mmio_regions(dom, s, size, map_)
            ev = "map_chunk" if map_ else "unmap_chunk"
            if rc == 0:
                c += size
                self.trace(ev, sbdf, dom, size)
                break
            if rc < 0:
                self.s.map_failures += 1
                self.trace("map_failed", sbdf, dom)
                break
            c += rc
            s += rc
            self.trace(ev, sbdf, dom, rc)
            return c, -ERESTART  # general_preempt_check()
        return c, rc

    # -- the model's own bookkeeping ----------------------------------------------------------
    def note_pending(self, v: Any, sbdf: int) -> None:
        v.pending_sbdf = sbdf

    def note_vpci(self, dom: int, sbdf: int) -> None:
        """A vPCI of ``sbdf`` was allocated with ``dom`` as the pdev's owner."""
        d = self.s.domains[dom]
        d.vpci_on[sbdf] = 1
        d.decoding[sbdf] = 0

    def note_decoding(self, dom: int, sbdf: int, on: int) -> None:
        """``modify_decoding`` committed the device's decoding state."""
        if dom != NO_DOMAIN:
            self.s.domains[dom].decoding[sbdf] = on
            if not on:
                self.s.domains[dom].left_mapped[sbdf] = 0

    def note_teardown(self, dom: int, sbdf: int, vp: Any) -> None:
        """A device's vPCI in ``dom`` is going away: remember whether its decoding was
        committed on (its frames then stay mapped by design: not stale)."""
        on = any(vp.bar_enabled[i] for i in range(NR_BARS))
        d = self.s.domains[dom]
        d.left_mapped[sbdf] = 1 if on else 0
        d.vpci_on[sbdf] = 0
        d.decoding[sbdf] = 0
        if not on:
            base = sbdf * NR_BARS * self.bar_frames
            n = sum(d.p2m[base:base + NR_BARS * self.bar_frames])
            if n:
                self.trace("teardown_leftover", sbdf, dom, n)
        if on and dom != DOM0:
            self.s.left_mapped_at_deassign += 1

    # -- crashed DomU: the toolstack destroys it and builds it again ----------------------------
    def rebuild_crashed_domains(self) -> None:
        """``domain_destroy`` + ``domain_create`` of a crashed DomU once none of its vCPUs is
        inside an operation: its devices go back to Dom0 one ``XEN_DOMCTL_deassign_device``
        each, as libxl does before ``XEN_DOMCTL_destroydomain`` (each a hypercall of its own:
        the toolstack's vCPU finishes the map the re-assignment to Dom0 deferred on it before
        the next), then its p2m and vCPU state start afresh."""
        s = self.s
        for dom in range(1, NR_DOMAINS):
            d = s.domains[dom]
            if not d.crashed or any(vv.in_op for vv in d.vcpus):
                continue
            for h in list(self.for_each_pdev(dom)):
                sbdf = s.pdevs[h].sbdf
                while self.release_device(dom, sbdf) == -ERESTART:
                    self.cpu.yield_point()
                while self.vpci_process_pending():
                    self.cpu.yield_point()
            for vv in d.vcpus:
                self.vcpu_destroy(vv)
            for f in range(len(d.p2m)):
                d.p2m[f] = 0
            for i in range(self.nr_devices):
                d.left_mapped[i] = 0
            s.rebuilt += 1
            self.trace("domain_rebuilt", -1, dom)
            d.crashed = 0  # last: a vCPU that sees it clear finds a new domain

    def release_device(self, dom: int, sbdf: int) -> int:
        """``XEN_DOMCTL_deassign_device`` of one device of a crashed domain (the design's)."""
        raise NotImplementedError

    def vcpu_destroy(self, vv: Any) -> None:
        """A destroyed vCPU's vPCI state (the design's: what it owns)."""
        vv.pdev = NULL
        vv.pending_sbdf = -1

    # -- the toolstack's choices (Dom0 userspace: what it knows from xenstore) -----------------
    def devices_of(self, dom: int) -> list[int]:
        lst = self.s.domains[dom].pdev_list
        return [i for i in range(self.nr_devices) if lst[i]]

    def addable(self) -> list[int]:
        """Devices Xen does not know, or whose add failed (pdev left with no domain)."""
        owned = set(self.devices_of(DOM0)) | set(self.devices_of(DOMU))
        return [i for i in range(self.nr_devices) if i not in owned]


# ---- the invariant ------------------------------------------------------------------------

def stale_mappings(s: Any, dom: int, bar_frames: int) -> list[tuple[int, int, str]]:
    """(sbdf, frames, why) for every device with frames mapped in ``dom``'s p2m that vPCI
    does not account for, at quiescence (read with every worker parked; plain words only,
    never a heap dereference, which would be a scheduling point):

    - the device is on ``dom``'s list with a vPCI whose decoding is committed off, yet
      frames are mapped: a map that failed or was cut short, or an unmap that never ran;
    - the device is not ``dom``'s, or has no vPCI (removed, deassigned, torn down), and did
      not leave with decoding committed on (frames a guest had mapped stay mapped on
      deassign in every version: Xen never unmaps BARs there; those are not stale).

    A device with deferred work on any vCPU of ``dom``, or in the toolstack's hypercall in
    flight, is not quiescent and is skipped."""
    d = s.domains[dom]
    out: list[tuple[int, int, str]] = []
    pending = {vv.pending_sbdf for vv in d.vcpus}
    for sbdf in range(len(s.alldevs)):
        if sbdf in pending or sbdf == s.busy_sbdf:
            continue
        base = sbdf * NR_BARS * bar_frames
        mapped = sum(d.p2m[base:base + NR_BARS * bar_frames])
        if not mapped:
            continue
        if d.pdev_list[sbdf] and d.vpci_on[sbdf]:
            if not d.decoding[sbdf]:
                out.append((sbdf, mapped, "memory decoding is committed off"))
        elif not d.left_mapped[sbdf]:
            why = "the device is not this domain's" if not d.pdev_list[sbdf] else "the device has no vPCI"
            out.append((sbdf, mapped, why))
    return out


__all__ = ["PCI_COMMAND_MEMORY", "ERESTART", "ENOMEM", "ENODEV", "EIO", "NR_BARS", "DOM0", "DOMU", "NO_DOMAIN",
           "VPCI_BAR_MEM32", "EVENTS", "KEY_EVENTS", "PciDev", "Vpci", "RangeSet", "VcpuVpci", "Domain", "VpciWorld",
           "VpciCpu", "stale_mappings", "NULL"]
