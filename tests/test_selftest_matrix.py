"""Detector self-tests after lockdep's selftest matrix: every case runs as real worker
processes over shared memory, and each asserts the exact verdict and report."""

from __future__ import annotations

import pytest

from conftest import run_cli

CIRCULAR = "WARNING: possible circular locking dependency detected"


def run_case(variant: str, runs_dir: str, *extra: str):
    return run_cli(["run", "--workload", "lockdep-selftest", "--variant", variant, "--seed", "11",
                    "--duration", "4s", *extra], runs_dir)


@pytest.mark.parametrize("variant,cycle", [("ABBA", 2), ("ABBCCA", 3), ("ABBCCDDA", 4)])
def test_cycles_of_any_length_are_inversions_then_deadlocks(variant, cycle, runs_dir):
    r = run_case(variant, runs_dir)
    assert r.code == 0, r.out + r.err
    assert r.outcomes == {"lock-order-inversion", "deadlock"}
    assert CIRCULAR in r.out
    # the shortest cycle, every class named once, closed on itself
    assert f"-> #{cycle - 1} (" in r.out and f"-> #{cycle} (" not in r.out
    assert f"BUG: deadlock: circular wait among {cycle} contexts" in r.out
    assert r.out.count("*** DEADLOCK ***") == 2


def test_AA_is_recursive_locking_then_a_one_context_cycle(runs_dir):
    r = run_case("AA", runs_dir)
    assert r.code == 0, r.out + r.err
    assert r.titles == ["WARNING: possible recursive locking detected",
                        "BUG: deadlock: context waits for a lock it holds itself"]
    assert "which is held by worker 0 (cpu" in r.out


def test_consistent_nesting_is_clean(runs_dir):
    r = run_case("nested-ok", runs_dir)
    assert r.code == 0 and r.summary["findings"] == [], r.out
    assert r.summary["detectors"]["edges"] == 3  # A->B, A->C, B->C
    assert r.summary["ops"]["step"] > 1000


def test_guarded_cycle_is_reported_as_information_not_a_bug(runs_dir):
    r = run_case("guarded-ABBA", runs_dir)
    assert r.code == 0, r.out
    assert [f["info"] for f in r.summary["findings"]] == [True]
    assert "was taken while holding (G)" in r.out
    assert r.summary["verdict"]["status"] == "pass"


def test_class_taken_in_isr_and_with_irqs_enabled_is_inconsistent(runs_dir):
    r = run_case("irq-inconsistent", runs_dir)
    assert r.code == 0, r.out
    assert r.titles == ["WARNING: inconsistent lock state"]
    assert "{HARDIRQ-ON-W}" in r.out and "{IN-HARDIRQ-W}" in r.out
    assert r.summary["irqs_handled"] > 0


def test_same_class_always_irqsave_is_clean(runs_dir):
    r = run_case("irq-safe", runs_dir)
    assert r.code == 0 and r.summary["findings"] == [], r.out
    assert r.summary["irqs_handled"] > 100


def test_isr_waiting_for_its_own_task_is_a_one_worker_deadlock(runs_dir):
    r = run_case("irq-self-deadlock", runs_dir)
    assert r.code == 0, r.out
    assert "deadlock" in r.outcomes
    assert "BUG: deadlock: context waits for a lock it holds itself" in r.out
    assert "[irq] is waiting for lock" in r.out and "<Interrupt>" in r.out


def test_irq_safe_to_unsafe_order(runs_dir):
    r = run_case("irq-order", runs_dir)
    assert r.code == 0, r.out
    assert r.titles == ["WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected"]


def test_holder_that_dies(runs_dir):
    r = run_case("dead-holder", runs_dir)
    assert r.code == 0, r.out
    assert r.outcomes == {"held-by-dead-worker"}
    assert "died holding 1 lock" in r.out and "killed by SIGKILL" in r.out


def test_hung_holder(runs_dir):
    r = run_case("hung", runs_dir, "--hung-timeout", "1s")
    assert r.code == 0, r.out
    assert r.outcomes == {"hung"}
    assert "is not waiting for any lock" in r.out


def test_wrong_expectation_fails_the_run(runs_dir, tmp_path):
    """A detector that cannot fail proves nothing: a clean case declared buggy must exit 1."""
    src = (tmp_path / "wrong.py")
    src.write_text(
        "from workloads.selftest import LockdepSelftest as B\n"
        "from stress.workload import Variant\n"
        "class Wrong(B):\n"
        "    name = 'wrong'\n"
        "    variants = [Variant('nested-ok', expect='deadlock')]\n")
    r = run_cli(["run", "--workload", str(src), "--duration", "2s", "--seed", "1"], runs_dir)
    assert r.code == 1
    assert r.summary["verdict"]["status"] == "fail"
