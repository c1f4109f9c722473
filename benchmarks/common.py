"""Shared plumbing of the benchmark suite: result tables, progress lines, running
``stress run`` as a subprocess and reading its summary.json, and /dev/shm bookkeeping."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHM_DIR = "/dev/shm"


# ---- tables ---------------------------------------------------------------------------------

@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the table
    right: set[int] | None = None  # column indices to right-align (default: all but the first)

    def add(self, *cells: Any) -> None:
        self.rows.append([_cell(c) for c in cells])

    def aligned_right(self, i: int) -> bool:
        return i in self.right if self.right is not None else i > 0

    # -- Markdown ---------------------------------------------------------------------------
    def markdown(self) -> str:
        def esc(x: str) -> str:
            return x.replace("|", "\\|").replace("\n", "<br>")

        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
        out.append("|" + "|".join("---:" if self.aligned_right(i) else "---" for i in range(len(self.columns))) + "|")
        for r in self.rows:
            out.append("| " + " | ".join(esc(str(c)) for c in r) + " |")
        if self.notes:
            out.append("")
            for n in self.notes:
                out.append(f"- {n}")
        out.append("")
        return "\n".join(out)

    # -- terminal ---------------------------------------------------------------------------
    def print(self) -> None:
        try:
            from rich.console import Console
            from rich.table import Table as RichTable
        except ImportError:  # plain fallback
            self._print_plain()
            return
        con = Console(highlight=False, width=None if sys.stdout.isatty() else 220)
        t = RichTable(title=self.title, title_justify="left", show_lines=False)
        for i, c in enumerate(self.columns):
            t.add_column(c, justify="right" if self.aligned_right(i) else "left", overflow="fold")
        for r in self.rows:
            t.add_row(*[str(c) for c in r])
        con.print(t)
        for n in self.notes:
            con.print(f"  - {n}", soft_wrap=True)
        con.print()

    def _print_plain(self) -> None:
        widths = [max(len(str(c)) for c in [h] + [r[i] for r in self.rows]) for i, h in enumerate(self.columns)]
        print(self.title)
        print("  ".join(h.ljust(w) for h, w in zip(self.columns, widths)))
        for r in self.rows:
            print("  ".join((str(c).rjust(w) if self.aligned_right(i) else str(c).ljust(w))
                            for i, (c, w) in enumerate(zip(r, widths))))
        for n in self.notes:
            print(f"  - {n}")
        print()


def _cell(c: Any) -> str:
    if c is None:
        return "–"
    return str(c)


def fmt_ns(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}"


def fmt_s(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of the values."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(len(s) * p / 100) - 1))
    return s[k]


# ---- context handed to sections ---------------------------------------------------------------

class Context:
    """What every section gets: the mode, progress output, scratch space, and facts measured
    by earlier sections (the profile section compares with the primitives')."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.t0 = time.monotonic()
        self.facts: dict[str, Any] = {}
        self.tmp = tempfile.mkdtemp(prefix="stress-bench-")
        self.run_ids: list[str] = []  # runs we started: their /dev/shm objects must be gone

    def progress(self, msg: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - self.t0:7.1f}s] {msg}\n")
        sys.stderr.flush()

    def scratch(self, name: str) -> str:
        d = tempfile.mkdtemp(prefix=name + "-", dir=self.tmp)
        return d

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- stress run as a subprocess -------------------------------------------------------------

class StressRunError(RuntimeError):
    pass


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    exit_code: int
    wall_s: float
    run_dir: str
    stdout: str
    stderr: str


def stress_cmd(workload: str, variant: str, duration: str, *, seed: int | None = 1, workers: int | None = None,
               out: str, extra: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "stress", "run", "--workload", workload, "--variant", variant,
           "--duration", duration, "--quiet", "--out", out]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return cmd + list(extra or [])


def run_stress(ctx: Context, cmd: list[str], timeout_s: float) -> RunOutcome:
    """Run ``stress run`` and return its summary.json. On timeout: SIGTERM (the coordinator
    tears down and unlinks its objects), then SIGKILL of the coordinator's process group,
    then ``stress cleanup`` (orphans of dead coordinators only)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the group of the coordinator we started
            except ProcessLookupError:
                pass
            out, err = p.communicate()
            subprocess.run([sys.executable, "-m", "stress", "cleanup"], cwd=REPO, capture_output=True)
        raise StressRunError(f"timed out after {timeout_s:.0f} s: {' '.join(cmd[2:])}\n{err[-2000:]}")
    wall = time.monotonic() - t
    m = re.search(r"^run directory: (.+)$", out, re.M)
    if not m:
        raise StressRunError(f"no run directory printed (exit {p.returncode}): {' '.join(cmd[2:])}\n"
                             f"stdout: {out[-1500:]}\nstderr: {err[-1500:]}")
    run_dir = m.group(1).strip()
    if not os.path.isabs(run_dir):
        run_dir = os.path.join(REPO, run_dir)
    try:
        with open(os.path.join(run_dir, "summary.json")) as fh:
            summary = json.load(fh)
    except (OSError, ValueError) as e:
        raise StressRunError(f"cannot read summary.json in {run_dir}: {e}") from None
    ctx.run_ids.append(summary.get("run_id", os.path.basename(run_dir)))
    return RunOutcome(summary, p.returncode, wall, run_dir, out, err)


def running_ops(run_dir: str) -> tuple[dict[str, int] | None, float | None]:
    """(operations per op name, t_s) of the last metrics.jsonl snapshot taken while the run
    was going (the file has one a second during the run, then a last one at teardown).

    summary.json's rates divide by ``elapsed_s``, which the coordinator takes after its
    teardown (stopping the workers, dumping every trace ring): the more workers, the more
    they understate the rate. Runs shorter than ~1 s have no such snapshot: (None, None)."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
            snaps = [json.loads(x) for x in fh if x.strip()]
    except (OSError, ValueError):
        return None, None
    during = snaps[:-1]
    while during and during[-1].get("t_s", 0) <= 0.5:
        during.pop()
    if not during:
        return None, None
    return dict(during[-1].get("ops", {})), during[-1]["t_s"]


def running_rate(run_dir: str) -> tuple[float | None, float | None]:
    """(total ops/s, at t_s) from :func:`running_ops`."""
    ops, t = running_ops(run_dir)
    if not ops or not t:
        return None, None
    return sum(ops.values()) / t, t


# ---- /dev/shm -------------------------------------------------------------------------------

def shm_entries() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return set()


def our_leftovers(before: set[str], ctx: Context) -> list[str]:
    """Entries that appeared during the suite and belong to us: the arenas of this process
    (pid in the name) or of the runs we started."""
    me = f"-{os.getpid()}-"
    left = []
    for e in sorted(shm_entries() - before):
        if me in e or any(r in e for r in ctx.run_ids):
            left.append(e)
    return left
