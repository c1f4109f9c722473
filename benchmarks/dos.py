"""Section ``dos``: the new VGIC's ap_list DoS (Julien Grall's question in the review of
"[Xen-devel,RFC,22/49] ARM: new VGIC: Implement virtual IRQ injection", unmitigated
upstream): ``irq-injection-storm`` with ``--guest malicious`` (the guest keeps its IRQs
pending, never acknowledges them, and routes SPIs to vCPU 0) under ``upstream`` (Xen 4.11)
and the two inferred mitigations ``sorted-insert`` and ``capped-flush``, beside a run of
``upstream`` with a benign guest; in every run a benign vCPU of another domain (the
*bystander*, ``--bystander-us``) shares pCPU 0 with vCPU 0.

One ``stress run`` a row, one after another (the machine has 2 cores), free schedule (real
time), all numbers from the run's summary.json ``model.dos`` (measured in the worker
processes: see the workload's docstring). Ratios are against the benign row of the same
invocation.
"""

from __future__ import annotations

import os
from typing import Any

from .common import Context, StressRunError, Table, fmt_rate, run_stress, running_ops, stress_cmd

WORKLOAD = "irq-injection-storm"
SPIS = 128
BYSTANDER_US = 50
#: the device's paced rates (default 500 and 300/s): at these a benign guest keeps its lists
#: short on a loaded 2-core machine, so the benign row is a baseline, not a storm
RATE = "raise_irq=100,emulate=60"
#: (variant, guest): the benign baseline first
ROWS = [("upstream", "benign"), ("upstream", "malicious"), ("sorted-insert", "malicious"),
        ("capped-flush", "malicious")]
#: full mode also measures what the mitigations cost a benign guest
EXTRA = [("sorted-insert", "benign"), ("capped-flush", "benign")]


def _us(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def run(ctx: Context) -> list[Table]:
    dur = "4s" if ctx.quick else "10s"
    rows = ROWS + ([] if ctx.quick else EXTRA)
    load = os.getloadavg()
    t = Table(f"irq-injection-storm: the ap_list DoS, --guest malicious vs benign ({dur} each, seed 1, --spis {SPIS}, "
              f"--vcpus 2, --bystander-us {BYSTANDER_US}, --level-service 1, --rate {RATE}, free schedule; vCPU 0 and "
              "the bystander share pCPU 0)",
              ["variant", "guest", "vCPU0 entries", "ap_list p99", "ap_list max", "flush p50 µs", "flush p99 µs",
               "flush max µs", "flush % of vCPU0 time", "prune p50 µs", "prune p99 µs", "bystander % of pCPU0",
               "× benign", "bystander wait mean µs", "× benign", "wait p99 µs", "wait max µs",
               "pCPU0 IRQ latency p50 µs", "p99 µs", "vcpu_run/s", "verdict"])
    base: dict[str, float | None] = {}
    for variant, guest in rows:
        ctx.progress(f"dos: --variant {variant} --guest {guest}, {dur}")
        d = ctx.scratch("dos")
        extra = ["--guest", guest, "--spis", str(SPIS), "--vcpus", "2", "--bystander-us", str(BYSTANDER_US),
                 "--level-service", "1", "--rate", RATE]
        try:
            res = run_stress(ctx, stress_cmd(WORKLOAD, variant, dur, out=d, extra=extra), timeout_s=150)
        except StressRunError as e:
            t.add(variant, guest, *([""] * 18), f"FAILED: {str(e).splitlines()[0]}")
            continue
        s = res.summary
        dos = (s.get("model") or {}).get("dos") or {}
        v0 = (dos.get("vcpus") or [{}])[0]
        fl, pr, ln = v0.get("flush_us") or {}, v0.get("prune_us") or {}, v0.get("ap_list_len") or {}
        by = dos.get("bystander") or {}
        wait = by.get("wait_us") or {}
        lat = next((x["irq_latency_us"] for x in dos.get("irq_latency") or [] if x.get("pcpu") == 0), {})
        ops, at = running_ops(res.run_dir)
        vr = ops["vcpu_run"] / at if ops and at and "vcpu_run" in ops else (s.get("ops_per_s") or {}).get("vcpu_run")
        share_p = by.get("pcpu_share")
        wmean = wait["total"] / wait["n"] if wait.get("n") else None
        if variant == "upstream" and guest == "benign":
            base = {"share": share_p, "wmean": wmean}
        share = v0.get("flush_share")
        verdict = (s.get("verdict") or {}).get("status", s.get("stop_reason"))
        t.add(variant, guest, v0.get("entries"), ln.get("p99"), ln.get("max"), _us(fl.get("p50")), _us(fl.get("p99")),
              _us(fl.get("max")), "–" if share is None else f"{100 * share:.1f}", _us(pr.get("p50")),
              _us(pr.get("p99")), "–" if share_p is None else f"{100 * share_p:.1f}", _x(share_p, base.get("share")),
              _us(wmean), _x(wmean, base.get("wmean")), _us(wait.get("p99")), _us(wait.get("max")), _us(lat.get("p50")),
              _us(lat.get("p99")), fmt_rate(vr), verdict)
        ctx.facts[f"dos_{variant}_{guest}"] = dos
    end = os.getloadavg()
    t.notes += [
        "Per row one `stress run --workload irq-injection-storm --variant V --guest G --spis 128 --vcpus 2 "
        f"--bystander-us {BYSTANDER_US} --level-service 1 --rate {RATE} --duration {dur} --seed 1`. Malicious "
        "guest: no GICV_IAR read (no acknowledge, no EOI, no device serviced), traps are ISPENDR/ISENABLER and "
        "ITARGETSR to vCPU 0, so vCPU 0's ap_list holds most SPIs. Benign guest: acknowledges, services the device (a level line falls) and "
        "EOIs; its traps are the usual MMIO mix and WFI.",
        "ap_list: its length at each guest entry of vCPU 0 (vgic_sync_to_lrs). flush: vgic_flush_lr_state "
        "(interrupts off, ap_list lock held), prune: vgic_prune_ap_list (on every exit), each timed with "
        "CLOCK_MONOTONIC in vCPU 0's worker process; 'flush % of vCPU0 time' is their sum over vCPU 0's own "
        "time (its steps on pCPU 0, not idle in WFI, the model's liveness check excluded). Quantiles from log-linear "
        "histograms (within 1/16); maxima exact.",
        f"Bystander: a benign vCPU of another domain on pCPU 0; the pCPU alternates one step of vCPU 0 (not "
        f"preemptible) and a {BYSTANDER_US} µs slice of it. Its wait before a slice is the vCPU 0 step it "
        "waited for (the model's liveness check and the harness's time between operations not counted); its % of "
        "pCPU0 is its slices' time over its slices' and waits' (its throughput: slice / (slice + mean wait)). "
        "× benign: against the upstream/benign row of this invocation. pCPU0 IRQ latency: the device's "
        "physical IRQs routed to pCPU 0, raise to handler entry (a handler waits while the pCPU has interrupts off).",
        "Free schedule on a shared 2-core machine: maxima and p99 include the OS descheduling a worker; compare "
        f"rows of one invocation. Load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at the "
        f"end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}.",
    ]
    return [t]
