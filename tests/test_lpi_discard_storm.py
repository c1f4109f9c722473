"""End to end, real processes: ``lpi-discard-storm`` (issue 25; PROTOCOLS.md section 004) shows
the thread's use-after-free where the pending_irq is looked up outside the vgic lock, nothing
where Andre's proposal holds it, the stale-LR case PRISTINE exists for, and Xen 4.10's
answer. Controlled runs with every parameter pinned: each test is one deterministic run."""

from __future__ import annotations

import pytest

from conftest import run_cli

WL = ["run", "--workload", "lpi-discard-storm"]
PCT = ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]


def _report(r, title: str) -> str:
    text = r.out[r.out.index(title):]
    return text[:text.index("==========", 10)] if "==========" in text[10:] else text


@pytest.mark.timeout(60)
def test_lookup_outside_lock_use_after_free_names_alloc_free_and_use(runs_dir):
    """vgic_vcpu_inject_irq looks the pending_irq up before the vgic lock; a DISCARD on another
    pCPU frees it; the injection then writes its status."""
    r = run_cli(WL + ["--variant", "lookup-outside-lock", "--seed", "1", "--duration", "30s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert r.summary["verdict"]["found"] == ["use-after-free"]
    text = _report(r, "BUG: KASAN: use-after-free in")
    use, alloc = text[:text.index("Allocated by")], text[text.index("Allocated by"):text.index("Freed by")]
    free = text[text.index("Freed by"):]
    assert "vgic_vcpu_inject" in use and "gicv3_do_LPI()" in use, use
    assert "its_handle_mapti()" in alloc, alloc
    assert "its_discard_event()" in free, free
    assert "struct pending_irq" in text


@pytest.mark.timeout(90)
def test_proposal_is_clean_while_discards_race_injections(runs_dir):
    """Andre's proposal (NULL entries, every lookup under the vgic lock, PRISTINE): no finding
    over a long pinned run that discards, unmaps and injects thousands of times; the lock
    order is vgic-v3-its.c's."""
    r = run_cli(WL + ["--variant", "null-entries-under-vgic-lock", "--seed", "1", "--duration", "60s",
                      "--steps", "300000"] + PCT, runs_dir, timeout=120)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert r.summary["findings"] == [], r.titles
    m = r.summary["model"]
    assert m["events discarded"] > 500 and m["MAPD V=0"] > 100 and m["MAPTI"] > 500, m
    assert m["vgic_vcpu_inject_lpi -> vgic_vcpu_inject_irq"] > 1000 and m["EOIs"] > 300, m
    edges = {(e["from"], e["to"]) for e in r.summary["graph"]["edges"]}
    assert {("&its->vcmd_lock", "&its->its_lock"), ("&its->its_lock", "&v->arch.vgic.lock"),
            ("&v->arch.vgic.lock", "&d->arch.vgic.pend_lpi_tree_lock"),
            ("&its->its_lock", "&d->arch.vgic.its_devices_lock")} <= edges, edges
    order = ["&its->vcmd_lock", "&its->its_lock", "&d->arch.vgic.its_devices_lock", "&v->arch.vgic.lock",
             "&d->arch.vgic.pend_lpi_tree_lock"]
    assert all(order.index(a) < order.index(b) for a, b in edges if a in order and b in order), edges


@pytest.mark.timeout(60)
def test_proposal_as_posted_keeps_a_stale_lr_for_a_remapped_lpi(runs_dir):
    """Without bccfbe70a3's PRISTINE, a vCPU whose LR still holds a discarded LPI takes the
    new mapping of that number for its own when it returns."""
    r = run_cli(WL + ["--variant", "null-entries-as-posted", "--seed", "1", "--duration", "30s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["found"] == ["invariant:lpi-discarded-in-lr"], r.out[-3000:]
    text = r.out[r.out.index("of a discarded mapping after gic_clear_lrs"):]
    assert "is mapped again" in text[:600]
    assert "use-after-free" not in r.outcomes


@pytest.mark.timeout(60)
def test_upstream_frees_pend_irqs_under_an_injection(runs_dir):
    """Xen 4.10: MAPD V=0 frees pend_irqs while vgic_vcpu_inject_lpi holds a pointer into it
    (the TODO); MAPTI write-locks the tree with interrupts on while gicv3_do_LPI reads it."""
    r = run_cli(WL + ["--variant", "upstream", "--seed", "11", "--duration", "30s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "open", r.out[-3000:]
    assert {"use-after-free", "inconsistent-lock-state"} <= r.outcomes, r.outcomes
    text = _report(r, "BUG: KASAN: use-after-free in")
    use, alloc = text[:text.index("Allocated by")], text[text.index("Allocated by"):text.index("Freed by")]
    assert "BUG: KASAN: use-after-free in LpiVgic.vgic_vcpu_inject_lpi()" in use and "field lpi_vcpu_id" in text
    assert "_map_device()" in alloc and "remove_mapped_guest_device()" in text[text.index("Freed by"):]
    ils = r.out[r.out.index("WARNING: inconsistent lock state"):]
    assert "&d->arch.vgic.pend_lpi_tree_lock" in ils[:2000]


@pytest.mark.timeout(30)
def test_bad_lpi_vcpu_option_is_a_usage_error(runs_dir):
    r = run_cli(WL + ["--lpi-vcpu", "sometimes", "--duration", "1s"], runs_dir)
    assert r.code == 2 and "--lpi-vcpu" in r.err and len(r.err.strip().splitlines()) == 1, r.err
