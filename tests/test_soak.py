"""``stress soak`` with real processes (killed with SIGKILL and resumed), its plan of seeds
and schedules, ``stress runs``, ``stress show``, and ``stress run`` recording into the store."""

from __future__ import annotations

import io
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
from stress.cli import REPEAT, REPEAT_EXACT, UsageError
from stress.soak import ALTERNATE, Plan, Soak, console, make_plan, print_summary, soak_command
from stress.store import Store
from test_store import make_run

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
    assert f"resuming soak {soak_id} at iteration {len(before)}" in r.stdout and "schedule mixed" in r.stdout
    assert "lockdep-selftest ABBA [pct] seed " in r.stdout  # each iteration's line shows its schedule
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
    # mixed, across the kill and the resume: ABBA expects a bug, pct every time; nested-ok is
    # clean, pct on its 1st, 3rd, ... iteration (k = 1, 5, ...) and free on the others (k = 3, 7, ...)
    sched = db_rows(db, "SELECT variant, schedule FROM runs ORDER BY iteration")
    assert sched == [(v, "pct" if v == "ABBA" or k % 4 == 1 else "free") for k, (v, _) in enumerate(sched)]
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
    rows = db_rows(os.path.join(out, "stress.db"),
                   "SELECT iteration, variant, schedule, status FROM runs ORDER BY iteration")
    # mixed: both variants claim clean, so each alternates, pct first
    assert len(rows) >= 2 and rows[0][1:] == ("inverted", "pct", "fail") and rows[1][1:] == ("ordered", "pct", "pass")
    assert all(sc == ("pct" if it % 4 < 2 else "free") for it, _, sc, _ in rows)
    assert "passed " in r.stdout and f"failed {sum(1 for *_, s in rows if s == 'fail')}," in r.stdout
    assert f"#0 {wl} inverted [pct] seed " in r.stdout
    exact = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(f"{REPEAT_EXACT}: "))
    assert f"stress run --workload {wl} --variant inverted " in exact and " --schedule pct " in exact
    assert "replay (the recorded schedule): stress replay " in r.stdout
    if any(row[1:] == ("inverted", "free", "fail") for row in rows):  # time allowed a free one too
        assert f"{REPEAT}: stress run --workload {wl} --variant inverted" in r.stdout
    assert f"clean variant {wl} inverted [pct] showed findings: deadlock in" in r.stdout
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
    (["soak", "--resume", "x", "--schedule", "pct"], "drop --schedule"),
    (["soak", "--duration", "1m", "--schedule", "sometimes"],
     "--schedule takes mixed, free, pct, random, not 'sometimes'"),
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


# -- schedules: the plan, the child's command, resume, the summary, stress runs -------------------
def planned(plan: Plan, n: int) -> dict[str, list[str]]:
    """Variant -> the schedules of its first iterations, in order."""
    out: dict[str, list[str]] = {}
    for it in map(plan.iteration, range(n)):
        out.setdefault(it.variant, []).append(it.schedule)
    return out


def small_plan(out: str = "o", schedule: str = "mixed") -> tuple[Plan, dict]:
    # ABBA and guarded-ABBA expect a finding; nested-ok and upstream are clean; old-vcpu-lock is open
    return make_plan("lockdep-selftest,migration-storm", "ABBA,nested-ok,guarded-ABBA,old-vcpu-lock,upstream", 3,
                     60.0, None, out, [], None, schedule)


def test_mixed_runs_buggy_variants_under_pct_and_alternates_clean_and_open():
    plan, _ = small_plan()
    assert plan.rules == ["pct", ALTERNATE, "pct", ALTERNATE, ALTERNATE]
    got = planned(plan, 5 * 4)
    assert got["ABBA"] == got["guarded-ABBA"] == ["pct"] * 4
    assert got["nested-ok"] == got["old-vcpu-lock"] == got["upstream"] == ["pct", "free", "pct", "free"]
    assert [it.seed for it in map(plan.iteration, range(20))] == [it.seed for it in map(small_plan()[0].iteration,
                                                                                         range(20))]


@pytest.mark.parametrize("schedule", ["free", "pct", "random"])
def test_an_explicit_schedule_runs_every_iteration_under_it(schedule):
    plan, _ = small_plan(schedule=schedule)
    assert {s for ss in planned(plan, 20).values() for s in ss} == {schedule}
    assert f"--schedule {schedule}" in soak_command(plan)  # the soak's repeat command keeps it


