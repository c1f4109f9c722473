"""Unit and property tests of the typed shared-state layout (shm_model.layout).

Struct classes are built inside each test (or dynamically with ``type()``): a plan and its
views must not depend on what another test laid out before."""

from __future__ import annotations

import itertools
from types import SimpleNamespace as NS

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shm_model.layout import (Array, AttachCtx, Field, Int, IntNode, IntsNode, LayoutError, LockDecl, LockNode,
                              LocksNode, Nested, Node, RwLock, Spinlock, Struct, StructNode, StructsNode, attach,
                              iter_int_offsets, plan_struct)


def words_of(plan) -> list[int]:
    return sorted(iter_int_offsets(plan.node))


def view_over(plan, base: int = 0, pad: int = 0):
    """A zeroed 'q' memoryview with the state region at ``base`` and ``pad`` spare words."""
    mv = memoryview(bytearray(8 * (base + plan.words + pad))).cast("q")
    locks = [f"lock#{i}" for i in range(len(plan.locks))]
    return mv, locks, attach(plan.node, mv, base, locks)


# ---- offsets ------------------------------------------------------------------------------

def test_offsets_of_every_field_kind():
    class Ring(Struct):
        head = Int()
        lock = Spinlock()
        slots = Array(Int, 2)

    class Top(Struct):
        a = Int(3)
        v = Array(Int, 4, init=-1)
        big = Spinlock("big_lock")
        ls = Array(Spinlock, 2)
        rings = Array(Ring, "nrings")
        b = Int()

    p = plan_struct(Top, NS(nrings=2))
    assert p.words == 12
    assert isinstance(p.node, StructNode) and p.node.struct is Top and p.node.start == 0
    m = dict(p.node.members)
    assert list(m) == ["a", "v", "big", "ls", "rings", "b"]
    assert m["a"] == IntNode(0)
    assert m["v"] == IntsNode(1, 4)
    assert m["big"] == LockNode(0)
    assert m["ls"] == LocksNode([1, 2])
    rings = m["rings"]
    assert isinstance(rings, StructsNode) and len(rings.items) == 2
    r0, r1 = (dict(r.members) for r in rings.items)
    assert r0 == {"head": IntNode(5), "lock": LockNode(3), "slots": IntsNode(6, 2)}
    assert r1 == {"head": IntNode(8), "lock": LockNode(4), "slots": IntsNode(9, 2)}
    assert [r.start for r in rings.items] == [5, 8]
    assert m["b"] == IntNode(11)
    assert sorted(p.inits) == [(0, 3)] + [(i, -1) for i in range(1, 5)]
    assert p.locks == [LockDecl(0, "big_lock", "big"), LockDecl(1, "&top->ls", "ls[0]"),
                       LockDecl(2, "&top->ls", "ls[1]"), LockDecl(3, "&ring->lock", "rings[0].lock"),
                       LockDecl(4, "&ring->lock", "rings[1].lock")]
    assert words_of(p) == list(range(12))


def test_array_of_int_instances_takes_the_element_init():
    class S(Struct):
        a = Array(Int(7), 3)
        b = Array(Int(7), 2, init=9)  # the array's own init wins

    p = plan_struct(S, NS())
    assert sorted(p.inits) == [(0, 7), (1, 7), (2, 7), (3, 9), (4, 9)]


def test_nested_struct_is_laid_out_inline():
    class Gic(Struct):
        ctlr = Int(1)
        lock = Spinlock()

    class S(Struct):
        x = Int()
        gic = Nested(Gic)
        y = Int()

    p = plan_struct(S, NS())
    assert p.words == 3
    assert p.locks == [LockDecl(0, "&gic->lock", "gic.lock")]
    assert p.inits == [(1, 1)]
    mv, locks, s = view_over(p)
    s.gic.ctlr = 41
    s.y = 42
    assert list(mv) == [0, 41, 42]
    assert s.gic.lock == "lock#0"


@pytest.mark.parametrize("size,opts,n", [
    ("vcpus", NS(vcpus=3), 3),
    (lambda o: o.vcpus * 2 + 1, NS(vcpus=3), 7),
    (0, NS(), 0),
    ("vcpus", NS(vcpus=0), 0),
])
def test_size_from_int_option_or_function(size, opts, n):
    class S(Struct):
        v = Array(Int, size)
        tail = Int()

    p = plan_struct(S, opts)
    assert p.words == n + 1
    assert dict(p.node.members)["tail"] == IntNode(n)


