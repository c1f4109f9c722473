"""``stress``: the command line.

Exit status of ``stress run``: 0 the outcome matches the variant's expectation (``clean``
when none is declared; always 0 for an ``open`` variant), 1 it does not, 2 bad usage,
3 the harness failed (or a worker died holding no lock), 130/143 interrupted by Ctrl-C /
SIGTERM (partial results kept). Bad input gets one line on stderr, never a traceback.

``stress run`` records its run in the SQLite store (``<out>/stress.db``) after it ends; a
store error is one warning line and does not change the exit status, except a store whose
pages are corrupt: that is refused before the run starts (exit 2), so nothing writes into it.
Usage errors (click's too) are one line ``stress: error: ... (see: stress CMD --help)``. ``stress soak`` runs
iterations back to back (:mod:`stress.soak`); ``stress runs`` and ``stress show`` read the
store.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import sys
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from shm_model.arena import list_objects, new_run_id, sweep_orphans

from .console import Console, make_console
from .loader import Found, builtins, find
from .schedule import DEFAULT_DEPTH, DEFAULT_STEP_NS, SCHEDULES, rle_steps
from .verdict import EXIT_HARNESS, EXIT_USAGE
from .workload import WorkloadError, role_counts
from .world import RunConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain click help: flags show no "<bool>" as if they took a value
                  help="Stress-test hypervisor locking protocols with real processes, shared memory and signals.")

#: what a printed repeat command repeats: a seed fixes the workload's choices, not the OS's interleavings
REPEAT = "rerun (same configuration and seed; timing differs)"
#: ... except under the controlled scheduler, where the seed fixes the interleaving too
REPEAT_EXACT = "rerun (same configuration, seed and schedule: the same interleaving)"
STORY_LINES = 24  # the interleaving printed at the end of a controlled run that found something


def repeat_words(what: Any) -> str:
    """What a printed rerun command repeats, for a summary dict, a RunConfig or the command itself."""
    if isinstance(what, dict):
        sched = (what.get("schedule") or {}).get("policy", "free")
    elif isinstance(what, str):
        m = re.search(r"--schedule\s+(\S+)", what)
        sched = m.group(1) if m else "free"
    else:
        sched = what.schedule
    return REPEAT if sched in ("free", None, "") else REPEAT_EXACT


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("stress")
    except PackageNotFoundError:
        from . import __version__
        return str(__version__)


def _version_cb(value: bool) -> None:
    if value:
        print(f"stress {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Stress-test hypervisor locking protocols with real processes, shared memory and signals."""


class UsageError(Exception):
    pass


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    sys.stderr.write(f"stress: error: {msg}\n")
    raise typer.Exit(code)


_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")


def parse_duration(text: str, what: str = "--duration") -> float:
    """Seconds of ``30s``, ``5m``, ``8h``, ``1d``, ``1500ms``, a bare number of seconds, or
    parts from the largest unit down: ``1h30m``, ``1d12h``, ``2m30s``."""
    t = text.strip()
    bare = re.fullmatch(r"\d+(?:\.\d+)?", t)
    parts = [] if bare else _DURATION_PART.findall(t)
    order = ["d", "h", "m", "s", "ms"]
    ranks = [order.index(u) for _, u in parts]
    if not bare and (not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", t)
                     or ranks != sorted(set(ranks))):
        raise UsageError(f"{what} takes a duration like 30s, 5m, 1h30m, 8h, 1d or 1500ms, not {text!r}")
    value = float(t) if bare else sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if value <= 0:
        raise UsageError(f"{what} must be positive")
    return value