def test_an_unknown_schedule_is_refused():
    with pytest.raises(UsageError, match=r"--schedule takes mixed, free, pct, random, not 'often'"):
        small_plan(schedule="often")


def test_resume_rebuilds_the_same_schedules_and_an_old_plan_runs_free(tmp_path):
    plan, _ = small_plan()
    with Store(str(tmp_path / "s.db")) as st:
        st.begin_soak("soak-r", plan.as_dict(), "stress soak", "o", 60.0)
        saved = Plan.from_dict(st.soak("soak-r")["plan"])
    assert saved == plan and planned(saved, 40) == planned(plan, 40)
    old = {k: v for k, v in plan.as_dict().items() if k not in ("schedule", "rules")}  # saved before schedules
    assert {s for ss in planned(Plan.from_dict(old), 20).values() for s in ss} == {"free"}
    with pytest.raises(UsageError, match="saved plan is unreadable"):
        Plan.from_dict(dict(plan.as_dict(), rules=["pct", "sometimes"]))


def test_the_child_runs_under_its_iterations_schedule(tmp_path):
    out = str(tmp_path / "runs")
    plan, found = make_plan("lockdep-selftest", "ABBA,nested-ok", 3, 60.0, None, out, [], None)
    for db, elsewhere in ((os.path.join(out, "stress.db"), False), (str(tmp_path / "other.db"), True)):
        with Store(db) as st:
            st.begin_soak("soak-c", plan.as_dict(), "stress soak", out, 60.0)
            soak = Soak(st, "soak-c", plan, found, resumed=False, live=False)
            cmds = [soak._child_command(plan.iteration(i), 1.5) for i in range(4)]
        assert [plan.iteration(i).schedule for i in range(4)] == ["pct", "pct", "pct", "free"]
        for cmd in cmds[:3]:  # before --quiet: in the command a skipped or errored iteration is recorded with
            assert cmd[cmd.index("--schedule") + 1] == "pct" and cmd.index("--schedule") < cmd.index("--quiet")
            assert ("--db" in cmd) == elsewhere  # PCT's k is learned from the soak's own store
        assert "--schedule" not in cmds[3] and "--db" not in cmds[3]


def test_the_summary_and_stress_runs_show_schedules(tmp_path):
    out = str(tmp_path / "runs")
    d_pct = make_run(out, "run-pct", "inverted", ["clean"], [("deadlock", 0.1)], "fail", 100.0, schedule="pct")
    d_free = make_run(out, "run-free", "inverted", ["clean"], [("deadlock", 0.9)], "fail", 101.0, schedule="free")
    with Store(os.path.join(out, "stress.db")) as st:
        st.begin_soak("soak-s", {"seed": 5, "out": out}, "stress soak", out, 10.0)
        st.ingest_run(d_pct, "soak-s", 0)
        st.ingest_run(d_free, "soak-s", 1)
        st.end_soak("soak-s", "done")
        buf = io.StringIO()
        assert print_summary(st, "soak-s", console(buf)) == 1
    text = buf.getvalue()
    assert "per variant and schedule" in text
    assert "#0 wl inverted [pct] seed 7: FAIL" in text and "#1 wl inverted [free] seed 7: FAIL" in text
    assert f"{REPEAT_EXACT}: stress run --workload wl --variant inverted --seed 7 --schedule pct\n" in text
    assert f"{REPEAT}: stress run --workload wl --variant inverted --seed 7\n" in text
    assert f"replay (the recorded schedule): stress replay run-pct --out {out}\n" in text
    assert "stress replay run-free" not in text
    for sched in ("pct", "free"):
        assert f"clean variant wl inverted [{sched}] showed findings: deadlock in 1 of 1 runs" in text

    p = cli("runs", "--out", out, timeout=60)
    assert p.returncode == 0, p.stderr
    header = p.stdout.splitlines()[0].split()
    assert header[:6] == ["run", "started", "workload", "variant", "schedule", "seed"]
    assert next(ln for ln in p.stdout.splitlines() if ln.startswith("run-pct ")).split()[5] == "pct"
    hist = p.stdout[p.stdout.index("per variant and schedule"):]
    assert sum(1 for ln in hist.splitlines() if "│ inverted " in ln) == 2
    doc = json.loads(cli("runs", "--out", out, "--json", timeout=60).stdout)
    assert {r["id"]: r["schedule"] for r in doc["runs"]} == {"run-pct": "pct", "run-free": "free"}
    assert sorted((h["variant"], h["schedule"], h["runs"]) for h in doc["history"]) == [
        ("inverted", "free", 1), ("inverted", "pct", 1)]
