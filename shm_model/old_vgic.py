"""Xen's old ARM vGIC (xen/arch/arm/vgic.c, vgic-v2.c, gic.c as of Xen 4.8-4.10): ranks,
per-vCPU vgic state, pending_irq, list registers and physical SPI descriptors, with the
operations of the "rank/vgic locks inversion" thread (seed 000) in each of its variants.

Locking order (vgic-v2.c / gic.c, Xen 4.8), outermost first:

    desc->lock            do_IRQ holds it while injecting a guest SPI (interrupt context)
      rank->lock          vgic_lock_rank(): the MMIO handlers; vgic_get_target_vcpu()
        v->arch.vgic.lock vgic_migrate_irq(old); vgic_vcpu_inject_irq(); gic_clear_lrs()
          gicv2.lock      gicv2_irq_set_affinity(): irq_set_affinity() on a GICv2 (leaf)

Every lock above is taken with interrupts disabled (``_irqsave``) or in interrupt context.
The bug of variant ``rank-lock-inversion``: ``gic_update_one_lr`` runs with the vgic lock
held and calls ``vgic_get_target_vcpu``, which takes the rank lock: vgic -> rank.

Note on ``irq_set_affinity``: PROTOCOLS.md says it writes ``desc->affinity`` under
``desc->lock``; Xen's GICv2 driver takes the distributor lock ``gicv2.lock`` instead
(``gicv2_irq_set_affinity``), and ``do_IRQ`` calls ``vgic_vcpu_inject_spi`` with
``desc->lock`` held. Modelling ``desc->lock`` there would invent a desc/vgic inversion Xen
does not have, so the model follows the code.

State is one domain: vCPU ``v`` runs pinned on pCPU ``v`` (the worker with the same id), so
``pcpu(v) == v`` and a pCPU's list registers are its vCPU's. SPIs are ``32 .. 32+spis-1``;
``pending[i]`` and ``descs[i]`` are those of SPI ``32 + i``.
"""

from __future__ import annotations

from typing import Any

from .cpu import Cpu
from .layout import Array, Int, Nested, Spinlock, Struct
from .spinlock import (assert_held, spin_lock, spin_lock_irqsave, spin_unlock, spin_unlock_irqrestore)

NR_INTERRUPT_PER_RANK = 32
SPI_BASE = 32
GIC_INVALID_LR = -1
INVALID_VCPU = -1

# pending_irq.status bits (GIC_IRQ_GUEST_*)
GIC_IRQ_GUEST_QUEUED = 0
GIC_IRQ_GUEST_ACTIVE = 1
GIC_IRQ_GUEST_VISIBLE = 2
GIC_IRQ_GUEST_ENABLED = 3
GIC_IRQ_GUEST_MIGRATING = 4
STATUS_NAMES = ("QUEUED", "ACTIVE", "VISIBLE", "ENABLED", "MIGRATING")

# irq_desc.status bits
_IRQ_INPROGRESS = 0

# list register states (GICH_LR)
LR_INVALID, LR_PENDING, LR_ACTIVE = 0, 1, 2

VARIANTS = ("rank-lock-inversion", "unlocked-target-read", "unlocked-target-read-assert", "old-vcpu-lock",
            "drop-vgic-then-rank", "upstream")


class PendingIrq(Struct):
    """``struct pending_irq`` of one SPI."""

    status = Int()
    lr = Int(init=GIC_INVALID_LR)
    inflight = Int(init=INVALID_VCPU)  # the vCPU whose inflight_irqs list holds it (list_empty: -1)
    lr_queue = Int(init=INVALID_VCPU)  # the vCPU whose lr_pending list holds it
    lr_queue_seq = Int()  # FIFO order within lr_pending
    old_vcpu = Int(init=INVALID_VCPU)  # variant old-vcpu-lock: the vCPU whose vgic lock guards rank->vcpu


class Rank(Struct):
    """``struct vgic_irq_rank``: 32 interrupts, their lock and ITARGETSR targets."""

    lock = Spinlock("&rank->lock")
    vcpu = Array(Int, NR_INTERRUPT_PER_RANK)


