"""Unit and property tests of lockdep's class graph (stress.lockdep): path search over the
edge table, and validation of held-class chains through real instrumented locks."""

from __future__ import annotations

import os
from collections import deque
from types import SimpleNamespace

import posix_ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import stress_objects
from shm_model.arena import (C_IN_IRQ, C_IRQ_ON, C_REPORTED, E_FROM_SITE, E_GUARD, E_SEQ, E_TO_SITE,
                             E_WORKER, H_EDGE_SEQ, H_EDGES, IRQ_RING, PREFIX, W_CHAIN_MISS, Arena, Geometry,
                             new_run_id)
from shm_model.cpu import Cpu
from shm_model.spinlock import Lock, spin_lock_irqsave, spin_lock_nested, spin_unlock, spin_unlock_irqrestore
from stress.lockdep import Lockdep

CIRCULAR = "WARNING: possible circular locking dependency detected"
MAXN = 8


def own_objects() -> set[str]:
    return {e for e in stress_objects() if f"-{os.getpid()}-" in e}


@pytest.fixture(autouse=True)
def no_leaks():
    before = own_objects()
    yield
    leaked = own_objects() - before
    assert not leaked, f"IPC objects left in /dev/shm: {sorted(leaked)}"


# ---- the graph alone: a fake world over a plain buffer -------------------------------------

class GraphWorld:
    """What Lockdep reads of a World: mv, geo, arena.graph_sem, class_names, site()."""

    def __init__(self, n: int, sem: posix_ipc.Semaphore) -> None:
        self.geo = Geometry(1, 0, n, 0, trace_events=1)
        self.mv = memoryview(bytearray(8 * self.geo.total_words)).cast("q")
        self.arena = SimpleNamespace(graph_sem=sem)
        self.class_names = [chr(ord("A") + i) for i in range(n)]

    def site(self, key: int) -> str:
        return f"site#{key}"


@pytest.fixture(scope="module")
def graph_sem():
    sem = posix_ipc.Semaphore(f"/{PREFIX}{new_run_id()}-g", posix_ipc.O_CREX, mode=0o600, initial_value=1)
    sem.unlink()  # usable until closed; nothing stays in /dev/shm whatever happens
    yield sem
    sem.close()


def graphs(max_n: int = MAXN):
    return st.integers(1, max_n).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                                                max_size=n * n)))


def distances(n: int, edges: set, src: int) -> dict[int, int]:
    """Reference: BFS distances from src (src itself at 0)."""
    dist = {src: 0}
    q = deque([src])
    while q:
        x = q.popleft()
        for a, b in edges:
            if a == x and b not in dist:
                dist[b] = dist[x] + 1
                q.append(b)
    return dist


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_property_path_iff_reachable_and_shortest(graph_sem, g):
    n, edges = g
    world = GraphWorld(n, graph_sem)
    ld = Lockdep(world, report=lambda f: None)
    for i, (a, b) in enumerate(sorted(edges)):
        world.mv[world.geo.eslot(a, b) + E_SEQ] = i + 1
    # a record with other fields set but no E_SEQ is not an edge
    for a in range(n):
        for b in range(n):
            if (a, b) not in edges:
                world.mv[world.geo.eslot(a, b) + E_GUARD] = -1
                world.mv[world.geo.eslot(a, b) + E_FROM_SITE] = 5
    for a in range(n):
        dist = distances(n, edges, a)
        for b in range(n):
            path = ld._path(a, b)
            if b not in dist:
                assert path is None, (a, b, path)
                continue
            assert path is not None, (a, b)
            assert path[0] == a and path[-1] == b
            assert len(path) - 1 == dist[b], "not a shortest path"
            assert all((x, y) in edges for x, y in zip(path, path[1:]))
            assert len(set(path)) == len(path)
        fwd = ld._reach(a, forward=True)
        assert set(fwd) == set(dist)
        for y, x in fwd.items():  # predecessors lie on shortest paths
            assert (y == a and x == -1) or ((x, y) in edges and dist[x] + 1 == dist[y])
        back = ld._reach(a, forward=False)
        assert set(back) == {x for x in range(n) if a in distances(n, edges, x)}


