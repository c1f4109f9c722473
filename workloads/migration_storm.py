"""migration-storm: the old vGIC's rank/vgic lock inversion (Xen-devel, Dec 2016, "xen/arm:
fix rank/vgic locks inversion bug"), the thread's proposals, and what Xen shipped.

vCPU workers (one per pCPU, vCPU i pinned on pCPU i) run the guest: ITARGETSR writes that
migrate SPIs between vCPUs (``migrate``, paced), and exits where the hypervisor updates the
list registers and the guest acknowledges and EOIs (``vcpu_run``). A device raises physical
SPIs (``inject``, paced) at the pCPU in ``desc->affinity``: a real signal to that worker,
whose handler runs ``do_IRQ`` in interrupt context. The model and its locking order are in
``shm_model/old_vgic.py``.

    stress run --workload migration-storm
    stress run --workload migration-storm --variant unlocked-target-read --duration 60s
    stress run --workload migration-storm --variant upstream --rate inject=20000,migrate=4000 --vcpus 4
"""

from __future__ import annotations


from shm_model.old_vgic import (GIC_IRQ_GUEST_ENABLED, LR_INVALID, SPI_BASE, OldVgic, OldVgicDomain, status_text,
                                test_bit, GIC_IRQ_GUEST_MIGRATING)
from stress.workload import Option, Role, Variant, Violation, Workload, invariant, isr, op

THREAD = "xen-devel Dec 2016 'xen/arm: fix rank/vgic locks inversion bug'"

#: A race of the old vGIC itself, outside the thread's question, that stress finds in every
#: variant (shown in each run's report, recorded, never deciding the verdict).
STALE_TARGET_INJECTION = {
    "invariant:vgic-list-lock":
        "found by stress in every variant: vgic_vcpu_inject_spi reads the target, then takes that "
        "vCPU's vgic lock; a migration completing in between (or, upstream, the window before "
        "write_atomic(rank->vcpu)) leaves the IRQ inflight on the old target's lr_pending. The next "
        "vgic_migrate_irq(old = rank->vcpu) then list_del()s it from that other vCPU's lists "
        "holding only its own vgic lock (vgic_remove_irq_from_queues)",
    "invariant:inflight-on-one-vcpu":
        "a consequence of the vgic-list-lock race: the wrong-lock unlink runs while the owner's "
        "gic_restore_pending_irqs moves the same IRQ from lr_pending into an LR; the migration then "
        "re-injects it elsewhere and it sits in two vCPUs' LRs (in Xen: a corrupted inflight list)"}


