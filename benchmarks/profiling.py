"""Section ``profile``: where a vCPU worker's time goes in ``migration-storm --variant
upstream``.

Two views of worker 0 (vCPU 0), each from its own run:

- **sampling** with py-spy (when it is installed: ``.venv/bin/pip install py-spy``):
  ``py-spy record --nonblocking --idle --format raw`` attached to the worker's pid while
  the run goes. Wall-clock samples (sleeping and blocked time included), not paused: the
  time shares are the honest ones;
- **deterministic** with cProfile around the worker's op loop (benchmarks/cprofile_run.py
  wraps ``stress.worker._loop`` before the coordinator forks): exact call counts per
  operation. cProfile adds ~0.3-1 µs to every call, which inflates small functions, so its
  times are shown but the shares are taken from the samples.
"""

from __future__ import annotations

import linecache
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from .common import REPO, Context, StressRunError, Table, run_stress, running_ops, stress_cmd

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
VARIANT = "upstream"
SEEDS = (1, 2, 3)  # a run that a finding stops early is retried with the next seed

CATEGORIES = [
    "lock: posix_ipc calls (sem_trywait / sem_post)",
    "lock: bookkeeping (spinlock.py fast path)",
    "lock: contended (blocked in sem_timedwait + slow path)",
    "noise: Cpu.jitter (sched_yield / sleep)",
    "interrupts: soft mask, dispatch, raise (cpu.py)",
    "trace (Cpu.trace / Cpu.event / Role.trace)",
    "model: old_vgic.py + migration_storm.py",
    "model: shared-state fields (layout.py properties)",
    "lockdep / site capture",
    "engine: op loop (worker.py)",
    "engine: parked for invariant checks",
    "other",
]


def py_spy_path() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(cand, os.X_OK):
        return cand
    return shutil.which("py-spy")


def categorize(func: str, file: str, line: int, src: str) -> str:
    f = file.replace("\\", "/")
    if f.endswith("shm_model/spinlock.py"):
        if func.endswith("_contended"):
            return CATEGORIES[2]
        if "self._try(" in src or "self._rel(" in src or "._wait(" in src:
            return CATEGORIES[0]
        return CATEGORIES[1]
    if f.endswith("shm_model/cpu.py"):
        if func.endswith("jitter"):
            return CATEGORIES[3]
        if func.endswith(".trace") or func.endswith(".event"):
            return CATEGORIES[5]
        return CATEGORIES[4]
    if f.endswith("shm_model/trace.py") or (f.endswith("stress/workload.py") and func.endswith("Role.trace")):
        return CATEGORIES[5]
    if f.endswith("shm_model/old_vgic.py") or "workloads/" in f:
        return CATEGORIES[6]
    if f.endswith("shm_model/layout.py"):
        return CATEGORIES[7]
    if f.endswith("stress/lockdep.py") or f.endswith("shm_model/sites.py"):
        return CATEGORIES[8]
    if f.endswith("stress/worker.py"):
        return CATEGORIES[10] if func == "_park" else CATEGORIES[9]
    return CATEGORIES[11]


def _src(file: str, line: int) -> str:
    path = file if os.path.isabs(file) else os.path.join(REPO, file)
    return linecache.getline(path, line)


# ---- sampling ---------------------------------------------------------------------------------

