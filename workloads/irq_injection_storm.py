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
still queueing (inside ``vgic_queue_irq_unlock``, its kick not yet sent) is not waited for,
and one whose ``irq_lock`` is held is not reported while it is (a CPU is changing it: an
injector between setting it pending and queueing it): its injector may be preempted by the
OS or the controlled scheduler.

The DoS question (Julien Grall's, unmitigated upstream): ``--guest malicious`` makes every
vCPU's guest keep its IRQs pending and never acknowledge them: it reads no GICV_IAR (so no
EOI either), and its traps are ISPENDR and ISENABLER writes and ITARGETSR writes that route
SPIs to vCPU 0, so vCPU 0's ap_list grows towards ``--spis`` (the bound Andre gives: the
number of SPIs). The device raises level lines that only its own toggles lower: with many
SPIs even a benign guest's lists are long (a storm), unless ``--level-service 1`` has a
benign guest's handler service the device before its EOI (the line falls), as a driver
does; the DoS benchmark sets it for every run. ``--bystander-us U`` puts a benign vCPU of
another domain on pCPU 0 beside vCPU 0 (defined below). Measured in the worker processes,
into the arena (``_measure``): per vCPU, the ap_list's length at each guest entry,
``vgic_flush_lr_state``'s and ``vgic_prune_ap_list``'s times, and the vCPU's own time (its
steps, not idle in WFI, the model's liveness check excluded); per pCPU the latency of the device's physical IRQs (the
device's raise to the handler's entry: a handler waits while the pCPU has interrupts off, as
in ``vgic_sync_to_lrs``). The summary's ``dos`` table (summary.json ``model.dos``) shows them;
``benchmarks/dos.py`` compares variants.

