"""``stress soak`` with real processes (killed with SIGKILL and resumed), ``stress runs``,
``stress show``, and ``stress run`` recording into the store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, stress_objects

WRONG = '''
from stress.workload import Int, Role, Spinlock, Struct, Variant, Workload, op


class State(Struct):
    a = Spinlock("A")
    b = Spinlock("B")
    n = Int()


class Wrong(Workload):
    """ABBA whose inverted variant claims to be clean."""

    name = "wrong-expectation"
    state = State
    duration = 1.0
    variants = [Variant("inverted", expect="clean", provenance="a test: this claim is wrong"),
                Variant("ordered", expect="clean", provenance="a test")]

    class forward(Role):
        @op()
        def a_then_b(self, s):
            with s.a:
                with s.b:
                    s.n += 1

    class backward(Role):
        @op()
        def b_then_a(self, s):
            first, second = (s.a, s.b) if self.variant == "ordered" else (s.b, s.a)
            with first:
                with second:
                    s.n += 1
'''

BROKEN_SETUP = WRONG.replace('    name = "wrong-expectation"', '''    name = "broken-setup"

    def setup(self, s):
        raise RuntimeError("the model cannot initialise")
''')


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stress", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def leaked_by(out: str) -> set[str]:
    """/dev/shm objects of the runs in ``out`` (their ids name them; other runs on the machine are not ours)."""
    ids = [d for d in os.listdir(out) if os.path.exists(os.path.join(out, d, "config.json"))]
    return {o for o in stress_objects() if any(i in o for i in ids)}


def db_rows(db: str, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # it ended between the listing and this look
        return []


def wait_for(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(120)
def test_soak_killed_with_sigkill_then_resumed(tmp_path):
    out = str(tmp_path / "runs")
    db = os.path.join(out, "stress.db")
    p = subprocess.Popen([sys.executable, "-m", "stress", "soak", "--duration", "14s", "--workloads",
                          "lockdep-selftest", "--variants", "ABBA,nested-ok", "--iteration-duration", "1.5s",
                          "--seed", "11", "--out", out], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)

    def recorded() -> int:
        if not os.path.exists(db):
            return 0
        try:
            return db_rows(db, "SELECT COUNT(*) FROM runs")[0][0]
        except sqlite3.OperationalError:
            return 0

    wait_for(lambda: recorded() >= 2 or p.poll() is not None, 60, "two recorded iterations")
    assert p.poll() is None, p.communicate()
    # a nested-ok iteration (clean: it runs its full duration, so the kill lands in the middle)
    kids = wait_for(lambda: [k for k in psutil.Process(p.pid).children() if "nested-ok" in cmdline(k)],
                    30, "a nested-ok iteration")
    wait_for(lambda: len(kids[0].children()) >= 2, 30, "the run's workers")
    time.sleep(0.3)  # in the middle of that iteration
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    gone, alive = psutil.wait_procs(kids, timeout=30)  # PDEATHSIG: the run stops and tears down itself
    assert not alive
    (soak_id, status, spent), = db_rows(db, "SELECT id, status, spent_s FROM soaks")
    assert status == "running" and spent > 0
    before = {r[0] for r in db_rows(db, "SELECT iteration FROM runs")}
    assert len(before) >= 2
    killed = os.path.join(out, next(d for d in os.listdir(out) if f"-{kids[0].pid}-" in d))
    assert json.load(open(os.path.join(killed, "summary.json")))["stop_reason"] == "terminated"
    assert leaked_by(out) == set()

    r = cli("soak", "--resume", soak_id[:20], "--out", out, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming soak {soak_id} at iteration {len(before)}" in r.stdout
    assert "failed 0, skipped 0, incomplete 0, harness errors 0" in r.stdout
    rows = db_rows(db, "SELECT soak_id, iteration, status, run_dir FROM runs ORDER BY iteration")
    its = [it for _, it, _, _ in rows]
    assert its == list(range(len(its))) and len(its) > len(before)  # each once, contiguous from 0
    assert all(s == soak_id for s, _, _, _ in rows)
    assert {st for _, _, st, _ in rows} == {"pass"}
    assert killed not in {d for _, _, _, d in rows}  # the iteration in flight was run again, not counted
    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]
    (status, resumes, spent), = db_rows(db, "SELECT status, resumes, spent_s FROM soaks")
    assert (status, resumes) == ("done", 1) and spent >= 14 * 0.9
    variants = [v for v, in db_rows(db, "SELECT variant FROM runs ORDER BY iteration")]
    assert variants[:4] == ["ABBA", "nested-ok", "ABBA", "nested-ok"]
    assert leaked_by(out) == set()

    again = cli("soak", "--resume", soak_id, "--out", out)  # done: the summary, nothing run
    assert again.returncode == 0 and "already finished" in again.stdout
    assert db_rows(db, "SELECT COUNT(*) FROM runs")[0][0] == len(its)


@pytest.mark.timeout(90)
def test_a_failing_variant_fails_the_soak_and_keeps_going(tmp_path):
    wl = tmp_path / "wrong.py"
    wl.write_text(WRONG)
    out = str(tmp_path / "runs")
    r = cli("soak", "--duration", "4s", "--workloads", str(wl), "--iteration-duration", "1s", "--seed", "5",
            "--out", out)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = db_rows(os.path.join(out, "stress.db"), "SELECT iteration, variant, status FROM runs ORDER BY iteration")
    assert len(rows) >= 2 and rows[0][1:] == ("inverted", "fail") and rows[1][1:] == ("ordered", "pass")
    assert "passed " in r.stdout and f"failed {sum(1 for _, _, s in rows if s == 'fail')}," in r.stdout
    assert f"(same configuration and seed; timing differs): stress run --workload {wl} --variant inverted" in r.stdout
    assert f"clean variant {wl} inverted showed findings: deadlock in" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert leaked_by(out) == set()


@pytest.mark.timeout(60)
def test_a_harness_failure_exits_3(tmp_path):
    wl = tmp_path / "broken.py"
    wl.write_text(BROKEN_SETUP)
    out = str(tmp_path / "runs")
    r = cli("soak", "--duration", "1s", "--workloads", str(wl), "--variants", "ordered", "--out", out)
    assert r.returncode == 3, r.stdout + r.stderr
    statuses = [st for st, in db_rows(os.path.join(out, "stress.db"), "SELECT status FROM runs")]
    assert statuses and set(statuses) == {"error"}  # a fast failure: more than one may fit in 1 s
    assert f"harness errors {len(statuses)}" in r.stdout and "RuntimeError" in r.stdout


@pytest.mark.timeout(90)
def test_run_records_into_the_store_then_runs_and_show(tmp_path):
    out = str(tmp_path / "runs")
    r = cli("run", "--workload", "lockdep-selftest", "--variant", "ABBA", "--duration", "2s", "--seed", "4",
            "--quiet", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    (run_id, status, ttd), = db_rows(os.path.join(out, "stress.db"), "SELECT id, status, time_to_detect_s FROM runs")
    assert status == "pass" and ttd is not None

    lst = cli("runs", "--out", out)
    assert lst.returncode == 0, lst.stderr
    line = next(ln for ln in lst.stdout.splitlines() if ln.startswith(run_id))
    assert "lockdep-selftest" in line and "ABBA" in line and " pass " in line and " 4 " in line
    assert "100%" in lst.stdout  # detection rate in the history table
    assert cli("runs", "--out", out, "--workload", "nope").stdout.startswith("no recorded run matches")
    assert run_id in cli("runs", "--out", out, "--since", "1h", "--variant", "ABBA", "--limit", "1").stdout

    show = cli("show", run_id[:17], "--out", out)
    assert show.returncode == 0, show.stderr
    assert "verdict: DEADLOCK and lock-order inversion found — as expected for ABBA" in show.stdout
    assert "timing differs): stress run --workload lockdep-selftest --variant ABBA --duration 2s --seed 4" in show.stdout
    assert "WARNING: possible circular locking dependency detected" in show.stdout
    assert "configuration: duration 2.0" in show.stdout

    # a finding's text prints as is: no markup, no HTML interpretation
    con = sqlite3.connect(os.path.join(out, "stress.db"))
    con.execute("UPDATE findings SET text = ? WHERE run_id = ? AND seq = 0",
                ("[bold red]not markup[/bold red] <script>alert(1)</script> [/]\n", run_id))
    con.commit()
    con.close()
    show = cli("show", run_id, "--out", out)
    assert show.returncode == 0, show.stderr
    assert "[bold red]not markup[/bold red] <script>alert(1)</script> [/]" in show.stdout


def test_a_store_error_does_not_change_the_run_exit_status(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "stress.db").write_text("not sqlite at all\n" * 200)
    r = cli("run", "--workload", "lockdep-selftest", "--variant", "nested-ok", "--duration", "1s", "--quiet",
            "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    warn = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warn) == 1 and warn[0].startswith("stress: warning: the run was not recorded in the store")


@pytest.mark.parametrize("args,needle", [
    (["show", "nosuchid"], "no run or soak 'nosuchid'"),
    (["runs", "--since", "yesterday"], "--since takes an age like 2d"),
    (["soak", "--resume", "soak-nope"], "no soak 'soak-nope'"),
    (["soak", "--duration", "1m", "--workloads", "no-such-workload"], "unknown workload 'no-such-workload'"),
    (["soak", "--duration", "1m", "--workloads", "lockdep-selftest", "--variants", "XYZ"],
     "--variants names 'XYZ'"),
    (["soak", "--duration", "soon"], "--duration takes a duration"),
    (["soak", "--workloads", "lockdep-selftest"], "needs --duration"),
    (["soak", "--duration", "1m", "--vcpus", "0"], "--vcpus must be at least 2"),
    (["soak", "--duration", "1m", "--bogus", "1"], "no such option --bogus"),
    (["soak", "--resume", "x", "--duration", "1m"], "drop --duration"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    out = tmp_path / "runs"
    out.mkdir()
    seed = cli("run", "--workload", "lockdep-selftest", "--variant", "AA", "--duration", "1s", "--quiet",
               "--out", str(out)) if args[0] in ("show", "runs") or "--resume" in args else None
    assert seed is None or seed.returncode == 0, seed.stdout + seed.stderr
    one_line_error(cli(*args, "--out", str(out)), needle)


@pytest.mark.parametrize("cmd", [["show", "x"], ["runs"], ["soak", "--resume", "x"]])
def test_a_store_that_is_not_sqlite_or_missing_is_one_line(tmp_path, cmd):
    junk = tmp_path / "junk.db"
    junk.write_text("<html>not a database</html>\n" * 100)
    one_line_error(cli(*cmd, "--db", str(junk)), "is not a usable stress store")
    one_line_error(cli(*cmd, "--db", str(tmp_path / "none.db")), "no store at")
