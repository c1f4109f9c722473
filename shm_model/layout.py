"""Typed layout of shared state in the arena.

A model declares its shared state as :class:`Struct` subclasses whose fields are
:class:`Int`, :class:`Array`, :class:`Nested`, :class:`Spinlock`, :class:`RwLock` (and
kinds defined elsewhere, e.g. ``shm_model.heap.Heap``). Every scalar is one signed 64-bit
word of the arena (a ``memoryview`` cast to ``'q'``: the cheapest field access Python has,
see FACTS.md). Array sizes may name a workload option (``Array(Int, "vcpus")``) or be a
function of the options, so one declaration serves every ``--vcpus``.

The layout is computed once, in the coordinator, before any IPC object exists; forked
workers inherit it and only *attach* views to the mapped segment.

Field kinds are open. Each :class:`Field` subclass plans itself (:meth:`Field.plan`, and
:meth:`Field.plan_array` if it may be an array element) into a *node*: a small object that
knows the words it owns (:meth:`Node.offsets`) and how to turn itself into what the model
sees (:meth:`Node.attach`). A new kind is its own ``Field`` and ``Node`` classes, in any
module; nothing here changes. The planner's context (:class:`Plan`) carries the words, the
initial values, the lock instances and the auxiliary semaphores a kind asks for
(``plan.aux``); the attach context (:class:`AttachCtx`) carries those semaphores and
collects the objects the engine must bind per worker (``ctx.heaps``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

Size = int | str | Callable[[Any], int]


class LayoutError(ValueError):
    """A declaration that cannot be laid out (bad size, unknown option, ...)."""


# ---- declarations ------------------------------------------------------------------------

class Field:
    """Base of every field declaration. A kind implements :meth:`plan`; one that may be an
    array element implements :meth:`plan_array` too (``Array(Kind, n)`` takes the class,
    meaning its default instance, or an instance)."""

    name: str = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def plan(self, options: Any, plan: "Plan", cname: str, fname: str, path: str) -> "Node":
        """Reserve this field's words / locks in ``plan`` and return its node. ``cname`` is
        the lowercase name of the struct that declares it, ``fname`` the field's name and
        ``path`` its path in the state (``"irqs[2].lock"``)."""
        raise LayoutError(f"{path}: unknown field {self!r}")

    def plan_array(self, n: int, init: int, options: Any, plan: "Plan", cname: str, fname: str,
                   path: str) -> "Node":
        """An array of ``n`` of this field (``init``: the array's own init, 0 if none)."""
        raise LayoutError(f"{path}: cannot make an array of {self!r}")


class Int(Field):
    """One signed 64-bit word. ``init`` is its value when the arena is created."""

    def __init__(self, init: int = 0, doc: str = "") -> None:
        self.init = init
        self.doc = doc

    def plan(self, options: Any, plan: "Plan", cname: str, fname: str, path: str) -> "Node":
        off = plan.reserve(1)
        if self.init:
            plan.inits.append((off, self.init))
        return IntNode(off)

    def plan_array(self, n: int, init: int, options: Any, plan: "Plan", cname: str, fname: str,
                   path: str) -> "Node":
        off = plan.reserve(n)
        init = init or self.init
        if init:
            plan.inits.extend((off + i, init) for i in range(n))
        return IntsNode(off, n)


class Spinlock(Field):
    """A spinlock field. ``cls`` names its lock class (lockdep's key); every instance of
    the field (one per struct instance) shares that class. Default class name:
    ``"&<struct>-><field>"``, the way lockdep names a lock from its C expression.

    ``per_instance=True`` gives each instance a class of its own, named after the class and
    the instance's array indices (``"bucket[3]"``; lockdep's dynamic keys): for locks of one
    kind that are nested in a known order, e.g. per-bucket locks taken in index order. The
    other answer is ``spin_lock_nested(lock, subclass)`` at the inner acquisition."""

    kind: ClassVar[str] = "spin"

    def __init__(self, cls: str | None = None, per_instance: bool = False) -> None:
        self.cls = cls
        self.per_instance = per_instance

    def decl(self, plan: "Plan", cname: str, fname: str, path: str) -> "LockDecl":
        """The lock instance at ``path`` (added to ``plan.locks``)."""
        cls = self.cls or f"&{cname}->{fname}"
        if self.per_instance:
            cls += "".join(re.findall(r"\[\d+\]", path))  # one class per instance: "bucket[3]"
        d = LockDecl(len(plan.locks), cls, path, kind=self.kind)
        plan.locks.append(d)
        return d

    def plan(self, options: Any, plan: "Plan", cname: str, fname: str, path: str) -> "Node":
        return LockNode(self.decl(plan, cname, fname, path).index)

    def plan_array(self, n: int, init: int, options: Any, plan: "Plan", cname: str, fname: str,
                   path: str) -> "Node":
        return LocksNode([self.decl(plan, cname, fname, f"{path}[{i}]").index for i in range(n)])


class RwLock(Spinlock):
    """A reader-writer lock field (Xen's ``rwlock_t``): planned and named like
    :class:`Spinlock`; its instance is declared with ``kind="rw"`` (the engine builds the
    rwlock object for it). ``recursive_read=True``: a reader may take it again while
    holding it for reading (Linux's queued rwlock in interrupt context; lockdep's
    recursive-read dependency)."""

    kind: ClassVar[str] = "rw"

    def __init__(self, cls: str | None = None, per_instance: bool = False, recursive_read: bool = False) -> None:
        super().__init__(cls, per_instance)
        self.recursive_read = recursive_read

    def decl(self, plan: "Plan", cname: str, fname: str, path: str) -> "LockDecl":
        d = super().decl(plan, cname, fname, path)
        d.recursive_read = self.recursive_read
        return d


class Array(Field):
    """``size`` elements of ``elem``: a field kind that may be an array element (``Int``,
    ``Spinlock``, ``RwLock``, as the class or an instance) or a ``Struct`` subclass."""

    def __init__(self, elem: Any, size: Size, init: int = 0) -> None:
        self.elem = elem
        self.size = size
        self.init = init

    def plan(self, options: Any, plan: "Plan", cname: str, fname: str, path: str) -> "Node":
        n = resolve_size(self.size, options, path)
        elem = self.elem
        if isinstance(elem, type) and issubclass(elem, Struct):
            return StructsNode([plan_instance(elem, options, plan, f"{path}[{i}]") for i in range(n)])
        if isinstance(elem, type) and issubclass(elem, Field) and elem.plan_array is not Field.plan_array:
            elem = elem()  # Array(Int, n): the kind's default instance
        if not isinstance(elem, Field):
            raise LayoutError(f"{path}: cannot make an array of {elem!r}")
        return elem.plan_array(n, self.init, options, plan, cname, fname, path)


class Nested(Field):
    """One instance of another Struct inside this one (C's embedded struct member)."""

    def __init__(self, struct: type) -> None:
        self.struct = struct

    def plan(self, options: Any, plan: "Plan", cname: str, fname: str, path: str) -> "Node":
        if not (isinstance(self.struct, type) and issubclass(self.struct, Struct)):
            raise LayoutError(f"{path}: Nested() takes a Struct subclass, not {self.struct!r}")
        return plan_instance(self.struct, options, plan, path)


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
    """One lock instance: its index in the arena's lock table, class, and path. ``kind``:
    ``"spin"`` or ``"rw"``; ``recursive_read`` (rw only): read side may nest."""

    index: int
    cls: str
    path: str  # e.g. "ranks[0].lock"
    kind: str = "spin"
    recursive_read: bool = False


@dataclass
class Plan:
    """The computed layout of a state struct: words, initial values, lock instances."""

    words: int = 0
    inits: list[tuple[int, int]] = field(default_factory=list)  # (offset, value) for non-zero
    locks: list[LockDecl] = field(default_factory=list)
    aux: int = 0  # auxiliary semaphores (Arena.aux): a heap's allocator lock
    node: Any = None  # the tree that `attach` turns into views
    #: kinds that may not nest in themselves mark what they are planning (e.g. a heap)
    within: list[str] = field(default_factory=list, repr=False, compare=False)
    #: one planned object per kind that needs state shared by all its fields (e.g. weak
    #: memory's clock), keyed by the kind's name; ``finish(plan)`` reserves its own words
    #: once the whole state is planned
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def reserve(self, n: int) -> int:
        """``n`` words; returns the first one's offset."""
        off = self.words
        self.words += n
        return off

    def new_aux(self) -> int:
        """One auxiliary semaphore (value 1, not a model lock); returns its index."""
        self.aux += 1
        return self.aux - 1


def plan_struct(struct: type[Struct], options: Any) -> Plan:
    """Lay ``struct`` out from word 0; offsets are relative to the state region."""
    if not (isinstance(struct, type) and issubclass(struct, Struct)):
        raise LayoutError(f"state must be a Struct subclass, not {struct!r}")
    plan = Plan()
    plan.node = plan_instance(struct, options, plan, "")
    for shared in plan.shared.values():  # words of their own go after the state's (never inside a struct)
        shared.finish(plan)
    return plan


def plan_instance(struct: type[Struct], options: Any, plan: Plan, path: str) -> "StructNode":
    """One instance of ``struct`` at the plan's next word, its fields in declaration order."""
    if not struct._fields:
        raise LayoutError(f"{struct.__name__} declares no fields")
    cname = struct.__name__.lower()
    start = plan.words
    members = [(f.name, f.plan(options, plan, cname, f.name, _join(path, f.name))) for f in struct._fields]
    return StructNode(struct, members, start)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ---- nodes: the planned tree -------------------------------------------------------------

@dataclass
class AttachCtx:
    """What attaching needs beyond the words and locks: the arena's auxiliary semaphores
    (``Arena.aux``; None in a single-process test), every heap view in plan order
    (``heaps``: the engine reads their statistics) and the objects that must be bound to
    each worker's Cpu after fork (``bound``)."""

    aux: list[Any] | None = None
    heaps: list[Any] = field(default_factory=list)
    #: every object to bind to each worker's Cpu after fork (``bind(cpu, resolve)``): heaps,
    #: the weak memory of relaxed fields
    bound: list[Any] = field(default_factory=list)
    #: one attached object per entry of ``Plan.shared`` (created by the first field that needs it)
    shared: dict[str, Any] = field(default_factory=dict)
    #: the words and the state region's first word (set by :func:`attach`)
    mv: Any = None
    base: int = 0


class Node:
    """A planned field. ``scalar``: a field the struct view exposes as a property (made by
    :meth:`prop`; the node has an ``off``)."""

    scalar: ClassVar[bool] = False

    def prop(self, rel: int, ctx: AttachCtx) -> property:
        """A scalar's property on the struct's view class, at ``rel`` words from the instance."""
        raise NotImplementedError

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        """What the model sees of this field, over ``mv`` (state region at word ``base``)."""
        raise NotImplementedError

    def offsets(self) -> Iterator[int]:
        """Every word this node owns (relative to the state region)."""
        return iter(())


@dataclass
class IntNode(Node):
    off: int
    scalar: ClassVar[bool] = True

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        return mv[base + self.off]  # a struct view makes it a property instead

    def prop(self, rel: int, ctx: AttachCtx) -> property:
        return _int_property(rel)

    def offsets(self) -> Iterator[int]:
        yield self.off


@dataclass
class IntsNode(Node):
    off: int
    n: int

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        return mv[base + self.off: base + self.off + self.n]

    def offsets(self) -> Iterator[int]:
        return iter(range(self.off, self.off + self.n))


@dataclass
class LockNode(Node):
    index: int

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        return locks[self.index]


@dataclass
class LocksNode(Node):
    indices: list[int]

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        return tuple(locks[i] for i in self.indices)


@dataclass
class StructNode(Node):
    struct: type
    members: list[tuple[str, Node]]
    start: int

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        vc = _view_class(self.struct, self.members, self.start, cache, ctx)
        view = vc.__new__(vc)
        view._mv = mv
        view._base = base + self.start
        for name, sub in self.members:
            if not sub.scalar:
                view.__dict__[name] = sub.attach(mv, base, locks, cache, ctx)
        return view

    def offsets(self) -> Iterator[int]:
        for _, sub in self.members:
            yield from sub.offsets()


@dataclass
class StructsNode(Node):
    items: list[StructNode]

    def attach(self, mv: memoryview, base: int, locks: list[Any], cache: dict, ctx: AttachCtx) -> Any:
        return tuple(sub.attach(mv, base, locks, cache, ctx) for sub in self.items)

    def offsets(self) -> Iterator[int]:
        for sub in self.items:
            yield from sub.offsets()


# ---- views -------------------------------------------------------------------------------

class StructView:
    """Attribute access to one struct instance in the arena (built per worker)."""

    __slots__ = ("_mv", "_base", "__dict__")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} @{self._base}>"


