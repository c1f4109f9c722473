"""Sections ``abba`` and ``migration-storm``: whole runs of ``stress run`` (a subprocess
each, one at a time: the machine has 2 cores), read back from the run directory's
summary.json."""

from __future__ import annotations

from typing import Any

from .common import (Context, StressRunError, Table, fmt_rate, fmt_s, median, percentile, run_stress,
                     running_rate, stress_cmd)

MS_VARIANTS = ["rank-lock-inversion", "unlocked-target-read", "unlocked-target-read-assert", "old-vcpu-lock",
               "drop-vgic-then-rank", "upstream"]
# buggy variants whose time to detect is measured; None: any (non-info) finding counts
DETECT: dict[str, list[str] | None] = {
    "rank-lock-inversion": ["lock-order-inversion", "deadlock"],
    "unlocked-target-read": ["invariant:affinity-follows-target"],
    "unlocked-target-read-assert": ["invariant:assert-held"],
    "old-vcpu-lock": None,  # an open question: report what it finds
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


def migration_storm(ctx: Context) -> list[Table]:
    tables = [_ms_throughput(ctx), _ms_detect(ctx)]
    return tables


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
    t = Table(f"migration-storm: time to detect, seeds 1..{n_seeds}, --duration {cap} (first decisive finding "
              f"of an expected outcome, summary.json since_start_s)",
              ["variant", "counts as detection", "detected/N", "median s", "p90 s", "min s", "max s",
               "stopped first by another outcome", "outcomes seen (runs)", "known findings", "wall s"])
    for v, expected in DETECT.items():
        times: list[float] = []
        seen: dict[str, int] = {}
        known = 0
        other: dict[str, int] = {}
        wall = 0.0
        failed = 0
        for seed in range(1, n_seeds + 1):
            ctx.progress(f"migration-storm: time to detect, --variant {v} --seed {seed} ({seed}/{n_seeds})")
            d = ctx.scratch("detect")
            try:
                res = run_stress(ctx, stress_cmd("migration-storm", v, cap, seed=seed, out=d), timeout_s=200)
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
            got = f"detected {f['outcome']} at {f['since_start_s']:.3f} s" if f else "not detected"
            ctx.progress(f"  -> {got} ({s.get('stop_reason')}, {s['elapsed_s']:.1f} s)")
        n = n_seeds - failed
        t.add(v, " or ".join(expected) if expected else "any decisive finding (open question: not info, not known)",
              f"{len(times)}/{n}" + (f" ({failed} failed)" if failed else ""),
              fmt_s(median(times)), fmt_s(percentile(times, 90)), fmt_s(min(times) if times else None),
              fmt_s(max(times) if times else None),
              ", ".join(f"{o} ({k})" for o, k in sorted(other.items(), key=lambda kv: -kv[1])) or "0",
              ", ".join(f"{o} ({k})" for o, k in sorted(seen.items(), key=lambda kv: -kv[1])) or "none",
              known, f"{wall:.0f}")
        ctx.facts[f"ttd_{v}"] = times
    t.notes += [
        "Seeds run one after another. A run that finds nothing runs to the cap and counts as not detected; the "
        "median and p90 (nearest rank) are over the detected runs only. 'outcomes seen' counts runs in which each "
        "outcome appeared (info and known findings included); 'stopped first by another outcome' counts runs whose "
        "first decisive finding was not one the variant expects (it ends the run, so the expected one may never "
        "come). Timing, not only the seed, decides interleavings: "
        "the same seed can detect at different times in two runs.",
    ]
    return t