def test_path_on_an_empty_graph(graph_sem):
    world = GraphWorld(3, graph_sem)
    ld = Lockdep(world, report=lambda f: None)
    assert ld._path(0, 0) == [0]
    assert ld._path(0, 1) is None
    world.mv[world.geo.eslot(0, 1) + E_SEQ] = 1
    world.mv[world.geo.eslot(1, 2) + E_SEQ] = 2
    assert ld._path(0, 2) == [0, 1, 2] and ld._path(2, 0) is None


# ---- validation through real locks ----------------------------------------------------------

NAMES = ["A", "B", "C", "D", "G", "L"]


class Engine:
    """Stands in for WorkerHooks: lockdep for chains, a list for findings."""

    def __init__(self, ld: Lockdep) -> None:
        self.ld = ld
        self.model_findings: list = []

    def new_chain(self, cpu, lock, key, held, irqs_on, trylock):
        return self.ld.new_chain(cpu, lock, key, held, irqs_on, trylock)

    def irqs_enabled_holding(self, cpu):
        self.ld.irqs_enabled_holding(cpu)

    def finding(self, cpu, outcome, title, details):
        self.model_findings.append((outcome, title, details))


class LdRig:
    def __init__(self) -> None:
        locks = [(n, n) for n in NAMES] + [("A2", "A"), ("G2", "G")]
        self.geo = Geometry(2, len(locks), len(NAMES), 0, trace_events=64)
        self.arena = Arena(new_run_id(), self.geo)
        self.mv = self.arena.mv
        self.class_names = list(NAMES)
        self.reports: list = []
        self.lockdep = Lockdep(self, self.reports.append)
        self.engine = Engine(self.lockdep)
        self.cpu = Cpu(self.mv, self.geo, 0, self.engine)
        self.locks = {}
        for i, (name, cls) in enumerate(locks):
            lk = Lock(i, NAMES.index(cls), cls, name.lower(), self.arena.sems[i], self.mv, self.geo)
            lk.bind(self.cpu)
            self.locks[name] = lk

    def site(self, key: int) -> str:  # World.site
        return f"site#{key}"

    def __getitem__(self, name: str) -> Lock:
        return self.locks[name]

    def take(self, *names: str) -> None:
        """Take the locks in order, then release them in reverse."""
        for n in names:
            self.locks[n].lock()
        for n in reversed(names):
            self.locks[n].unlock()

    def edge(self, a: str, b: str, field: int = E_SEQ) -> int:
        return self.mv[self.geo.eslot(NAMES.index(a), NAMES.index(b)) + field]

    def usage(self, c: str, bit: int) -> int:
        return self.mv[self.geo.cslot(NAMES.index(c)) + bit]

    def isr_takes(self, *names: str) -> None:
        """Run an interrupt on the CPU whose handler takes ``names`` (nested)."""
        self.cpu.isr = lambda irq: self.take(*names)
        r = self.geo.ring(self.geo.n_workers, 0)
        head = self.mv[r]
        self.mv[r + 2 + head % IRQ_RING] = 1
        self.mv[r] = head + 1
        self.cpu.run_irqs()

    def titles(self) -> list[str]:
        return [f.title for f in self.reports]


@pytest.fixture
def ld(no_leaks):
    r = LdRig()
    try:
        yield r
    finally:
        r.arena.destroy()


def test_nesting_records_edges_with_sites_and_worker(ld):
    ld.take("A", "B")
    assert ld.edge("A", "B") == 1 and ld.mv[H_EDGE_SEQ] == 1 and ld.mv[H_EDGES] == 1
    assert ld.edge("B", "A") == 0
    assert ld.edge("A", "B", E_WORKER) == 0 and ld.edge("A", "B", E_GUARD) == 0
    assert ld.edge("A", "B", E_FROM_SITE) != 0 and ld.edge("A", "B", E_TO_SITE) != 0
    ld.take("A", "B", "C")
    assert ld.edge("A", "C") == 2 and ld.edge("B", "C") == 3 and ld.mv[H_EDGES] == 3  # held order
    assert ld.edge("B", "C", E_GUARD) == 1 << NAMES.index("A"), "A was held outside B"
    assert ld.mv[ld.geo.wslot(0) + W_CHAIN_MISS] == 3  # (A), (A, B), (A, B, C)
    assert ld.reports == [] and ld.engine.model_findings == []


