"""The command line's surface (issue 19): unwritable outputs, corrupt stores, usage errors,
wide output without a terminal, the verdict's words, --json, --junit-xml, `stress list`'s
options, known findings in `stress runs`, what a repeat command repeats."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

from stress.cli import REPEAT
from stress.store import Store

junitparser = pytest.importorskip("junitparser")


def cli(*args: str, cwd: str = ROOT, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stress", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(p: subprocess.CompletedProcess, code: int = 2) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("stress: error: "), lines[0]
    return lines[0]


# -- item 7: an --out (or report file) that cannot be written ------------------------------------
def _unwritable_dir(tmp_path) -> str:
    """A directory that refuses a file create: on a read-only/pseudo fs as root, chmod 0o555 otherwise."""
    if os.geteuid() == 0:
        import tempfile
        for d in ("/sys", "/sys/kernel", "/proc/sys"):
            if not os.path.isdir(d):
                continue
            try:
                fd, p = tempfile.mkstemp(dir=d)
            except OSError:
                return d
            os.close(fd)
            os.unlink(p)
        pytest.skip("running as root and no directory here refuses a file create (/sys, /proc/sys)")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return str(d)


@pytest.fixture
def ro_dir(tmp_path):
    d = _unwritable_dir(tmp_path)
    yield d
    if d.startswith(str(tmp_path)):
        os.chmod(d, stat.S_IRWXU)


def test_unwritable_out_is_one_line_for_run_and_soak(ro_dir):
    p = cli("run", "--workload", "examples/abba.py", "--duration", "1s", "--out", ro_dir)
    assert "cannot write to --out" in one_error_line(p)
    p = cli("soak", "--duration", "1s", "--workloads", "examples/abba.py", "--out", ro_dir)
    assert "cannot write to --out" in one_error_line(p)


def test_unwritable_html_and_report_output_are_one_line(ro_dir, tmp_path):
    out = str(tmp_path / "runs")
    p = cli("run", "--workload", "examples/abba.py", "--duration", "1s", "--out", out,
            "--html", os.path.join(ro_dir, "r.html"))
    assert "cannot write --html" in one_error_line(p)
    assert not os.path.exists(out) or not [d for d in os.listdir(out) if d != "stress.db"]  # no run was started
    with Store(os.path.join(out, "stress.db")):
        pass
    p = cli("report", "--latest", "-o", os.path.join(ro_dir, "r.html"), "--out", out)
    assert "cannot write -o" in one_error_line(p)


# -- item 8: a store whose pages are corrupt -------------------------------------------------------
def _corrupt_store(path: str) -> None:
    with Store(path) as st:
        st.begin_soak("soak-x", {"pairs": []}, "stress soak", "out", 10.0)
        for i in range(40):
            st.record_iteration("soak-x", i, workload="wl", variant="v", seed=i, expected=["clean"],
                                status="skipped", text="padding " * 60)
        assert st.integrity_check() == "ok"
    size = os.path.getsize(path)
    assert size > 8192, size
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(os.urandom(4096))  # page 2 garbage; the 100-byte header stays valid


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_corrupt_store_is_refused_in_one_line_and_never_written(tmp_path):
    out = str(tmp_path / "runs")
    os.makedirs(out)
    db = os.path.join(out, "stress.db")
    _corrupt_store(db)
    before = _digest(db)
    for args in (["runs"], ["show", "soak-x"], ["run", "--workload", "examples/abba.py", "--duration", "1s"],
                 ["soak", "--duration", "1s", "--workloads", "examples/abba.py"]):
        line = one_error_line(cli(*args, "--out", out))
        assert "corrupt" in line and db in line and ".recover" in line and "move it aside" in line, (args, line)
    assert _digest(db) == before
    assert sorted(os.listdir(out)) == ["stress.db"]  # `stress run` refused before the run started


def test_corrupt_store_raises_store_error(tmp_path):
    from stress.store import StoreError
    db = str(tmp_path / "s.db")
    _corrupt_store(db)
    with pytest.raises(StoreError, match="is corrupt"):
        Store(db)


# -- item 10: usage errors are one line ------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["run"], "Missing option '--workload'"),
    (["run", "--workload", "examples/abba.py", "--seed", "abc"], "'--seed'"),
    (["show", "a", "b"], "unexpected extra argument"),
    (["runs", "--bogus"], "No such option: --bogus"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_are_one_line_with_a_help_pointer(args, needle):
    line = one_error_line(cli(*args))
    assert needle in line and line.endswith("--help)") and "(see: stress" in line, line


def test_help_shows_flags_without_a_value_and_no_args_prints_help():
    p = cli("run", "--help")
    assert p.returncode == 0 and "<bool>" not in p.stdout and "--trace-locks" in p.stdout, p.stdout
    assert "╭" not in p.stdout
    p = cli()
    assert "Usage: stress" in p.stdout + p.stderr and "Traceback" not in p.stderr


def test_version():
    from importlib.metadata import version
    p = cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"stress {version('stress')}"


# -- items 11, 12, 13, 14, 17 on one clean run ---------------------------------------------------
@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    out, junit = str(tmp / "runs"), str(tmp / "junit.xml")
    p = cli("run", "--workload", "migration-storm", "--variant", "upstream", "--duration", "1s", "--seed", "1",
            "--out", out, "--junit-xml", junit)
    return p, out, junit


def test_tables_are_whole_without_a_terminal(clean_run):
    p, _, _ = clean_run
    assert p.returncode == 0, p.stdout + p.stderr
    table = p.stdout[p.stdout.index("lock classes"):]
    assert "&v->arch.vgic.lock" in table and "&rank->lock" in table
    assert "…" not in p.stdout


def test_verdict_leads_with_what_was_found_and_repeat_says_what_it_repeats(clean_run):
    p, out, _ = clean_run
    assert "verdict: clean — as expected for upstream" in p.stdout and "(exit 0)" in p.stdout
    assert "verdict: PASS" not in p.stdout
    assert f"{REPEAT}: stress run --workload migration-storm --variant upstream" in p.stdout
    assert REPEAT == "rerun (same configuration and seed; timing differs)"
    run_id = next(ln.split("/")[-1] for ln in p.stdout.splitlines() if ln.startswith("run directory: "))
    show = cli("show", run_id, "--out", out)
    assert show.returncode == 0, show.stderr
    line = next(ln for ln in show.stdout.splitlines() if ln.startswith("verdict: "))
    # known races of upstream may show in a run (timing): they are noted, never counted
    assert line.startswith("verdict: clean — as expected for upstream") and line.endswith("(exit 0)"), line
    assert f"{REPEAT}: stress run --workload migration-storm" in show.stdout


def test_report_txt_holds_the_end_summary_of_a_clean_run(clean_run):
    p, out, _ = clean_run
    run_dir = next(ln.split(": ", 1)[1] for ln in p.stdout.splitlines() if ln.startswith("run directory: "))
    with open(os.path.join(run_dir, "report.txt")) as fh:
        text = fh.read()
    for needle in ("verdict: clean — as expected for upstream", "lock classes", "&v->arch.vgic.lock",
                   "operations (", "detectors: ", f"{REPEAT}: stress run", "run directory: "):
        assert needle in text, needle
    assert "\x1b[" not in text  # no colour codes


def test_junit_xml_of_a_clean_run(clean_run):
    _, _, junit = clean_run
    ET.parse(junit)
    xml = junitparser.JUnitXml.fromfile(junit)
    suites = list(xml)
    assert len(suites) == 1
    s = suites[0]
    assert (s.tests, s.failures, s.errors, s.skipped) == (1, 0, 0, 0)
    (case,) = list(s)
    assert case.classname == "migration-storm" and case.name == "migration-storm/upstream[1]"
    assert case.is_passed and case.time > 0


# -- item 13: --json -----------------------------------------------------------------------------
def test_run_json_is_the_summary_and_nothing_else_on_stdout(tmp_path):
    out = str(tmp_path / "runs")
    p = cli("run", "--workload", "examples/abba.py", "--duration", "3s", "--seed", "1", "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # the whole of stdout
    with open(os.path.join(doc["run_dir"], "summary.json")) as fh:
        assert json.load(fh) == doc
    assert "verdict: lock-order inversion found" in p.stderr or "verdict: DEADLOCK" in p.stderr, p.stderr
    assert "WARNING: possible circular locking dependency detected" in p.stderr
    runs = cli("runs", "--out", out, "--json")
    assert runs.returncode == 0, runs.stderr
    rd = json.loads(runs.stdout)
    assert [r["id"] for r in rd["runs"]] == [doc["run_id"]] and rd["history"][0]["runs"] == 1
    show = cli("show", doc["run_id"], "--out", out, "--json")
    sd = json.loads(show.stdout)
    assert sd["run"]["id"] == doc["run_id"] and sd["summary"]["verdict"] == doc["verdict"]
    assert sd["findings"] and sd["findings"][0]["text"]
    lst = json.loads(cli("list", "--json").stdout)
    ms = next(w for w in lst if w["workload"] == "migration-storm")
    assert ms["options"]["vcpus"]["default"] == 2 and ms["variants"][0]["default"]


# -- item 14: stress list shows the workloads' own options -------------------------------------
def test_list_shows_each_workloads_options_with_defaults_and_limits():
    p = cli("list")
    assert p.returncode == 0, p.stderr
    assert "--vcpus N (default 2, 2..16): guest vCPUs" in p.stdout
    assert "--hold-us N (default 200, 0..100000)" in p.stdout


# -- item 13: JUnit XML from stored data -----------------------------------------------------------
def _fake_run(root: str, run_id: str, workload: str, variant: str, status: str, expected: list[str],
              findings: list[dict], verdict: str, seed: int = 7, started: float = 100.0) -> str:
    d = os.path.join(root, run_id)
    os.makedirs(d)
    cfg = {"run_id": run_id, "workload": workload, "variant": variant, "seed": seed, "expected": expected,
           "started_at": started, "command": f"stress run --workload {workload} --variant {variant} --seed {seed}"}
    found = sorted({f["outcome"] for f in findings if not f.get("known") and not f.get("info")})
    headline, _, match = verdict.partition(" — ")
    summary = {"run_id": run_id, "workload": workload, "variant": variant, "expected": expected, "seed": seed,
               "stop_reason": "duration", "exit_code": 0 if status in ("pass", "open") else 1, "elapsed_s": 1.5,
               "command": cfg["command"], "run_dir": d,
               "verdict": {"status": status, "text": verdict, "headline": headline, "match": match,
                           "found": found, "known": sum(bool(f.get("known")) for f in findings), "info": 0},
               "findings": [{"outcome": f["outcome"], "title": f["outcome"], "since_start_s": 0.5,
                             "info": False, "known": bool(f.get("known")), "signature": f["outcome"]}
                            for f in findings]}
    for name, data in (("config.json", cfg), ("summary.json", summary)):
        with open(os.path.join(d, name), "w") as fh:
            json.dump(data, fh)
    with open(os.path.join(d, "findings.jsonl"), "w") as fh:
        for f in findings:
            fh.write(json.dumps({"outcome": f["outcome"], "title": f["outcome"], "since_start_s": 0.5,
                                 "info": False, "potential": False, "known": f.get("known", ""),
                                 "signature": f["outcome"], "text": f.get("text", "")}) + "\n")
    return d


def test_junit_failure_carries_verdict_finding_and_rerun(tmp_path):
    from stress.junit import write_run
    verdict = "deadlock found — NOT expected for fixed: it expects clean"
    d = _fake_run(str(tmp_path), "r1", "wl", "fixed", "fail", ["clean"],
                  [{"outcome": "invariant:x", "known": "understood", "text": "KNOWN REPORT\n"},
                   {"outcome": "deadlock", "text": "WARNING: DEADLOCK <&a> & \"b\"\x01\n"}], verdict)
    path = str(tmp_path / "j.xml")
    write_run(d, path)
    ET.parse(path)
    (s,) = list(junitparser.JUnitXml.fromfile(path))
    assert (s.tests, s.failures, s.errors, s.skipped) == (1, 1, 0, 0)
    (case,) = list(s)
    assert case.name == "wl/fixed[7]" and case.classname == "wl" and abs(case.time - 1.5) < 1e-6
    (failure,) = case.result
    assert isinstance(failure, junitparser.Failure) and failure.message == verdict
    assert f"verdict: {verdict}" in failure.text and "WARNING: DEADLOCK <&a>" in failure.text
    assert "KNOWN REPORT" not in failure.text  # the first *decisive* finding
    assert f"{REPEAT}: stress run --workload wl --variant fixed --seed 7" in failure.text


def test_junit_of_a_soak_counts_pass_open_failure_error_skipped(tmp_path):
    from stress.junit import write_soak
    db = str(tmp_path / "s.db")
    with Store(db) as st:
        st.begin_soak("soak-1", {"pairs": []}, "stress soak", str(tmp_path), 10.0)
        st.ingest_run(_fake_run(str(tmp_path), "a", "wl", "bug", "pass", ["deadlock"],
                                [{"outcome": "deadlock", "text": "DL"}], "DEADLOCK found — as expected"), "soak-1", 0)
        st.ingest_run(_fake_run(str(tmp_path), "b", "wl", "q", "open", ["open"], [{"outcome": "hung", "text": "H"}],
                                "hung worker found — an open question"), "soak-1", 1)
        st.ingest_run(_fake_run(str(tmp_path), "c", "wl", "fix", "fail", ["clean"],
                                [{"outcome": "deadlock", "text": "DL2"}], "DEADLOCK found — NOT expected"),
                      "soak-1", 2)
        st.record_iteration("soak-1", 3, workload="wl", variant="fix", seed=3, expected=["clean"], status="error",
                            text="the run left no run directory (exit status 3): boom")
        st.record_iteration("soak-1", 4, workload="wl", variant="fix", seed=4, expected=["clean"],
                            status="skipped", text="the run refused the configuration: no")
        path = str(tmp_path / "soak.xml")
        write_soak(st, "soak-1", path)
    ET.parse(path)
    (s,) = list(junitparser.JUnitXml.fromfile(path))
    assert (s.tests, s.failures, s.errors, s.skipped) == (5, 1, 1, 1)
    cases = {c.name: c for c in s}
    assert set(cases) == {"wl/bug[7]", "wl/q[7]", "wl/fix[7]", "wl/fix[3]", "wl/fix[4]"}
    assert cases["wl/bug[7]"].is_passed and cases["wl/q[7]"].is_passed
    assert "hung worker found" in cases["wl/q[7]"].system_out
    assert isinstance(cases["wl/fix[3]"].result[0], junitparser.Error)
    assert isinstance(cases["wl/fix[4]"].result[0], junitparser.Skipped)
    assert "DL2" in cases["wl/fix[7]"].result[0].text


def test_soak_junit_xml_end_to_end(tmp_path):
    out, path = str(tmp_path / "runs"), str(tmp_path / "soak.xml")
    p = cli("soak", "--duration", "1s", "--workloads", "examples/abba.py", "--variants", "ordered",
            "--iteration-duration", "1s", "--seed", "3", "--out", out, "--junit-xml", path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    (s,) = list(junitparser.JUnitXml.fromfile(path))
    assert s.tests >= 1 and s.failures == 0 and s.errors == 0
    assert all(c.name.startswith("examples/abba.py/ordered[") for c in s)


# -- item 16: `stress runs` marks known findings, counts open runs as the soak does ------------------
def test_runs_marks_known_findings_and_keeps_variant_names_whole(tmp_path):
    out = str(tmp_path / "runs")
    os.makedirs(out)
    kn = {"outcome": "invariant:vgic-list-lock", "known": "understood", "text": "K"}
    dirs = [_fake_run(out, "r1", "migration-storm", "unlocked-target-read", "pass", ["invariant:x"],
                      [{"outcome": "invariant:x", "text": "X"}, kn, kn], "x found — as expected", started=101.0),
            _fake_run(out, "r2", "migration-storm", "unlocked-target-read-assert", "pass", ["invariant:x"],
                      [{"outcome": "invariant:x", "text": "X"}], "x found — as expected", started=102.0),
            _fake_run(out, "r3", "migration-storm", "old-vcpu-lock", "open", ["open"], [kn],
                      "clean — an open question", started=103.0)]
    with Store(os.path.join(out, "stress.db")) as st:
        for d in dirs:
            st.ingest_run(d)
    p = cli("runs", "--out", out)
    assert p.returncode == 0, p.stderr
    r1 = next(ln for ln in p.stdout.splitlines() if ln.startswith("r1 "))
    assert "invariant:x, invariant:vgic-list-lock×2 (known)" in r1
    hist = p.stdout[p.stdout.index("per variant"):]
    row = next(ln for ln in hist.splitlines() if "│ unlocked-target-read " in ln)
    assert "invariant:x×1, invariant:vgic-list-lock×1 (known)" in row
    assert "unlocked-target-read-assert" in hist and "…" not in p.stdout
    # an open run counts as passed (as in the soak summary) and shows in the open column
    header = next(ln for ln in hist.splitlines() if "workload" in ln and "passed" in ln)
    cols = [c.strip() for c in header.strip("┃").split("┃")]
    open_row = next(ln for ln in hist.splitlines() if "old-vcpu-lock" in ln)
    cells = [c.strip() for c in open_row.strip("│").split("│")]
    got = dict(zip(cols, cells))
    assert (got["runs"], got["passed"], got["open"], got["failed"], got["other"]) == ("1", "1", "1", "0", "0")
    assert got["outcomes seen"] == "invariant:vgic-list-lock×1 (known)"
