"""Unit tests of the instrumented spinlocks and the CPU they run on (shm_model.spinlock,
shm_model.cpu), in one process with fake engine hooks; and the interrupt-while-blocked
property of FACTS.md with real processes."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import stress_objects
from shm_model.arena import (H_HOLD, H_WAIT, HBUCKETS, H_STOP, IRQ_RING, L_CLASS, L_SINCE, L_SITE, NO_OWNER, S_ACQ,
                             S_CONTENDED, S_HOLD_MAX, S_WAIT_MAX, S_WAIT_NS, W_FINDINGS, W_IN_IRQ, W_IRQS,
                             W_IRQS_DEFERRED, Arena, Geometry, new_run_id)
from shm_model.cpu import IRQ, IRQ_SIGNAL, TASK, Cpu, Stop
from shm_model.spinlock import (Lock, assert_held, spin_is_locked, spin_lock, spin_lock_irq,
                                spin_lock_irqsave, spin_trylock, spin_unlock, spin_unlock_irq,
                                spin_unlock_irqrestore)

# lock name -> class; "A2" is a second instance of class A
LOCKS = [("A", "A"), ("B", "B"), ("C", "C"), ("D", "D"), ("A2", "A")]
CLASSES = ["A", "B", "C", "D"]


_RESOLVER = None


def line_of(site: int) -> int:
    """The source line of a site int (0 when it resolves to nothing)."""
    global _RESOLVER
    from shm_model.sites import SiteResolver
    if _RESOLVER is None:
        _RESOLVER = SiteResolver()
    return _RESOLVER.resolve(site).line


def this_line() -> int:
    import sys
    return sys._getframe(1).f_lineno


class FakeHooks:
    """Records what the Cpu and the locks ask of the engine."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.chains: list[SimpleNamespace] = []
        self.findings: list[tuple[str, str, dict]] = []
        self.irqs_on_holding: list[list[str]] = []
        self.next_site = 1000
        self.on_finding = None

    def new_chain(self, cpu, lock, key, held, irqs_on, trylock):
        self.next_site += 1
        self.chains.append(SimpleNamespace(lock=lock.path, key=key, held=tuple(h.path for h, _ in held),
                                           irqs_on=irqs_on, trylock=trylock, masked=cpu.masked,
                                           ctx=cpu.ctx, site=self.next_site))
        return self.next_site

    def finding(self, cpu, outcome, title, details):
        self.findings.append((outcome, title, dict(details)))
        if self.on_finding:
            self.on_finding()

    def irqs_enabled_holding(self, cpu):
        self.irqs_on_holding.append([lk.path for lk, _ in cpu.held[TASK]])

    def outcomes(self) -> list[str]:
        return [f[0] for f in self.findings]


class Rig:
    """An arena, the locks of LOCKS, and a Cpu for worker ``wid`` with fake hooks."""

    def __init__(self, n_workers: int = 2, wid: int = 0) -> None:
        self.geo = Geometry(n_workers, len(LOCKS), len(CLASSES), 0, trace_events=64)
        self.arena = Arena(new_run_id(), self.geo)
        self.mv = self.arena.mv
        self.hooks = FakeHooks()
        self.locks = {}
        for i, (name, cls) in enumerate(LOCKS):
            self.locks[name] = Lock(i, CLASSES.index(cls), cls, name.lower(), self.arena.sems[i], self.mv,
                                    self.geo)
        self.cpu = self.new_cpu(wid)

    def new_cpu(self, wid: int) -> Cpu:
        cpu = Cpu(self.mv, self.geo, wid, self.hooks)
        for lk in self.locks.values():
            lk.bind(cpu)
        self.cpu = cpu
        return cpu

    def __getitem__(self, name: str) -> Lock:
        return self.locks[name]

    def stat(self, lock: Lock, field: int, wid: int | None = None) -> int:
        w = self.cpu.wid if wid is None else wid
        return self.mv[self.geo.sslot(w, lock.cls) + field]

    def hist(self, lock: Lock, which: int, wid: int | None = None) -> dict[int, int]:
        """The non-empty buckets of a hold (H_HOLD) or wait (H_WAIT) histogram."""
        b = self.geo.hslot(self.cpu.wid if wid is None else wid, lock.cls) + which
        return {i: self.mv[b + i] for i in range(HBUCKETS) if self.mv[b + i]}

    def wslot(self, field: int) -> int:
        return self.mv[self.geo.wslot(self.cpu.wid) + field]

    def post_irq(self, irq: int, sender: int | None = None) -> None:
        """Put ``irq`` in this CPU's ring from ``sender`` (default: the coordinator), no signal."""
        r = self.geo.ring(self.geo.n_workers if sender is None else sender, self.cpu.wid)
        head = self.mv[r]
        self.mv[r + 2 + head % IRQ_RING] = irq
        self.mv[r] = head + 1

    def reset(self) -> None:
        """Back to a fresh CPU (for property tests that run many examples on one arena)."""
        for lk in self.locks.values():
            if lk.sem.value == 0:
                lk.sem.release()
            self.mv[lk.o_owner] = NO_OWNER
        self.hooks.reset()
        self.new_cpu(self.cpu.wid)

    def destroy(self) -> None:
        self.arena.destroy()


