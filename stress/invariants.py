"""Stop-the-world invariant checks: the workload's invariants evaluated on a stable state.

Free mode: the coordinator parks every worker at a safe point and calls :func:`check`.
Controlled mode: the scheduler drains every worker to a safe point and the worker that
completes the drain calls it (stress.schedule). Either way every worker is between two
operations, holds no lock and takes no interrupt while the invariants read the state.
"""

from __future__ import annotations

from typing import Any, Callable

from .findings import Finding, now_ns
from .workload import Violation


def check(world: Any, invariants: dict[str, Callable], check_no: int, how: str) -> list[Finding]:
    """One finding per violated invariant (its signature is the invariant's name)."""
    out = []
    for name, fn in invariants.items():
        try:
            res = fn(world.workload, world.state)
        except Exception as e:
            res = f"the check raised {type(e).__name__}: {e}"
        if res is None or res is True:
            continue
        v = res if isinstance(res, Violation) else Violation(res if isinstance(res, str) else "violated")
        details: dict[str, Any] = {"message": v.message, "check": check_no, "how": how}
        if v.subject is not None:
            details["subject"] = v.subject  # the coordinator gathers its history, as for inline findings
        out.append(Finding(f"invariant:{name}", f"BUG: invariant {name} violated", -1, details,
                           t_ns=now_ns(), signature=f"invariant:{name}"))
    return out
