"""The SQLite store: every run and soak iteration, with its findings and metrics.

One embedded database (default ``./stress-runs/stress.db``), WAL mode, one transaction per
run: a run directory is *ingested* whole after the run ends (:meth:`Store.ingest_run`), so
a killed soak loses at most the iteration in flight, and ingesting the same directory twice
leaves one row. The run directory stays the primary record; the store indexes it for
history (``stress runs``), ``stress show`` and ``stress report``.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`; :func:`_migrate` upgrades older
files on open, a newer file is refused with one line):

    soaks     id, started_at, ended_at, status (running|done|interrupted|failed),
              duration_s, plan_json, command, out_dir,
              spent_s (seconds of the soak's duration used by its completed iterations,
              summed over resumes; updated in the transaction that records each
              iteration), resumes (how many times ``--resume`` took it up again),
              pid, host (the soak process that last ran it: a resume refuses a live one)
    runs      id, soak_id, iteration, started_at, workload, variant, seed, expected (JSON),
              provenance, status (pass|fail|open|incomplete|interrupted|error), verdict_text,
              exit_code, stop_reason, elapsed_s, total_ops_per_s, time_to_detect_s, command,
              run_dir, config_json, summary_json, schedule (free|pct|random, v2)
                                                            UNIQUE (soak_id, iteration)
    metrics   run_id, t_s, total_ops, ops_json, classes_json      (one row a second)
    findings  run_id, seq, outcome, title, since_start_s, info, potential, known,
              signature, text, details_json, traces_json
    schedules run_id, policy, steps, entries, choices (v2: a controlled run's recorded
              choices, run-length encoded int64 words, zlib-compressed: stress.schedule)

Times are Unix seconds (REAL). ``time_to_detect_s`` is the time of the first decisive
finding whose outcome the variant expects (NULL when none was found). A soak iteration
that left no run directory (its child refused the configuration, or died before writing
one) is recorded by :meth:`Store.record_iteration` as a ``runs`` row of its own, with
status ``skipped`` or ``error``, id ``<soak-id>-i<iteration>`` and an empty
``run_dir``, so a soak's iterations are always contiguous from 0.

Campaigns (v3, :mod:`stress.campaign`) are soaks whose iterations ran on the hosts of a Ray
cluster: ``soaks.kind`` is ``campaign`` (``soak`` for every other), and each of their
``runs`` rows says where it ran: ``host`` (the host's label; empty for a soak's iterations,
which ran on ``soaks.host``), ``attempts`` (1; more when the iteration was retried because
its host died under it) and ``tried_on`` (JSON list of the hosts of the earlier attempts).

Schema history: v1 (unreleased) gained ``soaks.spent_s``, ``resumes``, ``pid`` and
``host`` before its release; a pre-release v1 file without them gets them on open. v2
added ``runs.schedule`` (every older run was free) and the ``schedules`` table. v3 added
``soaks.kind``, ``runs.host``, ``runs.attempts`` and ``runs.tried_on``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

SCHEMA_VERSION = 3
DEFAULT_DB = "stress.db"

_SCHEMA_V1 = """
CREATE TABLE soaks (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    duration_s REAL,
    plan_json TEXT NOT NULL DEFAULT '{}',
    command TEXT NOT NULL DEFAULT '',
    out_dir TEXT NOT NULL DEFAULT '',
    spent_s REAL NOT NULL DEFAULT 0,
    resumes INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT NOT NULL DEFAULT ''
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    soak_id TEXT REFERENCES soaks(id),
    iteration INTEGER,
    started_at REAL NOT NULL,
    workload TEXT NOT NULL,
    variant TEXT NOT NULL,
    seed INTEGER,
    expected TEXT NOT NULL,
    provenance TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    verdict_text TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    stop_reason TEXT NOT NULL DEFAULT '',
    elapsed_s REAL,
    total_ops_per_s REAL,
    time_to_detect_s REAL,
    command TEXT NOT NULL DEFAULT '',
    run_dir TEXT NOT NULL DEFAULT '',
    config_json TEXT NOT NULL,
    summary_json TEXT NOT NULL,
    UNIQUE (soak_id, iteration)
);
CREATE INDEX runs_by_variant ON runs (workload, variant, started_at);
CREATE INDEX runs_by_soak ON runs (soak_id, iteration);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    t_s REAL NOT NULL,
    total_ops INTEGER NOT NULL,
    ops_json TEXT NOT NULL,
    classes_json TEXT NOT NULL,
    PRIMARY KEY (run_id, t_s)
);
CREATE TABLE findings (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    title TEXT NOT NULL,
    since_start_s REAL,
    info INTEGER NOT NULL,
    potential INTEGER NOT NULL,
    known TEXT NOT NULL DEFAULT '',
    signature TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    details_json TEXT NOT NULL DEFAULT '{}',
    traces_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);
