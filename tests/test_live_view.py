"""The live view shows what workers are doing: it is sampled before a stop-the-world
invariant check, never inside or right after one (issue 19: 8 of 10 frames showed every
worker 'parked')."""

from __future__ import annotations

import os

import pytest

from stress.console import Console
from stress.loader import find
from stress.workload import role_counts
from stress.world import RunConfig
from shm_model.arena import new_run_id


class Recording(Console):
    def __init__(self) -> None:
        super().__init__(live=False, quiet=True)
        self.frames: list[list[str]] = []

    def update(self, snap, elapsed, duration, n_findings, extra=""):
        self.frames.append([r.state for r in snap.workers])


@pytest.mark.timeout(60)
def test_frames_show_workers_at_work_not_parked(tmp_path):
    from types import SimpleNamespace
    from stress.coordinator import Run
    found = find("migration-storm")  # checks invariants every 20 ms: the worst case for sampling
    opts = {k: o.default for k, o in found.cls.options.items()}
    counts = role_counts(found.cls, SimpleNamespace(**opts), None)
    cfg = RunConfig(workload="migration-storm", variant="upstream", seed=3, duration=3.0,
                    counts=counts.per_role, options=opts, out=str(tmp_path), noise=0.2,
                    run_id=new_run_id())
    con = Recording()
    result = Run(found, cfg, counts, con).execute()
    assert result.summary["invariant_checks"] > 20, "the world was stopped often"
    assert len(con.frames) >= 8
    parked = [f for f in con.frames if "parked" in f]
    assert parked == [], f"{len(parked)} of {len(con.frames)} frames sampled inside a check"
    running = sum(f.count("running") for f in con.frames)
    assert running >= len(con.frames) * len(con.frames[0]) // 2, con.frames
    assert os.path.exists(os.path.join(result.run_dir, "summary.json"))


def _snap(t: float, ops: int) -> "object":
    from stress.metrics import Snapshot, WorkerRow
    w = WorkerRow(0, "vcpu", 4242, "running", "vcpu_run", ops, 3, 0, ["vcpus[0].lock"], "")
    return Snapshot(t, {"vcpu_run": ops, "migrate": ops // 10}, [w], [], 0, 0, ops, 0, 3)


def test_progress_lines_and_the_live_view_render():
    """Without a terminal a run prints a plain progress line every few seconds; on one, a live
    view. Both format rates and durations (a refactoring once removed the formatters: every
    run longer than 5 s without --quiet ended as a harness error)."""
    import io
    buf = io.StringIO()
    con = Console(live=False, quiet=False, file=buf)
    con.update(_snap(0.0, 0), 0.0, 10.0, 0)
    con._last_plain = 0.0  # as if the last line was long ago
    con._prev_t -= 1.0  # one second since the previous sample
    con.update(_snap(1.0, 45_000), 1.0, 10.0, 1)
    line = buf.getvalue()
    assert "[1.0s/10.0s] 49500 ops" in line and "vcpu_run 45.0k/s" in line and "findings 1" in line, line
    view = con._view(_snap(1.0, 45_000), 130.0, 600.0, 0, "")
    text = io.StringIO()
    from rich.console import Console as Rich
    Rich(file=text, width=200).print(view)
    out = text.getvalue()
    assert "elapsed 2m10s" in out and "remaining 7m50s" in out and "vcpus[0].lock" in out, out
