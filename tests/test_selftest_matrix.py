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
    assert r.outcomes == {"recursive-locking", "deadlock"}, "a possible AA is not itself the deadlock"
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
    assert [(f["outcome"], f["info"]) for f in r.summary["findings"]] == [("guarded-inversion", True)]
    assert "was taken while holding (G), the same lock instance" in r.out
    assert r.summary["verdict"]["status"] == "pass"


def test_two_instances_of_the_guard_class_guard_nothing(runs_dir):
    """keepers[0] on one path and keepers[1] on the other: it can deadlock, and does."""
    r = run_case("two-keepers-ABBA", runs_dir)
    assert r.code == 0, r.out
    assert r.outcomes == {"lock-order-inversion", "deadlock"}
    assert not any(f["info"] for f in r.summary["findings"])
    assert "cannot deadlock" not in r.out


def test_two_instances_of_one_class_unannotated_is_recursive_locking(runs_dir):
    r = run_case("AA-two-instances", runs_dir)
    assert r.code == 0, r.out
    assert r.outcomes == {"recursive-locking"}
    assert "two instances of one class" in r.out and "missing lock nesting notation" in r.out


def test_nesting_annotation_is_clean(runs_dir):
    r = run_case("nested-annotated", runs_dir)
    assert r.code == 0 and r.summary["findings"] == [], r.out
    assert "K/1" in r.summary["graph"]["classes"]
    assert {("K", "K/1")} <= {(e["from"], e["to"]) for e in r.summary["graph"]["edges"]}


def test_a_lying_nesting_annotation_still_deadlocks_for_the_watchdog(runs_dir):
    r = run_case("nested-annotation-lies", runs_dir)
    assert r.code == 0, r.out
    assert r.outcomes == {"deadlock"}, "the class graph sees one order, as lockdep would; the wait is real"


@pytest.mark.parametrize("variant,expect", [("per-instance-ordered", set()),
                                            ("per-instance-inverted", {"lock-order-inversion", "deadlock"})])
def test_per_instance_classes_are_ordered_like_any_two(variant, expect, runs_dir):
    r = run_case(variant, runs_dir)
    assert r.code == 0, r.out
    assert r.outcomes == expect
    assert {"P[0]", "P[1]"} <= set(r.summary["graph"]["classes"])


def test_class_taken_in_isr_and_with_irqs_enabled_is_inconsistent(runs_dir):
    r = run_case("irq-inconsistent", runs_dir)
    assert r.code == 0, r.out
    assert r.titles == ["WARNING: inconsistent lock state"]
    assert r.outcomes == {"inconsistent-lock-state"}
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
    assert r.outcomes == {"irq-lock-inversion"}


def test_irq_safe_order_into_an_irqsave_lock_is_clean(runs_dir):
    r = run_case("irq-order-safe", runs_dir)
    assert r.code == 0 and r.summary["findings"] == [], r.out
    assert r.summary["irqs_handled"] > 0


def test_old_workload_files_expecting_the_umbrella_names_still_pass(runs_dir, tmp_path):
    """Before the outcome kinds were split, these cases expected lock-order-inversion and
    deadlock: such a file still passes, and the verdict says which precise outcome met it."""
    src = tmp_path / "old.py"
    src.write_text(
        "from workloads.selftest import LockdepSelftest as B\n"
        "from stress.workload import Variant\n"
        "class Old(B):\n"
        "    name = 'old'\n"
        "    variants = [Variant('irq-inconsistent', expect='lock-order-inversion'),\n"
        "                Variant('AA', expect='deadlock')]\n")
    for v in ("irq-inconsistent", "AA"):
        r = run_cli(["run", "--workload", str(src), "--variant", v, "--duration", "3s", "--seed", "1"], runs_dir)
        assert r.code == 0, r.out
        assert "(its name before stress 0.2)" in r.summary["verdict"]["text"]


def test_every_site_is_the_acquisition_that_happened(runs_dir, tmp_path):
    """The C fast path used to take a held lock's site from the chain cache: the site of the
    first acquisition that made that chain. A worker that took `vault` in one function and
    then dies holding it, taken in another function, must be reported at the second."""
    src = tmp_path / "vault.py"
    src.write_text(
        "import os, signal, time\n"
        "from stress.workload import Role, Spinlock, Struct, Variant, Workload, op, spin_lock, spin_unlock\n"
        "class S(Struct):\n"
        "    vault = Spinlock('vault')\n"
        "class Vault(Workload):\n"
        "    name = 'vault'\n"
        "    state = S\n"
        "    check_interval = 0.0\n"
        "    variants = [Variant('dies', expect='held-by-dead-worker')]\n"
        "    class keeper(Role):\n"
        "        count = 1\n"
        "        @op()\n"
        "        def work(self, s):\n"
        "            for _ in range(100):\n"
        "                self.first(s)\n"
        "            self.second(s)\n"
        "        def first(self, s):\n"
        "            spin_lock(s.vault)  # line 18\n"
        "            spin_unlock(s.vault)\n"
        "        def second(self, s):\n"
        "            spin_lock(s.vault)  # line 21: the acquisition that is held when it dies\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    class waiter(Role):\n"
        "        count = 1\n"
        "        @op()\n"
        "        def wait(self, s):\n"
        "            time.sleep(0.05)\n"
        "            spin_lock(s.vault)\n"
        "            spin_unlock(s.vault)\n")
    r = run_cli(["run", "--workload", str(src), "--duration", "3s", "--seed", "1"], runs_dir)
    assert r.code == 0, r.out
    assert "#0: (vault), at: Vault.keeper.second() " in r.out and "vault.py:21" in r.out, r.out
    assert "vault.py:18" not in r.out.split("BUG: lock held by a dead worker")[1].split("last events")[0]


def test_call_chains_end_at_the_operation(runs_dir):
    """Harness frames (the worker loop, the process start-up) are not the model's."""
    r = run_case("ABBA", runs_dir)
    assert r.code == 0, r.out
    assert "stress/worker.py" not in r.out and "BaseProcess" not in r.out and "multiprocess" not in r.out


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
