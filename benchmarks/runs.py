"""Sections ``abba`` and ``migration-storm``: whole runs of ``stress run`` (a subprocess
each, one at a time: the machine has 2 cores), read back from the run directory's
summary.json."""

from __future__ import annotations

from typing import Any

from .common import (Context, StressRunError, Table, fmt_rate, fmt_s, median, percentile, run_stress,
                     running_rate, stress_cmd)

MS_VARIANTS = ["rank-lock-inversion", "unlocked-target-read", "unlocked-target-read-assert", "old-vcpu-lock",
               "old-vcpu-lock-recheck", "drop-vgic-then-rank", "xen-stable-4.8", "xen-4.9.0", "xen-4.10.0",
               "upstream"]
# buggy variants whose time to detect is measured; None: any (non-info) finding counts. With the
# default options every 4.8-based variant meets 4.8's own lock bugs first (the rank self-deadlock
# of vgic_get_virq_priority, the desc <-> rank inversion): the thread's races need
# --backport 408f16ddb3 --ienable 0 (README, "What migration-storm shows")
DETECT: dict[str, list[str] | None] = {
    "rank-lock-inversion": ["lock-order-inversion", "deadlock", "recursive-locking"],
    "unlocked-target-read": None,
    "unlocked-target-read-assert": None,
    "old-vcpu-lock": None,  # an open question: report what it finds
    "xen-stable-4.8": ["recursive-locking", "deadlock", "lock-order-inversion"],
}


def _class_row(summary: dict, cls: str) -> dict[str, Any]:
    for c in summary.get("locks", []):
        if c["class"] == cls:
            return c
    return {}


# ---- abba -------------------------------------------------------------------------------------

def abba(ctx: Context) -> list[Table]:
    dur = "3s" if ctx.quick else "10s"
    t = Table(f"abba: throughput of examples/abba.py --variant ordered ({dur}, seed 1)",
              ["workers", "roles", "elapsed s", "ops/s (summary)", "ops/s while running", "ops/s per worker",
               "× 2 workers", "A contended %", "A avg wait µs", "chain cache hit %", "start-up ms", "verdict"])
    base = None
    for n in (2, 4, 8):
        ctx.progress(f"abba: --workers {n}, {dur}")
        d = ctx.scratch("abba")
        try:
            res = run_stress(ctx, stress_cmd("examples/abba.py", "ordered", dur, workers=n, out=d), timeout_s=120)
        except StressRunError as e:
            t.add(n, "", "", "", "", "", "", "", "", "", "", f"FAILED: {str(e).splitlines()[0]}")
            continue
        s = res.summary
        ops_summary = s.get("total_ops_per_s")
        ops, at = running_rate(res.run_dir)
        ops = ops or ops_summary
        base = base or ops
        a = _class_row(s, "A")
        roles = ", ".join(f"{r}×{k}" for r, k in s.get("workers", {}).items())
        v = s.get("verdict") or {}
        t.add(n, roles, fmt_s(s["elapsed_s"], 2), fmt_rate(ops_summary),
              fmt_rate(ops) + (f" (at {at:.1f} s)" if at else ""), fmt_rate(ops / n if ops else None),
              f"{ops / base:.2f}×" if ops and base else "–", a.get("contended_pct", "–"),
              a.get("wait_avg_us", "–"),
              f"{100 * s['detectors']['chain_cache_hit_rate']:.3f}" if "detectors" in s else "–",
              f"{1e3 * s['startup_s']:.0f}", v.get("status", s.get("stop_reason")))
        ctx.facts[f"abba_ops_{n}"] = ops
    t.notes += [
        "'ops/s (summary)' is summary.json `total_ops_per_s`: all workers' operations / `elapsed_s`, and "
        "`elapsed_s` includes the coordinator's teardown (stopping workers, writing every trace ring), so it "
        "understates the rate, more so with more workers; 'ops/s while running' is the last metrics.jsonl snapshot "
        "taken during the run (operations / its t_s), used for the per-worker and × columns. One operation takes "
        "A then B and writes 4 shared words. The machine has 2 cores: more workers than cores only adds contention and "
        "scheduling; it is shared with other users, so compare rows of one run.",
    ]
    return [t]


