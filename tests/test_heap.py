"""The arena heap (shm_model.heap): handles, checked dereferences, the quarantine, refcounts,
the findings and their KASAN report; one process with fake engine hooks, then the real engine
on a small workload file (a free racing a dereference, and its refcounted fix)."""

from __future__ import annotations

import timeit
from types import SimpleNamespace as NS

import pytest

from conftest import run_cli
from shm_model.arena import Arena, Geometry, new_run_id
from shm_model.cpu import Cpu, Panic
from shm_model.heap import (ADDR_BASE, META, NULL, SLOT_BITS, CheckedView, Heap, HeapError, HeapNode, HeapView,
                            gen_of, handle, slot_of)
from shm_model.layout import (Array, AttachCtx, Int, LayoutError, Nested, Spinlock, Struct, attach,
                              iter_int_offsets, plan_struct)
from shm_model.sites import SiteResolver
from stress.findings import Finding
from stress.splat import render

pytestmark = pytest.mark.timeout(60)


class Regs(Struct):
    a = Int()
    b = Int(7)


class Obj(Struct):
    lock = Spinlock()
    cmd = Int()
    flags = Int(3)
    bars = Array(Int, 3)
    regs = Nested(Regs)
    more = Array(Regs, 2)


class User(Struct):
    who = Int()
    obj = Int()  # a handle


class State(Struct):
    head = Int()
    objs = Heap(Obj, slots=4, ctype="struct obj")
    users = Heap(User, slots="users")
    tail = Int()


class FakeHooks:
    def __init__(self) -> None:
        self.findings: list[tuple[str, str, dict]] = []

    def finding(self, cpu, outcome, title, details):
        self.findings.append((outcome, title, dict(details, owner_of_report=cpu.oid[cpu.ctx])))

    def new_chain(self, cpu, lock, key, held, irqs_on, trylock):
        return 0

    def irqs_enabled_holding(self, cpu):
        pass

    def outcomes(self) -> list[str]:
        return [f[0] for f in self.findings]


_RESOLVER = SiteResolver()


def site_text(key: int) -> str:
    return str(_RESOLVER.resolve(key))


class Rig:
    """An arena holding State, two Cpus (workers 0 and 1) and the heaps bound to one of them."""

    def __init__(self, users: int = 3, resolve=None) -> None:
        self.plan = plan_struct(State, NS(users=users))
        self.geo = Geometry(2, len(self.plan.locks), 1, self.plan.words, trace_events=64, n_aux=self.plan.aux)
        self.arena = Arena(new_run_id(), self.geo)
        self.mv = self.arena.mv
        for off, val in self.plan.inits:
            self.mv[self.geo.state + off] = val
        self.hooks = FakeHooks()
        self.locks = [f"lock:{d.path}" for d in self.plan.locks]
        ctx = AttachCtx(aux=self.arena.aux)
        self.s = attach(self.plan.node, self.mv, self.geo.state, self.locks, ctx=ctx)
        self.heaps = ctx.heaps
        self.cpus = [Cpu(self.mv, self.geo, w, self.hooks) for w in range(2)]
        self.resolve = resolve
        self.on(0)

    def on(self, wid: int) -> "Rig":
        """Run as worker ``wid`` from now on."""
        for hv in self.heaps:
            hv.bind(self.cpus[wid], self.resolve)
        return self

    def close(self) -> None:
        self.arena.destroy()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


# ---- layout --------------------------------------------------------------------------------

def test_plan_reserves_metadata_objects_locks_and_one_aux_semaphore_per_heap():
    p = plan_struct(State, NS(users=3))
    assert p.aux == 2
    m = dict(p.node.members)
    objs, users = m["objs"], m["users"]
    assert isinstance(objs, HeapNode) and objs.n == 4 and objs.ctype == "struct obj"
    assert users.n == 3 and users.ctype == "struct user" and users.aux == 1
    assert objs.obj_words == 1 + 1 + 3 + 2 + 4  # cmd, flags, bars, regs, more
    # every word owned once, contiguous; header, ring and metadata included
    offs = list(iter_int_offsets(p.node))
    assert len(offs) == len(set(offs)) and sorted(offs) == list(range(p.words))
    assert set(range(objs.meta, objs.meta + 4 * META)) <= set(objs.offsets())
    # one lock instance per slot, class as declared, path with the slot
    assert [(d.cls, d.path) for d in p.locks] == [("&obj->lock", f"objs[{i}].lock") for i in range(4)]
    assert objs.obj_inits == [(1, 3), (6, 7), (8, 7), (10, 7)]  # flags, regs.b, more[0].b, more[1].b


