"""The old vGIC's state and the operations every design shares (xen/arch/arm/vgic.c,
vgic-v2.c, gic.c, irq.c, gic-v2.c, RELEASE-4.8.0 .. RELEASE-4.10.0): the constants, the
objects (ranks, per-vCPU vgic state and list registers, ``pending_irq``, physical SPI
descriptors, the distributor), the helpers Xen names and the model's bookkeeping, and the
base class :class:`OldVgic` with every operation whose code is the same in all designs.

What differs between the versions and the thread's proposals is each design's (its module:
``xen_4_8_0.py`` and its subclasses, see the package header): the functions are declared
here, in the section "written by each design", so that the shared code reads whole. The
locking order, the hardware and the simplifications are in the package header
(``shm_model/xen/old_vgic/__init__.py``).
"""

from __future__ import annotations

from typing import Any

from ...cpu import Cpu
from ...layout import Array, Int, Nested, Spinlock, Struct
from ..schedule import IDLE, CreditScheduler, PinnedScheduler, SchedDomain
from ...spinlock import (assert_held, spin_is_locked, spin_lock, spin_lock_irqsave, spin_unlock,
                         spin_unlock_irqrestore)

NR_INTERRUPT_PER_RANK = 32
SPI_BASE = 32
LPI_OFFSET = 8192  # xen/include/asm-arm/irq.h (4.10.0): the first LPI; is_lpi(irq) is irq >= LPI_OFFSET
GIC_INVALID_LR = 255  # ~(uint8_t)0 as d31d0cd810 (stable-4.8, 4.9.0) fixed it to be
INVALID_VCPU = -1

# pending_irq.status bits (GIC_IRQ_GUEST_*)
GIC_IRQ_GUEST_QUEUED = 0
GIC_IRQ_GUEST_ACTIVE = 1
GIC_IRQ_GUEST_VISIBLE = 2
GIC_IRQ_GUEST_ENABLED = 3
GIC_IRQ_GUEST_MIGRATING = 4
GIC_IRQ_GUEST_PRISTINE_LPI = 5  # bccfbe70a3 (4.10.0): a newly mapped LPI, never in an LR yet
STATUS_NAMES = ("QUEUED", "ACTIVE", "VISIBLE", "ENABLED", "MIGRATING", "PRISTINE_LPI")

# irq_desc.status bits
_IRQ_INPROGRESS = 0
_IRQ_DISABLED = 1

# list register states (GICH_LR)
LR_INVALID, LR_PENDING, LR_ACTIVE = 0, 1, 2

DEFAULT_PRIORITY = 0xa0  # vgic_rank_init: GIC_PRI_IRQ for every interrupt; never written here


def nr_irqs(o: Any) -> int:
    """Per-vCPU list slots: the SPIs, then the LPIs (option ``lpis``, absent: none)."""
    return o.spis + getattr(o, "lpis", 0)


class PendingIrq(Struct):
    """``struct pending_irq`` of one SPI."""

    status = Int()
    lr = Int()  # p->lr: 0 until first set (xzalloc'd, vgic_init_pending_irq does not set it)
    priority = Int()
    inflight = Int(init=INVALID_VCPU)  # the vCPU whose inflight_irqs list holds it (list_empty: -1)
    lr_queue = Int(init=INVALID_VCPU)  # the vCPU whose lr_pending list holds it
    lr_queue_seq = Int()  # FIFO order within lr_pending
    old_vcpu = Int(init=INVALID_VCPU)  # proposal 3: the vCPU whose vgic lock guards rank->vcpu


class Rank(Struct):
    """``struct vgic_irq_rank``: 32 interrupts, their lock, ITARGETSR targets, ISENABLER
    bits (``ienable``, one word per interrupt here) and priorities."""

    lock = Spinlock("&rank->lock")
    vcpu = Array(Int, NR_INTERRUPT_PER_RANK)
    ienable = Array(Int, NR_INTERRUPT_PER_RANK)
    priority = Array(Int, NR_INTERRUPT_PER_RANK, init=DEFAULT_PRIORITY)


class VgicVcpu(Struct):
    """``v->arch.vgic`` of one vCPU, plus its list registers (loaded on its pCPU while it
    runs, saved with it while it is blocked). ``inflight[i]``/``lr_pending[i]`` mirror list
    membership for the invariants: a ``pending_irq`` on two lists is the corruption
    ``inflight-on-one-vcpu`` looks for."""

    lock = Spinlock("&v->arch.vgic.lock")
    inflight = Array(Int, nr_irqs)  # on inflight_irqs: 1 (SPI), the pending_irq's handle (LPI)
    lr_pending = Array(Int, nr_irqs)  # on lr_pending: its FIFO sequence number
    lr_pending_p = Array(Int, lambda o: getattr(o, "lpis", 0))  # LPIs on lr_pending: the pending_irq's handle
    lr = Array(Int, "lrs", init=-1)  # GICH_LRn.virq (-1: unused)
    lr_p = Array(Int, "lrs")  # model: the handle of the LPI pending_irq gic_set_lr wrote to LR n (Xen keeps the number)
    lr_seq = Array(Int, "lrs")  # model: the mapping (MAPTI) that pending_irq carried then (lpi-discard-storm)
    lr_state = Array(Int, "lrs")  # LR_INVALID / LR_PENDING / LR_ACTIVE
    lr_mask = Array(Int, "lrs")  # this_cpu(lr_mask)
    lr_eoi_at = Array(Int, "lrs")  # guest model: when (CLOCK_MONOTONIC ns) the guest EOIs
    exits = Int()  # guest exits (vcpu_run cycles)
    queue_seq = Int()


class IrqDesc(Struct):
    """``struct irq_desc`` of a physical SPI routed to the guest (virq == irq), and the
    distributor's state of that interrupt."""

    lock = Spinlock("&desc->lock")
    status = Int()  # _IRQ_INPROGRESS, _IRQ_DISABLED (software; Xen's irq.c / gic-v2.c)
    affinity = Int()  # the pCPU GICD_ITARGETSR routes it to
    hw_pending = Int()  # the GIC holds it pending for delivery (device model; cleared at the acknowledge)
    active = Int()  # the GIC's active state: set at the acknowledge, cleared at the guest's EOI (HW LR)


class Gic(Struct):
    """The physical distributor's driver state (``gicv2``)."""

    lock = Spinlock("&gicv2.lock")


