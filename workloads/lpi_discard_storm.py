"""lpi-discard-storm: LPI ``pending_irq`` lifetime under ITS DISCARD and MAPD V=0 (Xen-devel,
May 2017, Andre Przywara: "having NULL pointer entries in the radix tree and letting Xen
handle that is a valid case"; issue 25), on the old VGIC of ``migration-storm``.

vCPU workers (one per pCPU, vCPU i pinned on pCPU i) run the guest: it writes ITS commands
(``its_cmd``: MAPD V=1, MAPTI, DISCARD, MAPD V=0, processed at once under
``its->vcmd_lock`` then ``its->its_lock``), toggles LPIs in its property table and sends
INV (``inv``), and exits to Xen, which updates the list registers, while the guest
acknowledges its LPIs (``vcpu_run``). A device raises the host LPIs of its mapped events
(``fire``) at pCPU 0, where Xen 4.10 routes every host LPI: a real signal, whose handler
runs ``gicv3_do_LPI`` -> ``vgic_vcpu_inject_lpi`` -> ``vgic_vcpu_inject_irq`` in interrupt
context. The model, its locking order, the Xen functions and versions it follows and what
it simplifies are in ``shm_model/xen/lpi/`` (one module per design) and
``shm_model/xen/old_vgic/`` (the list registers). ``--lpi-vcpu any`` lets the guest map an
LPI number again on another vCPU (the proposal's per-vCPU lock argument then fails).

    stress run --workload lpi-discard-storm
    stress run --workload lpi-discard-storm --variant null-entries-under-vgic-lock --duration 5m
    stress run --workload lpi-discard-storm --variant upstream --schedule pct --pct-depth 3 --pct-steps 64
"""

from __future__ import annotations

from dataclasses import dataclass

from shm_model.xen.lpi import CHECKS, DESIGNS, EVENTS, KEY_EVENTS, LpiDomain
from shm_model.xen.lpi.common import HOST_LPI_BASE, INVALID_LPI, LPI_PROP_ENABLED
from shm_model.xen.old_vgic.common import LPI_OFFSET
from shm_model.xen.schedule import init_pinned
from stress.workload import Option, Role, Variant, Violation, Workload, WorkloadError, invariant, isr, op


@dataclass
class Choice(Option):
    """An option taking one of ``choices`` (a usage error otherwise)."""

    choices: tuple = ()

    def parse(self, name: str, text: str) -> str:
        if text not in self.choices:
            raise WorkloadError(f"--{name} takes one of {', '.join(self.choices)}, not {text!r}")
        return text


THREAD = "xen-devel May 2017, Andre Przywara on the ITS series v7/v8-pre: NULL entries in the pend_lpi_tree"

#: found by stress beyond the thread's question (the pointer's lifetime), in the proposal with
#: PRISTINE and in Xen 4.10: an LR of vCPU A still holds a discarded LPI when the guest maps the
#: number again on vCPU B and B's gic_set_lr clears PRISTINE first
STALE_LR_REMAP = {
    "invariant:lpi-discarded-in-lr":
        "found by stress: vCPU A's LR still holds LPI L (acknowledged or pending) when the guest DISCARDs it and "
        "MAPTIs L again on vCPU B; B's gic_set_lr clears the new pending_irq's PRISTINE bit before A returns, so A's "
        "gic_update_one_lr finds a non-NULL, non-PRISTINE pointer and takes B's pending_irq for the one in its LR "
        "(bccfbe70a3's PRISTINE is one bit per pending_irq, consumed by whichever vCPU sets an LR first; gic.c "
        "gic_update_one_lr, 4.10.0)",
    "invariant:vgic-list-lock":
        "a consequence of the stale LR: A's gic_update_one_lr, holding A's vgic lock, clears VISIBLE and p->lr of B's "
        "pending_irq and list_del_init()s it from B's inflight_irqs (or re-raises it on A)",
}

