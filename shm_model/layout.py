"""Typed layout of shared state in the arena.

A model declares its shared state as :class:`Struct` subclasses whose fields are
:class:`Int`, :class:`Array` and :class:`Spinlock`. Every scalar is one signed 64-bit word
of the arena (a ``memoryview`` cast to ``'q'``: the cheapest field access Python has, see
FACTS.md). Array sizes may name a workload option (``Array(Int, "vcpus")``) or be a
function of the options, so one declaration serves every ``--vcpus``.

The layout is computed once, in the coordinator, before any IPC object exists; forked
workers inherit it and only *attach* views to the mapped segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

Size = int | str | Callable[[Any], int]


class LayoutError(ValueError):
    """A declaration that cannot be laid out (bad size, unknown option, ...)."""


class Field:
    """Base of every field declaration."""

    name: str = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name


class Int(Field):
    """One signed 64-bit word. ``init`` is its value when the arena is created."""

    def __init__(self, init: int = 0, doc: str = "") -> None:
        self.init = init
        self.doc = doc


class Spinlock(Field):
    """A spinlock field. ``cls`` names its lock class (lockdep's key); every instance of
    the field (one per struct instance) shares that class. Default class name:
    ``"&<struct>-><field>"``, the way lockdep names a lock from its C expression.

    ``per_instance=True`` gives each instance a class of its own, named after the class and
    the instance's array indices (``"bucket[3]"``; lockdep's dynamic keys): for locks of one
    kind that are nested in a known order, e.g. per-bucket locks taken in index order. The
    other answer is ``spin_lock_nested(lock, subclass)`` at the inner acquisition."""

    def __init__(self, cls: str | None = None, per_instance: bool = False) -> None:
        self.cls = cls
        self.per_instance = per_instance


class Array(Field):
    """``size`` elements of ``elem`` (``Int``, ``Spinlock`` or a ``Struct`` subclass)."""

    def __init__(self, elem: Any, size: Size, init: int = 0) -> None:
        self.elem = elem
        self.size = size
        self.init = init


class Nested(Field):
    """One instance of another Struct inside this one (C's embedded struct member)."""

    def __init__(self, struct: type) -> None:
        self.struct = struct


class Struct:
    """Base of a shared-state declaration. Fields are class attributes, in order."""

    _fields: tuple[Field, ...] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = [v for v in vars(cls).values() if isinstance(v, Field)]
        inherited = [f for base in cls.__bases__ for f in getattr(base, "_fields", ())]  # bases carry theirs
        cls._fields = tuple(inherited) + tuple(own)


def resolve_size(size: Size, options: Any, where: str) -> int:
    if isinstance(size, bool):
        raise LayoutError(f"{where}: array size must be an integer, not {size!r}")
    if isinstance(size, int):
        n = size
    elif isinstance(size, str):
        if not hasattr(options, size):
            raise LayoutError(f"{where}: array size names option {size!r}, which the workload does not declare")
        n = getattr(options, size)
    elif callable(size):
        n = size(options)
    else:
        raise LayoutError(f"{where}: array size must be an int, an option name or a function, not {size!r}")
    if not isinstance(n, int) or n < 0:
        raise LayoutError(f"{where}: array size must be a non-negative integer, got {n!r}")
    return n


@dataclass
class LockDecl:
    """One lock instance: its index in the arena's lock table, class, and path."""

    index: int
    cls: str
    path: str  # e.g. "ranks[0].lock"


@dataclass
class Plan:
    """The computed layout of a state struct: words, initial values, lock instances."""

    words: int = 0
    inits: list[tuple[int, int]] = field(default_factory=list)  # (offset, value) for non-zero
    locks: list[LockDecl] = field(default_factory=list)
    node: Any = None  # the tree that `attach` turns into views


def plan_struct(struct: type[Struct], options: Any) -> Plan:
    """Lay ``struct`` out from word 0; offsets are relative to the state region."""
    if not (isinstance(struct, type) and issubclass(struct, Struct)):
        raise LayoutError(f"state must be a Struct subclass, not {struct!r}")
    plan = Plan()
    plan.node = _plan(struct, options, plan, struct.__name__.lower(), "")
    return plan


def _plan(struct: type[Struct], options: Any, plan: Plan, cname: str, path: str) -> tuple:
    members: list[tuple[str, Any]] = []
    if not struct._fields:
        raise LayoutError(f"{struct.__name__} declares no fields")
    start = plan.words
    for f in struct._fields:
        members.append((f.name, _plan_field(f, f.name, options, plan, cname, _join(path, f.name))))
    return ("struct", struct, members, start)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _plan_field(f: Any, fname: str, options: Any, plan: Plan, cname: str, path: str) -> tuple:
    if isinstance(f, Int) or f is Int:
        off = plan.words
        plan.words += 1
        init = f.init if isinstance(f, Int) else 0
        if init:
            plan.inits.append((off, init))
        return ("int", off)
    if isinstance(f, Spinlock) or f is Spinlock:
        cls = (f.cls if isinstance(f, Spinlock) else None) or f"&{cname}->{fname}"
        if isinstance(f, Spinlock) and f.per_instance:
            cls += "".join(re.findall(r"\[\d+\]", path))  # one class per instance: "bucket[3]"
        decl = LockDecl(len(plan.locks), cls, path)
        plan.locks.append(decl)
        return ("lock", decl.index)
    if isinstance(f, Nested):
        if not (isinstance(f.struct, type) and issubclass(f.struct, Struct)):
            raise LayoutError(f"{path}: Nested() takes a Struct subclass, not {f.struct!r}")
        return _plan(f.struct, options, plan, f.struct.__name__.lower(), path)
    if isinstance(f, Array):
        n = resolve_size(f.size, options, path)
        elem = f.elem
        if elem is Int or isinstance(elem, Int):
            off = plan.words
            plan.words += n
            init = f.init or (elem.init if isinstance(elem, Int) else 0)
            if init:
                plan.inits.extend((off + i, init) for i in range(n))
            return ("ints", off, n)
        if isinstance(elem, type) and issubclass(elem, Struct):
            return ("structs", [_plan(elem, options, plan, elem.__name__.lower(), f"{path}[{i}]") for i in range(n)])
        if elem is Spinlock or isinstance(elem, Spinlock):
            return ("locks", [_plan_field(elem, fname, options, plan, cname, f"{path}[{i}]")[1] for i in range(n)])
        raise LayoutError(f"{path}: cannot make an array of {elem!r}")
    raise LayoutError(f"{path}: unknown field {f!r}")


class StructView:
    """Attribute access to one struct instance in the arena (built per worker)."""

    __slots__ = ("_mv", "_base", "__dict__")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} @{self._base}>"


