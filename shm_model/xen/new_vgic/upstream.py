"""Design ``upstream``: the new VGIC as merged in Xen 4.11 (RELEASE-4.11.0,
xen/arch/arm/vgic/vgic.c, vgic-mmio.c, vgic-mmio-v2.c): ``vcpu_kick`` on both paths of
``vgic_queue_irq_unlock`` (Julien's review of RFC 22/49 taken), the re-check under both
locks, two ap_list locks in vcpu_id order in ``vgic_prune_ap_list``, ``_irqsave`` for every
lock an ISR may take.

Locking order, outermost first (the comment at the top of vgic.c, 4.11)::

    vgic_cpu->ap_list_lock      (irqsave) vgic_queue_irq_unlock, vgic_prune_ap_list (two:
                                the lower vcpu_id first), vgic_sync_to_lrs (interrupts off),
                                vgic_vcpu_pending_irq
      vgic_irq->irq_lock        (irqsave outside an ISR) vgic_inject_irq, the MMIO handlers,
                                vgic_v2_fold_lr_state (under local_irq_save), and nested
                                under the ap_list lock; vgic_irq_cmp takes two (the second
                                nested)

Model notes: the ``targets``/``target_vcpu`` write of ``vgic_mmio_write_target`` is the
GICv2 ITARGETSR path (IROUTER is GICv3's, which the new VGIC of 4.11 does not emulate).
Found by stress, declared ``known`` on every variant (see the workload): Xen 4.11's
``vgic_prune_ap_list`` moves a pending IRQ onto another vCPU's ap_list without kicking that
vCPU, and ``vgic_mmio_write_target`` retargets an IRQ that waits on the old vCPU's list
without kicking anyone; KVM's prune later gained ``target_vcpu_needs_kick``.
"""

from __future__ import annotations

from typing import Any

from ...spinlock import assert_held, spin_lock, spin_unlock
from .common import NO_VCPU, SPI_BASE, NewVgic, irq_is_pending


