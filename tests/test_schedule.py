"""Unit tests of the vCPU scheduler model (shm_model/xen/schedule.py), in one process: the
pinned scheduler keeps each vCPU on its pCPU; the credit scheduler moves the running vCPU
(vcpu_migrate), lets an idle pCPU steal a waiting one (csched_load_balance), calls
sched_move_irqs after every change of ``v->processor``, and never lets a vCPU that is being
migrated be stolen. Real arena, real schedule locks, fake engine hooks."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from shm_model.arena import Arena, Geometry, new_run_id
from shm_model.cpu import Cpu
from shm_model.layout import AttachCtx, attach, plan_struct
from shm_model.spinlock import Lock, spin_is_locked
from shm_model.xen.schedule import IDLE, CreditScheduler, PinnedScheduler, SchedDomain, init_pinned
from test_spinlock import FakeHooks


class Rig:
    """``struct`` (SchedDomain, or a domain that nests one as ``sched``) for ``vcpus``
    pCPUs/vCPUs over a real arena, its locks bound to one Cpu (worker 0)."""

    def __init__(self, struct: type = SchedDomain, **options: int) -> None:
        options.setdefault("vcpus", 2)
        plan = plan_struct(struct, NS(**options))
        classes = sorted({d.cls for d in plan.locks})
        self.geo = Geometry(options["vcpus"], len(plan.locks), len(classes), plan.words, trace_events=64)
        self.arena = Arena(new_run_id(), self.geo)
        mv = self.arena.mv
        for off, val in plan.inits:
            mv[self.geo.state + off] = val
        self.locks = [Lock(i, classes.index(d.cls), d.cls, d.path, self.arena.sems[i], mv, self.geo)
                      for i, d in enumerate(plan.locks)]
        self.d = attach(plan.node, mv, self.geo.state, self.locks, ctx=AttachCtx(aux=self.arena.aux))
        self.sd = self.d if struct is SchedDomain else self.d.sched
        self.hooks = FakeHooks()
        self.cpu = Cpu(mv, self.geo, 0, self.hooks)
        for lk in self.locks:
            lk.bind(self.cpu)
        init_pinned(self.sd)
        self.events: list[tuple] = []
        self.moved: list[int] = []

    def trace(self, event: str, a: int = 0, b: int = 0, c: int = 0) -> None:
        self.events.append((event, a, b, c))

    def credit(self, pcpu: int, move_ns: int, draws: list[float]) -> CreditScheduler:
        it = iter(draws)
        return CreditScheduler(self.sd, pcpu, self.trace, move_ns, lambda: next(it), self.moved.append)

    def no_lock_held(self) -> bool:
        return not any(spin_is_locked(p.schedule_lock) for p in self.sd.pcpus)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.arena.destroy()


def test_pinned_vcpu_stays_blocks_and_wakes_on_its_timer(rig):
    s = PinnedScheduler(rig.sd, 1, rig.trace)
    assert s.current == 1 and s.processor(1) == 1 and s.schedule(100) == 1
    assert s.vcpu_block(1, 500, lambda: True) is False and s.current == 1  # an event pending: not blocked
    assert s.vcpu_block(1, 500, lambda: False) is True and s.current == IDLE
    assert s.schedule(499) == IDLE  # the timer is not due: the pCPU idles
    assert s.schedule(500) == 1 and s.current == 1 and rig.sd.kicks == 1
    assert rig.events == [("block", 1, 0, 0), ("kick", 1, 0, 0)] and rig.no_lock_held()


def test_running_vcpu_moves_and_an_idle_pcpu_steals_it_back(rig):
    sd = rig.sd
    # pCPU 0: the first draw sets the first move due at 10 + 2 * 0.5 * 1000 ns; the next
    # draws: the following move's time, then pick_cpu (the only other pCPU)
    s0 = rig.credit(0, 1000, [0.5, 0.9, 0.3, 0.9])
    assert s0.schedule(10) == 0 and s0.schedule(1009) == 0  # not due yet: vCPU 0 keeps running
    assert rig.events == [] and rig.moved == []
    # due: vCPU 0 is switched out (_VPF_migrating), pCPU 0 has nothing else to run, and
    # context_saved -> vcpu_migrate moves it to pCPU 1, where it waits behind vCPU 1
    assert s0.schedule(1010) == IDLE and sd.vcpus[0].processor == 1 and sd.pcpus[0].current == IDLE
    assert s0.schedule(1011) == 0  # idle pCPU 0 steals it back
    assert ("vcpu_migrate", 0, 0, 1) in rig.events and ("vcpu_steal", 0, 1, 0) in rig.events
    assert rig.moved == [0, 0]  # sched_move_irqs after each change of v->processor
    assert sd.migrations == 1 and sd.steals == 1 and sd.vcpus[0].processor == 0 and sd.pcpus[0].curr == 0
    assert not sd.vcpus[0].migrating and rig.no_lock_held()


def test_moved_vcpu_waits_on_its_new_pcpu_and_is_switched_to(rig):
    sd = rig.sd
    sd.vcpus[0].processor = 1  # as if vcpu_migrate had moved vCPU 0 to pCPU 1 and pCPU 0 were busy elsewhere
    sd.pcpus[0].curr = IDLE
    sd.pcpus[1].slice_end = 15
    s1 = rig.credit(1, 10**12, [0.9, 0.9])
    assert s1.schedule(10) == 1  # vCPU 1 keeps its slice
    sd.pcpus[1].slice_end = 0
    assert s1.schedule(20) == 0 and sd.switches == 1  # the slice ended: round robin to vCPU 0
    assert ("vcpu_switch", 1, 0, 1) in rig.events and rig.moved == []  # a switch is no move


def test_a_vcpu_being_migrated_is_not_stolen(rig):
    sd = rig.sd
    sd.vcpus[0].processor = 1
    sd.vcpus[0].migrating = 1  # _VPF_migrating: vcpu_migrate has not moved it yet
    sd.pcpus[0].curr = IDLE
    s0 = rig.credit(0, 10**12, [0.9])
    assert s0.schedule(10) == IDLE and sd.steals == 0 and sd.vcpus[0].processor == 1
    sd.vcpus[0].migrating = 0
    assert s0.schedule(20) == 0 and sd.steals == 1 and rig.moved == [0]


def test_blocked_vcpu_is_woken_by_its_timer_on_its_processor_only(rig):
    sd = rig.sd
    s0 = rig.credit(0, 10**12, [0.9])
    assert s0.vcpu_block(0, 50, lambda: False)
    assert s0.schedule(10) == IDLE  # blocked and nothing to steal (vCPU 1 runs on pCPU 1)
    sd.vcpus[1].blocked, sd.vcpus[1].wake_at = 1, 5  # vCPU 1 is pCPU 1's: pCPU 0 does not fire its timer
    assert s0.schedule(60) == 0 and sd.vcpus[1].blocked == 1 and sd.kicks == 1
    s0.vcpu_unblock(1)  # an injection wakes it: vcpu_wake under pCPU 1's lock
    assert sd.vcpus[1].blocked == 0 and sd.kicks == 2 and rig.no_lock_held()


@pytest.mark.parametrize("reroute", [True, False])
def test_affinity_invariant_needs_arch_move_irqs_after_a_move(reroute):
    """migration-storm's affinity-follows-target compares desc->affinity with the pCPU of the
    target vCPU: after vCPU 0 moves to pCPU 1, arch_move_irqs re-routes its SPIs and the
    invariant holds; a scheduler that moved it without sched_move_irqs leaves them on pCPU 0,
    and the invariant says which."""
    from shm_model.xen.old_vgic import OldVgicDomain, make_vgic
    from workloads.migration_storm import MigrationStorm

    rig = Rig(OldVgicDomain, spis=4, lrs=2)
    try:
        d = rig.d
        wl = MigrationStorm.__new__(MigrationStorm)
        wl.opts, wl.variant = NS(backport=""), "xen-4.10.0"
        MigrationStorm.setup(wl, d)  # SPIs 32, 34 on vCPU 0 and 33, 35 on vCPU 1; affinity = their pCPU
        draws = iter([0.5, 0.9, 0.3])
        vg = make_vgic("xen-4.10.0", d, rig.cpu, rig.trace, pcpu=0, move_ns=1000, rand=lambda: next(draws))
        if not reroute:
            vg.sched.on_move = rig.moved.append
        assert MigrationStorm.affinity_follows_target(wl, d) is None
        vg.sched.schedule(10)
        assert vg.sched.schedule(1010) == IDLE and d.sched.vcpus[0].processor == 1  # vcpu_migrate(0) -> pCPU 1
        moved = [(e[1], e[3]) for e in rig.events if e[0] == "move_irq"]
        bad = MigrationStorm.affinity_follows_target(wl, d)
        if reroute:
            assert moved == [(32, 1), (34, 1)] and [d.descs[i].affinity for i in range(4)] == [1, 1, 1, 1]
            assert bad is None and d.moved_irqs == 2
        else:
            assert moved == [] and rig.moved == [0]
            assert "irq 32: rank->vcpu = vcpu0, on pcpu1, but desc->affinity = pcpu0" in bad.message
            assert "irq 34:" in bad.message and "irq 33" not in bad.message and bad.subject == 32
    finally:
        rig.arena.destroy()