def test_one_declaration_serves_every_option_value():
    class S(Struct):
        v = Array(Int, "n")
        locks = Array(Spinlock, "n")

    for n in (1, 4, 9):
        p = plan_struct(S, NS(n=n))
        assert p.words == n and len(p.locks) == n


@pytest.mark.parametrize("size,opts,match", [
    ("missing", NS(other=1), "names option 'missing'"),
    (-1, NS(), "non-negative"),
    ("n", NS(n=-2), "non-negative"),
    (lambda o: -1, NS(), "non-negative"),
    ("n", NS(n="3"), "non-negative integer"),
    (lambda o: 2.0, NS(), "non-negative integer"),
    (True, NS(), "must be an integer"),
    (2.5, NS(), "int, an option name or a function"),
])
def test_bad_sizes_are_layout_errors(size, opts, match):
    class S(Struct):
        v = Array(Int, size)

    with pytest.raises(LayoutError, match=match):
        plan_struct(S, opts)


def test_layout_error_names_the_field_path():
    class Inner(Struct):
        v = Array(Int, "nope")

    class S(Struct):
        inner = Array(Inner, 2)

    with pytest.raises(LayoutError, match=r"inner\[0\]\.v"):
        plan_struct(S, NS())


@pytest.mark.parametrize("elem", [str, Array(Int, 2), 3, Nested])
def test_bad_array_element(elem):
    class S(Struct):
        v = Array(elem, 2)

    with pytest.raises(LayoutError, match="cannot make an array"):
        plan_struct(S, NS())


def test_bad_state_declarations():
    class Empty(Struct):
        pass

    class S(Struct):
        n = Nested(int)

    with pytest.raises(LayoutError, match="declares no fields"):
        plan_struct(Empty, NS())
    with pytest.raises(LayoutError, match="Struct subclass"):
        plan_struct(int, NS())
    with pytest.raises(LayoutError, match="Nested"):
        plan_struct(S, NS())
    assert issubclass(LayoutError, ValueError)


def test_lock_class_names_explicit_and_default():
    class Vcpu(Struct):
        lock = Spinlock()
        named = Spinlock("vcpu_sched")

    class Domain(Struct):
        page_alloc_lock = Spinlock()
        event_lock = Spinlock("d->event_lock")
        irq_locks = Array(Spinlock, 2)
        named_locks = Array(Spinlock("desc"), 2)
        vcpus = Array(Vcpu, 2)

    p = plan_struct(Domain, NS())
    got = [(d.index, d.cls, d.path) for d in p.locks]
    assert got == [
        (0, "&domain->page_alloc_lock", "page_alloc_lock"),
        (1, "d->event_lock", "event_lock"),
        (2, "&domain->irq_locks", "irq_locks[0]"),
        (3, "&domain->irq_locks", "irq_locks[1]"),
        (4, "desc", "named_locks[0]"),
        (5, "desc", "named_locks[1]"),
        (6, "&vcpu->lock", "vcpus[0].lock"),
        (7, "vcpu_sched", "vcpus[0].named"),
        (8, "&vcpu->lock", "vcpus[1].lock"),
        (9, "vcpu_sched", "vcpus[1].named"),
    ]
    assert p.words == 0


def test_rwlock_fields_are_planned_like_spinlocks():
    class Dom(Struct):
        a = Int()
        pci = RwLock()
        tree = RwLock("d->pend_lpi_tree_lock", recursive_read=True)
        rws = Array(RwLock, 2)
        per = Array(RwLock("bucket", per_instance=True), 2)
        spin = Spinlock()

    class S(Struct):
        doms = Array(Dom, 2)

    p = plan_struct(S, NS())
    got = [(d.index, d.cls, d.path, d.kind, d.recursive_read) for d in p.locks[:7]]
    assert got == [
        (0, "&dom->pci", "doms[0].pci", "rw", False),
        (1, "d->pend_lpi_tree_lock", "doms[0].tree", "rw", True),
        (2, "&dom->rws", "doms[0].rws[0]", "rw", False),
        (3, "&dom->rws", "doms[0].rws[1]", "rw", False),
        (4, "bucket[0][0]", "doms[0].per[0]", "rw", False),
        (5, "bucket[0][1]", "doms[0].per[1]", "rw", False),
        (6, "&dom->spin", "doms[0].spin", "spin", False),
    ]
    assert len(p.locks) == 14 and p.words == 2
    assert LockDecl(0, "A", "a") == LockDecl(0, "A", "a", kind="spin", recursive_read=False)
    m = dict(dict(p.node.members)["doms"].items[1].members)
    assert m["tree"] == LockNode(8) and m["rws"] == LocksNode([9, 10])
    mv, locks, s = view_over(p)
    assert s.doms[1].tree == "lock#8" and s.doms[1].rws == ("lock#9", "lock#10") and s.doms[0].spin == "lock#6"