class Samples:
    def __init__(self) -> None:
        self.total = 0
        self.own: Counter = Counter()  # (func, file) -> samples with it as the leaf
        self.incl: Counter = Counter()  # (func, file) -> samples with it anywhere on the stack
        self.own_line: Counter = Counter()  # (func, file, line)
        self.cat: Counter = Counter()
        self.under: Counter = Counter()  # inclusive groups
        self.in_worker = 0

    def add(self, frames: list[tuple[str, str, int]], n: int) -> None:
        self.total += n
        # keep the worker's own frames (drop multiprocess's bootstrap under them)
        for i, (func, file, _) in enumerate(frames):
            if func == "worker_main" and file.endswith("stress/worker.py"):
                frames = frames[i:]
                self.in_worker += n
                break
        if not frames:
            self.cat[CATEGORIES[11]] += n
            return
        func, file, line = frames[-1]
        self.own[(func, file)] += n
        self.own_line[(func, file, line)] += n
        self.cat[categorize(func, file, line, _src(file, line))] += n
        for k in {(f, fi) for f, fi, _ in frames}:
            self.incl[k] += n
        names = [f for f, _, _ in frames]
        if any(f in ("Lock.lock", "Lock.unlock", "Lock.trylock") for f in names):
            self.under["inside Lock.lock/unlock (everything they run: ISRs at unmask, noise)"] += n
        if "Cpu.run_irqs" in names:
            self.under["inside Cpu.run_irqs (interrupt handlers)"] += n
        if any(f in ("Cpu.trace", "Cpu.event") for f in names):
            self.under["inside Cpu.trace / Cpu.event"] += n
        if "Cpu.jitter" in names:
            self.under["inside Cpu.jitter (noise)"] += n


def parse_raw(path: str) -> Samples:
    s = Samples()
    with open(path) as fh:
        for ln in fh:
            ln = ln.rstrip("\n")
            if not ln.strip():
                continue
            stack, _, count = ln.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = []
            for fr in stack.split(";"):
                m = FRAME.match(fr.strip())
                if m:
                    frames.append((m["func"], m["file"], int(m["line"])))
                elif fr.strip():
                    frames.append((fr.strip(), "?", 0))
            s.add(frames, n)
    return s


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in sorted(psutil.Process(pid).children(), key=lambda c: (c.create_time(), c.pid))]
    except Exception:
        out = []
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/children") as fh:
                    out += [int(x) for x in fh.read().split()]
            except OSError:
                pass
        return sorted(out)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def sample_worker(ctx: Context, spy: str, run_s: float, sample_s: float, rate: int, seed: int) -> dict[str, Any]:
    d = ctx.scratch("spy")
    cmd = stress_cmd("migration-storm", VARIANT, f"{run_s:g}s", seed=seed, out=d)
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    raw = os.path.join(d, "pyspy.raw")
    info: dict[str, Any] = {"command": " ".join(cmd[2:])}
    try:
        deadline = time.monotonic() + 20
        kids: list[int] = []
        while time.monotonic() < deadline and p.poll() is None:
            kids = _children(p.pid)
            if len(kids) >= 3:  # 2 vCPUs + the device
                break
            time.sleep(0.05)
        if len(kids) < 3:
            raise StressRunError(f"workers did not appear (children: {kids})")
        time.sleep(0.5)  # past start-up and the first chain misses
        pid = kids[0]  # worker 0 (vCPU 0): forked first
        info["pid"] = pid
        ctx.progress(f"profile: py-spy sampling worker pid {pid} for {sample_s:g} s at {rate} Hz")
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        r = subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(sample_s)), "--rate", str(rate),
                            "--nonblocking", "--idle", "--format", "raw", "-o", raw],
                           capture_output=True, text=True, timeout=sample_s + 60)
        cpu1, t1 = _cpu_s(pid), time.monotonic()
        if cpu0 is not None and cpu1 is not None:
            info["cpu_fraction"] = (cpu1 - cpu0) / (t1 - t0)
        m = re.search(r"Samples: (\d+) Errors: (\d+)", r.stdout + r.stderr)
        info["spy_samples"], info["spy_errors"] = (int(m[1]), int(m[2])) if m else (None, None)
        if r.returncode != 0 or not os.path.exists(raw):
            raise StressRunError(f"py-spy failed ({r.returncode}): {(r.stderr or r.stdout)[-800:]}")
        out, err = p.communicate(timeout=run_s + 60)
    except BaseException:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
        raise
    m = re.search(r"^run directory: (.+)$", out, re.M)
    if m:
        import json

        with open(os.path.join(m.group(1).strip(), "summary.json")) as fh:
            info["summary"] = json.load(fh)
        ctx.run_ids.append(info["summary"].get("run_id", ""))
    info["samples"] = parse_raw(raw)
    info["seed"] = seed
    return info