def parse_rates(text: str | None, op_names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        m = re.fullmatch(r"\s*([\w\-]+)\s*=\s*(\d+(?:\.\d+)?)\s*([kKM]?)\s*(?:/s)?\s*", part)
        if not m:
            raise UsageError(f"--rate takes op=N/s[,op=N/s...], not {part!r}")
        name, value = m.group(1), float(m.group(2)) * {"": 1, "k": 1e3, "K": 1e3, "M": 1e6}[m.group(3)]
        if name not in op_names:
            raise UsageError(f"--rate names unknown operation {name!r} (operations: {', '.join(op_names)})")
        if value <= 0:
            raise UsageError(f"--rate {name} must be positive")
        out[name] = value
    return out


def parse_workload_options(found: Found, args: list[str]) -> dict[str, Any]:
    decl = found.cls.options
    values = {k: o.default for k, o in decl.items()}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise UsageError(f"unexpected argument {a!r}")
        key, _, val = a[2:].partition("=")
        if key not in decl:
            known = ", ".join(f"--{k}" for k in decl) or "none"
            raise UsageError(f"no such option --{key} (workload {found.cls.label()} takes: {known})")
        if not _:
            if i + 1 >= len(args):
                raise UsageError(f"--{key} needs a value")
            val = args[i + 1]
            i += 1
        try:
            values[key] = decl[key].parse(key, val)
        except WorkloadError as e:
            raise UsageError(str(e)) from None
        i += 1
    return values


def _fmt_s(x: float) -> str:
    return f"{x:g}s"


def repeat_command(cfg: RunConfig, found: Found, workers: int | None, rates_text: str | None) -> str:
    parts = ["stress", "run", "--workload", cfg.workload, "--variant", cfg.variant,
             "--duration", _fmt_s(cfg.duration), "--seed", str(cfg.seed)]
    if workers is not None:
        parts += ["--workers", str(workers)]
    if rates_text:
        parts += ["--rate", rates_text]
    if cfg.controlled:
        parts += ["--schedule", cfg.schedule]
        if cfg.schedule == "pct":
            parts += ["--pct-depth", str(cfg.pct_depth), "--pct-steps", str(cfg.pct_steps)]
        if cfg.steps:
            parts += ["--steps", str(cfg.steps)]
        if cfg.step_ns != DEFAULT_STEP_NS:
            parts += ["--step-ns", str(cfg.step_ns)]
    else:
        parts += ["--noise", f"{cfg.noise:g}"]
    if cfg.trace_locks:
        parts.append("--trace-locks")
    if cfg.hung_timeout != float(found.cls.hung_timeout):
        parts += ["--hung-timeout", _fmt_s(cfg.hung_timeout)]
    for k, o in found.cls.options.items():
        if cfg.options.get(k) != o.default:
            parts += [f"--{k}", str(cfg.options[k])]
    if cfg.check_interval is not None:
        parts += ["--check-interval", f"{cfg.check_interval * 1e3:g}ms"]
    if cfg.out != "stress-runs":
        parts += ["--out", cfg.out]
    return shlex.join(parts)


def option_line(name: str, o: Any) -> str:
    """``--vcpus N (default 2, 2..16): guest vCPUs``: a workload option as `stress list` shows it."""
    kind = type(o.default)
    meta = {int: "N", float: "X", str: "TEXT"}.get(kind, "VALUE")
    facts = [f"default {o.default:g}" if isinstance(o.default, (int, float)) and not isinstance(o.default, bool)
             else f"default {o.default!r}"]
    if o.min is not None or o.max is not None:
        lo = "" if o.min is None else f"{o.min:g}"
        hi = "" if o.max is None else f"{o.max:g}"
        facts.append(f"{lo}..{hi}")
    return f"--{name} {meta} ({', '.join(facts)})" + (f": {o.help}" if o.help else "")


@app.command("list")
def list_cmd(out: str = typer.Option("stress-runs", help="where runs are recorded (for open variants' last verdict)"),
             as_json: bool = typer.Option(False, "--json", help="print the list as JSON")) -> None:
    """Workloads, their variants and options, what each variant is expected to show, and where it comes from."""
    try:
        table_ = builtins()
    except WorkloadError as e:
        _fail(str(e), EXIT_HARNESS)
    last = _last_runs(out)
    if as_json:
        doc = []
        for name, f in sorted(table_.items()):
            doc.append({"workload": name, "duration_s": float(f.cls.duration),
                        "options": {k: {"default": o.default, "min": o.min, "max": o.max, "help": o.help}
                                    for k, o in f.cls.options.items()},
                        "variants": [{"id": v.id, "default": i == 0, "expected": list(v.outcomes),
                                      "known": dict(v.known) if isinstance(v.known, dict) else list(v.known),
                                      "answer": v.answer, "provenance": v.provenance,
                                      "last_run": last.get((name, v.id))}
                                     for i, v in enumerate(f.cls.variants)]})
        print(json.dumps(doc, indent=2, default=str))
        return
    t = Table(title="built-in workloads", show_lines=False)
    for c in ("workload", "variant", "expected", "provenance"):
        t.add_column(c, overflow="fold")
    for name, f in sorted(table_.items()):
        for i, v in enumerate(f.cls.variants):
            exp = " or ".join(v.outcomes)
            if v.known:
                exp += f" (known: {', '.join(v.known)})"
            if v.outcomes == ("open",):
                if v.answer:
                    exp += f" — so far: {v.answer}"
                lr = last.get((name, v.id))
                exp += f" (last run: {lr})" if lr else " (no run recorded yet)"
            t.add_row(name if i == 0 else "", v.id + (" (default)" if i == 0 else ""), exp, v.provenance)
    con = make_console()
    con.print(t)
    con.print(Text("workload options (stress run --workload W --OPTION VALUE):", style="bold"))
    for name, f in sorted(table_.items()):
        opts = f.cls.options
        con.print(Text(f"{name}:" + ("" if opts else " none")))
        for k, o in opts.items():
            con.print(Text("  " + option_line(k, o)))
    con.print("A workload of your own: stress run --workload ./my_protocol.py (see README).")


def _last_runs(out: str) -> dict[tuple[str, str], str]:
    res: dict[tuple[str, str], tuple[str, str]] = {}
    if not os.path.isdir(out):
        return {}
    for d in sorted(os.listdir(out)):
        p = os.path.join(out, d, "summary.json")
        try:
            with open(p) as fh:
                s = json.load(fh)
        except (OSError, ValueError):
            continue
        v = s.get("verdict") or {}
        res[(s.get("workload", ""), s.get("variant", ""))] = (d, v.get("text", s.get("stop_reason", "")))
    return {k: f"{text} [{rid}]" for k, (rid, text) in res.items()}


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_cmd(
    ctx: typer.Context,
    workload: str = typer.Option(..., "--workload", "-w", help="built-in name (stress list) or path to a .py file"),
    variant: Optional[str] = typer.Option(None, help="variant id (default: the workload's first)"),
    duration: str = typer.Option("", help="how long, e.g. 30s, 5m (default: the workload's)"),
    seed: Optional[int] = typer.Option(None, help="seed for scheduling noise and operation choice (default: random)"),
    workers: Optional[int] = typer.Option(None, help="workers shared by the roles that do not fix their count"),
    rate: Optional[str] = typer.Option(None, help="paced operations: op=N/s[,op=N/s...]"),
    noise: Optional[float] = typer.Option(None, help="probability of a yield or short sleep at each lock "
                                                     "operation (default: the workload's)"),
    out: str = typer.Option("stress-runs", help="directory for run directories"),
    trace_locks: bool = typer.Option(False, "--trace-locks", help="also trace every acquire and release"),
    hung_timeout: str = typer.Option("", help="report a worker blocked this long on a live holder "
                                              "(default: the workload's, 10s unless it says otherwise)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress, only findings and the summary"),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite store to record the run in (default: <out>/stress.db)"),
    no_store: bool = typer.Option(False, "--no-store", help="do not record the run in the store"),
    html: Optional[str] = typer.Option(None, "--html", help="also write the run's HTML report to this file"),
    as_json: bool = typer.Option(False, "--json", help="print summary.json on stdout at the end and nothing else "
                                                       "there (progress, findings and the summary go to stderr)"),
    junit_xml: Optional[str] = typer.Option(None, "--junit-xml", help="also write the run as a JUnit XML file"),
    schedule: str = typer.Option("free", help="free: the OS schedules the workers (real timing and signals); "
                                              "pct or random: one worker runs at a time, a seeded scheduler "
                                              "chooses who runs next, and the run can be replayed exactly"),
    pct_depth: int = typer.Option(DEFAULT_DEPTH, help="PCT's bug depth d: d-1 priority change points a round"),
    pct_steps: int = typer.Option(0, help="PCT's k, steps a round (default: learned from this workload's "
                                          "earlier controlled runs in the store)"),
    steps: int = typer.Option(0, help="controlled: stop after this many scheduling steps (a length that does "
                                      "not depend on the machine's speed)"),
    step_ns: int = typer.Option(DEFAULT_STEP_NS, help="controlled: virtual nanoseconds per scheduling step"),
    check_interval: str = typer.Option("", help="time between stop-the-world invariant checks, e.g. 20ms (default: "
                                                "the workload's; under the controlled scheduler virtual time, and "
                                                "at least every 200 scheduling steps)"),
) -> None:
    """Run one workload variant and judge what it shows against what it is expected to show.

    Workload-specific options (listed with their defaults and limits by `stress list`) follow, e.g. --vcpus 4."""
    try:
        found = find(workload)
        v = found.cls.variant_named(variant)
        opts = parse_workload_options(found, list(ctx.args))
        from types import SimpleNamespace
        counts = role_counts(found.cls, SimpleNamespace(**opts), workers)
        dur = parse_duration(duration) if duration else float(found.cls.duration)
        op_names = [o.name for r in found.cls.roles().values() for o in r.ops()]
        rates = parse_rates(rate, op_names)
        noise = float(found.cls.noise) if noise is None else noise
        if html and no_store:
            raise UsageError("--html renders from the store: drop --no-store")
        if not 0.0 <= noise <= 1.0:
            raise UsageError("--noise is a probability between 0 and 1")
        hung = parse_duration(hung_timeout, "--hung-timeout") if hung_timeout else float(found.cls.hung_timeout)
        check_schedule(schedule, pct_depth, pct_steps, steps, step_ns)
        cfg = RunConfig(workload=workload, variant=v.id, seed=seed if seed is not None else random.randrange(1, 2**31),
                        duration=dur, counts=counts.per_role, rates=rates, noise=noise, options=opts, out=out,
                        trace_locks=trace_locks, hung_timeout=hung, run_id=new_run_id(), schedule=schedule,
                        pct_depth=pct_depth, pct_steps=pct_steps, steps=steps, step_ns=step_ns,
                        check_interval=parse_duration(check_interval, "--check-interval") if check_interval else None)
        if schedule == "pct" and not pct_steps:
            cfg.pct_steps = _learned_k(db or _default_db(out), cfg, counts.total)
        cfg.command = repeat_command(cfg, found, workers, rate)
        from .coordinator import Run
        run = Run(found, cfg, counts, Console(quiet=quiet, file=sys.stderr if as_json else None))
    except (WorkloadError, UsageError) as e:
        _fail(str(e))
    _make_out(out)
    for path, what in ((html, "--html"), (junit_xml, "--junit-xml")):
        if path:
            _check_file_target(path, what)
    store_path = db or _default_db(out)
    if not no_store:
        _check_store(store_path)  # before the run: never write into a corrupt store
    result = run.execute()
    con = make_console(sys.stderr if as_json else None)
    _print_summary(result, con)
    _append_report(result)
    if not no_store and result.run_dir:
        recorded = _record_run(result.run_dir, store_path)
        if html and recorded:
            _write_html(store_path, result.run_id, html, sys.stderr if as_json else sys.stdout)
    if junit_xml and result.run_dir:
        _write_junit_run(result.run_dir, junit_xml, sys.stderr if as_json else sys.stdout)
    if as_json:
        sys.stdout.write(json.dumps(result.summary, indent=2, default=str) + "\n")
        sys.stdout.flush()
    raise typer.Exit(result.exit_code)


def check_schedule(schedule: str, depth: int, k: int, steps: int, step_ns: int) -> None:
    if schedule not in SCHEDULES:
        raise UsageError(f"--schedule takes {', '.join(SCHEDULES)}, not {schedule!r}")
    from shm_model.arena import MAX_DEPTH
    if not 2 <= depth <= MAX_DEPTH:
        raise UsageError(f"--pct-depth must be 2..{MAX_DEPTH}")
    if k < 0 or steps < 0:
        raise UsageError("--pct-steps and --steps must be positive (0: default)")
    if step_ns < 1:
        raise UsageError("--step-ns must be at least 1")


def _learned_k(db: str, cfg: RunConfig, n_workers: int) -> int:
    """PCT's k for this workload: from the steps per operation that its earlier controlled
    runs measured (the store), else the scheduler's default. Printed in the rerun command,
    so a rerun does not depend on what the store learned since."""
    from .schedule import DEFAULT_K, learned_k
    from .store import Store, StoreError
    import sqlite3
    if not os.path.exists(db):
        return DEFAULT_K
    try:
        with Store(db) as store:
            spo = store.steps_per_op(cfg.workload, cfg.variant)
    except (StoreError, sqlite3.Error, OSError):
        return DEFAULT_K
    return learned_k(spo, n_workers) if spo else DEFAULT_K


@app.command("replay")
def replay_cmd(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="a controlled run's id (or a unique prefix)"),
    shrink: bool = typer.Option(False, "--shrink", help="search for a schedule with fewer hand-overs and steps that "
                                                        "shows the same finding, and tell it as a per-worker story"),
    attempts: int = typer.Option(500, "--attempts", help="with --shrink: at most this many candidate runs"),
    budget: str = typer.Option("180s", "--budget", help="with --shrink: at most this long"),
    story_lines: int = typer.Option(40, "--story", help="lines of the interleaving's story to print (0: none)"),
    out: str = typer.Option("stress-runs", help="where runs are recorded (and where the replay's run goes)"),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite store (default: <out>/stress.db)"),
    no_store: bool = typer.Option(False, "--no-store", help="do not record the replay in the store"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress, only findings and the summary"),
) -> None:
    """Re-execute a controlled run's recorded schedule and check it shows the same findings, sites and model
    counters; with --shrink, find a smaller schedule that still shows the finding.

    Exit status: 0 reproduced (and, with --shrink, shrunk as far as the budget allowed), 1 not reproduced,
    2 bad usage or a run that cannot be replayed, 3 the harness failed."""
    from . import replay as rp
    from .console import Console
    from .coordinator import Run
    try:
        secs = parse_duration(budget, "--budget")
        if attempts < 1:
            raise UsageError("--attempts must be at least 1")
        store_path = db or _default_db(out)
        rec = rp.load_recorded(run_id, out, store_path)
        found, cfg, counts = rp.configure(rec, out, "replay", rec.script, slack=False)
    except (UsageError, rp.ReplayError, WorkloadError) as e:
        _fail(str(e))
    _make_out(out)
    con = make_console()
    script = rec.script
    if shrink:
        target = rec.target
        if target is None:
            _fail(f"run {rec.run_id} found nothing: there is no finding to keep while shrinking")
        con.print(Text(f"shrinking run {rec.run_id}'s schedule ({rp.handovers(script)} hand-overs, "
                       f"{rle_steps(script)} steps) while it shows {target['outcome']} "
                       f"(at most {attempts} attempts, {budget})"))
        runner = rp.Attempts(rec, target)
        try:
            res = rp.shrink(script, runner, attempts, secs, progress=lambda t: con.print(Text(t)))
        finally:
            runner.close()
        con.print(Text(f"shrunk: {rp.handovers(rec.script)} -> {rp.handovers(res.script)} hand-overs, "
                       f"{rle_steps(rec.script)} -> {rle_steps(res.script)} steps, in {res.attempts} attempts "
                       f"({res.kept} kept, {res.seconds:.1f} s; {res.reason})", style="bold"))
        script = res.script
        found, cfg, counts = rp.configure(rec, out, "shrink", script, slack=True)
    cfg.command = f"stress replay {rec.run_id}" + (f" --out {shlex.quote(out)}" if out != "stress-runs" else "")
    run = Run(found, cfg, counts, Console(quiet=quiet), script=script)
    result = run.execute()
    _print_summary(result, con, story_lines)
    _append_report(result)
    if not no_store and result.run_dir:
        _record_run(result.run_dir, store_path)
    findings = [f.as_dict() for f in result.findings]
    code = result.exit_code if result.exit_code == EXIT_HARNESS else 0
    if shrink:
        shows = any((f["outcome"], f["signature"]) == (rec.target["outcome"], rec.target["signature"])
                    for f in findings)
        con.print(Text(f"the shrunk schedule shows {rec.target['outcome']}" if shows else
                       f"the shrunk schedule no longer shows {rec.target['outcome']} (a nondeterministic workload?)",
                       style="bold green" if shows else "bold red"))
        code = code or (0 if shows else 1)
    else:
        cmp = rp.compare(rec, result.summary, findings)
        head = f"replay of {rec.run_id}: " + ("reproduced" if cmp.reproduced else "NOT reproduced")
        con.print(Text(head + ": " + "; ".join(cmp.lines), style="bold green" if cmp.reproduced else "bold red"))
        code = code or (0 if cmp.reproduced else 1)
    raise typer.Exit(code)


def _write_html(db: str, target: str | None, path: str, say: Any = None) -> bool:
    """Render a report; a failure is one warning line (the run's exit status stands)."""
    import sqlite3
    from reports.html import write_report
    from .store import StoreError
    try:
        written = write_report(db, target, path)
    except (StoreError, sqlite3.Error, OSError) as e:
        sys.stderr.write(f"stress: warning: no HTML report written: {e}\n")
        return False
    (say or sys.stdout).write(f"report: {written}\n")
    return True


def _write_junit_run(run_dir: str, path: str, say: Any) -> None:
    from .junit import write_run
    try:
        write_run(run_dir, path)
    except OSError as e:
        sys.stderr.write(f"stress: warning: no JUnit XML written to {path}: {e.strerror or e}\n")
        return
    say.write(f"junit: {path}\n")


def _probe_dir(d: str) -> str | None:
    """None when a file can be created in directory ``d``, else why not. A real create and
    remove: root passes os.access on a read-only file system or an immutable directory."""
    import tempfile
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stress-probe-", dir=d)
    except OSError as e:
        return e.strerror or str(e)
    try:
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _make_out(out: str, what: str = "--out") -> None:
    """The output directory exists (created if need be) and takes files; else one line, exit 2."""
    if os.path.exists(out) and not os.path.isdir(out):
        _fail(f"{what} {out!r} is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        _fail(f"cannot create {what} {out!r}: {e.strerror}")
    why = _probe_dir(out)
    if why:
        _fail(f"cannot write to {what} {out!r}: {why}")


def _check_file_target(path: str, what: str) -> None:
    """A file the command will write (--html, --junit-xml, report -o): its directory takes files."""
    if os.path.isdir(path):
        _fail(f"{what} {path!r} is a directory; give a file name")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        _fail(f"cannot write {what} {path!r}: no directory {d!r}")
    why = _probe_dir(d)
    if why:
        _fail(f"cannot write {what} {path!r}: {why}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        _fail(f"cannot write {what} {path!r}: the file is not writable")


def _check_store(path: str) -> None:
    """Before a run: a store whose pages are corrupt is refused (one line, exit 2), so that
    nothing is written into it. Any other store problem (not a database, a newer schema) is
    the one warning line after the run, as always: it does not change the exit status."""
    import sqlite3
    from .store import Store, StoreCorrupt, StoreError
    if os.path.isdir(path):
        _fail(f"{path} is a directory, not a store")
    try:
        Store(path).close()
    except StoreCorrupt as e:
        _fail(" ".join(str(e).split()))
    except (StoreError, sqlite3.Error):
        pass


def _default_db(out: str) -> str:
    from .store import default_path
    return default_path(out)


def _record_run(run_dir: str, db: str) -> bool:
    """Ingest a finished run into the store; a failure is one warning line, never the exit status."""
    import sqlite3
    from .store import Store, StoreError
    try:
        with Store(db) as store:
            store.ingest_run(run_dir)
    except (StoreError, sqlite3.Error, OSError) as e:
        sys.stderr.write(f"stress: warning: the run was not recorded in the store: {e}\n")
        return False
    return True


def verdict_text(headline: str, match: str, text: str, exit_code: int | None, status: str) -> Text:
    """``verdict: <what was found> — <whether it matched> (notes) (exit N)``, styled: the
    headline red when something was found, green when clean; the match green or red."""
    line = Text("verdict: ")
    found = bool(headline) and headline not in ("clean", "nothing found")
    if headline and match and text.startswith(f"{headline} — {match}"):
        line.append(headline, style="bold red" if found else "bold green" if headline == "clean" else "bold yellow")
        line.append(" — ")
        line.append(match, style="green" if status in ("pass", "open") else "bold red")
        line.append(text[len(f"{headline} — {match}"):])
    else:  # a row recorded before the verdict led with what was found
        line.append(text, style={"pass": "green", "open": "yellow"}.get(status, "bold red"))
    if exit_code is not None:
        line.append(f" (exit {exit_code})")
    return line


def _print_summary(result: Any, con: Any, story_lines: int = STORY_LINES) -> None:
    s = result.summary
    con.print()
    if result.verdict is not None:
        v = result.verdict
        con.print(verdict_text(v.headline, v.match, v.text, v.exit_code, v.status))
    if result.message:
        con.print(Text(result.message, style="bold red" if result.exit_code else ""))
    if "ops" in s:
        t = Table(title=f"operations ({s['elapsed_s']:.1f} s, {s['total_ops_per_s']:.0f} ops/s)", title_justify="left")
        for c in ("operation", "count", "ops/s"):
            t.add_column(c, justify="right" if c != "operation" else "left", overflow="fold")
        for k, n in s["ops"].items():
            t.add_row(k, str(n), f"{s['ops_per_s'][k]:.0f}")
        con.print(t)
        t = Table(title="lock classes", title_justify="left")
        for c in ("class", "acquisitions", "contended %", "avg wait µs", "max wait µs", "max hold µs"):
            t.add_column(c, justify="right" if c != "class" else "left", overflow="fold")
        for c in s["locks"]:
            acq = str(c["acquisitions"])
            if c.get("reads"):  # a reader-writer lock: its reads, and how many of them waited
                acq += f" ({c['reads']} read, {c.get('reads_contended', 0)} of them contended)"
            t.add_row(c["class"], acq, f"{c['contended_pct']:.2f}", f"{c['wait_avg_us']:.1f}",
                      f"{c['wait_max_us']:.1f}", f"{c['hold_max_us']:.1f}")
        con.print(t)
        d = s["detectors"]
        con.print(Text(f"detectors: {d['classes']} classes, {d['edges']} dependency edges, "
                       f"{d['chains_checked']} chains checked, chain cache hit rate "
                       f"{100 * d['chain_cache_hit_rate']:.3f}%, "
                       f"{d['watchdog_scans']} watchdog scans, {s['invariant_checks']} invariant checks"
                       f" ({s['invariant_checks_skipped']} skipped: a worker was blocked), "
                       f"{s['irqs_handled']} interrupts handled, {d['capacity_hits']} capacity hits, "
                       f"{d['trace_overruns']} trace events overwritten"))
        if d.get("heaps"):
            con.print(Text("heap: " + ", ".join(
                f"{p} {h['allocs']} allocs, max {h['max_live']} live, {h['reports']} faults"
                + (f", EXHAUSTED {h['exhausted']} times (allocations refused)" if h["exhausted"] else "")
                for p, h in d["heaps"].items())))
    boots = s.get("boots") or []
    if boots:  # the model rebooted after faults where the hypervisor panics (stress.coordinator)
        shown = boots if len(boots) <= 4 else [boots[0], *boots[-3:]]
        con.print(Text(f"boots: {len(boots)} reboot{'s' if len(boots) > 1 else ''} after faults where the hypervisor panics; "
                       "each boot started from the first state, and the counts here are over every boot: "
                       + "; ".join(f"boot {b['boot']} at {b['at_s']:.3f} s (seed {b['seed']})" for b in shown)
                       + (f"; {len(boots) - len(shown)} more" if len(boots) > len(shown) else "")))
    if s.get("model"):
        con.print(Text("model: " + ", ".join(f"{k} {v}" for k, v in s["model"].items())))
    findings = s.get("findings", [])
    if findings:
        con.print(Text("findings: " + "; ".join(f"{f['outcome']} at {f['since_start_s']:.3f} s"
                                              + (" (info)" if f["info"] else " (known)" if f.get("known") else "")
                                              for f in findings)))
    sc = s.get("schedule") or {}
    if sc.get("policy", "free") != "free":
        con.print(Text(schedule_line(sc)))
        if sc.get("diverged_step"):
            con.print(Text(f"replay diverged at step {sc['diverged_step']}: the recording chose "
                           f"{sc['diverged_want']}, which could not run; continued under the scheduler",
                           style="bold yellow"))
    decisive = [f for f in findings if not f["info"] and not f.get("known")]
    if sc.get("policy", "free") != "free" and decisive and result.run_dir and story_lines:
        from .replay import story
        lines = story(result.run_dir, story_lines)
        if lines:
            con.print(Text(f"the interleaving that led there (the last {len(lines) - 1} steps that matter; "
                           "→ the run token passed to another worker):", style="bold"))
            for ln in lines:
                con.print(Text(ln))
    con.print(Text(f"{repeat_words(s)}: {s.get('command', '')}"))
    if sc.get("policy", "free") != "free" and result.run_id:
        con.print(Text(f"replay (the recorded schedule): stress replay {result.run_id}"
                       + (f" --out {shlex.quote(os.path.dirname(result.run_dir))}"
                          if os.path.dirname(result.run_dir) not in ("stress-runs", "") else "")))
    con.print(Text(f"run directory: {result.run_dir}"))


def schedule_line(sc: dict) -> str:
    """The controlled scheduler's account of a run, one line."""
    line = (f"schedule: {sc['policy']}, {sc['steps']} steps ({sc['switches']} hand-overs, {sc['preemptions']} "
            f"preemptions, {sc['irqs_delivered']} interrupt deliveries), virtual time {sc['virtual_ns'] / 1e6:.1f} ms, "
            f"{sc['checks']} invariant checks ({sc['checks_skipped']} skipped)")
    if sc["policy"] == "pct":
        line += (f"; PCT depth {sc['depth']}, {sc['threads']} threads, k = {sc['k']} steps a round, "
                 f"{sc['rounds']} rounds: each round finds a given depth-{sc['depth']} bug with probability "
                 f">= 1/(n·k^(d-1)) = {sc['round_bound']:.3g}, this run >= {sc['run_bound']:.3g}")
    if sc.get("lost"):
        line += f"; {sc['lost']} steps not recorded (the log was full)"
    return line


def _append_report(result: Any) -> None:
    """report.txt ends with what the console printed at the end, as plain text."""
    if not result.run_dir or not os.path.isdir(result.run_dir):
        return
    import io
    buf = io.StringIO()
    _print_summary(result, make_console(buf, color=False, width=10_000))
    try:
        with open(os.path.join(result.run_dir, "report.txt"), "a") as fh:
            fh.write(buf.getvalue())
    except OSError as e:
        sys.stderr.write(f"stress: warning: report.txt not completed: {e.strerror or e}\n")


def _open_store(db: str | None, out: str, must_exist: bool = True) -> Any:
    """The store, or one line and exit 2."""
    import sqlite3
    from .store import Store, StoreError
    path = db or _default_db(out)
    if must_exist and not os.path.exists(path):
        _fail(f"no store at {path} (stress run and stress soak record runs there; --db or --out names another)")
    if os.path.isdir(path):
        _fail(f"{path} is a directory, not a store")
    try:
        return Store(path)
    except (StoreError, sqlite3.Error) as e:
        _fail(" ".join(str(e).split()))


def parse_since(text: str) -> float:
    """``2d``, ``12h``, ``30m``, ``90s``, ``1w`` ago, or a date ``YYYY-MM-DD[THH:MM]`` (local time)."""
    import time as _time
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", text)
    if m:
        return _time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"):
        try:
            return _time.mktime(_time.strptime(text.strip(), fmt))
        except ValueError:
            continue
    raise UsageError(f"--since takes an age like 2d, 12h, 30m or a date like 2026-01-31, not {text!r}")


@app.command("soak", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def soak_cmd(
    ctx: typer.Context,
    duration: str = typer.Option("", help="the soak's time budget, e.g. 30m, 8h (summed over resumes)"),
    workloads: Optional[str] = typer.Option(None, help="comma-separated built-in names or .py paths (default: every "
                                                       "built-in workload, lockdep-selftest included: it is the "
                                                       "detectors' own regression check)"),
    variants: str = typer.Option("all", help="'all', or comma-separated variant ids (id or workload:id)"),
    iteration_duration: str = typer.Option("", help="each iteration's duration (default: the workload's own; "
                                                    "the last is shortened to what remains)"),
    seed: Optional[int] = typer.Option(None, help="soak seed: iteration i runs with a seed derived from it and i "
                                                  "(default: random)"),
    hung_timeout: Optional[str] = typer.Option(None, help="passed to every iteration (stress run --hung-timeout)"),
    out: str = typer.Option("stress-runs", help="directory for run directories and the store"),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite store (default: <out>/stress.db)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue the soak with this id (or a unique prefix) "
                                                                "after it was killed or interrupted"),
    junit_xml: Optional[str] = typer.Option(None, "--junit-xml", help="also write the soak as a JUnit XML file "
                                                                      "(one testcase per iteration)"),
    schedule: Optional[str] = typer.Option(None, help="mixed (default), free, pct or random: how iterations are "
                                                      "scheduled (stress run --schedule); mixed: see above"),
    keep_traces: Optional[str] = typer.Option(None, "--keep-traces", help="all, failed (default) or none: which "
                                              "iterations keep their run directory's traces/ (failed: those that "
                                              "did not pass or showed a finding)"),
) -> None:
    """Run workload variants back to back, each iteration a fresh run with its own seed, until --duration is spent.

    It keeps going after findings and records every iteration in the store: a killed soak loses at most the iteration in flight, and --resume ID continues it.

    --schedule mixed (the default) runs a variant that expects a bug under pct on every iteration: a free run finds it or not by the luck of timing, the controlled scheduler is how a soak proves the bug is still found. Clean and open variants alternate, pct on their 1st, 3rd, ... iteration and free on their 2nd, 4th, ..., so a night covers real parallelism and controlled exploration. --schedule free, pct or random runs every iteration so.

    The summary counts passed, failed, skipped, incomplete and harness errors, with each variant's detection rate and time to detect per schedule.

    Exit status: 0 all passed, 1 some failed or incomplete, 2 bad usage, 3 a harness error (the worst wins), 130/143 interrupted (resumable).

    Workload options (e.g. --vcpus 4) follow and go to every workload that declares them."""
    import sqlite3
    from . import soak as soak_mod
    from .store import StoreError
    try:
        if resume is not None:
            given = [n for n, v in (("--duration", duration), ("--workloads", workloads), ("--iteration-duration",
                     iteration_duration), ("--seed", seed), ("--hung-timeout", hung_timeout),
                     ("--schedule", schedule), ("--keep-traces", keep_traces)) if v not in ("", None)]
            given += ["--variants"] if variants != "all" else []
            given += [a for a in ctx.args if a.startswith("--")]
            if given:
                raise UsageError(f"--resume takes the soak's plan from the store; drop {', '.join(given)}")
            if junit_xml:
                _check_file_target(junit_xml, "--junit-xml")
            store = _open_store(db, out)
            try:
                code = soak_mod.resume(store, resume, junit_xml)
            except (StoreError, sqlite3.Error) as e:
                _fail(f"the store failed: {e}", EXIT_HARNESS)
            finally:
                store.close()
            raise typer.Exit(code)
        if not duration:
            raise UsageError("stress soak needs --duration (e.g. --duration 8h), or --resume ID")
        dur = parse_duration(duration)
        it_dur = parse_duration(iteration_duration, "--iteration-duration") if iteration_duration else None
        plan, found = soak_mod.make_plan(workloads, variants, seed if seed is not None else random.randrange(1, 2**31),
                                         dur, it_dur, out, list(ctx.args), hung_timeout, schedule or "mixed",
                                         keep_traces or soak_mod.DEFAULT_KEEP_TRACES)
    except (WorkloadError, UsageError) as e:
        _fail(str(e))
    _make_out(out)
    if junit_xml:
        _check_file_target(junit_xml, "--junit-xml")
    store = _open_store(db, out, must_exist=False)
    try:
        code = soak_mod.start(store, plan, found, junit_xml)
    except (StoreError, sqlite3.Error) as e:
        _fail(f"the store failed: {e}", EXIT_HARNESS)
    finally:
        store.close()
    raise typer.Exit(code)


@app.command("campaign", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def campaign_cmd(
    ctx: typer.Context,
    cluster: Optional[str] = typer.Option(None, "--cluster", help="the Ray cluster's address (host:port of its head, "
                                          "ray://host:port, or auto); default: an embedded Ray with this machine "
                                          "as its one host"),
    duration: str = typer.Option("", help="the campaign's wall-time budget, e.g. 8h, 1h30m, 1d (summed over resumes)"),
    iterations: Optional[int] = typer.Option(None, help="run this many iterations (with --duration: whichever "
                                                        "ends first)"),
    workloads: Optional[str] = typer.Option(None, help="comma-separated built-in names or .py paths (default: every "
                                                       "built-in workload); a file is sent to each host with its task"),
    variants: str = typer.Option("all", help="'all', or comma-separated variant ids (id or workload:id)"),
    iteration_duration: str = typer.Option("", help="each iteration's duration (default: the workload's own)"),
    seed: Optional[int] = typer.Option(None, help="campaign seed: iteration i runs with a seed derived from it and i "
                                                  "(default: random)"),
    hung_timeout: Optional[str] = typer.Option(None, help="passed to every iteration (stress run --hung-timeout)"),
    schedule: Optional[str] = typer.Option(None, help="mixed (default), free, pct or random, as for stress soak"),
    keep_traces: Optional[str] = typer.Option(None, "--keep-traces", help="all, failed (default) or none: which "
                                              "iterations bring their traces/ back from their host"),
    retries: Optional[int] = typer.Option(None, "--retries", help="times an iteration is retried on another host "
                                                                 "when its host dies under it (default 3)"),
    out: str = typer.Option("stress-runs", help="directory (on this machine) for run directories and the store"),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite store (default: <out>/stress.db; never on a shared "
                                                        "file system)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue the campaign with this id (or a unique "
                                                                "prefix) after the driver was killed"),
    junit_xml: Optional[str] = typer.Option(None, "--junit-xml", help="also write the campaign as a JUnit XML file"),
) -> None:
    """Run a soak's plan on the hosts of a Ray cluster (pip install 'stress[cluster]'), one iteration per host at a time, into this machine's store.

    The plan is a soak's (workloads x variants, a seed per iteration derived from --seed, the schedule rule of each variant); each iteration is a Ray task that asks for one stress_host and runs stress run on its host; its record (summary, findings, metrics; traces only as --keep-traces says) comes back and is written into the store as it arrives. A host that dies under an iteration: the iteration is retried on another host and marked retried. The driver killed: --resume ID runs only what the store does not hold.

    Start the cluster first: ray start --head on one machine, ray start --address HEAD:6379 --resources '{"stress_host": 1}' on each host (see the README). Without --cluster an embedded Ray runs the same path on this machine.

    Exit status as stress soak's: 0 all passed, 1 some failed or incomplete, 2 bad usage (an unreachable cluster, no Ray), 3 a harness error, 130/143 interrupted (resumable).

    Workload options (e.g. --vcpus 4) follow and go to every workload that declares them."""
    import sqlite3
    from . import soak as soak_mod
    from .store import StoreError
    if retries is not None and retries < 0:
        _fail("--retries must be 0 or more")
    try:
        if resume is not None:
            given = [n for n, v in (("--duration", duration), ("--workloads", workloads), ("--iteration-duration",
                     iteration_duration), ("--seed", seed), ("--hung-timeout", hung_timeout),
                     ("--schedule", schedule), ("--keep-traces", keep_traces), ("--iterations", iterations),
                     ("--retries", retries)) if v not in ("", None)]
            given += ["--variants"] if variants != "all" else []
            given += [a for a in ctx.args if a.startswith("--")]
            if given:
                raise UsageError(f"--resume takes the campaign's plan from the store; drop {', '.join(given)} "
                                 "(--cluster may name another cluster)")
            if junit_xml:
                _check_file_target(junit_xml, "--junit-xml")
            store = _open_store(db, out)
            try:
                from . import campaign as campaign_mod
                code = campaign_mod.resume(store, resume, cluster, junit_xml)
            except (StoreError, sqlite3.Error) as e:
                _fail(f"the store failed: {e}", EXIT_HARNESS)
            finally:
                store.close()
            raise typer.Exit(code)
        if not duration and iterations is None:
            raise UsageError("stress campaign needs --duration (e.g. --duration 8h) or --iterations N, or --resume ID")
        import math
        dur = parse_duration(duration) if duration else math.inf
        it_dur = parse_duration(iteration_duration, "--iteration-duration") if iteration_duration else None
        plan, found = soak_mod.make_plan(workloads, variants, seed if seed is not None else random.randrange(1, 2**31),
                                         dur, it_dur, out, list(ctx.args), hung_timeout, schedule or "mixed",
                                         keep_traces or soak_mod.DEFAULT_KEEP_TRACES, iterations)
        _make_out(out)
        if junit_xml:
            _check_file_target(junit_xml, "--junit-xml")
        store = _open_store(db, out, must_exist=False)
        try:
            from . import campaign as campaign_mod
            code = campaign_mod.start(store, plan, found, cluster,
                                      campaign_mod.DEFAULT_RETRIES if retries is None else retries, junit_xml)
        except (StoreError, sqlite3.Error) as e:
            _fail(f"the store failed: {e}", EXIT_HARNESS)
        finally:
            store.close()
    except (WorkloadError, UsageError) as e:
        _fail(str(e))
    raise typer.Exit(code)


def _fmt_time(t: float) -> str:
    import time as _time
    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(t))


def _columns(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def _row_dict(r: Any) -> dict:
    from dataclasses import asdict
    return asdict(r)


def _found_cell(summary_found: list[str], known: dict[str, int]) -> str:
    """What a run found: decisive outcomes, then known ones marked ``(known)``."""
    parts = list(summary_found) + [f"{o}×{n} (known)" if n > 1 else f"{o} (known)" for o, n in sorted(known.items())]
    return ", ".join(parts) or "-"


@app.command("litmus")
def litmus_cmd(
    trials: int = typer.Option(100_000, "--trials", "-n", help="trials per test"),
    seed: int = typer.Option(1, help="seed of the trials' scheduling and weak-memory choices"),
    test: Optional[list[str]] = typer.Option(None, "--test", "-t", help="only this test (repeatable; default: all)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no per-state lines, only each test's verdict"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON and nothing else"),
) -> None:
    """Check the weak-memory emulation (relaxed fields) against the litmus table: each test's
    outcomes over many trials in herd7's shape, and whether the observation matches ARMv8 /
    the Linux-kernel memory model (Sometimes vs Never). Exit 1 when any row does not."""
    from shm_model.litmus import BY_NAME, run_table

    if trials < 1:
        _fail("--trials must be at least 1")
    unknown = [t for t in (test or []) if t not in BY_NAME]
    if unknown:
        _fail(f"unknown litmus test {unknown[0]!r} (tests: {', '.join(BY_NAME)})")
    con = make_console()

    def progress(name: str, n: int) -> None:
        if not quiet and not as_json and n % 50_000 == 0 and n < trials:
            con.print(f"  {name}: {n}/{trials} trials", style="dim")

    results = []
    for name in (test or list(BY_NAME)):
        r = run_table(trials, seed, [name], progress)[0]
        results.append(r)
        if as_json:
            continue
        if quiet:
            con.print(f"Observation {r.test.name} {r.observation} {r.positive} {r.negative}   "
                      f"expected {r.test.expect}: {'ok' if r.ok else 'FAIL'}")
        else:
            con.print(Text(r.herd() + f"\nTime {r.test.name} {r.seconds:.2f}\n"))
    bad = [r for r in results if not r.ok]
    if as_json:
        print(json.dumps([{"test": r.test.name, "trials": r.trials, "positive": r.positive, "negative": r.negative,
                           "observation": r.observation, "expected": r.test.expect, "ok": r.ok,
                           "condition": r.test.condition(), "source": r.test.source,
                           "states": [{"state": dict(st), "count": n} for st, n in sorted(r.states.items())],
                           "seconds": round(r.seconds, 3)} for r in results], indent=1))
    else:
        con.print(f"{len(results) - len(bad)}/{len(results)} tests as ARMv8 and the LKMM expect"
                  + (f"; wrong: {', '.join(r.test.name for r in bad)}" if bad else ""),
                  style="red" if bad else "green")
    raise typer.Exit(1 if bad else 0)


@app.command("runs")
def runs_cmd(
    workload: Optional[str] = typer.Option(None, help="only this workload"),
    variant: Optional[str] = typer.Option(None, help="only this variant"),
    since: Optional[str] = typer.Option(None, help="only runs started since: 2d, 12h, 30m, or a date 2026-01-31"),
    soak: Optional[str] = typer.Option(None, help="only the iterations of this soak (id or unique prefix)"),
    limit: int = typer.Option(50, help="list the newest N runs (the history below covers every matching run)"),
    out: str = typer.Option("stress-runs", help="where runs are recorded"),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite store (default: <out>/stress.db)"),
    as_json: bool = typer.Option(False, "--json", help="print the runs and the history per variant and schedule "
                                                       "as JSON"),
) -> None:
    """Recorded runs, one line each, then per workload, variant and schedule: detection rate and time to detect."""
    import sqlite3
    from dataclasses import asdict

    from .soak import console, history_table, print_flags
    from .store import StoreError
    try:
        t_since = parse_since(since) if since is not None else None
        if limit < 1:
            raise UsageError("--limit must be at least 1")
    except UsageError as e:
        _fail(str(e))
    store = _open_store(db, out)
    try:
        soak_id = store.soak(soak)["id"] if soak is not None else None
        rows = store.runs(workload, variant, t_since, soak_id, limit)
        history = [h for h in store.history(workload, t_since, soak_id) if variant is None or h.variant == variant]
        found = {}
        for r in rows:
            found[r.id] = _found_cell(store.found(r.id), store.known_findings(r.id))
    except (StoreError, sqlite3.Error) as e:
        store.close()
        _fail(" ".join(str(e).split()))
    store.close()
    if as_json:
        doc = {"store": store.path,
               "runs": [dict(_row_dict(r), found=found[r.id]) for r in rows],
               "history": [dict(asdict(h), detection_rate=h.detection_rate) for h in history]}
        print(json.dumps(doc, indent=2, default=str))
        raise typer.Exit(0)
    con = console()
    if not rows:
        con.print(f"no recorded run matches (store {store.path})")
        raise typer.Exit(0)
    total = sum(h.runs for h in history)
    table = [["run", "started", "workload", "variant", "schedule", "seed", "status", "detect", "ops/s", "found",
              "soak iteration"]]
    for r in rows:
        table.append([r.id, _fmt_time(r.started_at), r.workload, r.variant, r.schedule,
                      "" if r.seed is None else str(r.seed),
                      r.status, "-" if r.time_to_detect_s is None else f"{r.time_to_detect_s:.3f}s",
                      "-" if r.total_ops_per_s is None else f"{r.total_ops_per_s:.0f}", found[r.id],
                      f"{r.soak_id} #{r.iteration}" if r.soak_id else "-"])
    lines = _columns(table, right={5, 7, 8})
    con.print(lines[0], style="bold")
    for ln in lines[1:]:
        con.print(ln)
    if total > len(rows):
        con.print(f"(the newest {len(rows)} of {total} matching runs; --limit shows more)")
    con.print()
    con.print(history_table(history))
    print_flags(con, history)


@app.command("show")
def show_cmd(
    ident: str = typer.Argument(..., metavar="RUN_ID", help="a run id (or a unique prefix); a soak id shows its summary"),
    out: str = typer.Option("stress-runs", help="where runs are recorded"),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite store (default: <out>/stress.db)"),
    as_json: bool = typer.Option(False, "--json", help="print the run (or soak) as JSON"),
) -> None:
    """A recorded run in the console: verdict, configuration, repeat command, each finding's full report."""
    import sqlite3
    from .soak import console, print_summary, summarize
    from .store import StoreError
    store = _open_store(db, out)
    con = console()
    try:
        kind, full = store.kind_of(ident)
        if kind == "soak":
            if as_json:
                sm = summarize(store, full)
                doc = {"kind": "soak", "soak": store.soak(full), "counts": sm["counts"],
                       "exit_code": sm["exit_code"], "runs": [_row_dict(r) for r in sm["rows"]]}
                store.close()
                print(json.dumps(doc, indent=2, default=str))
                raise typer.Exit(0)
            code = print_summary(store, full, con)
            store.close()
            raise typer.Exit(0 if code in (0, 1, 3) else code)
        d = store.run_detail(full)
    except (StoreError, sqlite3.Error) as e:
        store.close()
        _fail(" ".join(str(e).split()))
    store.close()
    if as_json:
        doc = {"kind": "run", "run": _row_dict(d["run"]), "config": d["config"], "summary": d["summary"],
               "findings": d["findings"], "metrics": d["metrics"]}
        print(json.dumps(doc, indent=2, default=str))
        raise typer.Exit(0)
    _print_run(con, d, out)


def _print_run(con: Any, d: dict, out: str = "stress-runs") -> None:
    r, cfg, s = d["run"], d["config"], d["summary"]
    con.print(Text(f"run {r.id}: {r.workload} --variant {r.variant}, seed {r.seed}", style="bold"))
    if r.soak_id:
        con.print(f"soak {r.soak_id}, iteration {r.iteration}")
    v = s.get("verdict") or {}
    text = r.verdict_text or v.get("text", "")
    if v.get("headline") and v.get("text") == text:
        con.print(verdict_text(v["headline"], v.get("match", ""), text, r.exit_code, r.status))
    else:  # an old row, or a status the soak overruled: the words as recorded
        line = verdict_text("", "", f"{text or r.status} [{r.status}]", r.exit_code, r.status)
        con.print(line)
    con.print(f"expected: {' or '.join(r.expected) or '?'}")
    facts = [f"started {_fmt_time(r.started_at)}"]
    if r.elapsed_s is not None:
        facts.append(f"ran {r.elapsed_s:.1f} s")
    if r.stop_reason:
        facts.append(f"stopped by {r.stop_reason}")
    if r.exit_code is not None:
        facts.append(f"exit status {r.exit_code}")
    if r.total_ops_per_s is not None:
        facts.append(f"{r.total_ops_per_s:.0f} ops/s")
    if r.time_to_detect_s is not None:
        facts.append(f"detected after {r.time_to_detect_s:.3f} s")
    con.print(", ".join(facts))
    if s.get("message") and s.get("message") != r.verdict_text:
        con.print(f"message: {s['message']}")
    if r.provenance:
        con.print(f"provenance: {r.provenance}")
    conf = []
    for k in ("duration", "noise", "hung_timeout", "trace_locks"):
        if k in cfg:
            conf.append(f"{k} {cfg[k]}")
    if cfg.get("counts"):
        conf.append("workers " + ", ".join(f"{k}×{n}" for k, n in cfg["counts"].items()))
    if cfg.get("rates"):
        conf.append("rates " + ", ".join(f"{k}={n:g}/s" for k, n in cfg["rates"].items()))
    if cfg.get("options"):
        conf.append("options " + " ".join(f"--{k} {val}" for k, val in cfg["options"].items()))
    if cfg.get("host"):
        conf.append(f"host {cfg['host']}")
    if conf:
        con.print("configuration: " + "; ".join(conf))
    if r.command:
        con.print(f"{repeat_words(r.command)}: {r.command}")
    if (s.get("schedule") or {}).get("policy", "free") != "free":
        con.print(Text(schedule_line(s["schedule"])))
        where = f" --out {shlex.quote(out)}" if out != "stress-runs" else ""
        con.print(f"replay (the recorded schedule): stress replay {r.id}{where}")
    if r.run_dir:
        con.print(f"run directory: {r.run_dir}")
    fs = d["findings"]
    con.print()
    if not fs:
        con.print("no findings")
    for f in fs:
        tag = " (information)" if f["info"] else f" (known: {f['known']})" if f["known"] else ""
        when = "" if f["since_start_s"] is None else f" at {f['since_start_s']:.3f} s"
        con.print(Text(f"--- finding {f['seq'] + 1} of {len(fs)}: {f['outcome']}{when}{tag} ---", style="bold"))
        con.print(Text(f["text"].rstrip("\n") if f["text"] else f["title"]))
        con.print()


@app.command("report")
def report_cmd(
    target: Optional[str] = typer.Argument(None, help="run id, soak id, or a unique prefix of one"),
    latest: bool = typer.Option(False, "--latest", help="the most recent soak or run"),
    output: str = typer.Option(..., "-o", "--output", help="the HTML file to write"),
    out: str = typer.Option("stress-runs", help="directory of the runs (its stress.db is the store)"),
    db: Optional[str] = typer.Option(None, help="the store (default: <out>/stress.db)"),
) -> None:
    """Write one self-contained HTML report (opens offline) for a run or a soak."""
    if (target is None) == (not latest):
        _fail("give a run or soak id, or --latest (not both)")
    path = db or _default_db(out)
    if not os.path.exists(path):
        _fail(f"no store at {path} (run something first, or give --out/--db)")
    _check_file_target(output, "-o")
    import sqlite3
    from reports.html import write_report
    from .store import StoreError
    try:
        written = write_report(path, target, output)
    except StoreError as e:
        _fail(" ".join(str(e).split()))
    except (sqlite3.Error, OSError) as e:
        _fail(f"cannot write the report: {e}", EXIT_HARNESS)
    print(f"report: {written} ({os.path.getsize(written) // 1024} KiB)")


@app.command("cleanup")
def cleanup_cmd(all_: bool = typer.Option(False, "--all", help="also remove objects of runs still alive")) -> None:
    """Remove shared-memory segments and semaphores left by killed runs."""
    before = list(list_objects())
    skipped: list[tuple[str, int]] = []
    removed = sweep_orphans(include_live=all_, skipped=skipped)
    live = len(before) - len(removed) - len(skipped)
    print(f"removed {len(removed)} orphaned IPC object{'s' if len(removed) != 1 else ''}"
          + (f"; {live} belong to runs still alive (--all removes them too)" if live > 0 else ""))
    if skipped:  # objects we may not unlink (another user's, in sticky /dev/shm): never fatal
        uids = sorted({u for _, u in skipped})
        others = [u for u in uids if u != os.getuid()]
        n = len(skipped)
        print(f"skipped {n} object{'s' if n != 1 else ''} "
              + (f"of other users (uid {', '.join(str(u) for u in others)}): remove them as that user or as root"
                 if others else "that could not be removed: remove them as root"))


def _stdout_broken() -> bool:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        return True
    return False


def _quiet_stdout() -> None:
    """No "Exception ignored ... BrokenPipeError" at exit when stdout's reader has gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(args: list[str] | None = None) -> None:
    """Every usage error is one line on stderr (``stress: error: ... (see: stress CMD --help)``), exit 2."""
    from typer._click import exceptions as cx
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=sys.argv[1:] if args is None else args, prog_name="stress", standalone_mode=False)
    except cx.NoArgsIsHelpError as e:  # `stress` alone: the help
        sys.stdout.write(e.ctx.get_help() + "\n")
        sys.exit(0)
    except cx.UsageError as e:  # BadParameter, missing option, no such option, extra arguments
        where = e.ctx.command_path if e.ctx is not None else "stress"
        sys.stderr.write(f"stress: error: {_one_line(e.format_message())} (see: {where} --help)\n")
        sys.exit(e.exit_code)
    except cx.ClickException as e:
        sys.stderr.write(f"stress: error: {_one_line(e.format_message())}\n")
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("stress: interrupted\n")
        sys.exit(130)
    except BrokenPipeError:  # `stress runs | head`: the reader left
        _quiet_stdout()
        sys.exit(1)
    except SystemExit:
        if _stdout_broken():
            _quiet_stdout()
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