def test_abba_is_a_circular_dependency(ld):
    ld.take("A", "B")
    assert ld.reports == []
    ld.take("B", "A")
    assert ld.titles() == [CIRCULAR]
    f = ld.reports[0]
    assert f.outcome == "lock-order-inversion" and f.potential and not f.info
    assert f.details["cycle"] == ["A", "B", "A"]
    assert f.details["new_edge"]["from"] == "B" and f.details["new_edge"]["to"] == "A"
    assert [(e["from"], e["to"]) for e in f.details["chain"]] == [("A", "B")]
    assert f.details["acquiring"]["lock"] == "a" and f.details["holding"]["lock"] == "b"
    assert isinstance(f.details["acquiring"]["site"], str), "sites resolved for the report"
    assert ld.mv[H_EDGES] == 2
    ld.take("B", "A")  # cached chain: not validated, not reported again
    ld.take("A", "B")
    assert len(ld.reports) == 1


@pytest.mark.parametrize("orders,cycle", [
    ([("A", "B"), ("B", "C")], ["A", "B", "C", "A"]),
    ([("A", "B"), ("B", "C"), ("A", "C")], ["A", "C", "A"]),  # the shortest cycle is reported
    ([("A", "B"), ("B", "C"), ("C", "D")], ["A", "B", "C", "D", "A"]),
])
def test_longer_cycles_report_the_shortest(ld, orders, cycle):
    for o in orders:
        ld.take(*o)
    assert ld.reports == []
    ld.take(cycle[-2], "A")
    assert ld.titles() == [CIRCULAR]
    assert ld.reports[0].details["cycle"] == cycle


def test_guarded_cycle_is_information_until_unguarded(ld):
    ld.take("G", "A", "B")
    ld.take("G", "B", "A")
    assert ld.titles() == [CIRCULAR]
    f = ld.reports[0]
    assert f.info and f.outcome == "guarded-inversion" and f.details["guarded_by"] == ["g"]
    assert f.details["guarded_by_cls"] == ["G"] and f.signature.endswith(":guarded")
    ld.take("B", "A")  # now without G: the edge B -> A loses its guard
    assert ld.edge("B", "A", E_GUARD) == 0
    assert ld.titles() == [CIRCULAR, CIRCULAR]
    g = ld.reports[1]
    assert not g.info and g.details["guarded_by"] == [] and g.signature == "circular:A->B"
    assert g.outcome == "lock-order-inversion"


def test_guard_counts_only_the_same_instance(ld):
    """keepers[0] on one path and keepers[1] on the other serialise nothing: the cycle can
    deadlock, so it is a plain inversion, never "guarded"."""
    ld.take("G", "A", "B")
    ld.take("G2", "B", "A")  # G2 is another instance of class G
    f = ld.reports[0]
    assert not f.info and f.outcome == "lock-order-inversion" and f.details["guarded_by"] == []


def test_guard_narrows_when_one_worker_alternates_instances(ld):
    """Chains are per instance: the same class sequence under another instance of G is a new
    chain, so the edge's guard narrows to nothing and the cycle is reported plainly."""
    ld.take("G", "A", "B")
    ld.take("G2", "A", "B")  # same classes, another G: A -> B was not always under one lock
    assert ld.edge("A", "B", E_GUARD) == 0
    ld.take("G", "B", "A")
    f = ld.reports[0]
    assert not f.info and f.outcome == "lock-order-inversion"