# ---- migration-storm --------------------------------------------------------------------------

def _first_detect(s: dict, expected: list[str] | None) -> dict | None:
    for f in s.get("findings", []):
        if f.get("info"):
            continue
        if expected is None and not f.get("known"):  # open question: the first decisive finding
            return f
        if expected is not None and f["outcome"] in expected:
            return f
    return None


SCHEDULES = ("free", "random", "pct")


def migration_storm(ctx: Context) -> list[Table]:
    tables = [_ms_throughput(ctx), _ms_controlled_cost(ctx), _ms_detect(ctx)]
    return tables


def _ms_controlled_cost(ctx: Context) -> Table:
    """What controlled scheduling costs: upstream's throughput free, under random and PCT."""
    dur = "3s" if ctx.quick else "10s"
    t = Table(f"migration-storm: controlled-mode cost, --variant upstream ({dur}, seed 1)",
              ["schedule", "elapsed s", "ops/s (summary)", "× free", "scheduling steps/s", "steps per op",
               "hand-overs/s", "interrupt deliveries/s", "PCT k, rounds"])
    free_ops = None
    for sched in SCHEDULES:
        ctx.progress(f"migration-storm: cost, --variant upstream --schedule {sched}, {dur}")
        d = ctx.scratch("cost")
        try:
            res = run_stress(ctx, stress_cmd("migration-storm", "upstream", dur, out=d,
                                             extra=["--schedule", sched]), timeout_s=150)
        except StressRunError as e:
            t.add(sched, "", "", "", "", "", "", "", f"FAILED: {str(e).splitlines()[0]}")
            continue
        s = res.summary
        el = s["elapsed_s"] or 1e-9
        ops = s.get("total_ops_per_s")
        sc = s.get("schedule") or {}
        if sched == "free":
            free_ops = ops
        t.add(sched, fmt_s(el, 2), fmt_rate(ops), f"{ops / free_ops:.2f}×" if ops and free_ops else "–",
              fmt_rate(sc["steps"] / el) if "steps" in sc else "–",
              f"{sc['steps_per_op']:.1f}" if "steps_per_op" in sc else "–",
              fmt_rate(sc["switches"] / el) if "switches" in sc else "–",
              fmt_rate(sc["irqs_delivered"] / el) if "irqs_delivered" in sc else "–",
              f"k {sc['k']}, {sc['rounds']} rounds" if sc.get("policy") == "pct" else "–")
        ctx.facts[f"cost_{sched}"] = s
    t.notes += [
        "Controlled: one worker runs at a time (all pinned to one CPU), so ops/s is one core's against the free "
        "run's two. A step is one scheduling point (a lock operation, an operation boundary, raise_irq); a "
        "hand-over passes the run token to another worker (two semaphore operations and a context switch). "
        "Paced rates are per virtual second (10 µs of virtual time a step), so the controlled runs' operation "
        "mix differs from the free run's: compare steps/s and ops/s, not the model counters.",
    ]
    return t


def _rr(run_dir: str) -> str:
    rate, at = running_rate(run_dir)
    return "–" if rate is None else f"{rate:,.0f} (at {at:.1f} s)"


