"""``vpci-removal-storm``: every design of PROTOCOLS.md section 001 run end to end as real
processes (the buggy ones under the controlled scheduler with pinned PCT seeds, so a test is
one deterministic interleaving, not a loop over seeds hoping for the OS's timing), and the
invariant's logic on a hand-built state."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from conftest import run_cli
from shm_model.layout import AttachCtx, attach, plan_struct
from shm_model.xen.vpci import DESIGNS, VpciWorld, stale_mappings
from shm_model.xen.vpci.common import NR_BARS
from workloads.vpci_removal_storm import VpciRemovalStorm

WL = ["run", "--workload", "vpci-removal-storm"]
# every parameter of the controlled scheduler pinned: the interleaving is the seed's
PCT = ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]


def _splat(out: str, title: str) -> str:
    """The report that starts with ``title``, up to the next one."""
    i = out.index(title)
    j = out.find("==================================================================\n\n", i)
    return out[i:j if j > 0 else None]


def _kasan_uaf(r, function: str, ctype: str) -> str:
    """The KASAN report of a use-after-free in ``function`` of a ``ctype`` object."""
    assert "use-after-free" in r.outcomes, r.out[-3000:]
    text = _splat(r.out, f"BUG: KASAN: use-after-free in {function}()")
    assert "Allocated by worker" in text and "Freed by worker" in text, text
    assert f"The buggy address belongs to the object of type {ctype}" in text, text
    return text


@pytest.mark.timeout(60)
def test_unsynchronised_removal_reads_a_pdev_that_pci_remove_device_freed(runs_dir):
    """Crash path 2/3 of the thread: a vCPU's deferred map outlives the pdev. The report is
    KASAN's: the access in vpci_process_pending, the pdev allocated by pci_add_device and
    freed by pci_remove_device on the toolstack, both with their call chains."""
    r = run_cli(WL + ["--variant", "unsynchronised-removal", "--seed", "1", "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    text = _kasan_uaf(r, "UnsynchronisedRemoval.vpci_process_pending", "struct pci_dev")
    alloc = text[text.index("Allocated by"):text.index("Freed by")]
    freed = text[text.index("Freed by"):]
    assert "(toolstack" in alloc and "alloc_pdev()" in alloc and "pci_add_device()" in alloc
    assert "(toolstack" in freed and "free_pdev()" in freed and "pci_remove_device()" in freed
    assert "(field vpci)" in text
    assert "controlled scheduler: at step" in r.out and r.summary["stop_reason"] == "finding"


@pytest.mark.timeout(60)
def test_unsynchronised_removal_crash_path_1_failed_add_leaves_a_null_vpci(runs_dir):
    """Crash path 1: PHYSDEVOP_pci_device_add's init_bars defers a map on the toolstack's
    own vCPU, iommu_add_device fails, vpci_remove_device NULLs pdev->vpci; that vCPU's
    vpci_process_pending then takes v->vpci.pdev->vpci->lock: a NULL dereference."""
    r = run_cli(WL + ["--variant", "unsynchronised-removal", "--seed", "1", "--duration", "20s",
                      "--iommu-fail", "1", "--hotplug-decoding", "1", "--dom0-vcpus", "0", "--map-fail", "0"] + PCT,
                runs_dir)
    assert r.code == 0 and r.summary["verdict"]["found"] == ["null-deref"], r.out[-3000:]
    text = _splat(r.out, "BUG: kernel NULL pointer dereference")
    assert "(toolstack" in text and "field lock of struct vpci through a NULL struct vpci *" in text
    assert "UnsynchronisedRemoval.vpci_process_pending()" in text
    assert r.summary["model"]["add failures"] >= 1 and r.summary["model"]["defer_map"] >= 1


@pytest.mark.timeout(60)
def test_the_4_16_3_null_checks_leave_the_removal_race(runs_dir):
    """Xen 4.16.3's backport 96d26f11f5 sends vpci_read/vpci_write to the hardware when
    pdev->vpci is NULL and makes vpci_remove_device return: crash path 1 through them is
    gone (the same pinned run as above shows no NULL dereference in them), but a vCPU's
    deferred map still outlives the pdev."""
    r = run_cli(WL + ["--variant", "unsynchronised-removal-4.16.3", "--seed", "1", "--duration", "20s"] + PCT,
                runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    _kasan_uaf(r, "UnsynchronisedRemoval.vpci_process_pending", "struct pci_dev")
    assert "NULL pointer dereference in vpci_remove_device" not in r.out


@pytest.mark.timeout(60)
def test_cancel_pending_fixes_crash_path_1_but_not_other_vcpus_work(runs_dir):
    """v4 02/11 as posted cancels current's work: crash path 1 (the same options as above)
    no longer dereferences NULL on the toolstack's vCPU; a Dom0 vCPU's pending work on a
    device pci_remove_device frees is still read after the free."""
    fixed = run_cli(WL + ["--variant", "cancel-pending", "--seed", "1", "--duration", "2s", "--iommu-fail", "1",
                          "--hotplug-decoding", "1", "--dom0-vcpus", "0", "--map-fail", "0", "--steps", "20000"]
                    + PCT, runs_dir)
    assert not fixed.summary["findings"], fixed.out[-3000:]  # every add failed after a defer_map: nothing
    assert fixed.summary["model"]["pending work cancelled"] > 0 and fixed.summary["model"]["add failures"] > 0
    r = run_cli(WL + ["--variant", "cancel-pending", "--seed", "1", "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    text = _kasan_uaf(r, "UnsynchronisedRemoval.vpci_process_pending", "struct pci_dev")
    assert "(dom0" in text.splitlines()[1] and "pci_remove_device()" in text[text.index("Freed by"):]


@pytest.mark.timeout(60)
def test_cancel_pending_all_vcpus_frees_the_range_set_under_its_consumer(runs_dir):
    """PROTOCOLS.md's reading (the walk over every vCPU, no vcpu_pause): the toolstack's
    vpci_remove_device frees a DomU vCPU's v->vpci.mem while that vCPU's
    vpci_process_pending is inside rangeset_consume_ranges (failure injection off, so
    nothing else ends the run first)."""
    r = run_cli(WL + ["--variant", "cancel-pending-all-vcpus", "--seed", "1", "--duration", "20s",
                      "--iommu-fail", "0", "--map-fail", "0"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    text = _kasan_uaf(r, "VpciCpu.rangeset_consume_ranges", "struct rangeset")
    assert "UnsynchronisedRemoval.vpci_process_pending()" in text.split("Allocated by")[0]
    freed = text[text.index("Freed by"):]
    assert "(toolstack" in freed and "vpci_cancel_pending()" in freed and "rangeset_destroy()" in freed


@pytest.mark.timeout(60)
def test_per_domain_rwlock_is_memory_safe_while_the_races_run(runs_dir):
    """The proposal under PCT for 100,000 steps: no use-after-free, NULL dereference or lock
    finding, while removals meet readers (-ERESTART continued, MMIO retried, pending work
    cancelled under the write lock) and DomUs crash on injected mapping failures."""
    r = run_cli(WL + ["--variant", "per-domain-rwlock", "--seed", "2", "--duration", "60s", "--steps", "100000",
                      "--map-fail", "0.01"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert not r.summary["verdict"]["found"]
    assert all(f["known"] for f in r.summary["findings"])
    m = r.summary["model"]
    assert m["removes"] > 10 and m["-ERESTART continuations"] > 0 and m["mmio retried (removal)"] > 0
    assert m["pending work cancelled"] > 0 and m["vpci_process_pending chunks"] > 100
    assert m["DomU crashes"] > 0 and m["DomU rebuilt"] > 0
    assert r.summary["schedule"]["checks"] > 10  # controlled: the scheduler checks at safe points


@pytest.mark.timeout(60)
def test_per_domain_rwlock_free_schedule_is_clean(runs_dir):
    r = run_cli(WL + ["--variant", "per-domain-rwlock", "--seed", "3", "--duration", "4s"], runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert not r.summary["verdict"]["found"]
    # the race's ingredients really happened (counts, not rates: a shared 2-core machine may
    # give this run a fraction of its CPU)
    assert r.summary["model"]["removes"] >= 5 and r.summary["model"]["mmio writes"] > 200


@pytest.mark.timeout(60)
def test_upstream_open_question_answered_with_a_pdev_use_after_free(runs_dir):
    """Xen 4.19: vpci_deassign_device leaves v->vpci.pdev alone and pci_remove_device frees
    the pdev; the stale work's re-check '!pdev->vpci || v->domain != pdev->domain' reads it."""
    r = run_cli(WL + ["--variant", "upstream", "--seed", "2", "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "open", r.out[-3000:]
    text = _kasan_uaf(r, "Upstream.vpci_process_pending", "struct pci_dev")
    assert "(field vpci)" in text and "pci_remove_device()" in text[text.index("Freed by"):]
    assert "an open question for upstream: this run's evidence is the answer" in r.out


# ---- the invariant's logic, no processes ------------------------------------------------------

def _world(**over):
    opts = {k: o.default for k, o in VpciRemovalStorm.options.items()}
    opts.update(over)
    ns = NS(**opts)
    plan = plan_struct(VpciWorld, ns)
    mv = memoryview(bytearray(8 * plan.words)).cast("q")
    for off, val in plan.inits:
        mv[off] = val
    return attach(plan.node, mv, 0, [None] * len(plan.locks), ctx=AttachCtx()), ns


def test_stale_mappings_accounts_for_decoding_ownership_and_pending_work():
    s, ns = _world(devices=3)
    bf = getattr(ns, "bar-frames")
    d = s.domains[1]
    w = NR_BARS * bf
    assert stale_mappings(s, 1, bf) == []
    # sbdf 0: the DomU's, decoding committed on, mapped: fine; committed off: stale
    d.pdev_list[0], d.vpci_on[0], d.decoding[0] = 7, 1, 1
    d.p2m[0] = d.p2m[1] = 1
    assert stale_mappings(s, 1, bf) == []
    d.decoding[0] = 0
    assert stale_mappings(s, 1, bf) == [(0, 2, "memory decoding is committed off")]
    d.vcpus[1].pending_sbdf = 0  # work deferred for it: not quiescent
    assert stale_mappings(s, 1, bf) == []
    d.vcpus[1].pending_sbdf = -1
    d.decoding[0] = 1
    # sbdf 1: gone from the DomU; left with decoding on (by design) vs off (stale)
    d.p2m[w] = 1
    d.left_mapped[1] = 1
    assert stale_mappings(s, 1, bf) == []
    d.left_mapped[1] = 0
    assert stale_mappings(s, 1, bf) == [(1, 1, "the device is not this domain's")]
    s.busy_sbdf = 1  # the toolstack's hypercall on it is still in flight
    assert stale_mappings(s, 1, bf) == []


def test_every_variant_has_its_design_and_provenance():
    ids = [v.id for v in VpciRemovalStorm.variants]
    assert ids[0] == "unsynchronised-removal" and set(ids) == set(DESIGNS)
    for v in VpciRemovalStorm.variants:
        assert v.provenance and v.doc and DESIGNS[v.id].name == v.id
    assert VpciRemovalStorm.variant_named("upstream").outcomes == ("open",)
    assert VpciRemovalStorm.variant_named("per-domain-rwlock").outcomes == ("clean",)


@pytest.mark.timeout(60)
def test_a_null_dereference_does_not_hide_the_use_after_free_behind_it(runs_dir):
    """Variant(stop='all'): the NULL pdev->vpci comes first (PCT seed 6, at about 10 ms); Xen
    panics there, so the model reboots to its first state (a new boot, its own seed), and the
    run stops only when the use-after-free has been reported too, with its three sites."""
    r = run_cli(WL + ["--variant", "unsynchronised-removal", "--seed", "6", "--duration", "10s"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:] + r.err
    firsts = [f["outcome"] for f in r.summary["findings"] if not f["info"] and not f["known"]]
    assert firsts[0] == "null-deref" and "use-after-free" in firsts, firsts
    assert r.summary["boots"], "the NULL dereference ended the first boot"
    assert "Oops: the hypervisor would panic here." in r.out
    uaf = r.out[r.out.index("BUG: KASAN: use-after-free"):]
    assert "Allocated by worker" in uaf and "Freed by worker" in uaf
    assert r.summary["verdict"]["status"] == "pass"
