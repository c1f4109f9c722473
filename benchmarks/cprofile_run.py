"""``python -m benchmarks.cprofile_run --prof-dir DIR [--wids 0,1] -- run --workload ...``

Runs the ``stress`` command line in this process with the op loop of the chosen workers
wrapped in cProfile. Workers are forked from the coordinator (stress/coordinator.py starts
``worker_main``, which calls ``stress.worker._loop``): replacing ``stress.worker._loop``
here, before the coordinator forks, puts the profiler in each chosen worker around its whole
op loop (interrupt handlers included: they run on the worker's main thread). Each profiled
worker writes ``DIR/w<wid>.pstats`` when its loop ends. Nothing in stress/ is edited.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cprofile_run")
    ap.add_argument("--prof-dir", required=True)
    ap.add_argument("--wids", default="0", help="worker ids to profile, comma-separated")
    ap.add_argument("stress_args", nargs=argparse.REMAINDER, help="-- then the stress command line")
    a = ap.parse_args()
    args = a.stress_args[1:] if a.stress_args[:1] == ["--"] else a.stress_args
    wids = {int(x) for x in a.wids.split(",") if x}
    os.makedirs(a.prof_dir, exist_ok=True)

    import stress.worker as worker

    original = worker._loop

    def profiled_loop(world, wid, cpu, role, state):  # type: ignore[no-untyped-def]
        if wid not in wids:
            return original(world, wid, cpu, role, state)
        prof = cProfile.Profile()
        prof.enable()
        try:
            return original(world, wid, cpu, role, state)
        finally:
            prof.disable()
            prof.dump_stats(os.path.join(a.prof_dir, f"w{wid}.pstats"))

    worker._loop = profiled_loop

    from stress.cli import main as stress_main

    sys.argv = ["stress"] + args
    stress_main()


if __name__ == "__main__":
    main()
