"""Unit tests of the wait-for-graph watchdog (stress.watchdog) over a fake world: waiting
records and lock owners are written by hand into a plain buffer laid out like the arena."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shm_model.records import SPIN, WAIT_SEQ, publish_wait, withdraw_wait
from shm_model.arena import (L_OWNER, L_SINCE, L_SITE, NO_OWNER, W_IN_IRQ, W_OP, W_OP_START, 
                             Geometry)
from shm_model.layout import LockDecl
from stress.findings import now_ns
from stress.watchdog import Watchdog

SELF = "BUG: deadlock: context waits for a lock it holds itself"


class FakeWorld:
    def __init__(self, n_workers: int = 4, n_locks: int = 4) -> None:
        self.geo = Geometry(n_workers, n_locks, n_locks, 0, trace_events=1)
        self.mv = memoryview(bytearray(8 * self.geo.total_words)).cast("q")
        self.plan = SimpleNamespace(locks=[LockDecl(i, f"C{i}", f"locks[{i}]") for i in range(n_locks)])
        self.ops = [SimpleNamespace(spec=SimpleNamespace(name="migrate"))]
        self.process_calls: list[int] = []
        for w in range(n_workers):
            ws = self.geo.wslot(w)
            self.mv[ws + W_OP] = -1
            self.mv[self.geo.wait_slot(w, 0)] = self.mv[self.geo.wait_slot(w, 1)] = -1
        for lk in range(n_locks):
            self.mv[self.geo.lslot(lk) + L_OWNER] = NO_OWNER

    def site(self, key: int) -> str:
        return f"site#{key}"

    def process_state(self, w: int) -> dict:
        self.process_calls.append(w)
        return {"status": "sleeping"}

    # -- writing the arena as workers do --
    def own(self, lock: int, w: int, ctx: int = 0) -> None:
        s = self.geo.lslot(lock)
        self.mv[s + L_OWNER] = 2 * w + ctx
        self.mv[s + L_SITE] = 100 + lock
        self.mv[s + L_SINCE] = now_ns()

    def wait(self, w: int, ctx: int, lock: int, seq: int = 1, age_s: float = 0.0, mode: int = SPIN) -> None:
        b = self.geo.wait_slot(w, ctx)
        publish_wait(self.mv, b, lock, mode, 200 + lock, now_ns() - int(age_s * 1e9), [])
        self.mv[b + WAIT_SEQ] = seq

    def stop_waiting(self, w: int, ctx: int = 0) -> None:
        withdraw_wait(self.mv, self.geo.wait_slot(w, ctx))

    def set_seq(self, w: int, ctx: int, seq: int) -> None:
        self.mv[self.geo.wait_slot(w, ctx) + WAIT_SEQ] = seq

    def in_irq(self, w: int, on: bool = True) -> None:
        self.mv[self.geo.wslot(w) + W_IN_IRQ] = int(on)


ALIVE = [True] * 4


def deadlocks(fs) -> list:
    return [f for f in fs if f.outcome == "deadlock"]


def cycle_one(world: FakeWorld) -> set:
    world.own(0, 0)
    world.wait(0, 0, 0)  # worker 0 waits for the lock it holds
    return {(0, "task")}


def cycle_two(world: FakeWorld) -> set:
    world.own(0, 0)
    world.own(1, 1)
    world.wait(0, 0, 1)
    world.wait(1, 0, 0)
    return {(0, "task"), (1, "task")}


def cycle_three(world: FakeWorld) -> set:
    for w in range(3):
        world.own(w, w)
        world.wait(w, 0, (w + 1) % 3)
    return {(0, "task"), (1, "task"), (2, "task")}


def cycle_isr(world: FakeWorld) -> set:
    world.own(2, 1)  # worker 1's task holds lock 2
    world.in_irq(1)  # ... was interrupted
    world.wait(1, 1, 2)  # ... and its ISR waits for lock 2
    return {(1, "task"), (1, "irq")}


CASES = {"self": (cycle_one, SELF), "two": (cycle_two, "BUG: deadlock: circular wait among 2 contexts"),
         "three": (cycle_three, "BUG: deadlock: circular wait among 3 contexts"), "isr": (cycle_isr, SELF)}


@pytest.mark.parametrize("case", list(CASES))
def test_deadlock_only_on_the_second_unchanged_scan(case):
    world = FakeWorld()
    make, title = CASES[case]
    members = make(world)
    wd = Watchdog(world, hung_timeout_s=1000)
    assert deadlocks(wd.scan(ALIVE)) == [], "one scan is not enough: the cycle may be moving"
    found = deadlocks(wd.scan(ALIVE))
    assert len(found) == 1
    f = found[0]
    assert f.title == title and f.worker == -1 and f.ends_run
    got = {(m["worker"], m["ctx"]) for m in f.details["members"]}
    assert got == members
    for m in f.details["members"]:
        if "waiting" in m:
            assert m["waiting"]["owner"] in {2 * w + (c == "irq") for w, c in members}
    assert deadlocks(wd.scan(ALIVE)) == [], "reported once"


def test_isr_case_members_show_the_interrupted_task():
    world = FakeWorld()
    cycle_isr(world)
    wd = Watchdog(world, hung_timeout_s=1000)
    wd.scan(ALIVE)
    [f] = deadlocks(wd.scan(ALIVE))
    by = {m["ctx"]: m for m in f.details["members"]}
    assert by["task"].get("interrupted") is True and "waiting" not in by["task"]
    assert by["task"]["holds"][0]["lock"] == "locks[2]"
    assert by["irq"]["waiting"]["lock"] == "locks[2]" and by["irq"]["waiting"]["owner"] == 2
    assert by["irq"]["waiting"]["site"] == "site#202"


def test_no_interrupt_no_isr_edge():
    world = FakeWorld()
    cycle_isr(world)
    world.in_irq(1, False)  # the ISR context waits, but the task is not interrupted: no cycle
    wd = Watchdog(world, hung_timeout_s=1000)
    assert deadlocks(wd.scan(ALIVE) + wd.scan(ALIVE)) == []


@pytest.mark.parametrize("case", list(CASES))
def test_no_deadlock_if_a_wait_seq_changed_between_scans(case):
    world = FakeWorld()
    make, _ = CASES[case]
    make(world)
    w = 1 if case == "isr" else 0
    c = 1 if case == "isr" else 0
    wd = Watchdog(world, hung_timeout_s=1000)
    assert deadlocks(wd.scan(ALIVE)) == []
    world.set_seq(w, c, 2)  # that context left its wait and came back: it moved
    assert deadlocks(wd.scan(ALIVE)) == []
    assert len(deadlocks(wd.scan(ALIVE))) == 1, "unchanged since the previous scan: now it is one"


def test_no_deadlock_if_the_cycle_broke_between_scans():
    world = FakeWorld()
    cycle_two(world)
    wd = Watchdog(world, hung_timeout_s=1000)
    assert deadlocks(wd.scan(ALIVE)) == []
    world.stop_waiting(1)
    assert deadlocks(wd.scan(ALIVE)) == []
    world.wait(1, 0, 0, seq=2)
    assert deadlocks(wd.scan(ALIVE)) == []
    assert len(deadlocks(wd.scan(ALIVE))) == 1


def test_a_chain_is_not_a_cycle():
    world = FakeWorld()
    world.own(1, 1)
    world.own(2, 2)
    world.wait(0, 0, 1)
    world.wait(1, 0, 2)  # 0 -> 1 -> 2, and 2 is running
    wd = Watchdog(world, hung_timeout_s=1000)
    for _ in range(3):
        assert wd.scan(ALIVE) == []


def test_two_separate_cycles_both_reported():
    world = FakeWorld()
    cycle_two(world)  # workers 0, 1 over locks 0, 1
    world.own(2, 2)
    world.wait(2, 0, 2)  # worker 2 waits for itself
    wd = Watchdog(world, hung_timeout_s=1000)
    wd.scan(ALIVE)
    found = deadlocks(wd.scan(ALIVE))
    assert sorted(f.signature for f in found) == ["deadlock:0.0,1.0", "deadlock:2.0"]


def test_waiting_for_a_cycle_member_is_not_a_member():
    world = FakeWorld()
    cycle_two(world)
    world.wait(3, 0, 0)  # worker 3 also waits for lock 0
    wd = Watchdog(world, hung_timeout_s=1000)
    wd.scan(ALIVE)
    [f] = deadlocks(wd.scan(ALIVE))
    assert {m["worker"] for m in f.details["members"]} == {0, 1}


def test_dead_holder():
    world = FakeWorld()
    world.own(1, 1)  # worker 1 holds lock 1 ...
    world.own(3, 1, ctx=1)  # ... and its ISR lock 3
    world.wait(0, 0, 1, age_s=5)
    alive = [True, False, True, True]
    wd = Watchdog(world, hung_timeout_s=1)
    fs = wd.scan(alive)
    assert [f.outcome for f in fs] == ["held-by-dead-worker"], "a dead holder, not a hang"
    d = fs[0].details
    assert d["dead"] == 1
    assert sorted(h["lock"] for h in d["holds"]) == ["locks[1]", "locks[3]"]
    assert [m["worker"] for m in d["waiters"]] == [0]
    assert d["holds"][0]["site"].startswith("site#")
    assert wd.scan(alive) == [], "reported once"
    assert world.process_calls == []


def test_no_dead_holder_when_all_alive_or_nothing_held():
    world = FakeWorld()
    world.own(1, 1)
    wd = Watchdog(world, hung_timeout_s=1000)
    assert wd.scan(ALIVE) == []
    world.mv[world.geo.lslot(1) + L_OWNER] = NO_OWNER
    assert wd.scan([True, False, True, True]) == []


def test_dead_worker_waits_are_ignored():
    world = FakeWorld()
    cycle_two(world)
    wd = Watchdog(world, hung_timeout_s=1000)
    alive = [True, False, True, True]
    fs = wd.scan(alive) + wd.scan(alive)
    assert deadlocks(fs) == []
    assert [f.outcome for f in fs] == ["held-by-dead-worker"]


def test_hung_when_the_holder_is_not_waiting():
    world = FakeWorld()
    world.own(1, 1)
    world.mv[world.geo.wslot(1) + W_OP] = 0
    world.mv[world.geo.wslot(1) + W_OP_START] = now_ns()
    world.wait(0, 0, 1, seq=4, age_s=2.0)
    wd = Watchdog(world, hung_timeout_s=1.0)
    fs = wd.scan(ALIVE)
    assert [f.outcome for f in fs] == ["hung"]
    f = fs[0]
    assert f.signature == "hung:(0, 0):4" and "more than 1 seconds" in f.title
    assert [m["worker"] for m in f.details["blocked"]] == [0]
    assert f.details["blocked"][0]["waiting"]["for_ms"] >= 2000
    h = f.details["holder"]
    assert h["worker"] == 1 and h["op"] == "migrate" and "waiting" not in h
    assert h["holds"][0]["lock"] == "locks[1]" and h["process"] == {"status": "sleeping"}
    assert world.process_calls == [1]
    assert wd.scan(ALIVE) == [], "reported once per wait"
    world.wait(0, 0, 1, seq=5, age_s=2.0)  # a new wait that hangs again is a new report
    assert [f.outcome for f in wd.scan(ALIVE)] == ["hung"]


def test_not_hung_before_the_timeout():
    world = FakeWorld()
    world.own(1, 1)
    world.wait(0, 0, 1, age_s=0.0)
    wd = Watchdog(world, hung_timeout_s=10.0)
    assert wd.scan(ALIVE) == [] and wd.scan(ALIVE) == []
    assert world.process_calls == []


def test_hung_follows_the_chain_to_a_holder_that_is_not_waiting():
    world = FakeWorld()
    world.own(1, 1)
    world.own(2, 2)
    world.wait(0, 0, 1, age_s=3)
    world.wait(1, 0, 2, age_s=0)  # worker 1 only just started waiting
    wd = Watchdog(world, hung_timeout_s=1)
    fs = wd.scan(ALIVE)
    assert [f.outcome for f in fs] == ["hung"]
    assert [m["worker"] for m in fs[0].details["blocked"]] == [0, 1]
    assert fs[0].details["holder"]["worker"] == 2


def test_old_waits_in_a_cycle_are_deadlocks_not_hangs():
    world = FakeWorld()
    world.own(0, 0)
    world.own(1, 1)
    world.wait(0, 0, 1, age_s=5)
    world.wait(1, 0, 0, age_s=5)
    wd = Watchdog(world, hung_timeout_s=1)
    assert wd.scan(ALIVE) == []
    assert [f.outcome for f in wd.scan(ALIVE)] == ["deadlock"]


def test_wait_for_a_lock_with_no_owner_is_neither():
    world = FakeWorld()
    world.wait(0, 0, 1, age_s=5)  # owner not written yet (between sem_wait and the owner write)
    wd = Watchdog(world, hung_timeout_s=1)
    assert wd.scan(ALIVE) == [] and wd.scan(ALIVE) == []


def test_cycle_through_an_isr_and_another_worker():
    """(0, irq) waits for lock 1 held by worker 1's task, which waits for lock 0 held by
    worker 0's interrupted task: three contexts, two workers."""
    world = FakeWorld()
    world.own(0, 0)
    world.own(1, 1)
    world.in_irq(0)
    world.wait(0, 1, 1)
    world.wait(1, 0, 0)
    wd = Watchdog(world, hung_timeout_s=1000)
    assert deadlocks(wd.scan(ALIVE)) == []
    [f] = deadlocks(wd.scan(ALIVE))
    assert f.title == "BUG: deadlock: circular wait among 3 contexts"
    assert {(m["worker"], m["ctx"]) for m in f.details["members"]} == {(0, "task"), (0, "irq"), (1, "task")}
    assert f.signature == "deadlock:0.0,0.1,1.0"