def _view_class(struct: type[Struct], members: list[tuple[str, Any]], start: int, cache: dict) -> type:
    """A view class per Struct and plan: Int fields are properties at offsets relative to
    the instance (sizes depend on the run's options, so the cache lives with the plan)."""
    rel = tuple((name, node[1] - start) for name, node in members if node[0] == "int")
    hit = cache.get(struct)
    if hit is not None:
        if hit[1] != rel:
            raise LayoutError(f"{struct.__name__}: instances laid out differently")
        return hit[0]
    ns: dict[str, Any] = {"__slots__": ()}
    for name, off in rel:
        ns[name] = _int_property(off)
    vc = type(struct.__name__, (StructView,), ns)
    cache[struct] = (vc, rel)
    return vc


def _int_property(off: int) -> property:
    def get(self: StructView) -> int:
        return self._mv[self._base + off]

    def put(self: StructView, value: int) -> None:
        self._mv[self._base + off] = value

    return property(get, put)


def attach(node: tuple, mv: memoryview, base: int, locks: list[Any], cache: dict | None = None) -> Any:
    """Turn a planned tree into views over ``mv`` (state region at word ``base``)."""
    if cache is None:
        cache = {}
    kind = node[0]
    if kind == "struct":
        _, struct, members, start = node
        vc = _view_class(struct, members, start, cache)
        view = vc.__new__(vc)
        view._mv = mv
        view._base = base + start
        for name, sub in members:
            if sub[0] != "int":
                view.__dict__[name] = attach(sub, mv, base, locks, cache)
        return view
    if kind == "ints":
        _, off, n = node
        return mv[base + off: base + off + n]
    if kind == "structs":
        return tuple(attach(sub, mv, base, locks, cache) for sub in node[1])
    if kind == "lock":
        return locks[node[1]]
    if kind == "locks":
        return tuple(locks[i] for i in node[1])
    raise LayoutError(f"bad node {kind}")


def iter_int_offsets(node: tuple) -> Iterator[int]:
    """Every word the planned tree owns (used by tests and snapshots)."""
    kind = node[0]
    if kind == "struct":
        for _, sub in node[2]:
            yield from iter_int_offsets(sub)
    elif kind == "int":
        yield node[1]
    elif kind == "ints":
        yield from range(node[1], node[1] + node[2])
    elif kind == "structs":
        for sub in node[1]:
            yield from iter_int_offsets(sub)
