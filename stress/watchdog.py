"""The watchdog: actual deadlocks, locks held by dead workers, hung workers.

Runs in the coordinator, reading the arena only (a wedged worker cannot tell us anything).
Nodes of the wait-for graph are contexts: (worker, task) and (worker, irq).

- A context waiting for a lock points at every context the lock's kind says it waits for
  (shm_model/records.py: a spinlock's owner; a reader-writer lock's queue holder, writer,
  or each of its readers); a task interrupted by
  its ISR (``in_irq``) points at that ISR: it cannot run until the ISR returns. So an ISR
  waiting for a lock its own task holds is the cycle (w, irq) -> (w, task) -> (w, irq).
- A cycle of any length that is present, unchanged, in two consecutive scans (same members,
  same wait sequence numbers: nobody moved) is a deadlock.
- A lock whose owner is a dead process is held by a dead worker.
- A context that has waited longer than the hung timeout for a chain of holders ending in
  a live context that is not waiting (stopped, spinning, sleeping) is hung.
- A worker that makes no progress past the hung timeout is hung whatever it waits for:
  (a) its process has been stopped (SIGSTOP, a tracer) that long, whether or not it holds
  locks or anyone waits for it; (b) it has been inside one operation that long with nobody
  waiting for it (under the controlled scheduler: only the worker holding the run token,
  as the others wait for the scheduler's choice, not for themselves), and not stopped: a
  stop inside an operation is reported as the stop, once it has lasted the timeout. A worker between operations (parked for an invariant check, sleeping
  before a paced operation) is never hung unless its process is stopped.

Every scan also reads each worker's process state with psutil: whether it is stopped
(status 'stopped' or 'tracing-stop') and whether it is runnable but not scheduled (status
'running' while its CPU time does not advance between scans), and since when. Reports name
that state and its length ("stopped (SIGSTOP or SIGTSTP) for 4.1 s").
"""

from __future__ import annotations

from typing import Any, Callable

from dataclasses import dataclass

from shm_model.arena import NO_OWNER, W_IN_IRQ, W_OP, W_OP_START
from shm_model.records import MODE_NAMES, WaitRecord, holders, waits_for

from .findings import Finding, now_ns

Node = tuple[int, int]  # (worker, context)
Probe = Callable[[int], "tuple[str, float] | None"]  # worker -> (psutil status, cpu seconds)

STOPPED = ("stopped", "tracing-stop")


@dataclass(frozen=True)
class Waiting:
    """A waiting context: its record, and the owners its lock's kind says it waits for (a
    spinlock's owner; a rwlock's queue holder, writer, or every reader)."""

    rec: WaitRecord
    owners: tuple[int, ...]

    @property
    def owner(self) -> int:
        return self.owners[0] if self.owners else NO_OWNER


