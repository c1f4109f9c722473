"""Reboots: a model fault where Xen panics (a NULL dereference) ends the boot; if the run goes
on, the coordinator resets the world to its first state and starts new workers with the next
boot's seed (stress.coordinator, World.reboot). Real runs of a small workload written here.

The workload leaves its state half-updated at the fault (``dirty`` set, never cleared): an
invariant checked with the world stopped would see it if the model went on after a panic.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli

pytestmark = pytest.mark.timeout(90)

WORKLOAD = '''
"""Each operation either dereferences NULL (Xen panics) or frees an object it then uses."""
from shm_model.heap import Heap, NULL
from stress.workload import Int, Role, Struct, Variant, Workload, invariant, op


class Obj(Struct):
    cmd = Int()


class State(Struct):
    objs = Heap(Obj, slots=4, ctype="struct obj")
    cur = Int()
    dirty = Int()
    attempts = Int()
    first = Int(7)  # the initial value: a reboot restores it
    ops_max = Int()


class Panicky(Workload):
    name = "panicky"
    state = State
    duration = 20.0
    check_interval = 0.02
    variants = [
        Variant("null-then-uaf", expect=["null-deref", "use-after-free"], stop="all",
                doc="a NULL dereference comes first; the use-after-free is found on a later boot"),
        Variant("null-only", expect="null-deref", doc="the NULL dereference ends the run: no reboot"),
        Variant("known-null", expect="clean", known={"null-deref": "test: the fault is known"},
                doc="a known fault: the run reboots after every one until its time is up"),
    ]

    def setup(self, s):
        s.cur = s.objs.alloc()

    class cpu(Role):
        count = 1

        @op()
        def go(self, s):
            s.attempts += 1
            s.ops_max = max(s.ops_max, s.attempts)
            if s.first != 7:
                raise AssertionError("state not reset by the reboot")
            if self.variant == "null-then-uaf" and self.random.random() < 0.5:
                h = s.objs.alloc()
                s.objs.free(h)
                s.objs[h].cmd = 1  # use after free
                return
            s.dirty = 1
            s.first = 8
            s.objs[NULL].cmd = 1  # Xen panics: the op ends here, dirty stays 1
            s.dirty = 0

    @invariant("not-dirty")
    def not_dirty(self, s):
        if s.dirty:
            return "the state of an operation that faulted is still in use"

    def summary(self, s):
        return {"attempts": s.attempts, "attempts max": s.ops_max}
'''


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    d = tmp_path_factory.mktemp("reboot")
    f = d / "panicky.py"
    f.write_text(WORKLOAD)
    return str(f), str(d / "runs")


def findings(r) -> list[dict]:
    with open(os.path.join(r.summary["run_dir"], "findings.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("schedule", [[], ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]],
                         ids=["free", "pct"])
def test_a_panic_reboots_the_model_and_the_run_finds_what_it_still_looks_for(wl, schedule):
    src, out = wl
    r = run_cli(["run", "--workload", src, "--variant", "null-then-uaf", "--seed", "4", "--duration", "20s"]
                + schedule, out)
    assert r.code == 0, r.out[-3000:] + r.err
    assert r.summary["verdict"]["status"] == "pass", r.out[-3000:]
    fs = findings(r)
    outs = [f["outcome"] for f in fs]
    assert outs[0] == "null-deref" and "use-after-free" in outs, outs
    assert "invariant:not-dirty" not in outs  # a panicked state is never checked nor continued
    assert "crash" not in outs  # every boot starts from the first state (the op asserts it)
    boots = r.summary["boots"]
    assert boots and [b["boot"] for b in boots] == list(range(1, len(boots) + 1))
    assert all(b["seed"] != 4 and "NULL pointer dereference" in b["after"] for b in boots)
    assert len({b["seed"] for b in boots}) == len(boots)
    uaf = next(f for f in fs if f["outcome"] == "use-after-free")
    assert uaf["details"]["boot"] == len(boots) and uaf["details"]["boot_seed"] == boots[-1]["seed"]
    assert f"--seed {boots[-1]['seed']} starts where this boot started" in uaf["text"]
    assert f"boots: {len(boots)} reboot" in r.out and f"boot 1 at " in r.out
    # the workload's counters add up over the boots; a maximum stays one
    assert r.summary["model"]["attempts"] == sum(r.summary["ops"].values())
    assert r.summary["model"]["attempts max"] < r.summary["model"]["attempts"] or len(boots) == 1


def test_a_replay_replays_the_last_boot(wl):
    src, out = wl
    pct = ["--schedule", "pct", "--pct-depth", "3", "--pct-steps", "64"]
    r = run_cli(["run", "--workload", src, "--variant", "null-then-uaf", "--seed", "4", "--duration", "20s"] + pct,
                out)
    assert r.code == 0 and r.summary.get("boots"), r.out[-3000:]
    p = run_cli(["replay", r.summary["run_id"], "--no-store"], out)
    assert p.code == 0, p.out[-3000:] + p.err
    assert f"replay of {r.summary['run_id']}: reproduced" in p.out, p.out[-3000:]
    assert p.summary["seed"] == r.summary["boots"][-1]["seed"]
    assert [f["outcome"] for f in p.summary["findings"]] == ["use-after-free"]


def test_a_panic_that_ends_the_run_does_not_reboot(wl):
    src, out = wl
    r = run_cli(["run", "--workload", src, "--variant", "null-only", "--seed", "1", "--duration", "20s"], out)
    assert r.code == 0, r.out[-3000:] + r.err
    assert r.summary["stop_reason"] == "finding" and "boots" not in r.summary
    assert "boots:" not in r.out


def test_a_known_panic_reboots_until_the_time_is_up(wl):
    src, out = wl
    r = run_cli(["run", "--workload", src, "--variant", "known-null", "--seed", "1", "--duration", "2s"], out)
    assert r.code == 0, r.out[-3000:] + r.err
    assert r.summary["verdict"]["status"] == "pass" and r.summary["stop_reason"] == "duration"
    n = len(r.summary["boots"])
    assert n >= 3, r.summary["boots"]
    # one fault a boot (the last may have ended with the time, before its fault)
    assert r.summary["model"]["attempts"] == sum(r.summary["ops"].values()) in (n, n + 1)
    # one finding (the same fault at the same site is reported once), every boot counted
    assert [f["outcome"] for f in r.summary["findings"]] == ["null-deref"]
    assert r.summary["detectors"]["heaps"]["objs"]["allocs"] == n + 1  # setup's allocation, each boot
