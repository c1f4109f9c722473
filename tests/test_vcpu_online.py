"""``vcpu-online-race``: every design of PROTOCOLS.md section 002 run end to end as real
processes under the controlled scheduler with pinned PCT seeds (one deterministic
interleaving per test, not a loop over seeds hoping for the OS's timing): the buggy designs
are caught with a stale-read finding carrying the weak memory's evidence, the fixed ones
run clean; and the model's pieces (designs, value encoding) directly."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli
from shm_model.xen.vcpu_online import DESIGNS
from shm_model.xen.vcpu_online.common import REGS, reg_gen, reg_value
from workloads.vcpu_online_race import VcpuOnlineRace

WL = ["run", "--workload", "vcpu-online-race"]
# every parameter of the controlled scheduler pinned: the interleaving is the seed's
PCT = ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]


def _stale(r) -> list[dict]:
    """The run's stale-read findings with their details (findings.jsonl of the run dir)."""
    path = os.path.join(r.summary["run_dir"], "findings.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        found = [json.loads(line) for line in fh if line.strip()]
    return [f for f in found if f["outcome"] == "stale-read"]


def _check_evidence(f: dict, function: str) -> None:
    """A stale-read finding names the location, the value read and its generation, the
    generation expected, and the weak memory's evidence: who wrote what was read and the
    newer message (or the ghost record of the newest write)."""
    assert f["title"].startswith("BUG: stale read of vcpu") and f"in {function} (reordered)" in f["title"], f
    d = f["details"]
    assert d["function"] == function
    assert d["location"].split("->arch.")[1] in REGS
    assert d["read_generation"] < d["expected_generation"]
    assert reg_gen(d["value"]) == d["read_generation"]
    mem = d["memory"]
    assert mem["value"] == d["value"] and mem["location"].endswith(d["location"].split("->arch.")[1])
    assert mem["written_by"]["site"]  # who stored the value read (a worker, or the initial value)
    assert d["newest_written"]["generation"] >= d["expected_generation"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant,seed", [("mb-before-down-clear", 1), ("wmb-no-pause-mb", 1)])
def test_buggy_design_is_caught_on_the_getvcpucontext_path(runs_dir, variant, seed):
    r = run_cli(WL + ["--variant", variant, "--seed", str(seed), "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    found = _stale(r)
    assert found, r.out[-3000:]
    _check_evidence(found[0], "arch_get_info_guest")
    assert "controlled scheduler: at step" in r.out and r.summary["stop_reason"] == "finding"


@pytest.mark.timeout(120)
def test_mb_before_down_clear_orders_the_scheduling_path(runs_dir):
    """Julien's first patch orders the registers before _VPF_down: with no toolstack, only
    the scheduling path runs, and it stays clean."""
    r = run_cli(WL + ["--variant", "mb-before-down-clear", "--toolstacks", "0", "--seed", "1", "--duration", "8s"]
                + PCT, runs_dir)
    assert not _stale(r), r.out[-3000:]
    assert "context_switch_to" in r.out


@pytest.mark.timeout(120)
def test_upstream_reads_stale_registers_in_context_switch_to(runs_dir):
    """The open question, scheduling path: no barrier orders the register stores before
    the clear of _VPF_down; a third-party vcpu_wake queues the vCPU and context_switch_to
    restores registers of the previous online. The evidence names the store reordered."""
    r = run_cli(WL + ["--variant", "upstream", "--toolstacks", "0", "--seed", "1", "--duration", "20s"] + PCT,
                runs_dir)
    assert r.code == 0, r.out[-3000:]
    found = _stale(r)
    assert found, r.out[-3000:]
    _check_evidence(found[0], "context_switch_to")
    assert "reordered stores of worker" in r.out and "smp_wmb" in r.out, r.out[-3000:]


@pytest.mark.timeout(120)
def test_upstream_reads_stale_registers_in_arch_get_info_guest(runs_dir):
    r = run_cli(WL + ["--variant", "upstream", "--seed", "1", "--duration", "20s"] + PCT, runs_dir)
    assert r.code == 0, r.out[-3000:]
    found = _stale(r)
    assert found, r.out[-3000:]
    _check_evidence(found[0], "arch_get_info_guest")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", ["wmb-before-initialised", "wmb-rmb"])
def test_fixed_designs_run_clean(runs_dir, variant):
    r = run_cli(WL + ["--variant", variant, "--seed", "1", "--duration", "6s"] + PCT, runs_dir)
    assert r.code == 0 and r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    assert not r.summary.get("findings"), r.out[-3000:]
    # it ran the race: vCPUs cycled, were switched to and read by the toolstack
    m = r.summary.get("model") or {}
    text = r.out
    assert "CPU_ON" in text and "context_switch_to" in text
    if m:
        assert m["CPU_ON"] > 50 and m["context_switch_to"] > 50 and m["getvcpucontext"] > 50, m
        assert m["stale registers at arch_get_info_guest"] == 0 and m["stale registers at context_switch_to"] == 0


@pytest.mark.timeout(120)
def test_wmb_rmb_summary_says_what_the_extra_barrier_did(runs_dir):
    r = run_cli(WL + ["--variant", "wmb-rmb", "--seed", "2", "--duration", "4s"] + PCT, runs_dir)
    assert "smp_rmb after is_initialised: raised the read view" in r.out, r.out[-2000:]
    assert "smp_rmb after is_initialised: a register readable stale just before it" in r.out


def test_every_variant_has_a_design_and_upstream_is_the_open_default():
    ids = [v.id for v in VcpuOnlineRace.variants]
    assert ids == ["upstream", "mb-before-down-clear", "wmb-before-initialised", "wmb-rmb", "wmb-no-pause-mb"]
    assert set(DESIGNS) == set(ids)
    assert VcpuOnlineRace.variants[0].expect == "open" and VcpuOnlineRace.variants[0].answer
    exp = {v.id: v.expect for v in VcpuOnlineRace.variants}
    assert exp["mb-before-down-clear"] == exp["wmb-no-pause-mb"] == "stale-read"
    assert exp["wmb-before-initialised"] == exp["wmb-rmb"] == "clean"


def test_register_values_encode_their_generation():
    for g in (0, 1, 7, 1000):
        vals = [reg_value(g, r) for r in range(len(REGS))]
        assert len(set(vals)) == len(REGS) and all(reg_gen(x) == g for x in vals)


@pytest.mark.timeout(120)
def test_online_implies_registers_holds_at_quiescence(runs_dir):
    """The periodic invariant (every store buffer drained, every worker parked): a vCPU's
    committed registers are never older than its committed online; it is checked, and it
    holds (a design's stale reads are transient orderings, caught inline at the read)."""
    r = run_cli(WL + ["--variant", "wmb-before-initialised", "--seed", "3", "--duration", "3s",
                      "--check-interval", "0.1"], runs_dir)
    assert r.code == 0, r.out[-3000:]
    assert r.summary["invariant_checks"] > 0, r.summary
    assert not r.summary.get("findings"), r.out[-3000:]