# ---- cProfile ---------------------------------------------------------------------------------

def cprofile_worker(ctx: Context, run_s: float, seed: int) -> dict[str, Any]:
    d = ctx.scratch("cprof")
    prof = os.path.join(d, "prof")
    stress_args = stress_cmd("migration-storm", VARIANT, f"{run_s:g}s", seed=seed, out=d)[3:]  # after "-m stress"
    cmd = [sys.executable, "-m", "benchmarks.cprofile_run", "--prof-dir", prof, "--wids", "0", "--"] + stress_args
    ctx.progress(f"profile: cProfile of worker 0 over a {run_s:g} s run, seed {seed}")
    res = run_stress(ctx, cmd, timeout_s=run_s + 90)
    path = os.path.join(prof, "w0.pstats")
    if not os.path.exists(path):
        raise StressRunError(f"no profile written ({path}); stderr: {res.stderr[-800:]}")
    return {"stats": pstats.Stats(path), "summary": res.summary, "seed": seed, "asked_s": run_s}


def _fn_label(key: tuple) -> str:
    file, line, name = key
    if file == "~":
        return name
    rel = os.path.relpath(file, REPO) if os.path.isabs(file) else file
    if rel.startswith(".."):
        parts = file.split(os.sep)
        rel = "/".join(parts[-2:])
    return f"{name} ({rel}:{line})"


def _cp_category(key: tuple) -> str:
    file, line, name = key
    if file == "~":
        if "posix_ipc" in name:
            return CATEGORIES[0]
        if "sched_yield" in name or "time.sleep" in name:
            return CATEGORIES[3]
        return "builtins: other (time.monotonic_ns, random, list ops ...)"
    rel = os.path.relpath(file, REPO) if os.path.isabs(file) else file
    fn = name
    if rel.endswith("shm_model/cpu.py"):
        fn = {"jitter": "Cpu.jitter", "trace": "Cpu.trace", "event": "Cpu.event"}.get(name, name)
    return categorize(fn if fn != "trace" or not rel.endswith("workload.py") else "Role.trace", rel, line, "")


def _cp_split(key: tuple, tt: float, callers: dict) -> list[tuple[str, float]]:
    """Category shares of one cProfile entry. A C function's time goes to the category its
    caller decides where that matters: time.sleep is noise in Cpu.jitter and parking in
    _park; a semaphore acquire is a blocked wait in Lock._contended."""
    if key[0] != "~" or not callers:
        return [(_cp_category(key), tt)]
    out = []
    for ck, cv in callers.items():
        t = cv[2] if isinstance(cv, tuple) else 0.0
        c = {"jitter": CATEGORIES[3], "_park": CATEGORIES[10], "_contended": CATEGORIES[2]}.get(ck[2])
        out.append((c or _cp_category(key), t))
    rest = tt - sum(t for _, t in out)
    if rest > 1e-9:
        out.append((_cp_category(key), rest))
    return out


# ---- the section ------------------------------------------------------------------------------

