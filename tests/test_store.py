"""The SQLite store: ingest, history numbers, schema versions, soak bookkeeping."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from stress.store import SCHEMA_VERSION, Store, StoreError


def make_run(out: str, run_id: str, variant: str, expected: list[str], findings: list[tuple[str, float]],
             status: str, started: float, workload: str = "wl", exit_code: int | None = None,
             info: bool = False, schedule: str | None = None) -> str:
    """A run directory as the coordinator writes it, by hand (``schedule`` None: a config.json
    from before schedules, which says nothing about one)."""
    d = os.path.join(out, run_id)
    os.makedirs(d)
    cfg = {"run_id": run_id, "workload": workload, "variant": variant, "seed": 7, "duration": 1.0,
           "expected": expected, "variant_provenance": "test", "started_at": started,
           "command": f"stress run --workload {workload} --variant {variant} --seed 7"}
    if schedule is not None:
        cfg["schedule"] = schedule
        cfg["command"] += f" --schedule {schedule}" if schedule != "free" else ""
    fs = [{"outcome": o, "title": f"WARNING: {o}", "since_start_s": t, "info": info, "potential": False,
           "known": "", "signature": f"{o}@{t}", "text": f"WARNING: {o} [text]\n", "details": {"x": 1},
           "traces": {}} for o, t in findings]
    found = sorted({o for o, _ in findings}) if not info else []
    summary = {"run_id": run_id, "workload": workload, "variant": variant, "expected": expected,
               "stop_reason": "finding" if findings else "duration", "exit_code": exit_code if exit_code is not None
               else (0 if status in ("pass", "open") else 1), "elapsed_s": 1.0, "total_ops_per_s": 1000.0,
               "verdict": {"status": status, "text": f"{status} text", "found": found},
               "findings": [{k: f[k] for k in ("outcome", "title", "since_start_s", "info", "known", "signature")}
                            for f in fs]}
    for name, data in (("config.json", cfg), ("summary.json", summary)):
        with open(os.path.join(d, name), "w") as fh:
            json.dump(data, fh)
    with open(os.path.join(d, "findings.jsonl"), "w") as fh:
        for f in fs:
            fh.write(json.dumps(f) + "\n")
        fh.write('{"torn line')  # a kill mid-write: ignored
    with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
        for t in (1.0, 2.0):
            fh.write(json.dumps({"t_s": t, "total_ops": int(t * 1000), "ops": {"op": int(t * 1000)}}) + "\n")
    return d


def test_ingest_twice_leaves_one_row(tmp_path):
    d = make_run(str(tmp_path), "r1", "bad", ["deadlock"], [("deadlock", 0.5)], "pass", 100.0)
    with Store(str(tmp_path / "s.db")) as st:
        assert st.ingest_run(d) == "r1"
        assert st.ingest_run(d) == "r1"
        assert [r.id for r in st.runs()] == ["r1"]
        detail = st.run_detail("r")  # a unique prefix
        assert len(detail["findings"]) == 1 and len(detail["metrics"]) == 2
        assert detail["run"].time_to_detect_s == 0.5
        assert st.integrity_check() == "ok"


def test_soak_iteration_replaces_and_spent_goes_with_it(tmp_path):
    d1 = make_run(str(tmp_path), "r1", "bad", ["deadlock"], [], "fail", 100.0)
    d2 = make_run(str(tmp_path), "r2", "bad", ["deadlock"], [("deadlock", 0.1)], "pass", 101.0)
    with Store(str(tmp_path / "s.db")) as st:
        st.begin_soak("soak-x", {"seed": 1}, "stress soak", str(tmp_path), 60.0)
        st.ingest_run(d1, "soak-x", 0, spent_s=3.0)
        st.ingest_run(d2, "soak-x", 0, spent_s=4.5)  # the same iteration again: replaced
        st.record_iteration("soak-x", 1, workload="wl", variant="bad", seed=9, expected=["deadlock"],
                            status="skipped", text="refused", spent_s=5.0)
        assert [(r.iteration, r.id) for r in st.runs(soak_id="soak-x")] == [(0, "r2"), (1, "soak-x-i0001")]
        assert st.completed_iterations("soak-x") == {0, 1}
        assert st.soak("soak-x")["spent_s"] == 5.0
        st.claim_soak("soak-x", 123, "host", resumed=True)
        st.mark_soak("soak-x", "interrupted")
        s = st.soak("soak")
        assert (s["pid"], s["resumes"], s["status"]) == (123, 1, "interrupted")
        assert st.kind_of("soak-x-i") == ("run", "soak-x-i0001")


def test_history_numbers(tmp_path):
    out = str(tmp_path)
    for i, (found, status) in enumerate([([("deadlock", 0.1)], "pass"), ([("deadlock", 0.3)], "pass"),
                                         ([("deadlock", 0.2), ("lock-order-inversion", 0.05)], "pass"),
                                         ([], "fail")]):
        make_run(out, f"b{i}", "buggy", ["deadlock", "lock-order-inversion"], found, status, 100.0 + i)
    make_run(out, "c0", "fixed", ["clean"], [], "pass", 200.0)
    make_run(out, "c1", "fixed", ["clean"], [("deadlock", 2.0)], "fail", 201.0)
    make_run(out, "c2", "fixed", ["clean"], [("guarded", 1.0)], "pass", 202.0, info=True)
    make_run(out, "o0", "question", ["open"], [("stale-read", 1.5)], "open", 300.0)
    make_run(out, "o1", "question", ["open"], [], "open", 301.0)
    with Store(os.path.join(out, "s.db")) as st:
        for name in sorted(os.listdir(out)):
            if os.path.isdir(os.path.join(out, name)):
                st.ingest_run(os.path.join(out, name))
        h = {x.variant: x for x in st.history()}
        b = h["buggy"]
        assert (b.runs, b.passed, b.failed, b.other, b.detected) == (4, 3, 1, 0, 3)
        assert b.detection_rate == 0.75
        assert b.ttd_median_s == 0.1  # min per run: 0.1, 0.3, 0.05 -> median 0.1
        assert b.ttd_p90_s == 0.3
        assert b.outcomes == {"deadlock": 3, "lock-order-inversion": 1}
        c = h["fixed"]
        assert (c.runs, c.passed, c.failed) == (3, 2, 1)
        assert c.detection_rate is None and c.outcomes == {"deadlock": 1}
        assert c.ttd_median_s is None
        o = h["question"]
        assert o.runs == 2 and o.other == 2 and o.outcomes == {"stale-read": 1} and o.ttd_median_s == 1.5
        assert [r.id for r in st.runs(variant="buggy", since=101.5)] == ["b2", "b3"]
        assert [r.id for r in st.runs(limit=2)] == ["o0", "o1"]
        assert st.history(since=250.0)[0].variant == "question"


def test_history_is_per_workload_variant_and_schedule(tmp_path):
    """A free and a controlled detection rate answer different questions: one row each. Rows
    from before schedules (no ``schedule`` in config.json) are free, as they ran."""
    out = str(tmp_path)
    runs = [("p0", "pct", [("deadlock", 0.02)], "pass"), ("p1", "pct", [("deadlock", 0.04)], "pass"),
            ("f0", "free", [("deadlock", 3.0)], "pass"), ("f1", "free", [], "fail"), ("old", None, [], "fail"),
            ("r0", "random", [("deadlock", 0.5)], "pass")]
    for i, (rid, sched, found, status) in enumerate(runs):
        make_run(out, rid, "buggy", ["deadlock"], found, status, 100.0 + i, schedule=sched)
    make_run(out, "c0", "fixed", ["clean"], [], "pass", 200.0, schedule="pct")
    make_run(out, "c1", "fixed", ["clean"], [], "pass", 201.0, schedule="free")
    with Store(os.path.join(out, "s.db")) as st:
        for name in sorted(os.listdir(out)):
            if os.path.isdir(os.path.join(out, name)):
                st.ingest_run(os.path.join(out, name))
        st.begin_soak("soak-x", {"seed": 1}, "stress soak", out, 60.0)
        st.record_iteration("soak-x", 0, workload="wl", variant="buggy", seed=9, expected=["deadlock"],
                            status="error", text="the run left no run directory", schedule="pct")
        assert {r.id: r.schedule for r in st.runs()} == {"p0": "pct", "p1": "pct", "f0": "free", "f1": "free",
                                                         "old": "free", "r0": "random", "c0": "pct", "c1": "free",
                                                         "soak-x-i0000": "pct"}
        h = {(x.variant, x.schedule): x for x in st.history()}
        assert sorted(h) == [("buggy", "free"), ("buggy", "pct"), ("buggy", "random"), ("fixed", "free"),
                             ("fixed", "pct")]
        pct, free, rnd = h["buggy", "pct"], h["buggy", "free"], h["buggy", "random"]
        assert (pct.runs, pct.passed, pct.detected, pct.other) == (3, 2, 2, 1)  # the errored iteration counts here
        assert pct.detection_rate == 2 / 3 and (pct.ttd_median_s, pct.ttd_p90_s) == (0.02, 0.04)
        assert (free.runs, free.failed, free.detected) == (3, 2, 1) and free.detection_rate == 1 / 3
        assert free.ttd_median_s == 3.0
        assert rnd.runs == 1 and rnd.detection_rate == 1.0
        assert h["fixed", "pct"].runs == h["fixed", "free"].runs == 1
        assert [x.schedule for x in st.history(soak_id="soak-x")] == ["pct"]


def test_a_newer_schema_is_refused(tmp_path):
    p = str(tmp_path / "new.db")
    db = sqlite3.connect(p)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}; this stress knows up to"):
        Store(p)


def test_an_empty_file_is_migrated(tmp_path):
    p = tmp_path / "empty.db"
    p.write_bytes(b"")
    with Store(str(p)) as st:
        assert st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"soaks", "runs", "metrics", "findings"} <= tables
        assert st.integrity_check() == "ok"
    with Store(str(p)) as st:  # opening again migrates nothing
        assert st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_prerelease_v1_file_gains_the_soak_columns(tmp_path):
    p = str(tmp_path / "old.db")
    db = sqlite3.connect(p)
    db.executescript("CREATE TABLE soaks (id TEXT PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, "
                     "status TEXT NOT NULL, duration_s REAL, plan_json TEXT NOT NULL DEFAULT '{}', "
                     "command TEXT NOT NULL DEFAULT '', out_dir TEXT NOT NULL DEFAULT '');"
                     "CREATE TABLE runs (id TEXT PRIMARY KEY);"
                     "INSERT INTO soaks (id, started_at, status) VALUES ('s', 1, 'running');"
                     "PRAGMA user_version = 1;")
    db.close()
    with Store(p) as st:
        s = st.soak("s")
        assert s["spent_s"] == 0 and s["resumes"] == 0 and s["pid"] is None


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path):
    p = tmp_path / "junk.db"
    p.write_text("this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(StoreError, match="is not a usable stress store"):
        Store(str(p))


def test_unknown_and_ambiguous_ids(tmp_path):
    out = str(tmp_path)
    make_run(out, "run-aa", "v", ["clean"], [], "pass", 1.0)
    make_run(out, "run-ab", "v", ["clean"], [], "pass", 2.0)
    with Store(os.path.join(out, "s.db")) as st:
        st.ingest_run(os.path.join(out, "run-aa"))
        st.ingest_run(os.path.join(out, "run-ab"))
        with pytest.raises(StoreError, match="no run or soak 'zz'"):
            st.kind_of("zz")
        with pytest.raises(StoreError, match="names 2 runs"):
            st.kind_of("run-a")
        assert st.kind_of("run-ab") == ("run", "run-ab")


def test_a_v2_store_gains_the_campaign_columns_and_its_rows_read_as_a_soaks(tmp_path):
    from stress.store import _MIGRATIONS
    out = str(tmp_path)
    p = os.path.join(out, "v2.db")
    db = sqlite3.connect(p)
    for v in (0, 1):
        db.executescript(_MIGRATIONS[v])
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO soaks (id, started_at, status) VALUES ('s', 1, 'done')")
    db.execute("INSERT INTO runs (id, soak_id, iteration, started_at, workload, variant, expected, status,"
               " config_json, summary_json) VALUES ('r', 's', 0, 1, 'w', 'v', '[\"clean\"]', 'pass', '{}', '{}')")
    db.commit()
    db.close()
    with Store(p) as st:
        assert st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        r = st.run("r")
        assert (r.host, r.attempts, r.tried_on, r.retried) == ("", 1, [], False)
        assert st.soak("s")["kind"] == "soak" and st.integrity_check() == "ok"