"""

_SCHEMA_V2 = """
ALTER TABLE runs ADD COLUMN schedule TEXT NOT NULL DEFAULT 'free';
CREATE TABLE schedules (
    run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    policy TEXT NOT NULL,
    steps INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    choices BLOB NOT NULL
);
"""

_SCHEMA_V3 = """
ALTER TABLE soaks ADD COLUMN kind TEXT NOT NULL DEFAULT 'soak';
ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN tried_on TEXT NOT NULL DEFAULT '[]'
"""

#: migrations[v] takes a database at user_version v to v + 1
_MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3}

#: columns added to v1 before its release: (table, column, declaration)
_V1_LATE_COLUMNS = [("soaks", "spent_s", "REAL NOT NULL DEFAULT 0"),
                    ("soaks", "resumes", "INTEGER NOT NULL DEFAULT 0"),
                    ("soaks", "pid", "INTEGER"),
                    ("soaks", "host", "TEXT NOT NULL DEFAULT ''")]


class StoreError(Exception):
    """The store cannot be used (a newer schema, a corrupt file, a missing run). One line."""


class StoreCorrupt(StoreError):
    """The store's pages are corrupt (``PRAGMA quick_check``): nothing may write into it."""


@dataclass
class RunRow:
    id: str
    soak_id: str | None
    iteration: int | None
    started_at: float
    workload: str
    variant: str
    seed: int | None
    expected: list[str]
    provenance: str
    status: str
    verdict_text: str
    exit_code: int | None
    stop_reason: str
    elapsed_s: float | None
    total_ops_per_s: float | None
    time_to_detect_s: float | None
    command: str
    run_dir: str
    schedule: str = "free"  # free, pct or random (a row from before v2: free, as it ran)
    host: str = ""  # a campaign's iteration: the host it ran on (a soak's: empty, see soaks.host)
    attempts: int = 1  # more than 1: retried after its host died under it
    tried_on: list[str] = field(default_factory=list)  # hosts of the earlier attempts

    @property
    def retried(self) -> bool:
        return self.attempts > 1

    @classmethod
    def from_sql(cls, r: sqlite3.Row) -> "RunRow":
        d = {k: r[k] for k in cls.__dataclass_fields__}
        d["expected"] = json.loads(d["expected"])
        try:
            d["tried_on"] = [str(h) for h in json.loads(d["tried_on"] or "[]")]
        except (ValueError, TypeError):
            d["tried_on"] = []
        d["attempts"] = int(d["attempts"] or 1)
        return cls(**d)