def run(ctx: Context) -> list[Table]:
    tables: list[Table] = []
    if "ns_spin" not in ctx.facts:  # run alone (--only profile): measure the pair costs it compares with
        from .primitives import quick_facts

        quick_facts(ctx)
    spy = py_spy_path()
    run_s, sample_s = (8.0, 5.0) if ctx.quick else (20.0, 15.0)
    rate = 250
    spy_info: dict[str, Any] | None = None
    spy_err = ""
    early: list[str] = []  # runs a finding stopped before their time (upstream is expected clean)
    if spy:
        for seed in SEEDS:
            try:
                info = sample_worker(ctx, spy, run_s, sample_s, rate, seed)
            except (StressRunError, subprocess.SubprocessError, OSError) as e:
                spy_err = str(e)
                ctx.progress(f"profile: py-spy sampling failed: {spy_err.splitlines()[0] if spy_err else e}")
                continue
            if spy_info is None or info["samples"].total > spy_info["samples"].total:
                spy_info = info
            why = _early(info.get("summary") or {}, run_s)
            if not why:
                break
            early.append(f"py-spy run, seed {seed}: {why}")
            ctx.progress(f"profile: {early[-1]}; trying the next seed")
    else:
        spy_err = "py-spy is not installed (.venv/bin/pip install py-spy); sampling view skipped"
        ctx.progress("profile: " + spy_err)
    cp: dict[str, Any] | None = None
    cp_s = 5.0 if ctx.quick else 10.0
    for seed in SEEDS:
        try:
            c = cprofile_worker(ctx, cp_s, seed)
        except StressRunError as e:
            ctx.progress(f"profile: cProfile run failed: {e}")
            continue
        if cp is None or c["summary"].get("elapsed_s", 0) > cp["summary"].get("elapsed_s", 0):
            cp = c
        why = _early(c["summary"], cp_s)
        if not why:
            break
        early.append(f"cProfile run, seed {seed}: {why}")
        ctx.progress(f"profile: {early[-1]}; trying the next seed")

    ops_per_op: dict[str, float] = {}
    if cp is not None:
        tables.append(_cprofile_table(ctx, cp, ops_per_op))
    if spy_info is not None:
        tables.insert(0, _spy_table(spy_info))
        tables.insert(1, _share_table(spy_info, cp))
    text = _comparison(ctx, spy_info, cp, ops_per_op)
    if tables:
        tables[-1].notes += text
    if spy_err and tables:
        tables[0].notes.append(f"py-spy: {spy_err.splitlines()[0]}")
    if early and tables:
        tables[0].notes.append("Runs stopped early by a finding (the longest was kept): " + "; ".join(early))
    return tables


def _early(summary: dict, asked_s: float) -> str:
    """Why a profiled run ended before its duration, or '' if it ran its course."""
    if not summary or summary.get("stop_reason") == "duration":
        return ""
    fs = [f"{f['outcome']} @ {f['since_start_s']:.2f} s" for f in summary.get("findings", [])
          if not f.get("info") and not f.get("known")]
    return (f"stopped ({summary.get('stop_reason')}) after {summary.get('elapsed_s', 0):.1f} of {asked_s:g} s"
            + (f" by {', '.join(fs)}" if fs else ""))


def _spy_table(info: dict[str, Any]) -> Table:
    s: Samples = info["samples"]
    tot = s.total or 1
    t = Table(f"profile (py-spy, wall-clock samples): worker 0 = vCPU 0 of migration-storm --variant {VARIANT}, "
              f"top 15 functions by own time",
              ["function (file)", "own %", "inclusive %", "hottest line (own %)"])
    by_line: dict[tuple, tuple] = {}
    for (func, file, line), n in s.own_line.items():
        if (func, file) not in by_line or n > by_line[(func, file)][1]:
            by_line[(func, file)] = (line, n)
    for (func, file), n in s.own.most_common(15):
        line, ln = by_line.get((func, file), (0, 0))
        src = _src(file, line).strip()
        t.add(f"{func} ({file})", f"{100 * n / tot:.1f}", f"{100 * s.incl[(func, file)] / tot:.1f}",
              f":{line} `{src[:60]}` ({100 * ln / tot:.1f})")
    summ = info.get("summary") or {}
    t.notes.append(f"{s.total} samples ({info.get('spy_errors')} sampling errors dropped) of pid {info.get('pid')}, "
                   f"{100 * s.in_worker / tot:.0f}% inside worker_main; run: `{info['command']}`"
                   + (f" → {summ.get('total_ops_per_s', 0):,.0f} ops/s, {summ.get('elapsed_s')} s" if summ else ""))
    t.notes.append("Top 15 functions by cumulative (inclusive) time: "
                   + "; ".join(f"{f} {100 * n / tot:.0f}%" for (f, _), n in s.incl.most_common(15)))
    return t


