"""Detector self-tests after lockdep's selftest matrix (lib/locking-selftest.c).

One variant per case; each declares the exact outcome the detectors must report, so
``stress run --workload lockdep-selftest --variant ABBCCA`` is itself a test, and the test
suite runs every variant as real processes. CPU ``i`` plays column ``i`` of the case; the
``device`` role raises interrupt 7 on the CPUs the case names.

Locks and order: classes A, B, C, D and L are the cases' own; G guards (outer) where a
case says so; K[0] and K[1] are two instances of one class K (two keepers, two buckets);
P[0] and P[1] are declared ``per_instance``: a class each. In ``ORDERS`` a name ``K1/1``
means ``spin_lock_nested(K[1], 1)``. Nothing here is a hypervisor protocol.
"""

from __future__ import annotations

import os
import signal

from stress.workload import (Array, Int, Option, Role, RwLock, Spinlock, Struct, Variant, Workload, op, isr,
                             read_lock, read_unlock, spin_lock, spin_lock_irqsave, spin_lock_nested, spin_unlock,
                             spin_unlock_irqrestore, write_lock, write_unlock)

IRQ = 7


class State(Struct):
    A = Spinlock("A")
    B = Spinlock("B")
    C = Spinlock("C")
    D = Spinlock("D")
    L = Spinlock("L")
    G = Spinlock("G")
    K = Array(Spinlock("K"), 2)
    P = Array(Spinlock("P", per_instance=True), 2)
    # reader-writer locks: X, Y, Z as lockdep's selftest declares rwlock_t (recursive readers);
    # Q as Xen declares rwlock_t (a waiting writer blocks new readers)
    X = Array(RwLock("X", recursive_read=True), 2)
    Y = RwLock("Y", recursive_read=True)
    Z = RwLock("Z", recursive_read=True)
    Q = RwLock("Q")
    done = Int()


# column i of each case: the locks CPU i takes, outermost first (None: CPU i idles)
ORDERS: dict[str, list[list[str] | None]] = {
    "AA": [["A", "A"], None, None, None],
    "ABBA": [["A", "B"], ["B", "A"], None, None],
    "ABBCCA": [["A", "B"], ["B", "C"], ["C", "A"], None],
    "ABBCCDDA": [["A", "B"], ["B", "C"], ["C", "D"], ["D", "A"]],
    "nested-ok": [["A", "B", "C"], ["A", "B", "C"], ["B", "C"], ["A", "C"]],
    "guarded-ABBA": [["G", "A", "B"], ["G", "B", "A"], None, None],
    "two-keepers-ABBA": [["K0", "A", "B"], ["K1", "B", "A"], None, None],
    "AA-two-instances": [["K0", "K1"], None, None, None],
    "nested-annotated": [["K0", "K1/1"], ["K0", "K1/1"], None, None],
    "nested-annotation-lies": [["K0", "K1/1"], ["K1", "K0/1"], None, None],
    "per-instance-ordered": [["P0", "P1"], ["P0", "P1"], None, None],
    "per-instance-inverted": [["P0", "P1"], ["P1", "P0"], None, None],
    # lockdep's rwlock rows (lib/locking-selftest.c: rlock_AA1 ... W1R2_R2R3_W3W1); rX0 is
    # read_lock(X[0]), wX0 write_lock(X[0]); A stands for the selftest's spinlock Y1
    "rlock-AA1": [["rX0", "rX0"], None, None, None],
    "rlock-AA1B": [["rX0", "rX1"], None, None, None],
    "rlock-AA2": [["rX0", "wX1"], None, None, None],
    "rlock-AA3": [["wX0", "rX1"], None, None, None],
    "rlock-ABBA1": [["rX0", "A"], ["A", "wX0"], None, None],
    "rlock-ABBA2": [["rX0", "A"], ["A", "rX0"], None, None],
    "rlock-ABBA3": [["wX0", "A"], ["A", "wX0"], None, None],
    "rlock-chaincache-ABBA1": [["rX0", "A"], ["A", "rX0"], ["A", "wX0"], None],
    "rlock-W1R2-W2R3-W3R1": [["wX0", "rY"], ["wY", "rZ"], ["wZ", "rX0"], None],
    "rlock-W1W2-R2R3-W3R1": [["wX0", "wY"], ["rY", "rZ"], ["wZ", "rX0"], None],
    "rlock-W1W2-R2R3-R3W1": [["wX0", "wY"], ["rY", "rZ"], ["rZ", "wX0"], None],
    "rlock-W1R2-R2R3-W3W1": [["wX0", "rY"], ["rY", "rZ"], ["wZ", "wX0"], None],
    # Xen's rwlock: readers are not recursive (a waiting writer blocks them)
    "xen-rlock-AA": [["rQ", "rQ"], ["wQ"], None, None],
    "xen-rlock-write-then-read": [["wQ", "rQ"], None, None, None],
}


