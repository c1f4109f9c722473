"""migration-storm: the old vGIC's rank/vgic lock inversion (Xen-devel, Dec 2016, "xen/arm:
fix rank/vgic locks inversion bug"), the thread's proposals, and what Xen shipped.

vCPU workers (one per pCPU; vCPU i starts on pCPU i and stays there unless ``--move-rate``
lets the scheduler move vCPUs, each move followed by ``arch_move_irqs``) run the guest:
ITARGETSR writes that migrate SPIs between vCPUs (``migrate``, paced), ISENABLER/ICENABLER
writes that enable and disable SPIs (``isenabler``, ``icenabler``), WFI (``wfi``: the vCPU
blocks, its pCPU idles until an injection or its timer wakes it), and exits where the
hypervisor updates the list registers and the guest acknowledges and EOIs (``vcpu_run``). A device raises physical SPIs
(``inject``, paced) at the pCPU in ``desc->affinity`` unless the GIC holds them pending or
active: a real signal to that worker, whose handler runs ``do_IRQ`` in interrupt context.
The model, its locking order, the Xen functions and versions it follows and what it
simplifies are in ``shm_model/xen/old_vgic/`` (one module per design).

    stress run --workload migration-storm
    stress run --workload migration-storm --variant unlocked-target-read --duration 60s
    stress run --workload migration-storm --variant xen-4.10.0 --rate inject=20000,migrate=4000 --vcpus 4
    stress run --workload migration-storm --variant xen-4.9.0 --schedule pct --pct-depth 3 --pct-steps 64
    stress run --workload migration-storm --variant xen-4.10.0 --move-rate 2000
"""

from __future__ import annotations


from shm_model.xen.old_vgic import DESIGNS, OldVgicDomain, make_vgic, with_backports
from shm_model.xen.schedule import IDLE, init_pinned
from shm_model.xen.old_vgic.common import (_IRQ_DISABLED, _IRQ_INPROGRESS, GIC_IRQ_GUEST_ENABLED,
                                           GIC_IRQ_GUEST_MIGRATING, LR_INVALID, SPI_BASE, status_text, test_bit)
from stress.workload import Option, Role, Variant, Violation, Workload, WorkloadError, invariant, isr, op

THREAD = "xen-devel Dec 2016 'xen/arm: fix rank/vgic locks inversion bug'"

#: Races of the old vGIC itself, outside the thread's question, that stress finds in every
#: variant (shown in each run's report, recorded, never deciding the verdict).
STALE_TARGET_INJECTION = {
    "invariant:vgic-list-lock":
        "found by stress in every variant: vgic_vcpu_inject_spi reads the target, then takes that "
        "vCPU's vgic lock; a migration completing in between (stable-4.8/4.9.0/4.10.0: also the window before "
        "write_atomic(rank->vcpu)) leaves the IRQ inflight on the old target. The next "
        "vgic_migrate_irq(old = rank->vcpu) then list_del()s it from that other vCPU's lists "
        "holding only its own vgic lock: the vgic list is modified under the wrong vCPU's lock (a data "
        "race when the owner holds its lock at that moment)",
    "invariant:inflight-on-one-vcpu":
        "a consequence of the wrong-lock unlink: it runs while the owner's gic_restore_pending_irqs "
        "moves the same IRQ from lr_pending into an LR; the migration then re-injects it elsewhere and it "
        "sits in two vCPUs' LRs (in Xen: a corrupted inflight list)",
    "invariant:raise-inflight-lr":
        "a consequence of the stale target: the IRQ is inflight in an LR of vCPU A, the guest EOIed it "
        "(the GIC deactivates it at that EOI) and it fires again at the target B before A's gic_clear_lrs; "
        "vgic_vcpu_inject_irq(B) finds it inflight and gic_raise_inflight_irq calls gic_update_one_lr(B, "
        "p->lr): A's LR index read on B's pCPU (gic.c, 4.8.0-4.10.0)",
}
#: every version: the physical active state is cleared at the guest's EOI, before Xen's
#: gic_update_one_lr sees it (31bc6a93a0's window, seen from the old pCPU)
HW_IRQ_LOST = {"invariant:hw-irq-lost":
               "found by stress in every variant once the GIC's active state is modelled: the guest EOIs the IRQ "
               "(HW list register: the physical IRQ is deactivated), it fires again at desc->affinity before that "
               "vCPU's gic_clear_lrs, do_IRQ injects it (QUEUED) to the target, which finds it still inflight on the "
               "old vCPU; gic_update_one_lr then sees MIGRATING (or ENABLED cleared by ICENABLER), does not "
               "re-raise it and list_del_init()s it: the injection is dropped and the physical IRQ, acknowledged "
               "but in no LR, is never deactivated (gic.c gic_update_one_lr, 4.8.0-4.10.0)"}