def scalar_offsets(members: list[tuple[str, Node]], start: int) -> tuple[tuple[str, int], ...]:
    """(name, offset relative to ``start``) of every scalar member."""
    return tuple((name, node.off - start) for name, node in members if node.scalar)


def _view_class(struct: type[Struct], members: list[tuple[str, Node]], start: int, cache: dict,
                ctx: AttachCtx) -> type:
    """A view class per Struct and plan: scalar fields are properties at offsets relative to
    the instance, each made by its node (sizes depend on the run's options, so the cache
    lives with the plan)."""
    rel = tuple((name, node.off - start, type(node)) for name, node in members if node.scalar)
    hit = cache.get(struct)
    if hit is not None:
        if hit[1] != rel:
            raise LayoutError(f"{struct.__name__}: instances laid out differently")
        return hit[0]
    ns: dict[str, Any] = {"__slots__": (), "_offsets": {name: off for name, off, _ in rel}}
    for (name, node), (_, off, _) in zip([m for m in members if m[1].scalar], rel):
        ns[name] = node.prop(off, ctx)
    vc = type(struct.__name__, (StructView,), ns)
    cache[struct] = (vc, rel)
    return vc


def _int_property(off: int) -> property:
    def get(self: StructView) -> int:
        return self._mv[self._base + off]

    def put(self: StructView, value: int) -> None:
        self._mv[self._base + off] = value

    return property(get, put)


def attach(node: Node, mv: memoryview, base: int, locks: list[Any], cache: dict | None = None,
           ctx: AttachCtx | None = None) -> Any:
    """Turn a planned tree into views over ``mv`` (state region at word ``base``)."""
    ctx = AttachCtx() if ctx is None else ctx
    ctx.mv, ctx.base = mv, base
    return node.attach(mv, base, locks, {} if cache is None else cache, ctx)


def iter_int_offsets(node: Node) -> Iterator[int]:
    """Every word the planned tree owns (used by tests and snapshots)."""
    return iter(node.offsets())
