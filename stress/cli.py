"""``stress``: the command line.

Exit status of ``stress run``: 0 the outcome matches the variant's expectation (``clean``
when none is declared; always 0 for an ``open`` variant), 1 it does not, 2 bad usage,
3 the harness failed (or a worker died holding no lock), 130/143 interrupted by Ctrl-C /
SIGTERM (partial results kept). Bad input gets one line on stderr, never a traceback.
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
from rich.console import Console as RichConsole
from rich.table import Table

from shm_model.arena import list_objects, new_run_id, sweep_orphans

from .console import Console
from .loader import Found, builtins, find
from .verdict import EXIT_HARNESS, EXIT_USAGE
from .workload import WorkloadError, role_counts
from .world import RunConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Stress-test hypervisor locking protocols with real processes, shared memory and signals.")


class UsageError(Exception):
    pass


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    sys.stderr.write(f"stress: error: {msg}\n")
    raise typer.Exit(code)


def parse_duration(text: str, what: str = "--duration") -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise UsageError(f"{what} takes a duration like 30s, 5m, 8h or 1500ms, not {text!r}")
    value = float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
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
    parts += ["--noise", f"{cfg.noise:g}"]
    if cfg.trace_locks:
        parts.append("--trace-locks")
    if cfg.hung_timeout != 10.0:
        parts += ["--hung-timeout", _fmt_s(cfg.hung_timeout)]
    for k, o in found.cls.options.items():
        if cfg.options.get(k) != o.default:
            parts += [f"--{k}", str(cfg.options[k])]
    if cfg.out != "stress-runs":
        parts += ["--out", cfg.out]
    return shlex.join(parts)


@app.command("list")
def list_cmd(out: str = typer.Option("stress-runs", help="where runs are recorded (for open variants' last verdict)")) -> None:
    """Workloads, their variants, what each is expected to show, and where it comes from."""
    try:
        table_ = builtins()
    except WorkloadError as e:
        _fail(str(e), EXIT_HARNESS)
    last = _last_runs(out)
    t = Table(title="built-in workloads", show_lines=False)
    for c in ("workload", "variant", "expected", "provenance"):
        t.add_column(c, overflow="fold")
    for name, f in sorted(table_.items()):
        for i, v in enumerate(f.cls.variants):
            exp = " or ".join(v.outcomes)
            if v.known:
                exp += f" (known: {', '.join(v.known)})"
            if v.outcomes == ("open",):
                lr = last.get((name, v.id))
                exp += f" (last run: {lr})" if lr else " (no run recorded yet)"
            t.add_row(name if i == 0 else "", v.id + (" (default)" if i == 0 else ""), exp, v.provenance)
    RichConsole(highlight=False).print(t)
    RichConsole(highlight=False).print("A workload of your own: stress run --workload ./my_protocol.py (see README).")


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
    hung_timeout: str = typer.Option("10s", help="report a worker blocked this long on a live holder"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress, only findings and the summary"),
) -> None:
    """Run one workload variant and judge what it shows against what it is expected to show.

    Workload-specific options (see `stress list` and the workload file) follow, e.g. --vcpus 4."""
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
        if not 0.0 <= noise <= 1.0:
            raise UsageError("--noise is a probability between 0 and 1")
        hung = parse_duration(hung_timeout, "--hung-timeout")
        cfg = RunConfig(workload=workload, variant=v.id, seed=seed if seed is not None else random.randrange(1, 2**31),
                        duration=dur, counts=counts.per_role, rates=rates, noise=noise, options=opts, out=out,
                        trace_locks=trace_locks, hung_timeout=hung, run_id=new_run_id())
        cfg.command = repeat_command(cfg, found, workers, rate)
        from .coordinator import Run
        run = Run(found, cfg, counts, Console(quiet=quiet))
    except (WorkloadError, UsageError) as e:
        _fail(str(e))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        _fail(f"cannot create --out {out!r}: {e.strerror}")
    result = run.execute()
    _print_summary(result)
    raise typer.Exit(result.exit_code)


def _print_summary(result: Any) -> None:
    con = RichConsole(highlight=False, soft_wrap=True)
    s = result.summary
    con.print()
    if result.verdict is not None:
        v = result.verdict
        style = {"pass": "bold green", "open": "bold yellow"}.get(v.status, "bold red")
        con.print(f"verdict: [{style}]{v.status.upper()}[/] — {v.text} "
                  f"(expected: {' or '.join(v.expected)})")
    if result.message:
        con.print(f"[bold red]{result.message}[/]" if result.exit_code else result.message)
    if "ops" in s:
        t = Table(title=f"operations ({s['elapsed_s']:.1f} s, {s['total_ops_per_s']:.0f} ops/s)", title_justify="left")
        for c in ("operation", "count", "ops/s"):
            t.add_column(c, justify="right" if c != "operation" else "left")
        for k, n in s["ops"].items():
            t.add_row(k, str(n), f"{s['ops_per_s'][k]:.0f}")
        con.print(t)
        t = Table(title="lock classes", title_justify="left")
        for c in ("class", "acquisitions", "contended %", "avg wait µs", "max wait µs", "max hold µs"):
            t.add_column(c, justify="right" if c != "class" else "left")
        for c in s["locks"]:
            t.add_row(c["class"], str(c["acquisitions"]), f"{c['contended_pct']:.2f}", f"{c['wait_avg_us']:.1f}",
                      f"{c['wait_max_us']:.1f}", f"{c['hold_max_us']:.1f}")
        con.print(t)
        d = s["detectors"]
        con.print(f"detectors: {d['classes']} classes, {d['edges']} dependency edges, "
                  f"{d['chains_checked']} chains checked, chain cache hit rate {100 * d['chain_cache_hit_rate']:.3f}%, "
                  f"{d['watchdog_scans']} watchdog scans, {s['invariant_checks']} invariant checks"
                  f" ({s['invariant_checks_skipped']} skipped: a worker was blocked), "
                  f"{s['irqs_handled']} interrupts handled, {d['capacity_hits']} capacity hits, "
                  f"{d['trace_overruns']} trace events overwritten")
    if s.get("model"):
        con.print("model: " + ", ".join(f"{k} {v}" for k, v in s["model"].items()))
    findings = s.get("findings", [])
    if findings:
        con.print("findings: " + "; ".join(f"{f['outcome']} at {f['since_start_s']:.3f} s"
                                         + (" (info)" if f["info"] else " (known)" if f.get("known") else "")
                                         for f in findings))
    con.print(f"repeat: {s.get('command', '')}")
    con.print(f"run directory: {result.run_dir}")


@app.command("cleanup")
def cleanup_cmd(all_: bool = typer.Option(False, "--all", help="also remove objects of runs still alive")) -> None:
    """Remove shared-memory segments and semaphores left by killed runs."""
    before = list(list_objects())
    removed = sweep_orphans(include_live=all_)
    live = len(before) - len(removed)
    print(f"removed {len(removed)} orphaned IPC object{'s' if len(removed) != 1 else ''}"
          + (f"; {live} belong to runs still alive (--all removes them too)" if live else ""))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("stress: interrupted\n")
        sys.exit(130)