#: 4.8.0 only: XSA-223 (471d9ca43c, backported to stable-4.8, in 4.9.0): gic_raise_inflight_irq
#: on a disabled inflight IRQ calls gic_update_one_lr with p->lr = GIC_INVALID_LR (or 0)
XSA_223 = {"invariant:raise-inflight-lr":
           STALE_TARGET_INJECTION["invariant:raise-inflight-lr"] + "; and XSA-223: the IRQ is inflight but "
           "disabled (in no LR, not lr_pending) and p->lr is GIC_INVALID_LR or 0 (fixed by 471d9ca43c, not in "
           "RELEASE-4.8.0)"}
#: stable-4.8, 4.9.0, 4.10.0: the target write lags the migration
AFFINITY_LAG = {"invariant:affinity-follows-target":
                "found by stress: vgic_migrate_irq sets MIGRATING and drops the old vCPU's vgic lock before "
                "vgic_store_itargetsr's write_atomic(rank->vcpu); a gic_update_one_lr that takes that lock in between "
                "reads the old target, so desc->affinity lags rank->vcpu (injection still reaches the target vCPU, "
                "from the wrong pCPU). It heals at the IRQ's next migration, at an ISENABLER write "
                "(vgic_enable_irqs -> irq_set_affinity) or when the target vCPU moves pCPU (arch_move_irqs). "
                "With vCPUs that move (--move-rate) arch_move_irqs is a second source: it reads the target "
                "(read_atomic) and v->processor without a lock and writes the affinity later, so an ITARGETSR "
                "write or an EOI's irq_set_affinity in between is overwritten"}
#: the 4.8 code every thread variant is built on: what it shows besides the thread's bug
BASE_48 = ("RELEASE-4.8.0 underneath: vgic_vcpu_inject_irq takes the rank lock in vgic_get_virq_priority, so "
           "vgic_migrate_irq's lr_pending branch self-deadlocks under vgic_store_itargetsr's rank lock "
           "(fixed by 408f16ddb3 in 4.9.0, 43208a9cb4 in 4.10.0), and do_IRQ's desc->lock -> rank->lock "
           "meets vgic_enable_irqs/vgic_disable_irqs' rank->lock -> desc->lock")
#: outcomes of the 4.8 base, expected of every 4.8-based variant
EXPECT_48 = ["recursive-locking", "deadlock", "lock-order-inversion"]