class Pair(Field):
    """A field kind declared outside layout.py: two words, shown as a tuple-like object, and
    one auxiliary semaphore per instance; arrays of it allowed."""

    def plan(self, options, plan, cname, fname, path):
        off = plan.reserve(2)
        plan.inits.append((off + 1, 5))
        return PairNode(off, plan.new_aux(), path)

    def plan_array(self, n, init, options, plan, cname, fname, path):
        return PairsNode([self.plan(options, plan, cname, fname, f"{path}[{i}]") for i in range(n)])


class PairNode(Node):
    def __init__(self, off, aux, path):
        self.off, self.aux, self.path = off, aux, path

    def attach(self, mv, base, locks, cache, ctx):
        view = SimpleNamespace_(mv=mv[base + self.off: base + self.off + 2], sem=ctx.aux[self.aux], path=self.path)
        ctx.heaps.append(view)
        return view

    def offsets(self):
        return iter((self.off, self.off + 1))


class PairsNode(Node):
    def __init__(self, items):
        self.items = items

    def attach(self, mv, base, locks, cache, ctx):
        return [it.attach(mv, base, locks, cache, ctx) for it in self.items]

    def offsets(self):
        for it in self.items:
            yield from it.offsets()


class SimpleNamespace_(NS):
    pass


def test_a_new_field_kind_is_its_own_classes_only():
    class S(Struct):
        a = Int(1)
        p = Pair()
        ps = Array(Pair, 2)
        q = Array(Pair(), 1)
        b = Int()

    p = plan_struct(S, NS())
    assert p.words == 10 and p.aux == 4
    assert sorted(iter_int_offsets(p.node)) == list(range(10))
    assert sorted(p.inits) == [(0, 1), (2, 5), (4, 5), (6, 5), (8, 5)]
    mv = memoryview(bytearray(8 * p.words)).cast("q")
    for off, val in p.inits:
        mv[off] = val
    ctx = AttachCtx(aux=["sem0", "sem1", "sem2", "sem3"])
    s = attach(p.node, mv, 0, [], ctx=ctx)
    assert s.a == 1 and list(s.p.mv) == [0, 5] and s.p.sem == "sem0"
    assert [x.sem for x in s.ps] == ["sem1", "sem2"] and s.q[0].path == "q[0]"
    s.b = 9
    assert mv[9] == 9
    assert [x.path for x in ctx.heaps] == ["p", "ps[0]", "ps[1]", "q[0]"]  # the attach context collects


# ---- attach -------------------------------------------------------------------------------

def test_attach_int_properties_and_int_arrays_use_the_right_words():
    class S(Struct):
        a = Int()
        v = Array(Int, 3)
        b = Int()

    p = plan_struct(S, NS())
    base = 5
    mv, _, s = view_over(p, base=base, pad=2)
    s.a = -7
    s.b = 1 << 40
    assert isinstance(s.v, memoryview) and len(s.v) == 3
    s.v[0], s.v[2] = 11, 13
    assert list(mv) == [0] * base + [-7, 11, 0, 13, 1 << 40, 0, 0]
    mv[base + 2] = 12  # writes through the arena are visible in the views
    mv[base + 4] = 99
    assert list(s.v) == [11, 12, 13] and s.b == 99 and s.a == -7


