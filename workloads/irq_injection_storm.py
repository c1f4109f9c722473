"""irq-injection-storm: the new VGIC's virtual IRQ injection (xen-devel, Feb 2018, "[RFC,22/49]
ARM: new VGIC: Implement virtual IRQ injection"; Xen 4.11's xen/arch/arm/vgic/), the RFC as
posted, and the variants PROTOCOLS.md section 003 infers.

vCPU workers (one per vCPU, vCPU ``v`` pinned on pCPU ``v``) run one step of their vCPU per
operation (``vcpu_run``): in the hypervisor, ``vgic_sync_to_lrs`` with interrupts off and
enter the guest; in the guest, acknowledge or EOI one list register, or exit: on a kick (the
event-check IPI, or any physical interrupt taken in the guest), on LR underflow, or at the
guest's own trap (a distributor MMIO write: ISENABLER, ICENABLER, ITARGETSR, ISPENDR,
ICPENDR; or WFI, which blocks until a kick or the guest's vtimer); every exit runs
``vgic_sync_from_lrs`` (fold, prune). The guest makes no exit of its own between its traps
(``--guest-run-ms``), so a pending IRQ reaches a spinning guest only through a kick. A
device raises physical interrupts at the first ``--irq-pcpus`` pCPUs (a real signal; the
handler runs ``vgic_inject_irq`` in interrupt context) and injects from task context as an
emulated device would. The model, one module per design, is ``shm_model/xen/new_vgic/``.

Liveness: each vCPU watches the IRQs that target it; an enabled, pending IRQ that is in no
list register while its target runs in the guest with at most one LR in use (a guest busy with
more is served by priority, the underflow interrupt bringing the rest) or is blocked, for ``--age-ms`` of the
model's clock and ``--age-steps`` of the target's own steps (so an OS that deschedules the
worker does not count), is a ``lost-wakeup``, with the IRQ's history. An IRQ that some CPU is
still queueing (inside ``vgic_queue_irq_unlock``, its kick not yet sent) is not waited for:
its injector may be preempted by the OS or the controlled scheduler.

Refcounts: Xen 4.11's ``vgic_put_irq`` returns at once for SPIs (``intid < VGIC_MIN_LPI``),
so an SPI's refcount is not modelled (LPIs, seed 004, will bring it, on the heap).

    stress run --workload irq-injection-storm
    stress run --workload irq-injection-storm --variant unblock-only --schedule pct
    stress run --workload irq-injection-storm --variant upstream --duration 5m --vcpus 3
"""

from __future__ import annotations

import os

from shm_model.arena import W_IRQS_DEFERRED
from shm_model.xen.new_vgic import DESIGNS, EVENTS, KEY_EVENTS, NewVgicWorld
from shm_model.xen.new_vgic.common import (BLOCKED, EVENT_CHECK, EXIT_KICK, EXIT_TRAP, EXIT_UNDERFLOW, EXIT_WFI,
                                           IN_GUEST, IN_HYP, NO_VCPU, SPI_BASE, STATE_NAMES, VGIC_CONFIG_LEVEL,
                                           irq_is_pending, lr_valid)
from stress.workload import Option, Role, Variant, Violation, Workload, invariant, isr, op

THREAD = "xen-devel Feb 2018 '[RFC,22/49] ARM: new VGIC: Implement virtual IRQ injection'"

#: found by stress in Xen 4.11 (every variant runs its code): reported, recorded, not decisive
RETARGET = {
    "invariant:retarget-kick":
        "found by stress in Xen 4.11's new VGIC (every variant): vgic_prune_ap_list moves a pending IRQ onto "
        "another vCPU's ap_list without vcpu_kick, and vgic_mmio_write_target retargets an IRQ waiting on the old "
        "vCPU's list without kicking anyone; a target that spins in the guest (or is blocked in WFI) sees it only "
        "at its next exit for another reason. KVM's vgic_prune_ap_list kicks the new target "
        "(target_vcpu_needs_kick); Xen's (4.11 to master) does not",
}


