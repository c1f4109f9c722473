"""The workload interface: everything a workload file imports.

A workload is one Python file holding one :class:`Workload` subclass, in the manner of a
Locust user class (roles with weighted tasks) and a Hypothesis rule-based state machine
(operations, invariants)::

    from stress.workload import Workload, Role, Struct, Spinlock, Int, Variant, op, invariant

    class State(Struct):
        a = Spinlock("A")
        b = Spinlock("B")

    class ABBA(Workload):
        state = State
        variants = [Variant("inverted", expect=["lock-order-inversion", "deadlock"]),
                    Variant("ordered", expect="clean")]

        class forward(Role):
            @op()
            def a_then_b(self, s):
                with s.a, s.b:
                    pass

The engine validates a workload before it creates any IPC object (:func:`validate`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable

from shm_model.cpu import Cpu
from shm_model.heap import NULL, Heap
from shm_model.layout import Array, Int, LayoutError, Nested, RwLock, Spinlock, Struct, plan_struct
from shm_model.rwlock import (assert_write_held, read_lock, read_lock_irqsave, read_trylock, read_unlock,
                              read_unlock_irqrestore, rw_is_locked, rw_is_write_locked, write_lock,
                              write_lock_irqsave, write_trylock, write_unlock, write_unlock_irqrestore)
from shm_model.spinlock import (Lock, assert_held, spin_is_locked, spin_lock, spin_lock_irq,
                                spin_lock_irqsave, spin_lock_irqsave_nested, spin_lock_nested, spin_trylock,
                                spin_unlock, spin_unlock_irq, spin_unlock_irqrestore)
from shm_model.weak import Relaxed, loc_of, smp_mb, smp_rmb, smp_wmb, value

__all__ = [
    "Workload", "Role", "Variant", "Option", "Violation", "op", "isr", "invariant", "Struct", "Int", "Array", "Nested",
    "Spinlock", "Lock", "Cpu", "spin_lock", "spin_unlock", "spin_trylock", "spin_lock_irq", "spin_lock_nested",
    "spin_lock_irqsave_nested",
    "spin_unlock_irq", "spin_lock_irqsave", "spin_unlock_irqrestore", "spin_is_locked",
    "assert_held", "WorkloadError", "OUTCOMES",
    "RwLock", "read_lock", "read_unlock", "write_lock", "write_unlock", "read_trylock", "write_trylock",
    "read_lock_irqsave", "read_unlock_irqrestore", "write_lock_irqsave", "write_unlock_irqrestore",
    "rw_is_locked", "rw_is_write_locked", "assert_write_held", "Heap", "NULL",
    "Relaxed", "smp_wmb", "smp_rmb", "smp_mb", "value", "loc_of", "SummaryTable", "SummaryValue",
]

#: Outcomes a variant may expect. ``invariant:<name>`` names one of the workload's
#: invariants (or ``assert-held``); ``open`` is a question the run answers with evidence.
#: The lock outcomes are lockdep's reports, one kind each:
#:
#: - ``deadlock``: a wait that really closed (the watchdog saw the cycle of waiters);
#: - ``lock-order-inversion``: "possible circular locking dependency" (a class-graph cycle);
#: - ``guarded-inversion``: such a cycle whose every edge was taken holding one same lock
#:   instance: information (it cannot deadlock while that lock serialises the paths), unless
#:   a variant expects it;
#: - ``recursive-locking``: "possible recursive locking" (a class already held taken again);
#: - ``inconsistent-lock-state``: a class taken in interrupt context and with interrupts on;
#: - ``irq-lock-inversion``: "HARDIRQ-safe -> HARDIRQ-unsafe lock order".
#:
#: Before stress 0.2 the last three were counted as ``lock-order-inversion`` (and a possible
#: AA as ``deadlock``): an old workload's expectation of those names is still met
#: (``stress.verdict.LEGACY``), and the verdict says which precise outcome met it.
OUTCOMES = ("clean", "open", "deadlock", "lock-order-inversion", "guarded-inversion", "recursive-locking",
            "inconsistent-lock-state", "irq-lock-inversion", "held-by-dead-worker", "hung",
            "use-after-free", "null-deref", "double-free", "invalid-free", "invalid-access", "stale-read",
            "lost-wakeup", "crash", "bad-unlock")


class WorkloadError(ValueError):
    """A workload that cannot run as declared. The message is one line for the user."""


@dataclass
class Variant:
    """One version of the protocol: the buggy code, a proposal, or what shipped."""

    id: str
    expect: str | list[str] | tuple[str, ...] = "clean"
    provenance: str = ""
    doc: str = ""
    #: outcomes this variant is known to show, with the reason: reported and recorded, but
    #: they neither fail the verdict nor end the run (a known, understood defect)
    known: dict[str, str] = field(default_factory=dict)
    #: for an ``open`` variant: what runs have shown so far, with the seed that shows it
    #: (``stress list`` prints it beside the question)
    answer: str = ""
    #: when the run stops: ``"first"`` (default) at the first decisive finding; ``"all"``: an
    #: expected finding stops it only once every expected outcome has been seen (or the time
    #: is up), for a protocol that has several bugs, one of which can hide the other (a NULL
    #: dereference that comes first, and the use-after-free behind it). The verdict is the same.
    stop: str = "first"

    @property
    def outcomes(self) -> tuple[str, ...]:
        return (self.expect,) if isinstance(self.expect, str) else tuple(self.expect)


class SummaryTable(dict):
    """A small table among a workload's :meth:`Workload.summary` values. It is the JSON object
    ``{"title": str, "columns": [str], "rows": [[cell]], "notes": [str], ...more keys}`` (a
    ``dict``: summary.json stores it as is; extra keyword arguments are data for tools, not
    printed); the end-of-run summary prints it (its ``str``) as aligned lines under its title,
    a float cell with 1 decimal, ``None`` as "-", then its notes."""

    def __init__(self, title: str, columns: list[str], rows: list[list[Any]], notes: list[str] | None = None,
                 **data: Any) -> None:
        super().__init__(title=title, columns=list(columns), rows=[list(r) for r in rows], notes=list(notes or []),
                         **data)

    def __str__(self) -> str:
        def cell(c: Any) -> str:
            return "-" if c is None else f"{c:,.1f}" if isinstance(c, float) else str(c)

        head = [str(c) for c in self["columns"]]
        body = [[cell(c) for c in r] for r in self["rows"]]
        w = [max([len(h)] + [len(r[i]) for r in body if i < len(r)]) for i, h in enumerate(head)]
        lines = [self["title"], "  ".join(h.rjust(w[i]) if i else h.ljust(w[i]) for i, h in enumerate(head))]
        lines += ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in body]
        lines += [f"- {n}" for n in self["notes"]]
        return "\n" + "\n".join("  " + ln for ln in lines)

    def __format__(self, spec: str) -> str:  # f"{table}" is the table, not a dict's repr
        return str(self)


#: a value of :meth:`Workload.summary`'s dict
SummaryValue = int | float | str | SummaryTable


@dataclass
class Option:
    """A workload-specific command-line knob: ``--<name> VALUE``."""

    default: int | float | str
    help: str = ""
    min: float | None = None
    max: float | None = None

    def parse(self, name: str, text: str) -> int | float | str:
        kind = type(self.default)
        try:
            value = kind(text)
        except ValueError:
            raise WorkloadError(f"--{name} takes {kind.__name__ if kind is not str else 'a string'}, not {text!r}")
        if self.min is not None and value < self.min:
            raise WorkloadError(f"--{name} must be at least {self.min:g}, not {text}")
        if self.max is not None and value > self.max:
            raise WorkloadError(f"--{name} must be at most {self.max:g}, not {text}")
        return value


@dataclass
class Violation:
    """What an invariant returns when it is violated: a message, and optionally the
    *subject* (e.g. an IRQ number): the report then shows every trace event whose first
    argument is that subject, from every worker, in time order."""

    message: str
    subject: int | None = None


@dataclass
class OpSpec:
    name: str
    fn: Callable
    weight: float = 1.0
    rate: float | None = None  # operations per second for the whole role, when paced


def op(weight: float = 1.0, rate: float | None = None, name: str | None = None) -> Callable:
    """Mark a Role method as an operation. ``weight``: share of the unpaced mix; ``rate``:
    operations per second for the role as a whole (``--rate name=N/s`` overrides)."""

    def deco(fn: Callable) -> Callable:
        fn._stress_op = OpSpec(name or fn.__name__, fn, weight, rate)
        return fn

    return deco


def isr(fn: Callable) -> Callable:
    """Mark a Role method ``(self, s, irq)`` as the interrupt handler of that role's CPUs."""
    fn._stress_isr = True
    return fn


