"""Lockdep for the model: the lock-class dependency graph and the interrupt-usage rules.

Runs inside each worker, on the slow path of an acquisition: the first time this worker
forms a held-class chain (lockdep's chain cache, the per-worker ``Cpu.chains``), the chain
is validated here. The graph and the usage bits are shared by all workers in the arena:

- edge ``H -> C`` for every lock ``H`` held in the same context when ``C`` is taken (not
  for a trylock of ``C``), with the first site and worker of each and its *guard*: the set
  of lock *instances* that were held outside ``H`` every time the edge was seen (chain keys
  are per instance, so another instance under the same classes is a chain of its own and
  narrows the guard);
- a new or narrowed edge that closes a cycle is a **circular locking dependency**, reported
  with the shortest cycle. A cycle whose edges were all taken holding one same lock instance
  is reported as **guarded** by it (``guarded-inversion``): informational (it cannot deadlock
  while that lock serialises the paths), and re-reported as a plain inversion once an
  unguarded path appears. Two instances of one class (``keepers[0]`` on one path,
  ``keepers[1]`` on the other) serialise nothing: that cycle is a plain inversion;
- classes are the declared ones and, for ``spin_lock_nested(lock, n)``, subclass ``n`` of
  the lock's class (lockdep's nesting annotation: a distinct class for ordering), made on
  first use in the arena (``C_ORIGIN``) so that every worker names it alike;
- usage bits per class: taken in interrupt context, taken with interrupts enabled. Both on
  one class is an **inconsistent lock state**; a path from an irq-safe class to an
  irq-unsafe one is an **irq-safe -> irq-unsafe lock order**;
- taking a class already held in this context is **recursive locking** (same instance: a
  certain self-deadlock, which the watchdog then sees as a ``deadlock``).

Locking: every graph update happens under the arena's graph semaphore, taken with
interrupts soft-masked (the caller masks); nothing else is taken inside. A capacity that
is hit is counted in the arena header and makes the run's verdict incomplete: the
detector never switches itself off.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import posix_ipc

from shm_model import sites
from shm_model.arena import (C_CALLERS, USAGE_CALLERS, USAGES, acquire_retrying, C_IN_IRQ, C_IN_IRQ_SITE, C_IN_IRQ_WORKER, C_IRQ_ON, C_IRQ_ON_SITE,
                             C_IRQ_ON_WORKER, C_ORIGIN, C_REPORTED, C_IN_IRQ_R, C_IRQ_ON_R, DEP_EN, DEP_ER, DEP_SN, DEP_SR, E_FROM_SITE,
                             E_G0, E_GUARD, E_SEQ, E_TO_SITE, E_TYPES,
                             E_WORKER, GUARD_SLOTS, H_CAP_CLASSES, L_CLASS, H_CAP_EDGES, H_EDGE_SEQ, H_EDGES, H_NCLASSES,
                             MAX_CLASSES, W_CHAIN_MISS)
from shm_model.cpu import IRQ, Cpu
from shm_model.rwlock import is_read_key
from shm_model.spinlock import subclass_of

from .findings import Finding, now_ns

sites.internal(__file__)

GRAPH_LOCK_TIMEOUT_S = 2.0


class Lockdep:
    def __init__(self, world: Any, report: Callable[[Finding], None]) -> None:
        self.world = world
        self.mv = world.mv
        self.geo = world.geo
        self.sem: posix_ipc.Semaphore = world.arena.graph_sem
        self.declared = world.geo.n_classes
        self.names = world.class_names
        self.report = report
        self.reported: set[str] = set()
        self._subs: dict[tuple[int, int], int] = {}  # (class, subclass) -> class id, known here
        self._acq_read = False  # the acquisition being validated is a read (for its report)

    @property
    def n(self) -> int:
        """Classes in use: the declared ones and the subclasses made so far."""
        return max(self.declared, min(self.mv[H_NCLASSES], MAX_CLASSES))

    def _name(self, c: int) -> str:
        return class_name(self.mv, self.geo, self.names, c)

    def _lock_path(self, index: int, held: list = ()) -> str:
        for h, _ in held:
            if h.index == index:
                return h.path
        path = getattr(self.world, "lock_path", None)
        return path(index) if path else f"lock#{index}"

    def _cls(self, lock: Any, key: int) -> int:
        """The class of an acquisition: the lock's, or its subclass (``spin_lock_nested``).
        Requires: the graph semaphore (a new subclass is made in the arena)."""
        sub = subclass_of(key)
        if not sub:
            return lock.cls
        k = (lock.cls, sub)
        c = self._subs.get(k)
        if c is not None:
            return c
        mv, geo = self.mv, self.geo
        origin = lock.cls * 8 + sub + 1
        for x in range(self.declared, self.n):
            if mv[geo.cslot(x) + C_ORIGIN] == origin:
                self._subs[k] = x
                return x
        x = self.n
        if x >= MAX_CLASSES:
            mv[H_CAP_CLASSES] += 1  # ordered as the base class: the verdict says incomplete
            return lock.cls
        mv[geo.cslot(x) + C_ORIGIN] = origin
        mv[H_NCLASSES] = x + 1
        self._subs[k] = x
        return x

    # -- entry point (Hooks.new_chain) ----------------------------------------------------------
    def new_chain(self, cpu: Cpu, lock: Any, key: int, held: list, irqs_on: bool, trylock: bool) -> int:
        site = sites.capture(1)
        mv = self.mv
        mv[cpu.ws + W_CHAIN_MISS] += 1
        findings: list[Finding] = []
        if not acquire_retrying(self.sem, GRAPH_LOCK_TIMEOUT_S):
            mv[H_CAP_EDGES] += 1  # could not validate: the verdict says incomplete
            return site
        try:
            c = self._cls(lock, key)
            classes = [self._cls(h, hk) for h, hk in held]
            read = self._acq_read = _is_read(lock, key)
            for (h, hk), hc in zip(held, classes):
                if hc == c and not trylock:  # a trylock cannot wait (lockdep skips it too)
                    if read and h is lock and not _is_read(h, hk):
                        continue  # the rw kind: a CPU that holds the write lock may read-lock it (no wait)
                    if read and _is_read(h, hk) and lock.recursive_read:
                        continue  # lockdep: a recursive read after a read cannot deadlock
                    findings.append(self._recursive(cpu, lock, c, h, hc, site, held, read))
                    break
            rec = read and lock.recursive_read  # lockdep's read usage bits: recursive readers only
            if cpu.ctx == IRQ:
                bit = C_IN_IRQ_R if rec else C_IN_IRQ
                if self._mark(c, bit, site, cpu):
                    self._usage_changed(cpu, c, bit, lock, site, findings)
            elif irqs_on:
                bit = C_IRQ_ON_R if rec else C_IRQ_ON
                if self._mark(c, bit, site, cpu):
                    self._usage_changed(cpu, c, bit, lock, site, findings)
            if not trylock:
                outer: list[int] = []  # lock instances held outside h, outermost first
                acq = DEP_ER if read and lock.recursive_read else DEP_EN  # -(?R)-> or -(?N)->
                for (h, hk), hc in zip(held, classes):
                    if hc != c:
                        t = acq if not _is_read(h, hk) else acq << 2  # held shared: -(S?)->
                        self._edge(cpu, h, hc, lock, c, site, outer, held, findings, t)
                    outer.append(h.index)
        finally:
            self.sem.release()
        self._emit(findings)
        return site

    def _emit(self, findings: list[Finding]) -> None:
        """Resolve site ints to text (outside the graph lock: it can be slow) and report."""
        for f in findings:
            if f.signature not in self.reported:
                self.reported.add(f.signature)
                f.details = self._resolve(f.details)
                self.report(f)

    def _resolve(self, obj: Any, key: str = "") -> Any:
        if isinstance(obj, dict):
            out = {k: self._resolve(v, k) for k, v in obj.items()}
            if "callers_site" in out:  # a list of site ints: the acquiring context's callers
                out["callers"] = [self.world.site(x) for x in out.pop("callers_site") if x]
            return out
        if isinstance(obj, list):
            return [self._resolve(v, key) for v in obj]
        if key == "callers_site":
            return obj
        if key.endswith("site") and isinstance(obj, int):
            return self.world.site(obj)
        return obj

    def irqs_enabled_holding(self, cpu: Cpu) -> None:
        """Interrupts were enabled while task-context locks are held: each such class is
        now used with interrupts enabled (lockdep's mark_held_locks)."""
        for h, hk in cpu.held[0]:
            findings: list[Finding] = []
            if not acquire_retrying(self.sem, GRAPH_LOCK_TIMEOUT_S):
                self.mv[H_CAP_EDGES] += 1
                return
            try:
                hc = self._cls(h, hk)
                read = _is_read(h, hk)
                bit = C_IRQ_ON_R if read and h.recursive_read else C_IRQ_ON
                hsite = self.mv[self.geo.rhslot(h.index, cpu.oid[0]) + 1] if read else self.mv[h.o_site]
                if self._mark(hc, bit, hsite, cpu, stack=False):  # the site is the held lock's, not here
                    self._usage_changed(cpu, hc, bit, h, hsite, findings)
            finally:
                self.sem.release()
            self._emit(findings)

    # -- graph ----------------------------------------------------------------------------------
    def guards(self, a: int, b: int) -> list[int]:
        """Lock instances held outside ``a`` on every occasion edge a -> b was taken."""
        e = self.geo.eslot(a, b)
        n = self.mv[e + E_GUARD]
        return list(self.mv[e + E_G0:e + E_G0 + n]) if n > 0 else []

    def _set_guards(self, e: int, g: list[int]) -> None:
        g = g[-GUARD_SLOTS:]  # the innermost: dropping one can only make a cycle look less safe
        for i, x in enumerate(g):
            self.mv[e + E_G0 + i] = x
        self.mv[e + E_GUARD] = len(g)

    def _edge(self, cpu: Cpu, h: Any, hc: int, lock: Any, c: int, site: int, outer: list[int], held: list,
              findings: list[Finding], t: int = DEP_EN) -> None:
        mv = self.mv
        e = self.geo.eslot(hc, c)
        if mv[e + E_SEQ] == 0:
            seq = mv[H_EDGE_SEQ] + 1
            mv[H_EDGE_SEQ] = seq
            shared = t & (DEP_SN | DEP_SR)  # held for reading: its site is in its read-hold record
            mv[e + E_FROM_SITE] = mv[self.geo.rhslot(h.index, cpu.oid[cpu.ctx]) + 1] if shared else mv[h.o_site]
            mv[e + E_TO_SITE] = site
            mv[e + E_WORKER] = cpu.oid[cpu.ctx]
            mv[e + E_TYPES] = t
            self._set_guards(e, outer)
            mv[e + E_SEQ] = seq
            mv[H_EDGES] += 1
            self._edge_irq_check(cpu, hc, c, lock, site, findings)
        else:
            g = self.guards(hc, c)
            narrowed = [x for x in g if x in outer]
            new_type = not mv[e + E_TYPES] & t
            if narrowed == g and not new_type:
                return  # seen before with at least these guards and this type: nothing new
            mv[e + E_TYPES] |= t
            self._set_guards(e, narrowed)
        path = self._strong_path(c, hc, t)
        if path is None:
            return
        cycle = path + [c]  # C -> ... -> H -> C
        guard = set(self.guards(hc, c))
        for a, b in zip(path, path[1:]):
            guard &= set(self.guards(a, b))
        in_cycle = set(cycle)
        guard = {x for x in guard if self.mv[self.geo.lslot(x) + L_CLASS] not in in_cycle}
        findings.append(self._circular(cpu, lock, c, h, hc, site, path, sorted(guard), held))

    def _path(self, src: int, dst: int) -> list[int] | None:
        """Shortest path src -> ... -> dst in the class graph (BFS), or None."""
        mv, geo, n = self.mv, self.geo, self.n
        prev = {src: -1}
        q = deque([src])
        while q:
            x = q.popleft()
            if x == dst:
                out = [x]
                while prev[out[-1]] != -1:
                    out.append(prev[out[-1]])
                return out[::-1]
            for y in range(n):
                if y not in prev and mv[geo.eslot(x, y) + E_SEQ]:
                    prev[y] = x
                    q.append(y)
        return None

    def _strong_path(self, src: int, dst: int, t0: int) -> list[int] | None:
        """Shortest *strong* path src -> ... -> dst closing a cycle with the new edge
        dst -> src of type ``t0`` (lockdep's read/write rules, Documentation/locking/
        lockdep-design.rst "Dependency types and strong dependency paths"): no two
        consecutive dependencies -(xR)-> -(Sy)-> (a lock taken as a recursive reader and
        then held shared cannot block the next one), the wrap-around included. A cycle
        of spinlocks and writers only is always strong; a read-read cycle of recursive
        readers never is. BFS over (class, arrived as a recursive reader)."""
        mv, geo, n = self.mv, self.geo, self.n
        r0 = bool(t0 & (DEP_ER | DEP_SR))
        end_ok_r = not t0 & (DEP_SN | DEP_SR)  # the new edge's first lock held exclusively
        start = (src, r0)
        prev: dict[tuple[int, bool], tuple[int, bool] | None] = {start: None}
        q = deque([start])
        while q:
            x, r = q.popleft()
            if x == dst and (not r or end_ok_r):
                out = [x]
                st = prev[(x, r)]
                while st is not None:
                    out.append(st[0])
                    st = prev[st]
                return out[::-1]
            for y in range(n):
                e = geo.eslot(x, y)
                if not mv[e + E_SEQ]:
                    continue
                ts = mv[e + E_TYPES] or DEP_EN
                if r:
                    ts &= DEP_EN | DEP_ER  # after -(xR)-> only -(Ey)-> keeps the path strong
                for nr, mask in ((False, DEP_EN | DEP_SN), (True, DEP_ER | DEP_SR)):
                    if ts & mask and (y, nr) not in prev:
                        prev[(y, nr)] = (x, r)
                        q.append((y, nr))
        return None

    def _reach(self, start: int, forward: bool) -> dict[int, int]:
        """Classes reachable from ``start`` (forward) or reaching it (backward), with the
        predecessor of each on a shortest path."""
        mv, geo, n = self.mv, self.geo, self.n
        prev = {start: -1}
        q = deque([start])
        while q:
            x = q.popleft()
            for y in range(n):
                e = geo.eslot(x, y) if forward else geo.eslot(y, x)
                if y not in prev and mv[e + E_SEQ]:
                    prev[y] = x
                    q.append(y)
        return prev

    # -- usage ----------------------------------------------------------------------------------
    def _mark(self, c: int, bit: int, site: int, cpu: Cpu, stack: bool = True) -> bool:
        """Record usage ``bit`` of class ``c`` if it is new: its site, its context and, with
        ``stack``, the callers of this acquisition (the usage's stack trace, lockdep's)."""
        mv = self.mv
        s = self.geo.cslot(c)
        if mv[s + bit]:
            return False
        mv[s + bit + 1] = site
        mv[s + bit + 2] = cpu.oid[cpu.ctx]
        callers = sites.capture_stack(1, 1 + USAGE_CALLERS)[1:] if stack else ()
        base = s + C_CALLERS + USAGES.index(bit) * USAGE_CALLERS
        for i in range(USAGE_CALLERS):
            mv[base + i] = callers[i] if i < len(callers) else 0
        mv[s + bit] = 1
        return True

    def _usage_changed(self, cpu: Cpu, c: int, bit: int, lock: Any, site: int, findings: list[Finding]) -> None:
        mv, geo = self.mv, self.geo
        s = geo.cslot(c)
        # lockdep's mark_lock_irq: a usage conflicts with the opposite write usage, and a write
        # usage with the opposite read usage too; two recursive reads do not conflict
        inw, onw, inr, onr = mv[s + C_IN_IRQ], mv[s + C_IRQ_ON], mv[s + C_IN_IRQ_R], mv[s + C_IRQ_ON_R]
        if (inw and (onw or onr) or inr and onw) and not mv[s + C_REPORTED]:
            mv[s + C_REPORTED] = 1
            findings.append(self._inconsistent(cpu, c, bit, lock, site))
        if bit in (C_IN_IRQ_R, C_IRQ_ON_R):
            return  # a recursive read neither makes a class irq-safe nor irq-unsafe for ordering
        if bit == C_IN_IRQ:  # c is irq-safe now: does it lead to an irq-unsafe class?
            reach = self._reach(c, forward=True)
            for u in reach:
                if u != c and mv[geo.cslot(u) + C_IRQ_ON]:
                    findings.append(self._irq_order(cpu, c, u, reach, None, lock, site))
                    return
        else:  # c is irq-unsafe now: is it reached from an irq-safe class?
            reach = self._reach(c, forward=False)
            for sfe in reach:
                if sfe != c and mv[geo.cslot(sfe) + C_IN_IRQ]:
                    findings.append(self._irq_order(cpu, sfe, c, None, reach, lock, site))
                    return

    def _edge_irq_check(self, cpu: Cpu, a: int, b: int, lock: Any, site: int, findings: list[Finding]) -> None:
        """New edge a -> b: an irq-safe class behind ``a`` now reaches an irq-unsafe one
        beyond ``b``?"""
        mv, geo = self.mv, self.geo
        back = self._reach(a, forward=False)
        safe = [x for x in back if mv[geo.cslot(x) + C_IN_IRQ]]
        if not safe:
            return
        fwd = self._reach(b, forward=True)
        unsafe = [x for x in fwd if mv[geo.cslot(x) + C_IRQ_ON]]
        if unsafe:
            findings.append(self._irq_order(cpu, safe[0], unsafe[0], fwd, back, lock, site, via=(a, b)))

    # -- findings -------------------------------------------------------------------------------
    def _lock_info(self, lk: Any, site: int | None = None, cls: int | None = None, read: bool = False) -> dict:
        d = {"lock": lk.path, "cls": self._name(lk.cls if cls is None else cls),
             "site": site if site is not None else self.mv[lk.o_site]}
        if read:
            d["read"] = True
            if site is None:
                d["site"] = self.mv[self.geo.rhslot(lk.index, lk.cpu.oid[lk.cpu.ctx]) + 1]
        return d

    def _held_info(self, held: list) -> list[dict]:
        return [self._lock_info(h, cls=self._cls(h, hk), read=_is_read(h, hk)) for h, hk in held]

    def _edge_info(self, a: int, b: int) -> dict:
        mv = self.mv
        e = self.geo.eslot(a, b)
        d = {"from": self._name(a), "to": self._name(b), "from_site": mv[e + E_FROM_SITE],
             "to_site": mv[e + E_TO_SITE], "owner": mv[e + E_WORKER],
             "guards": [self._lock_path(x) for x in self.guards(a, b)]}
        types = mv[e + E_TYPES]
        if types and types != DEP_EN:  # a reader-writer dependency: say which kinds were seen
            d["types"] = dep_types(types)
        return d

    def _new(self, cpu: Cpu, outcome: str, title: str, signature: str, details: dict, info: bool = False) -> Finding:
        details.setdefault("owner", cpu.oid[cpu.ctx])
        return Finding(outcome, title, cpu.wid, details, t_ns=now_ns(), signature=signature, info=info,
                       potential=True)

    def _circular(self, cpu: Cpu, lock: Any, c: int, h: Any, hc: int, site: int, path: list[int],
                  guard: list[int], held: list) -> Finding:
        chain = [self._edge_info(a, b) for a, b in zip(path, path[1:])]
        names = [self._name(x) for x in path]
        guarded = [self._lock_path(x, held) for x in guard]
        acquiring = self._lock_info(lock, site, c, read=self._acq_read)
        acquiring["callers_site"] = list(sites.capture_stack(1, 4)[1:])
        hk = next((k for x, k in held if x is h), 0)
        holding = self._lock_info(h, cls=hc, read=_is_read(h, hk))
        details = {
            "acquiring": acquiring,
            "holding": holding,
            "chain": chain,  # existing C -> ... -> H, in order
            "new_edge": {"from": self._name(hc), "to": self._name(c), "from_site": holding["site"],
                         "to_site": site, "owner": cpu.oid[cpu.ctx]},
            "cycle": names + [names[0]],
            "guarded_by": guarded,  # lock instances (paths) held on every edge of the cycle
            "guarded_by_cls": [self._name(self.mv[self.geo.lslot(x) + L_CLASS]) for x in guard],
            "held": self._held_info(held),
        }
        sig = "circular:" + "->".join(sorted(set(names))) + (":guarded" if guarded else "")
        title = "WARNING: possible circular locking dependency detected"
        return self._new(cpu, "guarded-inversion" if guarded else "lock-order-inversion", title, sig, details,
                         info=bool(guarded))

    def _recursive(self, cpu: Cpu, lock: Any, c: int, h: Any, hc: int, site: int, held: list,
                   read: bool = False) -> Finding:
        same = h is lock
        hk = next((k for x, k in held if x is h), 0)
        details = {"acquiring": self._lock_info(lock, site, c, read=read),
                   "holding": self._lock_info(h, cls=hc, read=_is_read(h, hk)),
                   "same_instance": same, "held": self._held_info(held)}
        return self._new(cpu, "recursive-locking", "WARNING: possible recursive locking detected",
                         f"recursive:{self._name(c)}:{same}", details)

    def _usage(self, c: int, bit: int) -> dict:
        s = self.geo.cslot(c)
        base = s + C_CALLERS + USAGES.index(bit) * USAGE_CALLERS
        return {"site": self.mv[s + bit + 1], "owner": self.mv[s + bit + 2],
                "callers_site": [self.mv[base + i] for i in range(USAGE_CALLERS)]}

    def _inconsistent(self, cpu: Cpu, c: int, bit: int, lock: Any, site: int) -> Finding:
        s = self.geo.cslot(c)
        name = {C_IN_IRQ: "IN-HARDIRQ-W", C_IN_IRQ_R: "IN-HARDIRQ-R", C_IRQ_ON: "HARDIRQ-ON-W",
                C_IRQ_ON_R: "HARDIRQ-ON-R"}
        new = name[bit]
        if bit in (C_IN_IRQ, C_IN_IRQ_R):  # the opposite usage seen before: a write one if any
            obit = C_IRQ_ON if self.mv[s + C_IRQ_ON] else C_IRQ_ON_R
        else:
            obit = C_IN_IRQ if self.mv[s + C_IN_IRQ] else C_IN_IRQ_R
        old = name[obit]
        inb = bit if bit in (C_IN_IRQ, C_IN_IRQ_R) else obit
        onb = obit if inb == bit else bit
        details = {"cls": self._name(c), "lock": lock.path, "usage_new": new, "usage_old": old,
                   "site": site,
                   "in_irq": self._usage(c, inb), "irq_on": self._usage(c, onb),
                   "held": self._held_info(cpu.held[cpu.ctx])}
        return self._new(cpu, "inconsistent-lock-state", "WARNING: inconsistent lock state",
                         f"inconsistent:{self._name(c)}", details)

    def _irq_order(self, cpu: Cpu, safe: int, unsafe: int, fwd: dict | None, back: dict | None,
                   lock: Any, site: int, via: tuple[int, int] | None = None) -> Finding:
        path = self._path(safe, unsafe) or [safe, unsafe]
        details = {"safe": self._name(safe), "unsafe": self._name(unsafe),
                   "chain": [self._edge_info(a, b) for a, b in zip(path, path[1:])],
                   "in_irq": self._usage(safe, C_IN_IRQ), "irq_on": self._usage(unsafe, C_IRQ_ON),
                   "acquiring": self._lock_info(lock, site)}
        return self._new(cpu, "irq-lock-inversion", "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
                         f"irq-order:{self._name(safe)}:{self._name(unsafe)}", details)


def _is_read(lock: Any, key: int) -> bool:
    """Is this held-stack entry (or acquisition) a read of a reader-writer lock?"""
    return getattr(lock, "kind", "spin") == "rw" and is_read_key(key, lock.index)


def dep_types(mask: int) -> list[str]:
    """Lockdep's names of the dependency types in an edge's mask: ``EN``, ``ER``, ``SN``, ``SR``."""
    return [n for bit, n in ((DEP_EN, "EN"), (DEP_ER, "ER"), (DEP_SN, "SN"), (DEP_SR, "SR")) if mask & bit]


def class_name(mv: Any, geo: Any, declared: list[str], c: int) -> str:
    """A class's name: a declared one, or ``<base>/<n>`` for subclass n of a declared class
    (spin_lock_nested), as lockdep prints it."""
    if 0 <= c < len(declared):
        return declared[c]
    origin = mv[geo.cslot(c) + C_ORIGIN] if 0 <= c < MAX_CLASSES else 0
    if origin <= 0:
        return f"class#{c}"
    base, sub = divmod(origin - 1, 8)
    return f"{declared[base] if base < len(declared) else f'class#{base}'}/{sub}"
