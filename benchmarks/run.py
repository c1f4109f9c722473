"""The benchmark suite: ``python -m benchmarks.run [--quick] [--only NAME[,NAME]] [--out FILE]``.

Sections (in this order): primitives, abba, migration-storm, dos, profile, campaign. Each prints its
table(s) to stdout as it finishes; progress lines go to stderr; every table is also written,
with the command, date, Python version and nproc, to ``--out`` (Markdown). See
benchmarks/README.md for what each section measures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from typing import Callable

from .common import REPO, Context, Table, our_leftovers, shm_entries


def _sections() -> dict[str, Callable[[Context], list[Table]]]:
    from . import campaign, dos, primitives, profiling, runs

    return {"primitives": primitives.run, "abba": runs.abba, "migration-storm": runs.migration_storm,
            "dos": dos.run, "profile": profiling.run, "campaign": campaign.run}


SECTION_NAMES = ["primitives", "abba", "migration-storm", "dos", "profile", "campaign"]


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(len(os.sched_getaffinity(0)))


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (work tree modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _header(argv: list[str], started: datetime.datetime, quick: bool, sections: list[str]) -> list[str]:
    load = os.getloadavg()
    return [
        "# Benchmark results",
        "",
        f"- command: `{shlex.join(['python', '-m', 'benchmarks.run'] + argv)}` (from the repository root)",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- python: {sys.version.split()[0]} ({platform.python_implementation()}, {sys.executable})",
        f"- nproc: {_nproc()}",
        f"- machine: {platform.machine()}, {platform.release()}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- commit: {_git()}",
        f"- mode: {'quick' if quick else 'full'}; sections: {', '.join(sections)}",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs and fewer repeats (a few minutes)")
    ap.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTION_NAMES)}")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results.md"), help="Markdown results file")
    a = ap.parse_args(argv)
    chosen = [s.strip() for s in a.only.split(",") if s.strip()] or list(SECTION_NAMES)
    bad = [s for s in chosen if s not in SECTION_NAMES]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; sections: {', '.join(SECTION_NAMES)}")
    chosen = [s for s in SECTION_NAMES if s in chosen]  # always in suite order (profile uses primitives' facts)
    a.out = os.path.abspath(a.out)
    os.chdir(REPO)
    # SIGTERM, and SIGINT even when started in the background (where it is ignored), unwind
    # through the finally blocks that unlink this process's arenas
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sections = _sections()
    started = datetime.datetime.now().astimezone()
    md = _header(argv, started, a.quick, chosen)
    before = shm_entries()
    ctx = Context(quick=a.quick)
    failures = 0
    try:
        for name in chosen:
            t0 = time.monotonic()
            ctx.progress(f"section {name}: start")
            md.append(f"## {name}")
            md.append("")
            try:
                tables = sections[name](ctx)
            except Exception as e:  # one section's failure does not lose the others
                failures += 1
                tb = traceback.format_exc()
                sys.stderr.write(tb)
                md += [f"Section failed: `{type(e).__name__}: {e}`", "", "```", tb.rstrip(), "```", ""]
                continue
            for t in tables:
                t.print()
                md.append(t.markdown())
            dt = time.monotonic() - t0
            md.append(f"_section {name} took {dt:.0f} s_")
            md.append("")
            ctx.progress(f"section {name}: done in {dt:.0f} s")
            _write(a.out, md)  # partial results survive an interruption
    finally:
        left = our_leftovers(before, ctx)
        ctx.close()
    total = time.monotonic() - ctx.t0
    load = os.getloadavg()
    md.append(f"Total time {total / 60:.1f} min; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. "
              + (f"**/dev/shm objects left by this suite: {', '.join(left)}**" if left
                 else "/dev/shm: no object of this suite left behind (checked before/after)."))
    md.append("")
    _write(a.out, md)
    ctx.progress(f"results written to {a.out}; total {total / 60:.1f} min"
                 + (f"; LEFT IN /dev/shm: {left}" if left else "; /dev/shm clean"))
    return 1 if failures or left else 0


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _write(path: str, lines: list[str]) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
