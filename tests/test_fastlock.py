"""Unit tests of the C fast path (shm_model/_fastlock.c) for what only it can get wrong:
exact chain keys past 64 bits, the soft-mask bracket around its calls back into Python,
error paths that must leave the lock and the mask as they were, the trace ring written from
C, and misuse reported as one clear Python error instead of a crash."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest

from shm_model._fastlock import KEY_DIGIT_BITS
from shm_model.arena import EV_WORDS, H_HOLD, IRQ_RING, NO_OWNER, S_ACQ, S_HOLD_MAX, Arena, Geometry, new_run_id
from shm_model.cpu import IRQ_SIGNAL, TASK, Cpu, Stop
from shm_model.spinlock import Lock, spin_lock, spin_lock_irqsave, spin_trylock, spin_unlock, spin_unlock_irqrestore
from shm_model.trace import EV_ACQUIRE, EV_RELEASE, EV_TRYLOCK_FAIL

from test_spinlock import FakeHooks, line_of, this_line, no_leaks  # noqa: F401  (the autouse leak check)

N = 12  # locks, one class each: a 12-deep chain key needs 180 bits


class Rig:
    def __init__(self, n_workers: int = 1) -> None:
        self.geo = Geometry(n_workers, N, N, 0, trace_events=8)
        self.arena = Arena(new_run_id(), self.geo)
        self.mv = self.arena.mv
        self.hooks = FakeHooks()
        self.locks = [Lock(i, i, f"C{i}", f"l{i}", self.arena.sems[i], self.mv, self.geo) for i in range(N)]
        self.cpu = Cpu(self.mv, self.geo, 0, self.hooks)
        for lk in self.locks:
            lk.bind(self.cpu)

    def destroy(self) -> None:
        self.arena.destroy()


@pytest.fixture
def rig():
    r = Rig()
    try:
        yield r
    finally:
        r.destroy()


def expected_key(chain: list[int], ctx: int = TASK, masked: bool = False) -> int:
    """The chain key as spinlock.py documents it: one digit per held lock *instance*
    ((index + 1) << 5 | subclass << 2 | ctx << 1 | masked), as a Python int."""
    key = 0
    for index in chain:
        key = (key << KEY_DIGIT_BITS) | ((index + 1) << 5) | (ctx << 1) | int(masked)
    return key


def test_deep_chain_keys_stay_exact_past_64_bits(rig):
    cpu = rig.cpu
    for depth in range(1, N + 1):
        spin_lock(rig.locks[depth - 1])
        assert cpu.held[TASK][-1][1] == expected_key(list(range(depth)))
    assert cpu.held[TASK][-1][1].bit_length() > 100
    assert len(rig.hooks.chains) == N and len({c.key for c in rig.hooks.chains}) == N
    # out of order from the middle: the keys above are recomputed, still exact
    spin_unlock(rig.locks[3])
    rest = [i for i in range(N) if i != 3]
    assert [k for _, k in cpu.held[TASK]] == [expected_key(rest[:d]) for d in range(1, N)]
    for i in reversed(rest):
        spin_unlock(rig.locks[i])
    assert cpu.held == ([], []) and all(lk.owner() == NO_OWNER and lk.sem.value == 1 for lk in rig.locks)
    # the same deep chain again: every key is in the cache, no new validation
    n = len(rig.hooks.chains)
    for lk in rig.locks:
        spin_lock(lk)
    for lk in reversed(rig.locks):
        spin_unlock(lk)
    assert len(rig.hooks.chains) == n


def test_a_signal_during_a_call_back_into_python_is_deferred_until_the_lock_is_recorded(rig):
    """The C code runs no bytecode, but its calls back into Python (here: lockdep's chain
    validation) do: it must mask around them. The ISR runs right after the acquisition is
    recorded, sees the lock held by the task, and runs in interrupt context."""
    cpu = rig.cpu
    lk = rig.locks[0]
    seen = []
    cpu.isr = lambda irq: seen.append((irq, cpu.ctx, lk.owner(), [h.path for h, _ in cpu.held[TASK]]))
    rig.post = rig.geo.ring(rig.geo.n_workers, 0)
    old = signal.signal(IRQ_SIGNAL, cpu._on_signal)
    try:
        def new_chain(*a):
            r = rig.post
            head = rig.mv[r]
            rig.mv[r + 2 + head % IRQ_RING] = 99
            rig.mv[r] = head + 1
            os.kill(os.getpid(), IRQ_SIGNAL)
            for _ in range(1000):  # bytecode boundaries: the handler runs in here
                if cpu.irq_pending:
                    break
                time.sleep(0.0001)
            assert cpu.masked, "the chain validation runs with interrupts soft-masked"
            return orig(*a)

        orig = rig.hooks.new_chain
        rig.hooks.new_chain = new_chain
        spin_lock(lk)
        assert seen == [(99, 1, cpu.oid[TASK], ["l0"])], seen
        assert not cpu.masked and not cpu.irq_pending and cpu.ctx == TASK
        spin_unlock(lk)
    finally:
        signal.signal(IRQ_SIGNAL, old)


def test_irqsave_keeps_the_mask_when_the_acquisition_fails(rig):
    """An exception out of a slow path (here the coordinator's stop inside the chain
    validation) leaves nothing half done: not held, mask as the caller had it."""
    cpu = rig.cpu
    lk = rig.locks[0]

    def stop(*a):
        raise Stop()

    rig.hooks.new_chain = stop
    with pytest.raises(Stop):
        spin_lock(lk)
    assert not cpu.masked and cpu.held == ([], []) and lk.sem.value == 1 and lk.owner() == NO_OWNER
    with pytest.raises(Stop):
        spin_lock_irqsave(lk)
    assert not cpu.masked, "spin_lock_irqsave restores the flags when the acquisition fails"
    with pytest.raises(Stop):
        spin_trylock(lk)
    assert lk.sem.value == 1, "a trylock that took the semaphore gives it back when validation fails"
    assert cpu.held == ([], []) and lk.owner() == NO_OWNER


def test_trace_events_are_written_by_the_c_fast_path(rig):
    cpu = rig.cpu
    cpu.trace_locks = True
    a, b = rig.locks[0], rig.locks[1]
    th = rig.geo.trace(0)
    f = spin_lock_irqsave(a)
    first = this_line() - 1
    assert spin_trylock(b)
    spin_unlock(b)
    spin_unlock_irqrestore(a, f)
    cpu.trace_locks = False
    spin_lock(a)
    again = this_line() - 1
    spin_unlock(a)
    head = rig.mv[th]
    assert head == 4
    events = [tuple(rig.mv[th + 1 + i * EV_WORDS: th + 1 + (i + 1) * EV_WORDS]) for i in range(head)]
    kinds = [(kc & 0xFF, a_) for _, kc, a_, _, _ in events]
    assert kinds == [(EV_ACQUIRE, 0), (EV_ACQUIRE, 1), (EV_RELEASE, 1), (EV_RELEASE, 0)]
    assert [t for t, *_ in events] == sorted(t for t, *_ in events) and events[0][0] > 0
    assert line_of(events[0][3]) == first  # the acquisition's own site
    assert line_of(rig.mv[rig.geo.lslot(0) + 2]) == again, "the record holds the latest acquisition's site"
    # the ring wraps (8 events here) and keeps counting
    for i in range(20):
        cpu.trace(EV_TRYLOCK_FAIL, 0, i)
    assert rig.mv[th] == 24
    last = th + 1 + (23 % 8) * EV_WORDS
    assert rig.mv[last + 1] & 0xFF == EV_TRYLOCK_FAIL and rig.mv[last + 2] == 19


def test_hold_statistics_from_c(rig):
    lk = rig.locks[2]
    spin_lock(lk)
    time.sleep(0.002)
    spin_unlock(lk)
    st = rig.geo.sslot(0, lk.cls)
    hold = rig.mv[st + S_HOLD_MAX]
    assert 2_000_000 <= hold < 1_000_000_000 and rig.mv[st + S_ACQ] == 1
    hh = rig.geo.hslot(0, lk.cls) + H_HOLD
    assert rig.mv[hh + hold.bit_length()] == 1


def test_misuse_is_a_python_error_not_a_crash(rig):
    lk = Lock(0, 0, "C0", "x", rig.arena.sems[0], rig.mv, rig.geo)
    with pytest.raises(RuntimeError, match="not bound"):
        lk.lock()
    with pytest.raises(TypeError, match="model spinlock"):
        spin_lock(object())
    with pytest.raises(TypeError, match="binds to a shm_model Cpu"):
        lk.cpu = object()
    with pytest.raises(TypeError, match="two lists"):
        rig.cpu.held = []
    with pytest.raises(ValueError):
        rig.cpu.ctx = 2
    cpu = Cpu(rig.mv, rig.geo, 0, FakeHooks())
    lk.bind(cpu)
    cpu.detach()
    with pytest.raises(RuntimeError, match="no arena"):
        lk.lock()
    with pytest.raises(RuntimeError, match="no arena"):
        cpu.trace(1, 0)
    with pytest.raises(TypeError, match="'q'"):
        Cpu(memoryview(bytearray(64)), rig.geo, 0, FakeHooks())


def test_cpus_and_locks_are_collected_with_their_cycles(rig):
    """Cpu -> held -> Lock -> Cpu is a reference cycle: the collector must free it (and the
    C types must survive the collection: this once crashed in tp_traverse)."""
    def live() -> int:
        return sum(isinstance(o, Cpu) for o in gc.get_objects())

    gc.collect()
    before = live()
    for _ in range(50):
        cpu = Cpu(rig.mv, rig.geo, 0, FakeHooks())
        lk = Lock(0, 0, "C0", "x", rig.arena.sems[0], rig.mv, rig.geo)
        lk.bind(cpu)
        spin_lock(lk)
        cpu.held[TASK].clear()  # leave the cycle in place without the lock record
        rig.mv[lk.o_owner] = NO_OWNER
        lk.sem.release()
        del cpu, lk
    gc.collect()
    assert live() == before
