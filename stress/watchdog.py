"""The watchdog: actual deadlocks, locks held by dead workers, hung workers.

Runs in the coordinator, reading the arena only (a wedged worker cannot tell us anything).
Nodes of the wait-for graph are contexts: (worker, task) and (worker, irq).

- A context waiting for a lock points at the lock's owner context; a task interrupted by
  its ISR (``in_irq``) points at that ISR: it cannot run until the ISR returns. So an ISR
  waiting for a lock its own task holds is the cycle (w, irq) -> (w, task) -> (w, irq).
- A cycle of any length that is present, unchanged, in two consecutive scans (same members,
  same wait sequence numbers: nobody moved) is a deadlock.
- A lock whose owner is a dead process is held by a dead worker.
- A context that has waited longer than the hung timeout for a chain of holders ending in
  a live context that is not waiting (stopped, spinning, sleeping) is hung.
"""

from __future__ import annotations

import time
from typing import Any

from shm_model.arena import (L_OWNER, L_SINCE, L_SITE, NO_OWNER, W_IN_IRQ, W_OP, W_OP_START, W_WAIT,
                             W_WAIT_CALLERS, WAIT_CALLERS)

from .findings import Finding, now_ns

Node = tuple[int, int]  # (worker, context)


class Watchdog:
    def __init__(self, world: Any, hung_timeout_s: float) -> None:
        self.world = world
        self.hung_ns = int(hung_timeout_s * 1e9)
        self._seen: set[tuple] = set()  # cycles of the previous scan
        self.reported: set[str] = set()
        self.scans = 0

    # -- reading the arena ----------------------------------------------------------------------
    def _waits(self, alive: list[bool]) -> dict[Node, tuple[int, int, int, int, int]]:
        mv, geo = self.world.mv, self.world.geo
        out = {}
        for w in range(geo.n_workers):
            if not alive[w]:
                continue
            base = geo.wslot(w) + W_WAIT
            for c in (0, 1):
                lk = mv[base + 4 * c]
                if lk >= 0:
                    owner = mv[geo.lslot(lk) + L_OWNER]
                    out[(w, c)] = (lk, owner, mv[base + 4 * c + 1], mv[base + 4 * c + 2], mv[base + 4 * c + 3])
        return out

    def _succ(self, node: Node, waits: dict, in_irq: list[int]) -> list[Node]:
        w, c = node
        out = []
        if c == 0 and in_irq[w]:
            out.append((w, 1))
        wt = waits.get(node)
        if wt is not None and wt[1] != NO_OWNER:
            out.append(divmod(wt[1], 2))
        return out

    def held_by(self, owner: int) -> list[dict]:
        mv, geo, world = self.world.mv, self.world.geo, self.world
        out = []
        for lk in range(geo.n_locks):
            s = geo.lslot(lk)
            if mv[s + L_OWNER] == owner:
                out.append({"lock": world.plan.locks[lk].path, "cls": world.plan.locks[lk].cls,
                            "site": world.site(mv[s + L_SITE]), "since_ns": mv[s + L_SINCE]})
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
            lk, owner, site, since, _ = wt
            cb = geo.wslot(w) + W_WAIT_CALLERS + WAIT_CALLERS * c
            callers = [world.site(k) for k in mv[cb:cb + WAIT_CALLERS] if k]
            d["waiting"] = {"lock": world.plan.locks[lk].path, "cls": world.plan.locks[lk].cls,
                            "site": world.site(site), "callers": callers,
                            "for_ms": (now_ns() - since) / 1e6, "owner": owner}
        elif c == 0 and mv[geo.wslot(w) + W_IN_IRQ]:
            d["interrupted"] = True
        return d

    # -- the scan -------------------------------------------------------------------------------
    def scan(self, alive: list[bool]) -> list[Finding]:
        self.scans += 1
        mv, geo = self.world.mv, self.world.geo
        waits = self._waits(alive)
        in_irq = [mv[geo.wslot(w) + W_IN_IRQ] if alive[w] else 0 for w in range(geo.n_workers)]
        findings: list[Finding] = []
        cycles = self._cycles(waits, in_irq)
        seen_now = set()
        in_cycle: set[Node] = set()
        for cyc in cycles:
            key = tuple(sorted((n, waits[n][4] if n in waits else -1) for n in cyc))
            seen_now.add(key)
            in_cycle.update(cyc)
            if key in self._seen:
                f = self._deadlock(cyc, waits)
                if f.signature not in self.reported:
                    self.reported.add(f.signature)
                    findings.append(f)
        self._seen = seen_now
        findings.extend(self._dead_holders(alive, waits))
        findings.extend(self._hung(waits, in_irq, in_cycle, alive))
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
            owner = mv[geo.lslot(lk) + L_OWNER]
            if owner != NO_OWNER and not alive[owner // 2]:
                by_worker.setdefault(owner // 2, [])
        for w in by_worker:
            sig = f"dead-holder:{w}"
            if sig in self.reported:
                continue
            self.reported.add(sig)
            holds = self.held_by(2 * w) + self.held_by(2 * w + 1)
            waiters = [self._member(n, waits) for n, wt in waits.items() if wt[1] // 2 == w]
            out.append(Finding("held-by-dead-worker", "BUG: lock held by a dead worker", -1,
                               {"dead": w, "holds": holds, "waiters": waiters}, t_ns=now_ns(), signature=sig))
        return out

    def _hung(self, waits: dict, in_irq: list[int], in_cycle: set, alive: list[bool]) -> list[Finding]:
        now = now_ns()
        out = []
        for node, (lk, owner, site, since, seq) in waits.items():
            if node in in_cycle or now - since < self.hung_ns or owner == NO_OWNER:
                continue
            chain = [node]
            cur = divmod(owner, 2)
            while cur in waits and cur not in chain and waits[cur][1] != NO_OWNER:
                chain.append(cur)
                cur = divmod(waits[cur][1], 2)
            if cur in chain or cur in in_cycle or not alive[cur[0]]:
                continue  # a cycle (reported as a deadlock) or a dead holder (reported as such)
            sig = f"hung:{node}:{seq}"
            if sig in self.reported:
                continue
            self.reported.add(sig)
            holder = self._member(cur, waits)
            holder["process"] = self.world.process_state(cur[0])
            out.append(Finding("hung", f"INFO: worker {node[0]} blocked for more than "
                                       f"{self.hung_ns / 1e9:g} seconds", -1,
                               {"blocked": [self._member(n, waits) for n in chain], "holder": holder},
                               t_ns=now, signature=sig))
        return out
