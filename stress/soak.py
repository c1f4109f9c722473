"""``stress soak``: iterations back to back, workload × variant × seed, each a real run.

The plan is deterministic: iterations cycle through the (workload, variant) pairs in a fixed
order and iteration ``i`` gets a seed derived from (soak seed, ``i``), so ``--resume``
rebuilds exactly the same plan from what the store saved (``soaks.plan_json``) and carries
on with the first iteration the store does not hold.

Schedules (``--schedule``, default ``mixed``): each iteration runs free (the OS schedules
the workers) or under the controlled scheduler (``pct``, ``random``: one worker at a time,
the run replayable exactly; :mod:`stress.schedule`). Under ``mixed`` a variant that expects a
bug runs under ``pct`` on every iteration: a free run of it passes or fails by the luck of
timing, and the controlled scheduler is how a soak proves the bug is still found; a
``clean`` or ``open`` variant alternates, ``pct`` on its 1st, 3rd, ... iteration and free on
its 2nd, 4th, ..., so a night covers both real parallelism and controlled exploration. The
plan saves each pair's rule (``Plan.rules``), so ``--resume`` needs no workload to decide
it again; a plan saved before schedules existed runs every iteration free, as it did.

Each iteration is ``python -m stress run ... --quiet --no-store`` in a child process (a
harness crash in one iteration cannot take the soak down; its output goes to
``<out>/<soak-id>/iteration-NNNN.log``). The child gets ``PR_SET_PDEATHSIG(SIGTERM)``, so
when the soak is killed, even with ``kill -9``, its run stops and tears down its arena
itself. After the child ends, its run directory is ingested into the store in one
transaction that also advances the soak's time spent: a killed soak loses at most the
iteration in flight, which ``--resume`` runs again (same seed).

Time: ``--duration`` is the soak's budget of wall time, summed over resumes (time lost to a
kill is not counted). An iteration runs for ``--iteration-duration`` (default: the
workload's own), shortened to what remains; it is not started when less than half of its
duration remains (a truncated run of a buggy variant would fail for want of time).

Traces (``--keep-traces``, default ``failed``): a run directory's ``traces/`` (every
worker's whole event ring, ~2.6 MB for a clean 10-second iteration) is kept only for an
iteration that did not pass or showed a decisive finding; ``all`` keeps every one, ``none``
none. Everything else of the run directory, and each finding's own evidence (the last events
of every party, in ``findings.jsonl`` and the store), is always kept. A plan saved before the
option existed keeps all, as it did.

:mod:`stress.campaign` runs the same plan on the hosts of a Ray cluster: it uses this
module's plan, child command, run-directory lookup and recording (:func:`child_command`,
:func:`find_run_dir`, :func:`record_outcome`).

Verdicts: ``passed`` (a buggy variant showed its expected finding, a clean one showed none,
an ``open`` one ran to its end: listed with what it showed), ``failed``, ``skipped`` (the
child refused the configuration), ``incomplete`` (a detector hit a capacity), and harness
errors (a child exited 3 or left no summary). Exit status: worst wins, 3 a harness error,
1 a failed or incomplete iteration, 0 all passed; 2 bad usage; 130/143 interrupted.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console as RichConsole, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shm_model.arena import sweep_orphans

from .cli import UsageError, parse_duration, parse_workload_options, repeat_words
from .console import make_console
from .loader import Found, builtins, find
from .schedule import SCHEDULES
from .store import RunRow, Store, StoreError, host_stats
from .verdict import EXIT_HARNESS, EXIT_MATCH, EXIT_MISMATCH, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE
from .workload import role_counts

CHILD_GRACE_S = 60.0  # start-up and teardown allowance beyond an iteration's duration
STOP_WAIT_S = 20.0  # after SIGTERM, before SIGKILL
POLL_S = 0.1
VIEW_EVERY_S = 0.25
PASSING = ("pass", "open")
HARNESS = ("error", "interrupted")
#: ``stress soak --schedule``: ``mixed`` chooses per variant (see the module docstring)
SOAK_SCHEDULES = ("mixed", "free", "pct", "random")
#: a pair's rule under ``mixed`` when its variant expects no bug: pct, free, pct, free, ...
ALTERNATE = "pct/free"
#: ``--keep-traces``: which iterations keep their run directory's ``traces/``
KEEP_TRACES = ("all", "failed", "none")
DEFAULT_KEEP_TRACES = "failed"


# -- the plan -------------------------------------------------------------------------------------
def derive_seed(soak_seed: int, i: int) -> int:
    h = hashlib.sha256(f"stress-soak/{soak_seed}/{i}".encode()).digest()
    return int.from_bytes(h[:8], "big") % (2**31 - 1) + 1


@dataclass
class Iteration:
    index: int
    workload: str
    variant: str
    seed: int
    schedule: str = "free"  # free, pct or random: what this iteration's child runs under


def expects_bug(outcomes: tuple[str, ...] | list[str]) -> bool:
    """A variant whose expected outcomes are findings (not ``clean``, not ``open``)."""
    return not set(outcomes) <= {"clean", "open"}


def pair_rule(schedule: str, outcomes: tuple[str, ...] | list[str]) -> str:
    """How a (workload, variant) pair is scheduled over the soak: a schedule for every one of
    its iterations, or :data:`ALTERNATE`. Under ``mixed`` a buggy variant is always ``pct``
    (a free run finds its bug by luck; the controlled scheduler is the proof it is still
    found), a clean or open one alternates (real parallelism and controlled exploration)."""
    if schedule != "mixed":
        return schedule
    return "pct" if expects_bug(outcomes) else ALTERNATE


def rule_schedule(rule: str, nth: int) -> str:
    """The schedule of the ``nth`` (0-based) iteration of a pair scheduled by ``rule``."""
    if rule == ALTERNATE:
        return "pct" if nth % 2 == 0 else "free"
    return rule


def schedule_tag(schedule: str) -> str:
    """How a line shows an iteration's schedule: ``[pct]``."""
    return f"[{schedule}]"