@pytest.mark.parametrize("slots,opts,match", [
    (0, NS(), "1 to 65536 slots"),
    (1 << 17, NS(), "1 to 65536 slots"),
    ("nope", NS(), "names option 'nope'"),
])
def test_bad_heap_sizes(slots, opts, match):
    class S(Struct):
        h = Heap(Regs, slots=slots)

    with pytest.raises(LayoutError, match=match):
        plan_struct(S, opts)


def test_heap_of_a_non_struct_and_heap_in_heap_are_layout_errors():
    class Inner(Struct):
        h = Heap(Regs, 2)

    class S1(Struct):
        h = Heap(int, 2)

    class S2(Struct):
        h = Heap(Inner, 2)

    with pytest.raises(LayoutError, match="Struct subclass"):
        plan_struct(S1, NS())
    with pytest.raises(LayoutError, match="inside a heap object"):
        plan_struct(S2, NS())
    with pytest.raises(LayoutError, match="cannot make an array"):
        class S3(Struct):
            h = Array(Heap(Regs, 2), 2)
        plan_struct(S3, NS())


def test_heap_without_arena_uses_a_local_lock_and_raises_outside_workers():
    p = plan_struct(State, NS(users=1))
    mv = memoryview(bytearray(8 * p.words)).cast("q")
    ctx = AttachCtx()
    s = attach(p.node, mv, 0, [None] * len(p.locks), ctx=ctx)
    assert ctx.heaps == [s.objs, s.users]
    h = s.objs.alloc()
    assert h == handle(0, 1) and s.objs[h].flags == 3
    s.objs.free(h)
    with pytest.raises(HeapError, match="use-after-free"):
        _ = s.objs[h].cmd


# ---- handles, checked access ------------------------------------------------------------------

def test_alloc_gives_nonzero_handles_and_checked_fields(rig):
    objs = rig.s.objs
    h = objs.alloc()
    assert h != NULL and slot_of(h) == 0 and gen_of(h) == 1 and h == 1 << SLOT_BITS
    o = objs[h]
    assert isinstance(objs, HeapView) and isinstance(o, CheckedView) and objs.deref(h) is o
    assert (o.cmd, o.flags, list(o.bars), o.regs.a, o.regs.b, o.more[1].b) == (0, 3, [0, 0, 0], 0, 7, 7)
    o.cmd = 41
    o.bars[2] = 5
    o.regs.a = 6
    o.more[1].a = 9
    assert (objs[h].cmd, objs[h].bars[2], objs[h].regs.a, objs[h].more[1].a) == (41, 5, 6, 9)
    assert o.lock == "lock:objs[0].lock"
    assert objs.alloc() != h and objs[objs.alloc()].lock == "lock:objs[2].lock"
    with pytest.raises(AttributeError):
        o.nope = 1
    with pytest.raises(AttributeError):
        o.lock = 1
    with pytest.raises(TypeError):
        objs[h] = o
    assert rig.hooks.findings == []
    assert h in objs and NULL not in objs and len(objs) == 4


def test_alloc_zeroes_the_object_unless_asked_not_to(rig):
    objs = rig.s.objs
    for _ in range(4):
        h = objs.alloc()
        objs[h].cmd = 99
        objs[h].flags = 98
        objs.free(h)
    h = objs.alloc()  # slot 0 again, least recently freed
    assert slot_of(h) == 0 and (objs[h].cmd, objs[h].flags) == (0, 3)
    objs[h].cmd = 97
    objs.free(h)
    for _ in range(3):
        objs.free(objs.alloc())
    h = objs.alloc(zero=False)
    assert slot_of(h) == 0 and objs[h].cmd == 97


def test_quarantine_reuses_the_least_recently_freed_slot_last(rig):
    objs = rig.s.objs
    a = objs.alloc()
    objs.free(a)
    b = objs.alloc()
    assert slot_of(b) == 1, "a freed slot is not reused while never-used slots remain"
    c, d = objs.alloc(), objs.alloc()
    assert [slot_of(x) for x in (c, d)] == [2, 3]
    objs.free(c)
    objs.free(b)
    assert objs.slot_state(0) == "quarantined" and objs.slot_state(3) == "allocated"
    # FIFO: slot 0 (freed first), then 2, then 1
    assert [slot_of(objs.alloc()) for _ in range(3)] == [0, 2, 1]
    assert objs.alloc() == NULL
    st = objs.stats()
    assert st["exhausted"] == 1 and st["live"] == 4 and st["max_live"] == 4 and st["quarantined"] == 0
    assert st["allocs"] == 7 and st["frees"] == 3


