"""The litmus table: the weak-memory emulation (shm_model.weak) checked against the published
outcomes of the classic tests, before it judges any Xen code.

Each test is herd7's: a few threads of loads, stores and barriers over shared locations
initially 0, and an ``exists`` condition on the final registers (and memory). Its expected
observation on ARMv8 / the Linux-kernel memory model (LKMM) is ``Sometimes`` (the condition
is allowed, so an emulation that never shows it is too strong to find anything) or
``Never`` (forbidden: observed even once, the emulation is wrong). The expectations are
those of herd7's ``aarch64.cat`` and ``tools/memory-model/linux-kernel.cat``; each test
names its source below.

How a trial runs: the threads' instructions execute through the same :class:`MemCpu` the
workers use (store buffers, older-message loads, deferred loads, barriers), one CPU each,
in one process; a seeded scheduler picks which thread executes its next instruction at every
step (every access is a scheduling point, as in the controlled scheduler), and a thread's
end is the end of an operation: it settles (its deferred loads are performed and its
buffer drains) one step at a time, other threads running between the steps
(``MemCpu.quiesce``).
Trials differ only by the seed's choices, so a run's counts are reproducible.

Instruction forms (a thread is a tuple of them):

- ``("W", x, v)`` WRITE_ONCE(x, v); ``("Wrel", x, v)`` smp_store_release;
- ``("R", r, x)`` r = READ_ONCE(x); ``("Racq", r, x)`` smp_load_acquire;
- ``("Raddr", r, x, q)`` r = READ_ONCE(x) at an address that depends on register q;
- ``("Wdata", x, v, q)`` WRITE_ONCE(x, v + (q ^ q)): a store whose value depends on q;
- ``("F", "wmb" | "rmb" | "mb")`` smp_wmb / smp_rmb / smp_mb.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._fastlock import WM_WORDS, MemWords
from .weak import LOC_N, LOC_RING, WHO_INIT, Deferred, MemCpu, WeakMemory, value

Instr = tuple


@dataclass(frozen=True)
class Litmus:
    """One test: its threads, its ``exists`` condition (register ``"t:r"`` or location
    name -> value) and the expected observation with its source."""

    name: str
    threads: tuple[tuple[Instr, ...], ...]
    exists: tuple[tuple[str, int], ...]
    expect: str  # "Sometimes" | "Never"
    source: str

    @property
    def locations(self) -> list[str]:
        out: list[str] = []
        for th in self.threads:
            for ins in th:
                loc = ins[1] if ins[0] in ("W", "Wrel", "Wdata") else ins[2] if ins[0] in ("R", "Racq", "Raddr") else None
                if loc is not None and loc not in out:
                    out.append(loc)
        return out

    def condition(self) -> str:
        return " /\\ ".join(f"{k}={v}" for k, v in self.exists)


ARM = "herd7 aarch64.cat"
LKMM = "tools/memory-model (LKMM)"

TABLE: tuple[Litmus, ...] = (
    Litmus("MP", ((("W", "x", 1), ("W", "y", 1)), (("R", "r0", "y"), ("R", "r1", "x"))),
           (("1:r0", 1), ("1:r1", 0)), "Sometimes", f"{ARM}: MP; {LKMM} MP+poonceonces"),
    Litmus("MP+wmb", ((("W", "x", 1), ("F", "wmb"), ("W", "y", 1)), (("R", "r0", "y"), ("R", "r1", "x"))),
           (("1:r0", 1), ("1:r1", 0)), "Sometimes", f"{ARM}: MP+dmb.st+po (the reader's loads reorder)"),
    Litmus("MP+rmb", ((("W", "x", 1), ("W", "y", 1)), (("R", "r0", "y"), ("F", "rmb"), ("R", "r1", "x"))),
           (("1:r0", 1), ("1:r1", 0)), "Sometimes", f"{ARM}: MP+po+dmb.ld (the writer's stores reorder)"),
    Litmus("MP+wmb+rmb", ((("W", "x", 1), ("F", "wmb"), ("W", "y", 1)),
                          (("R", "r0", "y"), ("F", "rmb"), ("R", "r1", "x"))),
           (("1:r0", 1), ("1:r1", 0)), "Never", f"{ARM}: MP+dmb.st+dmb.ld; {LKMM} MP+fencewmbonceonce+fencermbonceonce"),
    Litmus("MP+release+acquire", ((("W", "x", 1), ("Wrel", "y", 1)), (("Racq", "r0", "y"), ("R", "r1", "x"))),
           (("1:r0", 1), ("1:r1", 0)), "Never", f"{ARM}: MP+popl+poap; {LKMM} MP+pooncerelease+poacquireonce"),
    Litmus("SB", ((("W", "x", 1), ("R", "r0", "y")), (("W", "y", 1), ("R", "r1", "x"))),
           (("0:r0", 0), ("1:r1", 0)), "Sometimes", f"{ARM}: SB; {LKMM} SB+poonceonces"),
    Litmus("SB+mb", ((("W", "x", 1), ("F", "mb"), ("R", "r0", "y")), (("W", "y", 1), ("F", "mb"), ("R", "r1", "x"))),
           (("0:r0", 0), ("1:r1", 0)), "Never", f"{ARM}: SB+dmbs; {LKMM} SB+fencembonceonces"),
    Litmus("LB", ((("R", "r0", "x"), ("W", "y", 1)), (("R", "r1", "y"), ("W", "x", 1))),
           (("0:r0", 1), ("1:r1", 1)), "Sometimes", f"{ARM}: LB; {LKMM} LB+poonceonces"),
    Litmus("LB+deps", ((("R", "r0", "x"), ("Wdata", "y", 1, "r0")), (("R", "r1", "y"), ("Wdata", "x", 1, "r1"))),
           (("0:r0", 1), ("1:r1", 1)), "Never", f"{ARM}: LB+datas (a store whose value depends on the load)"),
    Litmus("WRC", ((("W", "x", 1),), (("R", "r0", "x"), ("W", "y", 1)), (("R", "r1", "y"), ("R", "r2", "x"))),
           (("1:r0", 1), ("2:r1", 1), ("2:r2", 0)), "Sometimes", f"{ARM}: WRC; {LKMM} WRC+poonceonces+Once"),
    Litmus("WRC+wmb+rmb", ((("W", "x", 1),), (("R", "r0", "x"), ("F", "wmb"), ("W", "y", 1)),
                           (("R", "r1", "y"), ("F", "rmb"), ("R", "r2", "x"))),
           (("1:r0", 1), ("2:r1", 1), ("2:r2", 0)), "Sometimes",
           f"{ARM}: WRC+dmb.st+dmb.ld (DMB ST does not order the middle thread's load before its store); "
           f"{LKMM}: smp_wmb is not cumulative"),
    Litmus("WRC+release+acquire", ((("W", "x", 1),), (("R", "r0", "x"), ("Wrel", "y", 1)),
                                   (("Racq", "r1", "y"), ("R", "r2", "x"))),
           (("1:r0", 1), ("2:r1", 1), ("2:r2", 0)), "Never",
           f"{ARM}: WRC+popl+poap (release is cumulative); {LKMM} WRC+pooncerelease+fencermbonceonce+Once"),
    Litmus("2+2W", ((("W", "x", 1), ("W", "y", 2)), (("W", "y", 1), ("W", "x", 2))),
           (("x", 1), ("y", 1)), "Sometimes", f"{ARM}: 2+2W; {LKMM} 2+2W+poonceonces"),
    Litmus("IRIW", ((("W", "x", 1),), (("W", "y", 1),), (("R", "r0", "x"), ("R", "r1", "y")),
                    (("R", "r2", "y"), ("R", "r3", "x"))),
           (("2:r0", 1), ("2:r1", 0), ("3:r2", 1), ("3:r3", 0)), "Sometimes",
           f"{ARM}: IRIW (the readers' loads reorder); {LKMM} IRIW+poonceonces+OnceOnce"),
    Litmus("IRIW+addrs", ((("W", "x", 1),), (("W", "y", 1),), (("R", "r0", "x"), ("Raddr", "r1", "y", "r0")),
                          (("R", "r2", "y"), ("Raddr", "r3", "x", "r2"))),
           (("2:r0", 1), ("2:r1", 0), ("3:r2", 1), ("3:r3", 0)), "Never",
           f"{ARM}: IRIW+addrs (ARMv8 is other-multi-copy-atomic)"),
)

BY_NAME = {t.name: t for t in TABLE}


@dataclass
class Result:
    test: Litmus
    trials: int
    states: dict[tuple, int] = field(default_factory=dict)
    positive: int = 0
    seconds: float = 0.0

    @property
    def negative(self) -> int:
        return self.trials - self.positive

    @property
    def observation(self) -> str:
        if self.positive == 0:
            return "Never"
        return "Always" if self.negative == 0 else "Sometimes"

    @property
    def ok(self) -> bool:
        """Forbidden never seen; allowed seen at least once."""
        if self.test.expect == "Never":
            return self.positive == 0
        return self.positive > 0

    def herd(self) -> str:
        """herd7's output shape, with litmus7's per-state counts."""
        t = self.test
        lines = [f"Test {t.name} Allowed", f"States {len(self.states)}"]
        for st, n in sorted(self.states.items()):
            lines.append(f"{n:<8}:>" + " ".join(f"{k}={v};" for k, v in st))
        lines.append("Ok" if self.positive else "No")
        lines.append("Witnesses")
        lines.append(f"Positive: {self.positive} Negative: {self.negative}")
        lines.append(f"Condition exists ({t.condition()})")
        lines.append(f"Observation {t.name} {self.observation} {self.positive} {self.negative}")
        lines.append(f"Expected {t.expect} ({t.source}): {'ok' if self.ok else 'FAIL'}")
        return "\n".join(lines)


class Runner:
    """Runs trials of one test over a private word buffer with the workers' MemCpu."""

    def __init__(self, test: Litmus, seed: int = 0) -> None:
        self.test = test
        self.locs = test.locations
        n = 1 + WM_WORDS * len(self.locs)
        self._buf = bytearray(8 * n)
        self.mv = memoryview(self._buf).cast("q")
        self._zero = bytes(8 * n)
        self.addr = {name: 1 + WM_WORDS * i for i, name in enumerate(self.locs)}
        self.wm = WeakMemory.__new__(WeakMemory)
        self.wm.mv = self.mv
        self.wm.words = MemWords(self.mv)
        self.wm.base = 0
        self.wm.clock = 0
        self.wm.names = {a: name for name, a in self.addr.items()}
        self.wm.me = None
        self.rng = random.Random(seed)

    def close(self) -> None:
        self.wm.words.release()
        self.mv.release()

    def _reset(self) -> None:
        self._buf[:] = self._zero
        mv = self.mv
        for a in self.addr.values():
            mv[a + LOC_N] = 1
            mv[a + LOC_RING + 3] = WHO_INIT

    def trial(self) -> tuple:
        self._reset()
        rng = self.rng
        threads = self.test.threads
        cpus = [MemCpu(self.wm, None, i, rng.getrandbits(64)) for i in range(len(threads))]
        regs: list[dict[str, Any]] = [{} for _ in threads]
        tss: list[dict[str, int]] = [{} for _ in threads]  # the timestamp each eager load read
        pcs = [0] * len(threads)
        live = [i for i in range(len(threads))]
        addr = self.addr
        while live:
            t = live[rng.randrange(len(live))] if len(live) > 1 else live[0]
            mc = cpus[t]
            if pcs[t] == len(threads[t]):  # the end of the thread's operation: it settles, a step at a time
                if not mc.settle_one():
                    live.remove(t)
                continue
            ins = threads[t][pcs[t]]
            pcs[t] += 1
            op = ins[0]
            if op == "W":
                mc.store(addr[ins[1]], ins[2], 0)
            elif op == "R":
                regs[t][ins[1]] = mc.load(addr[ins[2]], 0)
                tss[t][ins[1]] = mc.last_ts
            elif op == "Racq":
                regs[t][ins[1]] = mc.load_acquire(addr[ins[2]])
            elif op == "Wrel":
                mc.store_release(addr[ins[1]], ins[2])
            elif op == "Raddr":
                q = regs[t][ins[3]]
                value(q)  # the address is computed from q: q's load is performed first
                mc.addr_dep(q._ts if isinstance(q, Deferred) else tss[t][ins[3]])
                regs[t][ins[1]] = mc.load(addr[ins[2]], 0)
            elif op == "Wdata":
                q = value(regs[t][ins[3]])
                mc.store(addr[ins[1]], ins[2] + (q ^ q), 0)
            elif op == "F":
                getattr(mc, ins[1])()
        out = []
        for k, _ in self.test.exists:
            if ":" in k:
                tid, r = k.split(":")
                out.append((k, value(regs[int(tid)][r])))
            else:
                out.append((k, self.mv[addr[k]]))
        for mc in cpus:
            mc._release_buffer()
        return tuple(out)

    def run(self, trials: int, progress: Callable[[int], None] | None = None) -> Result:
        res = Result(self.test, trials)
        want = tuple(self.test.exists)
        t0 = time.perf_counter()
        for i in range(trials):
            st = self.trial()
            res.states[st] = res.states.get(st, 0) + 1
            if st == want:
                res.positive += 1
            if progress is not None and (i + 1) % 10_000 == 0:
                progress(i + 1)
        res.seconds = time.perf_counter() - t0
        return res


def run_table(trials: int, seed: int = 0, names: list[str] | None = None,
              progress: Callable[[str, int], None] | None = None) -> list[Result]:
    out = []
    for t in TABLE:
        if names and t.name not in names:
            continue
        r = Runner(t, seed)
        try:
            out.append(r.run(trials, (lambda n, name=t.name: progress(name, n)) if progress else None))
        finally:
            r.close()
    return out


__all__ = ["Litmus", "TABLE", "BY_NAME", "Runner", "Result", "run_table"]