def invariant(name: str | None = None) -> Callable:
    """Mark a Workload method ``(self, s)`` as an invariant checked with every worker parked
    at a safe point. Return None when it holds; a message, a :class:`Violation` or False
    when it is violated. Model events (``Role.trace``) take the subject as first argument."""

    def deco(fn: Callable) -> Callable:
        fn._stress_invariant = name or fn.__name__.replace("_", "-")
        return fn

    return deco


class Role:
    """An actor: one worker process per instance. ``count`` is an int, the name of an
    option (``"vcpus"``), or None (shares ``--workers``)."""

    count: int | str | None = None
    #: set by the engine in each worker:
    workload: "Workload"
    cpu: Cpu
    index: int  # index within the role
    wid: int  # worker id (the CPU number)
    random: Any  # random.Random seeded from --seed and the worker id
    peers: dict[str, list[int]]  # role -> worker ids (CPU numbers) of its workers
    variant: str
    options: SimpleNamespace

    def setup(self, s: Any) -> None:
        """Called once in the worker process before its first operation."""

    def trace(self, event: str, a: int = 0, b: int = 0, c: int = 0) -> None:
        """Record a model event declared in ``Workload.events`` in this CPU's trace."""
        self.cpu.event(event, a, b, c)

    def check(self, ok: bool, name: str, message: str = "", **details: Any) -> bool:
        """An inline invariant: a finding ``invariant:<name>`` when ``ok`` is false."""
        if not ok:
            self.cpu.finding(f"invariant:{name}", f"BUG: invariant {name} violated" + (f": {message}" if message else ""),
                             **details)
        return ok

    @classmethod
    def ops(cls) -> list[OpSpec]:
        return [v._stress_op for v in _members(cls) if hasattr(v, "_stress_op")]

    @classmethod
    def isr_fn(cls) -> Callable | None:
        found = [v for v in _members(cls) if getattr(v, "_stress_isr", False)]
        return found[0] if found else None