class Watchdog:
    def __init__(self, world: Any, hung_timeout_s: float, probe: Probe | None = None,
                 runner: Callable[[], int] | None = None) -> None:
        self.world = world
        # controlled mode: who holds the run token. Only it runs, so only it can be blamed for
        # staying inside one operation; the others wait for the scheduler, not for themselves
        self.runner = runner
        self.hung_ns = int(hung_timeout_s * 1e9)
        self._seen: set[tuple] = set()  # cycles of the previous scan
        self.reported: set[str] = set()
        self.scans = 0
        self.probe: Probe = probe if probe is not None else self._probe_psutil
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process (cached: one /proc read a scan)
        self.status: dict[int, str] = {}  # worker -> psutil status at the last scan
        self.stopped_since: dict[int, int] = {}  # worker -> when first seen stopped (now_ns)
        self.last_stop: dict[int, tuple[int, int, str]] = {}  # worker -> (since, until, status) of its last stop
        self.unsched_since: dict[int, int] = {}  # worker -> since when runnable with no CPU time
        self._prev: dict[int, tuple[str, float, int]] = {}  # worker -> (status, cpu_s, t_ns) last scan

    # -- the processes --------------------------------------------------------------------------
    def _probe_psutil(self, w: int) -> tuple[str, float] | None:
        workers = getattr(self.world, "workers", None)
        if not workers or w >= len(workers) or not workers[w].pid:
            return None
        import psutil

        pid = workers[w].pid
        try:
            p = self._procs.get(pid)
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
            with p.oneshot():
                st = p.status()
                t = p.cpu_times()
            return st, t.user + t.system
        except psutil.Error:
            self._procs.pop(pid, None)
            return None

    def _observe(self, alive: list[bool], now: int) -> None:
        """Track, per worker, since when its process is stopped or runnable but not scheduled."""
        for w in range(self.world.geo.n_workers):
            r = self.probe(w) if alive[w] else None
            if r is None:
                self.status.pop(w, None)
                self.stopped_since.pop(w, None)
                self.unsched_since.pop(w, None)
                self._prev.pop(w, None)
                continue
            st, cpu = r
            self.status[w] = st
            if st in STOPPED:
                self.stopped_since.setdefault(w, now)
            elif w in self.stopped_since:
                self.last_stop[w] = (self.stopped_since.pop(w), now, self._prev.get(w, (st,))[0])
            prev = self._prev.get(w)
            if st == "running" and prev is not None and prev[0] == "running" and prev[1] == cpu:
                self.unsched_since.setdefault(w, prev[2])
            else:
                self.unsched_since.pop(w, None)
            self._prev[w] = (st, cpu, now)

    def state_of(self, w: int, now: int | None = None) -> dict | None:
        """Worker ``w``'s process state when it is not simply running or sleeping: stopped, or
        runnable but not scheduled, with since how long (None otherwise, or unknown)."""
        now = now_ns() if now is None else now
        if w in self.stopped_since:
            st = self.status.get(w, "stopped")
            for_s = (now - self.stopped_since[w]) / 1e9
            what = "stopped by a tracer (ptrace)" if st == "tracing-stop" else "stopped (SIGSTOP or SIGTSTP)"
            return {"state": st, "for_s": round(for_s, 3), "text": f"{what} for {for_s:.1f} s"}
        if w in self.unsched_since:
            for_s = (now - self.unsched_since[w]) / 1e9
            return {"state": "not-scheduled", "for_s": round(for_s, 3),
                    "text": f"runnable but not scheduled (no CPU time) for {for_s:.1f} s"}
        return None

    def _earlier_stop(self, w: int, after_ns: int, now: int) -> dict | None:
        """The stop of worker ``w`` that ended after ``after_ns`` (it ran again since), if any."""
        ls = self.last_stop.get(w)
        if ls is None or w in self.stopped_since or ls[1] <= after_ns:
            return None
        since, until, _ = ls
        return {"for_s": round((until - since) / 1e9, 3), "ago_s": round((now - until) / 1e9, 3),
                "text": f"it was stopped for {(until - since) / 1e9:.1f} s, until {(now - until) / 1e9:.1f} s ago"}

    # -- reading the arena ----------------------------------------------------------------------
    def _waits(self, alive: list[bool]) -> dict[Node, Waiting]:
        mv, geo = self.world.mv, self.world.geo
        out = {}
        for w in range(geo.n_workers):
            if not alive[w]:
                continue
            for c in (0, 1):
                rec = WaitRecord.read(mv, geo, w, c)
                if rec is not None:
                    out[(w, c)] = Waiting(rec, tuple(waits_for(mv, geo, rec)))
        return out

    def _succ(self, node: Node, waits: dict, in_irq: list[int]) -> list[Node]:
        w, c = node
        out = []
        if c == 0 and in_irq[w]:
            out.append((w, 1))
        wt = waits.get(node)
        if wt is not None:
            out.extend(divmod(o, 2) for o in wt.owners)
        return out

    def held_by(self, owner: int) -> list[dict]:
        mv, geo, world = self.world.mv, self.world.geo, self.world
        out = []
        for lk in range(geo.n_locks):
            for h in holders(mv, geo, lk):
                if h.owner == owner:
                    d = {"lock": world.plan.locks[lk].path, "cls": world.plan.locks[lk].cls,
                         "site": world.site(h.site), "since_ns": h.since}
                    if h.how != "lock":
                        d["how"] = h.how  # a reader-writer lock: "read" or "write"
                    out.append(d)
        out.sort(key=lambda d: d["since_ns"])
        return out

    def _member(self, node: Node, waits: dict) -> dict:
        w, c = node
        mv, geo, world = self.world.mv, self.world.geo, self.world
        op = mv[geo.wslot(w) + W_OP]
        d: dict[str, Any] = {"worker": w, "ctx": "irq" if c else "task", "owner": w * 2 + c,
                             "op": world.ops[op].spec.name if 0 <= op < len(world.ops) else None,
                             "op_age_ms": (now_ns() - mv[geo.wslot(w) + W_OP_START]) / 1e6 if op >= 0 else None,
                             "holds": self.held_by(w * 2 + c)}
        wt = waits.get(node)
        if wt is not None:
            rec, owner = wt.rec, wt.owner
            lk = rec.lock
            d["waiting"] = {"lock": world.plan.locks[lk].path, "cls": world.plan.locks[lk].cls,
                            "site": world.site(rec.site), "callers": [world.site(k) for k in rec.callers],
                            "for_ms": (now_ns() - rec.since) / 1e6, "owner": owner}
            if rec.mode:  # a reader-writer lock's wait: for its queue, its writer or its readers
                d["waiting"]["mode"] = MODE_NAMES.get(rec.mode, str(rec.mode))
                d["waiting"]["owners"] = list(wt.owners)
            ost = self.state_of(owner // 2) if owner != NO_OWNER else None
            if ost is not None:
                d["waiting"]["owner_state"] = ost
        elif c == 0 and mv[geo.wslot(w) + W_IN_IRQ]:
            d["interrupted"] = True
        st = self.state_of(w)
        if st is not None:
            d["state"] = st
        return d

    # -- the scan -------------------------------------------------------------------------------
    def scan(self, alive: list[bool], settled: bool = False) -> list[Finding]:
        """One scan. ``settled``: the state is known to be frozen (the controlled scheduler
        found no thread that can run), so a cycle is reported on first sight."""
        self.scans += 1
        mv, geo = self.world.mv, self.world.geo
        self._observe(alive, now_ns())
        waits = self._waits(alive)
        in_irq = [mv[geo.wslot(w) + W_IN_IRQ] if alive[w] else 0 for w in range(geo.n_workers)]
        findings: list[Finding] = []
        cycles = self._cycles(waits, in_irq)
        seen_now = set()
        in_cycle: set[Node] = set()
        for cyc in cycles:
            key = tuple(sorted((n, waits[n].rec.seq if n in waits else -1) for n in cyc))
            seen_now.add(key)
            in_cycle.update(cyc)
            if key in self._seen or settled:
                f = self._deadlock(cyc, waits)
                if f.signature not in self.reported:
                    self.reported.add(f.signature)
                    findings.append(f)
        self._seen = seen_now
        findings.extend(self._dead_holders(alive, waits))
        findings.extend(self._hung(waits, in_irq, in_cycle, alive))
        findings.extend(self._stalled(waits, in_cycle, alive))
        return findings

    def _cycles(self, waits: dict, in_irq: list[int]) -> list[list[Node]]:
        """Every elementary cycle reachable from a waiting context (out-degree <= 2)."""
        found: dict[frozenset, list[Node]] = {}
        for start in waits:
            path: list[Node] = []
            self._dfs(start, path, set(path), waits, in_irq, found, depth=0)
        return list(found.values())

    def _dfs(self, node: Node, path: list[Node], on_path: set, waits: dict, in_irq: list[int],
             found: dict, depth: int) -> None:
        if depth > 2 * len(in_irq) + 2:
            return
        if node in on_path:
            cyc = path[path.index(node):]
            k = frozenset(cyc)
            if k not in found:
                i = cyc.index(min(cyc))
                found[k] = cyc[i:] + cyc[:i]
            return
        path.append(node)
        on_path.add(node)
        for nxt in self._succ(node, waits, in_irq):
            self._dfs(nxt, path, on_path, waits, in_irq, found, depth + 1)
        path.pop()
        on_path.discard(node)

    def _deadlock(self, cyc: list[Node], waits: dict) -> Finding:
        members = [self._member(n, waits) for n in cyc]
        sig = "deadlock:" + ",".join(f"{w}.{c}" for w, c in sorted(cyc))
        title = ("BUG: deadlock: context waits for a lock it holds itself" if len({w for w, _ in cyc}) == 1
                 else f"BUG: deadlock: circular wait among {len(cyc)} contexts")
        return Finding("deadlock", title, -1, {"members": members}, t_ns=now_ns(), signature=sig)

    def _dead_holders(self, alive: list[bool], waits: dict) -> list[Finding]:
        mv, geo = self.world.mv, self.world.geo
        out = []
        by_worker: dict[int, list[dict]] = {}
        for lk in range(geo.n_locks):
            for h in holders(mv, geo, lk):
                if not alive[h.owner // 2]:
                    by_worker.setdefault(h.owner // 2, [])
        for w in by_worker:
            sig = f"dead-holder:{w}"
            if sig in self.reported:
                continue
            self.reported.add(sig)
            holds = self.held_by(2 * w) + self.held_by(2 * w + 1)
            waiters = [self._member(n, waits) for n, wt in waits.items() if any(o // 2 == w for o in wt.owners)]
            out.append(Finding("held-by-dead-worker", "BUG: lock held by a dead worker", -1,
                               {"dead": w, "holds": holds, "waiters": waiters}, t_ns=now_ns(), signature=sig))
        return out

    def _hung(self, waits: dict, in_irq: list[int], in_cycle: set, alive: list[bool]) -> list[Finding]:
        now = now_ns()
        out = []
        for node, wt in waits.items():
            since, seq, owner = wt.rec.since, wt.rec.seq, wt.owner
            if node in in_cycle or now - since < self.hung_ns or owner == NO_OWNER:
                continue
            chain = [node]
            cur = divmod(owner, 2)
            while cur in waits and cur not in chain and waits[cur].owner != NO_OWNER:
                chain.append(cur)
                cur = divmod(waits[cur].owner, 2)
            if cur in chain or cur in in_cycle or not alive[cur[0]]:
                continue  # a cycle (reported as a deadlock) or a dead holder (reported as such)
            sig = f"hung:{node}:{seq}"
            if sig in self.reported:
                continue
            self.reported.add(sig)
            holder = self._member(cur, waits)
            holder["process"] = self.world.process_state(cur[0])
            earlier = self._earlier_stop(cur[0], since, now)
            if earlier is not None:
                holder["earlier_stop"] = earlier
            # this report names the holder's stall: not again as a stall of its own
            if cur[0] in self.stopped_since:
                self.reported.add(f"stopped:{cur[0]}:{self.stopped_since[cur[0]]}")
            if self.world.mv[self.world.geo.wslot(cur[0]) + W_OP] >= 0:
                self.reported.add(f"hung-op:{cur[0]}:{self.world.mv[self.world.geo.wslot(cur[0]) + W_OP_START]}")
            out.append(Finding("hung", f"INFO: worker {node[0]} blocked for more than "
                                       f"{self.hung_ns / 1e9:g} seconds", -1,
                               {"blocked": [self._member(n, waits) for n in chain], "holder": holder},
                               t_ns=now, signature=sig))
        return out

    def _stalled(self, waits: dict, in_cycle: set, alive: list[bool]) -> list[Finding]:
        """Workers that make no progress past the hung timeout, whoever waits for them:
        (a) stopped that long; (b) inside one operation that long, with nobody waiting for
        them (a waiter's own report names them otherwise) and not waiting themselves."""
        mv, geo, world = self.world.mv, self.world.geo, self.world
        now = now_ns()
        out = []
        waited_for = {o // 2 for wt in waits.values() for o in wt.owners}
        waiting = {n[0] for n in waits}
        cyc_workers = {n[0] for n in in_cycle}
        for w in range(geo.n_workers):
            if not alive[w] or w in cyc_workers:
                continue
            ws = geo.wslot(w)
            op = mv[ws + W_OP]
            op_sig = f"hung-op:{w}:{mv[ws + W_OP_START]}" if op >= 0 else None
            stop0 = self.stopped_since.get(w)
            stop_sig = f"stopped:{w}:{stop0}" if stop0 is not None else None
            if stop_sig is not None and now - stop0 >= self.hung_ns:
                if stop_sig in self.reported:
                    continue
                self.reported.add(stop_sig)
                if op_sig in self.reported:
                    continue  # this very stall was reported as one operation that lasts
                kind, sig = "stopped", stop_sig
                title = f"INFO: worker {w} stopped for more than {self.hung_ns / 1e9:g} seconds"
            elif (op_sig is not None and w not in waited_for and w not in waiting
                  and now - mv[ws + W_OP_START] >= self.hung_ns
                  and stop0 is None  # stopped: the stop explains it, reported as such once it lasts
                  and (self.runner is None or self.runner() == w)):
                if op_sig in self.reported:
                    continue
                self.reported.add(op_sig)
                if stop_sig in self.reported:
                    continue
                kind, sig = "in-operation", op_sig
                name = world.ops[op].spec.name if op < len(world.ops) else f"op#{op}"
                title = (f"INFO: worker {w} in operation {name} for more than "
                         f"{self.hung_ns / 1e9:g} seconds")
            else:
                continue
            holder = self._member((w, 0), waits)
            holder["holds"] = self.held_by(2 * w) + self.held_by(2 * w + 1)
            holder["process"] = world.process_state(w)
            waiters = [self._member(n, waits) for n, wt in waits.items() if any(o // 2 == w for o in wt.owners)]
            out.append(Finding("hung", title, -1, {"kind": kind, "blocked": [], "holder": holder,
                                                   "waiters": waiters}, t_ns=now, signature=sig))
        return out
