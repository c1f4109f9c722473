"""Evidence shared by every report: the last trace events of each worker, decoded."""

from __future__ import annotations

from typing import Any

from shm_model.trace import decode, read_ring

TRACE_TAIL = 24


def snapshot_traces(world: Any, last: int = TRACE_TAIL, workers: list[int] | None = None) -> dict[str, list[dict]]:
    """``{"<wid>": [event, ...]}``, oldest first; an overrun ring says how much it lost."""
    out: dict[str, list[dict]] = {}
    for w in (workers if workers is not None else range(world.geo.n_workers)):
        raw, overrun = read_ring(world.mv, world.geo, w, last)
        events = [e.as_dict() for e in decode(raw, w, world.namer)]
        out[str(w)] = events
    return out


def full_trace(world: Any, w: int) -> tuple[list[dict], int]:
    """Everything still in worker ``w``'s ring, and how many events it overwrote."""
    raw, overrun = read_ring(world.mv, world.geo, w)
    return [e.as_dict() for e in decode(raw, w, world.namer)], overrun