def test_generation_catches_a_stale_handle_after_the_slot_is_reused(rig):
    objs = rig.s.objs
    hs = [objs.alloc() for _ in range(4)]
    objs.free(hs[0])
    new = objs.alloc()
    assert slot_of(new) == slot_of(hs[0]) and gen_of(new) == 2 and new != hs[0]
    objs[new].cmd = 5
    assert objs[hs[0]].cmd == 5  # the access proceeds on today's memory, as a real UAF does ...
    (outcome, title, d), = rig.hooks.findings  # ... and is reported
    assert outcome == "use-after-free" and title.startswith("BUG: KASAN: use-after-free in test_generation")
    assert d["reallocated"] and d["realloc_gen"] == 2 and d["gen"] == 1 and d["slot"] == 0
    assert d["alloc"]["stack"] and d["free"]["gen"] == 1


def test_use_after_free_names_access_alloc_and_free_sites_and_workers(rig):
    rig.resolve = None
    objs = rig.s.objs
    rig.on(1)
    h = objs.alloc()  # worker 1 allocates ...
    alloc_line = this_line() - 1
    objs.free(h)  # ... and frees
    free_line = this_line() - 1
    rig.on(0)
    objs[h].flags = 4  # worker 0 writes through the stale handle
    use_line = this_line() - 1
    for _ in range(3):
        _ = objs[h].cmd  # a read at another site: reported once
    assert rig.hooks.outcomes() == ["use-after-free", "use-after-free"], "one report per (outcome, site)"
    d = rig.hooks.findings[0][2]
    assert d["access"] == "write" and d["field"] == "flags" and d["type"] == "struct obj"
    assert d["function"] == "test_use_after_free_names_access_alloc_and_free_sites_and_workers"
    assert _RESOLVER.resolve(d["site"]).line == use_line
    assert _RESOLVER.resolve(d["alloc"]["stack"][0]).line == alloc_line
    assert _RESOLVER.resolve(d["free"]["stack"][0]).line == free_line
    assert d["alloc"]["owner"] == 2 and d["free"]["owner"] == 2 and d["owner_of_report"] == 0
    assert not d["reallocated"] and d["state"] == "quarantined"
    assert d["address"] == f"{ADDR_BASE + 8 * (objs.node.items[0].start + 1):016x}" and d["offset"] == 8
    assert objs.stats()["reports"] == 4


def this_line() -> int:
    import sys
    return sys._getframe(1).f_lineno


def test_null_dereference_reports_and_panics(rig):
    objs = rig.s.objs
    with pytest.raises(Panic):
        _ = objs[NULL].bars  # the third word of struct obj
    (outcome, title, d), = rig.hooks.findings
    assert outcome == "null-deref"
    assert title == "BUG: kernel NULL pointer dereference, address: 0000000000000010"
    assert d["kasan"] == "null-ptr-deref" and d["field"] == "bars"
    with pytest.raises(Panic):
        objs[NULL].regs.b = 1
    assert rig.hooks.findings[-1][1].endswith("address: 0000000000000028")  # regs.b: word 5
    with pytest.raises(Panic):
        objs.put(NULL)
    objs.free(NULL)  # xfree(NULL): nothing
    assert rig.hooks.outcomes() == ["null-deref"] * 3


def test_wild_handles(rig):
    objs = rig.s.objs
    with pytest.raises(Panic):
        _ = objs[handle(9, 1)].cmd  # no slot 9 in a pool of 4
    assert rig.hooks.findings[-1][0] == "invalid-access"
    assert objs[handle(2, 5)].cmd == 0  # slot 2, a generation never allocated: reported, proceeds
    assert rig.hooks.findings[-1][0] == "invalid-access"
    assert "wild-memory-access" in rig.hooks.findings[-1][1]