class VgicVcpu(Struct):
    """``v->arch.vgic`` of one vCPU, plus the list registers of the pCPU it runs on.
    ``inflight[i]``/``lr_pending[i]`` mirror list membership for the invariants: a
    ``pending_irq`` on two lists is the corruption ``inflight-on-one-vcpu`` looks for."""

    lock = Spinlock("&v->arch.vgic.lock")
    inflight = Array(Int, "spis")
    lr_pending = Array(Int, "spis")
    lr = Array(Int, "lrs", init=-1)  # GICH_LRn.virq (-1: unused)
    lr_state = Array(Int, "lrs")  # LR_INVALID / LR_PENDING / LR_ACTIVE
    lr_mask = Array(Int, "lrs")  # this_cpu(lr_mask)
    lr_eoi_at = Array(Int, "lrs")  # guest model: when (CLOCK_MONOTONIC ns) the guest EOIs
    exits = Int()  # guest exits (vcpu_run cycles)
    queue_seq = Int()


class IrqDesc(Struct):
    """``struct irq_desc`` of a physical SPI routed to the guest (virq == irq)."""

    lock = Spinlock("&desc->lock")
    status = Int()  # _IRQ_INPROGRESS (software, under desc->lock or by its single owner)
    affinity = Int()  # the pCPU GICD_ITARGETSR routes it to
    hw_pending = Int()  # the GIC holds it pending for delivery (written by the device model and do_IRQ)


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


def test_bit(word: int, bit: int) -> bool:
    return bool(word >> bit & 1)