#: found by stress in Xen 4.10, beside the thread's question: its_handle_mapti takes the tree's
#: write lock with interrupts enabled (5e8d02560a) while gicv3_do_LPI takes its read lock in
#: interrupt context (vgic_v3_lpi_to_pending): an LPI arriving on that pCPU meanwhile spins
#: on a lock its own CPU holds
TREE_LOCK_IRQ = {
    "inconsistent-lock-state":
        "found by stress: its_handle_mapti does write_lock(&d->arch.vgic.pend_lpi_tree_lock) with interrupts "
        "enabled (vgic-v3-its.c, 4.10.0), and gicv3_do_LPI -> vgic_vcpu_inject_lpi -> irq_to_pending -> "
        "vgic_v3_lpi_to_pending read_lock()s it in interrupt context: an LPI taken on the pCPU inside MAPTI's "
        "critical section deadlocks that pCPU",
    "irq-lock-inversion":
        "the same, seen as an order: &v->arch.vgic.lock (HARDIRQ-safe: taken by the LPI's injection) -> "
        "&d->arch.vgic.pend_lpi_tree_lock, which MAPTI takes HARDIRQ-unsafe",
}


class LpiDiscardStorm(Workload):
    """GICv3 LPIs on the old VGIC: ITS DISCARD and MAPD V=0 racing LPI injection from
    interrupt context and list-register maintenance."""

    name = "lpi-discard-storm"
    state = LpiDomain
    duration = 30.0
    check_interval = 0.02
    noise = 0.2
    options = {
        "vcpus": Option(2, "guest vCPUs, one worker (pCPU) each", min=2, max=8),
        "spis": Option(1, "SPIs of the old-VGIC state (none is raised here)", min=1, max=1),
        "lrs": Option(4, "list registers per pCPU", min=1, max=16),
        "devices": Option(2, "ITS devices (DevIDs)", min=1, max=16),
        "events": Option(4, "events per device (its ITT size)", min=1, max=32),
        "lpis": Option(8, "virtual LPIs 8192 .. 8192+lpis-1 the guest maps events to", min=1, max=1024),
        "unmapd": Option(0.1, "share of a mapped device's commands that are MAPD V=0", min=0.0, max=1.0),
        "lpi-vcpu": Choice("fixed", "the collection the guest's MAPTI gives an LPI: fixed (LPI n always on vCPU "
                                    "n % vcpus: the proposal's per-vCPU lock argument holds) or any (random: a number "
                                    "discarded on one vCPU may be mapped again on another while its old LPI is still "
                                    "in the first vCPU's LR)", choices=("fixed", "any")),
        "host-lpi-cpu": Choice("0", "where the host ITS delivers the device's LPIs: 0 (pCPU 0, as Xen 4.10 maps them: "
                                    "'For now we map every host LPI to host CPU 0', gicv3_its_map_host_events) or any "
                                    "(a random pCPU per LPI)", choices=("0", "any")),
    }
    variants = [
        Variant("lookup-outside-lock", expect="use-after-free",
                provenance=f"{THREAD}: the v7 series (RELEASE-4.9.0's vgic_vcpu_inject_irq, f98d6a0862's "
                           "vgic_vcpu_inject_lpi), DISCARD freeing the pending_irq at once",
                known={**STALE_LR_REMAP, "null-deref":
                       "the same race one step on: after writing the freed pending_irq, vgic_vcpu_inject_irq reads "
                       "the priority (vgic_get_virq_priority -> vgic_v3_lpi_get_priority), which looks the LPI up "
                       "again, finds NULL (discarded) and dereferences it past its ASSERT(p) (vgic-v3.c, 4.10.0)"},
                doc="irq_to_pending before the vCPU's vgic lock, the pointer used after it; a DISCARD in between "
                    "frees the pending_irq"),
        Variant("null-entries-under-vgic-lock", expect="clean",
                provenance=f"{THREAD}: Andre's proposal (its/v8-pre): DISCARD NULLs the tree entry under the vgic "
                           "lock and frees; every user looks the pointer up under the vgic lock; with bccfbe70a3 "
                           "(PRISTINE LPIs, the same series, in 4.10.0)",
                known=STALE_LR_REMAP,
                doc="NULL is 'unmapped' everywhere, a returning vCPU clears an LR whose LPI reads NULL or PRISTINE; "
                    "the injecting vCPU comes from the host LPI entry and is re-checked under its vgic lock "
                    "(inferred: shm_model/xen/lpi/null_entries_under_vgic_lock.py). Clean while an LPI number stays "
                    "on one vCPU (--lpi-vcpu fixed, the default); with --lpi-vcpu any, a vCPU's stale LR meets the "
                    "number mapped again on another vCPU, gic_update_one_lr uses that vCPU's pending_irq under its "
                    "own vgic lock while the owner's DISCARD frees it: use-after-free (the per-vCPU lock does not "
                    "cover a per-domain tree)"),
        Variant("null-entries-as-posted", expect="invariant:lpi-discarded-in-lr",
                provenance=f"{THREAD}: the proposal as the mail states it, without bccfbe70a3's PRISTINE",
                doc="a vCPU whose LR still holds a discarded LPI finds a new mapping of that number (not NULL) "
                    "when it returns, and takes it for its own: bccfbe70a3's case ('a *new* LPI may get mapped "
                    "with the same number while the old LPI is *still* in some LR')"),
        Variant("upstream", expect="open",
                provenance="Xen 4.10 (RELEASE-4.10.0): 56e1b3ebc9, bccfbe70a3, 08055c8ea7, 5928960ee7, 5e8d02560a",
                known={**STALE_LR_REMAP, **TREE_LOCK_IRQ},
                doc="Does MAPD V=0 free pend_irqs while an LPI is being injected (vgic_vcpu_inject_lpi reads "
                    "p->lpi_vcpu_id outside any lock, the TODO)?",
                answer="yes: use-after-free (a read of the freed struct pending_irq's lpi_vcpu_id in "
                       "vgic_vcpu_inject_lpi) in 20 of 20 PCT seeds (--pct-depth 3 --pct-steps 64, 30 s cap; median "
                       "3.97 s, 575 k steps; --seed 11 at step 30,151, replayable, shrunk to 984 hand-overs / 8,210 "
                       "steps). gicv3_do_LPI on pCPU 0 looks the vLPI up (irq_to_pending: the tree's read lock, "
                       "dropped) and holds &dev->pend_irqs[e]; the guest's MAPD V=0 on pCPU 1 discards the event "
                       "(tree delete and vgic_init_pending_irq under the vgic lock) and remove_mapped_guest_device "
                       "xfree()s pend_irqs with no lock and no grace period; the ISR then reads p->lpi_vcpu_id. "
                       "Besides the question, in every run: MAPTI write_lock()s pend_lpi_tree_lock with interrupts "
                       "enabled while gicv3_do_LPI read_lock()s it in interrupt context (inconsistent lock state "
                       "within 1,000 steps); free runs mostly deadlock on it before the use-after-free shows (14 of "
                       "20 seeds within 30 s, one use-after-free)"),
    ]
    events = EVENTS
    key_events = KEY_EVENTS
    checks = CHECKS

    def setup(self, s):
        """MAPC: collection c on vCPU c; every LPI enabled in the property table; vCPU v
        pinned to pCPU v."""
        init_pinned(s.sched)
        for c in range(len(s.its.coll_table)):
            s.its.coll_table[c] = c

    def summary(self, s):
        out = {"ITS commands": s.cmds, "MAPD V=1": s.mapd_valid, "MAPD V=0": s.mapd_invalid, "MAPTI": s.maptis,
               "MAPTI refused": s.mapti_failed, "events discarded": s.discards, "INV": s.invs,
               "host LPIs raised": s.lpis_fired, "gicv3_do_LPI": s.lpis_handled,
               "vgic_vcpu_inject_lpi -> vgic_vcpu_inject_irq": s.lpi_injections,
               "irq_to_pending NULL in vgic_vcpu_inject_lpi": s.lpi_null, "EOIs": s.eois}
        st = s.pirqs.stats()
        out["pending_irq allocs"] = st["allocs"]
        out["pending_irq max live"] = st["max_live"]
        out["pending_irq pool exhausted"] = st["exhausted"]
        return out

    class vcpu(Role):
        """A pCPU running its vCPU: the guest's ITS commands, property writes with INV,
        exits with list-register work, and gicv3_do_LPI in interrupt context."""

        count = "vcpus"

        def setup(self, s):
            self.vgic = DESIGNS[self.variant](s, self.cpu, self.trace)
            self.nd = len(s.its.dev_table)
            self.ne = self.vgic.nr_events
            self.nl = len(s.pend_lpi_tree)
            self.unmapd = self.options.unmapd
            self.nv = len(s.vcpus)
            self.fixed = getattr(self.options, "lpi-vcpu") == "fixed"

        @op(weight=1)
        def vcpu_run(self, s):
            """Exit to Xen: gic_clear_lrs, gic_restore_pending_irqs; the guest acknowledges."""
            self.vgic.vcpu_run(self.cpu.clock_ns(), 0)

        @op(rate=1000)
        def its_cmd(self, s):
            """The guest queues one ITS command and writes GITS_CWRITER (the guest's choice is
            made from its own view of the tables, without Xen's locks)."""
            r = self.random
            devid = r.randrange(self.nd)
            its = s.its
            if not its.dev_table[devid]:
                cmd = ("MAPD", devid, True)
            elif r.random() < self.unmapd:
                cmd = ("MAPD", devid, False)
            else:
                evid = r.randrange(self.ne)
                if its.itte_vlpi[devid * self.ne + evid] == INVALID_LPI:
                    k = r.randrange(self.nl)
                    coll = k % self.nv if self.fixed else r.randrange(self.nv)
                    cmd = ("MAPTI", devid, evid, LPI_OFFSET + k, coll)
                else:
                    cmd = ("DISCARD", devid, evid)
            self.vgic.vgic_its_handle_cmds(cmd)

        @op(rate=200)
        def inv(self, s):
            """The guest flips a mapped event's LPI enable bit in its property table and sends INV."""
            r = self.random
            devid = r.randrange(self.nd)
            evid = r.randrange(self.ne)
            vlpi = s.its.itte_vlpi[devid * self.ne + evid]
            if vlpi == INVALID_LPI:
                return
            s.prop_table[vlpi - LPI_OFFSET] ^= LPI_PROP_ENABLED
            self.vgic.vgic_its_handle_cmds(("INV", devid, evid))

        @isr
        def irq(self, s, plpi):
            self.vgic.gicv3_do_LPI(plpi)

    class device(Role):
        """Raises the host LPIs of the events of devices mapped at the host ITS, at pCPU 0
        (``--host-lpi-cpu``)."""

        count = 1

        def setup(self, s):
            self.nd = len(s.its.dev_table)
            self.ne = len(s.its.itte_vlpi) // self.nd
            self.nv = len(s.vcpus) if getattr(self.options, "host-lpi-cpu") == "any" else 1

        @op(rate=5000)
        def fire(self, s):
            r = self.random
            devid = r.randrange(self.nd)
            if not s.hw_mapped[devid]:
                return
            host = devid * self.ne + r.randrange(self.ne)
            target = r.randrange(self.nv)
            s.lpis_fired += 1
            self.trace("lpi_fire", HOST_LPI_BASE + host, devid, target)
            self.cpu.raise_irq(self.peers["vcpu"][target], HOST_LPI_BASE + host)

    @invariant("lpi-list-discarded")
    def lpi_list_discarded(self, s):
        """At quiescence no inflight_irqs or lr_pending entry of any vCPU refers to a
        discarded LPI: each LPI entry is a live pending_irq, the one pend_lpi_tree maps it to."""
        nspis = len(s.pending)
        bad: list[str] = []
        subject = None
        for v, vv in enumerate(s.vcpus):
            for k in range(len(s.pend_lpi_tree)):
                for what, h in (("inflight_irqs", vv.inflight[nspis + k]),
                                ("lr_pending", vv.lr_pending_p[k] if vv.lr_pending[nspis + k] else 0)):
                    if not h:
                        continue
                    now = s.pend_lpi_tree[k]
                    if s.pirqs.is_live(h) and now == h:
                        continue
                    state = "freed" if not s.pirqs.is_live(h) else ("unmapped" if not now else f"replaced by {now:#x}")
                    subject = LPI_OFFSET + k if subject is None else subject
                    bad.append(f"vcpu{v}'s {what} holds pending_irq {h:#x} of LPI {LPI_OFFSET + k}: {state}")
        return Violation("; ".join(bad), subject) if bad else None