class MigrationStorm(Workload):
    """Old ARM vGIC: ITARGETSR migrations racing EOIs and physical SPI injection."""

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
    }
    variants = [
        Variant("rank-lock-inversion", expect=["lock-order-inversion", "deadlock"],
                provenance="Xen before Feb 2017 (the bug the thread is about)",
                known={**STALE_TARGET_INJECTION, "invariant:affinity-follows-target":
                       "found by stress's controlled scheduler (--schedule pct --pct-steps 60 --seed 3): Stefano's "
                       "race is older than his patch. gic_update_one_lr does test_and_clear(MIGRATING), reads the "
                       "target under the rank lock, and calls irq_set_affinity after releasing it; a second "
                       "migration in between (vgic_migrate_irq(B, C) takes vgic(B), finds the IRQ neither "
                       "MIGRATING nor inflight and sets pcpu(C)) is overwritten by the stale pcpu(B)"},
                doc="gic_update_one_lr holds the vgic lock and takes the rank lock through "
                    "vgic_get_target_vcpu: rank -> vgic in the store path, vgic -> rank here"),
        Variant("unlocked-target-read", expect="invariant:affinity-follows-target", known=STALE_TARGET_INJECTION,
                provenance=f"{THREAD}: Stefano's patch (ASSERT dropped); same effect as upstream 378384399e alone",
                doc="gic_update_one_lr reads the target without the rank lock: Stefano's race leaves "
                    "desc->affinity at an intermediate pCPU"),
        Variant("unlocked-target-read-assert", expect=["invariant:assert-held", "invariant:affinity-follows-target"], known=STALE_TARGET_INJECTION,
                provenance=f"{THREAD}: the patch with the ASSERT kept, as Julien asked",
                doc="as unlocked-target-read, keeping ASSERT(spin_is_locked(&rank->lock))"),
        Variant("old-vcpu-lock", expect="open", known=STALE_TARGET_INJECTION,
                provenance=f"{THREAD}: Stefano's proposal 3 (vgic lock of the pre-migration vCPU, id in pending_irq)",
                doc="rank->vcpu written under the vgic lock of p->old_vcpu; the thread doubts it",
                answer="racy: invariant:affinity-follows-target in 20 of 20 seeds free (e.g. --seed 4) and 20 "
                       "of 20 under --schedule pct (median 0.52 s; replayable: stress replay RUN). "
                       "vgic_migrate_irq tests MIGRATING before it takes p->old_vcpu's vgic lock; "
                       "gic_update_one_lr on that vCPU clears MIGRATING and reads the target first, "
                       "then the second migration writes rank->vcpu under the lock with nobody left "
                       "to call irq_set_affinity: desc->affinity stays at the intermediate pCPU"),
        Variant("drop-vgic-then-rank", expect="clean", known=STALE_TARGET_INJECTION,
                provenance=f"{THREAD}: Stefano's proposal 1, his choice in the thread, never merged",
                doc="gic_update_one_lr notes MIGRATING IRQs; after the vgic lock is dropped, each is "
                    "handled under the rank lock"),
        Variant("upstream", expect="clean",
                provenance="Xen 4.9/4.10: 378384399e + 31bc6a93a0 + 91ef736493",
                doc="atomic rank->vcpu, vgic_migrate_irq refuses while MIGRATING, gic_update_one_lr "
                    "never takes the rank lock",
                known={**STALE_TARGET_INJECTION, "invariant:affinity-follows-target":
                       "found by stress: vgic_migrate_irq sets MIGRATING and drops the old vCPU's vgic "
                       "lock before vgic_store_itargetsr's write_atomic(rank->vcpu); a gic_update_one_lr "
                       "that takes that lock in between reads the old target, so desc->affinity lags "
                       "rank->vcpu until the IRQ's next migration (injection still reaches the target vCPU)"}),
    ]
    events = {
        "migrate": "irq {a}: ITARGETSR vcpu{b} -> vcpu{c}",
        "migrate_refused": "irq {a}: migration vcpu{b} -> vcpu{c} refused (MIGRATING)",
        "set_migrating": "irq {a}: in an LR of vcpu{b}, MIGRATING set (to vcpu{c})",
        "irq_set_affinity": "irq {a}: irq_set_affinity -> pcpu{b}",
        "eoi_migrate": "irq {a}: EOIed on vcpu{b} while MIGRATING, target read: vcpu{c}",
        "inject": "irq {a}: injected to vcpu{b}",
        "inject_inflight_elsewhere": "irq {a}: injection to vcpu{b} found it inflight on vcpu{c}",
        "guest_eoi": "irq {a}: guest EOI on vcpu{b}",
        "raise": "irq {a}: physical SPI raised at pcpu{b}",
        "lr_set": "irq {a}: into LR{c} of vcpu{b}",
        "lr_eoi": "irq {a}: LR{c} of vcpu{b} EOIed, freed",
    }

    key_events = ("migrate", "migrate_refused", "set_migrating", "irq_set_affinity", "eoi_migrate", "inject",
                  "inject_inflight_elsewhere", "lr_set", "lr_eoi")
    #: inline checks of the model (shm_model/old_vgic.py): a per-vCPU list unlinked without its lock
    checks = ("vgic-list-lock",)

    def setup(self, s):
        """Every SPI enabled, routed to vCPU i % vcpus and its physical affinity to match."""
        n = len(s.vcpus)
        for i, p in enumerate(s.pending):
            t = i % n
            s.ranks[i // 32].vcpu[i % 32] = t
            s.descs[i].affinity = t
            p.status = 1 << GIC_IRQ_GUEST_ENABLED
            p.old_vcpu = t

    def summary(self, s):
        return {"migrations": s.migrations, "of IRQs in an LR (MIGRATING)": s.migrating_set,
                "refused migrations": s.refused_migrations,
                "affinity writes": s.affinity_writes, "injections": s.injections, "EOIs": s.eois}

    class vcpu(Role):
        """A pCPU running its vCPU: guest ITARGETSR writes, exits with LR work, do_IRQ."""

        count = "vcpus"

        def setup(self, s):
            self.vgic = OldVgic(s, self.cpu, self.variant, self.trace)
            self.handler_ns = self.options.__dict__["eoi-us"] * 1000

        @op(weight=1)
        def vcpu_run(self, s):
            """Exit to Xen, gic_clear_lrs, gic_restore_pending_irqs, guest acks and EOIs."""
            self.vgic.vcpu_run(self.index, self.cpu.clock_ns(), int(self.random.random() * self.handler_ns))

        @op(rate=2000, name="migrate")
        def write_itargetsr(self, s):
            """The guest moves a random SPI to another vCPU (vgic_store_itargetsr)."""
            i = self.random.randrange(len(s.pending))
            current = s.ranks[i // 32].vcpu[i % 32]
            new = (current + 1 + self.random.randrange(len(s.vcpus) - 1)) % len(s.vcpus)
            self.vgic.vgic_store_itargetsr(SPI_BASE + i, new)

        @isr
        def irq(self, s, virq):
            self.vgic.do_IRQ(virq)

    class device(Role):
        """Raises physical SPIs at the GIC, which delivers each to the pCPU in its affinity."""

        count = 1

        @op(rate=10000)
        def inject(self, s):
            i = self.random.randrange(len(s.pending))
            desc = s.descs[i]
            if desc.hw_pending or desc.status & 1:  # pending or active at the GIC: not delivered again
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
            quiet = (p.inflight < 0 and p.lr_queue < 0 and not test_bit(p.status, GIC_IRQ_GUEST_MIGRATING)
                     and not s.descs[i].status & 1 and not s.descs[i].hw_pending)
            target = s.ranks[i // 32].vcpu[i % 32]
            if quiet and s.descs[i].affinity != target:
                subject = virq if subject is None else subject
                bad.append(f"irq {virq}: rank->vcpu = vcpu{target} but desc->affinity = pcpu{s.descs[i].affinity} "
                           f"(status {status_text(p.status)}, not inflight)")
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