def _members(cls: type) -> Iterable[Any]:
    seen = set()
    for klass in cls.__mro__:
        for k, v in vars(klass).items():
            if k not in seen:
                seen.add(k)
                yield v


class Workload:
    """Base of a workload. Class attributes declare it; see the module docstring."""

    name: str = ""
    description: str = ""
    state: type[Struct]
    variants: list[Variant] = []
    options: dict[str, Option] = {}
    #: names of inline checks (``Role.check(ok, name)``), each an ``invariant:<name>`` outcome
    checks: tuple[str, ...] = ()
    #: trace events: name -> format with {a} {b} {c}, e.g. "irq {a}: vcpu{b} -> vcpu{c}"
    events: dict[str, str] = {}
    #: the events that change the state an invariant looks at: a violation's report keeps
    #: them for its subject from the whole trace, not only from the recent tail
    key_events: tuple[str, ...] = ()
    #: default --duration in seconds and --rate values for this workload
    duration: float = 10.0
    #: how often invariants are checked with the world stopped, seconds (0: never)
    check_interval: float = 0.5

    #: default --hung-timeout in seconds (a workload that hangs on purpose wants it short)
    hung_timeout: float = 10.0

    #: default --noise for this workload (race windows that need widening to be seen)
    noise: float = 0.0

    #: set by the engine:
    variant: str
    opts: SimpleNamespace

    def setup(self, s: Any) -> None:
        """Initialise the shared state (in the coordinator, before workers start)."""

    def summary(self, s: Any) -> dict[str, SummaryValue]:
        """Model counters to show in the end-of-run summary (e.g. refused migrations): ints,
        floats, strings, or a :class:`SummaryTable` (summary.json's ``model`` object)."""
        return {}

    # -- introspection used by the engine ----------------------------------------------------
    @classmethod
    def roles(cls) -> dict[str, type[Role]]:
        out: dict[str, type[Role]] = {}
        for klass in reversed(cls.__mro__):  # a subclass may add or replace roles
            for k, v in vars(klass).items():
                if isinstance(v, type) and issubclass(v, Role):
                    out[k] = v
        return out

    @classmethod
    def invariants(cls) -> dict[str, Callable]:
        return {v._stress_invariant: v for v in _members(cls) if hasattr(v, "_stress_invariant")}

    @classmethod
    def variant_named(cls, vid: str | None) -> Variant:
        if vid is None:
            return cls.variants[0]
        for v in cls.variants:
            if v.id == vid:
                return v
        raise WorkloadError(f"workload {cls.label()!r} has no variant {vid!r} "
                            f"(variants: {', '.join(v.id for v in cls.variants)})")

    @classmethod
    def label(cls) -> str:
        return cls.name or cls.__name__.lower()