@dataclass
class VariantHistory:
    """Per workload, variant and schedule, across every recorded run: how often the expected
    finding appeared, how fast, and what clean variants showed. Split by schedule because a
    free run finds a race by the luck of timing and a controlled one by exploration: one
    rate over both would say neither."""

    workload: str
    variant: str
    expected: list[str]
    runs: int
    passed: int
    failed: int
    other: int  # open, incomplete, interrupted, error
    detected: int  # runs whose expected (non-clean) outcome appeared
    ttd_median_s: float | None
    ttd_p90_s: float | None
    last_status: str
    last_at: float
    outcomes: dict[str, int]  # decisive outcomes seen -> runs showing them
    known_outcomes: dict[str, int] = field(default_factory=dict)  # known findings' outcomes -> runs showing them
    open: int = 0  # of ``other``: runs of an open variant that ran to their end
    schedule: str = "free"  # free, pct or random: the runs this row counts

    @property
    def detection_rate(self) -> float | None:
        if self.expected in (["clean"], ["open"]) or not self.runs:
            return None
        return self.detected / self.runs


@dataclass
class HostStats:
    """Per host of a campaign: what its iterations came to. ``unhealthy``: every iteration it
    ran failed for harness reasons while another host ran iterations that did not: the
    host, not the protocol, is broken (its errors are no findings)."""

    host: str
    iterations: int = 0
    passed: int = 0  # pass and open
    failed: int = 0  # fail and incomplete: what the protocol showed
    errors: int = 0  # harness errors (error, interrupted)
    retried_here: int = 0  # iterations that ran here after their first host died under them
    lost: int = 0  # iterations in flight here when this host died (retried elsewhere)
    unhealthy: bool = False


#: statuses that say the harness, not the protocol, failed
HARNESS_STATUSES = ("error", "interrupted")


def host_stats(rows: list["RunRow"]) -> list[HostStats]:
    """Per host (first seen first) of a campaign's rows; empty for a soak (no host)."""
    out: dict[str, HostStats] = {}
    for r in rows:
        if not r.host:
            continue
        h = out.setdefault(r.host, HostStats(r.host))
        h.iterations += 1
        if r.status in ("pass", "open"):
            h.passed += 1
        elif r.status in ("fail", "incomplete"):
            h.failed += 1
        elif r.status in HARNESS_STATUSES:
            h.errors += 1
        if r.attempts > 1:
            h.retried_here += 1
        for lost_on in r.tried_on:
            out.setdefault(lost_on, HostStats(lost_on)).lost += 1
    healthy_somewhere = any(h.iterations > h.errors for h in out.values())
    for h in out.values():
        h.unhealthy = healthy_somewhere and h.iterations > 0 and h.errors == h.iterations
    return list(out.values())


def default_path(out: str) -> str:
    return os.path.join(out, DEFAULT_DB)


def run_status(summary: dict) -> str:
    """pass|fail|open|incomplete from the verdict; interrupted|error when there is none."""
    v = summary.get("verdict")
    if v:
        return str(v.get("status", "error"))
    if summary.get("stop_reason") in ("interrupted", "terminated"):
        return "interrupted"
    return "error"


def time_to_detect(summary: dict) -> float | None:
    expected = set(summary.get("expected") or ())
    times = [f["since_start_s"] for f in summary.get("findings", [])
             if not f.get("info") and not f.get("known") and (f["outcome"] in expected or expected == {"open"})]
    return min(times) if times else None


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


def _read_jsonl(path: str) -> Iterator[dict]:
    try:
        fh = open(path)
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                continue  # a line torn by a kill: the rest is still good