def test_attach_nested_struct_arrays_each_instance_its_own_words():
    """Every element of an Array(Struct) owns its words (regression: the view class cached
    the first instance's offsets, so every element aliased element 0)."""
    class Irq(Struct):
        lock = Spinlock()
        status = Int()
        lrs = Array(Int, 2)
        prio = Int()

    class S(Struct):
        head = Int()
        irqs = Array(Irq, "n")

    p = plan_struct(S, NS(n=3))
    base = 2
    mv, locks, s = view_over(p, base=base)
    assert len(s.irqs) == 3
    for i, irq in enumerate(s.irqs):
        irq.status = 10 * i + 1
        irq.prio = 10 * i + 2
        irq.lrs[0], irq.lrs[1] = 10 * i + 3, 10 * i + 4
        assert irq.lock == locks[i]
    s.head = 100
    assert list(mv[base:]) == [100, 1, 3, 4, 2, 11, 13, 14, 12, 21, 23, 24, 22]
    assert [(i.status, i.prio) for i in s.irqs] == [(1, 2), (11, 12), (21, 22)]


def test_attach_same_struct_in_two_fields_and_two_plans():
    class Pair(Struct):
        x = Int()
        y = Int()

    class S(Struct):
        v = Array(Int, "n")
        first = Nested(Pair)
        rest = Array(Pair, 2)

    p1 = plan_struct(S, NS(n=1))
    p4 = plan_struct(S, NS(n=4))
    mv1, _, s1 = view_over(p1)
    mv4, _, s4 = view_over(p4)
    for s in (s1, s4):
        s.first.y = 5
        s.rest[1].x = 6
    assert list(mv1) == [0, 0, 5, 0, 0, 6, 0]
    assert list(mv4) == [0, 0, 0, 0, 0, 5, 0, 0, 6, 0]


def test_view_has_no_instance_attributes_beyond_fields():
    class S(Struct):
        a = Int()

    p = plan_struct(S, NS())
    _, _, s = view_over(p)
    with pytest.raises(AttributeError):
        _ = s.nope


def test_inherited_fields_are_laid_out_once():
    class A(Struct):
        a = Int()

    class B(A):
        b = Int()

    class C(B):
        c = Int()

    assert [f.name for f in C._fields] == ["a", "b", "c"]
    assert plan_struct(C, NS()).words == 3


def test_one_level_of_inheritance():
    class A(Struct):
        a = Int()
        lock = Spinlock()

    class B(A):
        b = Int()

    p = plan_struct(B, NS())
    assert [m[0] for m in p.node.members] == ["a", "lock", "b"]
    assert p.words == 2 and p.locks == [LockDecl(0, "&b->lock", "lock")]


# ---- properties over random declarations ----------------------------------------------------

OPTIONS = NS(o0=0, o1=1, o2=2, o3=3)
_names = itertools.count()

sizes = st.tuples(st.integers(0, 3), st.sampled_from(["int", "opt", "fn"]))
lock_cls = st.sampled_from([None, "A", "B"])


def _fields(depth: int):
    leaf = st.one_of(
        st.tuples(st.just("int"), st.integers(-3, 3)),
        st.tuples(st.just("ints"), sizes, st.integers(-3, 3)),
        st.tuples(st.just("lock"), lock_cls),
        st.tuples(st.just("locks"), sizes, lock_cls),
    )
    if depth == 0:
        return leaf
    sub = st.lists(_fields(depth - 1), min_size=1, max_size=4)
    return st.one_of(leaf, st.tuples(st.just("structs"), sizes, sub), st.tuples(st.just("nested"), sub))


struct_specs = st.lists(_fields(2), min_size=1, max_size=5)


def _size(sz):
    n, how = sz
    return n if how == "int" else f"o{n}" if how == "opt" else (lambda o, n=n: getattr(o, f"o{n}"))


def build(spec) -> type:
    """A Struct subclass from a spec, made with type() (a fresh class every time)."""
    ns = {}
    for i, f in enumerate(spec):
        name = f"f{i}"
        if f[0] == "int":
            ns[name] = Int(f[1])
        elif f[0] == "ints":
            ns[name] = Array(Int, _size(f[1]), init=f[2])
        elif f[0] == "lock":
            ns[name] = Spinlock(f[1])
        elif f[0] == "locks":
            ns[name] = Array(Spinlock(f[2]) if f[2] else Spinlock, _size(f[1]))
        elif f[0] == "structs":
            ns[name] = Array(build(f[2]), _size(f[1]))
        else:
            ns[name] = Nested(build(f[1]))
    return type(f"S{next(_names)}", (Struct,), ns)