class IrqInjectionStorm(Workload):
    """New VGIC: vgic_inject_irq from ISRs and an emulated device, ap_list moves, guest MMIO,
    WFI, list registers."""

    name = "irq-injection-storm"
    state = NewVgicWorld
    duration = 10.0
    check_interval = 0.02
    options = {
        "vcpus": Option(2, "guest vCPUs, one worker (pCPU) each", min=2, max=16),
        "spis": Option(8, "virtual SPIs (even INTIDs edge, odd level)", min=2, max=64),
        "lrs": Option(4, "list registers per vCPU", min=1, max=16),
        "eoi-us": Option(1000, "longest time the guest's handler runs before its EOI, microseconds", min=0,
                         max=10**6),
        "guest-run-ms": Option(50, "longest stretch the guest spins between two traps of its own (MMIO, WFI), ms",
                               min=0, max=10**5),
        "wfi-ms": Option(100, "the guest's vtimer: longest time a vCPU stays blocked in WFI, ms", min=1,
                         max=10**5),
        "age-ms": Option(5, "lost-wakeup: model time an enabled pending IRQ may wait undelivered, ms", min=0.1,
                         max=10**5),
        "age-steps": Option(200, "lost-wakeup: ... and steps its target vCPU must have run meanwhile", min=1,
                            max=10**7),
        "irq-pcpus": Option(1, "pCPUs the device's physical interrupts are routed to (0 .. n-1)", min=1, max=16),
    }
    variants = [
        Variant("upstream", expect="clean", known=RETARGET,
                provenance="Xen 4.11 (RELEASE-4.11.0) xen/arch/arm/vgic/vgic.c, vgic-mmio.c, vgic-mmio-v2.c; "
                           "vcpu_kick (arch/arm/domain.c), vcpu_unblock (common/schedule.c)",
                doc="vcpu_kick on both paths of vgic_queue_irq_unlock, the re-check under both locks, ap_list locks "
                    "in vcpu_id order, _irqsave wherever an ISR may take the lock"),
        Variant("unblock-only", expect="lost-wakeup", known=RETARGET,
                provenance=f"{THREAD}: the RFC as posted (9 Feb 2018); Julien Grall's review (12 Feb 2018): "
                           "'vcpu_unblock will only \"unblock\" a vCPU that is blocked. It won't notify a running "
                           "vCPU'",
                doc="the already-queued path of vgic_queue_irq_unlock calls vcpu_unblock only: an IRQ pending again "
                    "while on the list of a vCPU spinning in the guest waits for its next exit"),
        Variant("no-recheck", expect="invariant:one-ap-list",
                known={**RETARGET, "lost-wakeup": "a consequence of the corrupted list (free runs, tens of ms after "
                       "the one-ap-list report, seeds 3 and 19): an IRQ added twice cuts the entries behind its first "
                       "place out of the walk, so vgic_flush_lr_state never puts them in an LR"},
                provenance="PROTOCOLS.md section 003 (inferred): Xen 4.11's vgic_queue_irq_unlock without step 4 "
                           "('Did something change behind our backs?')",
                doc="the oracle's answer from before the irq lock was dropped is trusted after the ap_list lock is "
                    "taken: an IRQ queued meanwhile by another CPU is added again (two lists, or twice on one)"),
        Variant("unordered-ap-list-locks", expect=["lock-order-inversion", "deadlock"], stop="all", known=RETARGET,
                provenance="PROTOCOLS.md section 003 (inferred): Xen 4.11's vgic_prune_ap_list taking its own "
                           "ap_list lock, then the target's (the comment at the top of vgic.c: 'always take the "
                           "lowest numbered VCPU's ap_list_lock first')",
                doc="two vCPUs moving IRQs to each other take ap_list_lock[0] -> [1] and [1] -> [0]"),
        Variant("irq-unsafe", expect=["inconsistent-lock-state", "deadlock"], stop="all",
                known={**RETARGET, "irq-lock-inversion": "the same misuse seen from an irq-safe lock: "
                       "ap_list_lock (taken in interrupt context) is held while &irq->irq_lock, now also taken with "
                       "interrupts enabled, is acquired"},
                provenance="PROTOCOLS.md section 003 (inferred): Xen 4.11 with plain spin_lock(&irq->irq_lock) in "
                           "task context (the guest's MMIO handlers, the re-check's retry), against the comment at "
                           "the top of vgic.c ('we have to use the spin_lock_irqsave/spin_unlock_irqrestore versions "
                           "...')",
                doc="irq_lock is taken in interrupt context (vgic_inject_irq) and with interrupts enabled: lockdep's "
                    "inconsistent lock state, and the injection that interrupts its own pCPU's MMIO handler on the "
                    "same IRQ spins on the lock its task holds"),
    ]
    events = EVENTS
    key_events = KEY_EVENTS
    #: inline checks of the model
    checks = ("one-ap-list", "retarget-kick", "irqs-off", "isr-in-target", "irqsave-interrupted")

    def setup(self, s):
        """Every SPI enabled, routed to vCPU i % vcpus, priorities in four levels."""
        n = len(s.vcpus)
        for i, irq in enumerate(s.spis):
            irq.intid = SPI_BASE + i
            irq.config = VGIC_CONFIG_LEVEL if (SPI_BASE + i) % 2 else 0
            irq.enabled = 1
            irq.priority = 0xa0 + 8 * (i % 4)
            irq.target_vcpu = i % n
            irq.targets = 1 << (i % n)

    def summary(self, s):
        vs = list(s.vcpus)
        return {"injections": s.injections, "from ISRs": s.injections_isr, "ignored (not valid)": s.injections_ignored,
                "queued": s.queued, "re-check retries": s.queue_retries, "kicks": s.kicks, "event-check IPIs": s.ipis,
                "unblock only (RFC)": s.unblock_only, "prune moves": s.prune_moves, "prune drops": s.prune_drops,
                "LR fills": s.lr_fills, "guest acks": s.acks, "guest EOIs": s.eois, "MMIO writes": s.mmio,
                "ITARGETSR": s.retargets, "WFI blocks": s.wfi_blocks, "vtimer wake-ups": s.vtimer_wakes,
                "ap_list sorts": s.sorts, "exits on a kick": sum(v.exits_kick for v in vs),
                "exits on underflow": sum(v.exits_underflow for v in vs),
                "exits on a trap": sum(v.exits_trap for v in vs),
                "EOI maintenance interrupts (level)": sum(v.exits_maint for v in vs),
                "exits on WFI": sum(v.exits_wfi for v in vs),
                "ap_list length (max)": max(v.max_ap_len for v in vs),
                "physical IRQs raised": sum(v.raised for v in vs),
                "ISRs run in the target's process": sum(v.isr_spi for v in vs),
                "ISRs in another process": sum(v.isr_wrong for v in vs),
                "ISRs deferred by a masked section": sum(v.isr_deferred for v in vs),
                "ISRs that interrupted an irqsave section": sum(v.isr_in_irqsave for v in vs)}

    class vcpu(Role):
        """A pCPU running its vCPU, one step an operation (see the module docstring)."""

        count = "vcpus"

        def setup(self, s):
            o = self.options.__dict__
            self.m = DESIGNS[self.variant](s, self.cpu, self.index, self.options, self.trace)
            self.m.peers = self.peers["vcpu"]
            self.v = s.vcpus[self.index]
            self.v.pid = os.getpid()
            self.nr_lrs = self.options.lrs
            self.eoi_ns = int(o["eoi-us"] * 1000)
            self.run_ns = int(o["guest-run-ms"] * 1e6)
            self.wfi_ns = int(o["wfi-ms"] * 1e6)
            self.age_ns = int(o["age-ms"] * 1e6)
            self.age_steps = int(o["age-steps"])
            self.eoi_at = [0] * self.nr_lrs
            self.deadline = 0
            self.wake_at = 0
            self.steps = 0
            self.track: dict[int, tuple[int, int]] = {}
            self.last_deferred = 0

        # -- one step -------------------------------------------------------------------------------
        @op()
        def vcpu_run(self, s):
            """One step of the vCPU: enter the guest, a guest step, an exit, or idle in WFI."""
            v, m = self.v, self.m
            m.irqsave_depth = 0  # between operations no section is open (a Panic may have left one counted)
            now = self.cpu.clock_ns()
            st = v.state
            if st == BLOCKED:
                self.steps += 1
                if not v.blocked:
                    v.state = IN_HYP
                    self.trace("wake", self.index, 1)
                    return
                if now >= self.wake_at:  # the vtimer fires: vcpu_unblock
                    s.vtimer_wakes += 1
                    m.vcpu_unblock(self.index)
                    v.state = IN_HYP
                    self.trace("wake", self.index, 2)
                    return
                self.liveness(s, now)
                self.cpu.delay(0.00005)  # the pCPU idles; interrupts are taken
                return
            if st == IN_HYP:
                flags = m.irq_save()  # leave_hypervisor_tail: local_irq_disable()
                m.vgic_sync_to_lrs(self.index)
                v.state = IN_GUEST
                self.trace("enter", self.index, v.used_lrs)
                m.irq_restore(flags)  # (the ERET; an IPI held pending fires now)
                if not self.deadline:
                    self.deadline = now + int(self.random.random() * self.run_ns)
                return
            # in the guest
            self.steps += 1
            if v.need_exit:
                self.exit(EXIT_KICK)
                return
            valid = sum(1 for lr in range(self.nr_lrs) if lr_valid(v, lr))
            if v.underflow and valid <= 1:  # the maintenance interrupt
                self.exit(EXIT_UNDERFLOW)
                return
            self.guest_step(s, now)
            self.liveness(s, now)
            if now >= self.deadline:
                self.deadline = 0
                self.trap(s)

        def exit(self, reason: int) -> None:
            """The guest traps to Xen: ``enter_hypervisor_head`` -> ``vgic_sync_from_lrs``."""
            v = self.v
            v.state = IN_HYP
            v.need_exit = 0
            if reason == EXIT_KICK:
                v.exits_kick += 1
            elif reason == EXIT_UNDERFLOW:
                v.exits_underflow += 1
            elif reason == EXIT_TRAP:
                v.exits_trap += 1
            else:
                v.exits_wfi += 1
            self.trace("exit", self.index, reason)
            self.eoi_at = [0] * self.nr_lrs
            self.m.vgic_sync_from_lrs(self.index)

        def guest_step(self, s, now: int) -> None:
            """The guest's interrupt handling, no exit: EOI the active LR once its handler is done;
            with none active, acknowledge the first pending LR (GICV_IAR)."""
            v = self.v
            active = -1
            for lr in range(self.nr_lrs):
                if v.lr_active[lr]:
                    active = lr
                    break
            if active >= 0:
                if now >= self.eoi_at[active]:
                    intid = v.lr_intid[active]
                    v.lr_active[active] = 0  # not pending either: the LR is free (ELRSR)
                    s.eois += 1
                    self.trace("eoi", intid, self.index, active)
                    if s.spis[intid - SPI_BASE].config == VGIC_CONFIG_LEVEL:
                        # vgic_v2_populate_lr sets GICH_LR.EOI for a level IRQ: the EOI raises
                        # a maintenance interrupt, the guest exits and the line is resampled
                        v.exits_maint += 1
                        v.need_exit = 1
                return
            for lr in range(self.nr_lrs):
                if v.lr_pending[lr]:
                    v.lr_pending[lr] = 0
                    v.lr_active[lr] = 1
                    self.eoi_at[lr] = now + int(self.random.random() * self.eoi_ns)
                    s.acks += 1
                    self.trace("ack", v.lr_intid[lr], self.index, lr)
                    return

        def trap(self, s) -> None:
            """The guest's own trap: a distributor write or WFI."""
            m, r = self.m, self.random
            x = r.random()
            if x >= 0.75:
                self.exit(EXIT_WFI)
                self.wfi(s)
                return
            self.exit(EXIT_TRAP)
            intid = SPI_BASE + r.randrange(len(s.spis))
            s.mmio += 1
            if x < 0.25:
                m.vgic_mmio_write_senable(intid)
            elif x < 0.35:
                m.vgic_mmio_write_cenable(intid)
            elif x < 0.55:
                target = r.randrange(len(s.vcpus))
                m.vgic_mmio_write_target(intid, target)
            elif x < 0.65:
                m.vgic_mmio_write_spending(intid)
            else:
                m.vgic_mmio_write_cpending(intid)

        def wfi(self, s) -> None:
            """WFI: ``vcpu_block_unless_event_pending`` (the vtimer is armed)."""
            if self.m.vcpu_block_unless_event_pending(self.index):
                s.wfi_blocks += 1
                self.wake_at = self.cpu.clock_ns() + int(self.random.random() * self.wfi_ns)
                self.trace("block", self.index)

        # -- liveness -------------------------------------------------------------------------------
        def liveness(self, s, now: int) -> None:
            """An enabled pending IRQ that targets this vCPU (running in the guest with at most one
            list register in use, or blocked) and is in no list register, for the age limit in time
            and in this vCPU's steps."""
            me = self.index
            vs = s.vcpus
            nlr = self.nr_lrs
            # a guest busy with other IRQs (two or more LRs in use) is not waiting: the list is
            # longer than the LRs, and the underflow interrupt brings the rest (by priority)
            idle = sum(1 for lr in range(nlr) if lr_valid(self.v, lr)) <= 1
            busy = set(s.queueing)  # injections in flight (their kick is still to come)
            for i, irq in enumerate(s.spis):
                bad = (idle and irq.intid not in busy and irq.target_vcpu == me and irq.enabled and s.enabled
                       and irq_is_pending(irq)
                       and not any(vv.lr_intid[lr] == irq.intid and lr_valid(vv, lr) for vv in vs
                                   for lr in range(nlr)))
                if not bad:
                    self.track.pop(i, None)
                    continue
                t = self.track.get(i)
                if t is None:
                    self.track[i] = (now, self.steps)
                    continue
                if now - t[0] < self.age_ns or self.steps - t[1] < self.age_steps:
                    continue
                del self.track[i]
                self.report(s, irq, (now - t[0]) / 1e6, self.steps - t[1])

        def report(self, s, irq, ms: float, steps: int) -> None:
            me = self.index
            on = irq.vcpu
            state = STATE_NAMES[self.v.state]
            facts = (f"irq {irq.intid} (enabled, pending, target vcpu{me}) has waited {ms:.1f} ms and {steps} steps "
                     f"of vcpu{me}, {state}, in no list register; irq->vcpu = "
                     f"{'NULL' if on == NO_VCPU else f'vcpu{on}'}, active {irq.active}")
            if (on not in (me, NO_VCPU)) or irq.moved:
                why = ("it waits on vcpu%d's ap_list (retargeted by ITARGETSR; nobody kicks the new target)" % on
                       if on not in (me, NO_VCPU) else
                       "vgic_prune_ap_list moved it to this vCPU's ap_list and did not kick it" if irq.moved == 1 else
                       "ITARGETSR retargeted it while it waited on this vCPU's ap_list, not in a list register "
                       "(vgic_mmio_write_target kicks nobody)")
                self.cpu.finding("invariant:retarget-kick", "BUG: invariant retarget-kick violated: "
                                 f"irq {irq.intid} retargeted to a vCPU that is not kicked",
                                 message=f"{facts}: {why}", subject=irq.intid)
                return
            self.cpu.finding("lost-wakeup", f"BUG: lost wake-up: irq {irq.intid} pending for vcpu{me} "
                             f"({state}) is not delivered", message=facts, subject=irq.intid)

        # -- interrupts ------------------------------------------------------------------------------
        @isr
        def irq(self, s, irq):
            """A physical interrupt on this pCPU: the event-check IPI, or a device's, whose handler
            injects the virtual SPI (``vgic_inject_irq`` in interrupt context). Taken while the
            guest runs, it is an exit."""
            v, m = self.v, self.m
            if m.irqsave_depth:
                v.isr_in_irqsave += 1
                self.check(False, "irqsave-interrupted",
                           f"an interrupt ran on pcpu{self.index} inside {m.irqsave_depth} irqsave section(s)")
            d = self.cpu.mv[self.cpu.ws + W_IRQS_DEFERRED]
            if d != self.last_deferred:
                self.last_deferred = d
                v.isr_deferred += 1
            if irq != EVENT_CHECK:
                v.isr_spi += 1
                if os.getpid() != v.pid or v.isr_spi > v.raised:
                    v.isr_wrong += 1
                    self.check(False, "isr-in-target", f"irq {irq} handled by pid {os.getpid()}, pcpu{self.index}'s "
                               f"process is {v.pid}; raised here {v.raised}, handled {v.isr_spi}")
                s.injections_isr += 1
                level = 1
                m.vgic_inject_irq(irq, level)
            if v.state == IN_GUEST:
                v.need_exit = 1

    class device(Role):
        """A device: physical interrupts at the first ``--irq-pcpus`` pCPUs (their handlers inject),
        and injections from task context (an emulated device: edge pulses, level lines raised
        and lowered)."""

        count = 1

        def setup(self, s):
            self.m = DESIGNS[self.variant](s, self.cpu, None, self.options, self.trace)
            self.m.peers = self.peers["vcpu"]
            self.n = min(getattr(self.options, "irq-pcpus"), len(s.vcpus))

        @op(rate=500)
        def raise_irq(self, s):
            """A physical SPI at one of the routed pCPUs."""
            intid = SPI_BASE + self.random.randrange(len(s.spis))
            p = self.random.randrange(self.n)
            s.vcpus[p].raised += 1
            self.trace("raise", intid, p)
            self.cpu.raise_irq(self.peers["vcpu"][p], intid)

        @op(rate=300)
        def emulate(self, s):
            """An emulated device's ``vgic_inject_irq`` in task context: an edge, or a level line
            toggled."""
            i = self.random.randrange(len(s.spis))
            irq = s.spis[i]
            level = 1 - irq.line_level if irq.config == VGIC_CONFIG_LEVEL else 1
            self.m.vgic_inject_irq(SPI_BASE + i, level)

    # -- invariants ---------------------------------------------------------------------------------
    @invariant("one-ap-list")
    def one_ap_list(self, s):
        """Every IRQ is on at most one ap_list, once, and ``irq->vcpu`` names that list; every
        list's length is its ``ap_len`` and its links are consistent."""
        seen: dict[int, int] = {}
        bad: list[str] = []
        subject = None
        n = len(s.spis)
        for v, vc in enumerate(s.vcpus):
            i, prev, count = vc.ap_head, -1, 0
            while i != -1 and count <= n:
                irq = s.spis[i]
                count += 1
                if irq.ap_prev != prev:
                    bad.append(f"irq {irq.intid}: ap_list.prev broken on vcpu{v}'s list")
                    subject = subject or irq.intid
                if i in seen:
                    bad.append(f"irq {irq.intid}: on vcpu{seen[i]}'s ap_list and again on vcpu{v}'s")
                    subject = subject or irq.intid
                seen[i] = v
                if irq.vcpu != v:
                    bad.append(f"irq {irq.intid}: on vcpu{v}'s ap_list but irq->vcpu = {irq.vcpu}")
                    subject = subject or irq.intid
                prev, i = i, irq.ap_next
            if count > n:
                bad.append(f"vcpu{v}'s ap_list has a cycle")
            elif count != vc.ap_len:
                bad.append(f"vcpu{v}'s ap_list has {count} entries but ap_len {vc.ap_len} (an entry added twice)")
        for i, irq in enumerate(s.spis):
            if irq.vcpu != NO_VCPU and i not in seen:
                bad.append(f"irq {irq.intid}: irq->vcpu = vcpu{irq.vcpu} but it is on no walkable list")
                subject = subject or irq.intid
        return Violation("; ".join(bad), subject) if bad else None

    @invariant("queued-is-live")
    def queued_is_live(self, s):
        """An IRQ on a vCPU's ap_list is live (the oracle names a vCPU, or one of that vCPU's LRs
        holds it), or it stopped being live since that vCPU's last prune, or the vCPU is in the
        guest (its LRs, not the irq, hold the state until its next exit)."""
        bad: list[str] = []
        subject = None
        for v, vc in enumerate(s.vcpus):
            if vc.state == IN_GUEST:
                continue
            i, count = vc.ap_head, 0
            while i != -1 and count <= len(s.spis):
                count += 1
                irq = s.spis[i]
                live = ((irq.active or (irq.enabled and s.enabled and irq_is_pending(irq)))
                        or any(vc.lr_intid[lr] == irq.intid and lr_valid(vc, lr) for lr in range(len(vc.lr_intid))))
                if not live and irq.unlive != vc.prune_passes:
                    bad.append(f"irq {irq.intid}: on vcpu{v}'s ap_list ({STATE_NAMES[vc.state]}), neither pending "
                               f"and enabled nor active nor in an LR, after vcpu{v}'s prune")
                    subject = subject or irq.intid
                i = irq.ap_next
        return Violation("; ".join(bad), subject) if bad else None

    @invariant("lrs-match")
    def lrs_match(self, s):
        """Every valid list register of a vCPU holds an IRQ on that vCPU's ap_list, at most once
        on that vCPU and in no other vCPU's LRs; LRs at or beyond ``used_lrs`` are empty."""
        bad: list[str] = []
        subject = None
        where: dict[int, tuple[int, int]] = {}
        for v, vc in enumerate(s.vcpus):
            for lr in range(len(vc.lr_intid)):
                intid = vc.lr_intid[lr]
                if not lr_valid(vc, lr):
                    continue
                irq = s.spis[intid - SPI_BASE]
                if lr >= vc.used_lrs:
                    bad.append(f"LR{lr} of vcpu{v} holds irq {intid} beyond used_lrs {vc.used_lrs}")
                if intid in where:
                    bad.append(f"irq {intid} in LR{where[intid][1]} of vcpu{where[intid][0]} and LR{lr} of vcpu{v}")
                    subject = subject or intid
                where[intid] = (v, lr)
                if irq.vcpu != v:
                    bad.append(f"irq {intid} in LR{lr} of vcpu{v} but irq->vcpu = {irq.vcpu}")
                    subject = subject or intid
        return Violation("; ".join(bad), subject) if bad else None