def test_double_free_and_invalid_free_do_nothing_but_report(rig):
    objs = rig.s.objs
    h = objs.alloc()
    objs.free(h)
    before = objs.stats()
    objs.free(h)
    assert rig.hooks.findings[-1][0] == "double-free"
    assert rig.hooks.findings[-1][1].startswith("BUG: KASAN: double-free in test_double_free")
    objs.free(handle(1, 1))  # slot 1 was never allocated
    assert rig.hooks.findings[-1][0] == "invalid-free"
    objs.free(handle(3, 7) | 12345 << 40)  # a generation never issued
    objs.free(handle(70, 1))  # no such slot
    assert rig.hooks.outcomes() == ["double-free", "invalid-free", "invalid-free", "invalid-free"]
    assert objs.stats()["frees"] == before["frees"] and objs.stats()["quarantined"] == 1
    # a double free after the slot was reused: the new object is not freed
    for _ in range(3):
        objs.alloc()
    new = objs.alloc()
    assert slot_of(new) == slot_of(h)
    objs.free(h)
    assert objs.is_live(new) and rig.hooks.findings[-1][2]["reallocated"]


def test_refcounts_get_put_and_the_last_put_frees(rig):
    objs = rig.s.objs
    h = objs.alloc()
    assert objs.refcount(h) == 1
    assert objs.get(h) == h and objs.refcount(h) == 2
    objs.put(h)
    assert objs.is_live(h) and objs.refcount(h) == 1
    objs.put(h)
    assert not objs.is_live(h) and objs.stats()["frees"] == 1 and objs.slot_state(0) == "quarantined"
    assert rig.hooks.findings == []
    objs.put(h)  # underflow: a put through the dead handle
    objs.get(h)
    assert rig.hooks.outcomes() == ["use-after-free", "use-after-free"]
    assert rig.hooks.findings[0][2]["refcount_op"] == "put" and rig.hooks.findings[1][2]["refcount_op"] == "get"
    assert objs.stats()["frees"] == 1


def test_live_handles_and_stats(rig):
    users = rig.s.users
    hs = [users.alloc() for _ in range(3)]
    users.free(hs[1])
    assert users.live_handles() == [hs[0], hs[2]] and list(users) == [hs[0], hs[2]]
    assert users.stats() == {"allocs": 3, "frees": 1, "live": 2, "max_live": 3, "exhausted": 0,
                             "quarantined": 1, "reports": 0}


def test_interrupts_are_masked_inside_the_allocator_lock(rig):
    """An ISR on the same CPU must not find the allocator lock taken: alloc runs masked."""
    objs = rig.s.objs
    cpu = rig.cpus[0]
    seen = []
    sem = objs._sem

    class Spy:
        def acquire(self, t=None):
            seen.append(cpu.masked)
            return sem.acquire(t)

        def release(self):
            return sem.release()

    objs._sem = Spy()
    try:
        objs.free(objs.alloc())
    finally:
        objs._sem = sem
    assert seen == [True, True] and not cpu.masked


def test_resolver_turns_alloc_and_free_stacks_into_text():
    r = Rig(resolve=site_text)
    try:
        objs = r.s.objs
        h = objs.alloc()
        objs.free(h)
        _ = objs[h].cmd
        d = r.hooks.findings[0][2]
        assert d["alloc"]["stack"][0].startswith("test_resolver_turns_alloc_and_free_stacks_into_text() ")
        assert "tests/test_heap.py:" in d["free"]["stack"][0]
    finally:
        r.close()


class Sched:
    """A controlled scheduler stand-in: counts scheduling points; runs an action at one."""

    def __init__(self) -> None:
        self.points = 0
        self.at: dict[int, object] = {}

    def clock_ns(self):
        return 1000 * self.points

    def point(self, cpu, irqs_on):
        self.points += 1
        f = self.at.pop(self.points, None)
        if f:
            f()


def test_every_checked_access_is_a_scheduling_point_before_its_check(rig):
    objs = rig.s.objs
    cpu = rig.cpus[0]
    h = objs.alloc()
    o = objs[h]
    sch = Sched()
    cpu.sched = sch
    try:
        _ = o.cmd
        o.cmd = 1
        _ = o.lock
        _ = o.regs.a  # the nested struct's access, then its field's
        assert sch.points == 5
        # another CPU frees the object at the next access's point: that access sees it
        sch.at[sch.points + 1] = lambda: objs.free(h)
        _ = o.flags
        assert rig.hooks.outcomes() == ["use-after-free"]
    finally:
        cpu.sched = None


# ---- the report -----------------------------------------------------------------------------

def _finding(outcome, title, d) -> Finding:
    return Finding(outcome, title, 2, d, t_ns=1)


ROSTER = {0: "worker 0 (vcpu, pid 100)", 1: "worker 1 (toolstack, pid 101)", 2: "worker 2 (vcpu, pid 4242)"}