def reference(spec, cls: type, path: str, out: dict) -> None:
    """The layout the declaration means: words in declaration order, depth first."""
    for i, f in enumerate(spec):
        name = f"f{i}"
        p = f"{path}.{name}" if path else name
        if f[0] == "int":
            if f[1]:
                out["inits"].append((out["words"], f[1]))
            out["words"] += 1
        elif f[0] == "ints":
            n = f[1][0]
            if f[2]:
                out["inits"].extend((out["words"] + k, f[2]) for k in range(n))
            out["words"] += n
        elif f[0] == "lock":
            out["locks"].append((f[1] or f"&{cls.__name__.lower()}->{name}", p))
        elif f[0] == "locks":
            for k in range(f[1][0]):
                out["locks"].append((f[2] or f"&{cls.__name__.lower()}->{name}", f"{p}[{k}]"))
        elif f[0] == "structs":
            sub = vars(cls)[name].elem
            for k in range(f[1][0]):
                reference(f[2], sub, f"{p}[{k}]", out)
        else:
            reference(f[1], vars(cls)[name].struct, p, out)


@settings(max_examples=150, deadline=None)
@given(struct_specs)
def test_property_every_word_owned_once_and_locks_numbered(spec):
    cls = build(spec)
    p = plan_struct(cls, OPTIONS)
    offsets = list(iter_int_offsets(p.node))
    assert len(offsets) == len(set(offsets)), "two fields share a word"
    assert sorted(offsets) == list(range(p.words)), "words not contiguous from 0"
    assert [d.index for d in p.locks] == list(range(len(p.locks)))
    ref = {"words": 0, "inits": [], "locks": []}
    reference(spec, cls, "", ref)
    assert p.words == ref["words"]
    assert sorted(p.inits) == sorted(ref["inits"])
    assert [(d.cls, d.path) for d in p.locks] == ref["locks"]
    assert len({d.path for d in p.locks}) == len(p.locks)


def _write_all(spec, view, counter, locks_seen: list) -> None:
    """Write 1, 2, 3... through the views in declaration order; collect lock attributes."""
    for i, f in enumerate(spec):
        name = f"f{i}"
        v = getattr(view, name)
        if f[0] == "int":
            setattr(view, name, next(counter))
        elif f[0] == "ints":
            assert isinstance(v, memoryview) and len(v) == f[1][0]
            for k in range(len(v)):
                v[k] = next(counter)
        elif f[0] == "lock":
            locks_seen.append(v)
        elif f[0] == "locks":
            assert isinstance(v, tuple) and len(v) == f[1][0]
            locks_seen.extend(v)
        elif f[0] == "structs":
            assert isinstance(v, tuple) and len(v) == f[1][0]
            for elem in v:
                _write_all(f[2], elem, counter, locks_seen)
        else:
            _write_all(f[1], v, counter, locks_seen)


def _read_all(spec, view, out: list) -> None:
    for i, f in enumerate(spec):
        v = getattr(view, f"f{i}")
        if f[0] == "int":
            out.append(v)
        elif f[0] == "ints":
            out.extend(v)
        elif f[0] == "structs":
            for elem in v:
                _read_all(f[2], elem, out)
        elif f[0] == "nested":
            _read_all(f[1], v, out)


@settings(max_examples=150, deadline=None)
@given(struct_specs, st.integers(0, 4))
@example([("structs", (3, "int"), [("int", 0), ("ints", (2, "int"), 0)])], 1)
@example([("nested", [("int", 0)]), ("structs", (2, "opt"), [("lock", None), ("int", 0)])], 0)
def test_property_attach_writes_each_field_to_its_own_word(spec, base):
    cls = build(spec)
    p = plan_struct(cls, OPTIONS)
    mv, locks, view = view_over(p, base=base, pad=2)
    seen: list = []
    _write_all(spec, view, itertools.count(1), seen)
    # declaration order == word order, each field its own word, nothing outside the region
    assert list(mv) == [0] * base + list(range(1, p.words + 1)) + [0, 0]
    assert seen == locks
    back: list = []
    _read_all(spec, view, back)
    assert back == list(range(1, p.words + 1))