def test_cycle_through_an_interrupted_holder_draws_the_interrupt_in_its_tasks_column():
    """A wait cycle whose holder is an interrupted task (migration-storm with moving vCPUs:
    worker 1's task holds gicv2.lock, its interrupt handler waits for worker 0's vgic lock,
    worker 0 waits for gicv2.lock): the scenario is drawn as lockdep draws an interrupt, in
    the column of the CPU it hit, and the interrupted task takes nothing but its own lock."""
    from stress.splat import _cycle_scenario, _scenario

    roster = {0: "worker 0 (vcpu, pid 11)", 1: "worker 1 (vcpu, pid 12)"}
    members = [{"worker": 0, "ctx": "task", "owner": 0, "waiting": {"cls": "&gicv2.lock", "owner": 2}},
               {"worker": 1, "ctx": "task", "owner": 2},
               {"worker": 1, "ctx": "irq", "owner": 3, "waiting": {"cls": "&v->arch.vgic.lock", "owner": 0}}]
    text = "\n".join(_scenario(*_cycle_scenario(members, roster)))
    assert "?" not in text and text.count("----") == 2, text
    rows = [r for r in text.splitlines()[5:] if r.strip()]
    assert [r.strip() for r in rows] == ["lock(&v->arch.vgic.lock);", "lock(&gicv2.lock);", "lock(&gicv2.lock);",
                                         "<Interrupt>", "lock(&v->arch.vgic.lock);"], text
    assert rows[0].startswith("  lock") and rows[2].startswith("  lock")  # worker 0's column
    assert all(r.startswith(" " * 30) for r in (rows[1], rows[3], rows[4]))  # worker 1's, the handler indented
    assert rows[4].index("lock") == rows[3].index("<Interrupt>") + 2