The bystander (``--bystander-us U``, pCPU 0 only): the pCPU's scheduler alternates one step
of vCPU 0 and one slice of the bystander, which runs its guest for ``U`` microseconds
(interrupts on); a step is not preemptible (Xen does not preempt its own code, and
``vgic_sync_to_lrs`` runs with interrupts off). A blocked vCPU 0 gives its step to the
bystander (no idle wait). The bystander's *wait* before a slice is the step of vCPU 0 it
waited for (that step's time on the pCPU, the model's liveness check excluded; the harness's
own time between two operations is not counted). Its *share* of pCPU 0 is its slices' time
over its slices' and its waits' (the pCPU's time without the harness's): its throughput,
U / (U + the mean step of vCPU 0). Compare a malicious run with a benign one. (Its slices
per second over pCPU 0's span are reported too; they include the harness's time, which
differs between the two guests: the liveness check is cheap while a guest's LRs are full.)

Refcounts: Xen 4.11's ``vgic_put_irq`` returns at once for SPIs (``intid < VGIC_MIN_LPI``),
so an SPI's refcount is not modelled (LPIs, seed 004, will bring it, on the heap).

    stress run --workload irq-injection-storm
    stress run --workload irq-injection-storm --variant unblock-only --schedule pct
    stress run --workload irq-injection-storm --variant upstream --duration 5m --vcpus 3
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shm_model.arena import W_IRQS_DEFERRED
from shm_model.xen.new_vgic import DESIGNS, EVENTS, KEY_EVENTS, NewVgicWorld
from shm_model.xen.new_vgic.common import (BLOCKED, EVENT_CHECK, EXIT_KICK, EXIT_TRAP, EXIT_UNDERFLOW, EXIT_WFI,
                                           IN_GUEST, IN_HYP, NO_VCPU, SPI_BASE, STATE_NAMES, VGIC_CONFIG_LEVEL,
                                           VGIC_MAX_SPIS, hist_bucket, hist_quantile, irq_is_pending, lr_valid)
from stress.workload import (Option, Role, SummaryTable, Variant, Violation, Workload, WorkloadError, invariant, isr,
                             op)

THREAD = "xen-devel Feb 2018 '[RFC,22/49] ARM: new VGIC: Implement virtual IRQ injection'"
GUESTS = ("benign", "malicious")


@dataclass
class Choice(Option):
    """An option that takes one of a few words."""

    choices: tuple[str, ...] = ()

    def parse(self, name: str, text: str) -> str:
        if text not in self.choices:
            raise WorkloadError(f"--{name} takes {' or '.join(self.choices)}, not {text!r}")
        return text

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
        "spis": Option(8, "virtual SPIs (even INTIDs edge, odd level)", min=2, max=VGIC_MAX_SPIS),
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
        "guest": Choice("benign", "benign: the guest acknowledges and EOIs its IRQs; malicious: it keeps them "
                        "pending, never acknowledges them, and routes SPIs to vCPU 0 (the DoS question)",
                        choices=GUESTS),
        "level-service": Option(0, "1: a benign guest's handler services its device before the EOI, which lowers "
                                "a level line (the emulated device's vgic_inject_irq level 0); 0: level lines fall "
                                "only when the device toggles them (an interrupt storm)", min=0, max=1),
        "bystander-us": Option(0.0, "a benign vCPU of another domain sharing pCPU 0: the slice it runs between two "
                               "steps of vCPU 0, microseconds (0: none)", min=0, max=10**5),
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
        Variant("sorted-insert", expect="clean", known=RETARGET,
                provenance=f"inferred: a DoS mitigation from {THREAD}: Julien Grall (12 Feb 2018) 'I was expecting the "
                           "list to be sorted here' and 'A guest could be nasty and make that list quite big by make "
                           "IRQs pending but never \"active\" them'; Andre Przywara (27 Feb 2018), mitigation 3: "
                           "'Switch to sort-on-insertion ... to mitigate DOS attacks from the guest'. No patch was "
                           "posted; upstream (4.11 to master) is unmitigated",
                doc="vgic_queue_irq_unlock and the prune's migration insert in vgic_irq_cmp's order (each entry "
                    "passed read under its irq lock); prune keeps active IRQs at the head; vgic_flush_lr_state "
                    "neither counts nor sorts and stops when the LRs are full"),
        Variant("capped-flush", expect="clean", known=RETARGET,
                provenance=f"inferred: a DoS mitigation from {THREAD}: Julien Grall (12 Feb 2018) 'You compute the "
                           "size of ap list in vgic_flush_lr_state() and take lock on every IRQ one by one'; Andre "
                           "Przywara (27 Feb 2018), mitigation 1: 'Try to avoid iterating the whole list while "
                           "checking whether it needs to be sorted'; PROTOCOLS.md section 003 ('stop walking after "
                           "the LRs are full'). No patch was posted; upstream (4.11 to master) is unmitigated",
                doc="vgic_flush_lr_state neither counts (compute_ap_list_depth) nor sorts (vgic_sort_ap_list) the "
                    "list: LRs filled from the head, the walk ends when they are full; prune keeps active IRQs at "
                    "the head; pending IRQs beyond the LRs come in arrival order, not by priority"),
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
                "ISRs that interrupted an irqsave section": sum(v.isr_in_irqsave for v in vs),
                "dos": self.dos_table(s)}

    def dos_table(self, s) -> SummaryTable:
        """The DoS measurement (summary.json ``model.dos``; see the module docstring). Times in
        µs of the model's clock (``clock``: ``monotonic`` in free mode, ``virtual`` in controlled
        mode, where they count scheduler steps, not speed). Keys besides the printed table:

        - ``guest``: ``benign`` or ``malicious``; ``clock``;
        - ``vcpus``: one object per vCPU: ``vcpu``, ``entries`` (guest entries),
          ``ap_list_len`` {``p50``, ``p99``, ``max``} (at guest entries, an empty list as 0),
          ``flush_us`` and ``prune_us`` {``n``, ``p50``, ``p99``, ``max``, ``total``}
          (``vgic_flush_lr_state``, ``vgic_prune_ap_list``), ``vcpu_us`` (the vCPU's time: its
          steps, not idle in WFI, the liveness check excluded), ``flush_share`` (``flush_us.total
          / vcpu_us``, a fraction), ``span_us`` (first to last step of its pCPU);
        - ``bystander``: ``null``, or {``pcpu``: 0, ``slice_us``, ``slices``, ``slices_per_s``
          (over pCPU 0's span), ``pcpu_share`` (its slices' time over its slices' and waits'),
          ``wait_us`` {``n``, ``p50``, ``p99``, ``max``, ``total``} (the vCPU 0 step before each
          slice)};
        - ``irq_latency``: one object per pCPU that handled a measured device IRQ: ``pcpu``,
          ``irq_latency_us`` {``n``, ``p50``, ``p99``, ``max``, ``total``} (raise to handler).

        Quantiles are nearest-rank from log-linear histograms (a bucket's middle: within 1/16 of
        the value, and never above the maximum, which is exact)."""
        clock = "virtual" if s.clock_virtual else "monotonic"
        guest = getattr(self.opts, "guest", "benign")

        def dist(hist, n: int, total_ns: int, max_ns: int) -> dict:
            counts = list(hist)

            def q(p: float) -> float | None:  # a bucket's middle, never above the exact maximum
                x = hist_quantile(counts, p)
                return None if x is None else round(min(x, max_ns) / 1e3, 2)

            return {"n": n, "p50": q(0.5), "p99": q(0.99), "max": round(max_ns / 1e3, 2),
                    "total": round(total_ns / 1e3, 1)}

        vcpus, rows, lat = [], [], []
        for i, v in enumerate(s.vcpus):
            lens = list(v.ap_len_hist)
            top = max((n for n, c in enumerate(lens) if c), default=0)
            flush = dist(v.flush_hist, v.flushes, v.flush_ns, v.flush_max_ns)
            prune = dist(v.prune_hist, v.prunes, v.prune_ns, v.prune_max_ns)
            share = v.flush_ns / v.vcpu_ns if v.vcpu_ns else None
            p50, p99 = hist_quantile(lens, 0.5, exact=True), hist_quantile(lens, 0.99, exact=True)
            d = {"vcpu": i, "entries": v.entries,
                 "ap_list_len": {"p50": None if p50 is None else int(p50), "p99": None if p99 is None else int(p99),
                                 "max": top},
                 "flush_us": flush, "prune_us": prune, "vcpu_us": round(v.vcpu_ns / 1e3, 1),
                 "flush_share": None if share is None else round(share, 4),
                 "span_us": round(max(0, v.steps_t1 - v.steps_t0) / 1e3, 1)}
            vcpus.append(d)
            rows.append([f"vcpu{i}", v.entries, d["ap_list_len"]["p50"], d["ap_list_len"]["p99"], top, flush["p50"],
                         flush["p99"], flush["max"], None if share is None else round(100 * share, 1), prune["p50"],
                         prune["p99"]])
            if v.irqlat_n:
                lat.append({"pcpu": i, "irq_latency_us": dist(v.irqlat_hist, v.irqlat_n, v.irqlat_ns,
                                                              v.irqlat_max_ns)})
        v0 = s.vcpus[0]
        byst = None
        notes = []
        if v0.byst_slices:
            span = max(1, v0.steps_t1 - v0.steps_t0)
            n = v0.byst_slices
            byst = {"pcpu": 0, "slice_us": getattr(self.opts, "bystander-us", 0.0), "slices": n,
                    "slices_per_s": round(n / (span / 1e9), 1),
                    "pcpu_share": round(v0.byst_ns / max(1, v0.byst_ns + v0.byst_wait_ns), 4),
                    "wait_us": dist(v0.byst_wait_hist, n, v0.byst_wait_ns, v0.byst_wait_max_ns)}
            w = byst["wait_us"]
            notes.append(f"bystander on pcpu0 ({byst['slice_us']:g} µs slices): {n} slices, "
                         f"{byst['slices_per_s']:,.0f}/s, {100 * byst['pcpu_share']:.1f}% of the pCPU; its wait for "
                         f"the pCPU mean {w['total'] / max(1, n):.1f} µs, p50 {w['p50']} µs, p99 {w['p99']} µs, "
                         f"max {w['max']} µs")
        for x in lat:
            d = x["irq_latency_us"]
            notes.append(f"physical IRQ latency at pcpu{x['pcpu']} (raise to handler, {d['n']} IRQs): "
                         f"p50 {d['p50']} µs, p99 {d['p99']} µs, max {d['max']} µs")
        return SummaryTable(
            f"DoS measurement ({guest} guest; µs of the {clock} clock)",
            ["vcpu", "entries", "ap_list p50", "ap_list p99", "ap_list max", "flush p50", "flush p99", "flush max",
             "flush % of vCPU", "prune p50", "prune p99"], rows, notes,
            guest=guest, clock=clock, vcpus=vcpus, bystander=byst, irq_latency=lat)

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
            self.track: dict[int, tuple[int, int, bool]] = {}
            self.last_deferred = 0
            self.malicious = o["guest"] == "malicious"
            self.service = bool(o["level-service"])
            self.byst_s = o["bystander-us"] / 1e6 if self.index == 0 else 0.0
            self.check_ns = 0  # the liveness check's time in this step (not the vCPU's)

        # -- one step -------------------------------------------------------------------------------
        @op()
        def vcpu_run(self, s):
            """One step of the vCPU: enter the guest, a guest step, an exit, or idle in WFI; then,
            on pCPU 0 with ``--bystander-us``, one slice of the bystander. The step is timed (the
            vCPU's time, for the DoS table)."""
            v = self.v
            self.m.irqsave_depth = 0  # between operations no section is open (a Panic may have left one counted)
            clock = self.cpu.clock_ns
            now = clock()
            if not v.steps_t0:
                v.steps_t0 = now
                s.clock_virtual = int(self.cpu.sched is not None)
            self.check_ns = 0
            idle = self.step(s, now)
            t1 = clock()
            took = max(0, t1 - now - self.check_ns)
            if not idle:
                v.vcpu_ns += took
            v.steps_t1 = t1
            if self.byst_s:
                self.bystander(v, t1, took)

        def bystander(self, v, now: int, waited: int) -> None:
            """One slice of the benign vCPU that shares pCPU 0 (see the module docstring): it
            waited for vCPU 0's step (``waited`` ns), then its guest runs for ``--bystander-us``,
            interrupts on."""
            v.byst_wait_ns += waited
            if waited > v.byst_wait_max_ns:
                v.byst_wait_max_ns = waited
            v.byst_wait_hist[hist_bucket(waited)] += 1
            self.cpu.delay(self.byst_s, spin=True)
            end = self.cpu.clock_ns()
            v.byst_slices += 1
            v.byst_ns += end - now
            v.steps_t1 = end

        def step(self, s, now: int) -> bool:
            """One step of the vCPU; True if it was idle in WFI (the pCPU waited, or ran the
            bystander)."""
            v, m = self.v, self.m
            st = v.state
            if st == BLOCKED:
                self.steps += 1
                if not v.blocked:
                    v.state = IN_HYP
                    self.trace("wake", self.index, 1)
                    return False
                if now >= self.wake_at:  # the vtimer fires: vcpu_unblock
                    s.vtimer_wakes += 1
                    m.vcpu_unblock(self.index)
                    v.state = IN_HYP
                    self.trace("wake", self.index, 2)
                    return False
                self.liveness(s, now)
                if not self.byst_s:
                    self.cpu.delay(0.00005)  # the pCPU idles; interrupts are taken
                return True
            if st == IN_HYP:
                flags = m.irq_save()  # leave_hypervisor_tail: local_irq_disable()
                m.vgic_sync_to_lrs(self.index)
                v.state = IN_GUEST
                self.trace("enter", self.index, v.used_lrs)
                m.irq_restore(flags)  # (the ERET; an IPI held pending fires now)
                if not self.deadline:
                    self.deadline = now + int(self.random.random() * self.run_ns)
                return False
            # in the guest
            self.steps += 1
            if v.need_exit:
                self.exit(EXIT_KICK)
                return False
            valid = sum(1 for lr in range(self.nr_lrs) if lr_valid(v, lr))
            if v.underflow and valid <= 1:  # the maintenance interrupt
                self.exit(EXIT_UNDERFLOW)
                return False
            self.guest_step(s, now)
            self.liveness(s, now)
            if now >= self.deadline:
                self.deadline = 0
                self.trap(s)
            return False

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
            with none active, acknowledge the first pending LR (GICV_IAR). A malicious guest does
            neither: its IRQs stay pending in the LRs and on the ap_list."""
            if self.malicious:
                return
            v = self.v
            active = -1
            for lr in range(self.nr_lrs):
                if v.lr_active[lr]:
                    active = lr
                    break
            if active >= 0:
                if now >= self.eoi_at[active]:
                    intid = v.lr_intid[active]
                    if self.service and s.spis[intid - SPI_BASE].config == VGIC_CONFIG_LEVEL:
                        # --level-service: the handler has serviced its device (a write to the
                        # emulated device, which lowers its line) before the EOI
                        self.m.vgic_inject_irq(intid, 0)
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
            """The guest's own trap: a distributor write or WFI. A malicious guest makes IRQs
            pending (ISPENDR), enables them (ISENABLER) and routes them to vCPU 0 (ITARGETSR),
            never WFI, never ICPENDR or ICENABLER."""
            m, r = self.m, self.random
            x = r.random()
            if self.malicious:
                self.exit(EXIT_TRAP)
                intid = SPI_BASE + r.randrange(len(s.spis))
                s.mmio += 1
                if x < 0.5:
                    m.vgic_mmio_write_spending(intid)
                elif x < 0.8:
                    m.vgic_mmio_write_target(intid, 0)
                else:
                    m.vgic_mmio_write_senable(intid)
                return
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
            and in this vCPU's steps. (Its time is the model's check, not the vCPU's: excluded from
            the DoS table's vCPU time.)"""
            t0 = self.cpu.clock_ns()
            try:
                self._liveness(s, now)
            finally:
                self.check_ns += self.cpu.clock_ns() - t0

        def _liveness(self, s, now: int) -> None:
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
                if irq.irq_lock.is_locked():
                    continue  # a CPU is changing it now (e.g. an injector between setting pending and
                    # vgic_queue_irq_unlock, preempted by the OS): not yet due, and its wait goes on
                t = self.track.get(i)
                # the known no-kick gap of 4.11 (retarget-kick): on another vCPU's list, or moved or
                # retargeted here without a kick; when it ends (a kick was sent for it: the
                # already-queued path clears ``moved``), the wait counts from there, so a kick
                # still in flight (a loaded host delivers the IPI late) is not a lost wake-up
                gap = irq.vcpu not in (me, NO_VCPU) or bool(irq.moved)
                if t is None or (t[2] and not gap):
                    self.track[i] = (now, self.steps, gap)
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
                spi = s.spis[irq - SPI_BASE]
                t = spi.raised_ns
                if t:  # the device's raise to this handler (the DoS table's IRQ latency)
                    spi.raised_ns = 0
                    lat = max(0, self.cpu.clock_ns() - t)
                    v.irqlat_n += 1
                    v.irqlat_ns += lat
                    if lat > v.irqlat_max_ns:
                        v.irqlat_max_ns = lat
                    v.irqlat_hist[hist_bucket(lat)] += 1
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
            spi = s.spis[intid - SPI_BASE]
            if not spi.raised_ns:  # stamped unless a raise of it is still unhandled (then not measured)
                spi.raised_ns = max(1, self.cpu.clock_ns())
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

    @invariant("ap-list-order")
    def ap_list_order(self, s):
        """The mitigations' claim that makes their flush correct without ``vgic_sort_ap_list``:
        after each prune (every safe point), a vCPU's ap_list has its active IRQs first
        (``capped-flush``, ``sorted-insert``), and the inactive ones by priority
        (``sorted-insert``). Other variants sort at flush time: not checked."""
        if self.variant not in ("capped-flush", "sorted-insert"):
            return None
        by_prio = self.variant == "sorted-insert"
        bad: list[str] = []
        subject = None
        for v, vc in enumerate(s.vcpus):
            i, count, seen_inactive, last = vc.ap_head, 0, False, -1
            while i != -1 and count <= len(s.spis):
                count += 1
                irq = s.spis[i]
                if irq.active and seen_inactive:
                    bad.append(f"irq {irq.intid}: active behind an inactive IRQ on vcpu{v}'s ap_list")
                    subject = subject or irq.intid
                elif not irq.active:
                    if by_prio and seen_inactive and irq.priority < last:
                        bad.append(f"irq {irq.intid}: priority {irq.priority:#x} behind {last:#x} on vcpu{v}'s "
                                   "ap_list")
                        subject = subject or irq.intid
                    seen_inactive, last = True, irq.priority
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