def _known(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        out.update(d)
    return out


class MigrationStorm(Workload):
    """Old ARM vGIC: ITARGETSR migrations and ISENABLER/ICENABLER writes racing EOIs, WFI and
    physical SPI injection."""

    name = "migration-storm"
    state = OldVgicDomain
    duration = 10.0
    check_interval = 0.02  # affinity-follows-target is a property of quiescent moments: look often
    noise = 0.2  # Stefano's race window is a few microseconds between two lock operations: widen it
    options = {
        "vcpus": Option(2, "guest vCPUs, one worker (pCPU) each", min=2, max=16),
        "spis": Option(8, "SPIs routed to the guest", min=1, max=256),
        "lrs": Option(4, "list registers per pCPU", min=1, max=16),
        "eoi-us": Option(500, "longest time the guest's handler runs before EOI, microseconds", min=0, max=10**6),
        "backport": Option("", "commits applied on the variant's code, comma-separated: 408f16ddb3 (the priority "
                               "read without the rank lock) lifts 4.8's lr_pending self-deadlock to study the "
                               "thread's races"),
        "ienable": Option(1, "1: the guest writes ISENABLER/ICENABLER (enables and disables SPIs); 0: it never "
                             "does (with --backport 408f16ddb3: the 4.8 variants without 4.8's other lock bugs)",
                          min=0, max=1),
        "move-rate": Option(0, "vCPU moves between pCPUs, per second and pCPU: the scheduler moves the running vCPU "
                               "to another pCPU (vcpu_migrate) and idle pCPUs steal waiting ones, each move followed "
                               "by arch_move_irqs; 0: every vCPU pinned to its pCPU", min=0, max=10**6),
        "wfi-us": Option(300, "longest time a vCPU stays blocked in WFI before its timer wakes it, microseconds",
                         min=0, max=10**6),
    }
    variants = [
        Variant("rank-lock-inversion", expect=EXPECT_48,
                provenance="RELEASE-4.8.0 (the bug the thread is about; vgic.c, gic.c, vgic-v2.c)",
                known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, XSA_223, {"invariant:affinity-follows-target":
                       "found by stress's controlled scheduler: Stefano's race is older than his patch. "
                       "gic_update_one_lr does test_and_clear(MIGRATING), reads the target under the rank lock, "
                       "and calls irq_set_affinity after releasing it; a second migration in between "
                       "(vgic_migrate_irq(B, C) takes vgic(B), finds the IRQ neither MIGRATING nor inflight and "
                       "sets pcpu(C)) is overwritten by the stale pcpu(B)"}),
                doc="gic_update_one_lr holds the vgic lock and takes the rank lock through "
                    "vgic_get_target_vcpu: rank -> vgic in the store path, vgic -> rank here. " + BASE_48),
        Variant("unlocked-target-read", expect=["invariant:affinity-follows-target"] + EXPECT_48,
                known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, XSA_223),
                provenance=f"{THREAD}: Stefano's patch on RELEASE-4.8.0 (ASSERT dropped)",
                doc="gic_update_one_lr reads the target without the rank lock: Stefano's race leaves "
                    "desc->affinity at an intermediate pCPU. " + BASE_48),
        Variant("unlocked-target-read-assert", expect=["invariant:assert-held", "invariant:affinity-follows-target"]
                + EXPECT_48, known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, XSA_223),
                provenance=f"{THREAD}: the patch on RELEASE-4.8.0 with the ASSERT kept, as Julien asked",
                doc="as unlocked-target-read, keeping ASSERT(spin_is_locked(&rank->lock)). " + BASE_48),
        Variant("old-vcpu-lock", expect="open", known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, XSA_223),
                provenance=f"{THREAD}: Stefano's proposal 3 on RELEASE-4.8.0 (vgic lock of the pre-migration vCPU, "
                           "id in pending_irq), rendered with 4.8's unlocked MIGRATING test and no re-check",
                doc="rank->vcpu written under the vgic lock of p->old_vcpu, read before it is locked; the thread "
                    "doubts it. " + BASE_48,
                answer="as rendered here (4.8's unlocked MIGRATING test, p->old_vcpu read before its lock, no "
                       "re-check): racy. With --backport 408f16ddb3 --ienable 0, invariant:affinity-follows-target in "
                       "20 of 20 PCT seeds (--pct-depth 3 --pct-steps 64; median 0.34 s, 72 k steps; --seed 1 at step "
                       "35,057): vgic_migrate_irq tests MIGRATING before it takes p->old_vcpu's vgic lock; "
                       "gic_update_one_lr on that vCPU clears MIGRATING and reads the target first, then the second "
                       "migration writes rank->vcpu under the lock with nobody left to call irq_set_affinity. With the "
                       "default options the 4.8 base self-deadlocks first (20 of 20 seeds)"),
        Variant("old-vcpu-lock-recheck", expect="open", known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, XSA_223),
                provenance=f"{THREAD}: proposal 3 on RELEASE-4.8.0 as it would have to be written: lock p->old_vcpu, "
                           "re-check the owner and MIGRATING under it, retry",
                doc="as old-vcpu-lock, with the MIGRATING test and the owner re-checked under p->old_vcpu's "
                    "vgic lock. " + BASE_48,
                answer="as rendered here (lock p->old_vcpu, re-check owner and MIGRATING under it, retry): "
                       "still racy. With --backport 408f16ddb3 --ienable 0, invariant:affinity-follows-target in 20 of "
                       "20 PCT seeds (median 0.50 s, 108 k steps; --seed 1 at step 143,362): gic_update_one_lr hands "
                       "the guard over (p->old_vcpu = the target it read) before its irq_set_affinity, so a migration "
                       "holding the new owner's vgic lock runs beside it; its irq_set_affinity(new) is then overwritten "
                       "by the EOI path's stale one. With the default options the 4.8 base self-deadlocks first"),
        Variant("drop-vgic-then-rank", expect=EXPECT_48, known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, XSA_223),
                provenance=f"{THREAD}: Stefano's proposal 1 on RELEASE-4.8.0, his choice in the thread, never merged",
                doc="gic_update_one_lr notes MIGRATING IRQs; after the vgic lock is dropped, each is "
                    "handled under the rank lock. Clean on the thread's question; " + BASE_48),
        Variant("xen-stable-4.8", expect=["recursive-locking", "deadlock", "lock-order-inversion"],
                known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, AFFINITY_LAG),
                provenance="stable-4.8 head: " + DESIGNS["xen-stable-4.8"].base,
                doc="4.9.0's vGIC except 408f16ddb3: vgic_get_virq_priority still takes the rank lock, so the "
                    "lr_pending self-deadlock and the desc -> rank edge remain on the 4.8 branch"),
        Variant("xen-4.9.0", expect="clean", known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, AFFINITY_LAG),
                provenance=DESIGNS["xen-4.9.0"].base,
                doc="atomic rank->vcpu, vgic_migrate_irq refuses while MIGRATING (tested before the vgic lock), "
                    "gic_update_one_lr never takes the rank lock, priority read without it"),
        Variant("xen-4.10.0", expect="clean", known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, AFFINITY_LAG),
                provenance=DESIGNS["xen-4.10.0"].base,
                doc="as 4.9.0, with MIGRATING tested under the vgic lock and ENABLED changed under it "
                    "(5f66da6590)"),
        Variant("upstream", expect="clean", known=_known(HW_IRQ_LOST, STALE_TARGET_INJECTION, AFFINITY_LAG),
                provenance="the newest old-vGIC release: the same model as xen-4.10.0 (" + DESIGNS["xen-4.10.0"].base
                           + "); a variant of its own because the engine has no aliases",
                doc="= xen-4.10.0"),
    ]
    events = {
        "migrate": "irq {a}: ITARGETSR vcpu{b} -> vcpu{c}",
        "migrate_refused": "irq {a}: migration vcpu{b} -> vcpu{c} refused (MIGRATING)",
        "migrate_reinject": "irq {a}: lr_pending on vcpu{b}, re-injected to vcpu{c}",
        "migrate_retry": "irq {a}: p->old_vcpu changed from vcpu{b} to vcpu{c} before its lock was taken: retry",
        "set_migrating": "irq {a}: in an LR of vcpu{b}, MIGRATING set (to vcpu{c})",
        "irq_set_affinity": "irq {a}: irq_set_affinity -> pcpu{b}",
        "eoi_migrate": "irq {a}: EOIed on vcpu{b} while MIGRATING, target read: vcpu{c}",
        "inject": "irq {a}: injected to vcpu{b}",
        "inject_inflight_elsewhere": "irq {a}: injection to vcpu{b} found it inflight on vcpu{c}",
        "raise_inflight": "irq {a}: gic_raise_inflight_irq: gic_update_one_lr(vcpu{b}, LR{c})",
        "hw_inject_dropped": "irq {a}: unable to inject hw irq into vcpu{b}: already active in LR{c}",
        "enable": "irq {a}: ISENABLER (target vcpu{b})",
        "disable": "irq {a}: ICENABLER (target vcpu{b})",
        "guest_eoi": "irq {a}: guest EOI on vcpu{b} (physical IRQ deactivated)",
        "raise": "irq {a}: physical SPI raised at pcpu{b}",
        "lr_set": "irq {a}: into LR{c} of vcpu{b}",
        "lr_eoi": "irq {a}: LR{c} of vcpu{b} EOIed, freed",
        "block": "vcpu{a}: WFI, blocked",
        "kick": "vcpu{a}: vcpu_unblock",
        "vcpu_migrate": "vcpu{a}: vcpu_migrate pcpu{b} -> pcpu{c}",
        "vcpu_steal": "vcpu{a}: stolen from pcpu{b} by idle pcpu{c}",
        "vcpu_switch": "vcpu{a} -> vcpu{b} on pcpu{c}",
        "move_irq": "irq {a}: arch_move_irqs(vcpu{b}): irq_set_affinity -> pcpu{c}",
    }

    key_events = ("migrate", "migrate_refused", "migrate_reinject", "migrate_retry", "set_migrating",
                  "irq_set_affinity", "eoi_migrate", "inject", "inject_inflight_elsewhere", "raise_inflight",
                  "hw_inject_dropped", "enable", "disable", "guest_eoi", "lr_set", "lr_eoi", "move_irq",
                  "vcpu_migrate", "vcpu_steal")
    #: inline checks of the model (shm_model/xen/old_vgic/): a per-vCPU list unlinked without its
    #: lock; gic_raise_inflight_irq updating an LR that does not hold the IRQ; a re-delivered
    #: hardware IRQ dropped with its inflight entry
    checks = ("vgic-list-lock", "raise-inflight-lr", "hw-irq-lost")

    def setup(self, s):
        """vCPU v on pCPU v; every SPI enabled (GICD_ISENABLER), routed to vCPU i % vcpus and
        its physical affinity to match."""
        try:
            with_backports(DESIGNS[self.variant], self.opts.backport)
        except ValueError as e:
            raise WorkloadError(f"--backport: {e}") from None
        init_pinned(s.sched)
        n = len(s.vcpus)
        for i, p in enumerate(s.pending):
            t = i % n
            s.ranks[i // 32].vcpu[i % 32] = t
            s.ranks[i // 32].ienable[i % 32] = 1
            s.descs[i].affinity = t
            p.status = 1 << GIC_IRQ_GUEST_ENABLED
            p.old_vcpu = t

    def summary(self, s):
        return {"migrations": s.migrations, "of IRQs in an LR (MIGRATING)": s.migrating_set,
                "refused migrations": s.refused_migrations,
                "affinity writes": s.affinity_writes, "injections": s.injections, "EOIs": s.eois,
                "ICENABLER": s.disables, "ISENABLER": s.enables, "gic_raise_inflight_irq updates": s.inflight_raises,
                "hw injections dropped (ACTIVE LR)": s.dropped_hw,
                "hw IRQs lost (hw-irq-lost)": s.lost_hw, "WFI blocks": s.sched.blocks,
                **({"vCPU moves (vcpu_migrate)": s.sched.migrations, "idle pCPU steals": s.sched.steals,
                    "context switches": s.sched.switches, "arch_move_irqs affinity writes": s.moved_irqs}
                   if self.opts.__dict__["move-rate"] else {})}

    class vcpu(Role):
        """A pCPU (one per vCPU) running the vCPU its scheduler picks: guest ITARGETSR/
        ISENABLER/ICENABLER writes and WFI, exits with LR work, do_IRQ. While it has no vCPU to
        run (blocked, or moved away) the pCPU is idle: no guest operation runs, interrupts are
        still taken."""

        count = "vcpus"

        def setup(self, s):
            rate = self.options.__dict__["move-rate"]
            self.vgic = make_vgic(self.variant, s, self.cpu, self.trace, backport=self.options.backport,
                                  pcpu=self.index, move_ns=int(1e9 / rate) if rate else 0, rand=self.random.random)
            self.handler_ns = self.options.__dict__["eoi-us"] * 1000
            self.wfi_ns = self.options.__dict__["wfi-us"] * 1000

        def _running(self, s):
            return self.vgic.current != IDLE

        @op(weight=1)
        def vcpu_run(self, s):
            """Exit to Xen, gic_clear_lrs, gic_restore_pending_irqs, guest acks and EOIs."""
            self.vgic.vcpu_run(self.cpu.clock_ns(), int(self.random.random() * self.handler_ns))

        @op(rate=2000, name="migrate")
        def write_itargetsr(self, s):
            """The guest moves a random SPI to another vCPU (vgic_store_itargetsr)."""
            if not self._running(s):
                return
            i = self.random.randrange(len(s.pending))
            current = s.ranks[i // 32].vcpu[i % 32]
            new = (current + 1 + self.random.randrange(len(s.vcpus) - 1)) % len(s.vcpus)
            self.vgic.vgic_store_itargetsr(SPI_BASE + i, new)

        @op(rate=200)
        def icenabler(self, s):
            """The guest disables a random SPI (GICD_ICENABLER -> vgic_disable_irqs)."""
            if not self._running(s) or not self.options.ienable:
                return
            i = self.random.randrange(len(s.pending))
            self.vgic.write_ienable(SPI_BASE + i, False)

        @op(rate=400)
        def isenabler(self, s):
            """The guest enables a random SPI (GICD_ISENABLER -> vgic_enable_irqs); enabled ones
            are a no-op, so disabled SPIs stay disabled for a while."""
            if not self._running(s) or not self.options.ienable:
                return
            i = self.random.randrange(len(s.pending))
            self.vgic.write_ienable(SPI_BASE + i, True)

        @op(rate=300)
        def wfi(self, s):
            """The guest idles (WFI -> vcpu_block) until an injection or its timer wakes it."""
            v = self.vgic.current
            if v == IDLE or len(s.vcpus) < 2:
                return
            self.vgic.vcpu_block(v, self.cpu.clock_ns() + int(self.random.random() * self.wfi_ns))

        @isr
        def irq(self, s, virq):
            self.vgic.do_IRQ(virq)

    class device(Role):
        """Raises physical SPIs at the GIC, which delivers each to the pCPU in its affinity:
        not while the GIC holds it pending or active (until the guest's EOI), nor while it is
        disabled at the distributor."""

        count = 1

        @op(rate=10000)
        def inject(self, s):
            i = self.random.randrange(len(s.pending))
            desc = s.descs[i]
            if desc.hw_pending or desc.active or desc.status & (1 << _IRQ_DISABLED):
                return
            desc.hw_pending = 1
            target = desc.affinity
            self.trace("raise", SPI_BASE + i, target)
            self.cpu.raise_irq(self.peers["vcpu"][target], SPI_BASE + i)

    @invariant("affinity-follows-target")
    def affinity_follows_target(self, s):
        """At quiescence (not inflight, not queued, not MIGRATING, not active or pending at
        the GIC), every routed SPI's desc->affinity is the pCPU of rank->vcpu[irq]."""
        bad: list[str] = []
        subject = None
        for i, p in enumerate(s.pending):
            virq = SPI_BASE + i
            d = s.descs[i]
            quiet = (p.inflight < 0 and p.lr_queue < 0 and not test_bit(p.status, GIC_IRQ_GUEST_MIGRATING)
                     and not d.status & (1 << _IRQ_INPROGRESS) and not d.active and not d.hw_pending)
            target = s.ranks[i // 32].vcpu[i % 32]
            pcpu = s.sched.vcpus[target].processor
            if quiet and d.affinity != pcpu:
                subject = virq if subject is None else subject
                bad.append(f"irq {virq}: rank->vcpu = vcpu{target}, on pcpu{pcpu}, but desc->affinity = "
                           f"pcpu{d.affinity} (status {status_text(p.status)}, not inflight)")
        return Violation("; ".join(bad), subject) if bad else None

    @invariant("inflight-on-one-vcpu")
    def inflight_on_one_vcpu(self, s):
        """A pending_irq is on at most one vCPU's inflight list and in at most one LR."""
        bad: list[str] = []
        subject = None
        for i, p in enumerate(s.pending):
            virq = SPI_BASE + i
            on = [v for v, vv in enumerate(s.vcpus) if vv.inflight[i]]
            lrs = [(v, j) for v, vv in enumerate(s.vcpus) for j in range(len(vv.lr))
                   if vv.lr[j] == virq and vv.lr_state[j] != LR_INVALID]
            if len(on) > 1 or len(lrs) > 1:
                subject = virq if not bad else subject
                bad.append(f"irq {virq}: inflight on vcpus {on}, in LRs {lrs}")
        return Violation("; ".join(bad), subject) if bad else None
