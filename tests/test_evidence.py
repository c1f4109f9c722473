"""The subject history of a finding (stress.evidence.subject_events): which events of one
IRQ's life a report keeps."""

from __future__ import annotations

from types import SimpleNamespace

from shm_model.arena import Arena, Geometry, new_run_id
from shm_model.cpu import Cpu
from stress.evidence import subject_events

from test_spinlock import FakeHooks, no_leaks  # noqa: F401  (the autouse leak check)

NAMES = ["migrate", "inject", "noise"]


def test_rare_state_changes_are_not_pushed_out_by_frequent_ones():
    geo = Geometry(2, 0, 0, 0, trace_events=1024)
    arena = Arena(new_run_id(), geo)
    try:
        cpus = [Cpu(arena.mv, geo, w, FakeHooks()) for w in range(2)]
        for c in cpus:
            c.user_events = {n: i for i, n in enumerate(NAMES)}
        cpus[0].event("migrate", 5, 1)
        cpus[1].event("migrate", 5, 2)
        cpus[1].event("migrate", 6, 3)  # another IRQ: not in 5's history
        for i in range(100):
            cpus[i % 2].event("inject", 5, i)
            cpus[i % 2].event("noise", 5, i)
        world = SimpleNamespace(mv=arena.mv, geo=geo, event_names=NAMES,
                                namer=lambda kind, name, a, b, c: f"{NAMES[name]} {a} {b}")
        out = subject_events(world, 5, ("migrate", "inject"), key_last=10, tail=4)
        texts = [e["text"] for e in out]
        assert texts[:2] == ["migrate 5 1", "migrate 5 2"], "both migrations kept, oldest first"
        assert sum(t.startswith("inject") for t in texts) == 10 and texts.count("noise 5 99") == 1
        assert sum(t.startswith("noise") for t in texts) == 4, "non-key events only from the tail"
        assert [e["worker"] for e in out[:2]] == [0, 1] and all(e["key"] for e in out[:2])
        assert [e["t_ns"] for e in out] == sorted(e["t_ns"] for e in out)
        assert "migrate 6 3" not in texts
    finally:
        arena.destroy()