@dataclass
class Plan:
    pairs: list[tuple[str, str]]
    seed: int
    duration_s: float
    iteration_duration_s: float | None  # None: each workload's own
    out: str
    cwd: str
    options: dict[str, list[str]] = field(default_factory=dict)  # workload -> its option arguments
    hung_timeout: str | None = None
    workloads: list[str] = field(default_factory=list)
    #: ``--schedule`` as given (a plan saved before schedules existed: every iteration free)
    schedule: str = "free"
    #: per pair (same order as ``pairs``): a schedule, or :data:`ALTERNATE`; empty: all free
    rules: list[str] = field(default_factory=list)
    #: ``--keep-traces``: all, failed or none (a plan saved before it existed: all, as it did)
    keep_traces: str = DEFAULT_KEEP_TRACES
    #: a campaign's ``--iterations``: how many iterations at most (None: as many as time allows)
    iterations: int | None = None

    def iteration(self, i: int) -> Iteration:
        n = len(self.pairs)
        w, v = self.pairs[i % n]
        rule = self.rules[i % n] if self.rules else "free"
        return Iteration(i, w, v, derive_seed(self.seed, i), rule_schedule(rule, i // n))

    def pair_label(self, k: int) -> str:
        """``workload/variant [rule]`` for the header line; only ``mixed`` varies per pair."""
        w, v = self.pairs[k]
        return f"{w}/{v}" + (f" {schedule_tag(self.rules[k])}" if self.rules and self.schedule == "mixed" else "")

    def as_dict(self) -> dict:
        return {"workloads": self.workloads, "pairs": [list(p) for p in self.pairs], "seed": self.seed,
                "duration_s": self.duration_s, "iteration_duration_s": self.iteration_duration_s,
                "out": self.out, "cwd": self.cwd, "options": self.options, "hung_timeout": self.hung_timeout,
                "schedule": self.schedule, "rules": list(self.rules), "keep_traces": self.keep_traces,
                "iterations": self.iterations}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        try:
            plan = cls([(str(w), str(v)) for w, v in d["pairs"]], int(d["seed"]), float(d["duration_s"]),
                       None if d.get("iteration_duration_s") is None else float(d["iteration_duration_s"]),
                       str(d["out"]), str(d.get("cwd") or os.getcwd()),
                       {k: list(v) for k, v in (d.get("options") or {}).items()}, d.get("hung_timeout"),
                       list(d.get("workloads") or []), str(d.get("schedule") or "free"),
                       [str(r) for r in d.get("rules") or []], str(d.get("keep_traces") or "all"),
                       None if d.get("iterations") is None else int(d["iterations"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"the soak's saved plan is unreadable ({type(e).__name__}: {e})") from None
        _check_rules(plan)
        return plan


def _check_rules(plan: Plan) -> None:
    """A saved plan's schedules must be ones this stress runs, one per pair."""
    bad = [r for r in plan.rules if r not in SCHEDULES and r != ALTERNATE]
    count = len(plan.pairs) if plan.rules or plan.schedule != "free" else 0  # an old plan has none: all free
    if plan.schedule not in SOAK_SCHEDULES or bad or len(plan.rules) != count:
        unknown = f", unknown: {', '.join(bad)}" if bad else ""
        raise UsageError(f"the soak's saved plan is unreadable (schedule {plan.schedule!r}, "
                         f"{len(plan.rules)} rules for {len(plan.pairs)} pairs{unknown})")
    if plan.keep_traces not in KEEP_TRACES:
        raise UsageError(f"the soak's saved plan is unreadable (keep_traces {plan.keep_traces!r})")


def check_keep_traces(keep: str) -> None:
    if keep not in KEEP_TRACES:
        raise UsageError(f"--keep-traces takes {', '.join(KEEP_TRACES)}, not {keep!r}")


def check_soak_schedule(schedule: str) -> None:
    if schedule not in SOAK_SCHEDULES:
        raise UsageError(f"--schedule takes {', '.join(SOAK_SCHEDULES)}, not {schedule!r}")


def _split_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise UsageError(f"{what} takes a comma-separated list, not {text!r}")
    return items


def _split_options(args: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) == 2:
            raise UsageError(f"unexpected argument {a!r}")
        key, eq, val = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"--{key} needs a value")
            val = args[i + 1]
            i += 1
        out.append((key, val))
        i += 1
    return out


def make_plan(workloads: str | None, variants: str, seed: int, duration_s: float, iteration_duration_s: float | None,
              out: str, extra: list[str], hung_timeout: str | None,
              schedule: str = "mixed", keep_traces: str = DEFAULT_KEEP_TRACES,
              iterations: int | None = None) -> tuple[Plan, dict[str, Found]]:
    """Validate everything a soak will run (before it runs anything) and build its plan."""
    check_soak_schedule(schedule)
    check_keep_traces(keep_traces)
    if iterations is not None and iterations < 1:
        raise UsageError("--iterations must be at least 1")
    explicit = workloads is not None
    if explicit:
        names = _split_list(workloads, "--workloads")
        found = {n: find(n) for n in names}
    else:
        found = dict(sorted(builtins().items()))
        names = list(found)
    if len(set(names)) != len(names):
        raise UsageError("--workloads names a workload twice")
    pairs: list[tuple[str, str]] = []
    if variants.strip() == "all":
        pairs = [(n, v.id) for n in names for v in found[n].cls.variants]
    else:
        wanted = _split_list(variants, "--variants")
        used: set[str] = set()
        for n in names:
            for v in found[n].cls.variants:
                for w in wanted:
                    if w == v.id or w == f"{n}:{v.id}":
                        pairs.append((n, v.id))
                        used.add(w)
                        break
        for w in wanted:
            if w not in used:
                known = ", ".join(f"{n}: {' '.join(v.id for v in found[n].cls.variants)}" for n in names)
                raise UsageError(f"--variants names {w!r}, a variant of none of the workloads ({known})")
        if explicit:
            for n in names:
                if not any(p[0] == n for p in pairs):
                    raise UsageError(f"--variants selects no variant of workload {n!r} "
                                     f"(its variants: {', '.join(v.id for v in found[n].cls.variants)})")
        names = [n for n in names if any(p[0] == n for p in pairs)]
    if not pairs:
        raise UsageError("nothing to soak: no workload variant selected")
    opts = _split_options(extra)
    per: dict[str, list[str]] = {n: [] for n in names}
    for key, val in opts:
        takers = [n for n in names if key in found[n].cls.options]
        if not takers:
            known = "; ".join(f"{n}: {', '.join('--' + k for k in found[n].cls.options) or 'none'}" for n in names)
            raise UsageError(f"no such option --{key} for the workloads of this soak ({known})")
        for n in takers:
            per[n] += [f"--{key}", val]
    from types import SimpleNamespace
    for n in names:
        values = parse_workload_options(found[n], per[n])
        role_counts(found[n].cls, SimpleNamespace(**values), None)
    if hung_timeout is not None:
        parse_duration(hung_timeout, "--hung-timeout")
    rules = [pair_rule(schedule, found[w].cls.variant_named(v).outcomes) for w, v in pairs]
    plan = Plan(pairs, seed, duration_s, iteration_duration_s, out, os.getcwd(), {n: a for n, a in per.items() if a},
                hung_timeout, names, schedule, rules, keep_traces, iterations)
    return plan, found


def check_plan(plan: Plan) -> dict[str, Found]:
    """On resume: the workloads and variants of the saved plan must still exist."""
    found: dict[str, Found] = {}
    cwd = os.getcwd()
    try:
        os.chdir(plan.cwd)
    except OSError as e:
        raise UsageError(f"the soak ran in {plan.cwd!r}, which is gone ({e.strerror})") from None
    try:
        for w, v in plan.pairs:
            if w not in found:
                found[w] = find(w)
            found[w].cls.variant_named(v)
    finally:
        os.chdir(cwd)
    return found


def new_soak_id() -> str:
    return f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"


def soak_command(plan: Plan, verb: str = "soak", extra: list[str] | None = None) -> str:
    """The command that repeats a soak (``verb`` ``campaign``, with its own ``extra`` options)."""
    parts = ["stress", verb, "--duration", f"{plan.duration_s:g}s", "--workloads", ",".join(plan.workloads),
             "--variants", ",".join(f"{w}:{v}" for w, v in plan.pairs), "--seed", str(plan.seed)]
    if plan.iteration_duration_s is not None:
        parts += ["--iteration-duration", f"{plan.iteration_duration_s:g}s"]
    if plan.hung_timeout:
        parts += ["--hung-timeout", plan.hung_timeout]
    if plan.schedule != "mixed":  # an old plan (all free) included: it repeats as --schedule free
        parts += ["--schedule", plan.schedule]
    if plan.keep_traces != DEFAULT_KEEP_TRACES:
        parts += ["--keep-traces", plan.keep_traces]
    if plan.iterations is not None:
        parts += ["--iterations", str(plan.iterations)]
    parts += list(extra or [])
    seen: set[str] = set()
    for args in plan.options.values():
        for k, v in _split_options(args):
            if k not in seen:
                seen.add(k)
                parts += [f"--{k}", v]
    parts += ["--out", plan.out]
    return shlex.join(parts)


# -- the child ------------------------------------------------------------------------------------
def child_command(plan: Plan, it: Iteration, d: float, db: str | None = None, python: str | None = None,
                  workload: str | None = None) -> list[str]:
    """``stress run`` for one iteration. Everything before ``--quiet`` is the command a
    skipped or errored iteration is recorded with (its schedule included). ``db``: the store
    a controlled run learns PCT's k from; ``workload``: where this host finds the workload
    (a campaign's host gets a copy of a workload file)."""
    cmd = [python or sys.executable, "-m", "stress", "run", "--workload", workload or it.workload,
           "--variant", it.variant, "--duration", f"{d:.3f}".rstrip("0").rstrip(".") + "s", "--seed", str(it.seed)]
    if it.schedule != "free":
        cmd += ["--schedule", it.schedule]
    cmd += ["--out", plan.out, "--quiet", "--no-store"]
    if it.schedule == "pct" and db:
        cmd += ["--db", db]
    if plan.hung_timeout:
        cmd += ["--hung-timeout", plan.hung_timeout]
    return cmd + plan.options.get(it.workload, [])


def recorded_command(cmd: list[str], workload: str | None = None) -> str:
    """The ``stress run`` words of a child command (as the store records them)."""
    words = ["stress", "run", *cmd[4:cmd.index("--quiet")]]
    if workload is not None:  # a campaign host's copy of a workload file: the user's path
        words[words.index("--workload") + 1] = workload
    return shlex.join(words)


def find_run_dir(log_path: str, cwd: str, out: str, pid: int) -> str | None:
    """The run directory of the child whose output is the last attempt in ``log_path``."""
    said = None
    try:
        with open(log_path) as fh:
            for line in fh:
                if line.startswith("# "):
                    said = None  # the log of an earlier, killed attempt ends here
                elif line.startswith("run directory: "):
                    said = line.split(": ", 1)[1].strip()
    except OSError:
        pass
    if said:
        p = said if os.path.isabs(said) else os.path.join(cwd, said)
        if os.path.exists(os.path.join(p, "config.json")):
            return p
    # killed before it printed its summary: its run id names its pid
    hits = [p for p in glob.glob(os.path.join(cwd, out, f"*-{pid}-*"))
            if os.path.exists(os.path.join(p, "config.json"))]
    return sorted(hits)[-1] if hits else None


def keeps_traces(policy: str, status: str, decisive: int) -> bool:
    """``--keep-traces``: does an iteration of this status, with this many decisive findings,
    keep its run directory's ``traces/``?"""
    if policy == "all":
        return True
    if policy == "none":
        return False
    return status not in PASSING or decisive > 0


def decisive_in(run_dir: str) -> int:
    """Decisive findings (neither informational nor known) in a run directory's findings.jsonl."""
    n = 0
    try:
        with open(os.path.join(run_dir, "findings.jsonl")) as fh:
            for line in fh:
                try:
                    f = json.loads(line)
                except ValueError:
                    continue
                n += isinstance(f, dict) and not f.get("info") and not f.get("known")
    except OSError:
        pass
    return n


def drop_traces(run_dir: str) -> int:
    """Remove a run directory's ``traces/``; the bytes freed."""
    d = os.path.join(run_dir, "traces")
    freed = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                freed += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    shutil.rmtree(d, ignore_errors=True)
    return freed


def record_outcome(store: Store, soak_id: str, it: Iteration, run_dir: str | None, rc: int, tail: str,
                   fields: dict, timed_out: bool, d: float, keep_traces: str) -> str:
    """Record one finished iteration (its run directory, or why it left none) and apply
    ``--keep-traces`` to it. ``fields``: workload, variant, seed, expected, command,
    exit_code, spent_s, schedule (and a campaign's host, attempts, tried_on). Returns the
    row's id."""
    if run_dir is None:
        if rc == EXIT_USAGE:
            return store.record_iteration(soak_id, it.index, status="skipped",
                                          text=f"the run refused the configuration: {tail}", **fields)
        how = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}"
        return store.record_iteration(soak_id, it.index, status="error",
                                      text=f"the run left no run directory ({how}): {tail}", **fields)
    where = {k: fields[k] for k in ("host", "attempts", "tried_on") if k in fields}
    rid = store.ingest_run(run_dir, soak_id, it.index, spent_s=fields.get("spent_s"), **where)
    if timed_out:
        store.set_run_status(rid, "error", f"the run did not end within {d + CHILD_GRACE_S:g} s and was stopped "
                                           f"by the {'campaign' if where else 'soak'}")
    row = store.run(rid)
    if not keeps_traces(keep_traces, row.status, store.decisive_findings(rid)):
        drop_traces(run_dir)
    return rid


def _pdeathsig_setup() -> Any:
    """A preexec_fn: the child gets SIGTERM when the soak dies (Linux), however it dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the soak died before prctl: die now
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _fmt(s: float) -> str:
    if not math.isfinite(s):  # a campaign bounded by its iterations only
        return "no time limit" if s > 0 else "-"
    s = max(0.0, s)
    if s < 120:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m{int(s % 60):02d}s"


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


@dataclass
class Outcome:
    row: RunRow
    decisive: int  # findings that decide a verdict


# -- the soak -------------------------------------------------------------------------------------
class PlanDriver:
    """What a soak and a campaign (stress.campaign) share: the store's row, the plan, the
    time spent over resumes, the signals that stop them, the live view's end."""

    def __init__(self, store: Store, ident: str, plan: Plan, found: dict[str, Found], resumed: bool,
                 live: bool | None = None) -> None:
        self.store = store
        self.id = ident
        self.plan = plan
        self.found = found
        self.resumed = resumed
        self.live_enabled = sys.stdout.isatty() if live is None else live
        self.out = console()
        self.stop_signal = 0
        self.findings = 0
        self.base_spent = float(store.soak(ident).get("spent_s") or 0.0)
        self.t0 = time.monotonic()
        self._live: Live | None = None
        self._next_view = 0.0

    # -- time -----------------------------------------------------------------------------------
    def spent(self) -> float:
        return self.base_spent + (time.monotonic() - self.t0)

    def _iteration_duration(self, it: Iteration) -> float:
        if self.plan.iteration_duration_s is not None:
            return self.plan.iteration_duration_s
        return float(self.found[it.workload].cls.duration)

    # -- main -----------------------------------------------------------------------------------
    def run(self) -> int:
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            return self._run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = self.stop_signal or signum

    def _run(self) -> int:
        raise NotImplementedError

    def _close(self, status: str, word: str, lost: str, resume: str, after_summary: str = "") -> int:
        """The end of a soak or campaign: its status in the store (``done``, ``failed``, or
        ``interrupted`` by a signal), the summary, and the exit code."""
        if status != "failed" and self.stop_signal:
            status = "interrupted"
        try:
            if status == "done":
                self.store.end_soak(self.id, "done")
            else:
                self.store.mark_soak(self.id, status)
        except Exception as e:  # the summary below still says what happened
            sys.stderr.write(f"stress: warning: could not mark {word} {self.id} {status}: {e}\n")
        code = print_summary(self.store, self.id, self.out)
        if after_summary:
            self.out.print(after_summary)
        if status == "failed":
            return EXIT_HARNESS
        if status == "interrupted":
            how = "interrupted (Ctrl-C)" if self.stop_signal == signal.SIGINT else "terminated (SIGTERM)"
            self.out.print(f"{word} {how}: {lost}; resume with: {resume}")
            return EXIT_SIGINT if self.stop_signal == signal.SIGINT else EXIT_SIGTERM
        return code

    # -- progress -------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.out.print(text)

    def _stop_view(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class Soak(PlanDriver):
    def __init__(self, store: Store, soak_id: str, plan: Plan, found: dict[str, Found], resumed: bool,
                 live: bool | None = None) -> None:
        super().__init__(store, soak_id, plan, found, resumed, live)
        self.proc: subprocess.Popen | None = None
        self.current: Iteration | None = None
        self.current_t0 = 0.0
        self.current_d = 0.0
        self.last: Outcome | None = None
        self.counts: dict[str, dict[str, int]] = {}
        self.done = 0
        self.first_this_session = 0
        self.log_dir = os.path.join(plan.cwd, plan.out, soak_id)

    def _run(self) -> int:
        store, plan = self.store, self.plan
        done = store.completed_iterations(self.id)
        for row in store.runs(soak_id=self.id):
            self._count(row, self._decisive(row))
        nxt = 0
        while nxt in done:
            nxt += 1
        self.first_this_session = nxt
        os.makedirs(self.log_dir, exist_ok=True)
        pairs = ", ".join(plan.pair_label(k) for k in range(len(plan.pairs)))
        if self.resumed:
            self._say(f"stress: resuming soak {self.id} at iteration {nxt}: {_fmt(self.base_spent)} of "
                      f"{_fmt(plan.duration_s)} spent; seed {plan.seed}; schedule {plan.schedule}; "
                      f"{len(plan.pairs)} variants ({pairs})")
        else:
            self._say(f"stress: soak {self.id} for {_fmt(plan.duration_s)}: {len(plan.pairs)} variants ({pairs}), "
                      f"schedule {plan.schedule}, seed {plan.seed}; store {store.path}; resume with: "
                      f"stress soak --resume {self.id} {self._where()}")
        if self.live_enabled:
            self._live = Live(self._view(), console=self.out, auto_refresh=False, transient=True)
            self._live.start()  # no refresh thread: the poll loop refreshes (and fork stays thread-free)
        status = "done"
        try:
            i = nxt
            while not self.stop_signal:
                it = plan.iteration(i)
                remaining = plan.duration_s - self.spent()
                full = self._iteration_duration(it)
                if remaining < full / 2 and (self.done or done or remaining <= 0):
                    break
                d = min(full, max(remaining, 0.1))
                rec = self._iterate(it, d)
                if rec is None:  # stopped in flight: not counted
                    break
                i += 1
                while i in done:
                    i += 1
        except (StoreError, sqlite3.Error, OSError) as e:
            status = "failed"
            self._stop_view()
            sys.stderr.write(f"stress: error: soak {self.id} stopped: {e}\n")
        finally:
            self._stop_view()
            self._stop_child()
            sweep_orphans()
        return self._close(status, "soak", "the iteration in flight is not counted",
                           f"stress soak --resume {self.id} {self._where()}")

    def _stop_child(self) -> None:
        """A child still running when the soak leaves (an error in the soak): stop it, wait."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_child(proc)

    def _where(self) -> str:
        parts = ["--out", self.plan.out]
        if not self._default_store():
            parts += ["--db", self.store.path]
        return shlex.join(parts)

    # -- one iteration --------------------------------------------------------------------------
    def _child_command(self, it: Iteration, d: float) -> list[str]:
        # PCT's k is learned from the soak's store
        return child_command(self.plan, it, d, None if self._default_store() else os.path.abspath(self.store.path))

    def _default_store(self) -> bool:
        """The soak's store is where a child run looks by default (``<out>/stress.db``)."""
        return os.path.abspath(self.store.path) == os.path.abspath(os.path.join(self.plan.cwd, self.plan.out,
                                                                                "stress.db"))

    def _iterate(self, it: Iteration, d: float) -> Outcome | None:
        sweep_orphans()  # objects of a SIGKILLed child (or of anyone's killed run)
        self.current, self.current_t0, self.current_d = it, time.monotonic(), d
        self._refresh(force=True)
        log_path = os.path.join(self.log_dir, f"iteration-{it.index:04d}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = self._child_command(it, d)
        with open(log_path, "a") as log:  # a resumed iteration's log keeps the killed attempt's above it
            log.write("# " + shlex.join(cmd) + "\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.plan.cwd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, preexec_fn=_pdeathsig_setup())
        proc = self.proc
        deadline = self.current_t0 + d + CHILD_GRACE_S
        signalled = timed_out = False
        kill_at = float("inf")
        while proc.poll() is None:
            now = time.monotonic()
            if self.stop_signal and not signalled:
                proc.send_signal(self.stop_signal)
                signalled, kill_at = True, now + STOP_WAIT_S
            elif now > deadline and not signalled:
                proc.send_signal(signal.SIGTERM)
                signalled = timed_out = True
                kill_at = now + STOP_WAIT_S
            if now > kill_at:
                proc.kill()
                kill_at = float("inf")
            self._refresh()
            time.sleep(POLL_S)
        rc = proc.returncode
        self.proc = None
        self.current = None
        if self.stop_signal and (signalled or rc in (130, 143, -2, -15)):
            return None  # the soak was stopped: this iteration is not counted
        run_dir = find_run_dir(log_path, self.plan.cwd, self.plan.out, proc.pid)
        spent = self.spent()
        fields = dict(workload=it.workload, variant=it.variant, seed=it.seed,
                      expected=list(self.found[it.workload].cls.variant_named(it.variant).outcomes),
                      command=recorded_command(cmd), exit_code=rc, spent_s=spent, schedule=it.schedule)
        rid = record_outcome(self.store, self.id, it, run_dir, rc, _tail(log_path) if run_dir is None else "",
                             fields, timed_out, d, self.plan.keep_traces)
        row = self.store.run(rid)
        outcome = Outcome(row, self._decisive(row))
        self._count(row, outcome.decisive)
        self.last = outcome
        self.done += 1
        self._report(it, outcome, d)
        return outcome

    def _decisive(self, row: RunRow) -> int:
        return self.store.decisive_findings(row.id)

    def _count(self, row: RunRow, decisive: int) -> None:
        c = self.counts.setdefault(row.workload, {})
        c[row.status] = c.get(row.status, 0) + 1
        self.findings += decisive

    # -- progress -------------------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if force or now >= self._next_view:
            self._next_view = now + VIEW_EVERY_S
            self._live.update(self._view(), refresh=True)

    def _report(self, it: Iteration, o: Outcome, d: float) -> None:
        r = o.row
        line = (f"[{_fmt(self.spent())}/{_fmt(self.plan.duration_s)}] #{it.index} {it.workload} {it.variant} "
                f"{schedule_tag(it.schedule)} seed {it.seed} {_fmt(d)}: {r.status.upper()} {r.verdict_text}; "
                f"{_rate(r.total_ops_per_s)} ops/s; findings so far {self.findings}")
        if self._live is not None:
            if r.status not in PASSING:  # above the live view, so it stays on screen
                self._live.console.print(Text(line, style="bold red"))
            self._refresh(force=True)
        else:
            self.out.print(line)

    def _view(self) -> Any:
        spent = self.spent()
        head = Text(f"soak {self.id}  elapsed {_fmt(spent)}  remaining {_fmt(self.plan.duration_s - spent)}  "
                    f"iterations {self.done + self.first_this_session}  findings so far {self.findings}",
                    style="bold")
        lines: list[Any] = [head]
        if self.current is not None:
            it = self.current
            el = time.monotonic() - self.current_t0
            lines.append(Text(f"now: #{it.index} {it.workload} --variant {it.variant} --seed {it.seed} "
                              f"{schedule_tag(it.schedule)}  {_fmt(el)}/{_fmt(self.current_d)}"))
        if self.last is not None:
            r = self.last.row
            lines.append(Text(f"last: #{r.iteration} {r.workload} {r.variant} {schedule_tag(r.schedule)}: "
                              f"{r.status} ({r.verdict_text}), "
                              f"{_rate(r.total_ops_per_s)} ops/s",
                              style="green" if r.status in PASSING else "red"))
        t = Table(box=None, pad_edge=False, header_style="bold")
        for c in ("workload", "runs", "passed", "failed", "other"):
            t.add_column(c, overflow="fold")
        for w in dict.fromkeys(w for w, _ in self.plan.pairs):
            c = self.counts.get(w, {})
            t.add_row(w, str(sum(c.values())), str(sum(c.get(s, 0) for s in PASSING)), str(c.get("fail", 0)),
                      str(sum(n for s, n in c.items() if s not in PASSING and s != "fail")))
        lines.append(t)
        return Group(*lines)


def console(file: Any = None) -> RichConsole:
    """Plain text (no markup: a finding's ``[`` prints as is); very wide when not a terminal."""
    return make_console(file, markup=False)


def _tail(path: str) -> str:
    """The last words of this attempt's output (after the last command header)."""
    lines: list[str] = []
    try:
        with open(path) as fh:
            for ln in fh:
                if ln.startswith("# "):
                    lines = []
                elif ln.strip():
                    lines.append(ln.strip())
    except OSError:
        return "no output"
    for ln in reversed(lines):
        if ln.startswith("stress: error: "):
            return ln[len("stress: error: "):]
    return lines[-1] if lines else "no output"


# -- the summary ----------------------------------------------------------------------------------
def summarize(store: Store, soak_id: str) -> dict:
    rows = store.runs(soak_id=soak_id)
    counts = {"passed": 0, "open": 0, "failed": 0, "skipped": 0, "incomplete": 0, "errors": 0}
    for r in rows:
        if r.status == "pass":
            counts["passed"] += 1
        elif r.status == "open":
            counts["passed"] += 1
            counts["open"] += 1
        elif r.status == "fail":
            counts["failed"] += 1
        elif r.status == "skipped":
            counts["skipped"] += 1
        elif r.status == "incomplete":
            counts["incomplete"] += 1
        else:
            counts["errors"] += 1
    if counts["errors"]:
        code = EXIT_HARNESS
    elif counts["failed"] or counts["incomplete"]:
        code = EXIT_MISMATCH
    else:
        code = EXIT_MATCH
    return {"rows": rows, "counts": counts, "exit_code": code, "history": store.history(soak_id=soak_id)}


def print_summary(store: Store, soak_id: str, con: RichConsole) -> int:
    s = store.soak(soak_id)
    sm = summarize(store, soak_id)
    rows, c = sm["rows"], sm["counts"]
    plan = s["plan"]
    con.print()
    con.print(Text(f"{s.get('kind') or 'soak'} {s['id']}: {s['status']}, {len(rows)} iteration{'' if len(rows) == 1 else 's'} in {_fmt(float(s.get('spent_s') or 0))} "
                   f"of {_fmt(float(s.get('duration_s') or 0))}"
                   + (f" ({s['resumes']} resume{'s' if s['resumes'] != 1 else ''})" if s.get("resumes") else "")
                   + f", seed {plan.get('seed')}", style="bold"))
    style = "bold red" if sm["exit_code"] else "bold green"
    con.print(Text(f"passed {c['passed']}" + (f" ({c['open']} open)" if c["open"] else "")
                   + f", failed {c['failed']}, skipped {c['skipped']}, incomplete {c['incomplete']}, "
                     f"harness errors {c['errors']}", style=style))
    if rows:
        con.print(history_table(sm["history"]))
    print_flags(con, sm["history"])
    opens = [h for h in sm["history"] if h.expected == ["open"]]
    for h in opens:
        shown = ", ".join(f"{o} in {n}" for o, n in sorted(h.outcomes.items())) or "no finding"
        mine = [r for r in rows if (r.workload, r.variant, r.schedule) == (h.workload, h.variant, h.schedule)
                and r.status == "open"]
        quiet = sum(1 for r in mine if r.time_to_detect_s is None)  # an open run's first finding, if any
        con.print(f"open: {h.workload} {h.variant} {schedule_tag(h.schedule)}: {h.runs} runs showed {shown}"
                  + (f"; {quiet} showed nothing" if h.outcomes and quiet else ""))
    for line in pct_lines(store.schedule_summaries(soak_id)):
        con.print(line)
    hosts = host_stats(rows)
    if hosts:
        con.print(hosts_table(hosts))
        for line in host_lines(hosts, rows):
            con.print(Text(line, style="bold red" if "unhealthy" in line else ""))
    bad = [r for r in rows if r.status not in PASSING]
    if bad:
        con.print(Text("not passed:", style="bold"))
        for r in bad:
            con.print(f"  #{r.iteration} {r.workload} {r.variant} {schedule_tag(r.schedule)} seed {r.seed}"
                      + (f" on {r.host}" if r.host else "") + f": {r.status.upper()} {r.verdict_text}  [run {r.id}]")
            if r.command:
                con.print(f"      {repeat_words(r)}: {r.command}")
            if r.schedule != "free" and r.run_dir:
                con.print(f"      replay (the recorded schedule): {replay_command(store, plan.get('out'), r.id)}")
    return int(sm["exit_code"])


def hosts_table(hosts: list) -> Table:
    """A campaign's hosts: what their iterations came to, retries, health."""
    t = Table(title="per host", title_justify="left", header_style="bold")
    for col in ("host", "iterations", "passed", "failed", "harness errors", "retried here", "lost", "health"):
        t.add_column(col, justify="left" if col in ("host", "health") else "right", overflow="fold")
    for h in hosts:
        t.add_row(h.host, str(h.iterations), str(h.passed), str(h.failed), str(h.errors), str(h.retried_here),
                  str(h.lost), Text("UNHEALTHY", style="bold red") if h.unhealthy else "ok")
    return t


def host_lines(hosts: list, rows: list[RunRow]) -> list[str]:
    """What the host table means, in words: unhealthy hosts, hosts lost mid-iteration, retries."""
    out = []
    for h in hosts:
        if h.unhealthy:
            out.append(f"host {h.host} is unhealthy: all {h.iterations} of its iterations failed for harness "
                       f"reasons (not findings: see their logs), while other hosts ran theirs")
    if hosts and all(h.errors == h.iterations for h in hosts if h.iterations) and any(h.iterations for h in hosts):
        out.append("every host's iterations failed for harness reasons: the harness or the workload is broken, "
                   "not a host")
    retried = [r for r in rows if r.attempts > 1]
    if retried:
        out.append(f"retried: {len(retried)} iteration{'s' if len(retried) != 1 else ''} ran again after their host "
                   "died under them: " + ", ".join(f"#{r.iteration} ({' -> '.join([*r.tried_on, r.host])})"
                                                  for r in retried[:20]) + (" ..." if len(retried) > 20 else ""))
    return out


def pct_lines(summaries: list[tuple[str, str, dict]]) -> list[str]:
    """Per variant, what the soak's PCT iterations bought together: every round of every
    iteration is an independent chance to find a given bug of depth d (reachable within a
    round from where it starts) with probability >= 1/(n·k^(d-1)), so after R rounds the
    chance is >= 1 - prod (1 - p_i)^(R_i)."""
    from .schedule import cumulative
    per: dict[tuple[str, str], list[dict]] = {}
    for w, v, sc in summaries:
        if sc.get("policy") == "pct" and sc.get("round_bound"):
            per.setdefault((w, v), []).append(sc)
    out = []
    for (w, v), scs in per.items():
        rounds = sum(int(sc.get("rounds") or 0) for sc in scs)
        if any(float(sc["round_bound"]) >= 1.0 for sc in scs):
            chance = 1.0
        else:
            log_miss = sum(int(sc.get("rounds") or 0) * math.log1p(-float(sc["round_bound"])) for sc in scs)
            chance = -math.expm1(log_miss)
        depth = scs[0].get("depth")
        ks = sorted({int(sc.get("k") or 0) for sc in scs})
        out.append(f"PCT: {w} {v}: {rounds:,} rounds in {len(scs)} iterations (depth {depth}, k "
                   f"{', '.join(map(str, ks))}): a given depth-{depth} bug found with probability >= {chance:.3g} "
                   f"(one round: >= {cumulative(float(scs[0]['round_bound']), 1):.3g})")
    return out


def replay_command(store: Store, out: str | None, run_id: str) -> str:
    """``stress replay`` of a controlled iteration, with the --out and --db it needs to find it."""
    parts = ["stress", "replay", run_id]
    out = out or "stress-runs"
    if out != "stress-runs":
        parts += ["--out", out]
    if os.path.abspath(store.path) != os.path.abspath(os.path.join(out, "stress.db")):
        parts += ["--db", store.path]
    return shlex.join(parts)


def print_flags(con: RichConsole, history: list) -> None:
    """A clean variant that showed findings: a regression, or a flaky detector. Said in words."""
    for h in history:
        if h.expected == ["clean"] and h.outcomes:
            con.print(Text(f"clean variant {h.workload} {h.variant} {schedule_tag(h.schedule)} showed findings: "
                           + ", ".join(f"{o} in {n} of {h.runs} runs" for o, n in sorted(h.outcomes.items())),
                           style="bold red"))


def outcomes_seen(h: Any) -> str:
    """Decisive outcomes seen, then known ones marked: ``deadlock×2, invariant:x×3 (known)``."""
    parts = [f"{o}×{n}" for o, n in sorted(h.outcomes.items())]
    parts += [f"{o}×{n} (known)" for o, n in sorted((getattr(h, "known_outcomes", None) or {}).items())]
    return ", ".join(parts) or "-"


def history_table(history: list) -> Table:
    """One row per workload, variant and schedule: a free and a controlled detection rate
    answer different questions (does timing expose it; does exploration still find it)."""
    t = Table(title="per variant and schedule", title_justify="left", header_style="bold")
    # counted as the soak summary counts: an open run is a passed run ("passed 3 (1 open)")
    for col in ("workload", "variant", "schedule", "expected", "runs", "passed", "open", "failed", "other", "detection",
                "ttd median", "ttd p90", "outcomes seen"):
        t.add_column(col, justify="right" if col in ("runs", "passed", "open", "failed", "other", "detection",
                                                     "ttd median", "ttd p90") else "left", overflow="fold")
    for h in history:
        rate = h.detection_rate
        opened = getattr(h, "open", 0)
        flag = h.expected == ["clean"] and bool(h.outcomes)
        t.add_row(h.workload, h.variant, getattr(h, "schedule", "free"), " or ".join(h.expected), str(h.runs),
                  str(h.passed + opened), str(opened),
                  str(h.failed), str(h.other - opened), "-" if rate is None else f"{100 * rate:.0f}%",
                  "-" if h.ttd_median_s is None else f"{h.ttd_median_s:.3f}s",
                  "-" if h.ttd_p90_s is None else f"{h.ttd_p90_s:.3f}s",
                  Text(outcomes_seen(h) + (" (clean variant showed findings)" if flag else ""),
                       style="bold red" if flag else ""))
    return t


# -- entry points (called by the CLI) -------------------------------------------------------------
def start(store: Store, plan: Plan, found: dict[str, Found], junit_xml: str | None = None) -> int:
    soak_id = new_soak_id()
    store.begin_soak(soak_id, plan.as_dict(), soak_command(plan), plan.out, plan.duration_s)
    store.claim_soak(soak_id, os.getpid(), socket.gethostname())
    code = Soak(store, soak_id, plan, found, resumed=False).run()
    _junit(store, soak_id, junit_xml)
    return code


def _junit(store: Store, soak_id: str, path: str | None) -> None:
    """One <testcase> per iteration; a failure to write it is one warning line."""
    if not path:
        return
    from .junit import write_soak
    try:
        write_soak(store, soak_id, path)
    except OSError as e:
        sys.stderr.write(f"stress: warning: no JUnit XML written to {path}: {e.strerror or e}\n")


def stop_child(proc: subprocess.Popen) -> None:
    """Stop a ``stress run`` child that is still running: SIGTERM, then SIGKILL after
    STOP_WAIT_S; wait for it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def open_to_resume(store: Store, ident: str, kind: str, hint: str, junit_xml: str | None) -> tuple[dict, int | None]:
    """The record of the ``kind`` ("soak" or "campaign") ``ident`` that ``--resume`` names,
    and None; or, when it had finished, its summary printed, its JUnit file written and the
    exit code. A usage error when it is the other kind, or still running in another process
    on this host. ``hint`` replaces the store's "(see: stress runs)" in a not-found error."""
    try:
        s = store.soak(ident)
    except StoreError as e:
        raise UsageError(str(e).replace("(see: stress runs)", hint)) from None
    other = "campaign" if kind == "soak" else "soak"
    if (s.get("kind") or "soak") != kind:
        raise UsageError(f"{s['id']} is a {other}: resume it with stress {other} --resume {s['id']}")
    if s["status"] == "done":
        con = console()
        con.print(f"{kind} {s['id']} already finished; its summary:")
        code = print_summary(store, s["id"], con)
        _junit(store, s["id"], junit_xml)
        return s, code
    if s["status"] == "running" and s.get("pid") and s["pid"] != os.getpid() and \
            s.get("host") == socket.gethostname() and _runs_as(int(s["pid"]), kind):
        raise UsageError(f"{kind} {s['id']} is still running (pid {s['pid']}); stop it first")
    return s, None


def resume(store: Store, ident: str, junit_xml: str | None = None) -> int:
    s, done = open_to_resume(store, ident, "soak", "(see: stress runs; soaks: stress runs --soak ID)", junit_xml)
    if done is not None:
        return done
    plan = Plan.from_dict(s["plan"])
    found = check_plan(plan)
    store.mark_soak(s["id"], "running")
    store.claim_soak(s["id"], os.getpid(), socket.gethostname(), resumed=True)
    code = Soak(store, s["id"], plan, found, resumed=True).run()
    _junit(store, s["id"], junit_xml)
    return code


def _runs_as(pid: int, command: str) -> bool:
    """Whether process ``pid`` runs ``stress <command>`` (its command line names it)."""
    try:
        import psutil
        return command in psutil.Process(pid).cmdline()
    except Exception:
        return False
