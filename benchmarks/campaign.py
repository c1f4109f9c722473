"""Section ``campaign``: what running an iteration as a Ray task costs, against the same
iteration in a local ``stress soak``.

The same iterations (``examples/abba.py --variant ordered``, free schedule, 1 s each, seeds
from one plan seed) three ways, one after the other (the machine has 2 cores):

- ``stress soak``: a child process an iteration, ingested into the store;
- ``stress campaign`` on the embedded Ray (one ``stress_host``: this machine), default
  ``--keep-traces failed`` (a clean iteration brings no traces back);
- the same campaign with ``--keep-traces all`` (every record carries the whole trace rings).

Per iteration: wall time (the soak's or campaign's ``spent_s`` over its iterations, which
counts everything between two iterations), and for the campaigns the medians the driver
measured (``progress.json``'s ``timings``): dispatch-to-recorded, the task on the host, the
``stress run`` child inside it, their difference (Ray dispatch, record transfer, writing
and ingesting the record) and the record's size. Ray's own start-up and shutdown (once per
campaign) are the process's wall minus ``spent_s``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

from .common import REPO, Context, Table, fmt_s

WORKLOAD = "examples/abba.py"
ITERATION_S = 1.0


def _cli(args: list[str], timeout_s: float) -> tuple[int, float, str]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "stress", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout_s)
    return p.returncode, time.monotonic() - t, p.stdout[-3000:] + p.stderr[-3000:]


def _soak_row(db: str) -> tuple[str, float, int]:
    con = sqlite3.connect(db)
    try:
        sid, spent = con.execute("SELECT id, spent_s FROM soaks ORDER BY started_at DESC LIMIT 1").fetchone()
        n = con.execute("SELECT COUNT(*) FROM runs WHERE soak_id = ?", (sid,)).fetchone()[0]
    finally:
        con.close()
    return sid, float(spent or 0.0), int(n)


def _traces_bytes(out: str) -> float | None:
    """Median bytes of ``traces/`` kept per run directory under ``out`` (0 when dropped)."""
    sizes = []
    for d in os.listdir(out):
        if not os.path.exists(os.path.join(out, d, "config.json")):
            continue
        total = 0
        for root, _, files in os.walk(os.path.join(out, d, "traces")):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        sizes.append(total)
    sizes.sort()
    return sizes[len(sizes) // 2] if sizes else None


def run(ctx: Context) -> list[Table]:
    n = 3 if ctx.quick else 10
    t = Table(f"campaign: an iteration as a Ray task vs a local soak iteration ({WORKLOAD} --variant ordered, free, "
              f"{ITERATION_S:g} s, {n} iterations each)",
              ["how", "iterations", "wall per iteration s", "× soak", "dispatch→recorded s", "task on host s",
               "stress run child s", "overhead s", "record KiB", "traces kept per run KiB", "Ray start+stop s", "exit"])
    common = ["--workloads", WORKLOAD, "--variants", "ordered", "--schedule", "free", "--iteration-duration",
              f"{ITERATION_S:g}s", "--seed", "5"]

    # the local soak: a duration that holds about n iterations (each ~1 s of run plus start-up)
    out = ctx.scratch("soak")
    ctx.progress(f"campaign: local soak, about {n} iterations")
    rc, wall, tail = _cli(["soak", "--duration", f"{n * (ITERATION_S + 1.2):.1f}s", *common, "--out", out],
                          timeout_s=60 + n * 10)
    base = None
    try:
        _, spent, k = _soak_row(os.path.join(out, "stress.db"))
        base = spent / k if k else None
        t.add("stress soak (local)", k, fmt_s(base, 2), "1.00×", "", "", "", "", "",
              f"{(_traces_bytes(out) or 0) / 1024:.0f}", "", rc)
    except (sqlite3.Error, TypeError) as e:
        t.add("stress soak (local)", "", "", "", "", "", "", "", "", "", "", f"FAILED: {e}: {tail[-300:]}")

    for keep in ("failed", "all"):
        out = ctx.scratch(f"campaign-{keep}")
        ctx.progress(f"campaign: embedded Ray, {n} iterations, --keep-traces {keep}")
        rc, wall, tail = _cli(["campaign", "--iterations", str(n), "--keep-traces", keep, *common, "--out", out],
                              timeout_s=120 + n * 10)
        try:
            cid, spent, k = _soak_row(os.path.join(out, "stress.db"))
            with open(os.path.join(out, cid, "progress.json")) as fh:
                tm = json.load(fh)["timings"]
        except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as e:
            t.add(f"stress campaign, embedded Ray, --keep-traces {keep}", "", "", "", "", "", "", "", "", "", "",
                  f"FAILED: {type(e).__name__}: {tail[-300:]}")
            continue
        per = spent / k if k else None
        t.add(f"stress campaign, embedded Ray, --keep-traces {keep}", k, fmt_s(per, 2),
              f"{per / base:.2f}×" if per and base else "–", fmt_s(tm.get("driver_s"), 2), fmt_s(tm.get("task_s"), 2),
              fmt_s(tm.get("child_s"), 2), fmt_s(tm.get("overhead_s"), 3),
              f"{(tm.get('record_bytes') or 0) / 1024:.0f}", f"{(_traces_bytes(out) or 0) / 1024:.0f}",
              fmt_s(wall - spent, 1), rc)
    t.notes += [
        "wall per iteration: spent_s / iterations (everything between two iterations: the child's start-up, the "
        "run, teardown, ingest; for a campaign also the Ray task's dispatch and the record's transfer).",
        "overhead: the driver's dispatch-to-recorded time minus the stress run child's own wall time (medians).",
        "traces kept: median size of a run directory's traces/ after --keep-traces (the soak uses the default, failed).",
        "Ray start+stop: the campaign process's wall minus its spent_s: ray.init of the embedded Ray and its shutdown, "
        "paid once per campaign.",
    ]
    return [t]
