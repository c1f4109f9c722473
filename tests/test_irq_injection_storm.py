"""``irq-injection-storm``: every design of PROTOCOLS.md section 003 run end to end as real
processes (the buggy ones under the controlled scheduler with pinned PCT seeds, so a test is
one deterministic interleaving), upstream clean in both schedules, and the interrupt
machinery the workload relies on: an ISR runs in its target's process, is deferred while that
CPU has interrupts masked, and never runs inside an ``_irqsave`` section."""

from __future__ import annotations

import pytest

from conftest import run_cli
from shm_model.xen.new_vgic import DESIGNS
from workloads.irq_injection_storm import IrqInjectionStorm

WL = ["run", "--workload", "irq-injection-storm"]
# every parameter of the controlled scheduler pinned: the interleaving is the seed's
PCT = ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]


def _splat(out: str, title: str) -> str:
    i = out.index(title)
    j = out.find("\n\n=====", i)
    return out[i:j if j > 0 else None]


def _decisive(r) -> list[str]:
    return [f["outcome"] for f in r.summary["findings"] if not f["info"] and not f["known"]]


@pytest.mark.timeout(120)
def test_upstream_is_clean_under_pct_while_the_racy_paths_run(runs_dir):
    r = run_cli(WL + ["--variant", "upstream", "--seed", "1", "--duration", "6s", "--guest-run-ms", "2"] + PCT,
                runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert not r.summary["verdict"]["found"] and not _decisive(r)
    m = r.summary["model"]
    # not vacuous: IRQs queued from ISRs and task context, kicked with IPIs, moved between
    # lists by prune, ITARGETSR/ICENABLER/WFI exercised, the ap_list sorted
    assert m["from ISRs"] > 50 and m["queued"] > 100 and m["event-check IPIs"] > 50
    assert m["prune moves"] > 0 and m["ITARGETSR"] > 50 and m["WFI blocks"] > 0 and m["ap_list sorts"] > 0
    assert r.summary["schedule"]["checks"] > 10


@pytest.mark.timeout(120)
def test_upstream_free_schedule_is_clean_and_isrs_run_where_they_were_raised(runs_dir):
    """Free mode, real signals: every physical IRQ the device raised at a pCPU ran that pCPU's
    handler in that worker's process (the handler compares its pid with the one the worker
    recorded); some arrived while that CPU had interrupts masked and ran later, at the
    irqrestore (the soft mask's deferral); none ran inside an irqsave section."""
    r = run_cli(WL + ["--variant", "upstream", "--seed", "3", "--duration", "4s", "--irq-pcpus", "2"], runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert not _decisive(r)
    m = r.summary["model"]
    assert m["physical IRQs raised"] > 200
    # the rings do not lose entries: each handled IRQ was raised there (handled <= raised,
    # the rest in flight at the stop)
    assert 0.9 * m["physical IRQs raised"] <= m["ISRs run in the target's process"] <= m["physical IRQs raised"]
    assert m["ISRs in another process"] == 0
    assert m["ISRs deferred by a masked section"] > 0
    assert m["ISRs that interrupted an irqsave section"] == 0
    assert m["event-check IPIs"] > 0 and m["exits on a kick"] > 0


@pytest.mark.timeout(120)
def test_irqsave_sections_are_never_interrupted_under_pct(runs_dir):
    """The controlled scheduler delivers interrupts at scheduling points with interrupts
    enabled; the lock acquisitions inside irqsave sections are scheduling points too, and no
    handler ran inside one (the inline check irqsave-interrupted would have fired)."""
    r = run_cli(WL + ["--variant", "upstream", "--seed", "2", "--duration", "3s", "--irq-pcpus", "2"] + PCT,
                runs_dir)
    assert r.code == 0, r.out[-3000:]
    m = r.summary["model"]
    assert m["ISRs run in the target's process"] > 20 and m["ISRs that interrupted an irqsave section"] == 0
    assert "invariant:irqsave-interrupted" not in r.outcomes
    assert r.summary["schedule"]["irqs_delivered"] > 20


@pytest.mark.timeout(120)
def test_unblock_only_loses_the_wakeup_of_a_vcpu_spinning_in_the_guest(runs_dir):
    """RFC 22/49: the IRQ is re-injected while still on the ap_list of a vCPU that runs in the
    guest; vcpu_unblock does nothing for a running vCPU, no IPI is sent, and the guest (no
    exits of its own while it spins) does not see it within the age limit."""
    r = run_cli(WL + ["--variant", "unblock-only", "--seed", "1", "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["found"] == ["lost-wakeup"], r.out[-3000:]
    text = _splat(r.out, "BUG: lost wake-up")
    assert "running in the guest" in text and "in no list register" in text
    history = text[text.index("the history of"):]
    assert "vcpu_unblock(vcpu" in history and "only" in history  # the RFC's path, from the IRQ's history
    assert r.summary["schedule"]["policy"] == "pct" and r.summary["stop_reason"] == "finding"


@pytest.mark.timeout(120)
def test_no_recheck_puts_an_irq_on_two_lists(runs_dir):
    r = run_cli(WL + ["--variant", "no-recheck", "--seed", "1", "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["found"] == ["invariant:one-ap-list"], r.out[-3000:]
    f = [f for f in r.summary["findings"] if f["outcome"] == "invariant:one-ap-list"][0]
    assert "added to vcpu" in f["title"] and "while irq->vcpu = vcpu" in f["title"], f["title"]
    text = _splat(r.out, f["title"])  # with the IRQ's history from every worker
    assert "without the re-check" in text and "the history of" in text, text


@pytest.mark.timeout(120)
def test_unordered_ap_list_locks_inverts_and_deadlocks(runs_dir):
    """Two vCPUs pruning IRQs towards each other: ap_list_lock[0] -> [1] and [1] -> [0], then
    both in the window at once (frequent ITARGETSR traps: --guest-run-ms 2)."""
    r = run_cli(WL + ["--variant", "unordered-ap-list-locks", "--seed", "8", "--duration", "30s",
                      "--guest-run-ms", "2"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert set(r.summary["verdict"]["found"]) == {"lock-order-inversion", "deadlock"}, r.out[-3000:]
    inv = _splat(r.out, "WARNING: possible circular locking dependency detected")
    assert "&vgic_cpu->ap_list_lock[0]" in inv and "&vgic_cpu->ap_list_lock[1]" in inv
    assert "move_locked()" in inv and "vgic_prune_ap_list()" in inv
    dl = r.out[r.out.index("BUG: deadlock"):]
    assert "*** DEADLOCK ***" in dl and "ap_list_lock" in dl


@pytest.mark.timeout(120)
def test_irq_unsafe_is_inconsistent_and_self_deadlocks_when_the_interrupt_hits(runs_dir):
    r = run_cli(WL + ["--variant", "irq-unsafe", "--seed", "1", "--duration", "30s"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert set(r.summary["verdict"]["found"]) == {"inconsistent-lock-state", "deadlock"}, r.out[-3000:]
    inc = _splat(r.out, "WARNING: inconsistent lock state")
    assert "{IN-HARDIRQ-W} -> {HARDIRQ-ON-W}" in inc and "&irq->irq_lock" in inc
    dl = r.out[r.out.index("BUG: deadlock: context waits for a lock it holds itself"):]
    assert "[irq] is waiting for lock:\n  (&irq->irq_lock)" in dl and "vgic_inject_irq()" in dl
    assert "IrqUnsafe.irq_lock_task()" in dl and "<Interrupt>" in dl


def test_every_variant_has_its_design_and_provenance():
    ids = [v.id for v in IrqInjectionStorm.variants]
    assert ids[0] == "upstream" and set(ids) == set(DESIGNS)
    for v in IrqInjectionStorm.variants:
        assert v.provenance and v.doc and DESIGNS[v.id].name == v.id
        assert "invariant:retarget-kick" in v.known
    assert IrqInjectionStorm.variant_named("unblock-only").outcomes == ("lost-wakeup",)
    assert IrqInjectionStorm.variant_named("no-recheck").outcomes == ("invariant:one-ap-list",)


# -- the DoS question (item 5): a malicious guest, the inferred mitigations, the measurement --------

def _dos_run(runs_dir, variant: str, seed: int = 1):
    return run_cli(WL + ["--variant", variant, "--seed", str(seed), "--duration", "3s", "--guest", "malicious",
                         "--spis", "24", "--bystander-us", "20", "--guest-run-ms", "2"] + PCT, runs_dir)


def _ordered(d: dict) -> bool:
    return d["p50"] is not None and 0 <= d["p50"] <= d["p99"] <= d["max"] and d["max"] <= d["total"]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("variant", ["sorted-insert", "capped-flush"])
def test_mitigations_stay_clean_under_a_malicious_guest_and_never_sort(runs_dir, variant):
    """A guest that never acknowledges grows vCPU 0's ap_list past its LRs; the mitigations
    stay clean (their ap-list-order invariant, checked at every safe point, included), never
    call vgic_sort_ap_list, and the run's summary carries the DoS table with sane numbers."""
    r = _dos_run(runs_dir, variant)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert not _decisive(r) and "invariant:ap-list-order" not in r.outcomes
    m = r.summary["model"]
    assert m["guest acks"] == 0 and m["guest EOIs"] == 0  # malicious: nothing acknowledged
    assert m["ap_list sorts"] == 0 and m["LR fills"] > 0
    dos = m["dos"]
    assert dos["guest"] == "malicious" and dos["clock"] == "virtual"
    v0 = dos["vcpus"][0]
    assert 4 < v0["ap_list_len"]["max"] <= 24  # longer than the 4 LRs, at most every SPI
    assert v0["ap_list_len"]["p50"] <= v0["ap_list_len"]["p99"] <= v0["ap_list_len"]["max"]
    assert v0["flush_us"]["n"] > 50 and _ordered(v0["flush_us"]) and _ordered(v0["prune_us"])
    assert 0 < v0["flush_share"] < 1 and v0["vcpu_us"] <= v0["span_us"]
    by = dos["bystander"]
    assert by["pcpu"] == 0 and by["slices"] > 50 and by["wait_us"]["n"] == by["slices"] and _ordered(by["wait_us"])
    assert dos["irq_latency"] and all(x["irq_latency_us"]["n"] > 0 for x in dos["irq_latency"])
    # printed in the run's summary as a table, one row per vCPU
    assert "DoS measurement (malicious guest; µs of the virtual clock)" in r.out
    assert len(dos["rows"]) == 2 and dos["columns"][0] == "vcpu" and "bystander on pcpu0" in r.out


@pytest.mark.timeout(150)
def test_upstream_sorts_the_long_list_of_a_malicious_guest(runs_dir):
    """The same malicious guest on Xen 4.11: the list is longer than the LRs at entries, so
    vgic_flush_lr_state counts it and sorts it (what the mitigations never do); clean."""
    r = _dos_run(runs_dir, "upstream")
    assert r.code == 0 and not _decisive(r), r.out[-3000:]
    m = r.summary["model"]
    assert m["ap_list sorts"] > 50 and m["guest acks"] == 0
    v0 = m["dos"]["vcpus"][0]
    assert v0["ap_list_len"]["max"] > 4 and v0["flush_us"]["n"] > 50 and _ordered(v0["flush_us"])


def test_dos_histograms_and_summary_table():
    """The histogram's buckets hold their values within 1/16; quantiles are nearest-rank; a
    SummaryTable is JSON as a plain object and prints as a table."""
    import json

    from shm_model.xen.new_vgic.common import HIST_BUCKETS, hist_bucket, hist_quantile, hist_value
    from stress.workload import SummaryTable
    for v in [0, 1, 7, 8, 9, 15, 16, 100, 999, 12345, 10**6, 987654321]:
        b = hist_bucket(v)
        assert 0 <= b < HIST_BUCKETS and abs(hist_value(b) - v) <= v / 16 + 0.5
    assert [hist_bucket(v) for v in (8, 16, 32)] == sorted({hist_bucket(v) for v in (8, 16, 32)})
    counts = [0] * 10
    counts[2], counts[9] = 99, 1
    assert hist_quantile(counts, 0.5, exact=True) == 2 and hist_quantile(counts, 0.99, exact=True) == 2
    assert hist_quantile(counts, 1.0, exact=True) == 9 and hist_quantile([0, 0], 0.5) is None
    t = SummaryTable("T", ["a", "b"], [["x", 1.25], ["y", None]], ["a note"], data={"k": 1})
    assert json.loads(json.dumps({"t": t}))["t"] == {"title": "T", "columns": ["a", "b"], "rows": [["x", 1.25],
                                                                                                  ["y", None]],
                                                     "notes": ["a note"], "data": {"k": 1}}
    text = f"{t}"
    assert text.splitlines()[1:] == ["  T", "  a    b", "  x  1.2", "  y    -", "  - a note"]


def test_guest_option_takes_benign_or_malicious(runs_dir):
    r = run_cli(WL + ["--guest", "nasty", "--duration", "1s"], runs_dir, timeout=60)
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "--guest takes benign or malicious" in r.err