def _lock(s, name: str):
    """(lock, subclass or "r"/"w") of a name in ORDERS: ``A``, ``K1`` (s.K[1]), ``K1/1``
    (subclass 1), ``rX0``/``wX0`` (read or write of the reader-writer lock s.X[0])."""
    mode = 0
    if name[0] in "rw":
        mode, name = name[0], name[1:]
    name, _, sub = name.partition("/")
    lk = getattr(s, name[0])[int(name[1:])] if name[1:].isdigit() else getattr(s, name)
    return lk, mode or int(sub or 0)


_TAKE = {"r": read_lock, "w": write_lock}
_DROP = {"r": read_unlock, "w": write_unlock}


def _v(id: str, expect, doc: str) -> Variant:
    return Variant(id, expect=expect, provenance="lockdep selftest (lib/locking-selftest.c)", doc=doc)


class LockdepSelftest(Workload):
    """Each variant is one case of lockdep's selftest matrix, with its exact verdict."""

    name = "lockdep-selftest"
    state = State
    duration = 3.0
    hung_timeout = 1.0  # the 'hung' case must be reported within the run
    check_interval = 0.0
    variants = [
        _v("AA", ["recursive-locking", "deadlock"],
           "one CPU takes A twice: recursive locking, then a one-context wait cycle"),
        _v("AA-two-instances", "recursive-locking",
           "one CPU takes K[0] then K[1], two instances of one class, without a nesting annotation"),
        _v("nested-annotated", "clean", "K[0] then spin_lock_nested(K[1], 1) on two CPUs: lockdep's annotation"),
        _v("nested-annotation-lies", "deadlock",
           "K[0] then K[1] as subclass 1 on CPU 0, K[1] then K[0] as subclass 1 on CPU 1: the class graph "
           "sees one order (K -> K/1), as lockdep would, and the watchdog sees the real deadlock"),
        _v("per-instance-ordered", "clean", "P[0] then P[1] everywhere; P is declared per_instance: a class each"),
        _v("per-instance-inverted", ["lock-order-inversion", "deadlock"],
           "P[0] -> P[1] on CPU 0, P[1] -> P[0] on CPU 1: per-instance classes are ordered like any two"),
        _v("ABBA", ["lock-order-inversion", "deadlock"], "two CPUs, two orders"),
        _v("ABBCCA", ["lock-order-inversion", "deadlock"], "a 3-cycle over three CPUs"),
        _v("ABBCCDDA", ["lock-order-inversion", "deadlock"], "a 4-cycle over four CPUs"),
        _v("nested-ok", "clean", "consistent nesting A -> B -> C on every CPU"),
        _v("guarded-ABBA", "guarded-inversion",
           "ABBA under one common outer lock G: reported as guarded (information), not as a bug"),
        _v("two-keepers-ABBA", ["lock-order-inversion", "deadlock"],
           "ABBA with K[0] held on one path and K[1] on the other: two instances guard nothing"),
        _v("irq-inconsistent", "inconsistent-lock-state",
           "L taken in an ISR on CPU 1 and with interrupts enabled on CPU 0: inconsistent lock state"),
        _v("irq-safe", "clean", "L taken in ISRs and with spin_lock_irqsave everywhere else"),
        _v("irq-self-deadlock", ["inconsistent-lock-state", "deadlock"],
           "CPU 0 holds L with interrupts enabled; its ISR takes L: waits for itself"),
        _v("irq-order", "irq-lock-inversion",
           "L is irq-safe, L -> A is taken, A is taken with interrupts enabled: safe -> unsafe order"),
        _v("irq-order-safe", "clean",
           "L is irq-safe and L -> A is taken, but A is always taken with interrupts disabled"),
        _v("rlock-AA1", "clean", "recursive read-lock: read_lock(X[0]) twice (recursive readers)"),
        _v("rlock-AA1B", "clean", "recursive read-lock #2: read_lock(X[0]) then read_lock(X[1])"),
        _v("rlock-AA2", "recursive-locking", "mixed read-write-lock: read_lock(X[0]) then write_lock(X[1])"),
        _v("rlock-AA3", "recursive-locking", "mixed write-read-lock: write_lock(X[0]) then read_lock(X[1])"),
        _v("rlock-ABBA1", ["lock-order-inversion", "deadlock"],
           "mixed read-lock/lock-write ABBA: read X then A on CPU 0, A then write X on CPU 1"),
        _v("rlock-ABBA2", "clean",
           "mixed read-lock/lock-read ABBA: read X then A, A then read X: recursive readers cannot deadlock"),
        _v("rlock-ABBA3", ["lock-order-inversion", "deadlock"],
           "mixed write-lock/lock-write ABBA: write X then A, A then write X"),
        _v("rlock-chaincache-ABBA1", ["lock-order-inversion", "deadlock"],
           "chain cached mixed R-L/L-W ABBA: A -> read X is cached; A -> write X is a new chain"),
        _v("rlock-W1R2-W2R3-W3R1", ["lock-order-inversion", "deadlock"],
           "write-read / write-read / write-read: a deadlock even though the reads are recursive"),
        _v("rlock-W1W2-R2R3-W3R1", ["lock-order-inversion", "deadlock"],
           "write-write / read-read / write-read: a deadlock even though the reads are recursive"),
        _v("rlock-W1W2-R2R3-R3W1", "clean",
           "write-write / read-read / read-write: no deadlock when the reads are recursive (no strong cycle)"),
        _v("rlock-W1R2-R2R3-W3W1", "clean",
           "write-read / read-read / write-write: no deadlock when the reads are recursive (no strong cycle)"),
        _v("rlock-irq-read-recursion", "clean",
           "read-lock / write-lock recursion that is actually safe (irq_read_recursion): X written with "
           "interrupts off, read with interrupts on, and read in an ISR: recursive reads never conflict"),
        _v("rlock-irq-write-vs-read", ["inconsistent-lock-state", "deadlock"],
           "X read with interrupts on, and written in an ISR on that CPU: {HARDIRQ-ON-R} -> {IN-HARDIRQ-W}, "
           "and the ISR waits for its own task's read"),
        Variant("xen-rlock-AA", ["recursive-locking", "deadlock"],
                provenance="Xen's queued rwlock (xen/common/rwlock.c, 4.19): a waiting writer blocks new readers",
                doc="CPU 0 read-locks Q twice while CPU 1 write-locks it: the second read waits behind the "
                    "waiting writer, which waits for CPU 0's first read"),
        Variant("xen-rlock-write-then-read", "clean",
                provenance="Xen's _can_read_lock (xen/include/xen/rwlock.h, 4.19): _is_write_locked_by_me",
                doc="CPU 0 write-locks Q, then read-locks it: Xen lets the writing CPU read"),
        _v("dead-holder", "held-by-dead-worker", "CPU 0 dies holding A while CPU 1 waits for it"),
        _v("hung", "hung", "CPU 0 holds A and never releases it, without waiting for anything"),
    ]
    options = {"hold-us": Option(200, "how long the irq cases hold L, microseconds", min=0, max=100000)}

    class cpu(Role):
        """CPU i plays column i of the case."""

        count = 4

        @op()
        def step(self, s):
            v = self.variant
            i = self.index
            if v in ORDERS:
                order = ORDERS[v][i]
                if order is None:
                    self.cpu.delay(0.001)
                    return
                taken = []
                for name in order:
                    lk, sub = _lock(s, name)
                    if sub in _TAKE:
                        _TAKE[sub](lk)
                    elif sub:
                        spin_lock_nested(lk, sub)
                    else:
                        spin_lock(lk)
                    taken.append((lk, sub))
                for lk, sub in reversed(taken):
                    _DROP.get(sub, spin_unlock)(lk)
                return
            hold = self.options.__dict__["hold-us"] * 1e-6
            if v == "irq-inconsistent" and i == 0:
                spin_lock(s.L)  # interrupts enabled
                spin_unlock(s.L)
            elif v == "irq-safe" and i in (0, 1):
                flags = spin_lock_irqsave(s.L)
                self.cpu.delay(hold, spin=True)
                spin_unlock_irqrestore(s.L, flags)
            elif v == "irq-self-deadlock" and i == 0:
                spin_lock(s.L)  # interrupts enabled: our own ISR may come in here
                self.cpu.delay(hold, spin=True)
                spin_unlock(s.L)
            elif v in ("irq-order", "irq-order-safe") and i == 0:
                flags = spin_lock_irqsave(s.L)
                spin_lock(s.A)
                spin_unlock(s.A)
                spin_unlock_irqrestore(s.L, flags)
            elif v == "irq-order" and i == 1:
                spin_lock(s.A)  # interrupts enabled
                spin_unlock(s.A)
            elif v == "irq-order-safe" and i == 1:
                flags = spin_lock_irqsave(s.A)
                spin_unlock_irqrestore(s.A, flags)
            elif v in ("rlock-irq-read-recursion", "rlock-irq-write-vs-read") and i == 0:
                flags = spin_lock_irqsave(s.A)  # interrupts off: writes of X here are no irq-unsafe use
                write_lock(s.X[1])
                write_unlock(s.X[1])
                spin_unlock_irqrestore(s.A, flags)
            elif v in ("rlock-irq-read-recursion", "rlock-irq-write-vs-read") and i == 1:
                read_lock(s.X[1])  # interrupts enabled: our ISR may come in here
                self.cpu.delay(hold, spin=True)
                read_unlock(s.X[1])
            elif v == "dead-holder" and i == 0:
                spin_lock(s.A)
                os.kill(os.getpid(), signal.SIGKILL)
            elif v == "dead-holder" and i == 1:
                self.cpu.delay(0.05)
                spin_lock(s.A)
                spin_unlock(s.A)
            elif v == "hung" and i == 0:
                spin_lock(s.A)
                while True:  # holds A and waits for nothing (a stopped or spinning CPU)
                    self.cpu.check_stop()
                    self.cpu.delay(0.01)
            elif v == "hung" and i == 1:
                self.cpu.delay(0.05)
                spin_lock(s.A)
                spin_unlock(s.A)
            else:
                self.cpu.delay(0.001)

        @isr
        def irq(self, s, irq):
            if self.variant in ("irq-inconsistent", "irq-safe", "irq-self-deadlock", "irq-order", "irq-order-safe"):
                spin_lock(s.L)  # interrupt context: interrupts are off
                spin_unlock(s.L)
            elif self.variant == "rlock-irq-read-recursion":
                read_lock(s.X[1])  # a recursive reader in interrupt context: never waits for a reader
                read_unlock(s.X[1])
            elif self.variant == "rlock-irq-write-vs-read":
                write_lock(s.X[1])  # waits for its own task's read: forever
                write_unlock(s.X[1])

    class device(Role):
        """Raises interrupt 7 on the CPUs the case needs."""

        count = 1

        @op(rate=2000)
        def raise_irq(self, s):
            targets = {"irq-inconsistent": [1], "irq-safe": [0, 1], "irq-self-deadlock": [0],
                       "irq-order": [2], "irq-order-safe": [2], "rlock-irq-read-recursion": [1],
                       "rlock-irq-write-vs-read": [1]}.get(self.variant)
            if targets:
                for t in targets:
                    self.cpu.raise_irq(t, IRQ)
