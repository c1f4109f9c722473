"""vcpu-online-race: Xen's PSCI CPU_ON on Arm racing the readers of a vCPU's registers,
under ARMv8 weak memory (seed 002: xen-devel, Feb-Apr 2021, "[PATCH] xen/arm: Ensure the
vCPU context is seen before clearing the _VPF_down", Julien Grall and Stefano Stabellini;
PROTOCOLS.md section 002).

Roles:

- ``caller``: running vCPUs of the guest issuing PSCI CPU_ON for secondary vCPUs
  (``do_common_cpu_on`` -> ``arch_set_info_guest`` -> clear ``_VPF_down`` -> ``vcpu_wake``);
  vCPU ``v`` is onlined by caller ``v % callers``.
- ``waker``: a third party on another pCPU calling ``vcpu_wake`` (an event that unblocks a
  vCPU: ``vcpu_unblock``; or a bare wake: the case Julien "could not rule out").
- ``pcpu``: a scheduler per pCPU: picks a queued vCPU under its schedule lock,
  ``context_switch_to`` restores and checks its registers, the guest runs and blocks
  (WFI), calls PSCI CPU_OFF, or is preempted; ``vcpu_context_saved`` (``smp_wmb``,
  ``is_running = 0``).
- ``toolstack``: ``XEN_DOMCTL_getvcpucontext`` (``is_initialised`` check, [``smp_rmb``],
  ``vcpu_pause`` -> ``vcpu_sleep_sync`` -> ``sync_vcpu_execstate``, ``arch_get_info_guest``,
  ``vcpu_unpause``).

A register read older than the online its reader observed is a ``stale-read`` finding at
the read, with the weak memory's evidence (value read, its writer, the newer messages, the
reordered program-order pair). The model: ``shm_model/xen/vcpu_online/``.

    stress run --workload vcpu-online-race
    stress run --workload vcpu-online-race --variant mb-before-down-clear --schedule pct
    stress run --workload vcpu-online-race --variant wmb-rmb --duration 5m
"""

from __future__ import annotations

from shm_model.xen.vcpu_online import DESIGNS, EVENTS, KEY_EVENTS, VcpuWorld
from stress.workload import Option, Role, Variant, Violation, Workload, invariant, op

THREAD = ("xen-devel Feb-Apr 2021 '[PATCH] xen/arm: Ensure the vCPU context is seen before clearing the "
          "_VPF_down' (Julien Grall, Stefano Stabellini)")


class _Actor(Role):
    def setup(self, s):
        self.m = DESIGNS[self.variant](s, self.cpu, self.wid, self.random, self.options.pcpus, self.trace)
        self.nv = len(s.vcpus)


