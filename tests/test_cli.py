"""The command line as a user meets it: listing, bad input, exit statuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, run_cli


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stress", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_list_shows_variants_expectations_and_provenance():
    p = cli("list")
    assert p.returncode == 0, p.stderr
    assert "lockdep-selftest" in p.stdout and "ABBCCA" in p.stdout
    assert "lib/locking-selftest.c" in p.stdout.replace("\n", "").replace("│", "").replace(" ", "")


@pytest.mark.parametrize("args,needle", [
    (["run", "--workload", "no-such-workload"], "unknown workload 'no-such-workload'"),
    (["run", "--workload", "./nope.py"], "no workload file"),
    (["run", "--workload", "examples/abba.py", "--variant", "sideways"], "has no variant 'sideways'"),
    (["run", "--workload", "examples/abba.py", "--duration", "soon"], "--duration takes a duration"),
    (["run", "--workload", "examples/abba.py", "--rate", "fly=3/s"], "unknown operation 'fly'"),
    (["run", "--workload", "examples/abba.py", "--bogus", "1"], "no such option --bogus"),
    (["run", "--workload", "examples/abba.py", "--workers", "1"], "fewer than the 2 roles"),
    (["run", "--workload", "examples/abba.py", "--noise", "2"], "--noise is a probability"),
    (["run", "--workload", "lockdep-selftest", "--hold-us", "-5"], "--hold-us must be at least 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_broken_workload_file_is_one_line(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("from stress.workload import Workload\nclass X(Workload:\n    pass\n")
    p = cli("run", "--workload", str(f))
    assert p.returncode == 2 and "SyntaxError" in p.stderr and "Traceback" not in p.stderr
    g = tmp_path / "invalid.py"
    g.write_text("from stress.workload import Workload, Struct, Int, Variant\n"
                 "class S(Struct):\n    x = Int()\n"
                 "class X(Workload):\n    state = S\n    variants = [Variant('v', expect='explodes')]\n")
    p = cli("run", "--workload", str(g))
    assert p.returncode == 2 and "unknown outcome 'explodes'" in p.stderr


def test_matching_expectation_exits_0_and_prints_the_repeat_command(runs_dir):
    r = run_cli(["run", "--workload", "examples/abba.py", "--variant", "ordered", "--duration", "2s",
                 "--workers", "4", "--seed", "7"], runs_dir)
    assert r.code == 0, r.out + r.err
    assert ("rerun (same configuration and seed; timing differs): stress run --workload examples/abba.py "
            "--variant ordered --duration 2s --seed 7 --workers 4" in r.out)
    assert "verdict: clean — as expected for ordered (exit 0)" in r.out and "verdict: PASS" not in r.out
    assert r.summary["verdict"]["status"] == "pass"
    assert r.summary["ops"]["a_then_b"] > 1000 and r.summary["ops"]["b_then_a"] > 1000
    assert {c["class"] for c in r.summary["locks"]} == {"A", "B"}
    assert r.summary["invariant_checks"] >= 1


def test_inverted_abba_names_both_classes_and_sites(runs_dir):
    r = run_cli(["run", "--workload", "examples/abba.py", "--duration", "5s", "--seed", "1"], runs_dir)
    assert r.code == 0, r.out + r.err
    assert "WARNING: possible circular locking dependency detected" in r.out
    assert "a_then_b() examples/abba.py:" in r.out and "b_then_a() examples/abba.py:" in r.out
    assert "(A)" in r.out and "(B)" in r.out


def test_run_html_and_report_command_write_the_report(runs_dir, tmp_path):
    """`stress run --html` and `stress report` render the recorded run; bad ids are one line."""
    import subprocess
    import sys

    page = tmp_path / "run.html"
    r = run_cli(["run", "--workload", "examples/abba.py", "--variant", "inverted", "--seed", "1",
                 "--html", str(page)], runs_dir)
    assert r.code == 0 and page.exists(), r.out + r.err
    text = page.read_text()
    assert "possible circular locking dependency" in text and r.summary["run_id"] in text

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stress", *args], capture_output=True, text=True, timeout=60)

    latest = tmp_path / "latest.html"
    p = cli("report", "--latest", "-o", str(latest), "--out", runs_dir)
    assert p.returncode == 0 and latest.exists() and r.summary["run_id"] in latest.read_text(), p.stderr
    p = cli("report", "no-such-run", "-o", str(tmp_path / "x.html"), "--out", runs_dir)
    assert p.returncode == 2 and "no run or soak" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