def test_nested_subclass_is_a_class_of_its_own(ld):
    """spin_lock_nested(lock, 1): two locks of one class nested in a known order."""
    ld["A"].lock()
    spin_lock_nested(ld["A2"], 1)
    spin_unlock(ld["A2"])
    ld["A"].unlock()
    assert ld.reports == [], "annotated nesting is not recursive locking"
    sub = ld.lockdep._subs[(ld["A"].cls, 1)]
    assert ld.lockdep._name(sub) == "A/1"
    assert ld.mv[ld.geo.eslot(ld["A"].cls, sub) + E_SEQ], "an edge A -> A/1"
    # the other order closes a cycle between the class and its subclass
    spin_lock_nested(ld["A2"], 1)
    ld["A"].lock()
    ld["A"].unlock()
    spin_unlock(ld["A2"])
    assert ld.titles() == [CIRCULAR] and ld.reports[0].details["cycle"] in (["A", "A/1", "A"], ["A/1", "A", "A/1"])


def test_trylock_adds_no_edge_into_the_lock(ld):
    ld["A"].lock()
    assert ld["B"].trylock()
    ld["C"].lock()
    assert ld.edge("A", "B") == 0, "a trylock cannot wait: no A -> B"
    assert ld.edge("A", "C") and ld.edge("B", "C"), "locks taken under a trylocked one get edges"
    for n in ("C", "B", "A"):
        ld[n].unlock()
    ld.take("B", "A")
    assert ld.reports == []


def test_same_class_twice_is_recursive_locking(ld):
    ld.take("A", "A2")
    assert ld.titles() == ["WARNING: possible recursive locking detected"]
    f = ld.reports[0]
    assert f.details["same_instance"] is False and f.outcome == "recursive-locking"
    assert ld.edge("A", "A") == 0, "no self edge"


def test_class_in_isr_and_with_irqs_on_is_inconsistent(ld):
    ld.isr_takes("L")
    assert ld.usage("L", C_IN_IRQ) == 1 and ld.usage("L", C_IRQ_ON) == 0
    assert ld.reports == []
    ld.take("L")  # task context, interrupts enabled
    assert ld.usage("L", C_IRQ_ON) == 1 and ld.usage("L", C_REPORTED) == 1
    assert ld.titles() == ["WARNING: inconsistent lock state"]
    assert ld.reports[0].details["usage_new"] == "HARDIRQ-ON-W"


def test_irqsave_everywhere_is_clean(ld):
    ld.isr_takes("L")
    flags = spin_lock_irqsave(ld["L"])
    spin_unlock_irqrestore(ld["L"], flags)
    ld.isr_takes("L")
    assert ld.usage("L", C_IRQ_ON) == 0 and ld.reports == []


def test_irq_safe_to_irq_unsafe_order(ld):
    ld.isr_takes("L")  # L is irq-safe
    flags = ld.cpu.local_irq_save()
    ld.take("L", "A")  # L -> A
    ld.cpu.local_irq_restore(flags)
    assert ld.reports == []
    ld.take("A")  # A with interrupts enabled: irq-unsafe, reachable from L
    assert ld.titles() == ["WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected"]
    d = ld.reports[0].details
    assert (d["safe"], d["unsafe"]) == ("L", "A")
    assert [(e["from"], e["to"]) for e in d["chain"]] == [("L", "A")]


def test_enabling_irqs_while_holding_marks_the_held_classes(ld):
    ld.isr_takes("L")
    flags = ld.cpu.local_irq_save()
    ld["L"].lock()
    ld.cpu.local_irq_restore(flags)  # interrupts on with L held: L is now irq-unsafe too
    ld["L"].unlock()
    assert ld.usage("L", C_IRQ_ON) == 1
    assert ld.titles() == ["WARNING: inconsistent lock state"]


def test_graph_semaphore_busy_makes_the_run_incomplete(ld, monkeypatch):
    import stress.lockdep as mod

    monkeypatch.setattr(mod, "GRAPH_LOCK_TIMEOUT_S", 0.01)
    ld.arena.graph_sem.acquire()
    try:
        from shm_model.arena import H_CAP_EDGES

        ld.take("A", "B")
        assert ld.mv[H_CAP_EDGES] > 0 and ld.edge("A", "B") == 0
    finally:
        ld.arena.graph_sem.release()
    assert ld.arena.graph_sem.value == 1


def test_trylock_of_a_held_class_is_not_recursive_locking(ld):
    ld["A"].lock()
    assert ld["A2"].trylock()
    ld["A2"].unlock()
    ld["A"].unlock()
    assert ld.reports == []
