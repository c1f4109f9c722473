"""Design ``upstream``: what Xen ships.

- ``do_common_cpu_on`` (xen/arch/arm/vpsci.c, RELEASE-4.15.0; the same at 4.16 and 4.21):
  ``test_bit(_VPF_down)`` without a lock (else ``PSCI_ALREADY_ON``), ``domain_lock(d)``,
  ``arch_set_info_guest(v, ctxt)``, ``domain_unlock(d)``, ``vcpu_wake(v)``.
- ``arch_set_info_guest`` (xen/arch/arm/domain.c, 4.15/4.16/4.21; today
  ``arch_vcpu_apply_guest_context``): ``vcpu_regs_user_to_hyp``, ``v->arch.sctlr/ttbr0/
  ttbr1/ttbcr = ...``, ``v->is_initialised = 1``, ``clear_bit(_VPF_down, &v->pause_flags)``
  — no barrier anywhere (Julien's patch of 26 Feb 2021 was never merged).
- ``XEN_DOMCTL_getvcpucontext`` (xen/common/domctl.c, 4.15): ``if ( !v->is_initialised )
  goto out`` (-ENODATA), no barrier, ``vcpu_pause(v)``, ``arch_get_info_guest(v, c)``
  (xen/arch/arm/domctl.c: copies ``v->arch`` registers), ``vcpu_unpause(v)``.
- ``vcpu_pause`` -> ``vcpu_sleep_sync`` (xen/common/sched/core.c): ``vcpu_sleep_nosync``,
  ``while ( !vcpu_runnable(v) && v->is_running ) cpu_relax();``, ``sync_vcpu_execstate(v)``:
  on Arm ``smp_mb()`` since f679038961 ("xen/arm: sched: Ensure the vCPU context is seen
  before vcpu_pause() returns", Sep 2020, in 4.15 and 4.21). c3f76328d5 (4.22-rc1) moved it
  to an ``smp_rmb()`` in common ``vcpu_sleep_sync``; for the loads after it the two order
  the same, so one model stands for both.
- ``vcpu_context_saved`` (sched/core.c, 4.15): ``smp_wmb(); vprev->is_running = false``.
- ``do_psci_cpu_off`` (vpsci.c): ``test_and_set_bit(_VPF_down)``, ``vcpu_sleep_nosync``.
- ``vcpu_unblock`` (xen/include/xen/sched.h): ``test_and_clear_bit(_VPF_blocked)`` then
  ``vcpu_wake``; ``vcpu_block`` (sched/core.c): ``set_bit(_VPF_blocked)``, deschedule.

The barrier hooks of :class:`~.common.VcpuCpu` are all empty but ``sync_vcpu_execstate``.
The other designs subclass this one and override only their barriers.

Locking order (no path holds two locks at once):

    d->domain_lock          do_common_cpu_on, around arch_set_info_guest
    sched_lock[pcpu]        vcpu_wake, vcpu_sleep_nosync, schedule's pick and deschedule
"""

from __future__ import annotations

from ...spinlock import spin_lock, spin_unlock
from ...weak import (WM_ENTRY, loc_of, set_bit, smp_mb, smp_wmb, test_and_clear_bit, value,
                      xchg)
from .common import ENODATA, PSCI_ALREADY_ON, PSCI_SUCCESS, REGS, VcpuCpu, reg_gen, reg_value