def test_kasan_report_of_a_use_after_free():
    r = Rig(resolve=site_text)
    try:
        objs = r.s.objs
        r.on(1)
        hs = [objs.alloc() for _ in range(4)]
        objs.free(hs[3])
        objs.alloc()  # reuses slot 3: generation 2
        r.on(0)
        _ = objs[hs[3]].flags
        outcome, title, d = r.hooks.findings[0]
        d["stack"] = [site_text(k) for k in d["stack"]]
        text = render(_finding(outcome, title, d), ROSTER)
    finally:
        r.close()
    lines = text.splitlines()
    assert lines[0] == "=" * 66
    assert lines[1] == "BUG: KASAN: use-after-free in test_kasan_report_of_a_use_after_free()"
    addr = f"{ADDR_BASE + 8 * (objs.node.items[3].start + 1):016x}"
    assert lines[2] == f"Read of size 8 at addr {addr} by worker 0 (vcpu, pid 100)"
    assert "Call trace:" in lines
    assert lines[lines.index("Call trace:") + 1].startswith(" test_kasan_report_of_a_use_after_free() tests/test_heap.py:")
    assert "Allocated by worker 1 (toolstack, pid 101):" in lines
    assert "Freed by worker 1 (toolstack, pid 101):" in lines
    assert "Reallocated by worker 1 (toolstack, pid 101) (generation 2):" in lines
    assert "The buggy address belongs to the object of type struct obj" in lines
    assert " (slot 3, generation 1; the slot was reallocated since: generation 2)" in lines
    assert "8 bytes inside of the 88-byte object" in text and "(field flags)" in text


def test_kasan_reports_of_null_double_and_invalid_free(rig):
    objs = rig.s.objs
    with pytest.raises(Panic):
        _ = objs[NULL].cmd
    h = objs.alloc()
    objs.free(h)
    objs.free(h)
    objs.free(handle(2, 1))
    texts = [render(_finding(o, t, d), ROSTER) for o, t, d in rig.hooks.findings]
    null, double, invalid = texts
    assert "BUG: kernel NULL pointer dereference, address: 0000000000000000" in null
    assert "Call trace:" in null and "Oops: the hypervisor would panic here." in null
    assert "BUG: KASAN: double-free in test_kasan_reports_of_null_double_and_invalid_free()" in double
    assert "Free of addr " in double and "Allocated by worker 0 (vcpu, pid 100):" in double
    assert "Freed by worker 0 (vcpu, pid 100):" in double
    assert "BUG: KASAN: invalid-free in" in invalid and "the slot was never allocated" in invalid


# ---- cost -----------------------------------------------------------------------------------

def test_checked_read_costs_at_most_twice_a_plain_field_read(rig):
    """The budget of a checked dereference (free mode): <= 2x a plain Struct Int read."""
    s = rig.s
    h = s.objs.alloc()
    o = s.objs[h]
    n = 200_000
    ratios = []
    for _ in range(3):
        plain = min(timeit.repeat(lambda: s.head, number=n, repeat=5))
        checked = min(timeit.repeat(lambda: o.cmd, number=n, repeat=5))
        ratios.append(checked / plain)
    assert min(ratios) <= 2.0, ratios


# ---- end to end -----------------------------------------------------------------------------

WORKLOAD = '''
"""A published object replaced while a user dereferences it."""
from shm_model.heap import Heap, NULL
from stress.workload import Int, Role, Spinlock, Struct, Variant, Workload, op


class Obj(Struct):
    lock = Spinlock()
    cmd = Int()


class State(Struct):
    objs = Heap(Obj, slots=8, ctype="struct obj")
    cur = Int()  # the published object's handle
    publish = Spinlock("publish")


class Replace(Workload):
    name = "heap-replace"
    state = State
    duration = 20.0
    check_interval = 0.0
    variants = [Variant("racy", expect="use-after-free", doc="the user reads the handle, then uses it unreferenced"),
                Variant("refcounted", expect="clean", doc="the user takes a reference under the publish lock"),
                Variant("leaky", expect="clean", doc="the owner never frees: the pool runs out (said, not a fault)")]

    def setup(self, s):
        s.cur = s.objs.alloc()

    class owner(Role):
        count = 1

        @op()
        def replace(self, s):
            new = s.objs.alloc()
            if self.variant == "leaky":
                return  # nothing freed: allocations are refused once the 8 slots are live
            with s.publish:
                old = s.cur
                s.cur = new
            if self.variant == "racy":
                s.objs.free(old)
            else:
                s.objs.put(old)

    class user(Role):
        count = 1

        @op()
        def use(self, s):
            if self.variant == "leaky":
                return
            if self.variant == "racy":
                with s.publish:
                    h = s.cur
                o = s.objs[h]
                o.cmd = o.cmd + 1
            else:
                with s.publish:
                    h = s.objs.get(s.cur)
                o = s.objs[h]
                o.cmd = o.cmd + 1
                s.objs.put(h)
'''


