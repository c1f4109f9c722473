"""vpci-removal-storm: vPCI device removal racing deferred BAR mapping (xen-devel, Nov 2021,
"Re: [PATCH v4 02/11] vpci: cancel pending map/unmap on vpci removal"), the thread's
proposals, and what Xen shipped.

vCPU workers run guests: Dom0's vCPUs (``dom0``) and a DomU's (``domu``) write PCI_COMMAND
to toggle memory decoding of their devices (``mmio_write``: ``vpci_write`` -> ``cmd_write``
-> ``modify_bars`` -> ``defer_map``), read it (``mmio_read``), and on every way back to the
guest run ``vpci_process_pending`` one chunk at a time (a vCPU with pending work does not
enter its guest; ``resume`` is a return to the guest with no config-space access). The
toolstack is Dom0's vCPU 0: ``PHYSDEVOP_pci_device_add`` (``add``; ``iommu_add_device``
fails at ``--iommu-fail``), ``PHYSDEVOP_pci_device_remove`` (``remove``),
``XEN_DOMCTL_assign_device`` (``assign``; -ERESTART at ``--assign-restart``, continued) and
``XEN_DOMCTL_deassign_device`` (``deassign``), each paced; it destroys and rebuilds a
crashed DomU. The model, one module per design, is ``shm_model/xen/vpci/``.

    stress run --workload vpci-removal-storm
    stress run --workload vpci-removal-storm --variant cancel-pending --schedule pct
    stress run --workload vpci-removal-storm --variant per-domain-rwlock --duration 5m
    stress run --workload vpci-removal-storm --variant upstream --rate remove=200,add=300
"""

from __future__ import annotations

from shm_model.xen.vpci import DESIGNS, EVENTS, KEY_EVENTS, VpciWorld, stale_mappings
from shm_model.xen.vpci.common import DOM0, DOMU, ERESTART, NR_DOMAINS, PCI_COMMAND_MEMORY
from stress.workload import Option, Role, Variant, Violation, Workload, invariant, op

THREAD = "xen-devel 18 Nov 2021 'Re: [PATCH v4 02/11] vpci: cancel pending map/unmap on vpci removal'"

#: what a 4.16 design's race leaves behind once it has happened (reported, never deciding)
AFTERMATH = {
    "bad-unlock": "after the race: spin_unlock(&pdev->vpci->lock) re-reads pdev->vpci, which now names the "
                  "vpci set up for the device's new owner; the lock taken was the freed one's",
    "recursive-locking": "after the race: the freed vpci's lock is still held (the unlock released another "
                         "one), and the CPU takes a vpci lock again",
}

LEFTOVERS = ("frames stay mapped that vPCI does not account for: a map or unmap dropped or cancelled half "
             "done (the thread: 'Note that there might still be leftover mappings'; Jan: draining would be "
             "preferable over canceling), and two vCPUs' map and unmap of one device interleaved chunk by "
             "chunk (the FIXME in defer_map: 'parallel mapping operations ... if the domain is not "
             "well-behaved'); the memory-safety question does not depend on it")


class _Vcpu(Role):
    """A pCPU running one vCPU of ``dom``: guest config-space accesses, each exit returning
    through ``vpci_process_pending``."""

    dom = DOM0
    first_vcpu = 1  # Dom0's vCPU 0 is the toolstack's

    def setup(self, s):
        self.m = DESIGNS[self.variant](s, self.cpu, self.dom, self.first_vcpu + self.index, self.random,
                                       self.options, self.trace)
        self.d = s.domains[self.dom]
        self.n = len(s.alldevs)

    def _enter(self) -> bool:
        """On the way to the guest: pending work first (one chunk; still pending: the vCPU
        stays in Xen and the op ends). True when the guest runs. A crashed domain's
        vCPUs do not run."""
        if self.d.crashed:
            self.cpu.delay(0.0005)
            return False
        return not self.m.vpci_process_pending()

    def _pick(self) -> int:
        """The guest's device: one it owns (its enumerated devices), or any sbdf at 10%."""
        mine = self.m.devices_of(self.dom)
        if mine and self.random.random() >= 0.1:
            return mine[self.random.randrange(len(mine))]
        return self.random.randrange(self.n)

    def _guest(self, fn) -> None:
        v = self.m.v
        v.in_op = 1
        try:
            if self._enter():
                fn()
        finally:
            v.in_op = 0

    @op(weight=4)
    def mmio_write(self, s):
        """The guest writes PCI_COMMAND with memory decoding on or off (vpci_write)."""
        cmd = PCI_COMMAND_MEMORY if self.random.random() < 0.5 else 0
        self._guest(lambda: self.m.vpci_write(self._pick(), cmd))

    @op(weight=1)
    def mmio_read(self, s):
        """The guest reads PCI_COMMAND (vpci_read)."""
        self._guest(lambda: self.m.vpci_read(self._pick()))

    @op(weight=1)
    def resume(self, s):
        """Back to the guest without a config-space access (vpci_process_pending only)."""
        self._guest(lambda: None)