class Store:
    """One connection to the store. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str) -> None:
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(d, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the store {path!r}: {e}") from None
        self.db.row_factory = sqlite3.Row
        try:
            _check_pages(self.db, path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            _migrate(self.db, path)
        except sqlite3.DatabaseError as e:
            self.db.close()
            if "malformed" in str(e) or "corrupt" in str(e):
                raise StoreCorrupt(_corrupt(path, str(e))) from None
            raise StoreError(f"{path} is not a usable stress store: {e}") from None
        except StoreError:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------
    def ingest_run(self, run_dir: str, soak_id: str | None = None, iteration: int | None = None, *,
                   spent_s: float | None = None, host: str = "", attempts: int = 1,
                   tried_on: list[str] | None = None) -> str:
        """Record one finished run directory (config, summary, metrics, findings) in one
        transaction; a second ingest of the same run replaces the first. Returns the run id.
        ``spent_s`` (with ``soak_id``) sets the soak's time spent in the same transaction;
        ``host``, ``attempts`` and ``tried_on`` say where a campaign's iteration ran."""
        try:
            with open(os.path.join(run_dir, "config.json")) as fh:
                config = json.load(fh)
        except (OSError, ValueError) as e:
            raise StoreError(f"{run_dir}: no readable config.json ({e})") from None
        try:
            with open(os.path.join(run_dir, "summary.json")) as fh:
                summary = json.load(fh)
        except (OSError, ValueError):
            summary = {"run_id": config.get("run_id"), "stop_reason": "error",
                       "message": "the run left no summary.json (killed while running?)", "findings": []}
        run_id = str(config.get("run_id") or os.path.basename(run_dir.rstrip("/")))
        started = config.get("started_at") or os.path.getmtime(os.path.join(run_dir, "config.json"))
        findings = list(_read_jsonl(os.path.join(run_dir, "findings.jsonl")))
        metrics = list(_read_jsonl(os.path.join(run_dir, "metrics.jsonl")))
        v = summary.get("verdict") or {}
        db = self.db
        with _immediate(db):
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            if soak_id is not None and iteration is not None:
                db.execute("DELETE FROM runs WHERE soak_id = ? AND iteration = ?", (soak_id, iteration))
            sched = summary.get("schedule") or {}
            db.execute(
                "INSERT INTO runs (id, soak_id, iteration, started_at, workload, variant, seed, expected,"
                " provenance, status, verdict_text, exit_code, stop_reason, elapsed_s, total_ops_per_s,"
                " time_to_detect_s, command, run_dir, config_json, summary_json, schedule, host, attempts, tried_on)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, soak_id, iteration, float(started), config.get("workload", ""), config.get("variant", ""),
                 config.get("seed"), json.dumps(config.get("expected") or summary.get("expected") or []),
                 config.get("variant_provenance", summary.get("provenance", "")), run_status(summary),
                 v.get("text", summary.get("message", "")), summary.get("exit_code"),
                 summary.get("stop_reason", ""), summary.get("elapsed_s"), summary.get("total_ops_per_s"),
                 time_to_detect(summary) if summary.get("expected") else None, config.get("command", ""),
                 run_dir, json.dumps(config), json.dumps(summary), config.get("schedule") or "free", host or "",
                 max(1, int(attempts)), json.dumps(list(tried_on or []))))
            blob = _schedule_blob(run_dir)
            if blob is not None:
                db.execute("INSERT OR REPLACE INTO schedules (run_id, policy, steps, entries, choices)"
                           " VALUES (?,?,?,?,?)", (run_id, sched.get("policy", ""), int(sched.get("steps") or 0),
                                                   int(sched.get("entries") or 0), blob))
            db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, t_s, total_ops, ops_json, classes_json) VALUES (?,?,?,?,?)",
                [(run_id, m.get("t_s", 0.0), m.get("total_ops", sum((m.get("ops") or {}).values())),
                  json.dumps(m.get("ops") or {}), json.dumps(m.get("classes") or [])) for m in metrics])
            db.executemany(
                "INSERT INTO findings (run_id, seq, outcome, title, since_start_s, info, potential, known,"
                " signature, text, details_json, traces_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(run_id, i, f.get("outcome", ""), f.get("title", ""), f.get("since_start_s"),
                  int(bool(f.get("info"))), int(bool(f.get("potential"))), str(f.get("known") or ""),
                  f.get("signature", ""), f.get("text", ""), json.dumps(f.get("details") or {}, default=str),
                  json.dumps(f.get("traces") or {}, default=str)) for i, f in enumerate(findings)])
            if soak_id is not None and spent_s is not None:
                db.execute("UPDATE soaks SET spent_s = ? WHERE id = ?", (float(spent_s), soak_id))
        return run_id

    def schedule(self, run_id: str) -> bytes | None:
        """A controlled run's recorded choices (stress.schedule.decode reads them)."""
        r = self.db.execute("SELECT choices FROM schedules WHERE run_id = ?", (run_id,)).fetchone()
        return bytes(r[0]) if r else None

    def schedule_summaries(self, soak_id: str) -> list[tuple[str, str, dict]]:
        """(workload, variant, summary.json's "schedule") of a soak's controlled iterations."""
        out = []
        for w, v, sj in self.db.execute("SELECT workload, variant, summary_json FROM runs WHERE soak_id = ? AND "
                                        "schedule != 'free' ORDER BY iteration", (soak_id,)):
            try:
                sc = json.loads(sj).get("schedule") or {}
            except (ValueError, AttributeError):
                continue
            if sc.get("policy") not in (None, "free"):
                out.append((w, v, sc))
        return out

    def steps_per_op(self, workload: str, variant: str) -> float:
        """Scheduling steps per operation measured by the newest controlled runs of this
        workload (this variant's if any, else any variant's): what PCT's k is learned from."""
        for where, args in (("workload = ? AND variant = ?", (workload, variant)), ("workload = ?", (workload,))):
            rows = self.db.execute(f"SELECT summary_json FROM runs WHERE {where} AND schedule != 'free'"
                                   " ORDER BY started_at DESC LIMIT 5", args).fetchall()
            vals = []
            for (sj,) in rows:
                try:
                    v = float((json.loads(sj).get("schedule") or {}).get("steps_per_op") or 0)
                except (ValueError, TypeError, AttributeError):
                    continue
                if v > 0:
                    vals.append(v)
            if vals:
                return sorted(vals)[len(vals) // 2]
        return 0.0

    def begin_soak(self, soak_id: str, plan: dict, command: str, out_dir: str, duration_s: float,
                   kind: str = "soak") -> None:
        """A new soak (``kind`` ``campaign``: its iterations run on a cluster's hosts)."""
        self.db.execute("INSERT OR IGNORE INTO soaks (id, started_at, status, duration_s, plan_json, command, out_dir,"
                        " kind) VALUES (?,?,?,?,?,?,?,?)",
                        (soak_id, time.time(), "running", duration_s, json.dumps(plan), command, out_dir, kind))

    def record_iteration(self, soak_id: str, iteration: int, *, workload: str, variant: str, seed: int | None,
                         expected: list[str], status: str, text: str, command: str = "",
                         exit_code: int | None = None, provenance: str = "", config: dict | None = None,
                         spent_s: float | None = None, schedule: str = "free", host: str = "", attempts: int = 1,
                         tried_on: list[str] | None = None) -> str:
        """Record a soak iteration that left no run directory to ingest (``skipped``: its
        child refused the configuration; ``error``: it died before writing one), in one
        transaction with the soak's time spent. Returns the row's id. ``schedule`` is the one
        the soak asked for, so the history counts the iteration where it belongs."""
        run_id = f"{soak_id}-i{iteration:04d}"
        db = self.db
        with _immediate(db):
            db.execute("DELETE FROM runs WHERE id = ? OR (soak_id = ? AND iteration = ?)",
                       (run_id, soak_id, iteration))
            db.execute(
                "INSERT INTO runs (id, soak_id, iteration, started_at, workload, variant, seed, expected,"
                " provenance, status, verdict_text, exit_code, stop_reason, command, run_dir, config_json,"
                " summary_json, schedule, host, attempts, tried_on) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, soak_id, iteration, time.time(), workload, variant, seed, json.dumps(list(expected)),
                 provenance, status, text, exit_code, status, command, "", json.dumps(config or {}),
                 json.dumps({"run_id": run_id, "message": text, "exit_code": exit_code, "findings": []}),
                 schedule or "free", host or "", max(1, int(attempts)), json.dumps(list(tried_on or []))))
            if spent_s is not None:
                db.execute("UPDATE soaks SET spent_s = ? WHERE id = ?", (float(spent_s), soak_id))
        return run_id

    def claim_soak(self, soak_id: str, pid: int, host: str, resumed: bool = False) -> None:
        """Note the process now running a soak (and count a resume)."""
        self.db.execute("UPDATE soaks SET pid = ?, host = ?, resumes = resumes + ? WHERE id = ?",
                        (pid, host, int(resumed), soak_id))

    def end_soak(self, soak_id: str, status: str) -> None:
        self.db.execute("UPDATE soaks SET status = ?, ended_at = ? WHERE id = ?", (status, time.time(), soak_id))

    def mark_soak(self, soak_id: str, status: str) -> None:
        """Set the status of a soak without ending it (``running`` again on resume)."""
        self.db.execute("UPDATE soaks SET status = ?, ended_at = NULL WHERE id = ?", (status, soak_id))

    # -- reading -------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunRow:
        r = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if r is None:
            r = self._unique_prefix("runs", run_id)
        return RunRow.from_sql(r)

    def run_detail(self, run_id: str) -> dict:
        """Everything a report needs about one run: row, config, summary, metrics, findings."""
        row = self.run(run_id)
        r = self.db.execute("SELECT config_json, summary_json FROM runs WHERE id = ?", (row.id,)).fetchone()
        return {"run": row, "config": json.loads(r["config_json"]), "summary": json.loads(r["summary_json"]),
                "metrics": self.metrics(row.id), "findings": self.findings(row.id)}

    def metrics(self, run_id: str) -> list[dict]:
        return [{"t_s": m["t_s"], "total_ops": m["total_ops"], "ops": json.loads(m["ops_json"]),
                 "classes": json.loads(m["classes_json"])}
                for m in self.db.execute("SELECT * FROM metrics WHERE run_id = ? ORDER BY t_s", (run_id,))]

    def findings(self, run_id: str) -> list[dict]:
        return [{"seq": f["seq"], "outcome": f["outcome"], "title": f["title"], "since_start_s": f["since_start_s"],
                 "info": bool(f["info"]), "potential": bool(f["potential"]), "known": f["known"],
                 "signature": f["signature"], "text": f["text"], "details": json.loads(f["details_json"]),
                 "traces": json.loads(f["traces_json"])}
                for f in self.db.execute("SELECT * FROM findings WHERE run_id = ? ORDER BY seq", (run_id,))]

    def runs(self, workload: str | None = None, variant: str | None = None, since: float | None = None,
             soak_id: str | None = None, limit: int | None = None) -> list[RunRow]:
        """Runs, oldest first (the newest ``limit`` when given)."""
        where, args = _where(workload=workload, variant=variant, soak_id=soak_id, since=since)
        sql = "SELECT * FROM runs" + where + " ORDER BY started_at DESC, iteration DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [RunRow.from_sql(r) for r in reversed(self.db.execute(sql, args).fetchall())]

    def latest(self) -> tuple[str, str]:
        """('soak'|'run', id) of the most recent soak or run not part of a soak."""
        s = self.db.execute("SELECT id, started_at FROM soaks ORDER BY started_at DESC LIMIT 1").fetchone()
        r = self.db.execute("SELECT id, started_at FROM runs WHERE soak_id IS NULL"
                            " ORDER BY started_at DESC LIMIT 1").fetchone()
        if s is None and r is None:
            raise StoreError(f"the store {self.path} holds no run yet")
        if r is None or (s is not None and s["started_at"] >= r["started_at"]):
            return "soak", s["id"]
        return "run", r["id"]

    def kind_of(self, ident: str) -> tuple[str, str]:
        """('soak'|'run', full id) for an id or a unique prefix of one."""
        if self.db.execute("SELECT 1 FROM soaks WHERE id = ?", (ident,)).fetchone():
            return "soak", ident
        if self.db.execute("SELECT 1 FROM runs WHERE id = ?", (ident,)).fetchone():
            return "run", ident
        soaks = [r["id"] for r in self.db.execute("SELECT id FROM soaks WHERE id LIKE ?", (ident + "%",))]
        runs = [r["id"] for r in self.db.execute("SELECT id FROM runs WHERE id LIKE ?", (ident + "%",))]
        if len(soaks) + len(runs) == 1:
            return ("soak", soaks[0]) if soaks else ("run", runs[0])
        if not soaks and not runs:
            raise StoreError(f"no run or soak {ident!r} in {self.path} (see: stress runs)")
        raise StoreError(f"{ident!r} names {len(soaks) + len(runs)} runs or soaks; give more of the id")

    def soak(self, soak_id: str) -> dict:
        r = self.db.execute("SELECT * FROM soaks WHERE id = ?", (soak_id,)).fetchone()
        if r is None:
            r = self._unique_prefix("soaks", soak_id)
        d = dict(r)
        d["plan"] = json.loads(d.pop("plan_json"))
        return d

    def soaks(self) -> list[dict]:
        out = []
        for r in self.db.execute("SELECT * FROM soaks ORDER BY started_at"):
            d = dict(r)
            d["plan"] = json.loads(d.pop("plan_json"))
            out.append(d)
        return out

    def completed_iterations(self, soak_id: str) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT iteration FROM runs WHERE soak_id = ?", (soak_id,))}

    def history(self, workload: str | None = None, since: float | None = None,
                soak_id: str | None = None) -> list[VariantHistory]:
        """Detection rate, time to detect and outcomes per workload, variant and schedule."""
        groups: dict[tuple[str, str, str], list[tuple[RunRow, list[str]]]] = {}
        where, args = _where(workload=workload, soak_id=soak_id, since=since)
        sql = "SELECT * FROM runs" + where + " ORDER BY started_at"
        for r in self.db.execute(sql, args).fetchall():
            row = RunRow.from_sql(r)
            found = (json.loads(r["summary_json"]).get("verdict") or {}).get("found") or []
            groups.setdefault((row.workload, row.variant, row.schedule or "free"), []).append((row, list(found)))
        out = []
        known: dict[str, dict[str, int]] = {}  # run id -> known outcomes -> findings
        kwhere, kargs = _where(workload=workload, soak_id=soak_id, since=since)
        ksql = ("SELECT f.run_id, f.outcome FROM findings f JOIN runs ON runs.id = f.run_id"
                + kwhere + (" AND " if kwhere else " WHERE ") + "f.known != ''")
        for r in self.db.execute(ksql, kargs):
            known.setdefault(r[0], {}).setdefault(r[1], 0)
            known[r[0]][r[1]] += 1
        for (wl, var, sched), rows in sorted(groups.items()):
            expected = rows[-1][0].expected
            ttds = [r.time_to_detect_s for r, _ in rows if r.time_to_detect_s is not None]
            outcomes: dict[str, int] = {}
            for _, found in rows:
                for o in found:
                    outcomes[o] = outcomes.get(o, 0) + 1
            known_seen: dict[str, int] = {}
            for r, _ in rows:
                for o in known.get(r.id, {}):
                    known_seen[o] = known_seen.get(o, 0) + 1
            detected = sum(1 for r, found in rows if any(o in r.expected for o in found))
            out.append(VariantHistory(
                wl, var, expected, len(rows), sum(r.status == "pass" for r, _ in rows),
                sum(r.status == "fail" for r, _ in rows),
                sum(r.status not in ("pass", "fail") for r, _ in rows), detected,
                _percentile(ttds, 0.5), _percentile(ttds, 0.9), rows[-1][0].status, rows[-1][0].started_at,
                outcomes, known_seen, sum(r.status == "open" for r, _ in rows), sched))
        return out

    def run_summary(self, run_id: str) -> dict:
        """A run's summary.json as recorded (empty if the run is not in the store)."""
        r = self.db.execute("SELECT summary_json FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(r[0]) if r is not None else {}

    def found(self, run_id: str) -> list[str]:
        """The decisive outcomes a run's verdict found (its summary's ``verdict.found``)."""
        r = self.db.execute("SELECT summary_json FROM runs WHERE id = ?", (run_id,)).fetchone()
        if r is None:
            return []
        return list((json.loads(r[0]).get("verdict") or {}).get("found") or [])

    def known_findings(self, run_id: str) -> dict[str, int]:
        """Known findings of a run (reported, not counted): outcome -> how many."""
        out: dict[str, int] = {}
        for r in self.db.execute("SELECT outcome FROM findings WHERE run_id = ? AND known != ''", (run_id,)):
            out[r[0]] = out.get(r[0], 0) + 1
        return out

    def decisive_findings(self, run_id: str) -> int:
        """Findings of a run that decide a verdict (neither informational nor known)."""
        r = self.db.execute("SELECT COUNT(*) FROM findings WHERE run_id = ? AND info = 0 AND known = ''",
                            (run_id,)).fetchone()
        return int(r[0])

    def set_run_status(self, run_id: str, status: str, verdict_text: str) -> None:
        """Overrule a recorded run's status (a soak stopped a run that overran its time)."""
        self.db.execute("UPDATE runs SET status = ?, verdict_text = ? WHERE id = ?", (status, verdict_text, run_id))

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def _unique_prefix(self, table: str, ident: str) -> sqlite3.Row:
        rows = self.db.execute(f"SELECT * FROM {table} WHERE id LIKE ?", (ident + "%",)).fetchall()
        what = "run" if table == "runs" else "soak"
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise StoreError(f"no {what} {ident!r} in {self.path} (see: stress runs)")
        raise StoreError(f"{ident!r} names {len(rows)} {what}s; give more of the id")


def _schedule_blob(run_dir: str) -> bytes | None:
    try:
        with open(os.path.join(run_dir, "schedule.bin"), "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _where(since: float | None = None, **equal: str | None) -> tuple[str, list]:
    """A WHERE clause over ``runs``: columns equal to the given values, started since a time."""
    conds, args = [], []
    for col, val in equal.items():
        if val is not None:
            conds.append(f"{col} = ?")
            args.append(val)
    if since is not None:
        conds.append("started_at >= ?")
        args.append(since)
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (taken at once, so concurrent writers queue): all or nothing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _corrupt(path: str, problem: str) -> str:
    problem = " ".join(problem.split())
    return (f"the store {path} is corrupt ({problem}): move it aside (a new run starts a new store) "
            f"or recover it with: sqlite3 {path} .recover | sqlite3 {path}.recovered")


def _check_pages(db: sqlite3.Connection, path: str) -> None:
    """``PRAGMA quick_check``: refuse a store whose pages are corrupt, before anything writes to it."""
    try:
        rows = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as e:
        if "malformed" in str(e) or "corrupt" in str(e):
            raise StoreCorrupt(_corrupt(path, str(e))) from None
        raise  # not a database at all: "not a usable stress store"
    if rows != ["ok"]:
        more = f" and {len(rows) - 1} more problems" if len(rows) > 1 else ""
        raise StoreCorrupt(_corrupt(path, f"{rows[0] if rows else 'no answer from quick_check'}{more}"))


def _migrate(db: sqlite3.Connection, path: str) -> None:
    v = db.execute("PRAGMA user_version").fetchone()[0]
    if v > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {v}; this stress knows up to {SCHEMA_VERSION} (upgrade stress)")
    while v < SCHEMA_VERSION:
        with _immediate(db):
            if db.execute("PRAGMA user_version").fetchone()[0] == v:  # another process may have done it
                for stmt in _MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {v + 1}")
        v = db.execute("PRAGMA user_version").fetchone()[0]
    _add_late_columns(db)


def _add_late_columns(db: sqlite3.Connection) -> None:
    """A pre-release v1 file lacks columns v1 gained before its release: add them."""
    for table, col, decl in _V1_LATE_COLUMNS:
        if col in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            continue
        try:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):  # another process added it first
                raise