class Upstream(VcpuCpu):
    """Xen as shipped (see the module's docstring)."""

    name = "upstream"

    # -- the barriers ----------------------------------------------------------------------------
    def sync_vcpu_execstate(self, v, seen):
        """Arm ``sync_vcpu_execstate`` since f679038961: ``smp_mb()``."""
        self.measure_floor(v, seen, "pause_mb_would_be_stale")
        smp_mb(self.cpu)

    def measure_floor(self, v, seen: int, counter: str) -> bool:
        """Before a reader's barrier: could a register load issued now return a value older
        than generation ``seen``? (The oldest message each register's load may read at this
        CPU's current read floor.) Counted in ``counter``; changes nothing."""
        wm = self.cpu.wm
        if wm is None or not seen:
            return False
        for name in REGS:
            loc = loc_of(v, name)
            # the load's floor: coherence with this CPU's last access of the register and
            # its read view (MemCpu.floor)
            t = wm.wm.words.snapshot(loc, wm.floor(loc))
            if len(t) >= WM_ENTRY and reg_gen(t[len(t) - WM_ENTRY]) < seen:
                setattr(self.s, counter, getattr(self.s, counter) + 1)
                return True
        return False

    # -- PSCI (xen/arch/arm/vpsci.c) ---------------------------------------------------------------
    def do_common_cpu_on(self, vid: int) -> int:
        """PSCI CPU_ON of vCPU ``vid`` from a running vCPU of the domain."""
        s = self.s
        v = s.vcpus[vid]
        if not (value(v.down) & 1):  # !test_bit(_VPF_down, &v->pause_flags)
            return PSCI_ALREADY_ON
        gen = v.next_gen + 1
        spin_lock(s.domain_lock)
        self.arch_set_info_guest(vid, gen)
        spin_unlock(s.domain_lock)
        self.trace("cpu_on", vid, self.wid, gen)
        self.vcpu_wake(vid)
        return PSCI_SUCCESS

    def arch_set_info_guest(self, vid: int, gen: int) -> None:
        """xen/arch/arm/domain.c ``arch_set_info_guest`` with ``ctxt->flags = VGCF_online``."""
        v = self.s.vcpus[vid]
        v.next_gen = gen  # ghost records for the evidence (plain)
        v.set_by = self.wid
        # vcpu_regs_user_to_hyp(v, regs); v->arch.sctlr = ctxt->sctlr; ... v->arch.ttbcr = ...
        v.pc = reg_value(gen, 0)
        v.cpsr = reg_value(gen, 1)
        v.x0 = reg_value(gen, 2)
        v.sctlr = reg_value(gen, 3)
        v.ttbr0 = reg_value(gen, 4)
        v.ttbr1 = reg_value(gen, 5)
        v.ttbcr = reg_value(gen, 6)
        self.barrier_before_initialised()
        v.is_initialised = gen  # v->is_initialised = 1 (ghost: the generation)
        self.barrier_before_down_clear()
        v.down = gen << 1  # clear_bit(_VPF_down, &v->pause_flags)

    def do_psci_cpu_off(self, vid: int, gen: int) -> None:
        """``do_psci_cpu_off`` on the vCPU itself: ``test_and_set_bit(_VPF_down)``,
        ``vcpu_sleep_nosync``; then (inferred, so vCPUs cycle) ``is_initialised = 0``."""
        v = self.s.vcpus[vid]
        xchg(self.cpu, loc_of(v, "down"), (gen << 1) | 1)  # test_and_set_bit: STLXR + DMB ISH (fully ordered)
        self.vcpu_sleep_nosync(vid)
        v.is_initialised = 0
        self.trace("cpu_off", vid, gen)

    # -- the scheduler on pCPU ``p`` ------------------------------------------------------------
    def schedule(self, p: int, action: str) -> bool:
        """One pass of ``schedule()`` on pCPU ``p``: pick a queued vCPU under the schedule
        lock, mark it running, ``context_switch`` -> ``context_switch_to`` (restore and check
        its registers), the guest runs and then blocks (WFI), turns itself off (CPU_OFF) or
        is preempted; the deschedule; ``vcpu_context_saved``. False when nothing is queued."""
        s = self.s
        lk = s.sched_lock[p]
        nv = len(s.vcpus)
        start = self.rng.randrange(nv)
        spin_lock(lk)
        vid = -1
        for k in range(nv):
            c = (start + k) % nv
            if self.home(c) == p and s.vcpus[c].on_runq:
                vid = c
                break
        if vid < 0:
            spin_unlock(lk)
            return False
        v = s.vcpus[vid]
        v.on_runq = 0
        seen = v.runq_gen
        self.observed = ("vcpu_wake" if v.runq_by != self.wid else "deschedule", int(v.runq_by), "down",
                         int(v.runq_ts))
        v.is_running = 1
        spin_unlock(lk)
        gen = self.context_switch_to(p, vid, seen)
        self.observed = None
        # the guest runs
        self.cpu.delay(self.rng.random() * 20e-6)
        if action == "cpu_off":
            self.do_psci_cpu_off(vid, gen)
            s.cpu_off[p] += 1
        elif action == "block":
            set_bit(self.cpu, 0, loc_of(v, "blocked"))  # vcpu_block: set_bit(_VPF_blocked, &v->pause_flags)
            s.blocks[p] += 1
        else:
            s.preempts[p] += 1
        # the deschedule, under the schedule lock: a vCPU still runnable goes back on the
        # run queue; one that is not leaves it (sched_sleep), even if a wake queued it while
        # it ran
        spin_lock(lk)
        ok, g = self.vcpu_runnable(v)
        if ok:
            if not v.on_runq:
                v.on_runq = 1
                v.runq_gen = g
                v.runq_by = self.wid
                v.runq_ts = self.read_ts(v, "down")
        else:
            v.on_runq = 0
        spin_unlock(lk)
        # ctxt_switch_from saves the registers (unchanged here), then:
        self.vcpu_context_saved(p, vid)
        return True

    def context_switch_to(self, p: int, vid: int, seen: int) -> int:
        """``context_switch`` -> ``ctxt_switch_to`` (xen/arch/arm/domain.c): restore every
        register of ``vid``; they must belong to one generation no older than the online the
        pick observed (``seen``, through the schedule lock)."""
        s = self.s
        v = s.vcpus[vid]
        self.last_stale = False
        f, c = "context_switch_to", self.check_register
        # ctxt_switch_to: the guest's registers are restored from v->arch
        gens = [c(v, vid, 0, v.pc, seen, f), c(v, vid, 1, v.cpsr, seen, f), c(v, vid, 2, v.x0, seen, f),
                c(v, vid, 3, v.sctlr, seen, f), c(v, vid, 4, v.ttbr0, seen, f), c(v, vid, 5, v.ttbr1, seen, f),
                c(v, vid, 6, v.ttbcr, seen, f)]
        if self.last_stale:
            s.stale_switch[p] += 1
        if len(set(gens)) > 1:
            s.mixed_switch[p] += 1
        s.switches[p] += 1
        self.trace("switch_to", vid, p, min(gens))
        return max(gens)

    def vcpu_context_saved(self, p: int, vid: int) -> None:
        """``vcpu_context_saved`` (sched/core.c): "Clear running flag /after/ writing context
        to memory": ``smp_wmb(); vprev->is_running = false``."""
        smp_wmb(self.cpu)
        self.s.vcpus[vid].is_running = 0
        self.trace("saved", vid, p)

    # -- a third party ----------------------------------------------------------------------------
    def vcpu_unblock(self, vid: int) -> None:
        """``vcpu_unblock``: ``if ( test_and_clear_bit(_VPF_blocked, &v->pause_flags) )
        vcpu_wake(v)`` (an event for the vCPU)."""
        v = self.s.vcpus[vid]
        if test_and_clear_bit(self.cpu, 0, loc_of(v, "blocked")):  # fully ordered (arm64 bitops)
            self.s.unblocks += 1
            self.vcpu_wake(vid)

    # -- the toolstack: XEN_DOMCTL_getvcpucontext (xen/common/domctl.c) -------------------------
    def getvcpucontext(self, vid: int) -> int:
        s = self.s
        v = s.vcpus[vid]
        seen = value(v.is_initialised)
        if not seen:
            s.enodata += 1
            self.trace("enodata", vid)
            return -ENODATA
        self.observed = ("XEN_DOMCTL_getvcpucontext", self.wid, "is_initialised", self.read_ts(v, "is_initialised"))
        self.barrier_after_initialised_check(v, seen)
        self.vcpu_pause(vid, seen)
        gens = self.arch_get_info_guest(vid, seen)
        self.observed = None
        self.vcpu_unpause(vid)
        s.getctx += 1
        self.trace("getctx", vid, seen, min(gens))
        return 0

    def vcpu_pause(self, vid: int, seen: int) -> None:
        """``vcpu_pause``: ``atomic_inc(&v->pause_count)``, ``vcpu_sleep_sync(v)``."""
        v = self.s.vcpus[vid]
        v.pause_count += 1
        self.vcpu_sleep_sync(vid, seen)

    def vcpu_sleep_sync(self, vid: int, seen: int) -> None:
        """``vcpu_sleep_sync``: ``vcpu_sleep_nosync``; ``while ( !vcpu_runnable(v) &&
        v->is_running ) cpu_relax();``; ``sync_vcpu_execstate(v)``."""
        v = self.s.vcpus[vid]
        self.vcpu_sleep_nosync(vid)
        while value(v.is_running):
            self.cpu.delay(2e-6)  # cpu_relax()
        self.sync_vcpu_execstate(v, seen)

    def arch_get_info_guest(self, vid: int, seen: int) -> list[int]:
        """xen/arch/arm/domctl.c ``arch_get_info_guest``: copy the registers out."""
        s = self.s
        v = s.vcpus[vid]
        self.last_stale = False
        f, c = "arch_get_info_guest", self.check_register
        # ctxt->user_regs = v->arch...; ctxt->sctlr = v->arch.sctlr; ...
        gens = [c(v, vid, 0, v.pc, seen, f), c(v, vid, 1, v.cpsr, seen, f), c(v, vid, 2, v.x0, seen, f),
                c(v, vid, 3, v.sctlr, seen, f), c(v, vid, 4, v.ttbr0, seen, f), c(v, vid, 5, v.ttbr1, seen, f),
                c(v, vid, 6, v.ttbcr, seen, f)]
        if self.last_stale:
            s.stale_getctx += 1
        elif len(set(gens)) > 1:
            s.torn_getctx += 1
        return gens

    def vcpu_unpause(self, vid: int) -> None:
        """``vcpu_unpause``: ``if ( atomic_dec_and_test(&v->pause_count) ) vcpu_wake(v)``."""
        v = self.s.vcpus[vid]
        v.pause_count -= 1
        if v.pause_count == 0:
            self.vcpu_wake(vid)