class OldVgic:
    """The operations, as one CPU (worker) runs them. ``variant`` selects the code of the
    thread's patch, a proposal, or what upstream Xen shipped.

    ``trace`` is a callable ``(event, a, b, c)`` recording model events for reports."""

    def __init__(self, d: Any, cpu: Cpu, variant: str, trace: Any) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown old-vGIC variant {variant!r}")
        self.d = d
        self.cpu = cpu
        self.variant = variant
        self.trace = trace
        self.nr_vcpus = len(d.vcpus)
        self.nr_spis = len(d.pending)
        self.nr_lrs = len(d.vcpus[0].lr) if d.vcpus else 0
        self.deferred: list[int] = []  # drop-vgic-then-rank: MIGRATING irqs noted by gic_update_one_lr

    # -- helpers --------------------------------------------------------------------------------
    def irq_to_pending(self, virq: int) -> Any:
        return self.d.pending[virq - SPI_BASE]

    def vgic_rank_irq(self, virq: int) -> Any:
        return self.d.ranks[(virq - SPI_BASE) // NR_INTERRUPT_PER_RANK]

    def irq_to_desc(self, virq: int) -> Any:
        return self.d.descs[virq - SPI_BASE]

    @staticmethod
    def rank_offset(virq: int) -> int:
        return (virq - SPI_BASE) % NR_INTERRUPT_PER_RANK

    @property
    def current(self) -> int:
        """The vCPU running on this pCPU."""
        return self.cpu.wid

    # -- targets --------------------------------------------------------------------------------
    def __vgic_get_target_vcpu(self, virq: int) -> int:
        """Requires: rank->lock (asserted in the variants that keep the ASSERT)."""
        rank = self.vgic_rank_irq(virq)
        if self.variant in ("rank-lock-inversion", "unlocked-target-read-assert", "drop-vgic-then-rank"):
            assert_held(rank.lock)  # ASSERT(spin_is_locked(&rank->lock))
        return rank.vcpu[self.rank_offset(virq)]

    def vgic_get_target_vcpu(self, virq: int) -> int:
        """Target vCPU of ``virq``. Takes rank->lock (irqsave) in every variant but
        ``upstream``, where 378384399e reads ``rank->vcpu`` atomically, without a lock (the
        thread's patch only changed the caller in gic_update_one_lr)."""
        if self.variant == "upstream":
            return self.vgic_rank_irq(virq).vcpu[self.rank_offset(virq)]  # read_atomic()
        rank = self.vgic_rank_irq(virq)
        flags = spin_lock_irqsave(rank.lock)
        v = self.__vgic_get_target_vcpu(virq)
        spin_unlock_irqrestore(rank.lock, flags)
        return v

    # -- physical affinity ------------------------------------------------------------------------
    def irq_set_affinity(self, virq: int, pcpu: int) -> None:
        """``irq_set_affinity(desc, cpumask_of(pcpu))`` -> ``gicv2_irq_set_affinity``: takes
        gicv2.lock (a leaf), writes GICD_ITARGETSR. Callers have interrupts disabled."""
        desc = self.irq_to_desc(virq)
        spin_lock(self.d.gicv2.lock)
        desc.affinity = pcpu
        self.d.affinity_writes += 1
        self.trace("irq_set_affinity", virq, pcpu)  # at the write: the release is a scheduling point
        spin_unlock(self.d.gicv2.lock)

    # -- migration (the guest's ITARGETSR write) --------------------------------------------------
    def vgic_store_itargetsr(self, virq: int, new_target: int) -> None:
        """Guest write of ITARGETSR for ``virq`` (vgic_v2_distr_mmio_write ->
        vgic_store_itargetsr). Takes: rank->lock (irqsave, vgic_lock_rank), then in
        vgic_migrate_irq a vgic lock. Where ``rank->vcpu`` is written depends on the variant:
        after vgic_migrate_irq under the rank lock (Xen 4.8, proposal 1), only if it was not
        refused (upstream, ``write_atomic``), or inside vgic_migrate_irq under a vgic lock
        (the thread's patch and proposal 3)."""
        rank = self.vgic_rank_irq(virq)
        off = self.rank_offset(virq)
        flags = spin_lock_irqsave(rank.lock)
        old_target = rank.vcpu[off]
        if new_target != old_target:
            self.trace("migrate", virq, old_target, new_target)
            moved = self.vgic_migrate_irq(old_target, new_target, virq)
            if self.variant == "upstream":
                if moved:
                    rank.vcpu[off] = new_target  # write_atomic(), after vgic_migrate_irq returned
                else:
                    self.d.refused_migrations += 1  # "migration failed: requested while in progress"
                    self.trace("migrate_refused", virq, old_target, new_target)
            elif not self._target_written_under_vgic_lock:
                rank.vcpu[off] = new_target
        spin_unlock_irqrestore(rank.lock, flags)

    @property
    def _target_written_under_vgic_lock(self) -> bool:
        """The thread's patch ("placing modifications to rank->vcpu within regions protected by
        the vgic lock") and proposal 3 write ``rank->vcpu`` inside vgic_migrate_irq."""
        return self.variant in ("unlocked-target-read", "unlocked-target-read-assert", "old-vcpu-lock")

    def _write_target(self, virq: int, new: int) -> None:
        """Requires: the vgic lock the variant guards ``rank->vcpu`` with (held by caller)."""
        self.vgic_rank_irq(virq).vcpu[self.rank_offset(virq)] = new

    def vgic_migrate_irq(self, old: int, new: int, virq: int) -> bool:
        """Move ``virq`` from vCPU ``old`` to ``new``. Requires: rank->lock. Takes: old's vgic
        lock (irqsave); proposal 3 takes ``p->old_vcpu``'s while MIGRATING. Returns False when
        refused (upstream only: MIGRATING is set)."""
        p = self.irq_to_pending(virq)
        assert_held(self.vgic_rank_irq(virq).lock)
        locked_write = self._target_written_under_vgic_lock
        if self.variant != "upstream" and test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            # 4.8: "migration already in progress, no need to do anything" (unlocked test)
            if locked_write:
                owner = p.old_vcpu if self.variant == "old-vcpu-lock" and p.old_vcpu >= 0 else old
                ol = self.d.vcpus[owner].lock
                flags = spin_lock_irqsave(ol)
                self._write_target(virq, new)
                spin_unlock_irqrestore(ol, flags)
            return True
        vold = self.d.vcpus[old]
        flags = spin_lock_irqsave(vold.lock)
        if self.variant == "upstream" and test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
            spin_unlock_irqrestore(vold.lock, flags)
            return False  # 31bc6a93a0: refuse while in progress
        self.d.migrations += 1
        if p.inflight == INVALID_VCPU:  # list_empty(&p->inflight)
            self.irq_set_affinity(virq, new)
            if locked_write:
                self._write_target(virq, new)
                p.old_vcpu = new
            spin_unlock_irqrestore(vold.lock, flags)
            return True
        if p.lr_queue != INVALID_VCPU:  # still lr_pending: re-inject it to the new vCPU
            self.gic_remove_from_queues(old, virq)
            self.irq_set_affinity(virq, new)
            if locked_write:
                self._write_target(virq, new)
                p.old_vcpu = new
            spin_unlock_irqrestore(vold.lock, flags)
            self.vgic_vcpu_inject_irq(new, virq)
            return True
        p.status |= 1 << GIC_IRQ_GUEST_MIGRATING  # in an LR: wait for the EOI
        self.d.migrating_set += 1
        if locked_write:
            self._write_target(virq, new)
            p.old_vcpu = old  # proposal 3: the vCPU whose LR holds it guards the target now
        self.trace("set_migrating", virq, old, new)
        spin_unlock_irqrestore(vold.lock, flags)
        return True

    # -- injection (interrupt context) ------------------------------------------------------------
    def do_IRQ(self, virq: int) -> None:
        """The physical SPI handler for a guest-routed IRQ, in interrupt context on the pCPU
        of ``desc->affinity``. Takes: desc->lock, and inside it the injection's locks."""
        desc = self.irq_to_desc(virq)
        spin_lock(desc.lock)
        desc.hw_pending = 0
        desc.status |= 1 << _IRQ_INPROGRESS
        self.vgic_vcpu_inject_spi(virq)
        spin_unlock(desc.lock)

    def vgic_vcpu_inject_spi(self, virq: int) -> None:
        """Takes: rank->lock through vgic_get_target_vcpu (variants that lock it), then the
        target's vgic lock in vgic_vcpu_inject_irq."""
        v = self.vgic_get_target_vcpu(virq)
        self.d.injections += 1
        self.vgic_vcpu_inject_irq(v, virq)

    def vgic_vcpu_inject_irq(self, v: int, virq: int) -> None:
        """Make ``virq`` pending on vCPU ``v``. Takes: v's vgic lock (irqsave)."""
        vv = self.d.vcpus[v]
        p = self.irq_to_pending(virq)
        flags = spin_lock_irqsave(vv.lock)
        p.status |= 1 << GIC_IRQ_GUEST_QUEUED
        if p.inflight != INVALID_VCPU:  # already inflight: gic_raise_inflight_irq
            if p.inflight != v:
                self.trace("inject_inflight_elsewhere", virq, v, p.inflight)
            spin_unlock_irqrestore(vv.lock, flags)
            return
        if test_bit(p.status, GIC_IRQ_GUEST_ENABLED):
            self.gic_raise_guest_irq(v, virq)
        self._list_add_inflight(v, virq)
        self.trace("inject", virq, v)
        spin_unlock_irqrestore(vv.lock, flags)

    def _list_add_inflight(self, v: int, virq: int) -> None:
        p = self.irq_to_pending(virq)
        i = virq - SPI_BASE
        self.d.vcpus[v].inflight[i] = 1
        p.inflight = v

    def _list_del_inflight(self, v: int, virq: int) -> None:
        """``list_del_init(&p->inflight)``: unlinks ``p`` from the inflight list it is on,
        which is not necessarily ``v``'s (Xen's list_del does not know whose list it is).
        Requires: the vgic lock of the vCPU owning that list."""
        p = self.irq_to_pending(virq)
        owner = p.inflight
        if owner == INVALID_VCPU:
            return  # list_del_init of an unlinked node: nothing to do
        self._list_lock_held(owner, virq, "inflight_irqs")
        self.d.vcpus[owner].inflight[virq - SPI_BASE] = 0
        p.inflight = INVALID_VCPU

    def _list_lock_held(self, owner: int, virq: int, what: str) -> None:
        """The lock rule of the per-vCPU lists (vgic.c: "inflight_irqs and lr_pending are
        protected by v->arch.vgic.lock"): a CPU that links or unlinks an entry of vCPU
        ``owner``'s list must hold that vCPU's vgic lock. Two CPUs doing it under
        different locks corrupt the list: a data race, reported as KCSAN would."""
        lock = self.d.vcpus[owner].lock
        if not lock.held_by_me():
            self.cpu.finding("invariant:vgic-list-lock",
                             f"BUG: data race on vcpu{owner}'s {what} list (irq {virq})",
                             message=f"pcpu{self.cpu.wid} unlinks irq {virq} from vcpu{owner}'s {what} "
                                     f"without vcpu{owner}'s vgic lock",
                             held=[lk.path for lk in self.cpu.held_locks()], subject=virq)

    def gic_raise_guest_irq(self, v: int, virq: int) -> None:
        """Requires: v's vgic lock. Puts ``virq`` in a free LR when ``v`` is current and
        nothing waits in lr_pending, else queues it on lr_pending."""
        vv = self.d.vcpus[v]
        assert_held(vv.lock)
        if v == self.current and not any(vv.lr_pending):
            for i in range(self.nr_lrs):
                if not vv.lr_mask[i]:
                    vv.lr_mask[i] = 1
                    self.gic_set_lr(v, i, virq)
                    return
        self.gic_add_to_lr_pending(v, virq)

    def gic_add_to_lr_pending(self, v: int, virq: int) -> None:
        vv = self.d.vcpus[v]
        p = self.irq_to_pending(virq)
        if p.lr_queue != INVALID_VCPU:
            return
        vv.queue_seq += 1
        vv.lr_pending[virq - SPI_BASE] = vv.queue_seq
        p.lr_queue = v

    def gic_remove_from_queues(self, v: int, virq: int) -> None:
        """``vgic_remove_irq_from_queues(v, p)``: clear QUEUED, ``list_del_init(&p->inflight)``,
        ``gic_remove_from_lr_pending(v, p)`` (``list_del_init(&p->lr_queue)``). Requires:
        v's vgic lock (ASSERTed in Xen) — and, for the unlinks to be safe, the lock of the
        vCPU whose lists ``p`` is actually on."""
        p = self.irq_to_pending(virq)
        p.status &= ~(1 << GIC_IRQ_GUEST_QUEUED)
        self._list_del_inflight(v, virq)
        q = p.lr_queue
        if q != INVALID_VCPU:
            self._list_lock_held(q, virq, "lr_pending")
            self.d.vcpus[q].lr_pending[virq - SPI_BASE] = 0
            p.lr_queue = INVALID_VCPU

    def gic_set_lr(self, v: int, i: int, virq: int) -> None:
        vv = self.d.vcpus[v]
        p = self.irq_to_pending(virq)
        self.trace("lr_set", virq, v, i)
        vv.lr[i] = virq
        vv.lr_state[i] = LR_PENDING
        vv.lr_eoi_at[i] = 0
        p.lr = i
        p.status = (p.status | 1 << GIC_IRQ_GUEST_VISIBLE) & ~(1 << GIC_IRQ_GUEST_QUEUED)

    # -- return to guest --------------------------------------------------------------------------
    def gic_clear_lrs(self, v: int) -> None:
        """On the way back to the guest. Takes: v's vgic lock (irqsave); drop-vgic-then-rank
        then takes rank->lock per noted MIGRATING IRQ, after dropping the vgic lock."""
        vv = self.d.vcpus[v]
        flags = spin_lock_irqsave(vv.lock)
        for i in range(self.nr_lrs):
            if vv.lr_mask[i]:
                self.gic_update_one_lr(v, i)
        spin_unlock_irqrestore(vv.lock, flags)
        if self.deferred:
            self._migrate_deferred()

    def gic_update_one_lr(self, v: int, i: int) -> None:
        """Requires: v's vgic lock, interrupts disabled. Takes: per variant — rank->lock
        (rank-lock-inversion, via vgic_get_target_vcpu: the inversion), gicv2.lock."""
        vv = self.d.vcpus[v]
        assert_held(vv.lock)
        virq = vv.lr[i]
        p = self.irq_to_pending(virq)
        state = vv.lr_state[i]
        if state == LR_ACTIVE:
            p.status |= 1 << GIC_IRQ_GUEST_ACTIVE
            return
        if state == LR_PENDING:
            p.status &= ~(1 << GIC_IRQ_GUEST_QUEUED)
            return
        # the guest EOIed it: free the LR
        self.trace("lr_eoi", virq, v, i)
        vv.lr[i] = -1
        vv.lr_mask[i] = 0
        desc = self.irq_to_desc(virq)
        desc.status &= ~(1 << _IRQ_INPROGRESS)  # the physical IRQ is deactivated
        p.status &= ~((1 << GIC_IRQ_GUEST_VISIBLE) | (1 << GIC_IRQ_GUEST_ACTIVE))
        p.lr = GIC_INVALID_LR
        self.d.eois += 1
        st = p.status
        if (test_bit(st, GIC_IRQ_GUEST_ENABLED) and test_bit(st, GIC_IRQ_GUEST_QUEUED)
                and not test_bit(st, GIC_IRQ_GUEST_MIGRATING)):
            self.gic_raise_guest_irq(v, virq)
            return
        self._list_del_inflight(v, virq)
        self._migrating_on_eoi(v, virq)

    def _migrating_on_eoi(self, v: int, virq: int) -> None:
        """What each variant does with MIGRATING once the IRQ left its LR (vgic lock held)."""
        p = self.irq_to_pending(virq)
        var = self.variant
        if var == "drop-vgic-then-rank":
            if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
                self.deferred.append(virq)  # handled after the vgic lock is dropped
            return
        if var == "upstream":
            # list_del_init(&p->inflight); smp_wmb(); (31bc6a93a0)
            if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
                t = self.vgic_get_target_vcpu(virq)
                self.trace("eoi_migrate", virq, v, t)
                self.irq_set_affinity(virq, t)
                p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
            return
        if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):  # test_and_clear_bit
            p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
            if var == "rank-lock-inversion":
                t = self.vgic_get_target_vcpu(virq)  # takes rank->lock under the vgic lock
            elif var == "old-vcpu-lock":
                t = self.vgic_rank_irq(virq).vcpu[self.rank_offset(virq)]  # guarded by our vgic lock
                p.old_vcpu = t
            else:  # unlocked-target-read(-assert): the thread's patch
                t = self.__vgic_get_target_vcpu(virq)
            self.trace("eoi_migrate", virq, v, t)
            self.irq_set_affinity(virq, t)

    def _migrate_deferred(self) -> None:
        """Proposal 1 (drop-vgic-then-rank): after gic_clear_lrs dropped the vgic lock, for
        each noted IRQ: rank->lock, test_and_clear MIGRATING, read target, set affinity."""
        todo, self.deferred = self.deferred, []
        for virq in todo:
            p = self.irq_to_pending(virq)
            rank = self.vgic_rank_irq(virq)
            flags = spin_lock_irqsave(rank.lock)
            if test_bit(p.status, GIC_IRQ_GUEST_MIGRATING):
                p.status &= ~(1 << GIC_IRQ_GUEST_MIGRATING)
                t = self.__vgic_get_target_vcpu(virq)
                self.trace("eoi_migrate", virq, self.current, t)
                self.irq_set_affinity(virq, t)
            spin_unlock_irqrestore(rank.lock, flags)

    def gic_restore_pending_irqs(self, v: int) -> None:
        """Before entering the guest: move lr_pending IRQs into free LRs, oldest first.
        Takes: v's vgic lock (irqsave)."""
        vv = self.d.vcpus[v]
        flags = spin_lock_irqsave(vv.lock)
        for i in range(self.nr_lrs):
            if vv.lr_mask[i]:
                continue
            queued = [(s, j) for j, s in enumerate(vv.lr_pending) if s]
            if not queued:
                break
            _, j = min(queued)
            virq = SPI_BASE + j
            vv.lr_pending[j] = 0
            self.irq_to_pending(virq).lr_queue = INVALID_VCPU
            vv.lr_mask[i] = 1
            self.gic_set_lr(v, i, virq)
        spin_unlock_irqrestore(vv.lock, flags)

    # -- the guest --------------------------------------------------------------------------------
    def guest_run(self, v: int, now_ns: int, handler_ns: int) -> None:
        """The guest on this pCPU between two exits: acknowledges pending LRs (pending ->
        active) and EOIs an active one once its handler has run ``handler_ns`` (active ->
        invalid). Guest code: no hypervisor lock; interrupts enabled."""
        vv = self.d.vcpus[v]
        vv.exits += 1
        for i in range(self.nr_lrs):
            st = vv.lr_state[i]
            if st == LR_PENDING:
                vv.lr_state[i] = LR_ACTIVE  # acknowledge (GICC_IAR)
                vv.lr_eoi_at[i] = now_ns + handler_ns
            elif st == LR_ACTIVE and now_ns >= vv.lr_eoi_at[i]:
                vv.lr_state[i] = LR_INVALID  # EOI + deactivate (GICC_EOIR/DIR)
                self.trace("guest_eoi", vv.lr[i], v)

    def vcpu_run(self, v: int, now_ns: int, handler_ns: int) -> None:
        """One exit/entry cycle of vCPU ``v`` on its pCPU: gic_clear_lrs, then
        gic_restore_pending_irqs (gic_inject), then the guest runs."""
        self.gic_clear_lrs(v)
        self.gic_restore_pending_irqs(v)
        self.guest_run(v, now_ns, handler_ns)

    # -- invariants (read with every worker parked) -----------------------------------------------
    def quiescent(self, virq: int) -> bool:
        p = self.irq_to_pending(virq)
        return (p.inflight == INVALID_VCPU and p.lr_queue == INVALID_VCPU
                and not test_bit(p.status, GIC_IRQ_GUEST_MIGRATING)
                and not self.irq_to_desc(virq).status & (1 << _IRQ_INPROGRESS)
                and not self.irq_to_desc(virq).hw_pending)


def status_text(status: int) -> str:
    return "|".join(n for b, n in enumerate(STATUS_NAMES) if status >> b & 1) or "0"
