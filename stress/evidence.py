"""Evidence shared by every report: the last trace events of each worker, decoded."""

from __future__ import annotations

from typing import Any

from shm_model.trace import EV_IRQ_ENTER, EV_IRQ_RAISE, EV_USER, decode, read_ring

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


SUBJECT_KINDS = (EV_USER, EV_IRQ_ENTER, EV_IRQ_RAISE)


def subject_events(world: Any, subject: int, key_events: tuple[str, ...] = (), key_last: int = 24,
                   tail: int = 16, per_kind: int = 3) -> list[dict]:
    """Every worker's events about ``subject`` (a model event's first argument, an IRQ
    raised or entered), merged in time order: the interleaving behind a violation. Events
    the workload names as key (state changes) are kept from the whole ring: the last
    ``key_last`` of them, and the last ``per_kind`` of each key event, so that a rare state
    change (a migration) is not pushed out by frequent ones (injections, EOIs); the rest
    only from the recent tail."""
    key_ids = {world.event_names.index(n) for n in key_events if n in world.event_names}
    key: list[dict] = []
    rest: list[dict] = []
    for w in range(world.geo.n_workers):
        raw, _ = read_ring(world.mv, world.geo, w)
        mine = [r for r in raw if (r[1] & 0xFF) in SUBJECT_KINDS and r[2] == subject]
        for r, e in zip(mine, decode(mine, w, world.namer)):
            d = e.as_dict() | {"worker": w}
            is_key = (r[1] & 0xFF) == EV_USER and (r[1] >> 16) in key_ids
            (key if is_key else rest).append(d | {"key": is_key, "_name": r[1] >> 16})
    key.sort(key=lambda e: e["t_ns"])
    rest.sort(key=lambda e: e["t_ns"])
    keep = {id(e) for e in key[-key_last:]}
    by_kind: dict[int, list[dict]] = {}
    for e in key:
        by_kind.setdefault(e["_name"], []).append(e)
    for evs in by_kind.values():
        keep.update(id(e) for e in evs[-per_kind:])
    out = [e for e in key if id(e) in keep] + rest[-tail:]
    out.sort(key=lambda e: e["t_ns"])
    for e in out:
        del e["_name"]
    return out