def _ms_throughput(ctx: Context) -> Table:
    dur = "3s" if ctx.quick else "10s"
    t = Table(f"migration-storm: throughput per variant ({dur} asked, seed 1, default options: 2 vCPUs + 1 device, "
              f"noise 0.2)",
              ["variant", "expected", "elapsed s", "stop", "ops/s (summary)", "ops/s while running", "vcpu_run/s",
               "migrate/s", "inject/s",
               "IRQs handled/s", "model counters", "findings (outcome @ s)", "known"])
    for v in MS_VARIANTS:
        ctx.progress(f"migration-storm: throughput, --variant {v}, {dur}")
        d = ctx.scratch("ms")
        try:
            res = run_stress(ctx, stress_cmd("migration-storm", v, dur, out=d), timeout_s=150)
        except StressRunError as e:
            t.add(v, "", "", "FAILED", "", "", "", "", "", "", "", str(e).splitlines()[0], "")
            continue
        s = res.summary
        el = s["elapsed_s"] or 1e-9
        per = s.get("ops_per_s", {})
        model = "; ".join(f"{k} {val}" for k, val in (s.get("model") or {}).items())
        fnd = ", ".join(f"{f['outcome']} @ {f['since_start_s']:.3f}" + (" (info)" if f["info"] else "")
                        + (" (known)" if f.get("known") else "") for f in s.get("findings", [])) or "none"
        known = sum(1 for f in s.get("findings", []) if f.get("known"))
        t.add(v, " or ".join(s.get("expected", [])), fmt_s(el, 2), s.get("stop_reason"),
              fmt_rate(s.get("total_ops_per_s")), _rr(res.run_dir), fmt_rate(per.get("vcpu_run")),
              fmt_rate(per.get("migrate")),
              fmt_rate(per.get("inject")), fmt_rate(s.get("irqs_handled", 0) / el), model, fnd, known)
        ctx.facts[f"ms_ops_{v}"] = s.get("total_ops_per_s")
        ctx.facts[f"ms_summary_{v}"] = s
    t.notes += [
        "Buggy variants stop at their first decisive finding, so their elapsed time is short and their rates cover "
        "only the start (a rank-lock-inversion run is mostly the deadlock). `inject` counts device attempts, "
        "including those skipped because the SPI was still pending or active; `migrate` is paced at 2,000/s per "
        "role and `inject` at 10,000/s; `vcpu_run` takes the rest of a vCPU worker's time.",
        "Model counters are the workload's summary() at the end (shared state, all workers). 'ops/s (summary)' and "
        "the per-operation rates are summary.json's (divided by `elapsed_s`, which includes the teardown); "
        "'ops/s while running' is the last metrics.jsonl snapshot taken during the run, when there is one (runs "
        "shorter than a second have none).",
    ]
    return t


def _ms_detect(ctx: Context) -> Table:
    n_seeds = 5 if ctx.quick else 20
    cap = "20s" if ctx.quick else "60s"
    replays_per_variant = 2 if ctx.quick else 5
    t = Table(f"migration-storm: time to detect, free vs random vs PCT, seeds 1..{n_seeds}, --duration {cap} "
              f"(first decisive finding of an expected outcome, summary.json since_start_s)",
              ["variant", "schedule", "counts as detection", "detected/N", "median s", "p90 s", "min s", "max s",
               "median steps", "replayed (same findings, sites, counters)", "stopped first by another outcome",
               "outcomes seen (runs)", "known findings", "wall s"])
    replayed_total = [0, 0]
    for v, expected in DETECT.items():
        for sched in SCHEDULES:
            _ms_detect_one(ctx, t, v, expected, sched, n_seeds, cap, replays_per_variant, replayed_total)
    ctx.facts["replayed"] = replayed_total
    t.notes += [
        "Seeds run one after another. A run that finds nothing runs to the cap and counts as not detected; the "
        "median and p90 (nearest rank) are over the detected runs only. 'outcomes seen' counts runs in which each "
        "outcome appeared (info and known findings included); 'stopped first by another outcome' counts runs whose "
        "first decisive finding was not one the variant expects (it ends the run, so the expected one may never "
        "come). Free: timing, not only the seed, decides interleavings: the same seed can detect at different "
        "times in two runs. Random and PCT: the seed decides the interleaving, so 'median steps' (the scheduling "
        "step of the detection) is the same on any machine; seconds depend on the machine's speed and load.",
        f"'replayed': for the first {replays_per_variant} detected controlled runs of each variant and schedule, "
        "`stress replay RUN_ID` re-executed the recorded schedule and compared findings (outcome and signature), "
        "the sites in their reports, the model counters and the step count; in all "
        f"{replayed_total[0]}/{replayed_total[1]} reproduced.",
    ]
    return t


