"""The run directory: written as the run goes, so a killed run keeps what it had.

    <out>/<run-id>/config.json      configuration, seed and the repeat command (first)
    <out>/<run-id>/metrics.jsonl    one snapshot a second
    <out>/<run-id>/findings.jsonl   each finding with its evidence and rendered text
    <out>/<run-id>/findings/        raw finding files written by the workers
    <out>/<run-id>/traces/          every worker's trace ring at the end, decoded
    <out>/<run-id>/summary.json     verdict, totals, lock statistics, detector counters
    <out>/<run-id>/report.txt       what the console printed: findings and summary
"""

from __future__ import annotations

import json
import os
from typing import Any


class RunDir:
    def __init__(self, out: str, run_id: str) -> None:
        self.path = os.path.join(out, run_id)
        os.makedirs(self.path, exist_ok=False)
        self.findings_dir = os.path.join(self.path, "findings")
        os.makedirs(self.findings_dir)
        self._metrics = open(os.path.join(self.path, "metrics.jsonl"), "a")
        self._findings = open(os.path.join(self.path, "findings.jsonl"), "a")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.file(name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, self.file(name))

    def metrics(self, row: dict) -> None:
        self._metrics.write(json.dumps(row, default=str) + "\n")
        self._metrics.flush()

    def finding(self, row: dict) -> None:
        self._findings.write(json.dumps(row, default=str) + "\n")
        self._findings.flush()

    def trace(self, wid: int, label: str, events: list[dict], overrun: int) -> None:
        os.makedirs(self.file("traces"), exist_ok=True)
        with open(self.file(f"traces/worker-{wid}.txt"), "w") as fh:
            fh.write(f"# {label}: {len(events)} events" + (f", {overrun} older ones overwritten" if overrun else "") + "\n")
            t0 = events[0]["t_ns"] if events else 0
            for e in events:
                fh.write(f"{(e['t_ns'] - t0) / 1e6:12.3f} ms  {e['ctx']:<4} {e['kind']:<12} {e['text']}\n")

    def text(self, name: str, text: str) -> None:
        with open(self.file(name), "a") as fh:
            fh.write(text)

    def close(self) -> None:
        for fh in (self._metrics, self._findings):
            try:
                fh.close()
            except OSError:
                pass