def validate(cls: Any, origin: str = "") -> None:
    """Check a workload declaration completely, before any IPC object exists."""
    where = f"{origin}: " if origin else ""
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        raise WorkloadError(f"{where}not a Workload subclass")
    state = getattr(cls, "state", None)
    if not (isinstance(state, type) and issubclass(state, Struct)):
        raise WorkloadError(f"{where}{cls.__name__}.state must be a Struct subclass")
    if not cls.variants:
        raise WorkloadError(f"{where}{cls.__name__} declares no variants")
    ids = [v.id for v in cls.variants]
    if len(set(ids)) != len(ids):
        raise WorkloadError(f"{where}{cls.__name__} declares a variant twice")
    invariants = cls.invariants()
    for v in cls.variants:
        if not isinstance(v, Variant):
            raise WorkloadError(f"{where}variants must be Variant(...), not {v!r}")
        if not v.outcomes:
            raise WorkloadError(f"{where}variant {v.id!r} expects nothing (use expect='clean')")
        for o in v.outcomes:
            if o.startswith("invariant:"):
                inv = o.split(":", 1)[1]
                if inv not in invariants and inv not in ("assert-held",) and not _inline_invariant(cls, inv):
                    raise WorkloadError(f"{where}variant {v.id!r} expects {o!r}, but the workload has no invariant {inv!r}")
            elif o not in OUTCOMES:
                raise WorkloadError(f"{where}variant {v.id!r} expects unknown outcome {o!r} (known: {', '.join(OUTCOMES)}, invariant:<name>)")
        for o in v.known:
            if not (o in OUTCOMES or o.startswith("invariant:")) or o in ("clean", "open") or o in v.outcomes:
                raise WorkloadError(f"{where}variant {v.id!r}: known outcome {o!r} must be a finding it does not expect")
        if ("clean" in v.outcomes or "open" in v.outcomes) and len(v.outcomes) > 1:
            raise WorkloadError(f"{where}variant {v.id!r}: 'clean' and 'open' stand alone")
        if v.stop not in ("first", "all"):
            raise WorkloadError(f"{where}variant {v.id!r}: stop must be 'first' or 'all', not {v.stop!r}")
    roles = cls.roles()
    if not roles:
        raise WorkloadError(f"{where}{cls.__name__} declares no Role")
    for rname, role in roles.items():
        ops = role.ops()
        if not ops and role.isr_fn() is None:
            raise WorkloadError(f"{where}role {rname!r} has no @op and no @isr")
        names = [o.name for o in ops]
        if len(set(names)) != len(names):
            raise WorkloadError(f"{where}role {rname!r} declares an operation twice")
        for o in ops:
            if len(inspect.signature(o.fn).parameters) != 2:
                raise WorkloadError(f"{where}operation {rname}.{o.name} must take (self, s)")
            if o.weight < 0 or (o.rate is not None and o.rate <= 0):
                raise WorkloadError(f"{where}operation {rname}.{o.name}: weight must be >= 0 and rate > 0")
        c = role.count
        if isinstance(c, str) and c not in cls.options:
            raise WorkloadError(f"{where}role {rname!r} count names option {c!r}, which is not declared")
        if isinstance(c, int) and not isinstance(c, bool) and c < 0:
            raise WorkloadError(f"{where}role {rname!r} count must be >= 0")
    for name, o in cls.options.items():
        if not isinstance(o, Option):
            raise WorkloadError(f"{where}option {name!r} must be Option(...)")
        if name in RESERVED_OPTIONS:
            raise WorkloadError(f"{where}option {name!r} clashes with an engine option")
    defaults = SimpleNamespace(**{k: o.default for k, o in cls.options.items()})
    try:
        plan_struct(state, defaults)
    except LayoutError as e:
        raise WorkloadError(f"{where}{e}") from None


def _inline_invariant(cls: type, name: str) -> bool:
    """Inline checks (``Role.check(ok, name)``) are declared in ``Workload.checks``."""
    return name in getattr(cls, "checks", ())


RESERVED_OPTIONS = {"workload", "variant", "duration", "seed", "workers", "rate", "noise", "out",
                    "html", "trace-locks", "hung-timeout", "quiet", "schedule", "pct-depth", "pct-steps", "steps",
                    "step-ns", "check-interval", "db", "no-store", "json", "junit-xml"}


@dataclass
class Counts:
    """How many workers each role gets."""

    per_role: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_role.values())


def role_counts(cls: type[Workload], opts: SimpleNamespace, workers: int | None) -> Counts:
    roles = cls.roles()
    fixed: dict[str, int] = {}
    flexible = []
    for rname, role in roles.items():
        c = role.count
        if c is None:
            flexible.append(rname)
        elif isinstance(c, str):
            fixed[rname] = int(getattr(opts, c))
        else:
            fixed[rname] = int(c)
    counts = dict(fixed)
    if flexible:
        n = workers if workers is not None else len(flexible)
        if n < len(flexible):
            raise WorkloadError(f"--workers {n} is fewer than the {len(flexible)} roles that share it "
                                f"({', '.join(flexible)})")
        for i, rname in enumerate(flexible):
            counts[rname] = n // len(flexible) + (1 if i < n % len(flexible) else 0)
    elif workers is not None and workers != sum(fixed.values()):
        raise WorkloadError(f"this workload's role counts are fixed by its options "
                            f"({', '.join(f'{k}={v}' for k, v in fixed.items())}); --workers does not apply")
    ordered = {r: counts[r] for r in roles}
    if sum(ordered.values()) == 0:
        raise WorkloadError("no workers to run")
    if sum(ordered.values()) > 64:
        raise WorkloadError(f"{sum(ordered.values())} workers: at most 64 are supported")
    return Counts(ordered)
