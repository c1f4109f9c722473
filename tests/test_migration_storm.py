"""End to end, real processes: every variant of ``migration-storm`` shows what the C code it
renders does (issue 23; PROTOCOLS.md section 000), and the released versions stay silent on
the thread's question while exercising the racy paths. Controlled runs (PCT, every parameter
pinned): the interleaving is the seed's, so each test is one deterministic run."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli

WL = ["run", "--workload", "migration-storm"]
# the controlled scheduler with every parameter pinned: the interleaving is the seed's, so a
# race test is one deterministic run, not a loop over seeds hoping for the OS's timing
PCT = ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]
# the 4.8 variants without 4.8's other lock bugs: the thread's own races
THREAD_ONLY = ["--backport", "408f16ddb3", "--ienable", "0"]
BASED_ON_48 = ["rank-lock-inversion", "unlocked-target-read", "unlocked-target-read-assert", "old-vcpu-lock",
               "old-vcpu-lock-recheck", "drop-vgic-then-rank"]


@pytest.mark.timeout(120)
def test_48_lr_pending_self_deadlock_report(runs_dir):
    """RELEASE-4.8.0: vgic_migrate_irq's lr_pending branch calls vgic_vcpu_inject_irq under
    vgic_store_itargetsr's rank lock, and vgic_get_virq_priority takes it again."""
    r = run_cli(WL + ["--variant", "rank-lock-inversion", "--seed", "1", "--duration", "30s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert {"recursive-locking", "deadlock"} <= r.outcomes
    text = r.out[r.out.index("WARNING: possible recursive locking detected"):]
    assert "the same lock instance: this context will wait for itself" in text
    dl = r.out[r.out.index("BUG: deadlock: context waits for a lock it holds itself"):]
    for needle in ("(&rank->lock)", "at: Xen480.vgic_get_virq_priority()",
                   "called from OldVgic.vgic_vcpu_inject_irq()", "called from OldVgic.vgic_migrate_irq()", "called from OldVgic.vgic_store_itargetsr()",
                   "*** DEADLOCK ***"):
        assert needle in dl, needle
    assert "migrate_reinject: irq" in dl  # the lr_pending branch ran just before
    assert r.summary["stop_reason"] == "finding"


@pytest.mark.timeout(200)
@pytest.mark.parametrize("variant", BASED_ON_48 + ["xen-stable-4.8"])
def test_every_48_based_variant_self_deadlocks(variant, runs_dir):
    r = run_cli(WL + ["--variant", variant, "--seed", "1", "--duration", "30s"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert r.summary["verdict"]["status"] in ("pass", "open"), r.summary["verdict"]
    assert "recursive-locking" in r.outcomes and "deadlock" in r.outcomes, r.outcomes


@pytest.mark.timeout(120)
def test_48_desc_rank_inversion_from_icenabler(runs_dir):
    """do_IRQ holds desc->lock and takes the rank lock (4.8.0: vgic_get_target_vcpu);
    vgic_disable_irqs takes desc->lock under the MMIO handler's rank lock."""
    r = run_cli(WL + ["--variant", "drop-vgic-then-rank", "--seed", "1", "--duration", "30s", "--backport",
                      "408f16ddb3"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert "lock-order-inversion" in r.outcomes and "deadlock" in r.outcomes, r.outcomes
    graph = {(e["from"], e["to"]) for e in r.summary["graph"]["edges"]}
    assert {("&desc->lock", "&rank->lock"), ("&rank->lock", "&desc->lock")} <= graph
    text = r.out[r.out.index("WARNING: possible circular locking dependency detected"):]
    assert "OldVgic.vgic_disable_irqs()" in text or "OldVgic.vgic_enable_irqs()" in text


@pytest.mark.timeout(120)
def test_rank_lock_inversion_is_the_thread_cycle(runs_dir):
    """The thread's inversion (with 4.8's other lock bugs lifted): vCPU A in gic_update_one_lr
    holds vgic(A) and wants rank; vCPU B in vgic_store_itargetsr holds rank and wants vgic(A)."""
    r = run_cli(WL + ["--variant", "rank-lock-inversion", "--seed", "1", "--duration", "30s"] + THREAD_ONLY + PCT,
                runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert {"lock-order-inversion", "deadlock"} <= r.outcomes
    graph = {(e["from"], e["to"]) for e in r.summary["graph"]["edges"]}
    assert {("&rank->lock", "&v->arch.vgic.lock"), ("&v->arch.vgic.lock", "&rank->lock")} <= graph
    text = r.out[r.out.index("BUG: deadlock"):]
    assert "is waiting for lock:\n  (&rank->lock)" in text and "called from OldVgic.gic_update_one_lr()" in text
    assert "is waiting for lock:\n  (&v->arch.vgic.lock)" in text
    assert "called from OldVgic.vgic_store_itargetsr()" in text and "*** DEADLOCK ***" in text


@pytest.mark.timeout(120)
def test_unlocked_target_read_breaks_affinity_with_the_interleaving(runs_dir):
    r = run_cli(WL + ["--variant", "unlocked-target-read", "--seed", "1", "--duration", "60s"] + THREAD_ONLY + PCT,
                runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert r.summary["verdict"]["found"] == ["invariant:affinity-follows-target"]
    text = r.out[r.out.index("BUG: invariant affinity-follows-target violated"):]
    history = text[text.index("the history of"):text.index("last events")]
    assert history.count("ITARGETSR") >= 2 and "MIGRATING set" in history
    assert "irq_set_affinity ->" in history and "eoi_migrate" in history


@pytest.mark.timeout(120)
def test_unlocked_target_read_assert_is_caught_by_the_assertion(runs_dir):
    r = run_cli(WL + ["--variant", "unlocked-target-read-assert", "--seed", "1", "--duration", "30s"]
                + THREAD_ONLY + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert r.summary["verdict"]["found"] == ["invariant:assert-held"]
    assert "rank" in r.out[r.out.index("assert-held"):]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", ["old-vcpu-lock", "old-vcpu-lock-recheck"])
def test_old_vcpu_lock_renderings_are_open_questions_answered_with_evidence(variant, runs_dir):
    r = run_cli(WL + ["--variant", variant, "--seed", "1", "--duration", "30s"] + THREAD_ONLY + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "open", r.out[-3000:]
    assert f"an open question for {variant}: this run's evidence is the answer" in r.out
    assert "invariant:affinity-follows-target" in r.outcomes


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", ["xen-4.9.0", "xen-4.10.0", "upstream"])
def test_released_versions_are_clean_while_the_race_paths_run(variant, runs_dir):
    r = run_cli(WL + ["--variant", variant, "--seed", "2", "--duration", "60s", "--steps", "200000"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert r.summary["verdict"]["status"] == "pass" and not r.summary["verdict"]["found"]
    assert all(f["known"] for f in r.summary["findings"]), "only the old vGIC's known races may show"
    m = r.summary["model"]
    # not vacuous: migrations in an LR, refusals, injections, EOIs, enables/disables, WFI, re-raises
    assert m["migrations"] > 1000 and m["of IRQs in an LR (MIGRATING)"] > 100 and m["refused migrations"] > 10
    assert m["injections"] > 1000 and m["EOIs"] > 1000 and m["ICENABLER"] > 50 and m["ISENABLER"] > 50
    assert m["WFI blocks"] > 50 and m["gic_raise_inflight_irq updates"] > 10
    assert r.summary["schedule"]["checks"] > 100


@pytest.mark.timeout(120)
def test_hw_irq_lost_is_reported_with_the_window(runs_dir):
    """The GIC's active state ends at the guest's EOI: the IRQ fires again before
    gic_update_one_lr, is injected, and is dropped with its inflight entry (4.10.0 too)."""
    r = run_cli(WL + ["--variant", "xen-4.10.0", "--seed", "1", "--duration", "60s", "--steps", "3000"] + PCT,
                runs_dir)
    lost = [f for f in r.summary["findings"] if f["outcome"] == "invariant:hw-irq-lost"]
    assert lost and lost[0]["known"] and r.code == 0, r.out[-3000:]
    text = r.out[r.out.index("BUG: irq"):]
    history = text[text.index("the history of"):text.index("last events")]
    assert "found it inflight on" in history and "MIGRATING set" in history
    assert "fired again and was injected" in text and "(MIGRATING)" in text


@pytest.mark.timeout(300)
def test_stale_target_injection_is_reported_as_wrong_lock_unlink(runs_dir):
    """The old vGIC's own race (every variant): an IRQ left inflight on a vCPU that is no
    longer its target is unlinked by the next migration holding another vCPU's vgic lock.
    Reported as known (it does not decide the verdict) with the IRQ's history; called a data
    race only when the owner held its lock at that moment."""
    r = run_cli(WL + ["--variant", "xen-4.10.0", "--seed", "2", "--duration", "60s", "--steps", "20000"] + PCT,
                runs_dir, timeout=60)
    known = [f for f in r.summary["findings"] if f["outcome"] == "invariant:vgic-list-lock"]
    assert known, r.out[-2000:]
    assert known[0]["known"] and r.code == 0, r.out
    title = known[0]["title"]
    assert ("modified under the wrong vCPU's lock" in title), title
    i = r.out.index(title)
    text = r.out[i:]
    m = re.search(r"pcpu(\d) unlinks irq (\d+) from vcpu(\d)'s (\w+) without vcpu\3's vgic lock", text)
    assert m, text[:800]
    owner = int(m.group(3))
    end = text.index("the history of") if "the history of" in text else text.index("last events")
    held = text[text.index("held:"):end]
    assert f"vcpus[{owner}].lock" not in held and "vcpus[" in held, held
    assert ("data race" in title) == ("while vcpu" in text[:text.index("held:")])
    assert "known for this variant" in r.out


def test_lpi_hooks_leave_the_spi_state_alone():
    """issue 25 reuses the old VGIC for LPIs: a state without an ``lpis`` option (migration-storm)
    gets no LPI list slots, and an SPI's list entry is still 1; lpi-discard-storm's state puts
    its LPIs after the SPIs."""
    from types import SimpleNamespace as NS

    from shm_model.layout import attach, plan_struct
    from shm_model.xen.old_vgic.common import LPI_OFFSET, OldVgic, OldVgicDomain

    def state(struct, **o):
        plan = plan_struct(struct, NS(**o))
        mv = memoryview(bytearray(8 * plan.words)).cast("q")
        return attach(plan.node, mv, 0, [object() for _ in plan.locks])

    d = state(OldVgicDomain, vcpus=2, spis=8, lrs=4)
    vv = d.vcpus[0]
    assert len(vv.inflight) == len(vv.lr_pending) == 8 and len(vv.lr_pending_p) == 0
    vg = OldVgic.__new__(OldVgic)
    vg.d, vg.nr_spis = d, 8
    assert vg._idx(32) == 0 and vg._idx(39) == 7 and vg._idx(LPI_OFFSET + 2) == 10
    vg._list_add_inflight(1, 35)
    assert list(d.vcpus[1].inflight) == [0, 0, 0, 1, 0, 0, 0, 0] and d.pending[3].inflight == 1

    from shm_model.xen.lpi import LpiDomain
    d = state(LpiDomain, vcpus=2, spis=1, lrs=4, devices=2, events=4, lpis=8)
    assert len(d.vcpus[0].inflight) == 9 and len(d.vcpus[0].lr_pending_p) == 8


@pytest.mark.timeout(180)
def test_moving_vcpus_take_gicv2_lock_with_interrupts_on(runs_dir):
    """--move-rate: vCPUs move between pCPUs (vcpu_migrate, idle pCPUs stealing) and
    arch_move_irqs re-routes their SPIs after each move, with interrupts on (schedule() and
    context_saved run it after enabling them); gicv2.lock is HARDIRQ-safe (taken under the
    vgic lock, and in interrupt context through gic_raise_inflight_irq -> gic_update_one_lr ->
    irq_set_affinity), so lockdep's report names it. The same seed with pinned vCPUs takes
    gicv2.lock with interrupts off only."""
    moving = run_cli(WL + ["--variant", "xen-4.10.0", "--seed", "1", "--duration", "60s", "--steps", "20000",
                           "--move-rate", "2000"] + PCT, runs_dir)
    assert moving.code == 1, moving.out[-3000:]
    model = moving.summary["model"]
    assert model["vCPU moves (vcpu_migrate)"] > 0 and model["idle pCPU steals"] > 0, model
    assert model["arch_move_irqs affinity writes"] > 0, model
    assert "irq-lock-inversion" in moving.outcomes and "recursive-locking" not in moving.outcomes, moving.outcomes
    text = moving.out[moving.out.index("WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected"):]
    text = text[:text.index("\n====")]
    unsafe = text[text.index("(&gicv2.lock) is HARDIRQ-unsafe: taken with interrupts enabled at "
                             "OldVgic.irq_set_affinity()"):]
    # the usage's stack: the scheduler's sched_move_irqs -> arch_move_irqs, as lockdep prints it
    assert unsafe.splitlines()[1].strip().startswith("called from OldVgic.arch_move_irqs()"), unsafe[:600]
    assert "called from CreditScheduler." in unsafe.split("\n\n")[0], unsafe[:600]
    assert "arch_move_irqs(vcpu" in text  # the trace: arch_move_irqs ran just before
    assert moving.summary["verdict"]["status"] == "fail"  # xen-4.10.0 expects clean: not with moving vCPUs

    pinned = run_cli(WL + ["--variant", "xen-4.10.0", "--seed", "1", "--duration", "60s", "--steps", "20000"] + PCT,
                     runs_dir)
    assert pinned.code == 0 and not {"irq-lock-inversion", "inconsistent-lock-state"} & pinned.outcomes, pinned.outcomes
    assert "vCPU moves (vcpu_migrate)" not in pinned.summary["model"]
