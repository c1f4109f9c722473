"""Unit tests of the arena (shm_model.arena): IPC object lifecycle, permissions, the orphan
sweep and the initial contents of the segment."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import posix_ipc
import pytest

from conftest import stress_objects
from shm_model.records import WAIT_CALLER0
from shm_model.arena import (H_MAGIC, H_NCLASSES, H_NLOCKS, H_NWORKERS, H_PID, MAGIC, PREFIX, SHM_DIR,
                             SCHED_WORDS, W_OP, W_SCHED_HAS_ISR, W_SCHED_STATE, W_WAIT, WAIT_CALLERS, WAIT_WORDS, WSLOT, Arena, Geometry,
                             _run_of_entry, list_objects, new_run_id, pid_of_run, sweep_orphans)


def own_objects() -> set[str]:
    """This process's stress objects (run ids embed the creating pid; other runs, e.g. a
    concurrent ``stress run``, may come and go meanwhile)."""
    return {e for e in stress_objects() if f"-{os.getpid()}-" in e}


@pytest.fixture(autouse=True)
def no_leaks():
    before = own_objects()
    yield
    leaked = own_objects() - before
    assert not leaked, f"IPC objects left in /dev/shm: {sorted(leaked)}"


@pytest.fixture
def make_arena(no_leaks):
    made: list[Arena] = []

    def make(n_workers: int = 2, n_locks: int = 3, n_classes: int = 2, state_words: int = 4) -> Arena:
        a = Arena(new_run_id(), Geometry(n_workers, n_locks, n_classes, state_words, trace_events=16))
        made.append(a)
        return a

    yield make
    for a in made:
        a.destroy()


def present(names) -> set[str]:
    return {n for n in names if os.path.exists(os.path.join(SHM_DIR, n))}


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    for _ in range(20):
        p = subprocess.Popen(["true"])
        p.wait()
        try:
            os.kill(p.pid, 0)
        except ProcessLookupError:
            return p.pid
    pytest.skip("could not find a dead pid (pid reused at once)")


# ---- geometry -----------------------------------------------------------------------------

def test_geometry_regions_are_ordered_and_disjoint():
    g = Geometry(3, 5, 4, 10, trace_events=8)
    starts = [g.workers, g.ops, g.stats, g.hists, g.locks, g.rholds, g.classes, g.graph, g.irq_rings, g.traces, g.sched,
              g.state, g.total_words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert g.total_words - g.state == 10
    assert g.wslot(2) + WSLOT == g.ops
    assert g.wait_slot(2, 1) + WAIT_WORDS == g.ops and WAIT_CALLER0 + WAIT_CALLERS <= WAIT_WORDS
    assert g.ring(3, 2) + g.ring_words == g.traces  # the coordinator's ring to the last worker
    assert g.trace(2) + g.trace_words == g.sched
    assert g.sched + SCHED_WORDS == g.state
    assert W_SCHED_HAS_ISR < W_WAIT  # the scheduler's words end before the waiting records
    assert g.rholds == g.locks + 5 * 8 and g.rhslot(4, 5) + 3 == g.classes  # a read-hold record per (lock, owner)


def test_run_id_names_its_coordinator():
    rid = new_run_id()
    assert pid_of_run(rid) == os.getpid()
    assert _run_of_entry(f"sem.{PREFIX}{rid}-l12") == rid
    assert _run_of_entry(f"{PREFIX}{rid}") == rid
    assert _run_of_entry(f"{PREFIX}{rid}-g") == rid
    assert _run_of_entry("other-thing") is None
    assert pid_of_run("garbage") is None


# ---- lifecycle ----------------------------------------------------------------------------

def test_create_then_destroy_leaves_nothing():
    before = own_objects()
    a = Arena(new_run_id(), Geometry(2, 3, 2, 4, trace_events=16))
    try:
        names = a.names()
        assert len(names) == 1 + 1 + 3 + 2 + 1  # segment, graph semaphore, 3 locks, 2 run tokens, the liveness file
        assert present(names) == set(names)
        assert own_objects() - before == set(names)
        assert {e for e, run in list_objects() if run == a.run_id} == set(names)
    finally:
        a.destroy()
    assert present(names) == set()
    assert own_objects() == before


def test_objects_are_mode_0600(make_arena):
    a = make_arena()
    for n in a.names():
        st = os.stat(os.path.join(SHM_DIR, n))
        assert stat.S_IMODE(st.st_mode) == 0o600, n
        assert st.st_uid == os.getuid()


def test_segment_size_and_initial_contents(make_arena):
    a = make_arena(n_workers=3)
    g = a.geo
    assert os.stat(os.path.join(SHM_DIR, a.names()[0])).st_size == g.total_words * 8
    assert len(a.mv) == g.total_words
    assert a.mv[H_MAGIC] == MAGIC and a.mv[H_PID] == os.getpid()
    assert (a.mv[H_NWORKERS], a.mv[H_NLOCKS], a.mv[H_NCLASSES]) == (3, 3, 2)
    for w in range(3):
        ws = g.wslot(w)
        assert a.mv[ws + W_OP] == -1, "no operation"
        assert a.mv[g.wait_slot(w, 0)] == -1 and a.mv[g.wait_slot(w, 1)] == -1, "not waiting, either context"
        assert list(a.mv[g.wait_slot(w, 0) + 1: g.wait_slot(w, 0) + WAIT_WORDS]) == [0] * (WAIT_WORDS - 1)
    assert all(s.value == 1 for s in a.sems) and a.graph_sem.value == 1
    assert not any(a.mv[g.graph: g.irq_rings])  # no edges
    assert not any(a.mv[g.state:])


def test_destroy_is_idempotent(make_arena):
    a = make_arena()
    names = a.names()
    a.destroy()
    a.destroy()
    assert present(names) == set()
    assert a.sems == [] and a.graph_sem is None


def test_destroy_with_views_still_exported(make_arena):
    a = make_arena()
    names = a.names()
    view = a.mv[a.geo.state: a.geo.state + 2]  # e.g. an Array(Int) view of the model state
    a.destroy()
    assert present(names) == set()
    del view


def test_create_collision_cleans_up_what_it_made(make_arena):
    a = make_arena()
    # a second arena with the same name fails on the segment and must not unlink the first's
    with pytest.raises(posix_ipc.ExistentialError):
        Arena(a.run_id, a.geo)
    assert present(a.names()) == set(a.names())


def test_create_failure_midway_unlinks_partial_objects(make_arena):
    a = make_arena()
    rid = new_run_id() + "x"
    # pre-create the lock-1 semaphore of the next arena: its creation fails half way
    blocker = posix_ipc.Semaphore(f"/{PREFIX}{rid}-l1", posix_ipc.O_CREX, mode=0o600, initial_value=1)
    try:
        with pytest.raises(posix_ipc.ExistentialError):
            Arena(rid, a.geo)
        left = {e for e, run in list_objects() if run == rid}
        assert left == {f"sem.{PREFIX}{rid}-l1"}, "segment, graph and lock-0 semaphores must be gone"
    finally:
        blocker.unlink()
        blocker.close()


@pytest.mark.timeout(30)
def test_forked_child_destroy_does_not_unlink(make_arena):
    a = make_arena()
    names = a.names()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            a.destroy()
            code = 0 if present(names) == set(names) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert present(names) == set(names)
    a.mv[H_PID] = 1234  # the mapping still works in the owner
    assert a.mv[H_PID] == 1234
    a.destroy()
    assert present(names) == set()


# ---- orphan sweep -------------------------------------------------------------------------

def _make_objects(run_id: str) -> list:
    base = f"/{PREFIX}{run_id}"
    objs = [posix_ipc.SharedMemory(base, posix_ipc.O_CREX, mode=0o600, size=4096)]
    objs[0].close_fd()
    objs += [posix_ipc.Semaphore(f"{base}-g", posix_ipc.O_CREX, mode=0o600, initial_value=1),
             posix_ipc.Semaphore(f"{base}-l0", posix_ipc.O_CREX, mode=0o600, initial_value=1)]
    return objs


def _names(run_id: str) -> set[str]:
    n = f"{PREFIX}{run_id}"
    return {n, f"sem.{n}-g", f"sem.{n}-l0"}


def _unlink(objs) -> None:
    for o in objs:
        try:
            o.unlink()
        except posix_ipc.ExistentialError:
            pass
        if isinstance(o, posix_ipc.Semaphore):
            o.close()


@pytest.mark.timeout(30)
def test_sweep_removes_dead_runs_only(make_arena):
    own = make_arena()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dead = f"{stamp}-{dead_pid()}-dead00"
    live_child = subprocess.Popen(["sleep", "30"])
    live = f"{stamp}-{live_child.pid}-live00"
    objs = []
    try:
        objs += _make_objects(dead)
        objs += _make_objects(live)
        assert present(_names(dead) | _names(live)) == _names(dead) | _names(live)
        removed = sweep_orphans()
        assert _names(dead) <= set(removed)
        assert present(_names(dead)) == set()
        assert present(_names(live)) == _names(live), "a live coordinator's run was swept"
        assert present(own.names()) == set(own.names()), "our own run was swept"
        assert not (set(removed) & (_names(live) | set(own.names())))
    finally:
        _unlink(objs)
        live_child.kill()
        live_child.wait()
    assert present(_names(dead) | _names(live)) == set()


def test_sweep_in_a_directory(tmp_path):
    """sweep_orphans over a plain directory: parsing of entry names and include_live."""
    stamp = "20240101T000000"
    dpid = dead_pid()
    entries = {
        f"{PREFIX}{stamp}-{dpid}-aaaaaa": True,
        f"sem.{PREFIX}{stamp}-{dpid}-aaaaaa-l3": True,
        f"sem.{PREFIX}{stamp}-{dpid}-aaaaaa-g": True,
        f"{PREFIX}{stamp}-{os.getpid()}-bbbbbb": False,
        f"sem.{PREFIX}{stamp}-1-cccccc-l0": False,  # init is alive
        "unrelated": False,
        "sem.other-123": False,
        f"{PREFIX}short": False,
    }
    for e in entries:
        (tmp_path / e).write_text("")
    removed = sweep_orphans(str(tmp_path))
    assert sorted(removed) == sorted(e for e, gone in entries.items() if gone)
    assert sorted(os.listdir(tmp_path)) == sorted(e for e, gone in entries.items() if not gone)
    removed = sweep_orphans(str(tmp_path), include_live=True)
    assert sorted(os.listdir(tmp_path)) == ["sem.other-123", f"{PREFIX}short", "unrelated"]


def test_sweep_of_missing_directory(tmp_path):
    assert sweep_orphans(str(tmp_path / "nope")) == []