def _share_table(info: dict[str, Any], cp: dict[str, Any] | None) -> Table:
    s: Samples = info["samples"]
    tot = s.total or 1
    cp_cat: Counter = Counter()
    cp_tot = 0.0
    if cp is not None:
        for key, (cc, nc, tt, ct, callers) in cp["stats"].stats.items():
            for c, x in _cp_split(key, tt, callers):
                cp_cat[c] += x
            cp_tot += tt
    t = Table("profile: share of worker 0's time by category (own time of the innermost Python frame)",
              ["category", "py-spy % of wall time", "cProfile % of own time"])
    cats = CATEGORIES + sorted(k for k in cp_cat if k not in CATEGORIES)
    for c in cats:
        a = s.cat.get(c, 0)
        b = cp_cat.get(c, 0.0)
        if not a and not b:
            continue
        t.add(c, f"{100 * a / tot:.1f}", f"{100 * b / cp_tot:.1f}" if cp_tot else "–")
    for k, n in sorted(s.under.items()):
        t.add(f"(inclusive) {k}", f"{100 * n / tot:.1f}", "")
    lock_own = s.cat.get(CATEGORIES[0], 0) + s.cat.get(CATEGORIES[1], 0) + s.cat.get(CATEGORIES[2], 0)
    t.notes.append(f"Lock acquire/release own time: {100 * lock_own / tot:.1f}% (posix_ipc calls "
                   f"{100 * s.cat.get(CATEGORIES[0], 0) / tot:.1f}%); "
                   f"trace {100 * s.cat.get(CATEGORIES[5], 0) / tot:.1f}%; "
                   f"model code {100 * (s.cat.get(CATEGORIES[6], 0) + s.cat.get(CATEGORIES[7], 0)) / tot:.1f}%; "
                   f"noise {100 * s.cat.get(CATEGORIES[3], 0) / tot:.1f}%.")
    t.notes.append("py-spy attributes a C call (posix_ipc, time.monotonic_ns, os.sched_yield) to the Python line "
                   "that makes it; the posix_ipc row is the spinlock.py lines that call the semaphore. cProfile "
                   "lists C calls separately, and its per-call overhead inflates the small Python functions.")
    return t


def _cprofile_table(ctx: Context, cp: dict[str, Any], ops_per_op: dict[str, float]) -> Table:
    st = cp["stats"].stats
    total_tt = sum(v[2] for v in st.values()) or 1e-9
    ncalls = {}
    for key, (cc, nc, tt, ct, callers) in st.items():
        ncalls[(key[0].split("/")[-1], key[2])] = ncalls.get((key[0].split("/")[-1], key[2]), 0) + nc
    ops = ncalls.get(("migration_storm.py", "vcpu_run"), 0) + ncalls.get(("migration_storm.py", "write_itargetsr"), 0)
    ops = ops or 1
    for name, k in [("lock", ("spinlock.py", "lock")), ("unlock", ("spinlock.py", "unlock")),
                    ("trylock", ("spinlock.py", "trylock")),
                    ("contended", ("spinlock.py", "_contended")), ("trace", ("cpu.py", "trace")),
                    ("jitter", ("cpu.py", "jitter")), ("run_irqs", ("cpu.py", "run_irqs")),
                    ("handle", ("cpu.py", "_handle")), ("new_chain", ("worker.py", "new_chain")),
                    ("vcpu_run", ("migration_storm.py", "vcpu_run")),
                    ("migrate", ("migration_storm.py", "write_itargetsr")), ("park", ("worker.py", "_park"))]:
        ops_per_op[name] = ncalls.get(k, 0) / ops
    ops_per_op["ops"] = ops
    for name in ("spin_lock", "spin_lock_irqsave", "spin_lock_irq", "__enter__", "trylock"):
        ops_per_op["via_" + name] = ncalls.get(("spinlock.py", name), 0) / ops
    ops_per_op["isr"] = ncalls.get(("cpu.py", "_handle"), 0) / ops
    ops_per_op["posix"] = sum(nc for key, (cc, nc, tt, ct, callers) in st.items()
                              if key[0] == "~" and "posix_ipc" in key[2]) / ops
    t = Table(f"profile (cProfile, deterministic): worker 0 of migration-storm --variant {VARIANT}, top 15 by own "
              f"time", ["function", "calls", "calls/op", "own ms", "own %", "cumulative %", "own ns/call"])
    top = sorted(st.items(), key=lambda kv: -kv[1][2])[:15]
    for key, (cc, nc, tt, ct, callers) in top:
        t.add(_fn_label(key), f"{nc:,}", f"{nc / ops:.2f}", f"{tt * 1e3:,.0f}", f"{100 * tt / total_tt:.1f}",
              f"{100 * ct / total_tt:.1f}", f"{tt / nc * 1e9:,.0f}" if nc else "–")
    cum = sorted(((k, v) for k, v in st.items() if k[0] != "~"), key=lambda kv: -kv[1][3])[:15]
    cs = cp["summary"]
    t.notes.append(f"Run: seed {cp['seed']}, {cs.get('elapsed_s')} s of {cp['asked_s']:g} s asked, stop reason "
                   f"{cs.get('stop_reason')}, {cs.get('total_ops_per_s', 0):,.0f} ops/s (all workers, profiled "
                   f"worker 0 included).")
    t.notes.append(f"{ops:,} operations of worker 0 (vcpu_run {ops_per_op['vcpu_run']:.2f}/op, migrate "
                   f"{ops_per_op['migrate']:.2f}/op); profiled own time {total_tt:.2f} s. Per operation: "
                   f"{ops_per_op['lock']:.2f} Lock.lock, {ops_per_op['unlock']:.2f} Lock.unlock, "
                   f"{ops_per_op['posix']:.2f} posix_ipc calls, {ops_per_op['contended']:.3f} contended waits, "
                   f"{ops_per_op['trace']:.2f} trace events, {ops_per_op['handle']:.2f} interrupts handled, "
                   f"{ops_per_op['jitter']:.2f} noise draws, {ops_per_op['new_chain']:.4f} chain misses.")
    t.notes.append("Top 15 by cumulative time: " + "; ".join(
        f"{k[2]} ({os.path.basename(k[0])}) {100 * v[3] / total_tt:.0f}%" for k, v in cum))
    return t