class Upstream(NewVgic):
    """Xen 4.11's new VGIC (see the module's docstring)."""

    name = "upstream"

    # -- injection (vgic.c, 4.11) ---------------------------------------------------------------
    def vgic_inject_irq(self, intid: int, level: int) -> None:
        """``vgic_inject_irq(d, vcpu, intid, level)`` (vgic.c, 4.11), from an ISR or an emulated
        device: ``spin_lock_irqsave(&irq->irq_lock)``; an invalid injection
        (``vgic_validate_injection``) returns; level: ``line_level = level``, edge:
        ``pending_latch = true``; ``vgic_queue_irq_unlock``."""
        irq = self.vgic_get_irq(intid)
        flags = self.lock_irqsave(irq.irq_lock)
        if not self.vgic_validate_injection(irq, level):
            self.s.injections_ignored += 1
            self.trace("inject_ignored", intid, level)
            self.unlock_irqrestore(irq.irq_lock, flags)
            self.vgic_put_irq(irq)
            return
        self.s.injections += 1
        self.trace("inject", intid, level, self.cpu.wid)
        if irq.config:  # VGIC_CONFIG_LEVEL
            irq.line_level = level
        else:
            irq.pending_latch = 1
        self.note_liveness(irq)
        self.queue_noted(irq, flags)
        self.vgic_put_irq(irq)

    def vgic_queue_irq_unlock(self, irq: Any, flags: int | None) -> None:
        """``vgic_queue_irq_unlock(d, irq, flags)`` (vgic.c, 4.11). Entered with
        ``irq->irq_lock`` held (taken with ``flags``); returns with every lock dropped.

        1. ``vcpu = vgic_target_oracle(irq)``; 2. already on a list, or no vCPU: unlock,
        ``vcpu_kick(vcpu)`` if any; 3. unlock the irq, ``spin_lock_irqsave`` the vCPU's
        ap_list lock, lock the irq; 4. re-check (``irq->vcpu`` set or the oracle changed:
        unlock both, relock the irq, retry); 5. ``list_add_tail``, ``irq->vcpu = vcpu``,
        unlock both, ``vcpu_kick``."""
        assert_held(irq.irq_lock)
        while True:
            vcpu = self.vgic_target_oracle(irq)
            if irq.vcpu != NO_VCPU or vcpu == NO_VCPU:
                on = irq.vcpu
                if vcpu != NO_VCPU and vcpu == on:
                    irq.moved = 0  # the kick below is for the vCPU whose list holds it
                self.unlock_restore(irq.irq_lock, flags)
                if vcpu != NO_VCPU:
                    self.trace("queued_already", irq.intid, on, vcpu)
                    self.kick_already_queued(vcpu, irq.intid)
                else:
                    self.trace("queue_none", irq.intid)
                return
            self.unlock_restore(irq.irq_lock, flags)
            # "someone can do stuff here, which we re-check below"
            self.cpu.yield_point()
            vc = self.s.vcpus[vcpu]
            flags = self.lock_irqsave(vc.ap_list_lock)
            spin_lock(irq.irq_lock)
            if irq.vcpu != NO_VCPU or vcpu != self.vgic_target_oracle(irq):
                self.s.queue_retries += 1
                self.trace("queue_retry", irq.intid, irq.vcpu, self.vgic_target_oracle(irq))
                spin_unlock(irq.irq_lock)
                self.unlock_irqrestore(vc.ap_list_lock, flags)
                flags = self.irq_lock_retry(irq)
                continue
            self.queue_add(irq, vcpu)
            spin_unlock(irq.irq_lock)
            self.unlock_irqrestore(vc.ap_list_lock, flags)
            self.vcpu_kick(vcpu, irq.intid)
            return

    def queue_add(self, irq: Any, vcpu: int) -> None:
        """Step 5 of ``vgic_queue_irq_unlock``: ``vgic_get_irq_kref`` (an SPI: no count),
        ``list_add_tail``, ``irq->vcpu = vcpu``. Needs the ap_list lock and the irq lock."""
        assert_held(self.s.vcpus[vcpu].ap_list_lock)
        assert_held(irq.irq_lock)
        if irq.vcpu != NO_VCPU:  # the model's check: what the re-check of step 4 prevents
            where = "again on" if irq.vcpu == vcpu else f"on vcpu{irq.vcpu}'s list and now on"
            self.cpu.finding("invariant:one-ap-list", f"BUG: invariant one-ap-list violated: irq {irq.intid} "
                             f"added to vcpu{vcpu}'s ap_list while irq->vcpu = vcpu{irq.vcpu}",
                             message=f"list_add_tail of irq {irq.intid}: {where} vcpu{vcpu}'s ap_list "
                             "(vgic_queue_irq_unlock without the re-check under both locks)", subject=irq.intid)
        self.ap_list_add(vcpu, irq.intid - SPI_BASE)  # 4.11: list_add_tail
        irq.vcpu = vcpu
        irq.moved = 0
        irq.unlive = -1
        self.note_liveness(irq)  # (no-recheck: it may be queued dead; the next prune removes it)
        self.s.queued += 1
        self.trace("queue", irq.intid, vcpu, self.s.vcpus[vcpu].ap_len)

    def irq_lock_retry(self, irq: Any) -> int | None:
        """The retry's ``self.lock_irqsave(&irq->irq_lock, flags)``."""
        return self.lock_irqsave(irq.irq_lock)

    def kick_already_queued(self, vcpu: int, intid: int) -> None:
        """Step 2's notification (4.11: ``vcpu_kick``; the RFC: ``vcpu_unblock``)."""
        self.vcpu_kick(vcpu, intid)

    # -- on the way out of and back into the guest (vgic.c, 4.11) ---------------------------------
    def vgic_prune_ap_list(self, vcpu: int) -> None:
        """``vgic_prune_ap_list(vcpu)`` (vgic.c, 4.11), on the vCPU's own pCPU: under its ap_list
        lock (irqsave), each irq under its lock: no target -> ``list_del``, ``irq->vcpu = NULL``;
        this vCPU -> keep; another -> drop both locks, take both ap_list locks lower vcpu_id
        first, the irq lock, re-check the oracle, move it, unlock, restart the walk."""
        vc = self.s.vcpus[vcpu]
        while True:  # retry:
            flags = self.lock_irqsave(vc.ap_list_lock)
            vc.prune_passes += 1
            restart = False
            for i in list(self.ap_walk(vcpu)):
                irq = self.s.spis[i]
                spin_lock(irq.irq_lock)
                self.bug_on_vcpu(irq, vcpu)
                target = self.vgic_target_oracle(irq)
                if target == NO_VCPU:
                    self.list_del(vcpu, i)
                    irq.vcpu = NO_VCPU
                    irq.unlive = -1
                    self.s.prune_drops += 1
                    self.trace("prune_drop", irq.intid, vcpu)
                    spin_unlock(irq.irq_lock)
                    self.vgic_put_irq(irq)
                    continue
                if target == vcpu:
                    self.prune_keep(vcpu, i)
                    spin_unlock(irq.irq_lock)
                    continue
                spin_unlock(irq.irq_lock)
                self.unlock_irqrestore(vc.ap_list_lock, flags)
                self.cpu.yield_point()
                self.prune_move(vcpu, target, irq)
                restart = True
                break
            if not restart:
                self.unlock_irqrestore(vc.ap_list_lock, flags)
                return

    def prune_keep(self, vcpu: int, i: int) -> None:
        """An IRQ ``vgic_prune_ap_list`` keeps on this vCPU's list (4.11: nothing to do; the
        mitigations keep an active one at the head). Needs the ap_list lock and the irq lock."""

    def prune_move(self, vcpu: int, target: int, irq: Any) -> None:
        """The migration step of ``vgic_prune_ap_list`` (4.11): "Ensure locking order by always
        locking the smallest ID first": ``spin_lock_irqsave(vcpuA)``, ``spin_lock(vcpuB)``, the
        irq lock; if the oracle still says ``target``, move the irq to its list."""
        a, b = (vcpu, target) if vcpu < target else (target, vcpu)
        self.move_locked(vcpu, target, irq, a, b)

    def move_locked(self, vcpu: int, target: int, irq: Any, a: int, b: int) -> None:
        """Take ap_list locks ``a`` then ``b``, the irq lock; move ``irq`` from ``vcpu``'s list
        to ``target``'s if the oracle agrees. (KVM annotates the second lock with
        ``SINGLE_DEPTH_NESTING``; here every vCPU's lock has its own class, so lockdep checks
        the vcpu_id order itself and no annotation is needed.)"""
        la, lb = self.s.vcpus[a].ap_list_lock, self.s.vcpus[b].ap_list_lock
        flags = self.lock_irqsave(la)
        spin_lock(lb)
        spin_lock(irq.irq_lock)
        if target == self.vgic_target_oracle(irq) and irq.vcpu == vcpu:
            i = irq.intid - SPI_BASE
            self.list_del(vcpu, i)
            irq.vcpu = target
            self.ap_list_add(target, i)  # 4.11: list_add_tail
            irq.moved = 1  # nobody kicks the target (4.11)
            irq.unlive = -1
            self.s.prune_moves += 1
            self.trace("prune_move", irq.intid, vcpu, target)
        else:
            self.trace("prune_replay", irq.intid, vcpu, target)
        spin_unlock(irq.irq_lock)
        spin_unlock(lb)
        self.unlock_irqrestore(la, flags)

    def bug_on_vcpu(self, irq: Any, vcpu: int) -> None:
        """``BUG_ON(vcpu != irq->vcpu)`` of ``vgic_prune_ap_list``: an irq on this list that
        names another: two lists (``one-ap-list``)."""
        if irq.vcpu != vcpu:
            self.cpu.finding("invariant:one-ap-list", "BUG: invariant one-ap-list violated: "
                             f"irq {irq.intid} is on vcpu{vcpu}'s ap_list but irq->vcpu is vcpu{irq.vcpu}",
                             message="vgic_prune_ap_list: BUG_ON(vcpu != irq->vcpu)", subject=irq.intid)

    def vgic_flush_lr_state(self, vcpu: int) -> None:
        """``vgic_flush_lr_state(vcpu)`` (vgic.c, 4.11). Needs the ap_list lock. Longer than the
        LRs: ``vgic_sort_ap_list``; then each irq under its lock whose oracle is this vCPU goes
        into the next LR; LRs full with more on the list: underflow (``GICH_HCR.UIE``)."""
        assert_held(self.s.vcpus[vcpu].ap_list_lock)
        if self.compute_ap_list_depth(vcpu) > self.nr_lrs:
            self.vgic_sort_ap_list(vcpu)
        self.fill_lrs(vcpu)

    def fill_lrs(self, vcpu: int) -> None:
        """The loop of ``vgic_flush_lr_state`` (vgic.c, 4.11): from the head, each irq under its
        lock whose oracle is this vCPU goes into the next LR (``vgic_populate_lr``); LRs full
        with more on the list: ``vgic_set_underflow``. Needs the ap_list lock."""
        vc = self.s.vcpus[vcpu]
        count = 0
        for i in self.ap_walk(vcpu):
            irq = self.s.spis[i]
            spin_lock(irq.irq_lock)
            if self.vgic_target_oracle(irq) == vcpu:
                self.vgic_populate_lr(vcpu, i, count)
                count += 1
            spin_unlock(irq.irq_lock)
            if count == self.nr_lrs:
                if irq.ap_next != -1:
                    vc.underflow = 1  # vgic_set_underflow
                break
        vc.used_lrs = count

    def vgic_sync_from_lrs(self, vcpu: int) -> None:
        """``vgic_sync_from_lrs(vcpu)`` (vgic.c, 4.11), at every exit
        (``enter_hypervisor_head``): an empty list returns; else fold, then prune (timed: the
        DoS measurement)."""
        if self.s.vcpus[vcpu].ap_head == -1:
            return
        self.vgic_fold_lr_state(vcpu)
        self.timed_prune(vcpu)

    def vgic_sync_to_lrs(self, vcpu: int) -> None:
        """``vgic_sync_to_lrs()`` (vgic.c, 4.11), in ``leave_hypervisor_tail`` with interrupts
        off (``ASSERT(!local_irq_is_enabled())``): an empty list returns; else the ap_list lock
        (plain: interrupts are off) around ``vgic_flush_lr_state`` (timed, with the list's length:
        the DoS measurement; an empty list's entry counts as length 0)."""
        vc = self.s.vcpus[vcpu]
        vc.entries += 1
        if vc.ap_head == -1:
            vc.ap_len_hist[0] += 1
            return
        if not self.cpu.masked:
            self.cpu.finding("invariant:irqs-off", "BUG: vgic_sync_to_lrs with interrupts enabled",
                             message="ASSERT(!local_irq_is_enabled()) failed")
        spin_lock(vc.ap_list_lock)
        self.timed_flush(vcpu)
        spin_unlock(vc.ap_list_lock)

    # -- guest MMIO (vgic-mmio.c, vgic-mmio-v2.c, 4.11) ---------------------------------------------
    def vgic_mmio_write_senable(self, intid: int) -> None:
        """``vgic_mmio_write_senable`` (vgic-mmio.c, 4.11), one bit: under the irq lock
        (irqsave), an enabled IRQ is skipped; else ``enabled = true``,
        ``vgic_queue_irq_unlock``."""
        irq = self.vgic_get_irq(intid)
        flags = self.irq_lock_task(irq)
        if irq.enabled:
            self.unlock_restore(irq.irq_lock, flags)
            return
        irq.enabled = 1
        self.trace("isenabler", intid, self.vid)
        self.note_liveness(irq)
        self.queue_noted(irq, flags)
        self.vgic_put_irq(irq)

    def vgic_mmio_write_cenable(self, intid: int) -> None:
        """``vgic_mmio_write_cenable`` (vgic-mmio.c, 4.11), one bit: under the irq lock
        (irqsave), ``enabled = false``; the IRQ stays on its list until pruned."""
        irq = self.vgic_get_irq(intid)
        flags = self.irq_lock_task(irq)
        if irq.enabled:
            irq.enabled = 0
            self.trace("icenabler", intid, self.vid)
            self.note_liveness(irq)
        self.unlock_restore(irq.irq_lock, flags)
        self.vgic_put_irq(irq)

    def vgic_mmio_write_spending(self, intid: int) -> None:
        """``vgic_mmio_write_spending`` (vgic-mmio.c, 4.11), one bit: under the irq lock
        (irqsave), ``pending_latch = true``; ``vgic_queue_irq_unlock``."""
        irq = self.vgic_get_irq(intid)
        flags = self.irq_lock_task(irq)
        irq.pending_latch = 1
        self.trace("ispendr", intid, self.vid)
        self.note_liveness(irq)
        self.queue_noted(irq, flags)
        self.vgic_put_irq(irq)

    def vgic_mmio_write_cpending(self, intid: int) -> None:
        """``vgic_mmio_write_cpending`` (vgic-mmio.c, 4.11), one bit: under the irq lock
        (irqsave), ``pending_latch = false``."""
        irq = self.vgic_get_irq(intid)
        flags = self.irq_lock_task(irq)
        irq.pending_latch = 0
        self.trace("icpendr", intid, self.vid)
        self.note_liveness(irq)
        self.unlock_restore(irq.irq_lock, flags)
        self.vgic_put_irq(irq)

    def vgic_mmio_write_target(self, intid: int, target: int) -> None:
        """``vgic_mmio_write_target`` (vgic-mmio-v2.c, 4.11), one byte: under the irq lock
        (irqsave), ``irq->targets`` and ``irq->target_vcpu`` (the lowest set bit's vCPU).
        Nobody is kicked; the IRQ stays on its list until that vCPU prunes it."""
        irq = self.vgic_get_irq(intid)
        flags = self.irq_lock_task(irq)
        old = irq.target_vcpu
        irq.targets = 1 << target
        irq.target_vcpu = target
        if irq.vcpu != NO_VCPU and old != target:
            irq.moved = 2  # retargeted while it waits on a list: nobody kicks (4.11)
        self.s.retargets += 1
        self.trace("itargetsr", intid, old, target)
        self.unlock_restore(irq.irq_lock, flags)
        self.vgic_put_irq(irq)

    # -- the guest's view ----------------------------------------------------------------------------
    @staticmethod
    def pending_for_guest(irq: Any) -> bool:
        return irq_is_pending(irq)