def own_objects() -> set[str]:
    return {e for e in stress_objects() if f"-{os.getpid()}-" in e}


@pytest.fixture(autouse=True)
def no_leaks():
    before = own_objects()
    yield
    leaked = own_objects() - before
    assert not leaked, f"IPC objects left in /dev/shm: {sorted(leaked)}"


@contextlib.contextmanager
def make_rig(**kw):
    rig = Rig(**kw)
    try:
        yield rig
    finally:
        rig.destroy()


@pytest.fixture
def rig(no_leaks):
    with make_rig() as r:
        yield r


@pytest.fixture
def irq_handler():
    """Restore SIGUSR1's disposition after a test that installs a Cpu's handler."""
    old = signal.getsignal(IRQ_SIGNAL)
    yield
    signal.signal(IRQ_SIGNAL, old)


def wait_until(cond, timeout: float = 5.0) -> bool:
    """Spin (no sleep) until ``cond()``: a signal sent to ourselves is handled at the next
    bytecode boundary, so this returns at once unless something is wrong."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
    return True


def held_paths(cpu: Cpu, ctx: int = TASK) -> list[str]:
    return [lk.path for lk, _ in cpu.held[ctx]]


# ---- lock / unlock bookkeeping --------------------------------------------------------------

def test_lock_unlock_updates_owner_held_stack_and_stats(rig):
    cpu, mv, geo, A, B = rig.cpu, rig.mv, rig.geo, rig["A"], rig["B"]
    t0 = time.monotonic_ns()
    spin_lock(A)
    assert A.owner() == 0 and A.is_locked() and spin_is_locked(A) and A.held_by_me()
    assert A.sem.value == 0
    assert held_paths(cpu) == ["a"] and cpu.held[IRQ] == []
    rec = geo.lslot(A.index)
    assert mv[rec + L_CLASS] == A.cls
    assert line_of(mv[rec + L_SITE]) == this_line() - 6, "the site of the spin_lock(A) above"
    assert t0 <= mv[rec + L_SINCE] <= time.monotonic_ns()
    assert rig.stat(A, S_ACQ) == 1
    assert not cpu.masked, "the mask is restored after the bookkeeping"
    spin_unlock(A)
    assert A.owner() == NO_OWNER and not A.is_locked() and not A.held_by_me()
    assert A.sem.value == 1 and cpu.held == ([], [])
    assert rig.stat(A, S_HOLD_MAX) > 0 and rig.stat(A, S_CONTENDED) == 0 and rig.stat(A, S_WAIT_NS) == 0

    with A:
        with B:
            assert held_paths(cpu) == ["a", "b"]
            assert (A.owner(), B.owner()) == (0, 0)
    assert rig.stat(A, S_ACQ) == 2 and rig.stat(B, S_ACQ) == 1
    assert rig.stat(A, S_ACQ, wid=1) == 0, "another worker's statistics are untouched"
    holds = rig.hist(A, H_HOLD)
    assert sum(holds.values()) == 2 and max(holds) <= rig.stat(A, S_HOLD_MAX).bit_length(), holds
    assert rig.hist(B, H_HOLD) and not rig.hist(A, H_WAIT), "every release is counted; no wait without contention"
    assert not rig.hist(A, H_HOLD, wid=1)
    assert (A.sem.value, B.sem.value) == (1, 1)
    assert rig.hooks.findings == []


def test_second_instance_of_a_class_shares_its_stats(rig):
    A, A2 = rig["A"], rig["A2"]
    for lk in (A, A2, A2):
        lk.lock()
        lk.unlock()
    assert rig.stat(A, S_ACQ) == 3 and A.cls == A2.cls


def test_owner_ids_are_worker_times_two_plus_context(rig):
    cpu = rig.new_cpu(1)
    A, B = rig["A"], rig["B"]
    seen = []

    def isr(irq):
        B.lock()
        seen.append((irq, B.owner(), held_paths(cpu, IRQ), held_paths(cpu, TASK), cpu.in_irq()))
        B.unlock()

    cpu.isr = isr
    A.lock()
    assert A.owner() == 2 and rig.stat(A, S_ACQ) == 1 and rig.stat(A, S_ACQ, wid=0) == 0
    rig.post_irq(4)
    cpu.run_irqs()
    assert seen == [(4, 3, ["b"], ["a"], True)]
    assert rig.hooks.chains[-1].ctx == IRQ and rig.hooks.chains[-1].irqs_on is False
    assert rig.hooks.chains[-1].held == (), "an ISR's chain starts empty: contexts have their own stacks"
    assert rig.wslot(W_IRQS) == 1 and rig.wslot(W_IN_IRQ) == 0 and not cpu.in_irq()
    A.unlock()
    assert rig.hooks.findings == []


def test_trylock_succeeds_and_fails(rig):
    cpu, A = rig.cpu, rig["A"]
    assert spin_trylock(A) is True
    assert A.owner() == 0 and held_paths(cpu) == ["a"]
    assert rig.hooks.chains[-1].trylock is True and rig.stat(A, S_ACQ) == 1
    assert A.trylock() is False, "not recursive: a held lock cannot be trylocked again"
    assert held_paths(cpu) == ["a"]
    A.unlock()

    A.sem.acquire()  # another CPU holds it
    rig.mv[A.o_owner] = 2
    try:
        n = len(rig.hooks.chains)
        assert A.trylock() is False
        assert held_paths(cpu) == [] and A.owner() == 2
        assert len(rig.hooks.chains) == n, "a failed trylock validates nothing"
        assert rig.stat(A, S_ACQ) == 1 and not cpu.masked
    finally:
        rig.mv[A.o_owner] = NO_OWNER
        A.sem.release()
    assert A.trylock() is True
    A.unlock()
    assert A.sem.value == 1 and rig.hooks.findings == []


def test_trylock_and_lock_chains_are_cached_separately(rig):
    A = rig["A"]
    A.lock(); A.unlock()
    A.trylock(); A.unlock()
    A.trylock(); A.unlock()
    A.lock(); A.unlock()
    assert [c.trylock for c in rig.hooks.chains] == [False, True]


def test_out_of_order_unlock_keeps_chain_keys_consistent(rig):
    cpu, A, B, C, D = rig.cpu, rig["A"], rig["B"], rig["C"], rig["D"]
    A.lock(); C.lock(); D.lock()
    ref = [k for _, k in cpu.held[TASK]]  # keys of the chain A, C, D taken in order
    D.unlock(); C.unlock(); A.unlock()
    n = len(rig.hooks.chains)
    assert n == 3

    A.lock(); B.lock(); C.lock()
    B.unlock()  # out of order
    assert held_paths(cpu) == ["a", "c"]
    assert [k for _, k in cpu.held[TASK]] == ref[:2]
    assert B.owner() == NO_OWNER and B.sem.value == 1 and C.owner() == 0
    D.lock()  # the chain A, C, D was validated before: a cache hit
    assert [k for _, k in cpu.held[TASK]] == ref
    assert [c.held for c in rig.hooks.chains[n:]] == [("a",), ("a", "b")]
    A.unlock()  # the bottom one
    assert held_paths(cpu) == ["c", "d"]
    D.unlock(); C.unlock()
    C.lock(); D.lock()
    assert len(rig.hooks.chains) == n + 4  # (C) and (C, D) are new chains
    D.unlock(); C.unlock()
    assert rig.hooks.findings == []
    assert all(lk.sem.value == 1 and lk.owner() == NO_OWNER for lk in rig.locks.values())


def test_unlocking_a_lock_not_held_is_a_bad_unlock(rig):
    cpu, A, B = rig.cpu, rig["A"], rig["B"]
    B.lock()
    A.unlock()
    assert rig.hooks.outcomes() == ["bad-unlock"]
    _, title, d = rig.hooks.findings[0]
    assert "bad unlock balance" in title
    assert d["lock"] == "a" and d["cls"] == "A" and d["owner"] == NO_OWNER and d["ctx"] == "task"
    assert A.sem.value == 1, "a bad unlock must not release the semaphore"
    assert held_paths(cpu) == ["b"] and not cpu.masked
    assert rig.wslot(W_FINDINGS) == 1
    B.unlock()


def test_unlocking_another_cpus_lock_is_a_bad_unlock(rig):
    A = rig["A"]
    A.sem.acquire()
    rig.mv[A.o_owner] = 2  # worker 1 holds it
    try:
        A.unlock()
        assert rig.hooks.outcomes() == ["bad-unlock"] and rig.hooks.findings[0][2]["owner"] == 2
        assert A.owner() == 2 and A.sem.value == 0, "the real owner keeps its lock"
    finally:
        A.sem.release()


def test_assert_held(rig):
    A = rig["A"]
    assert assert_held(A) is False
    assert rig.hooks.outcomes() == ["invariant:assert-held"]
    d = rig.hooks.findings[0][2]
    assert d["lock"] == "a" and d["owner"] == NO_OWNER and d["held"] == [] and d["ctx"] == "task"
    assert rig.wslot(W_FINDINGS) == 1

    A.lock()
    assert assert_held(A) is True
    A.unlock()
    assert len(rig.hooks.findings) == 1

    A.sem.acquire()
    rig.mv[A.o_owner] = 2  # held, but by worker 1: Xen's check would pass, ours must not
    try:
        assert assert_held(A) is False
        assert rig.hooks.findings[-1][0] == "invariant:assert-held" and rig.hooks.findings[-1][2]["owner"] == 2
        rig.mv[A.o_owner] = 1  # held by our own interrupt context: held by this CPU
        assert assert_held(A) is True
    finally:
        rig.mv[A.o_owner] = NO_OWNER
        A.sem.release()
    assert len(rig.hooks.findings) == 2


# ---- chain cache --------------------------------------------------------------------------

def test_new_chain_once_per_held_class_sequence_and_irq_state(rig):
    cpu, A, A2, B = rig.cpu, rig["A"], rig["A2"], rig["B"]
    for _ in range(3):
        A.lock(); A.unlock()
    assert len(rig.hooks.chains) == 1
    c = rig.hooks.chains[0]
    assert (c.lock, c.held, c.irqs_on, c.trylock, c.ctx) == ("a", (), True, False, TASK)
    assert c.masked, "the hook runs with interrupts soft-masked"
    for _ in range(2):
        with A:
            with B:
                pass
    assert [c.held for c in rig.hooks.chains] == [(), ("a",)]
    # same class as A, another instance: chains are per instance, so lockdep sees which
    # instance is held under another (a guard counts only when it is the same lock)
    A2.lock(); A2.unlock()
    with A2:
        with B:
            pass
    assert [c.held for c in rig.hooks.chains] == [(), ("a",), (), ("a2",)]
    for _ in range(2):
        with A2:
            with B:
                pass
    assert len(rig.hooks.chains) == 4
    for _ in range(2):
        flags = spin_lock_irqsave(A)
        spin_unlock_irqrestore(A, flags)
    assert len(rig.hooks.chains) == 5 and rig.hooks.chains[-1].irqs_on is False
    flags = cpu.local_irq_save()
    with A:
        with B:
            pass
    cpu.local_irq_restore(flags)
    assert len(rig.hooks.chains) == 6, "A masked was seen; (A, B) masked is new"
    assert rig.hooks.findings == []


@pytest.mark.timeout(60)
def test_property_chain_cache_and_out_of_order_unlocks():
    """Random nestings, with interrupts masked or not at each acquisition, released in a
    random order: new_chain runs exactly once per distinct (lock, masked) sequence, and the
    chain key of a held stack depends only on that sequence (also after out-of-order
    unlocks)."""
    names = [n for n, _ in LOCKS]
    nest = st.lists(st.tuples(st.sampled_from(names), st.booleans()), min_size=1, max_size=4,
                    unique_by=lambda t: t[0]).flatmap(
        lambda takes: st.tuples(st.just(takes), st.permutations(range(len(takes)))))

    with make_rig() as rig:
        @settings(max_examples=60, deadline=None)
        @given(st.lists(nest, min_size=1, max_size=6))
        def check(rounds):
            rig.reset()
            cpu = rig.cpu
            seen_keys: dict[tuple, int] = {}  # (lock, masked) sequence -> chain key
            expected_chains = set()
            for takes, order in rounds:
                stack: list[tuple[str, bool]] = []
                for name, masked in takes:
                    lk = rig[name]
                    flags = cpu.local_irq_save() if masked else None
                    lk.lock()
                    if masked:
                        cpu.local_irq_restore(flags)
                    stack.append((name, masked))
                    seq = tuple((rig[n].index, m) for n, m in stack)
                    expected_chains.add(seq)
                    key = cpu.held[TASK][-1][1]
                    assert seen_keys.setdefault(seq, key) == key
                for i in order:
                    name = takes[i][0]
                    rig[name].unlock()
                    stack.remove(takes[i])
                    assert held_paths(cpu) == [n.lower() for n, _ in stack]
                    for depth in range(1, len(stack) + 1):
                        seq = tuple((rig[n].index, m) for n, m in stack[:depth])
                        key = cpu.held[TASK][depth - 1][1]
                        assert seen_keys.setdefault(seq, key) == key
            assert len(rig.hooks.chains) == len(expected_chains)
            assert len(set(seen_keys.values())) == len(seen_keys), "two sequences share a chain key"
            assert rig.hooks.findings == []
            assert all(lk.owner() == NO_OWNER and lk.sem.value == 1 for lk in rig.locks.values())
            assert not cpu.masked

        check()


# ---- interrupts and the soft mask ------------------------------------------------------------

def test_irqs_enabled_while_holding_is_reported_to_the_engine(rig):
    cpu, A = rig.cpu, rig["A"]
    flags = cpu.local_irq_save()
    A.lock()
    cpu.local_irq_restore(True)  # still masked: nothing to say
    assert rig.hooks.irqs_on_holding == []
    cpu.local_irq_restore(flags)
    assert rig.hooks.irqs_on_holding == [["a"]]
    A.unlock()
    flags = cpu.local_irq_save()
    cpu.local_irq_restore(flags)  # nothing held
    spin_lock_irq(A)
    assert cpu.masked
    spin_unlock_irq(A)  # unlock first, then enable: nothing held
    assert not cpu.masked and rig.hooks.irqs_on_holding == [["a"]]


def test_isr_returning_with_locks_held_is_a_finding_and_releases(rig):
    cpu, B = rig.cpu, rig["B"]
    cpu.isr = lambda irq: B.lock()
    rig.post_irq(3)
    cpu.run_irqs()
    assert rig.hooks.outcomes() == ["invariant:irq-returned-with-locks"]
    assert rig.hooks.findings[0][2]["locks"] == ["b"]
    assert B.owner() == NO_OWNER and B.sem.value == 1 and cpu.held == ([], [])
    assert cpu.ctx == TASK and not cpu.masked and rig.wslot(W_IN_IRQ) == 0


def test_run_ending_under_an_isr_is_not_an_isr_returning_with_locks(rig):
    """The stop request reaches an ISR that holds a lock (it raises Stop from a lock wait
    or check_stop): the ISR did not return, so there is no finding; its locks are released."""
    cpu, B = rig.cpu, rig["B"]

    def isr(irq):
        B.lock()
        rig.mv[H_STOP] = 1
        cpu.check_stop()

    cpu.isr = isr
    rig.post_irq(3)
    try:
        with pytest.raises(Stop):
            cpu.run_irqs()
    finally:
        rig.mv[H_STOP] = 0
    assert rig.hooks.findings == []
    assert B.owner() == NO_OWNER and B.sem.value == 1 and cpu.held == ([], [])
    assert cpu.ctx == TASK and rig.wslot(W_IN_IRQ) == 0


def test_isr_exception_is_a_finding_not_raised(rig):
    cpu = rig.cpu
    calls = []

    def isr(irq):
        calls.append(irq)
        raise RuntimeError("boom")

    cpu.isr = isr
    rig.post_irq(5)
    rig.post_irq(6, sender=1)
    cpu.run_irqs()
    assert sorted(calls) == [5, 6], "every ring is drained, each interrupt once"
    assert rig.hooks.outcomes() == ["crash", "crash"]
    assert "RuntimeError: boom" in rig.hooks.findings[0][1] and rig.hooks.findings[0][2]["irq"] in (5, 6)
    assert cpu.ctx == TASK and not cpu.masked and rig.wslot(W_IRQS) == 2
    assert not cpu.irqs_waiting()


def test_irqsave_defers_a_real_signal_until_irqrestore(rig, irq_handler):
    cpu, mv, A = rig.cpu, rig.mv, rig["A"]
    seen = []
    cpu.isr = lambda irq: seen.append((irq, cpu.ctx, cpu.masked, rig.wslot(W_IN_IRQ), A.owner()))
    cpu.install_irq_handler()
    cpu.set_peers([os.getpid()])

    flags = spin_lock_irqsave(A)
    assert flags is False and cpu.masked
    assert cpu.raise_irq(0, 9)
    assert wait_until(lambda: rig.wslot(W_IRQS_DEFERRED) == 1), "the signal was never handled"
    for _ in range(2000):  # plenty of bytecode boundaries: the ISR must still wait
        pass
    assert seen == [] and cpu.irq_pending and cpu.irqs_waiting()
    spin_unlock_irqrestore(A, flags)
    assert seen == [(9, IRQ, True, 1, NO_OWNER)], "ISR runs at irqrestore, after the unlock"
    assert not cpu.masked and cpu.ctx == TASK and rig.wslot(W_IN_IRQ) == 0 and rig.wslot(W_IRQS) == 1
    r = rig.geo.ring(0, 0)
    assert mv[r] == mv[r + 1] == 1

    # nested irqsave: only the outermost restore enables interrupts
    f1 = spin_lock_irqsave(A)
    f2 = spin_lock_irqsave(rig["B"])
    assert (f1, f2) == (False, True)
    assert cpu.raise_irq(0, 10)
    assert wait_until(lambda: rig.wslot(W_IRQS_DEFERRED) == 2)
    spin_unlock_irqrestore(rig["B"], f2)
    assert len(seen) == 1 and cpu.masked
    spin_unlock_irqrestore(A, f1)
    assert [s[0] for s in seen] == [9, 10]

    # spin_lock_irq / spin_unlock_irq
    spin_lock_irq(A)
    assert cpu.raise_irq(0, 11)
    assert wait_until(lambda: rig.wslot(W_IRQS_DEFERRED) == 3)
    assert len(seen) == 2
    spin_unlock_irq(A)
    assert [s[0] for s in seen] == [9, 10, 11]
    assert rig.hooks.findings == []


def test_isr_never_runs_while_masked(rig, irq_handler):
    """Many interrupts sent to ourselves, inside and outside masked sections: each is
    handled exactly once, and never while the interrupted code had interrupts masked."""
    import random

    cpu, A, B = rig.cpu, rig["A"], rig["B"]
    section = {"masked": False}
    seen = []
    cpu.isr = lambda irq: seen.append((irq, section["masked"]))
    cpu.install_irq_handler()
    cpu.set_peers([os.getpid()])
    rnd = random.Random(5)
    raised = 0
    for i in range(300):
        how = rnd.randrange(4)
        if how == 0:  # unmasked: handled at once
            assert cpu.raise_irq(0, i)
            raised += 1
            assert wait_until(lambda: len(seen) == raised)
            continue
        if how == 1:
            flags = spin_lock_irqsave(A)
        elif how == 2:
            flags = cpu.local_irq_save()
        else:
            spin_lock_irq(B)
        section["masked"] = True
        deferred = rig.wslot(W_IRQS_DEFERRED)
        for _ in range(rnd.randrange(1, 3)):
            assert cpu.raise_irq(0, i)
            raised += 1
        assert wait_until(lambda: rig.wslot(W_IRQS_DEFERRED) > deferred)
        if rnd.random() < 0.5:
            with rig["C"]:  # lock operations inside the section must not replay them
                pass
        section["masked"] = False
        if how == 1:
            spin_unlock_irqrestore(A, flags)
        elif how == 2:
            cpu.local_irq_restore(flags)
        else:
            spin_unlock_irq(B)
        assert len(seen) == raised
    assert [irq for irq, _ in seen] == sorted(irq for irq, _ in seen)
    assert not any(m for _, m in seen), "an ISR ran inside a masked section"
    assert rig.wslot(W_IRQS) == raised and rig.wslot(W_IRQS_DEFERRED) > 0
    assert rig.hooks.findings == []


def test_interrupt_during_bad_unlock_report_runs_at_unmask(rig, irq_handler):
    cpu, A = rig.cpu, rig["A"]
    seen = []
    cpu.isr = seen.append
    cpu.install_irq_handler()
    cpu.set_peers([os.getpid()])

    def interrupt_now():
        cpu.raise_irq(0, 8)
        assert wait_until(lambda: cpu.irq_pending)

    rig.hooks.on_finding = interrupt_now
    A.unlock()  # not held: reported, and an interrupt arrives meanwhile
    assert rig.hooks.outcomes() == ["bad-unlock"] and not cpu.masked
    assert seen == [8], "interrupts are enabled again but the pending ISR did not run"


def test_raise_irq_ring_full_is_dropped_not_overwritten(rig):
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()  # a pid that is gone: raise_irq must not fail on it
    cpu, mv = rig.cpu, rig.mv
    cpu.set_peers([os.getpid(), p.pid])
    for i in range(IRQ_RING):
        assert cpu.raise_irq(1, 100 + i)
    assert cpu.raise_irq(1, 999) is False
    r = rig.geo.ring(0, 1)
    assert mv[r] - mv[r + 1] == IRQ_RING
    assert [mv[r + 2 + k] for k in range(IRQ_RING)] == [100 + k for k in range(IRQ_RING)]


# ---- real processes: an interrupt taken while blocked in a contended spin_lock -------------

def _child(body) -> int:
    """Fork; the child runs ``body()`` and exits with its return code (never returns)."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            signal.signal(IRQ_SIGNAL, signal.SIG_IGN)
            code = body()
        finally:
            os._exit(code)
    return pid