def _comparison(ctx: Context, spy: dict[str, Any] | None, cp: dict[str, Any] | None,
                per_op: dict[str, float]) -> list[str]:
    out: list[str] = []
    f = ctx.facts
    bare, pair, irqsave = f.get("ns_bare"), f.get("ns_spin"), f.get("ns_irqsave")
    summ = (spy or {}).get("summary") or (cp or {}).get("summary") or {}
    per_s = summ.get("ops_per_s", {})
    ops_run, t_run = running_ops(summ.get("run_dir", "")) if summ.get("run_dir") else (None, None)
    if ops_run and t_run:  # rates while the run went (summary.json's include the teardown)
        per_s = {k: v / t_run for k, v in ops_run.items()}
    vcpus = (summ.get("workers") or {}).get("vcpu", 2)
    vops = (per_s.get("vcpu_run", 0) + per_s.get("migrate", 0)) / max(1, vcpus)
    us_op = 1e6 / vops if vops else None
    cpu_frac = (spy or {}).get("cpu_fraction")
    if us_op:
        out.append(f"Throughput: a vCPU worker did {vops:,.0f} ops/s in the sampled run, {us_op:.0f} µs of wall time "
                   f"per operation (its interrupt handlers, noise, parking included)"
                   + (f"; it was on a CPU {100 * cpu_frac:.0f}% of the sampled time (2 cores shared by the 3 workers, "
                      f"the coordinator, py-spy and other users)" if cpu_frac is not None else "") + ".")
    if spy:
        sm: Samples = spy["samples"]
        tot = sm.total or 1

        def pct(*cats: str) -> float:
            return 100 * sum(sm.cat.get(c, 0) for c in cats) / tot

        out.append(f"Sampled shares of wall time: lock acquire/release {pct(*CATEGORIES[:3]):.0f}% (fast-path "
                   f"bookkeeping {pct(CATEGORIES[1]):.0f}%, posix_ipc calls {pct(CATEGORIES[0]):.0f}%, blocked or "
                   f"slow path when contended {pct(CATEGORIES[2]):.0f}%), noise {pct(CATEGORIES[3]):.0f}%, model "
                   f"{pct(CATEGORIES[6], CATEGORIES[7]):.0f}%, trace {pct(CATEGORIES[5]):.0f}%, interrupt "
                   f"plumbing {pct(CATEGORIES[4]):.0f}%, op loop {pct(CATEGORIES[9]):.0f}%, parked for invariant "
                   f"checks {pct(CATEGORIES[10]):.0f}%.")
    if cp is not None:
        st = cp["stats"].stats
        ops = per_op.get("ops", 1)
        noise_us = 0.0
        parts = []
        for key, (cc, nc, tt, ct, callers) in st.items():
            if key[0] == "~" and ("sched_yield" in key[2] or "time.sleep" in key[2]):
                for ck, cv in callers.items():
                    if ck[2] != "jitter" or not cv[1]:
                        continue
                    n, t = cv[1], cv[2]
                    noise_us += t / ops * 1e6
                    parts.append(f"{n / ops:.2f} {key[2].replace('<built-in method ', '').rstrip('>')} per op at "
                                 f"{t / n * 1e6:.0f} µs each")
        if parts:
            out.append(f"Noise (--noise 0.2, the workload's default: a draw at every lock operation): "
                       f"{'; '.join(parts)} (the sleep asks 0–50 µs) ≈ {noise_us:.0f} µs per operation"
                       + (f", {100 * noise_us / us_op:.0f}% of the sampled run's time per operation" if us_op else "")
                       + ". On a loaded 2-core machine a yield or a short sleep gives the CPU away for a "
                       "scheduler slice: noise, not instrumentation, sets the pace of this workload.")
    if per_op.get("lock") and irqsave and us_op:
        est = per_op["lock"] * irqsave / 1e3
        via = ", ".join(f"{per_op['via_' + n]:.2f} {n}" for n in ("spin_lock_irqsave", "spin_lock", "spin_lock_irq",
                                                                   "__enter__") if per_op.get("via_" + n))
        line = (f"Lock fast path: {per_op['lock']:.2f} lock pairs per operation (cProfile counts: {via}) × "
                f"{irqsave:,.0f} ns per uncontended irqsave pair (this run's primitives) "
                f"≈ {est:.1f} µs per operation, {100 * est / us_op:.0f}% of its wall time")
        if spy:
            sm = spy["samples"]
            share = sum(sm.cat.get(c, 0) for c in CATEGORIES[:2]) / (sm.total or 1)
            insitu = share * us_op / per_op["lock"]
            line += (f"; sampled, the fast path (bookkeeping + posix_ipc calls) takes {100 * share:.0f}% of wall "
                     f"time, {insitu:.1f} µs of wall time per pair in the run"
                     + (f" (≈ {insitu * cpu_frac:.1f} µs of CPU at the worker's {100 * cpu_frac:.0f}% CPU share)"
                        if cpu_frac else ""))
        out.append(line + ".")
    if per_op.get("trace") and f.get("ns_trace"):
        est = per_op["trace"] * f["ns_trace"] / 1e3
        out.append(f"Trace: {per_op['trace']:.2f} events per operation (op start, model events; locks are not "
                   f"traced without --trace-locks) × {f['ns_trace']:,.0f} ns ≈ {est:.1f} µs per operation"
                   + (f" ({100 * est / us_op:.0f}%)" if us_op else "") + ".")
    if pair and bare:
        out.append(f"Against FACTS.md: bare pair 115–180 ns there, {bare:,.0f} ns here; the instrumented pair was "
                   f"550–700 ns (3.4–5.0× bare) with owner, held stack and waiting record in shm; the engine's "
                   f"pair now also does the soft mask, the chain-cache lookup, the noise and trace checks, the "
                   f"per-class statistics, hold maximum and hold histogram: {pair:,.0f} ns, "
                   f"{pair / bare:.1f}× bare in this run (target 3.0×). Soft-mask pair "
                   f"{f.get('ns_softmask', 0):,.0f} ns (FACTS: 120–185 through functions), one trace event "
                   f"{f.get('ns_trace', 0):,.0f} ns.")
    return out
