"""Shared helpers: run the real CLI in a subprocess and check that nothing leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class CliRun:
    code: int
    out: str
    err: str
    summary: dict

    @property
    def outcomes(self) -> set[str]:
        return {f["outcome"] for f in self.summary.get("findings", []) if not f["info"]}

    @property
    def titles(self) -> list[str]:
        return [f["title"] for f in self.summary.get("findings", [])]


def stress_objects() -> set[str]:
    try:
        return {e for e in os.listdir("/dev/shm") if e.startswith(("stress-", "sem.stress-"))}
    except FileNotFoundError:
        return set()


def run_cli(args: list[str], out_dir: str, timeout: float = 90) -> CliRun:
    before = stress_objects()
    with subprocess.Popen([sys.executable, "-m", "stress", *args, "--out", out_dir, "--quiet"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    p = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    summary = {}
    for line in p.stdout.splitlines():
        if line.startswith("run directory: "):
            path = line.split(": ", 1)[1].strip()
            with open(os.path.join(path, "summary.json")) as fh:
                summary = json.load(fh)
    # run ids embed the coordinator's pid: other runs on the machine are not this one's leaks
    leaked = {o for o in stress_objects() - before if f"-{proc.pid}-" in o}
    assert not leaked, f"IPC objects left in /dev/shm: {sorted(leaked)}"
    return CliRun(p.returncode, p.stdout, p.stderr, summary)


@pytest.fixture
def runs_dir(tmp_path):
    return str(tmp_path / "runs")
