"""Per-worker event rings (ftrace-like) in the arena, and their decoding.

Each worker owns one ring: word 0 is the head (events ever written), then
``TRACE_EVENTS`` events of ``EV_WORDS`` words: ``(time_ns, kind | ctx << 8 | name << 16,
a, b, c)``. Only the owner writes its ring (with interrupts soft-masked, so an ISR never
interleaves with a half-written event); anyone may read it. Old events are overwritten;
``head - TRACE_EVENTS`` is the overrun count, reported, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .arena import EV_WORDS, Geometry

EV_OP_START, EV_OP_END, EV_ACQUIRE, EV_RELEASE, EV_CONTEND, EV_ACQUIRED = range(1, 7)
EV_IRQ_ENTER, EV_IRQ_EXIT, EV_IRQ_RAISE, EV_USER, EV_TRYLOCK_FAIL = range(7, 12)
EV_ALLOC, EV_FREE = 12, 13  # a heap object allocated / freed: a = handle, b = the heap's index
# weak memory (shm_model/weak.py), traced with lock tracing on: a = the location's word, b = value;
# commit and load: c = timestamp; load: name = newer messages it passed over (0: the newest)
EV_WM_STORE, EV_WM_COMMIT, EV_WM_LOAD = 14, 15, 16

KIND_NAMES = {
    EV_OP_START: "op", EV_OP_END: "op-end", EV_ACQUIRE: "acquire", EV_RELEASE: "release",
    EV_CONTEND: "contend", EV_ACQUIRED: "acquired", EV_IRQ_ENTER: "irq-enter",
    EV_IRQ_EXIT: "irq-exit", EV_IRQ_RAISE: "irq-raise", EV_USER: "event",
    EV_TRYLOCK_FAIL: "trylock-fail", EV_ALLOC: "alloc", EV_FREE: "free",
    EV_WM_STORE: "store", EV_WM_COMMIT: "commit", EV_WM_LOAD: "load",
}


@dataclass
class Event:
    t_ns: int
    worker: int
    ctx: int
    kind: str
    text: str

    def as_dict(self) -> dict:
        return {"t_ns": self.t_ns, "worker": self.worker, "ctx": "irq" if self.ctx else "task",
                "kind": self.kind, "text": self.text}


def read_ring(mv: memoryview, geo: Geometry, w: int, last: int | None = None) -> tuple[list[tuple], int]:
    """Raw events of worker ``w`` (oldest first), at most ``last``; and the overrun count."""
    base = geo.trace(w)
    n = geo.trace_events
    head = mv[base]
    count = min(head, n)
    if last is not None:
        count = min(count, last)
    out = []
    for seq in range(head - count, head):
        i = base + 1 + (seq % n) * EV_WORDS
        out.append(tuple(mv[i:i + EV_WORDS]))
    return out, max(0, head - n)


def decode(raw: Sequence[tuple], w: int, namer: Callable[[int, int, int, int, int], str]) -> list[Event]:
    """Turn raw events into text with ``namer(kind, name, a, b, c)`` (the engine knows the
    names of ops, locks, sites and user events)."""
    events = []
    for t, kc, a, b, c in raw:
        kind = kc & 0xFF
        ctx = (kc >> 8) & 0xFF
        name = kc >> 16
        if kind == 0:
            continue  # never written (a torn read of a slot being written is shown as is)
        events.append(Event(t, w, ctx, KIND_NAMES.get(kind, f"kind{kind}"), namer(kind, name, a, b, c)))
    return events
