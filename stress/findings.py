"""Findings: what a detector saw, with its evidence, as plain data.

A finding is written as one JSON file by whoever detects it (a worker's lockdep slow path,
an inline assertion, the coordinator's watchdog or invariant check) and collected by the
coordinator into ``findings.jsonl``. Its text, in lockdep's and KASAN's shape, is rendered
from the data (:mod:`stress.splat`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

#: Findings that say something *may* go wrong (lockdep's WARNINGs: ``potential``) leave
#: the run going, as a kernel goes on after a lockdep splat, so the real deadlock can
#: follow. Every other finding means the model is wedged or corrupt and ends the run (or
#: the soak iteration).


@dataclass
class Finding:
    outcome: str  # "deadlock", "lock-order-inversion", "invariant:<name>", ...
    title: str  # lockdep's words: "WARNING: possible circular locking dependency detected"
    worker: int  # who detected it (-1: the coordinator)
    details: dict[str, Any]
    t_ns: int = 0  # CLOCK_MONOTONIC when found
    since_start_s: float = 0.0  # filled in by the coordinator
    signature: str = ""  # identical findings (e.g. one cycle seen by two workers) share it
    info: bool = False  # informational (a guarded cycle): reported, does not decide a verdict
    potential: bool = False  # a possible deadlock (lockdep's WARNINGs): the run goes on
    known: str = ""  # the variant declares this outcome known (the reason): it does not decide
    traces: dict[str, list[dict]] = field(default_factory=dict)  # worker -> last events
    text: str = ""  # rendered report

    @property
    def ends_run(self) -> bool:
        return not self.info and not self.potential and not self.known

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def write_finding(directory: str, name: str, f: Finding) -> str:
    """Atomically write one finding file (tmp + rename): a reader never sees half."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(f.as_dict(), fh, default=str)
    os.replace(tmp, path)
    return path


def now_ns() -> int:
    return time.monotonic_ns()