def _reap(pids: list[int], timeout: float = 5.0) -> dict[int, int]:
    """Exit codes of our children; one still running after ``timeout`` is killed."""
    codes = {}
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            p, status = os.waitpid(pid, os.WNOHANG)
            if p:
                codes[pid] = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                codes[pid] = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.001)
    return codes


@pytest.mark.timeout(30)
def test_blocked_waiter_takes_interrupt_then_acquires(irq_handler, no_leaks):
    with make_rig(n_workers=2) as rig:
        cpu, mv, geo, A = rig.cpu, rig.mv, rig.geo, rig["A"]
        parent = os.getpid()
        ready_r, ready_w = os.pipe()
        rel_r, rel_w = os.pipe()
        done_r, done_w = os.pipe()
        events = []

        def isr(irq):
            events.append(("isr", irq, mv[geo.wait_slot(0, 0)], A.owner(), cpu.ctx))
            os.write(rel_w, b"r")  # now the holder may let go

        cpu.isr = isr
        cpu.install_irq_handler()
        pids = []
        try:
            def holder():
                os.close(rel_w)
                A.sem.acquire()
                mv[A.o_owner] = 2  # worker 1, task context
                os.write(ready_w, b"h")
                if os.read(rel_r, 1) != b"r":
                    return 2  # parent went away
                mv[A.o_owner] = NO_OWNER
                A.sem.release()
                return 0

            pids.append(_child(holder))
            os.close(ready_w)
            assert os.read(ready_r, 1) == b"h", "holder failed"

            def interrupter():
                os.close(rel_w)
                deadline = time.monotonic() + 10
                while mv[geo.wait_slot(0, 0)] != A.index:  # the parent published its wait
                    if time.monotonic() > deadline:
                        mv[H_STOP] = 1
                        return 3
                    time.sleep(0.0005)
                sender = Cpu(mv, geo, 1, FakeHooks())
                sender.set_peers([parent, os.getpid()])
                if not sender.raise_irq(0, 7):
                    return 4
                os.close(done_w)
                if not select.select([done_r], [], [], 10)[0]:  # until the parent has the lock
                    mv[H_STOP] = 1  # unblock the parent: its wait checks the stop flag
                    return 5
                return 0

            pids.append(_child(interrupter))
            try:
                A.lock()
            except Stop:
                pytest.fail(f"the waiter never got the lock; events {events}")
            events.append(("acquired", A.owner()))
            os.write(done_w, b"d")

            assert events[0][:2] == ("isr", 7), events
            _, _, waiting_for, owner_then, ctx = events[0]
            assert waiting_for == A.index, "the ISR ran while the task waited for the lock"
            assert owner_then == 2 and ctx == IRQ
            assert events[1:] == [("acquired", 0)]
            assert held_paths(cpu) == ["a"] and cpu.held[IRQ] == [] and not cpu.masked
            w = geo.wait_slot(0, 0)
            assert mv[w] == -1 and mv[w + 3] == 1, "wait record cleared; one wait"
            assert rig.stat(A, S_CONTENDED) == 1 and rig.stat(A, S_ACQ) == 1
            assert rig.stat(A, S_WAIT_NS) > 0 and rig.stat(A, S_WAIT_MAX) == rig.stat(A, S_WAIT_NS)
            assert rig.hist(A, H_WAIT) == {rig.stat(A, S_WAIT_NS).bit_length(): 1}, "one wait, in its log2 bucket"
            assert rig.wslot(W_IRQS) == 1
            A.unlock()
            assert A.sem.value == 1 and rig.hooks.findings == []
        finally:
            mv[H_STOP] = 0
            for fd in (ready_r, rel_r, rel_w, done_r, done_w):  # EOF for a child still reading
                os.close(fd)
            codes = _reap(pids)
        assert list(codes.values()) == [0, 0], codes


@pytest.mark.timeout(30)
def test_blocked_waiter_leaves_on_stop(no_leaks):
    with make_rig(n_workers=2) as rig:
        cpu, mv, geo, A = rig.cpu, rig.mv, rig.geo, rig["A"]
        A.sem.acquire()  # held "elsewhere", never released while we wait
        pids = []
        try:
            def stopper():
                deadline = time.monotonic() + 10
                while mv[geo.wait_slot(0, 0)] != A.index:
                    if time.monotonic() > deadline:
                        return 3
                    time.sleep(0.0005)
                mv[H_STOP] = 1
                return 0

            pids.append(_child(stopper))
            with pytest.raises(Stop):
                A.lock()
            assert mv[geo.wait_slot(0, 0)] == -1, "the wait record is withdrawn"
            assert cpu.held == ([], []) and A.owner() == NO_OWNER
        finally:
            mv[H_STOP] = 0
            A.sem.release()
            codes = _reap(pids)
        assert list(codes.values()) == [0]