class VcpuOnlineRace(Workload):
    """PSCI CPU_ON's arch_set_info_guest racing context_switch_to and XEN_DOMCTL_getvcpucontext."""

    name = "vcpu-online-race"
    state = VcpuWorld
    duration = 30.0
    check_interval = 0.0  # the check is inline, at the read (shm_model.xen.vcpu_online.common)
    options = {
        "vcpus": Option(3, "secondary vCPUs cycled by CPU_ON/CPU_OFF", min=1, max=16),
        "pcpus": Option(2, "pCPUs, one scheduler worker each (vCPU v runs on pCPU v % pcpus)", min=1, max=8),
        "callers": Option(1, "running vCPUs issuing PSCI CPU_ON", min=1, max=8),
        "cpu-off": Option(0.3, "probability that a scheduled vCPU calls PSCI CPU_OFF", min=0.0, max=1.0),
        "toolstacks": Option(1, "toolstack workers issuing XEN_DOMCTL_getvcpucontext (0: only the scheduling "
                                "path is exercised)", min=0, max=1),
        "block": Option(0.4, "probability that a scheduled vCPU blocks (WFI) rather than being preempted",
                        min=0.0, max=1.0),
    }
    variants = [
        Variant("upstream", expect="open",
                provenance="Xen 4.15 (RELEASE-4.15.0), unchanged at 4.16 and 4.21: vpsci.c do_common_cpu_on, "
                           "domain.c arch_set_info_guest (no barrier), domctl.c XEN_DOMCTL_getvcpucontext (no "
                           "smp_rmb), Arm sync_vcpu_execstate smp_mb (f679038961)",
                doc="Nothing orders arch_set_info_guest's register stores before is_initialised = 1 or the "
                    "clear of _VPF_down: can context_switch_to or XEN_DOMCTL_getvcpucontext read registers "
                    "older than the online they observed?",
                answer="yes, on both paths: stale-read in 80 of 80 runs (seeds 1-20, free and PCT, with the "
                       "toolstack and with --toolstacks 0; median 0.10-0.13 s PCT, 0.9-1.1 s free, max 13 s). "
                       "Scheduling path, e.g. --toolstacks 0 --seed 1 --schedule pct --pct-depth 3 --pct-steps 64 "
                       "(replayable): the third-party vcpu_wake reads vcpu1's _VPF_down clear for online 28 and "
                       "queues it under the schedule lock; context_switch_to restores arch.ttbr1 of online 27: "
                       "the caller's register store became visible after its clear_bit(_VPF_down) (store-store, "
                       "smp_wmb missing). getvcpucontext path, e.g. --seed 1 with the same PCT options: "
                       "is_initialised (online 8) and _VPF_down became visible before arch.pc, and "
                       "arch_get_info_guest, after vcpu_pause's smp_mb, copies pc of online 7. The reader's "
                       "barrier cannot help: the writer published the flags before the registers"),
        Variant("mb-before-down-clear", expect="stale-read",
                provenance=f"{THREAD}: Julien's first patch (26 Feb 2021), smp_mb() after is_initialised = 1, "
                           "before clear_bit(_VPF_down); never merged",
                doc="the scheduling path is ordered; is_initialised can be seen before the registers, so "
                    "XEN_DOMCTL_getvcpucontext's arch_get_info_guest reads stale registers"),
        Variant("wmb-before-initialised", expect="clean",
                provenance=f"{THREAD}: Julien's revision (20 Mar 2021), smp_wmb() before is_initialised = 1, "
                           "paired with vcpu_pause's sync_vcpu_execstate smp_mb and the schedule lock",
                doc="one writer barrier covers both readers"),
        Variant("wmb-rmb", expect="clean",
                provenance=f"{THREAD}: Julien's revision plus Stefano's smp_rmb() after the is_initialised "
                           "check of XEN_DOMCTL_getvcpucontext (13 Apr 2021)",
                doc="the summary counts whether the extra smp_rmb changed the reader's view (rmb raised the "
                    "read view / a register would have been readable stale at that point)"),
        Variant("wmb-no-pause-mb", expect="stale-read",
                provenance="Julien's revision on Xen 4.14 (RELEASE-4.14.0), before f679038961: Arm "
                           "sync_vcpu_execstate was empty ('Nothing to do -- no lazy switching')",
                doc="the reader's is_initialised load and arch_get_info_guest's register loads are unordered"),
    ]
    events = EVENTS
    key_events = KEY_EVENTS

    def summary(self, s):
        out = {
            "CPU_ON": sum(s.cpu_on), "PSCI_ALREADY_ON": sum(s.already_on), "CPU_OFF": sum(s.cpu_off),
            "context_switch_to": sum(s.switches), "vCPU blocks (WFI)": sum(s.blocks),
            "preemptions": sum(s.preempts), "third-party vcpu_wake": s.wakes, "vcpu_unblock": s.unblocks,
            "getvcpucontext": s.getctx, "getvcpucontext -ENODATA": s.enodata,
            "stale registers at context_switch_to": sum(s.stale_switch),
            "mixed generations at context_switch_to": sum(s.mixed_switch),
            "stale registers at arch_get_info_guest": s.stale_getctx,
            "torn (concurrent CPU_ON, not stale) at arch_get_info_guest": s.torn_getctx,
            "sync_vcpu_execstate: a register readable stale just before it": s.pause_mb_would_be_stale,
        }
        if self.variant == "wmb-rmb":
            out["smp_rmb after is_initialised: raised the read view"] = s.rmb_raised
            out["smp_rmb after is_initialised: a register readable stale just before it"] = s.rmb_would_be_stale
        return out

    # -- roles ------------------------------------------------------------------------------------
    class caller(_Actor):
        """A running vCPU of the guest issuing PSCI CPU_ON for its secondaries."""

        count = "callers"

        @op()
        def cpu_on(self, s):
            mine = [v for v in range(self.nv) if v % self.options.callers == self.index]
            if not mine:
                self.cpu.delay(1e-4)
                return
            vid = mine[self.random.randrange(len(mine))]
            rc = self.m.do_common_cpu_on(vid)
            if rc == 0:
                s.cpu_on[self.index] += 1
            else:
                s.already_on[self.index] += 1
                self.trace("already_on", vid)
                self.cpu.delay(5e-6)

    class waker(_Actor):
        """A third party on another pCPU: an event for a vCPU (vcpu_unblock), or a bare
        vcpu_wake."""

        count = 1

        @op()
        def wake(self, s):
            vid = self.random.randrange(self.nv)
            if self.random.random() < 0.5:
                self.m.vcpu_unblock(vid)
            else:
                s.wakes += 1
                self.m.vcpu_wake(vid)

    class pcpu(_Actor):
        """The scheduler of one pCPU."""

        count = "pcpus"

        @op()
        def schedule(self, s):
            r = self.random.random()
            off = getattr(self.options, "cpu-off")
            if r < off:
                action = "cpu_off"
            elif r < off + (1 - off) * self.options.block:
                action = "block"
            else:
                action = "preempt"
            if not self.m.schedule(self.index, action):
                self.cpu.delay(5e-6)  # idle

    class toolstack(_Actor):
        """Dom0's toolstack: XEN_DOMCTL_getvcpucontext of a random vCPU."""

        count = "toolstacks"

        @op()
        def getvcpucontext(self, s):
            self.m.getvcpucontext(self.random.randrange(self.nv))

    # -- invariants ---------------------------------------------------------------------------------
    @invariant("online-implies-registers")
    def online_implies_registers(self, s):
        """At quiescence (every store buffer drained): a vCPU whose ``is_initialised`` or
        cleared ``_VPF_down`` names generation g holds registers of generation >= g. The
        readers' checks are inline (at the read); this catches a model whose writer lost a
        store."""
        from shm_model.xen.vcpu_online.common import REGS, reg_gen
        for i, v in enumerate(s.vcpus):
            g = max(int(v.is_initialised), 0 if int(v.down) & 1 else int(v.down) >> 1)
            regs = [reg_gen(int(getattr(v, n))) for n in REGS]
            if min(regs) < g:
                return Violation(f"vcpu{i}: online generation {g}, registers of generations {regs}", i)
        return None