class VpciRemovalStorm(Workload):
    """vPCI: PHYSDEVOP add/remove and assign/deassign racing vpci_process_pending and MMIO."""

    name = "vpci-removal-storm"
    state = VpciWorld
    duration = 30.0
    check_interval = 0.05
    options = {
        "devices": Option(3, "PCI devices (sbdf 0 .. devices-1)", min=1, max=16),
        "dom0-vcpus": Option(1, "Dom0 vCPUs running guest MMIO, besides the toolstack's vCPU 0", min=0, max=8),
        "domu-vcpus": Option(2, "DomU vCPUs", min=1, max=8),
        "bar-frames": Option(8, "frames per BAR (two BARs per device)", min=1, max=64),
        "chunk": Option(2, "frames map_mmio_regions maps before the preemption check says -ERESTART",
                        min=1, max=64),
        "iommu-fail": Option(0.25, "probability that iommu_add_device fails (PHYSDEVOP_pci_device_add)",
                             min=0.0, max=1.0),
        "map-fail": Option(0.002, "probability that a map_mmio_regions call fails (-ENOMEM)", min=0.0, max=1.0),
        "assign-restart": Option(0.2, "probability that the IOMMU assignment returns -ERESTART", min=0.0, max=1.0),
        "hotplug-decoding": Option(0.5, "probability that a hot-plugged device has memory decoding on",
                                   min=0.0, max=1.0),
    }
    variants = [
        Variant("unsynchronised-removal", expect=["null-deref", "use-after-free"], stop="all",
                provenance=f"Xen 4.16 (RELEASE-4.16.0) vpci.c/header.c/pci.c, the code {THREAD} analyses",
                known={"invariant:no-stale-mappings": LEFTOVERS, **AFTERMATH},
                doc="vpci_process_pending, vpci_read/write and the toolstack's vpci_remove_device/free_pdev share "
                    "no lock: crash paths 1-3 of the thread (a NULL pdev->vpci after a failed add, a removal "
                    "during another vCPU's work, MMIO after removal)"),
        Variant("unsynchronised-removal-4.16.3", expect=["use-after-free", "null-deref"], stop="all",
                provenance="Xen 4.16.3 (RELEASE-4.16.3): 4.16 with 96d26f11f5, the stable backport of 6ccb5e308c "
                           "'vpci: don't assume that vpci per-device data exists unconditionally'",
                known={"invariant:no-stale-mappings": LEFTOVERS, **AFTERMATH},
                doc="vpci_read/vpci_write/vpci_remove_device check pdev->vpci for NULL; vpci_process_pending "
                    "still does not, and nothing keeps the pdev or its vpci alive: the removal race itself"),
        Variant("cancel-pending", expect=["use-after-free", "null-deref"], stop="all",
                provenance="[PATCH v4 02/11] vpci: cancel pending map/unmap on vpci removal (5 Nov 2021), as "
                           "posted; never merged",
                known={"invariant:no-stale-mappings": LEFTOVERS, **AFTERMATH},
                doc="vpci_remove_device cancels current's pending work only (Jan: 'Doesn't \"any\" include "
                    "pending work on all vCPU-s of the guest, not just current?'): another vCPU's "
                    "v->vpci.pdev outlives the pdev; the 4.16 paths without a pending map are unchanged"),
        Variant("cancel-pending-all-vcpus", expect=["use-after-free", "null-deref"], stop="all",
                provenance="PROTOCOLS.md's reading of v4 02/11: the cancel walks every vCPU of the domain "
                           "(Oleksandr's reply of 16 Nov 2021 without its vcpu_pause), unsynchronised",
                known={"invariant:no-stale-mappings": LEFTOVERS, **AFTERMATH},
                doc="the canceller frees another vCPU's v->vpci.mem while that vCPU consumes it; the 4.16 "
                    "paths the cancel does not touch (MMIO after a removal, a failed map's "
                    "vpci_remove_device leaving a NULL pdev->vpci on the list) remain"),
        Variant("per-domain-rwlock", expect="clean",
                provenance=f"{THREAD}: Oleksandr's proposal (d->vpci_rwlock, vpci_terminating, write_trylock or "
                           "-ERESTART), with patch 02/11's cancel under the write lock (inferred)",
                known={"invariant:no-stale-mappings": LEFTOVERS},
                doc="readers vpci_read/vpci_write/vpci_process_pending, writer vpci_remove_device; a failed "
                    "mapping crashes a DomU"),
        Variant("upstream", expect="open",
                provenance="Xen 4.19 (RELEASE-4.19.0): 8862c7b8b6 d->pci_lock, 4f78438b45 vPCI under it, "
                           "f20dde9259 vpci_deassign_device, 622bdd9628 per-BAR range sets",
                known={"invariant:no-stale-mappings": LEFTOVERS,
                       "invariant:bar-rangeset-empty": "modify_bars' ASSERT(rangeset_is_empty(bar->mem)) fails "
                       "when two vCPUs of one guest toggle one device's decoding (the FIXME in defer_map: "
                       "'parallel mapping operations ... if the domain is not well-behaved'); a debug build "
                       "panics, a release build merges the ranges"},
                doc="Is the stale v->vpci.pdev re-check of vpci_process_pending ('!pdev->vpci || v->domain != "
                    "pdev->domain' under the read lock) a use-after-free of a pdev that "
                    "PHYSDEVOP_pci_device_remove freed?",
                answer="yes: use-after-free (a read of struct pci_dev's vpci field) in 30 of 30 runs (10 seeds "
                       "free, 10 PCT, 10 PCT with --iommu-fail 0 --map-fail 0; median 0.06-0.08 s), e.g. --seed 2 "
                       "--schedule pct --pct-depth 3 --pct-steps 64 at step 2,089 (replayable). A Dom0 vCPU's "
                       "vpci_write defers a map (defer_map raises SCHEDULE_SOFTIRQ; or its vpci_process_pending "
                       "returned -ERESTART between chunks) and drops d->pci_lock; pci_remove_device takes it for "
                       "writing, vpci_deassign_device leaves v->vpci.pdev alone, list_del, write_unlock, "
                       "free_pdev; the vCPU's next vpci_process_pending takes the read lock and reads "
                       "pdev->vpci of the freed pdev. The value read is the NULL vpci_deassign_device stored, so "
                       "the work is dropped (benign while the memory is not reused: no run saw the slot "
                       "reallocated); once the allocator hands the memory to a new pdev with a vpci in the same "
                       "domain, the re-check passes and (inferred) the vCPU maps or unmaps that device's BARs"),
    ]
    events = EVENTS
    key_events = KEY_EVENTS
    #: inline checks of the model: the upstream ASSERT of modify_bars
    checks = ("bar-rangeset-empty",)

    def setup(self, s):
        """Xen knows no device yet (every one is hot-plugged by the toolstack)."""

    def summary(self, s):
        out = {"mmio writes": s.mmio_writes, "mmio reads": s.mmio_reads, "mmio retried (removal)": s.mmio_retried,
               "defer_map": s.defer_maps, "vpci_process_pending chunks": s.pending_steps,
               "pending work finished": s.pending_done, "pending work dropped (stale)": s.pending_dropped,
               "pending work cancelled": s.pending_cancelled, "frames mapped": s.frames_mapped,
               "frames unmapped": s.frames_unmapped, "map failures": s.map_failures, "adds issued": s.adds,
               "add failures": s.add_failures, "removes": s.removes, "assigns": s.assigns,
               "deassigns": s.deassigns, "-ERESTART continuations": s.restarts,
               "DomU crashes": s.domains[DOMU].crashes, "DomU rebuilt": s.rebuilt,
               "left mapped at deassign (decoding on)": s.left_mapped_at_deassign,
               "checks seeing Dom0 leftovers": s.dom0_leftover_checks,
               "Dom0 leftover frames (max)": s.dom0_leftover_max}
        for name, hp in (("pdev", s.pdevs), ("vpci", s.vpcis), ("rangeset", s.rangesets)):
            st = hp.stats()
            out[f"{name} allocs"] = st["allocs"]
            out[f"{name} max live"] = st["max_live"]
            out[f"{name} pool exhausted"] = st["exhausted"]
        return out

    # -- the guest's vCPUs ----------------------------------------------------------------------
    class dom0(_Vcpu):
        """Dom0's vCPUs 1.. (its drivers' config-space accesses to Dom0's devices)."""

        count = "dom0-vcpus"
        dom = DOM0
        first_vcpu = 1

    class domu(_Vcpu):
        """The DomU's vCPUs (its drivers' accesses to the devices assigned to it)."""

        count = "domu-vcpus"
        dom = DOMU
        first_vcpu = 0

    # -- the toolstack ----------------------------------------------------------------------------
    class toolstack(Role):
        """Dom0's vCPU 0 issuing hypercalls one at a time (its own deferred work runs before
        each, as before a return to its guest); continues -ERESTART; rebuilds a crashed DomU."""

        count = 1

        def setup(self, s):
            self.m = DESIGNS[self.variant](s, self.cpu, DOM0, 0, self.random, self.options, self.trace)
            self.s = s
            self.hotplug = getattr(self.options, "hotplug-decoding")

        def _hypercall(self, pick, call, counter: str) -> None:
            m = self.m
            if m.vpci_process_pending():
                return  # still in Xen finishing its own deferred map: no hypercall this time
            if m.cont is not None:  # the continuation of an -ERESTART hypercall re-enters first
                fn, m.cont = m.cont, None
                self._issue(fn, counter=None)
                return
            m.rebuild_crashed_domains()
            choices = pick()
            if not choices:
                return
            sbdf = choices[self.random.randrange(len(choices))]
            self._issue(lambda: call(sbdf), counter, sbdf)

        def _issue(self, fn, counter: str | None, sbdf: int | None = None) -> None:
            m, s = self.m, self.s
            if sbdf is not None:
                s.busy_sbdf = sbdf
            rc = fn()
            if rc == -ERESTART:
                s.restarts += 1
                self.trace("restart", s.busy_sbdf)
                if m.cont is None:
                    m.cont = fn  # hypercall_create_continuation: the same call again
                return
            s.busy_sbdf = -1
            if counter:
                setattr(s, counter, getattr(s, counter) + 1)

        @op(rate=200)
        def add(self, s):
            """PHYSDEVOP_pci_device_add of a device Xen does not know (or whose add failed);
            a newly plugged device may come with decoding enabled by firmware."""
            def call(sbdf):
                if not s.alldevs[sbdf] and self.random.random() < self.hotplug:
                    s.hw_cmd[sbdf] = PCI_COMMAND_MEMORY
                rc = self.m.pci_add_device(sbdf)
                self.trace("add", sbdf, rc)
                if rc and rc != -ERESTART:
                    s.add_failures += 1
                return rc
            self._hypercall(self.m.addable, call, "adds")

        @op(rate=100)
        def remove(self, s):
            """PHYSDEVOP_pci_device_remove of one of Dom0's devices."""
            def call(sbdf):
                rc = self.m.pci_remove_device(sbdf)
                self.trace("remove", sbdf, rc)
                return rc
            self._hypercall(lambda: self.m.devices_of(DOM0), call, "removes")

        @op(rate=100)
        def assign(self, s):
            """XEN_DOMCTL_assign_device of one of Dom0's devices to the DomU."""
            def call(sbdf):
                rc = self.m.assign_device(DOMU, sbdf)
                self.trace("assign", sbdf, DOMU, rc)
                return rc
            self._hypercall(lambda: [] if s.domains[DOMU].crashed else self.m.devices_of(DOM0), call, "assigns")

        @op(rate=100)
        def deassign(self, s):
            """XEN_DOMCTL_deassign_device of one of the DomU's devices (back to Dom0)."""
            def call(sbdf):
                rc = self.m.deassign_device(DOMU, sbdf)
                self.trace("deassign", sbdf, DOMU, rc)
                return rc
            self._hypercall(lambda: [] if s.domains[DOMU].crashed else self.m.devices_of(DOMU), call, "deassigns")

    # -- invariants ---------------------------------------------------------------------------------
    @invariant("no-stale-mappings")
    def no_stale_mappings(self, s):
        """At quiescence, a live DomU's p2m maps no frame of a device vPCI does not account
        for (removed, deassigned, or with decoding committed off); a crashed DomU is exempt;
        Dom0's leftovers are counted (summary), not failed."""
        bar_frames = getattr(self.opts, "bar-frames")
        bad: list[str] = []
        subject = None
        for dom in range(NR_DOMAINS):
            d = s.domains[dom]
            if dom != DOM0 and d.crashed:
                continue
            found = stale_mappings(s, dom, bar_frames)
            if dom == DOM0:
                if found:
                    s.dom0_leftover_checks += 1
                    s.dom0_leftover_max = max(s.dom0_leftover_max, sum(n for _, n, _ in found))
                continue
            for sbdf, n, why in found:
                subject = sbdf if subject is None else subject
                bad.append(f"sbdf {sbdf}: {n} frames mapped in d{dom}'s p2m, but {why}")
        return Violation("; ".join(bad), subject) if bad else None
