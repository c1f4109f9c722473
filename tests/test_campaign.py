"""``stress campaign`` on Ray: a real two-node local cluster with a node killed mid-campaign
(the iteration it ran is retried on the other and marked, the store stays whole, the report
renders), ``--resume`` on the embedded Ray, and what must hold without Ray: ``stress soak``
never imports it, a missing Ray or an unreachable cluster is one line. The rest is unit-level:
durations, ``--keep-traces``, host health, the store's v3 columns, the per-host report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, stress_objects
from stress.cli import UsageError, parse_duration
from stress.soak import Plan, keeps_traces, make_plan
from stress.store import RunRow, Store, host_stats
from test_store import make_run

ABBA = os.path.join(ROOT, "examples", "abba.py")


def cli(*args: str, timeout: float = 90, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stress", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def leaked_by(out: str) -> set[str]:
    ids = [d for d in os.listdir(out) if os.path.exists(os.path.join(out, d, "config.json"))]
    return {o for o in stress_objects() if any(i in o for i in ids)}


def progress(out: str) -> dict | None:
    for d in os.listdir(out) if os.path.isdir(out) else []:
        if d.startswith("campaign-"):
            try:
                with open(os.path.join(out, d, "progress.json")) as fh:
                    return json.load(fh)
            except (OSError, ValueError):
                return None
    return None


# -- real Ray --------------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_two_node_campaign_with_a_node_killed_mid_way(tmp_path):
    """A head and a second worker node, each one stress_host; the second is killed while it
    runs an iteration: that iteration is retried on the head and marked, every planned
    iteration is recorded once, the store passes integrity_check, the report renders."""
    from ray.cluster_utils import Cluster
    n = 5
    out = str(tmp_path / "runs")
    fast = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "resources": {"stress_host": 1}, "num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False,
        "_system_config": fast})
    proc = None
    try:
        worker = cluster.add_node(resources={"stress_host": 1}, num_cpus=1, object_store_memory=80 << 20)
        cluster.wait_for_nodes()
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen([sys.executable, "-m", "stress", "campaign", "--cluster", cluster.address,
                                 "--iterations", str(n), "--workloads", ABBA, "--variants", "ordered", "--schedule",
                                 "free", "--iteration-duration", "1.5s", "--seed", "4", "--out", out],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        killed_iteration = None
        deadline = time.time() + 90
        while proc.poll() is None and killed_iteration is None and time.time() < deadline:
            doc = progress(out)
            mine = [r for r in (doc or {}).get("running", []) if r["node"] == worker.node_id
                    and time.time() - r["since"] < 0.8]  # just started: its 1.5-s run is ahead
            if doc and doc["done"] >= 1 and mine:
                killed_iteration = mine[0]["iteration"]
                lost_on = mine[0]["host"]
                cluster.remove_node(worker)
            time.sleep(0.05)
        assert killed_iteration is not None, "the worker node never ran an iteration"
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stdout + stderr
        assert "Traceback" not in stdout + stderr
        db = os.path.join(out, "stress.db")
        with Store(db) as st:
            assert st.integrity_check() == "ok"
            cid = st.soaks()[0]["id"]
            rows = st.runs(soak_id=cid)
        assert sorted(r.iteration for r in rows) == list(range(n))  # every planned iteration, once
        retried = [r for r in rows if r.attempts > 1]
        assert [(r.iteration, r.tried_on) for r in retried] == [(killed_iteration, [lost_on])]
        assert retried[0].host != lost_on and retried[0].status == "pass"
        assert {r.status for r in rows} == {"pass"}
        assert f"#{killed_iteration} " in stdout and f"(retried: lost on {lost_on})" in stdout
        assert "per host" in stdout and "retried: 1 iteration" in stdout
        html = os.path.join(str(tmp_path), "report.html")
        r = cli("report", cid, "--out", out, "-o", html, timeout=60)
        assert r.returncode == 0, r.stderr
        h = open(html).read()
        assert "stress report: campaign" in h and 'id="hosts"' in h and lost_on in h and ">retried</span>" in h
        # traces only for iterations that did not pass or showed a finding: none here
        assert not any(os.path.isdir(os.path.join(r.run_dir, "traces")) for r in rows)
        assert leaked_by(out) == set()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        cluster.shutdown()


@pytest.mark.timeout(90)
def test_resume_runs_only_what_the_store_does_not_hold_on_the_embedded_ray(tmp_path):
    out = str(tmp_path / "runs")
    os.makedirs(out)
    plan, _ = make_plan(ABBA, "ordered", 9, float("inf"), 1.0, out, [], None, "free", "none", 3)
    cid = "campaign-test-1"
    with Store(os.path.join(out, "stress.db")) as st:
        st.begin_soak(cid, dict(plan.as_dict(), retries=1), "stress campaign", out, plan.duration_s, kind="campaign")
        st.mark_soak(cid, "interrupted")
        for i in (0, 2):  # iteration 1 was in flight when the driver died: a gap
            d = make_run(out, f"r{i}", "ordered", ["clean"], [], "pass", 100.0 + i, workload=ABBA)
            st.ingest_run(d, cid, i, host="elsewhere")
    r = cli("campaign", "--resume", cid, "--out", out, timeout=80)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming campaign" in r.stdout and "#1 " in r.stdout and "#0 " not in r.stdout.split("resuming")[1]
    with Store(os.path.join(out, "stress.db")) as st:
        rows = st.runs(soak_id=cid)
        assert [(x.iteration, x.host != "elsewhere") for x in sorted(rows, key=lambda x: x.iteration)] == [(0, False), (1, True), (2, False)]
        assert st.soak(cid)["status"] == "done" and st.soak(cid)["resumes"] == 1
    r = cli("soak", "--resume", cid, "--out", out)
    one_line_error(r, "is a campaign: resume it with stress campaign --resume")


@pytest.mark.timeout(60)
def test_soak_never_imports_ray_and_keeps_no_traces_of_passing_iterations(tmp_path):
    out = str(tmp_path / "runs")
    code = ("import sys\nfrom stress.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    sys.stderr.write(f'exit {e.code}\\n')\n"
            "print('RAY-IMPORTED' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'NO-RAY')\n")
    p = subprocess.run([sys.executable, "-c", code, "soak", "--duration", "1500ms", "--workloads", ABBA, "--variants",
                        "ordered", "--schedule", "free", "--iteration-duration", "1s", "--seed", "2", "--out", out],
                       cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert "exit 0" in p.stderr and p.stdout.rstrip().endswith("NO-RAY"), p.stdout + p.stderr
    with Store(os.path.join(out, "stress.db")) as st:
        rows = st.runs()
    assert rows and all(r.status == "pass" and r.host == "" for r in rows)
    assert all(os.path.exists(os.path.join(r.run_dir, "summary.json")) for r in rows)
    assert not any(os.path.isdir(os.path.join(r.run_dir, "traces")) for r in rows)  # --keep-traces failed
    assert leaked_by(out) == set()


# -- without Ray, bad input -------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_without_ray_campaign_says_install_stress_cluster(tmp_path):
    code = ("import sys\nsys.modules['ray'] = None\nfrom stress.cli import main\nmain(sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", code, "campaign", "--iterations", "1", "--workloads", ABBA,
                        "--out", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=25)
    one_line_error(p, "install stress[cluster]")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("address,needle", [("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
                                            ("nonsense", "--cluster takes a Ray address like")])
def test_an_unreachable_or_bad_cluster_address_is_one_line(tmp_path, address, needle):
    p = cli("campaign", "--cluster", address, "--iterations", "1", "--workloads", ABBA, "--out",
            str(tmp_path / "runs"), timeout=25)
    one_line_error(p, needle)


@pytest.mark.parametrize("args,needle", [
    (["campaign", "--workloads", ABBA], "needs --duration"),
    (["campaign", "--iterations", "0", "--workloads", ABBA], "--iterations must be at least 1"),
    (["campaign", "--iterations", "2", "--keep-traces", "some", "--workloads", ABBA], "--keep-traces takes all"),
    (["soak", "--duration", "1s", "--keep-traces", "some"], "--keep-traces takes all, failed, none"),
    (["soak", "--duration", "1h1h"], "takes a duration like 30s, 5m, 1h30m"),
    (["campaign", "--resume", "x", "--iterations", "3"], "--resume takes the campaign's plan from the store"),
])
def test_bad_campaign_and_soak_input_is_one_line(tmp_path, args, needle):
    one_line_error(cli(*args, "--out", str(tmp_path / "runs"), timeout=30), needle)


# -- unit level -------------------------------------------------------------------------------------
def test_durations_take_days_and_compound_parts():
    assert parse_duration("1h30m") == 5400 and parse_duration("1d") == 86400 and parse_duration("2m30s") == 150
    assert parse_duration("1d12h") == 129600 and parse_duration("1500ms") == 1.5 and parse_duration("90") == 90
    for bad in ("30m1h", "1h1h", "1x", "h", ""):
        with pytest.raises(UsageError, match="1h30m"):
            parse_duration(bad)


def test_keep_traces_policy():
    assert keeps_traces("all", "pass", 0) and not keeps_traces("none", "fail", 3)
    assert not keeps_traces("failed", "pass", 0) and not keeps_traces("failed", "open", 0)
    assert keeps_traces("failed", "pass", 1)  # a buggy variant that showed its finding
    assert keeps_traces("failed", "fail", 0) and keeps_traces("failed", "error", 0)


def test_old_plans_keep_every_trace_and_new_ones_round_trip():
    old = {"pairs": [["w", "v"]], "seed": 1, "duration_s": 60, "out": "o", "cwd": "/"}
    assert Plan.from_dict(old).keep_traces == "all" and Plan.from_dict(old).iterations is None
    p = Plan([("w", "v")], 1, float("inf"), 1.0, "o", "/", keep_traces="none", iterations=64)
    q = Plan.from_dict(json.loads(json.dumps(p.as_dict())))
    assert (q.keep_traces, q.iterations, q.duration_s) == ("none", 64, float("inf"))


def _row(i: int, host: str, status: str, attempts: int = 1, tried_on: list[str] | None = None) -> RunRow:
    return RunRow(f"r{i}", "c", i, 0.0, "w", "v", 1, ["clean"], "", status, "", 0, "", 1.0, 1.0, None, "", "",
                  "free", host, attempts, tried_on or [])


def test_a_host_whose_iterations_all_fail_for_harness_reasons_is_unhealthy():
    rows = [_row(0, "a", "pass"), _row(1, "b", "error"), _row(2, "b", "error"), _row(3, "a", "fail"),
            _row(4, "a", "pass", attempts=2, tried_on=["c"])]
    h = {x.host: x for x in host_stats(rows)}
    assert h["b"].unhealthy and not h["a"].unhealthy and (h["a"].failed, h["a"].retried_here) == (1, 1)
    assert h["c"].lost == 1 and not h["c"].unhealthy
    # every host failing so says the harness or the workload is broken, not one host
    assert not any(x.unhealthy for x in host_stats([_row(0, "a", "error"), _row(1, "b", "error")]))
    assert host_stats([_row(0, "", "pass")]) == []  # a soak's rows: no host


def test_store_v3_columns_and_a_campaign_report_with_a_host_column(tmp_path):
    from reports.html import render_soak
    out = str(tmp_path)
    with Store(str(tmp_path / "s.db")) as st:
        st.begin_soak("campaign-x", {"seed": 1, "iterations": 3}, "stress campaign", out, float("inf"),
                      kind="campaign")
        st.ingest_run(make_run(out, "r0", "v", ["clean"], [], "pass", 100.0), "campaign-x", 0, host="alpha")
        st.ingest_run(make_run(out, "r1", "v", ["clean"], [], "pass", 101.0), "campaign-x", 1, host="alpha",
                      attempts=2, tried_on=["beta"])
        st.record_iteration("campaign-x", 2, workload="wl", variant="v", seed=1, expected=["clean"], status="error",
                            text="the task failed", host="gamma")
        st.record_iteration("campaign-x", 3, workload="wl", variant="v", seed=1, expected=["clean"], status="error",
                            text="the task failed", host="gamma")
        rows = st.runs(soak_id="campaign-x")
        assert [(r.host, r.attempts, r.tried_on) for r in rows][:2] == [("alpha", 1, []), ("alpha", 2, ["beta"])]
        assert st.soak("campaign-x")["kind"] == "campaign" and st.integrity_check() == "ok"
        h = render_soak(st, "campaign-x")
    assert "stress report: campaign" in h and "<th>host</th>" in h and ">retried</span>" in h
    assert "host gamma is unhealthy" in h and "no time limit" in h


def test_the_cluster_extra_and_the_test_extra_bring_ray_and_the_base_install_does_not():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        proj = tomllib.load(fh)["project"]
    assert not any(d.startswith("ray") for d in proj["dependencies"])
    assert any(d.startswith("ray") for d in proj["optional-dependencies"]["cluster"])
    assert any(d.startswith("ray") for d in proj["optional-dependencies"]["test"])


def test_a_host_that_only_fails_is_sidelined_while_another_is_healthy(tmp_path):
    """After SIDELINE_AFTER harness errors (all of its iterations) a host gets no more
    iterations: its units leave the capacity and new tasks are placed on the others."""
    from stress.campaign import SIDELINE_AFTER, Campaign
    BAD, GOOD = "abababababababababababababababababababababababababababab", "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"  # node ids are hex

    class FakeRay:
        def nodes(self):
            return [{"NodeID": BAD, "Alive": True, "NodeManagerHostname": "h1", "Resources": {"stress_host": 1}},
                    {"NodeID": GOOD, "Alive": True, "NodeManagerHostname": "h2",
                     "Resources": {"stress_host": 2}}]

        def cluster_resources(self):
            return {"stress_host": 3}

    c = Campaign.__new__(Campaign)
    c.ray, c.labels, c.pending, c.running = FakeRay(), {BAD: "h1", GOOD: "h2"}, {}, {}
    c.rows = [_row(i, "h1", "error") for i in range(SIDELINE_AFTER - 1)] + [_row(9, "h2", "pass")]
    assert c._unhealthy_nodes() == set() and c._capacity() == 3 and c._placement() is None
    c.rows.append(_row(10, "h1", "error"))
    assert c._unhealthy_nodes() == {BAD} and c._capacity() == 2
    node, strategy = c._placement()
    assert node == GOOD and strategy.node_id == GOOD
    # every host failing so: nobody is sidelined (nothing would be gained)
    c.rows = [_row(i, h, "error") for i, h in enumerate(["h1", "h2"] * SIDELINE_AFTER)]
    assert c._unhealthy_nodes() == set()