class OldVgicDomain(Struct):
    """One guest domain on the old vGIC."""

    ranks = Array(Rank, lambda o: (o.spis + NR_INTERRUPT_PER_RANK - 1) // NR_INTERRUPT_PER_RANK)
    vcpus = Array(VgicVcpu, "vcpus")
    pending = Array(PendingIrq, "spis")
    descs = Array(IrqDesc, "spis")
    gicv2 = Nested(Gic)
    # model counters (read by the summary)
    migrations = Int()
    refused_migrations = Int()
    affinity_writes = Int()
    injections = Int()
    eois = Int()
    migrating_set = Int()  # migrations of an IRQ in an LR: MIGRATING set, finished at EOI
    disables = Int()
    enables = Int()
    inflight_raises = Int()  # gic_raise_inflight_irq -> gic_update_one_lr
    dropped_hw = Int()  # "unable to inject hw irq": QUEUED dropped while ACTIVE in an LR
    lost_hw = Int()  # hw-irq-lost: injections dropped with the inflight entry (deactivated by the model)
    moved_irqs = Int()  # arch_move_irqs -> irq_set_affinity
    #: the pCPUs and the scheduler's view of the vCPUs (shm_model/xen/schedule.py)
    sched = Nested(SchedDomain)


def test_bit(word: int, bit: int) -> bool:
    return bool(word >> bit & 1)


class OldVgic:
    """The operations, as one CPU (worker) runs them: the code every design shares. A design
    (a subclass: :data:`~shm_model.xen.old_vgic.DESIGNS`) writes the functions declared under
    "written by each design". ``trace`` is a callable ``(event, a, b, c)`` recording model
    events."""

    #: the variant id (``stress run --variant``) and where the design's code comes from
    name = ""
    base = ""

    def __init__(self, d: Any, cpu: Cpu, trace: Any, pcpu: int | None = None, move_ns: int = 0,
                 rand: Any = None) -> None:
        """``pcpu``: the pCPU this CPU is (default: the worker id); ``move_ns`` > 0 lets
        vCPUs move between pCPUs, one move of the running vCPU per ``move_ns`` on average
        (``rand``: the uniform draws), with :meth:`arch_move_irqs` after each; 0: every vCPU
        pinned to the pCPU of its number (shm_model/xen/schedule.py)."""
        self.d = d
        self.cpu = cpu
        self.trace = trace
        self.nr_vcpus = len(d.vcpus)
        self.nr_spis = len(d.pending)
        self.nr_lrs = len(d.vcpus[0].lr) if d.vcpus else 0
        pcpu = cpu.wid if pcpu is None else pcpu
        self.sched = (CreditScheduler(d.sched, pcpu, trace, move_ns, rand, self.arch_move_irqs) if move_ns
                      else PinnedScheduler(d.sched, pcpu, trace))

    #: LPI designs (shm_model/xen/lpi/) set these; an old-VGIC design never sees an LPI.
    #: gic_update_one_lr retires an LR whose LPI is PRISTINE and gic_find_unused_lr looks
    #: for a PRISTINE LPI's number in the used LRs (gic.c, bccfbe70a3, 4.10.0)
    lpi_pristine = False
    #: vgic_vcpu_inject_irq looks the pending_irq up under the vgic lock and returns on NULL
    #: (vgic.c, 56e1b3ebc9, 4.10.0); False: before the lock, as 4.9.0 and the v7 LPI series
    #: (for an SPI either order runs the same code: the lookup is an array index)
    inject_lookup_under_lock = False

    # -- helpers --------------------------------------------------------------------------------
    def irq_to_pending(self, virq: int) -> Any:
        """vgic.c ``irq_to_pending`` (4.10.0): an SPI's ``pending_irqs[irq - 32]``; an LPI's
        from the design's ``lpi_to_pending`` (``vgic_v3_lpi_to_pending``): None is NULL."""
        if virq >= LPI_OFFSET:
            return self.lpi_to_pending(virq)
        return self.d.pending[virq - SPI_BASE]

    # hooks of an LPI design (shm_model/xen/lpi/)
    def lpi_to_pending(self, virq: int) -> Any:
        """``vgic_v3_lpi_to_pending``: the design's pend_lpi_tree lookup (view, or None)."""
        raise NotImplementedError("LPIs need a design of shm_model/xen/lpi/")

    def lpi_get_priority(self, virq: int) -> int:
        """``vgic_v3_lpi_get_priority``: the design's LPI priority."""
        raise NotImplementedError("LPIs need a design of shm_model/xen/lpi/")

    def lpi_deref(self, h: int) -> Any:
        """The pending_irq a list entry (a handle) points to."""
        raise NotImplementedError("LPIs need a design of shm_model/xen/lpi/")

    def lpi_handle(self, p: Any) -> int:
        """The handle (the pointer) of an LPI's pending_irq view."""
        raise NotImplementedError("LPIs need a design of shm_model/xen/lpi/")

    def lpi_target_ok(self, v: int, p: Any) -> bool:
        """Whether vgic_vcpu_inject_irq may use the LPI's pending_irq it found under v's
        vgic lock (a design may re-check that v is still its vCPU; Xen 4.10 does not)."""
        return True

    def lr_set_note(self, v: int, i: int, virq: int, p: Any) -> None:
        """Model bookkeeping when gic_set_lr writes an LPI to an LR (the design's)."""

    def lrs_cleared(self, v: int) -> None:
        """Called by gic_clear_lrs with v's vgic lock still held (the design's checks)."""

    def _idx(self, virq: int) -> int:
        """The per-vCPU list slot of an IRQ: SPIs first, then LPIs (:func:`nr_irqs`)."""
        return virq - SPI_BASE if virq < LPI_OFFSET else self.nr_spis + virq - LPI_OFFSET

    def vgic_rank_irq(self, virq: int) -> Any:
        return self.d.ranks[(virq - SPI_BASE) // NR_INTERRUPT_PER_RANK]

    def irq_to_desc(self, virq: int) -> Any:
        return self.d.descs[virq - SPI_BASE]

    @staticmethod
    def rank_offset(virq: int) -> int:
        return (virq - SPI_BASE) % NR_INTERRUPT_PER_RANK

    @property
    def current(self) -> int:
        """``current`` on this pCPU: the vCPU it runs, or none (IDLE, the idle vCPU) while
        that vCPU is blocked or the pCPU has none to run."""
        return self.sched.current

    def processor(self, v: int) -> int:
        """``v->processor``: the pCPU vCPU ``v`` runs on, or is queued or blocked on."""
        return self.sched.processor(v)

    # -- written by each design (xen_4_8_0.py and its subclasses) ---------------------------------
    def vgic_get_target_vcpu(self, virq: int) -> int:
        """vgic.c ``vgic_get_target_vcpu``: rank->vcpu of ``virq`` (4.8.0: under the rank lock;
        378384399e: ``read_atomic``)."""
        raise NotImplementedError

    def vgic_get_virq_priority(self, virq: int) -> int:
        """vgic.c ``vgic_get_virq_priority`` (4.8.0: under the rank lock; 408f16ddb3:
        ``ACCESS_ONCE``)."""
        raise NotImplementedError

    def _priority_before_vgic_lock(self, virq: int) -> int | None:
        """vgic_vcpu_inject_irq's priority read before the vgic lock (4.8.0, stable-4.8:
        vgic_get_virq_priority itself), or None: read under it, for an IRQ not yet inflight
        (408f16ddb3)."""
        raise NotImplementedError

    def _migrate_lock_old(self, old: int, new: int, virq: int, p: Any) -> tuple[int, int] | bool:
        """vgic_migrate_irq's MIGRATING test and the old vCPU's vgic lock (irqsave): returns
        (the vCPU whose vgic lock it took, flags), or the verdict when the migration ends
        there (nothing locked any more)."""
        raise NotImplementedError

    def _write_target_after_migrate(self, rank: Any, off: int, virq: int, old: int, new: int,
                                    moved: bool) -> None:
        """vgic_store_itargetsr's write of ``rank->vcpu`` once vgic_migrate_irq returned
        (under the rank lock)."""
        raise NotImplementedError

    def _write_target_under_vgic_lock(self, virq: int, p: Any, new: int, guard: int) -> None:
        """vgic_migrate_irq, under the old vCPU's vgic lock, once the migration is done
        (``guard``: the vCPU whose vgic lock guards ``rank->vcpu`` from here on)."""
        raise NotImplementedError

    def _target_under_rank_lock(self, virq: int) -> int:
        """The target vgic_enable_irqs/vgic_disable_irqs read (the MMIO handler holds
        rank->lock)."""
        raise NotImplementedError

    def _enable_and_raise(self, t: int, virq: int, p: Any) -> None:
        """vgic_enable_irqs: set ENABLED and raise the IRQ if inflight and not VISIBLE (under
        the target's vgic lock)."""
        raise NotImplementedError

    def _disable_and_unqueue(self, t: int, virq: int, p: Any) -> None:
        """vgic_disable_irqs: clear ENABLED and unlink the IRQ from the target's lr_pending."""
        raise NotImplementedError

    def _skip_disabled(self, p: Any) -> bool:
        """gic_raise_inflight_irq: whether it returns for a disabled IRQ."""
        raise NotImplementedError

    def _migrating_on_eoi(self, v: int, virq: int, p: Any) -> None:
        """gic_update_one_lr's MIGRATING tail (v's vgic lock held): once the EOIed IRQ left
        its LR and was unlinked from inflight, finish a migration."""
        raise NotImplementedError

    # -- physical affinity and enable ---------------------------------------------------------------
    def irq_set_affinity(self, virq: int, pcpu: int) -> None:
        """irq.c ``irq_set_affinity(desc, cpumask_of(pcpu))`` -> gic-v2.c
        ``gicv2_irq_set_affinity`` (4.8.0-4.10.0): takes gicv2.lock (a leaf), writes
        GICD_ITARGETSR. Callers have interrupts disabled or hold nothing."""
        desc = self.irq_to_desc(virq)
        spin_lock(self.d.gicv2.lock)
        desc.affinity = pcpu
        self.d.affinity_writes += 1
        self.trace("irq_set_affinity", virq, pcpu)  # at the write: the release is a scheduling point
        spin_unlock(self.d.gicv2.lock)

    def gicv2_irq_enable(self, virq: int, enable: bool) -> None:
        """gic-v2.c ``gicv2_irq_enable``/``gicv2_irq_disable`` (desc->handler->enable/disable,
        4.8.0-4.10.0): require desc->lock (ASSERT), take gicv2.lock irqsave, write
        GICD_ISENABLER/ICENABLER and _IRQ_DISABLED."""
        desc = self.irq_to_desc(virq)
        assert_held(desc.lock)
        flags = spin_lock_irqsave(self.d.gicv2.lock)
        if enable:
            desc.status &= ~(1 << _IRQ_DISABLED)
        else:
            desc.status |= 1 << _IRQ_DISABLED
        spin_unlock_irqrestore(self.d.gicv2.lock, flags)

    # -- the guest's distributor writes --------------------------------------------------------------
    def vgic_store_itargetsr(self, virq: int, new_target: int) -> None:
        """vgic-v2.c ``vgic_v2_distr_mmio_write`` (GICD_ITARGETSR: ``vgic_lock_rank``) ->
        ``vgic_store_itargetsr`` (4.8.0-4.10.0). Takes: rank->lock (irqsave), then in
        vgic_migrate_irq a vgic lock. rank->vcpu is written after vgic_migrate_irq under the
        rank lock (4.8.0, proposal 1), only if it was not refused (378384399e: stable-4.8,
        4.9.0, 4.10.0, ``write_atomic``), or inside vgic_migrate_irq under a vgic lock (the
        thread's patch, proposal 3): the design's :meth:`_write_target_after_migrate`."""
        rank = self.vgic_rank_irq(virq)
        off = self.rank_offset(virq)
        flags = spin_lock_irqsave(rank.lock)
        old_target = rank.vcpu[off]
        if new_target != old_target:
            self.trace("migrate", virq, old_target, new_target)
            moved = self.vgic_migrate_irq(old_target, new_target, virq)
            self._write_target_after_migrate(rank, off, virq, old_target, new_target, moved)
        spin_unlock_irqrestore(rank.lock, flags)

    def _write_target(self, virq: int, new: int) -> None:
        """The thread's patch / proposal 3: requires the vgic lock guarding ``rank->vcpu``."""
        self.vgic_rank_irq(virq).vcpu[self.rank_offset(virq)] = new

    def vgic_migrate_irq(self, old: int, new: int, virq: int) -> bool:
        """vgic.c ``vgic_migrate_irq`` (4.8.0: void; 91ef736493: bool, whether
        vgic_store_itargetsr may write the new target). Requires: rank->lock
        (vgic_store_itargetsr). The MIGRATING test and old's vgic lock (irqsave) are the
        design's (:meth:`_migrate_lock_old`): unlocked and ignored (4.8.0), unlocked and
        refused (stable-4.8, 4.9.0), under the vgic lock and refused (4.10.0, 5f66da6590);
        proposal 3 takes ``p->old_vcpu``'s. Then, under that lock: not inflight,
        irq_set_affinity; lr_pending ("If the IRQ is still lr_pending, re-inject it to the new
        vcpu"): unlink it, irq_set_affinity, drop the vgic lock and vgic_vcpu_inject_irq(new),
        still under the rank lock; in an LR ("set GIC_IRQ_GUEST_MIGRATING and wait for the
        EOI"): set MIGRATING. The design's :meth:`_write_target_under_vgic_lock` runs in each
        branch before the vgic lock is dropped."""
        p = self.irq_to_pending(virq)
        assert_held(self.vgic_rank_irq(virq).lock)
        locked = self._migrate_lock_old(old, new, virq, p)
        if isinstance(locked, bool):
            return locked
        old, flags = locked
        vold = self.d.vcpus[old]
        self.d.migrations += 1
        if p.inflight == INVALID_VCPU:  # list_empty(&p->inflight)
            self.irq_set_affinity(virq, self.processor(new))
            self._write_target_under_vgic_lock(virq, p, new, new)
            spin_unlock_irqrestore(vold.lock, flags)
            return True
        if p.lr_queue != INVALID_VCPU:  # "If the IRQ is still lr_pending, re-inject it to the new vcpu"
            # 4.8.0/4.9.0 open-code it; 4.10.0 calls gic_remove_irq_from_queues(old, p): the same
            self.gic_remove_irq_from_queues(old, virq)
            self.irq_set_affinity(virq, self.processor(new))
            self._write_target_under_vgic_lock(virq, p, new, new)
            spin_unlock_irqrestore(vold.lock, flags)
            self.trace("migrate_reinject", virq, old, new)
            self.vgic_vcpu_inject_irq(new, virq)  # 4.8.0/stable-4.8: takes the rank lock we hold
            return True
        # "if the IRQ is in a GICH_LR register, set GIC_IRQ_GUEST_MIGRATING and wait for the EOI"
        p.status |= 1 << GIC_IRQ_GUEST_MIGRATING
        self.d.migrating_set += 1
        self._write_target_under_vgic_lock(virq, p, new, old)  # proposal 3: the vCPU whose LR holds it
        self.trace("set_migrating", virq, old, new)
        spin_unlock_irqrestore(vold.lock, flags)
        return True

    def vgic_enable_irqs(self, virq: int) -> None:
        """vgic-v2.c ``vgic_v2_distr_mmio_write`` (GICD_ISENABLER: vgic_lock_rank, set
        rank->ienable) -> vgic.c ``vgic_enable_irqs`` for one SPI (4.8.0-4.10.0). Requires:
        rank->lock. Takes: the target's vgic lock (irqsave), gicv2.lock (irq_set_affinity),
        desc->lock (irqsave) and in it gicv2.lock (gicv2_irq_enable). The target
        (:meth:`_target_under_rank_lock`): __vgic_get_target_vcpu under the caller's rank lock
        (4.8.0) or vgic_get_target_vcpu (read_atomic: stable-4.8, 4.9.0, 4.10.0). ENABLED is
        set before the vgic lock (4.8.0-4.9.0) or under it (4.10.0, 5f66da6590):
        :meth:`_enable_and_raise`."""
        rank = self.vgic_rank_irq(virq)
        assert_held(rank.lock)
        t = self._target_under_rank_lock(virq)
        p = self.irq_to_pending(virq)
        self.d.enables += 1
        self.trace("enable", virq, t)
        self._enable_and_raise(t, virq, p)
        self.irq_set_affinity(virq, self.processor(t))  # the affinity lag heals here too
        desc = self.irq_to_desc(virq)
        flags = spin_lock_irqsave(desc.lock)
        self.gicv2_irq_enable(virq, True)
        spin_unlock_irqrestore(desc.lock, flags)

    def vgic_disable_irqs(self, virq: int) -> None:
        """vgic-v2.c ``vgic_v2_distr_mmio_write`` (GICD_ICENABLER: vgic_lock_rank, clear
        rank->ienable) -> vgic.c ``vgic_disable_irqs`` for one SPI (4.8.0-4.10.0). Requires:
        rank->lock. Takes: the target's vgic lock (irqsave; in gic.c ``gic_remove_from_queues``
        4.8.0-4.9.0, in vgic_disable_irqs itself 4.10.0: :meth:`_disable_and_unqueue`), then
        desc->lock (irqsave) and in it gicv2.lock (gicv2_irq_disable). Clears ENABLED without
        the vgic lock (4.8.0-4.9.0) or under it (4.10.0). An IRQ already inflight stays
        inflight (only lr_pending is unlinked): if it is in an LR, its EOI unlinks it; if it was
        lr_pending, no LR holds it, and a migration sets MIGRATING that no EOI will clear until
        the guest enables it again."""
        rank = self.vgic_rank_irq(virq)
        assert_held(rank.lock)
        t = self._target_under_rank_lock(virq)
        p = self.irq_to_pending(virq)
        self.d.disables += 1
        self.trace("disable", virq, t)
        self._disable_and_unqueue(t, virq, p)
        desc = self.irq_to_desc(virq)
        flags = spin_lock_irqsave(desc.lock)
        self.gicv2_irq_enable(virq, False)
        spin_unlock_irqrestore(desc.lock, flags)

    def write_ienable(self, virq: int, enable: bool) -> None:
        """vgic-v2.c ``vgic_v2_distr_mmio_write``, GICD_ISENABLER/GICD_ICENABLER for one SPI:
        ``vgic_lock_rank``, update ``rank->ienable``, call vgic_enable_irqs/vgic_disable_irqs
        for the bits that changed, ``vgic_unlock_rank``."""
        rank = self.vgic_rank_irq(virq)
        off = self.rank_offset(virq)
        flags = spin_lock_irqsave(rank.lock)
        was = rank.ienable[off]
        rank.ienable[off] = int(enable)
        if enable and not was:
            self.vgic_enable_irqs(virq)
        elif was and not enable:
            self.vgic_disable_irqs(virq)
        spin_unlock_irqrestore(rank.lock, flags)

    # -- injection (interrupt context) ------------------------------------------------------------
    def gic_interrupt_ack(self, virq: int) -> None:
        """gic.c ``gic_interrupt`` reading GICC_IAR (gicv2_read_irq): the GIC moves the
        interrupt from pending to active in one step. Active until the guest's EOI deactivates
        it through the HW list register: the GIC does not deliver it again before that."""
        desc = self.irq_to_desc(virq)
        desc.active = 1
        desc.hw_pending = 0

    def do_IRQ(self, virq: int) -> None:
        """irq.c ``do_IRQ`` (4.8.0-4.10.0) for a guest-routed SPI, in interrupt context on the
        pCPU the GIC delivered it to: takes desc->lock, ``desc->handler->end`` (priority drop
        only: gicv2_guest_irq_end), sets _IRQ_INPROGRESS (without testing it: guest IRQs are
        not gated on it) and calls vgic_vcpu_inject_spi with desc->lock held."""
        self.gic_interrupt_ack(virq)
        desc = self.irq_to_desc(virq)
        spin_lock(desc.lock)
        desc.status |= 1 << _IRQ_INPROGRESS
        self.vgic_vcpu_inject_spi(virq)
        spin_unlock(desc.lock)

    def vgic_vcpu_inject_spi(self, virq: int) -> None:
        """vgic.c ``vgic_vcpu_inject_spi`` (4.8.0-4.10.0): vgic_get_target_vcpu (4.8.0: the
        rank lock), then vgic_vcpu_inject_irq."""
        v = self.vgic_get_target_vcpu(virq)
        self.d.injections += 1
        self.vgic_vcpu_inject_irq(v, virq)

    def vgic_vcpu_inject_irq(self, v: int, virq: int) -> None:
        """vgic.c ``vgic_vcpu_inject_irq``: make ``virq`` pending on vCPU ``v``. Takes: the
        rank lock through vgic_get_virq_priority *before* the vgic lock (4.8.0, stable-4.8);
        v's vgic lock (irqsave). 4.9.0 reads the priority (ACCESS_ONCE) before the lock, 4.10.0
        under it after the inflight test (5f66da6590). Already inflight:
        gic_raise_inflight_irq. After the lock: vcpu_unblock(v) and, if v runs elsewhere, an
        event-check SGI (``vcpu_kick`` in effect). The pending_irq is looked up before the lock
        (4.8.0-4.9.0; the v7 LPI series, which returns on NULL there) or under it, returning on
        NULL: "If an LPI has been removed, there is nothing to inject here" (56e1b3ebc9,
        4.10.0; :attr:`inject_lookup_under_lock`). The priority: the design's
        :meth:`_priority_before_vgic_lock`."""
        vv = self.d.vcpus[v]
        p = None
        if not self.inject_lookup_under_lock:
            p = self.irq_to_pending(virq)
            if p is None:
                return  # an unmapped LPI (v7: the NULL check before the lock)
        priority = self._priority_before_vgic_lock(virq)  # 4.8.0/stable-4.8: rank lock, before the vgic lock
        flags = spin_lock_irqsave(vv.lock)
        if p is None:
            p = self.irq_to_pending(virq)
            # 56e1b3ebc9: "If an LPI has been removed, there is nothing to inject here."
            if p is None or (virq >= LPI_OFFSET and not self.lpi_target_ok(v, p)):
                spin_unlock_irqrestore(vv.lock, flags)
                return
        p.status |= 1 << GIC_IRQ_GUEST_QUEUED
        if p.inflight != INVALID_VCPU:  # !list_empty(&n->inflight)
            if p.inflight != v:
                self.trace("inject_inflight_elsewhere", virq, v, p.inflight)
            self.gic_raise_inflight_irq(v, virq)
        else:
            if priority is None:
                priority = self.vgic_get_virq_priority(virq)
            p.priority = priority
            if test_bit(p.status, GIC_IRQ_GUEST_ENABLED):
                self.gic_raise_guest_irq(v, virq)
            self._list_add_inflight(v, virq, p)  # FIFO = priority order here (header)
            self.trace("inject", virq, v)
        spin_unlock_irqrestore(vv.lock, flags)
        self.vcpu_unblock(v)


    def vcpu_unblock(self, v: int) -> None:
        """common/schedule.c ``vcpu_unblock`` (``vcpu_kick`` on ARM, from
        vgic_vcpu_inject_irq's tail, 4.8.0-4.10.0): clear _VPF_blocked and wake the vCPU
        (``vcpu_wake``, shm_model/xen/schedule.py); its pCPU runs it again
        (gic_restore_state -> gic_restore_pending_irqs) at its next cycle."""
        self.sched.vcpu_unblock(v)

    def _list_add_inflight(self, v: int, virq: int, p: Any = None) -> None:
        """``list_add_tail(&n->inflight, ...)`` in vgic_vcpu_inject_irq (4.8.0-4.10.0): onto v's
        inflight_irqs. Requires: v's vgic lock (held by the caller). ``p``: the caller's
        pending_irq (an SPI's is looked up when not given)."""
        if p is None:
            p = self.irq_to_pending(virq)
        self.d.vcpus[v].inflight[self._idx(virq)] = 1 if virq < LPI_OFFSET else self.lpi_handle(p)
        p.inflight = v

    def _list_del_inflight(self, v: int, virq: int, p: Any = None) -> None:
        """``list_del_init(&p->inflight)``: unlinks ``p`` from the inflight list it is on,
        which is not necessarily ``v``'s (Xen's list_del does not know whose list it is).
        Requires: the vgic lock of the vCPU owning that list."""
        if p is None:
            p = self.irq_to_pending(virq)
        owner = p.inflight
        if owner == INVALID_VCPU:
            return  # list_del_init of an unlinked node: nothing to do
        self._list_lock_held(owner, virq, "inflight_irqs")
        vo, j = self.d.vcpus[owner], self._idx(virq)
        if virq < LPI_OFFSET or vo.inflight[j] == self.lpi_handle(p):  # the slot holds this object
            vo.inflight[j] = 0
        p.inflight = INVALID_VCPU

    def _list_lock_held(self, owner: int, virq: int, what: str) -> None:
        """The lock rule of the per-vCPU lists (vgic.c: "inflight_irqs and lr_pending are
        protected by v->arch.vgic.lock"): a CPU that links or unlinks an entry of vCPU
        ``owner``'s list must hold that vCPU's vgic lock. Reported as the list modified under
        the wrong vCPU's lock; a data race only when the owner's lock is held by another CPU
        at that moment (the owner is inside its own critical section: the accesses overlap)."""
        lock = self.d.vcpus[owner].lock
        if lock.held_by_me():
            return
        overlap = bool(spin_is_locked(lock))
        if overlap:
            title = f"BUG: data race on vcpu{owner}'s {what} list (irq {virq}): modified under the wrong vCPU's lock"
        else:
            title = f"BUG: vgic list modified under the wrong vCPU's lock: vcpu{owner}'s {what} (irq {virq})"
        why = (f" while vcpu{owner}'s vgic lock is held by another CPU" if overlap else
               f" (vcpu{owner}'s lock was free at that moment: no overlapping access seen)")
        self.cpu.finding("invariant:vgic-list-lock", title,
                         message=f"pcpu{self.cpu.wid} unlinks irq {virq} from vcpu{owner}'s {what} "
                                 f"without vcpu{owner}'s vgic lock" + why,
                         held=[lk.path for lk in self.cpu.held_locks()], subject=virq, overlap=overlap)

    def gic_raise_inflight_irq(self, v: int, virq: int) -> None:
        """gic.c ``gic_raise_inflight_irq`` (4.8.0-4.10.0): requires v's vgic lock. If the IRQ
        is not lr_pending and ``v == current``: ``gic_update_one_lr(v, n->lr)``. 471d9ca43c
        (XSA-223; stable-4.8, 4.9.0, 4.10.0) first returns if the IRQ is disabled
        (:meth:`_skip_disabled`). ``n->lr`` is
        the LR the IRQ had on the vCPU whose list it is on: with a stale owner (inflight on
        another vCPU) that is another vCPU's LR index, read here on this pCPU; for an inflight
        IRQ in no LR it is GIC_INVALID_LR (or 0, never set): XSA-223."""
        vv = self.d.vcpus[v]
        p = self.irq_to_pending(virq)
        if p is None:
            return  # 56e1b3ebc9: "If an LPI has been removed meanwhile, there is nothing left to raise."
        assert_held(vv.lock)
        if self._skip_disabled(p):  # 471d9ca43c: "Don't try to update the LR if the interrupt is disabled"
            return
        if p.lr_queue != INVALID_VCPU or v != self.current:
            return
        i = p.lr
        self.d.inflight_raises += 1
        self.trace("raise_inflight", virq, v, i)
        if not (0 <= i < self.nr_lrs) or not vv.lr_mask[i] or vv.lr[i] != virq:
            where = ("GIC_INVALID_LR" if i == GIC_INVALID_LR else f"LR{i} (out of range)") if not 0 <= i < self.nr_lrs \
                else (f"LR{i}, unused" if not vv.lr_mask[i] else f"LR{i}, which holds irq {vv.lr[i]}")
            self.cpu.finding("invariant:raise-inflight-lr",
                             f"BUG: gic_raise_inflight_irq: gic_update_one_lr(vcpu{v}, {where}) for irq {virq}",
                             message=f"irq {virq} is inflight on vcpu{p.inflight}"
                                     f"{'' if p.inflight == v else ' (not the target: a stale owner)'}, "
                                     f"status {status_text(p.status)}, not lr_pending and in no LR of vcpu{v}: "
                                     f"gic_update_one_lr reads {where} of pcpu{self.cpu.wid}",
                             subject=virq)
            if not 0 <= i < self.nr_lrs or not vv.lr_mask[i]:
                return  # not modelled further: Xen reads an unused LR or past the LRs
        self.gic_update_one_lr(v, i)


    def gic_raise_guest_irq(self, v: int, virq: int) -> None:
        """gic.c ``gic_raise_guest_irq`` (4.8.0-4.10.0): requires v's vgic lock. Puts ``virq``
        in a free LR (gic_find_unused_lr) when ``v == current`` and lr_pending is empty, else
        gic_add_to_lr_pending. An LPI is looked up here: NULL, "An unmapped LPI does not need to
        be raised" (56e1b3ebc9)."""
        vv = self.d.vcpus[v]
        assert_held(vv.lock)
        p = None
        if virq >= LPI_OFFSET:
            p = self.irq_to_pending(virq)
            if p is None:
                return
        if v == self.current and not any(vv.lr_pending):
            i = self.gic_find_unused_lr(v, virq, p, 0)
            if i < self.nr_lrs:
                vv.lr_mask[i] = 1
                self.gic_set_lr(v, i, virq, p)
                return
        self.gic_add_to_lr_pending(v, virq, p)

    def gic_find_unused_lr(self, v: int, virq: int, p: Any, lr: int) -> int:
        """gic.c ``gic_find_unused_lr`` (bccfbe70a3, 4.10.0; before it find_next_zero_bit):
        the first unused LR from ``lr``; a PRISTINE LPI's number already in a used LR (an
        older, discarded LPI) gives that LR, "to avoid inserting the same IRQ twice"."""
        vv = self.d.vcpus[v]
        if self.lpi_pristine and p is not None and test_bit(p.status, GIC_IRQ_GUEST_PRISTINE_LPI):
            for j in range(self.nr_lrs):
                if vv.lr_mask[j] and vv.lr[j] == virq:
                    return j
        for j in range(lr, self.nr_lrs):
            if not vv.lr_mask[j]:
                return j
        return self.nr_lrs

    def gic_add_to_lr_pending(self, v: int, virq: int, p: Any = None) -> None:
        """gic.c ``gic_add_to_lr_pending`` (4.8.0-4.10.0): requires v's vgic lock (ASSERT);
        nothing if already queued; FIFO (header)."""
        vv = self.d.vcpus[v]
        if p is None:
            p = self.irq_to_pending(virq)
        if p.lr_queue != INVALID_VCPU:
            return
        vv.queue_seq += 1
        j = self._idx(virq)
        vv.lr_pending[j] = vv.queue_seq
        if virq >= LPI_OFFSET:
            vv.lr_pending_p[j - self.nr_spis] = self.lpi_handle(p)
        p.lr_queue = v

    def _lr_queue_del(self, virq: int, p: Any = None) -> None:
        """``list_del_init(&p->lr_queue)``: from whichever vCPU's lr_pending holds it."""
        if p is None:
            p = self.irq_to_pending(virq)
        q = p.lr_queue
        if q != INVALID_VCPU:
            self._list_lock_held(q, virq, "lr_pending")
            vq, j = self.d.vcpus[q], self._idx(virq)
            if virq < LPI_OFFSET:
                vq.lr_pending[j] = 0
            elif vq.lr_pending_p[j - self.nr_spis] == self.lpi_handle(p):  # the slot holds this object
                vq.lr_pending[j] = 0
                vq.lr_pending_p[j - self.nr_spis] = 0
            p.lr_queue = INVALID_VCPU

    def gic_remove_irq_from_queues(self, v: int, virq: int, p: Any = None) -> None:
        """vgic_migrate_irq's lr_pending branch: ``clear_bit(QUEUED); list_del_init(&p->lr_queue);
        list_del_init(&p->inflight)`` (4.8.0, 4.9.0, open-coded) = gic.c
        ``gic_remove_irq_from_queues(v, p)`` (4.10.0). Requires v's vgic lock (ASSERTed in
        4.10.0) — and, for the unlinks to be safe, the lock of the vCPU whose lists ``p`` is
        actually on."""
        if p is None:
            p = self.irq_to_pending(virq)
        p.status &= ~(1 << GIC_IRQ_GUEST_QUEUED)
        self._list_del_inflight(v, virq, p)
        self._lr_queue_del(virq, p)

    def gic_set_lr(self, v: int, i: int, virq: int, p: Any = None) -> None:
        """gic.c ``gic_set_lr`` (4.8.0-4.10.0): write LR i (PENDING, HW=1 for an SPI with a
        desc), set VISIBLE, clear QUEUED (and PRISTINE_LPI: bccfbe70a3), ``p->lr = i``."""
        vv = self.d.vcpus[v]
        if p is None:
            p = self.irq_to_pending(virq)
        self.trace("lr_set", virq, v, i)
        vv.lr[i] = virq
        vv.lr_state[i] = LR_PENDING
        vv.lr_eoi_at[i] = 0
        if virq >= LPI_OFFSET:
            self.lr_set_note(v, i, virq, p)
        p.lr = i
        p.status = ((p.status | 1 << GIC_IRQ_GUEST_VISIBLE)
                    & ~(1 << GIC_IRQ_GUEST_QUEUED | 1 << GIC_IRQ_GUEST_PRISTINE_LPI))

    # -- return to guest --------------------------------------------------------------------------
    def gic_clear_lrs(self, v: int) -> None:
        """gic.c ``gic_clear_lrs`` (4.8.0-4.10.0), on the way back to the guest: takes v's vgic
        lock (irqsave), gic_update_one_lr for every used LR (proposal 1 adds a tail: see
        proposal1.py)."""
        vv = self.d.vcpus[v]
        flags = spin_lock_irqsave(vv.lock)
        for i in range(self.nr_lrs):
            if vv.lr_mask[i]:
                self.gic_update_one_lr(v, i)
        self.lrs_cleared(v)
        spin_unlock_irqrestore(vv.lock, flags)


    def gic_update_one_lr(self, v: int, i: int) -> None:
        """gic.c ``gic_update_one_lr`` (4.8.0-4.10.0): requires v's vgic lock, interrupts
        disabled. ACTIVE: set ACTIVE; if ENABLED, test_and_clear(QUEUED) and, for a hardware
        IRQ, drop the injection ("unable to inject hw irq ... already active in LR"). PENDING:
        test_and_clear(QUEUED). Invalid (EOIed): free the LR, clear _IRQ_INPROGRESS, re-raise if
        ENABLED && QUEUED && !MIGRATING, else unlink inflight and finish a migration (the
        design's :meth:`_migrating_on_eoi`: takes rank->lock in 4.8.0 — the inversion — and
        gicv2.lock). An LPI whose pending_irq is NULL ("An LPI might have been unmapped, in
        which case we just clean up here", 56e1b3ebc9) or PRISTINE ("the information in the LR
        is bogus", bccfbe70a3: test_and_clear) has its LR cleared and nothing else."""
        vv = self.d.vcpus[v]
        assert_held(vv.lock)
        virq = vv.lr[i]
        p = self.irq_to_pending(virq)
        if virq >= LPI_OFFSET and (p is None or (self.lpi_pristine and self._test_and_clear_pristine(p))):
            self.trace("lr_retire", virq, v, i)
            vv.lr[i] = -1  # gic_hw_ops->clear_lr(i)
            vv.lr_state[i] = LR_INVALID
            vv.lr_mask[i] = 0
            return
        state = vv.lr_state[i]
        if state == LR_ACTIVE:
            p.status |= 1 << GIC_IRQ_GUEST_ACTIVE
            if test_bit(p.status, GIC_IRQ_GUEST_ENABLED) and test_bit(p.status, GIC_IRQ_GUEST_QUEUED):
                p.status &= ~(1 << GIC_IRQ_GUEST_QUEUED)  # test_and_clear_bit
                self.d.dropped_hw += 1
                self.trace("hw_inject_dropped", virq, v, i)  # gdprintk "unable to inject hw irq"
            return
        if state == LR_PENDING:
            p.status &= ~(1 << GIC_IRQ_GUEST_QUEUED)
            return
        # the guest EOIed it: free the LR
        self.trace("lr_eoi", virq, v, i)
        vv.lr[i] = -1
        vv.lr_mask[i] = 0
        lpi = virq >= LPI_OFFSET
        desc = None if lpi else self.irq_to_desc(virq)  # an LPI has no desc (p->desc == NULL)
        if desc is not None:
            desc.status &= ~(1 << _IRQ_INPROGRESS)  # software bit; the GIC deactivated it at the guest's EOI
        p.status &= ~((1 << GIC_IRQ_GUEST_VISIBLE) | (1 << GIC_IRQ_GUEST_ACTIVE))
        p.lr = GIC_INVALID_LR
        self.d.eois += 1
        st = p.status
        if (test_bit(st, GIC_IRQ_GUEST_ENABLED) and test_bit(st, GIC_IRQ_GUEST_QUEUED)
                and not test_bit(st, GIC_IRQ_GUEST_MIGRATING)):
            self.gic_raise_guest_irq(v, virq)
            return
        if desc is not None and test_bit(st, GIC_IRQ_GUEST_QUEUED) and desc.active:
            why = "MIGRATING" if test_bit(st, GIC_IRQ_GUEST_MIGRATING) else "disabled"
            # a new instance, acknowledged by do_IRQ after the guest's EOI (the GIC delivered it
            # again in the window before this gic_update_one_lr), was injected (QUEUED) and is
            # dropped with the inflight entry: no LR will carry it, so nothing deactivates it
            self.cpu.finding("invariant:hw-irq-lost",
                             f"BUG: irq {virq} lost: QUEUED and active at the GIC, unlinked from inflight "
                             f"by gic_update_one_lr",
                             message=f"vcpu{v}'s LR{i} was EOIed by the guest; irq {virq} fired again and was "
                                     f"injected (status {status_text(st)}) before gic_update_one_lr saw the EOI; "
                                     f"it is not re-raised ({why}) "
                                     f"and list_del_init(&p->inflight) drops it: the physical IRQ stays active, "
                                     f"never deactivated, never delivered again",
                             subject=virq)
            # Not Xen: the model deactivates the stuck IRQ after the report (GICD_ICACTIVER), so
            # that the run goes on exercising this SPI; in Xen it stays active for good
            self.d.lost_hw += 1
            desc.active = 0
        self._list_del_inflight(v, virq, p)
        self._migrating_on_eoi(v, virq, p)

    def _test_and_clear_pristine(self, p: Any) -> bool:
        """``test_and_clear_bit(GIC_IRQ_GUEST_PRISTINE_LPI, &p->status)``."""
        st = p.status
        if not test_bit(st, GIC_IRQ_GUEST_PRISTINE_LPI):
            return False
        p.status = st & ~(1 << GIC_IRQ_GUEST_PRISTINE_LPI)
        return True

    def gic_restore_pending_irqs(self, v: int) -> None:
        """gic.c ``gic_restore_pending_irqs`` (4.8.0-4.10.0, via gic_inject and
        gic_restore_state): takes v's vgic lock (irqsave), moves lr_pending IRQs into free LRs,
        first queued first (no eviction with equal priorities: header)."""
        vv = self.d.vcpus[v]
        flags = spin_lock_irqsave(vv.lock)
        for i in range(self.nr_lrs):
            if vv.lr_mask[i]:
                continue
            queued = [(s, j) for j, s in enumerate(vv.lr_pending) if s]
            if not queued:
                break
            _, j = min(queued)
            if j >= self.nr_spis:  # an LPI: the list entry is the object itself
                self._restore_lpi(v, i, j)
                continue
            virq = SPI_BASE + j
            vv.lr_pending[j] = 0
            self.irq_to_pending(virq).lr_queue = INVALID_VCPU
            vv.lr_mask[i] = 1
            self.gic_set_lr(v, i, virq)
        spin_unlock_irqrestore(vv.lock, flags)

    def _restore_lpi(self, v: int, i: int, j: int) -> None:
        """gic_restore_pending_irqs for an LPI entry ``p`` of lr_pending (slot ``j``), LR ``i``
        free (4.10.0): ``lr = gic_find_unused_lr(v, p, lr)``, ``gic_set_lr(lr, p)``,
        ``list_del_init(&p->lr_queue)``, ``set_bit(lr, lr_mask)``. ``p`` is the list's
        pointer, not a lookup: an object freed while queued is dereferenced here."""
        vv = self.d.vcpus[v]
        k = j - self.nr_spis
        virq = LPI_OFFSET + k
        p = self.lpi_deref(vv.lr_pending_p[k])
        lr = self.gic_find_unused_lr(v, virq, p, i)
        self.gic_set_lr(v, lr, virq, p)
        vv.lr_pending[j] = 0
        vv.lr_pending_p[k] = 0
        p.lr_queue = INVALID_VCPU
        vv.lr_mask[lr] = 1

    # -- the guest --------------------------------------------------------------------------------
    def guest_run(self, v: int, now_ns: int, handler_ns: int) -> None:
        """The guest on this pCPU between two exits: acknowledges pending LRs (pending ->
        active) and EOIs an active one once its handler has run ``handler_ns`` (active ->
        invalid). The EOI of a HW list register deactivates the physical interrupt
        (``desc->active``): the GIC may deliver it again from here on, before Xen's
        gic_update_one_lr has seen the EOI. Guest code: no hypervisor lock."""
        vv = self.d.vcpus[v]
        vv.exits += 1
        for i in range(self.nr_lrs):
            st = vv.lr_state[i]
            if st == LR_PENDING and vv.lr[i] >= LPI_OFFSET:
                vv.lr_state[i] = LR_INVALID  # acknowledge (ICV_IAR1): an LPI has no active state
                self.trace("guest_ack", vv.lr[i], v)
            elif st == LR_PENDING:
                vv.lr_state[i] = LR_ACTIVE  # acknowledge (GICV_IAR)
                vv.lr_eoi_at[i] = now_ns + handler_ns
            elif st == LR_ACTIVE and now_ns >= vv.lr_eoi_at[i]:
                vv.lr_state[i] = LR_INVALID  # EOI + deactivate (GICV_EOIR/DIR)
                self.irq_to_desc(vv.lr[i]).active = 0  # HW=1: the physical IRQ is deactivated
                self.trace("guest_eoi", vv.lr[i], v)

    def vcpu_run(self, now_ns: int, handler_ns: int) -> None:
        """One cycle of this pCPU: ``schedule()`` picks the vCPU it runs (a blocked one is
        woken when its virtual timer is due: ``virt_timer_expired`` -> ``vcpu_unblock``; with
        moving vCPUs also a move, a steal or a switch: shm_model/xen/schedule.py), then that
        vCPU's exit/entry (traps.c ``leave_hypervisor_tail``, 4.8.0-4.10.0: ``gic_clear_lrs``
        (vgic_sync_from_lrs) then ``gic_inject`` -> gic_restore_pending_irqs), then the guest
        runs. With nothing to run the pCPU idles."""
        v = self.sched.schedule(now_ns)
        if v == IDLE:
            return
        self.gic_clear_lrs(v)
        self.gic_restore_pending_irqs(v)
        self.guest_run(v, now_ns, handler_ns)

    def vcpu_block(self, v: int, wake_at_ns: int) -> bool:
        """The guest executes WFI (traps.c ``do_trap_wfi`` -> schedule.c ``vcpu_block``,
        4.8.0-4.10.0): ``set_bit(_VPF_blocked)``, then, if ``local_events_need_delivery()``
        (an IRQ in its lr_pending or pending in an LR), clear it again; else the pCPU runs the
        idle vCPU (``gic_save_state``): the vCPU is not ``current``, injections to it go to
        lr_pending, and vcpu_unblock (vgic_vcpu_inject_irq's tail) or its timer wakes it.
        Returns whether it blocked."""
        vv = self.d.vcpus[v]
        return self.sched.vcpu_block(v, wake_at_ns, lambda: any(vv.lr_pending)
                                     or any(s == LR_PENDING for s in vv.lr_state))

    def arch_move_irqs(self, v: int) -> None:
        """vgic.c ``arch_move_irqs`` (4.8.0-4.10.0), called by schedule.c ``sched_move_irqs``
        after ``v->processor`` changed, with no lock held: ``cpu_mask =
        cpumask_of(v->processor)`` read once; then for every SPI ``vgic_get_target_vcpu`` (the
        design's: under the rank lock in 4.8.0, ``read_atomic`` from 378384399e) and, if that
        is ``v`` and the IRQ is not MIGRATING, ``irq_set_affinity(p->desc, cpu_mask)``.
        Nothing orders it against a concurrent ITARGETSR write or EOI: the target it read may
        be stale when it writes the affinity. (4.10.0 adds ``ASSERT(!is_lpi(vgic_num_irqs(d)
        - 1))``: LPIs are not moved; no LPI workload moves vCPUs.)"""
        pcpu = self.processor(v)  # const cpumask_t *cpu_mask = cpumask_of(v->processor)
        for i in range(self.nr_spis):
            virq = SPI_BASE + i
            t = self.vgic_get_target_vcpu(virq)
            p = self.irq_to_pending(virq)
            if t == v and not test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
                self.d.moved_irqs += 1
                self.trace("move_irq", virq, v, pcpu)
                self.irq_set_affinity(virq, pcpu)

    # -- invariants (read with every worker parked) -----------------------------------------------
    def quiescent(self, virq: int) -> bool:
        """Model only: not inflight, not queued, not MIGRATING, neither pending nor active at
        the GIC."""
        p = self.irq_to_pending(virq)
        desc = self.irq_to_desc(virq)
        return (p.inflight == INVALID_VCPU and p.lr_queue == INVALID_VCPU
                and not test_bit(p.status, GIC_IRQ_GUEST_MIGRATING)
                and not desc.status & (1 << _IRQ_INPROGRESS) and not desc.active and not desc.hw_pending)


def status_text(status: int) -> str:
    return "|".join(n for b, n in enumerate(STATUS_NAMES) if status >> b & 1) or "0"
