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