@pytest.fixture(scope="module")
def workload_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("heap")
    f = d / "replace.py"
    f.write_text(WORKLOAD)
    return str(f), str(d / "runs")


@pytest.mark.timeout(150)
def test_engine_reports_a_use_after_free_with_its_sites(workload_file):
    src, out = workload_file
    r = run_cli(["run", "--workload", src, "--variant", "racy", "--schedule", "pct", "--seed", "1",
                 "--duration", "60s", "--hung-timeout", "60s", "--steps", "200000"], out, timeout=120)
    assert r.code == 0, r.out[-4000:] + r.err
    assert r.outcomes == {"use-after-free"}, r.out[-4000:]
    text = r.out
    assert "BUG: KASAN: use-after-free in Replace.user.use()" in text  # the accessing function
    assert "Read of size 8 at addr ffff8300" in text and "by worker 1 (user, pid " in text
    call = text.split("Call trace:\n", 1)[1]
    assert call.startswith(f" Replace.user.use() {src}:")  # the access site
    alloc = text.split("Allocated by ", 1)[1]
    assert alloc.startswith("worker 0 (owner") or alloc.startswith("the coordinator (workload setup)")
    freed = text.split("Freed by ", 1)[1]
    assert freed.startswith("worker 0 (owner, pid ") and f"\n Replace.owner.replace() {src}:" in freed
    assert "The buggy address belongs to the object of type struct obj" in text
    f = [x for x in r.summary["findings"] if x["outcome"] == "use-after-free"][0]
    assert f["title"] == "BUG: KASAN: use-after-free in Replace.user.use()"
    # the evidence: the freeing worker's trace shows the free of that very object
    import re
    assert re.search(r"task free +struct obj objs\[\d\] gen \d+ \(handle 0x[0-9a-f]+\)", text), text[-3000:]


@pytest.mark.timeout(150)
def test_engine_refcounted_variant_is_clean(workload_file):
    src, out = workload_file
    r = run_cli(["run", "--workload", src, "--variant", "refcounted", "--schedule", "pct", "--seed", "1",
                 "--duration", "60s", "--hung-timeout", "60s", "--steps", "20000"], out, timeout=120)
    assert r.code == 0, r.out[-4000:] + r.err
    assert r.outcomes == set(), r.out[-4000:]


@pytest.mark.timeout(60)
def test_engine_free_mode_refcounted_is_clean_and_racy_is_caught(workload_file):
    src, out = workload_file
    r = run_cli(["run", "--workload", src, "--variant", "refcounted", "--duration", "2s", "--seed", "3"], out)
    assert r.code == 0 and r.outcomes == set(), r.out[-4000:] + r.err
    assert r.summary["ops"]["use"] > 100 and r.summary["ops"]["replace"] > 100
    r = run_cli(["run", "--workload", src, "--variant", "racy", "--duration", "10s", "--seed", "3"], out)
    assert r.code == 0 and r.outcomes == {"use-after-free"}, r.out[-4000:] + r.err
    assert "BUG: KASAN: use-after-free in Replace.user.use()" in r.out and "Freed by worker 0 (owner" in r.out


@pytest.mark.timeout(60)
def test_engine_says_when_a_pool_runs_out(workload_file):
    """An exhausted pool is no fault, but never silent: the detectors' statistics and the
    console's heap line say how many allocations were refused."""
    src, out = workload_file
    r = run_cli(["run", "--workload", src, "--variant", "leaky", "--duration", "1s", "--seed", "1"], out)
    assert r.code == 0 and r.outcomes == set(), r.out[-3000:] + r.err
    pool = r.summary["detectors"]["heaps"]["objs"]
    assert pool["max_live"] == 8 and pool["exhausted"] > 0 and pool["reports"] == 0, pool
    assert f"objs {pool['allocs']} allocs, max 8 live, 0 faults, EXHAUSTED {pool['exhausted']} times" in r.out