def _replay(ctx: Context, run_dir: str) -> bool:
    import os
    import subprocess
    import sys
    from .common import REPO
    out, rid = os.path.split(run_dir.rstrip("/"))
    p = subprocess.run([sys.executable, "-m", "stress", "replay", rid, "--out", out, "--quiet", "--story", "0",
                        "--no-store"], cwd=REPO, capture_output=True, text=True, timeout=300)
    return p.returncode == 0 and "reproduced:" in p.stdout and "NOT reproduced" not in p.stdout


def _ms_detect_one(ctx: Context, t: Table, v: str, expected: list[str] | None, sched: str, n_seeds: int, cap: str,
                   replays: int, replayed_total: list[int]) -> None:
    """One row: variant ``v`` under schedule ``sched`` over seeds 1..n_seeds."""
    times: list[float] = []
    seen: dict[str, int] = {}
    known = 0
    other: dict[str, int] = {}
    wall = 0.0
    failed = 0
    steps: list[int] = []
    rep_ok = rep_n = 0
    for seed in range(1, n_seeds + 1):
        ctx.progress(f"migration-storm: time to detect, --variant {v} --schedule {sched} --seed {seed} "
                     f"({seed}/{n_seeds})")
        d = ctx.scratch("detect")
        try:
            res = run_stress(ctx, stress_cmd("migration-storm", v, cap, seed=seed, out=d,
                                             extra=["--schedule", sched]), timeout_s=200)
        except StressRunError as e:
            failed += 1
            ctx.progress(f"  run failed: {str(e).splitlines()[0]}")
            continue
        wall += res.wall_s
        s = res.summary
        for o in sorted({f["outcome"] for f in s.get("findings", [])}):
            seen[o] = seen.get(o, 0) + 1
        known += sum(1 for f in s.get("findings", []) if f.get("known"))
        first = next((x for x in s.get("findings", []) if not x.get("info") and not x.get("known")), None)
        if first is not None and expected is not None and first["outcome"] not in expected:
            other[first["outcome"]] = other.get(first["outcome"], 0) + 1
        f = _first_detect(s, expected)
        if f is not None:
            times.append(f["since_start_s"])
            if "step" in f:
                steps.append(f["step"])
            if sched != "free" and rep_n < replays:
                rep_n += 1
                ok = _replay(ctx, res.run_dir)
                rep_ok += ok
                ctx.progress(f"  replay: {'reproduced' if ok else 'NOT reproduced'}")
        got = f"detected {f['outcome']} at {f['since_start_s']:.3f} s" if f else "not detected"
        ctx.progress(f"  -> {got} ({s.get('stop_reason')}, {s['elapsed_s']:.1f} s)")
    n = n_seeds - failed
    replayed_total[0] += rep_ok
    replayed_total[1] += rep_n
    t.add(v, sched, " or ".join(expected) if expected else "any decisive finding (open question: not info, "
                                                            "not known)",
          f"{len(times)}/{n}" + (f" ({failed} failed)" if failed else ""),
          fmt_s(median(times)), fmt_s(percentile(times, 90)), fmt_s(min(times) if times else None),
          fmt_s(max(times) if times else None), f"{median(steps):,.0f}" if steps else "–",
          f"{rep_ok}/{rep_n}" if rep_n else "–",
          ", ".join(f"{o} ({k})" for o, k in sorted(other.items(), key=lambda kv: -kv[1])) or "0",
          ", ".join(f"{o} ({k})" for o, k in sorted(seen.items(), key=lambda kv: -kv[1])) or "none",
          known, f"{wall:.0f}")
    ctx.facts[f"ttd_{v}_{sched}"] = times
