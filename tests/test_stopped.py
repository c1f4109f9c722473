"""Issue 19 item 5: a stopped worker is not invisible. The watchdog reads each worker's
process state (psutil) on every scan, names a stopped or unscheduled holder with how long
it has been so, and reports as hung a worker stopped past the hung timeout (whoever waits
for it) and a worker inside one operation past the timeout with nobody waiting; workers
between operations (parked, pacing) never.

Real runs of a small workload written here, the test sending SIGSTOP to a worker's pid (each
worker writes its pid to a marker directory given by the workload's --mark option)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from conftest import run_cli
from shm_model.arena import W_OP, W_OP_START
from stress.findings import now_ns
from test_watchdog import ALIVE, FakeWorld
from stress.watchdog import Watchdog

WORKLOAD = '''
import os, time
from stress.workload import Int, Option, Role, Spinlock, Struct, Variant, Workload, invariant, op


class State(Struct):
    a = Spinlock("A")
    n = Int()


def _mark(self):
    d = self.options.mark
    if d:
        p = os.path.join(d, f"{self.__class__.__name__}-{self.index}")
        if not os.path.exists(p):
            with open(p + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(p + ".tmp", p)


def _nap(self, s):
    t = time.monotonic() + s
    while time.monotonic() < t:
        self.cpu.check_stop()
        time.sleep(0.01)


class Stall(Workload):
    """Stalls for the watchdog."""

    name = "stall"
    state = State
    duration = 30.0
    hung_timeout = 2.0
    check_interval = 0.05
    variants = [
        Variant("hold", expect="hung", provenance="test", doc="holder holds A in 1 s windows; waiter takes A"),
        Variant("idle", expect="hung", provenance="test", doc="short operations; the test stops one"),
        Variant("long-op", expect="hung", provenance="test", doc="one operation lasts 30 s; nobody waits"),
        Variant("paced", expect="clean", provenance="test", doc="rare paced operations, parks for checks"),
    ]
    options = {"mark": Option("", "directory where each worker writes its pid")}

    class holder(Role):
        count = 1

        @op()
        def hold(self, s):
            if self.variant == "hold":
                with s.a:
                    # mark only in a window the waiter has started before: it is blocked on A
                    # by the time the mark appears (0.3 s in), and the test stops us at once
                    waiter_started = os.path.exists(os.path.join(self.options.mark, "waiter-0"))
                    _nap(self, 0.3)
                    if waiter_started:
                        _mark(self)
                    _nap(self, 0.7)
            elif self.variant == "long-op":
                _mark(self)
                _nap(self, 30.0)
            else:
                _mark(self)
                time.sleep(0.005)

    class waiter(Role):
        count = 1

        @op()
        def take(self, s):
            _mark(self)
            if self.variant == "hold":
                with s.a:
                    s.n += 1
            time.sleep(0.005)

    class pacer(Role):
        count = 1

        @op(rate=0.4)
        def tick(self, s):
            if self.variant == "paced":
                with s.a:
                    s.n += 1

    @invariant("n-non-negative")
    def n_ok(self, s):
        if s.n < 0:
            return "n < 0"
'''


@pytest.fixture
def workload(tmp_path):
    p = tmp_path / "stall.py"
    p.write_text(WORKLOAD)
    return str(p)


def wait_pid(mark: str, name: str, timeout: float = 30) -> int:
    p = os.path.join(mark, name)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(p):
            return int(open(p).read())
        time.sleep(0.002)
    raise AssertionError(f"{name} never started")


def run_bg(args: list[str], out: str) -> tuple[threading.Thread, dict]:
    res: dict = {}

    def go():
        try:
            res["run"] = run_cli(args, out, timeout=60)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            res["error"] = e

    t = threading.Thread(target=go)
    t.start()
    return t, res


def finish(t: threading.Thread, res: dict, pid: int | None = None):
    t.join(70)
    if pid is not None:  # never leave a stopped process behind, whatever happened
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    assert not t.is_alive(), "the run did not end"
    if "error" in res:
        raise res["error"]
    return res["run"]


def hung_texts(r) -> list[str]:
    d = r.summary["run_dir"]
    import json
    fs = [json.loads(line) for line in open(os.path.join(d, "findings.jsonl"))]
    return [f["text"] for f in fs if f["outcome"] == "hung"]


@pytest.mark.timeout(90)
def test_waiter_names_a_stopped_holder_and_for_how_long(workload, tmp_path, runs_dir):
    mark = str(tmp_path / "mark")
    os.mkdir(mark)
    t, res = run_bg(["run", "--workload", workload, "--variant", "hold", "--duration", "25s",
                     "--hung-timeout", "2s", "--mark", mark], runs_dir)
    pid = wait_pid(mark, "holder-0")  # written while it holds A (0.7 s more) and the waiter waits
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    r = finish(t, res, pid)
    took = time.monotonic() - t0
    assert r.code == 0, r.out + r.err
    [text] = hung_texts(r)  # the waiter's report names the stopped holder: not again on its own
    assert "INFO: worker 1 blocked for more than 2 seconds" in text
    assert re.search(r"which is held by worker 0 \(holder, pid \d+\), stopped \(SIGSTOP or SIGTSTP\) "
                     r"for \d+\.\d s\.", text), text
    secs = float(re.search(r"stopped \(SIGSTOP or SIGTSTP\) for (\d+\.\d) s", text).group(1))
    assert 0.9 <= secs <= 2.5, text  # the waiter hung 2 s after its wait began, < 1 s before the stop
    assert "is not waiting for any lock; it is stopped (SIGSTOP or SIGTSTP) for" in text
    assert "(process 'stopped'" in text
    assert took < 15, "teardown waited for the stopped worker"


@pytest.mark.timeout(90)
def test_a_stopped_worker_holding_nothing_is_hung_after_the_timeout(workload, tmp_path, runs_dir):
    mark = str(tmp_path / "mark")
    os.mkdir(mark)
    t, res = run_bg(["run", "--workload", workload, "--variant", "idle", "--duration", "20s",
                     "--hung-timeout", "1s", "--mark", mark], runs_dir)
    pid = wait_pid(mark, "holder-0")
    time.sleep(0.2)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    r = finish(t, res, pid)
    assert r.code == 0, r.out + r.err
    assert r.outcomes == {"hung"}
    assert time.monotonic() - t0 < 12
    [text] = hung_texts(r)
    assert "INFO: worker 0 stopped for more than 1 seconds" in text
    assert re.search(r"worker 0 \(holder, pid \d+\) has made no progress: it is stopped "
                     r"\(SIGSTOP or SIGTSTP\) for 1\.\d s \(process 'stopped'", text), text
    assert "nobody is waiting for it." in text and "0 locks held by worker 0" in text
    assert r.summary["stop_reason"] == "finding"


@pytest.mark.timeout(90)
def test_one_operation_past_the_timeout_with_nobody_waiting_is_hung(workload, runs_dir):
    r = run_cli(["run", "--workload", workload, "--variant", "long-op", "--duration", "15s",
                 "--hung-timeout", "1s"], runs_dir, timeout=60)
    assert r.code == 0, r.out + r.err
    assert r.outcomes == {"hung"}
    [text] = hung_texts(r)
    assert "INFO: worker 0 in operation hold for more than 1 seconds" in text
    assert re.search(r"has made no progress: its process is '\w[\w-]*' \(cpu [\d.]+ s\), in operation hold "
                     r"for \d+ ms\.", text), text
    assert r.summary["elapsed_s"] < 5


@pytest.mark.timeout(90)
def test_workers_between_operations_are_never_hung(workload, runs_dir):
    """The pacer sleeps 2.5 s between its operations and everyone parks every 50 ms for
    the invariant check: past a 1 s timeout, none of that is a hang."""
    r = run_cli(["run", "--workload", workload, "--variant", "paced", "--duration", "4s",
                 "--hung-timeout", "1s"], runs_dir, timeout=60)
    assert r.code == 0, r.out + r.err
    assert r.outcomes == set() and r.summary["invariant_checks"] > 10


# -- the watchdog over a fake world, with a fake process probe ---------------------------------

class Probe:
    def __init__(self) -> None:
        self.st: dict[int, tuple[str, float]] = {}

    def __call__(self, w: int):
        return self.st.get(w, ("sleeping", 1.0))


def test_stopped_holder_named_in_the_waiter_line_and_tracked_since_first_seen():
    world = FakeWorld()
    world.own(1, 1)
    world.wait(0, 0, 1, seq=3, age_s=0.5)
    probe = Probe()
    probe.st[1] = ("stopped", 0.5)
    wd = Watchdog(world, hung_timeout_s=10.0, probe=probe)
    assert wd.scan(ALIVE) == []
    first = wd.stopped_since[1]
    time.sleep(0.06)
    wd.scan(ALIVE)
    assert wd.stopped_since[1] == first, "since it was first seen stopped"
    m = wd._member((0, 0), wd._waits(ALIVE))  # worker 0 waits for lock 1, held by worker 1 (owner 2)
    ost = m["waiting"]["owner_state"]
    assert ost["state"] == "stopped" and ost["for_s"] >= 0.05
    assert ost["text"].startswith("stopped (SIGSTOP or SIGTSTP) for ")
    probe.st[1] = ("sleeping", 0.5)
    wd.scan(ALIVE)
    assert 1 not in wd.stopped_since and wd.last_stop[1][0] == first
    assert wd.state_of(1) is None


def test_runnable_without_cpu_time_is_not_scheduled():
    world = FakeWorld()
    probe = Probe()
    probe.st[2] = ("running", 3.0)
    wd = Watchdog(world, hung_timeout_s=10.0, probe=probe)
    wd.scan(ALIVE)
    assert wd.state_of(2) is None, "one sample says nothing of progress"
    wd.scan(ALIVE)
    st = wd.state_of(2)
    assert st["state"] == "not-scheduled" and "runnable but not scheduled" in st["text"]
    probe.st[2] = ("running", 3.1)
    wd.scan(ALIVE)
    assert wd.state_of(2) is None


def test_stopped_past_the_timeout_is_reported_once_per_stop():
    world = FakeWorld()
    probe = Probe()
    probe.st[3] = ("stopped", 1.0)
    wd = Watchdog(world, hung_timeout_s=0.05, probe=probe)
    assert wd.scan(ALIVE) == []
    time.sleep(0.08)
    [f] = wd.scan(ALIVE)
    assert f.outcome == "hung" and f.details["kind"] == "stopped" and f.details["holder"]["worker"] == 3
    assert f.title == "INFO: worker 3 stopped for more than 0.05 seconds"
    time.sleep(0.06)
    assert wd.scan(ALIVE) == [], "reported once"
    probe.st[3] = ("sleeping", 1.0)
    wd.scan(ALIVE)
    probe.st[3] = ("stopped", 1.0)  # a new stop is a new report
    wd.scan(ALIVE)
    time.sleep(0.08)
    assert [f.details["kind"] for f in wd.scan(ALIVE)] == ["stopped"]


def test_long_operation_reported_once_and_not_again_when_it_is_stopped():
    world = FakeWorld()
    ws = world.geo.wslot(1)
    world.mv[ws + W_OP] = 0
    world.mv[ws + W_OP_START] = now_ns() - int(2e9)
    probe = Probe()
    wd = Watchdog(world, hung_timeout_s=1.0, probe=probe)
    [f] = wd.scan(ALIVE)
    assert f.details["kind"] == "in-operation" and "in operation migrate" in f.title
    probe.st[1] = ("stopped", 1.0)
    wd.scan(ALIVE)
    wd.stopped_since[1] -= int(2e9)  # stopped 2 s in the same operation: the same stall
    assert wd.scan(ALIVE) == []


def test_long_operation_with_a_waiter_is_the_waiters_report_and_between_ops_is_never():
    world = FakeWorld()
    ws = world.geo.wslot(1)
    world.mv[ws + W_OP] = 0
    world.mv[ws + W_OP_START] = now_ns() - int(5e9)
    world.own(1, 1)
    world.wait(0, 0, 1, age_s=0.1)  # waiting, but not yet for long
    wd = Watchdog(world, hung_timeout_s=1.0, probe=Probe())
    assert wd.scan(ALIVE) == []
    world.stop_waiting(0)
    world.mv[ws + W_OP] = -1  # between operations (paced sleep, parked): never hung
    assert wd.scan(ALIVE) == []


def test_a_holder_stopped_during_the_wait_and_running_again_says_so():
    """The issue's case: the holder was stopped, then continued; the report must not say
    only 'running'."""
    world = FakeWorld()
    world.own(1, 1)
    world.wait(0, 0, 1, seq=7, age_s=2.0)
    probe = Probe()
    probe.st[1] = ("stopped", 1.0)
    wd = Watchdog(world, hung_timeout_s=10.0, probe=probe)
    wd.scan(ALIVE)
    time.sleep(0.05)
    probe.st[1] = ("sleeping", 1.0)  # SIGCONT: it runs again (and sleeps in its operation)
    wd.scan(ALIVE)
    wd.hung_ns = int(1e9)
    [f] = wd.scan(ALIVE)
    h = f.details["holder"]
    assert "state" not in h and h["earlier_stop"]["for_s"] >= 0.04
    from stress.splat import render
    text = render(f, {0: "worker 0 (cpu, pid 10)", 1: "worker 1 (cpu, pid 11)"})
    assert "worker 1 (cpu, pid 11) is not waiting for any lock; its process is 'sleeping'" in text
    assert re.search(r"\(it was stopped for 0\.\d s, until 0\.\d s ago\.\)", text), text
