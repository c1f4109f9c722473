"""``stress replay``: re-execute a controlled run's recorded schedule, check that it shows the
same thing, shrink it, and tell the interleaving as a short per-worker story.

Replay: the recorded run's configuration (config.json) and its choices (schedule.bin, or
the store's copy) are run again; the scheduler follows the recording step by step
(:mod:`stress.schedule`), so a deterministic workload reproduces the same findings, with
the same sites, and the same model counters at the same step. A recorded choice that
cannot run is a divergence: said in one line, and the run goes on under the recorded
policy (Shuttle's replay-then-continue).

Shrinking (Hypothesis-style, over the recorded choices): candidate schedules with fewer
hand-overs and fewer steps are tried, each a real run whose scheduler follows the candidate
leniently (a choice that cannot run is skipped: the running thread goes on) and then keeps
running the current thread; a candidate is kept when its run shows the same finding (same
outcome and signature). Passes: delete chunks of entries (halves, quarters, ...), delete one
entry at a time (a hand-over fewer), halve long runs. Bounded by attempts and time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from . import schedule as sch
from .loader import Found, find
from .workload import WorkloadError, role_counts
from .world import RunConfig


class ReplayError(Exception):
    """The run cannot be replayed (one line for the user)."""


@dataclass
class Recorded:
    run_id: str
    run_dir: str
    config: dict
    summary: dict
    script: list[int]
    findings: list[dict] = field(default_factory=list)

    @property
    def target(self) -> dict | None:
        """The finding a shrink must keep: the first decisive one, else the first one."""
        fs = [f for f in self.findings if not f.get("info")]
        decisive = [f for f in fs if not f.get("known") and not f.get("potential")]
        return (decisive or fs or [None])[0]


def _read_json(path: str) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _read_jsonl(path: str) -> list[dict]:
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def load_recorded(ident: str, out: str, db_path: str | None) -> Recorded:
    """A recorded controlled run, by id (or unique prefix) from the store, else ``<out>/<id>``."""
    run_dir = ""
    blob: bytes | None = None
    if db_path and os.path.exists(db_path):
        import sqlite3
        from .store import Store, StoreError
        try:
            with Store(db_path) as store:
                kind, full = store.kind_of(ident)
                if kind == "soak":
                    raise ReplayError(f"{full} is a soak; replay one of its controlled iterations "
                                      f"(stress runs --soak {full} lists them)")
                run_dir = store.run(full).run_dir
                blob = store.schedule(full)
                ident = full
        except StoreError as e:
            if "give more of the id" in str(e):
                raise ReplayError(str(e)) from None
        except sqlite3.Error:
            pass  # an unusable store: the run directory may still be there
    if not run_dir or not os.path.isdir(run_dir):
        run_dir = ident if os.path.isdir(ident) else os.path.join(out, ident)
    if not os.path.isdir(run_dir):
        raise ReplayError(f"no run {ident!r} in the store or in {out}/ (give --out or --db)")
    try:
        config = _read_json(os.path.join(run_dir, "config.json"))
    except (OSError, ValueError) as e:
        raise ReplayError(f"{run_dir}: no readable config.json ({e})") from None
    try:
        summary = _read_json(os.path.join(run_dir, "summary.json"))
    except (OSError, ValueError):
        summary = {}
    if config.get("schedule", "free") == "free":
        raise ReplayError(f"run {config.get('run_id', ident)} ran under the free schedule: the OS chose its "
                          "interleaving and nothing recorded it (run with --schedule pct or random to replay)")
    try:
        script = sch.load(run_dir) if blob is None else sch.decode(blob)
    except (OSError, ValueError) as e:
        raise ReplayError(f"{run_dir}: its schedule cannot be read ({e})") from None
    return Recorded(str(config.get("run_id") or os.path.basename(run_dir)), run_dir, config, summary, script,
                    _read_jsonl(os.path.join(run_dir, "findings.jsonl")))


def configure(rec: Recorded, out: str, mode: str, script: list[int], slack: bool) -> tuple[Found, RunConfig, Any]:
    """The recorded run's configuration for a replay (``mode`` "replay") or a shrink
    candidate ("shrink"), with a step budget: the recorded run's steps, or the script's plus
    some slack when the run ended at a finding (the finding ends it sooner if it recurs)."""
    c = rec.config
    try:
        found = find(c["workload"])
    except WorkloadError as e:
        raise ReplayError(f"cannot load workload {c.get('workload')!r}: {e}") from None
    fields = {k: c[k] for k in RunConfig.__dataclass_fields__ if k in c}
    cfg = RunConfig(**fields)
    boots = rec.summary.get("boots") or []
    if boots:  # the recorded schedule is the last boot's: a run of that boot's seed starts there
        cfg.seed = int(boots[-1]["seed"])
    steps = sch.rle_steps(script)
    sc = rec.summary.get("schedule") or {}
    cfg.steps = steps + (200 + steps // 20 if slack else 0)
    if not slack and sc.get("steps"):
        cfg.steps = int(sc["steps"])
    elapsed = float(rec.summary.get("elapsed_s") or cfg.duration)
    cfg.duration = max(cfg.duration, 3 * elapsed + 30)  # the step budget ends it, not the clock
    cfg.out = out
    cfg.replay_of = rec.run_id
    cfg.script_mode = mode
    from shm_model.arena import new_run_id
    cfg.run_id = new_run_id()
    counts = role_counts(found.cls, SimpleNamespace(**cfg.options), None)
    counts.per_role = dict(cfg.counts)
    return found, cfg, counts


_SITE = re.compile(r"\S+\(\) \S+:\d+")


def _sites(findings: list[dict]) -> list[str]:
    out: set[str] = set()
    for f in findings:
        out.update(_SITE.findall(f.get("text") or ""))
    return sorted(out)


def _keys(findings: list[dict]) -> list[tuple[str, str]]:
    return sorted((f.get("outcome", ""), f.get("signature", "")) for f in findings if not f.get("info"))


@dataclass
class Comparison:
    reproduced: bool
    lines: list[str]


def compare(rec: Recorded, summary: dict, findings: list[dict]) -> Comparison:
    """Same findings (outcome and signature), same sites, same model counters, same steps."""
    lines = []
    ok = True
    last = len(rec.summary.get("boots") or [])  # the replay runs the recorded run's last boot only
    recorded = [f for f in rec.findings if (f.get("details") or {}).get("boot", 0) == last]
    a, b = _keys(recorded), _keys(findings)
    if a == b:
        lines.append(f"same findings ({', '.join(o for o, _ in a) or 'none'})")
    else:
        ok = False
        lines.append(f"findings differ: recorded {', '.join(o for o, _ in a) or 'none'}; "
                     f"replayed {', '.join(o for o, _ in b) or 'none'}")
    sa, sb = _sites(recorded), _sites(findings)
    if sa == sb:
        lines.append(f"same sites ({len(sa)})")
    else:
        ok = False
        only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        lines.append("sites differ: " + "; ".join(x for x in (
            f"recorded only: {', '.join(only_a[:3])}" if only_a else "",
            f"replayed only: {', '.join(only_b[:3])}" if only_b else "") if x))
    ma, mb = rec.summary.get("model_last_boot" if last else "model") or {}, summary.get("model") or {}
    if ma == mb:
        lines.append(f"same model counters ({', '.join(f'{k} {v}' for k, v in ma.items()) or 'none'})")
    else:
        ok = False
        diff = [f"{k}: {ma.get(k)} -> {mb.get(k)}" for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
        lines.append("model counters differ: " + ", ".join(diff))
    div = (summary.get("schedule") or {}).get("diverged_step")
    if div:
        ok = False
        lines.append(f"diverged at step {div} (the recording chose {(summary.get('schedule') or {}).get('diverged_want')}, "
                     "which could not run): the workload is not deterministic under its seed")
    st_a = (rec.summary.get("schedule") or {}).get("steps")
    st_b = (summary.get("schedule") or {}).get("steps")
    if st_a == st_b:
        lines.append(f"same step count ({st_a})")
    else:
        ok = False
        lines.append(f"step count differs: recorded {st_a}, replayed {st_b}")
    return Comparison(ok, lines)


# ---- shrinking ----------------------------------------------------------------------------------

def handovers(script: list[int]) -> int:
    return max(0, len(script) - 1)


def normalize(script: list[int]) -> list[int]:
    """Merge neighbouring entries of one choice (a deletion can make two meet)."""
    out: list[int] = []
    for e in script:
        if e >> 8 <= 0:
            continue
        if out and out[-1] & 0xFF == e & 0xFF:
            out[-1] += e & ~0xFF
        else:
            out.append(e)
    return out


def candidates(script: list[int]) -> Any:
    """Smaller schedules, most promising first: chunk deletions (ddmin), then single-entry
    deletions from the end backwards (near the finding: fewer hand-overs), then halved runs.
    The last entry (where the finding happened) is kept."""
    n = len(script)
    if n <= 1:
        return
    chunks = 2
    while chunks <= n - 1:
        size = max(1, (n - 1) // chunks)
        for i in range(0, n - 1, size):
            yield normalize(script[:i] + script[min(i + size, n - 1):])  # never into the last entry
        if size == 1:
            break
        chunks *= 2
    for i in range(n - 2, -1, -1):
        yield normalize(script[:i] + script[i + 1:])
    order = sorted(range(n), key=lambda i: -(script[i] >> 8))
    for i in order:
        cnt = script[i] >> 8
        if cnt > 1:
            yield normalize(script[:i] + [(script[i] & 0xFF) | (cnt // 2) << 8] + script[i + 1:])


@dataclass
class ShrinkResult:
    script: list[int]
    attempts: int
    kept: int
    seconds: float
    reason: str  # why it stopped: "no smaller schedule shows it", "attempt budget", "time budget"


def shrink(script: list[int], shows_it: Callable[[list[int]], bool], attempts: int, seconds: float,
           progress: Callable[[str], None] | None = None) -> ShrinkResult:
    """Greedy: take the first candidate that still shows the finding, start over from it."""
    t0 = time.monotonic()
    best = normalize(script)
    tried = kept = 0
    seen: set[tuple[int, ...]] = {tuple(best)}
    while True:
        improved = False
        for cand in candidates(best):
            key = tuple(cand)
            if key in seen or not cand:
                continue
            if tried >= attempts:
                return ShrinkResult(best, tried, kept, time.monotonic() - t0, "attempt budget spent")
            if time.monotonic() - t0 >= seconds:
                return ShrinkResult(best, tried, kept, time.monotonic() - t0, "time budget spent")
            seen.add(key)
            tried += 1
            if shows_it(cand):
                kept += 1
                best = cand
                improved = True
                if progress:
                    progress(f"shrink: attempt {tried}: kept {handovers(best)} hand-overs, "
                             f"{sch.rle_steps(best)} steps")
                break
        if not improved:
            return ShrinkResult(best, tried, kept, time.monotonic() - t0, "no smaller candidate shows it")


class Attempts:
    """Runs shrink candidates quietly in a scratch directory (removed afterwards)."""

    def __init__(self, rec: Recorded, target: dict) -> None:
        self.rec = rec
        self.target = (target.get("outcome"), target.get("signature"))
        self.dir = tempfile.mkdtemp(prefix="stress-shrink-")

    def __call__(self, script: list[int]) -> bool:
        from .console import Console
        from .coordinator import Run
        found, cfg, counts = configure(self.rec, self.dir, "shrink", script, slack=True)
        with open(os.devnull, "w") as null:
            result = Run(found, cfg, counts, Console(quiet=True, file=null), script=script).execute()
        shows = any((f.outcome, f.signature) == self.target for f in result.findings)
        shutil.rmtree(result.run_dir, ignore_errors=True)
        return shows

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the story ------------------------------------------------------------------------------------

STORY_KINDS = ("op", "acquire", "contend", "acquired", "release", "trylock-fail", "irq-enter", "irq-exit", "event",
               "alloc", "free")


_PATH = re.compile(r"(?<![^\s(])[^\s:()]*/([^/\s:()]+\.py:\d+)")  # a whole path token, absolute or relative


def story(run_dir: str, limit: int = 40) -> list[str]:
    """The interleaving that led to the run's first decisive finding, as a per-worker story:
    one line a step that matters, in order, each in its worker's column, ``→`` where the run
    token passed to another worker. A finding about one subject (an IRQ) tells that
    subject's history from every worker's whole trace (the finding carries it); any other,
    the operations, lock events, interrupts and model events of every worker before it."""
    try:
        data = _read_json(os.path.join(run_dir, "interleaving.json"))
    except (OSError, ValueError):
        return []
    workers = data.get("workers", {})
    decisive = [f for f in _read_jsonl(os.path.join(run_dir, "findings.jsonl"))
                if not f.get("info") and not f.get("known")]
    subject = (decisive[0].get("details") or {}).get("subject_events") if decisive else None
    if subject:
        events = [e for e in subject if e.get("kind") in STORY_KINDS]
    else:
        events = [e for e in data.get("events", []) if e.get("kind") in STORY_KINDS]
        end = data.get("end_t_ns")
        if end:
            events = [e for e in events if e["t_ns"] <= end]
    events = events[-limit:]
    if not events:
        return []
    cols = sorted({int(e["worker"]) for e in events})
    col = {w: i for i, w in enumerate(cols)}
    width = 44
    head = "".join(f"{workers.get(str(w), f'worker {w}')[:width - 2]:<{width}}" for w in cols)
    lines = [f"{'':>4}  {head}".rstrip()]
    prev = None
    for i, e in enumerate(events, 1):
        w = int(e["worker"])
        text = (e["kind"] + " " if e["kind"] not in ("event", "op") else ("op " if e["kind"] == "op" else "")) + e["text"]
        text = _PATH.sub(r"\1", text)  # sites by file name: the columns stay readable
        if e.get("ctx") == "irq":
            text = "[irq] " + text
        mark = "→" if prev is not None and prev != w else " "
        lines.append(f"{i:>4}{mark} " + " " * (width * col[w]) + text)
        prev = w
    return lines
