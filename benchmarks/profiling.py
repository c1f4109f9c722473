"""Section ``profile``: where a vCPU worker's time goes in ``migration-storm --variant
upstream``.

Two views of worker 0 (vCPU 0), each from its own run:

- **sampling** with py-spy (when it is installed: ``.venv/bin/pip install py-spy``):
  ``py-spy record --nonblocking --idle --format raw`` attached to the worker's pid while
  the run goes. Wall-clock samples (sleeping and blocked time included), not paused: the
  time shares are the honest ones. Without ``--native`` py-spy sees Python frames only: time
  inside a C function (the lock fast path of shm_model/_fastlock.c, ``CpuCore.trace``,
  posix_ipc, ``time.sleep``) is the own time of the Python line that calls it, so the lock
  fast path is classified by the source text of that line (a call of ``spin_lock*``,
  ``spin_unlock*``, ``.lock()``/``.unlock()``/``.trylock()``, ``with ... lock``); the C
  code's calls back into Python (``Cpu.jitter``, ``Cpu.run_irqs``, ``Lock._contended``,
  lockdep's ``new_chain``) are frames of their own and are classified as themselves;
- **deterministic** with cProfile around the worker's op loop (benchmarks/cprofile_run.py
  wraps ``stress.worker._loop`` before the coordinator forks): exact call counts per
  operation, the C functions listed separately (file ``~``). cProfile adds ~0.3-1 µs to
  every call, an order of magnitude more than a C fast-path call costs, and inflates small
  functions, so its times are shown but the shares are taken from the samples.
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

LOCK_C = "lock: C fast path (spin_lock* / spin_unlock* / Lock methods, shm_model/_fastlock.c)"
LOCK_CONT = "lock: contended (Lock._contended: blocked in sem_timedwait + slow path)"
LOCK_OTHER = "lock: assertions, queries, out-of-order unlock (assert_held, held_by_me ...)"
NOISE = "noise: Cpu.jitter (sched_yield / sleep)"
IRQ = "interrupts: soft mask, dispatch, raise (cpu.py)"
TRACE = "trace (CpuCore.trace in C; Cpu.event / Role.trace)"
MODEL = "model: old_vgic.py + migration_storm.py"
FIELDS = "model: shared-state fields (layout.py properties)"
LOCKDEP = "lockdep / site capture"
LOOP = "engine: op loop (worker.py)"
PARKED = "engine: parked for invariant checks"
OTHER = "other"
BUILTINS = "builtins: other (time.monotonic_ns, random, list ops ...)"
CATEGORIES = [LOCK_C, LOCK_CONT, LOCK_OTHER, NOISE, IRQ, TRACE, MODEL, FIELDS, LOCKDEP, LOOP, PARKED, OTHER]
LOCK_CATS = (LOCK_C, LOCK_CONT, LOCK_OTHER)

# a source line that calls the C lock fast path (acquire or release)
LOCK_CALL = re.compile(r"\bspin_(?:lock|unlock|trylock)\w*\s*\(|\.(?:lock|unlock|trylock)\s*\(\s*\)"
                       r"|^\s*with\s[^#]*lock\w*\s*(?:as\s+\w+\s*)?[:,]")
# a source line that asks about a lock (C queries) or asserts it held
LOCK_QUERY = re.compile(r"\b(?:spin_is_locked|assert_held)\s*\(|\.(?:held_by_me|is_locked|owner|_force_release)\s*\(")
# a source line that records a trace event (CpuCore.trace directly, or Cpu.event / Role.trace)
TRACE_CALL = re.compile(r"\btrace\s*\(|\.event\s*\(")
# Python functions the C fast path calls back (their frames sit right under the calling line)
CALLBACKS = ("jitter", "run_irqs", "_contended", "new_chain", "_unlock_out_of_order", "irqs_enabled_holding")

# cProfile names of the C extension's functions: "<built-in method shm_model._fastlock.spin_lock>",
# "<method 'lock' of 'shm_model._fastlock.LockCore' objects>"
_C_FUNC = re.compile(r"^<built-in method (?:[\w.]*\.)?_fastlock\.(\w+)>$")
_C_METH = re.compile(r"^<method '(\w+)' of '(?:[\w.]*\.)?_fastlock\.(LockCore|CpuCore)' objects>$")
C_ACQUIRE = ("spin_lock", "spin_lock_irqsave", "spin_lock_irq", "spin_trylock", "LockCore.lock", "LockCore.trylock",
             "LockCore.__enter__")
C_RELEASE = ("spin_unlock", "spin_unlock_irqrestore", "spin_unlock_irq", "LockCore.unlock", "LockCore.__exit__")
C_QUERY = ("spin_is_locked", "LockCore.is_locked", "LockCore.held_by_me", "LockCore.owner", "LockCore._force_release")


def fast_name(name: str) -> str | None:
    """``spin_lock`` / ``LockCore.lock`` / ``CpuCore.trace`` for a cProfile entry of
    shm_model._fastlock, else None."""
    m = _C_FUNC.match(name)
    if m:
        return m[1]
    m = _C_METH.match(name)
    return f"{m[2]}.{m[1]}" if m else None


def py_spy_path() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(cand, os.X_OK):
        return cand
    return shutil.which("py-spy")


def categorize(func: str, file: str, line: int, src: str) -> str:
    """Category of a sample whose innermost Python frame is ``func`` at ``file:line`` (``src``
    is that line's text: a C call made there is classified by what it calls), or of a cProfile
    Python function (``src`` empty)."""
    f = file.replace("\\", "/")
    if f.endswith("shm_model/spinlock.py") and func.endswith("_contended"):
        return LOCK_CONT
    if f.endswith("stress/worker.py") and func == "_park":
        return PARKED
    if f.endswith("shm_model/cpu.py") and func.endswith("jitter"):
        return NOISE
    if src and not src.lstrip().startswith(("def ", "async def ")):
        if LOCK_CALL.search(src):
            return LOCK_C
        if LOCK_QUERY.search(src):
            return LOCK_OTHER
        if TRACE_CALL.search(src):
            return TRACE
        if "local_irq_" in src:
            return IRQ
    if f.endswith("shm_model/spinlock.py"):
        return LOCK_OTHER
    if f.endswith("shm_model/cpu.py"):
        if func.endswith(".trace") or func.endswith(".event") or func in ("trace", "event"):
            return TRACE
        return IRQ
    if f.endswith("shm_model/trace.py") or (f.endswith("stress/workload.py") and func.endswith("Role.trace")):
        return TRACE
    if "shm_model/xen/old_vgic/" in f or "workloads/" in f:
        return MODEL
    if f.endswith("shm_model/layout.py"):
        return FIELDS
    if (f.endswith("stress/lockdep.py") or f.endswith("shm_model/sites.py")
            or (f.endswith("shm_model/arena.py") and func.endswith("acquire_retrying"))):
        return LOCKDEP
    if f.endswith("stress/worker.py"):
        return LOOP
    return OTHER


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
            self.cat[OTHER] += n
            return
        func, file, line = frames[-1]
        self.own[(func, file)] += n
        self.own_line[(func, file, line)] += n
        leaf = categorize(func, file, line, _src(file, line))
        self.cat[leaf] += n
        for k in {(f, fi) for f, fi, _ in frames}:
            self.incl[k] += n
        names = [f for f, _, _ in frames]
        # inside a lock call: the innermost frame is a line calling the C fast path, or that
        # line's next frame is a Python function the C code called back
        for i, (f, fi, ln) in enumerate(frames):
            if LOCK_CALL.search(_src(fi, ln)) and (i == len(frames) - 1 or frames[i + 1][0].endswith(CALLBACKS)):
                self.under["inside a lock call (the C fast path + what it calls back: noise, ISRs at unmask, "
                           "contended wait, lockdep)"] += n
                break
        if "Cpu.run_irqs" in names:
            self.under["inside Cpu.run_irqs (interrupt handlers)"] += n
        if any(f in ("Role.trace", "Cpu.event") for f in names) or leaf == TRACE:
            self.under["inside a trace call (Role.trace / Cpu.event / CpuCore.trace)"] += n
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


def _cp_category(key: tuple) -> str | None:
    """Category of a cProfile entry, or None for a C function whose caller decides (posix_ipc,
    sleep and yield, CpuCore.now)."""
    file, line, name = key
    if file == "~":
        fn = fast_name(name)
        if fn in C_ACQUIRE or fn in C_RELEASE:
            return LOCK_C
        if fn in C_QUERY:
            return LOCK_OTHER
        if fn == "CpuCore.trace":
            return TRACE
        if fn is not None and fn.startswith("CpuCore.local_irq_"):
            return IRQ
        if fn is not None or "posix_ipc" in name or "sched_yield" in name or "time.sleep" in name:
            return None
        return BUILTINS
    rel = os.path.relpath(file, REPO) if os.path.isabs(file) else file
    fn = name
    if rel.endswith("shm_model/cpu.py"):
        fn = {"jitter": "Cpu.jitter", "event": "Cpu.event"}.get(name, name)
    return categorize(fn if fn != "trace" or not rel.endswith("workload.py") else "Role.trace", rel, line, "")


# a C function's time goes to its caller's category when the caller is one of these
_BY_CALLER = {"jitter": NOISE, "_park": PARKED, "_contended": LOCK_CONT}


def _cp_split(key: tuple, tt: float, callers: dict) -> list[tuple[str, float]]:
    """Category shares of one cProfile entry. A C function's time goes to the category its
    caller decides where that matters: time.sleep is noise in Cpu.jitter and parking in
    _park; a semaphore acquire (and a trace event) in Lock._contended is the contended wait;
    posix_ipc, sleep and yield elsewhere go to their caller's category."""
    if key[0] != "~":
        return [(_cp_category(key) or OTHER, tt)]
    own = _cp_category(key)
    if not callers:
        return [(own or BUILTINS, tt)]
    out = []
    for ck, cv in callers.items():
        t = cv[2] if isinstance(cv, tuple) else 0.0
        c = _BY_CALLER.get(ck[2]) if own not in (LOCK_C, LOCK_OTHER) else None
        out.append((c or own or _cp_category(ck) or BUILTINS, t))
    rest = tt - sum(t for _, t in out)
    if rest > 1e-9:
        out.append((own or BUILTINS, rest))
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
    t.notes.append("C functions have no frame of their own here (py-spy without --native): the lock fast path "
                   "(spin_lock_irqsave ..., shm_model/_fastlock.c), CpuCore.trace, posix_ipc and time.sleep count "
                   "as own time of the Python function and line that call them. --nonblocking reads the stack "
                   "while the worker runs: a few samples mix frames of two moments.")
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
    t = Table("profile: share of worker 0's time by category (py-spy: the innermost Python line; cProfile: own "
              "time per function, C functions separately)",
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

    def pct(*cats: str) -> float:
        return 100 * sum(s.cat.get(c, 0) for c in cats) / tot

    t.notes.append(f"Lock own time: {pct(*LOCK_CATS):.1f}% (C fast path, sampled at its calling lines, "
                   f"{pct(LOCK_C):.1f}%; contended {pct(LOCK_CONT):.1f}%; assertions and queries "
                   f"{pct(LOCK_OTHER):.1f}%); trace {pct(TRACE):.1f}%; model code {pct(MODEL, FIELDS):.1f}%; "
                   f"noise {pct(NOISE):.1f}%.")
    t.notes.append("py-spy: a sample is classified by its innermost Python line. A line that calls spin_lock*/"
                   "spin_unlock*/.lock()/.unlock()/.trylock() or opens `with ... lock` is the C fast path (argument "
                   "evaluation and the call itself included); one that calls cpu.trace / .event / trace is trace; "
                   "one that calls assert_held / held_by_me / spin_is_locked is a lock query. What the C code calls "
                   "back in Python (Cpu.jitter, Cpu.run_irqs, Lock._contended, lockdep's new_chain) is its own "
                   "innermost frame and counts in its own row; the '(inclusive) inside a lock call' row adds it "
                   "back. The fast path's sem_trywait/sem_post are inside the C call; posix_ipc is called from "
                   "Python only on the contended path (blocked sem_timedwait slices, in the contended row).")
    t.notes.append("cProfile: the rows of the C functions are their own time (callbacks into Python excluded); a "
                   "posix_ipc call, sleep or yield counts in its caller's category. cProfile's ~0.3-1 µs per call is "
                   "an order of magnitude more than a C fast-path call costs (see the cProfile table's notes), so the "
                   "C and small Python rows are inflated against the wall-time samples.")
    return t


def _cprofile_table(ctx: Context, cp: dict[str, Any], ops_per_op: dict[str, float]) -> Table:
    st = cp["stats"].stats
    total_tt = sum(v[2] for v in st.values()) or 1e-9
    ncalls: dict[tuple[str, str], int] = {}
    fast: Counter = Counter()  # shm_model._fastlock function/method -> calls
    fast_tt: Counter = Counter()
    for key, (cc, nc, tt, ct, callers) in st.items():
        k = (key[0].split("/")[-1], key[2])
        ncalls[k] = ncalls.get(k, 0) + nc
        fn = fast_name(key[2]) if key[0] == "~" else None
        if fn:
            fast[fn] += nc
            fast_tt[fn] += tt
    ops = ncalls.get(("migration_storm.py", "vcpu_run"), 0) + ncalls.get(("migration_storm.py", "write_itargetsr"), 0)
    ops = ops or 1
    for name, k in [("contended", ("spinlock.py", "_contended")),
                    ("unlock_ooo", ("spinlock.py", "_unlock_out_of_order")),
                    ("jitter", ("cpu.py", "jitter")), ("run_irqs", ("cpu.py", "run_irqs")),
                    ("handle", ("cpu.py", "_handle")), ("new_chain", ("worker.py", "new_chain")),
                    ("vcpu_run", ("migration_storm.py", "vcpu_run")),
                    ("migrate", ("migration_storm.py", "write_itargetsr")), ("park", ("worker.py", "_park"))]:
        ops_per_op[name] = ncalls.get(k, 0) / ops
    ops_per_op["ops"] = ops
    # `with lock:` calls LockCore.__enter__ from the interpreter's with-statement opcode, which
    # cProfile does not see; its __exit__ is a call it sees: count those pairs by the larger
    fast["LockCore.__enter__"] = max(fast["LockCore.__enter__"], fast["LockCore.__exit__"])
    for fn in C_ACQUIRE + C_RELEASE:
        ops_per_op["via_" + fn] = fast[fn] / ops
    ops_per_op["lock"] = sum(fast[fn] for fn in C_ACQUIRE) / ops
    ops_per_op["unlock"] = sum(fast[fn] for fn in C_RELEASE) / ops
    ops_per_op["lock_c_ns"] = (1e9 * sum(fast_tt[fn] for fn in C_ACQUIRE + C_RELEASE)
                               / max(1, sum(fast[fn] for fn in C_ACQUIRE + C_RELEASE)))
    ops_per_op["trace"] = fast["CpuCore.trace"] / ops
    ops_per_op["event"] = ncalls.get(("cpu.py", "event"), 0) / ops
    ops_per_op["isr"] = ops_per_op["handle"]
    posix = posix_cont = 0
    for key, (cc, nc, tt, ct, callers) in st.items():
        if key[0] == "~" and "posix_ipc" in key[2]:
            posix += nc
            posix_cont += sum(cv[1] for ck, cv in callers.items() if ck[2] == "_contended")
    ops_per_op["posix"], ops_per_op["posix_contended"] = posix / ops, posix_cont / ops
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
    acq = ", ".join(f"{ops_per_op['via_' + fn]:.2f} {fn}" for fn in C_ACQUIRE if ops_per_op.get("via_" + fn))
    t.notes.append(f"{ops:,} operations of worker 0 (vcpu_run {ops_per_op['vcpu_run']:.2f}/op, migrate "
                   f"{ops_per_op['migrate']:.2f}/op); profiled own time {total_tt:.2f} s. Per operation: "
                   f"{ops_per_op['lock']:.2f} lock acquisitions through the C fast path ({acq or 'none'}), "
                   f"{ops_per_op['unlock']:.2f} releases, {ops_per_op['contended']:.3f} contended waits "
                   f"(Lock._contended), {ops_per_op['posix']:.2f} posix_ipc calls from Python "
                   f"({ops_per_op['posix_contended']:.2f} of them sem_timedwait slices of the contended waits; the "
                   f"fast path's sem_trywait/sem_post are inside the C calls and not counted), "
                   f"{ops_per_op['trace']:.2f} trace events (CpuCore.trace; {ops_per_op['event']:.2f} of them model "
                   f"events through Cpu.event), {ops_per_op['handle']:.2f} interrupts handled, "
                   f"{ops_per_op['jitter']:.2f} noise draws, {ops_per_op['new_chain']:.4f} chain misses.")
    pair = ctx.facts.get("ns_spin")
    t.notes.append(f"Own time of the C lock functions under cProfile: {ops_per_op['lock_c_ns']:,.0f} ns per call, "
                   f"the profiler's own cost around each call and around its Cpu.jitter callback included"
                   + (f" (without a profiler: ≈ {pair / 2:,.0f} ns per call, half of this run's primitives' "
                      f"spin_lock/spin_unlock pair)" if pair else "") + ".")
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

        out.append(f"Sampled shares of wall time: lock calls {pct(*LOCK_CATS):.0f}% (C fast path, at the lines "
                   f"that call it, {pct(LOCK_C):.0f}%; blocked or slow path when contended {pct(LOCK_CONT):.0f}%; "
                   f"assertions and queries {pct(LOCK_OTHER):.0f}%), noise {pct(NOISE):.0f}%, model "
                   f"{pct(MODEL, FIELDS):.0f}%, trace {pct(TRACE):.0f}%, interrupt plumbing {pct(IRQ):.0f}%, op loop "
                   f"{pct(LOOP):.0f}%, parked for invariant checks {pct(PARKED):.0f}%.")
    if cp is not None:
        st = cp["stats"].stats
        ops = per_op.get("ops", 1)
        cp_us_op = sum(v[2] for v in st.values()) / ops * 1e6 or 1.0  # profiled wall time of the op loop per op
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
            out.append(f"Noise (--noise 0.2, the workload's default: the C fast path draws once per blocking "
                       f"acquisition, {per_op.get('jitter', 0):.2f} draws per op, calling Cpu.jitter with interrupts "
                       f"soft-masked), in the cProfile run: {'; '.join(parts)} (the sleep asks 0–50 µs) ≈ "
                       f"{noise_us:.0f} µs per operation, {100 * noise_us / cp_us_op:.0f}% of that run's "
                       f"{cp_us_op:.0f} µs per operation (profiled, so slower)"
                       + (f"; sampled without a profiler, noise is "
                          f"{100 * spy['samples'].cat.get(NOISE, 0) / (spy['samples'].total or 1):.0f}% of wall time"
                          if spy else "")
                       + ". On a loaded 2-core machine a yield or a short sleep gives the CPU away for a "
                       "scheduler slice: noise, not instrumentation, sets the pace of this workload.")
    if per_op.get("lock") and pair and us_op:
        # each kind of acquisition at this run's primitives' cost of its pair
        cost = {"spin_lock_irqsave": irqsave or pair, "LockCore.lock": f.get("ns_method") or pair,
                "LockCore.__enter__": f.get("ns_with") or pair}
        est_ns = sum(per_op.get("via_" + n, 0) * cost.get(n, pair) for n in C_ACQUIRE)
        est = est_ns / 1e3
        via = ", ".join(f"{per_op['via_' + n]:.2f} {n}" for n in C_ACQUIRE if per_op.get("via_" + n))
        line = (f"Lock fast path (C): {per_op['lock']:.2f} lock pairs per operation (cProfile counts: {via}) at "
                f"this run's primitives' uncontended pair costs ({pair:,.0f} ns spin_lock/spin_unlock"
                + (f", {irqsave:,.0f} ns irqsave/irqrestore" if irqsave else "")
                + f") ≈ {est:.2f} µs per operation, {100 * est / us_op:.1f}% of its wall time")
        if spy:
            sm = spy["samples"]
            share = sm.cat.get(LOCK_C, 0) / (sm.total or 1)
            insitu = share * us_op / per_op["lock"]
            line += (f"; sampled, the lines that call the C fast path take {100 * share:.1f}% of wall time, "
                     f"{insitu * 1e3:,.0f} ns of wall time per pair in the run"
                     + (f" (≈ {insitu * cpu_frac * 1e3:,.0f} ns of CPU at the worker's {100 * cpu_frac:.0f}% CPU "
                        f"share)" if cpu_frac else "")
                     + ", argument evaluation and the two calls' dispatch included")
        out.append(line + ".")
    if per_op.get("trace") and f.get("ns_trace"):
        est = per_op["trace"] * f["ns_trace"] / 1e3
        line = (f"Trace: {per_op['trace']:.2f} events per operation (CpuCore.trace: op start, interrupt entry and "
                f"exit, model events; locks are not traced without --trace-locks) × {f['ns_trace']:,.0f} ns for the "
                f"C call ≈ {est:.2f} µs per operation" + (f" ({100 * est / us_op:.1f}%)" if us_op else ""))
        if per_op.get("event"):
            line += (f"; {per_op['event']:.2f} of them are model events that first pass through Role.trace and "
                     f"Cpu.event in Python")
        if spy:
            sm = spy["samples"]
            line += f"; sampled, trace takes {100 * sm.cat.get(TRACE, 0) / (sm.total or 1):.1f}% of wall time"
        out.append(line + ".")
    if pair and bare:
        out.append(f"Against FACTS.md: bare pair 115–180 ns there, {bare:,.0f} ns here; the instrumented Python pair "
                   f"was 550–700 ns (3.4–5.0× bare) with owner, held stack and waiting record in shm. The engine's "
                   f"pair is now C (shm_model/_fastlock.c: chain-cache lookup, sem_trywait / sem_post, owner, site "
                   f"and time of the acquisition, per-class statistics, hold maximum and hold histogram, the held "
                   f"stack, the noise and trace checks; it runs no bytecode, so the bookkeeping needs no soft mask, "
                   f"and Python runs only on the slow paths): {pair:,.0f} ns per spin_lock/spin_unlock pair, "
                   f"{pair / bare:.1f}× bare in this run (target ≤ 3.0×)"
                   + (f", {irqsave:,.0f} ns with irqsave/irqrestore" if irqsave else "")
                   + f". Soft-mask pair {f.get('ns_softmask', 0):,.0f} ns (CpuCore.local_irq_save/restore in C; "
                   f"FACTS: 36–42 inline, 120–185 through Python functions), one trace event "
                   f"{f.get('ns_trace', 0):,.0f} ns.")
    return out
