"""Call sites as integers, resolved to ``file:line function`` only when a report is printed.

Capturing ``file:line`` is the expensive part of lock instrumentation (FACTS.md: the line
number is recomputed on every access and keying a dict by a code object is slow), so a
site is the int ``id(code) >> 4 << 16 | f_lasti``: cheap to make, storable in one arena
word, and meaningful in every worker because workers are forked from the coordinator after
the model's code is loaded (same code objects at the same addresses). Sites are captured
only on slow paths (contention, first sighting of a held-class chain), as lockdep does.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from types import CodeType, FrameType

_INTERNAL_FILES: set[str] = set()


def internal(path: str) -> None:
    """Mark a source file as instrumentation: sites are taken in its callers (call it at the
    module's top level: the C fast path recognises the module's code by its filename object)."""
    _INTERNAL_FILES.add(path)
    caller = sys._getframe(1).f_code.co_filename
    _INTERNAL_FILES.add(caller)
    try:
        from ._fastlock import _set_internal
    except ImportError:  # the extension is not built yet: shm_model.cpu says so
        return
    _set_internal(caller)


internal(__file__)


def key_of(frame: FrameType) -> int:
    return ((id(frame.f_code) >> 4) << 16) | (frame.f_lasti & 0xFFFF)


def capture(depth: int = 1) -> int:
    """Site of the first frame above ``depth`` that is not instrumentation code."""
    f: FrameType | None = sys._getframe(depth)
    while f is not None and f.f_code.co_filename in _INTERNAL_FILES:
        f = f.f_back
    return key_of(f) if f is not None else 0


def capture_stack(depth: int = 1, limit: int = 6) -> tuple[int, ...]:
    """Up to ``limit`` sites, innermost first, skipping instrumentation frames."""
    f: FrameType | None = sys._getframe(depth)
    while f is not None and f.f_code.co_filename in _INTERNAL_FILES:
        f = f.f_back
    out = []
    # the chain ends at the workload's operation, as lockdep's ends at the syscall: the
    # harness frames above it (the worker loop, the process start-up) are not the model's
    while f is not None and len(out) < limit and f.f_code.co_filename not in _INTERNAL_FILES:
        out.append(key_of(f))
        f = f.f_back
    return tuple(out)


@dataclass(frozen=True)
class Site:
    func: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.func}() {self.file}:{self.line}"

    def short(self) -> str:
        return f"{self.func}+{os.path.basename(self.file)}:{self.line}"


UNKNOWN = Site("?", "?", 0)


def _code_of(obj: object) -> CodeType | None:
    """``obj.__code__`` if it has one. Any exception is no code: a module may hold proxies
    whose attribute access raises (Ray's client stub: "Ray Client is not connected")."""
    try:
        code = getattr(obj, "__code__", None)
    except Exception:
        return None
    return code if isinstance(code, CodeType) else None


class SiteResolver:
    """Maps site ints back to code objects found through live functions."""

    def __init__(self) -> None:
        self._codes: dict[int, CodeType] = {}

    def _index(self) -> None:
        def add(code: CodeType) -> None:
            if (id(code) >> 4) in self._codes:
                return
            self._codes[id(code) >> 4] = code
            for c in code.co_consts:
                if isinstance(c, CodeType):
                    add(c)

        seen: set[int] = set()

        def visit(obj: object, depth: int = 0) -> None:
            if id(obj) in seen or depth > 6:
                return
            seen.add(id(obj))
            if isinstance(obj, (staticmethod, classmethod)):
                obj = obj.__func__
            if isinstance(obj, property):
                for f in (obj.fget, obj.fset, obj.fdel):
                    if f is not None:
                        visit(f, depth + 1)
                return
            code = _code_of(obj)
            if code is not None:
                add(code)
                return
            if isinstance(obj, type):
                for v in list(vars(obj).values()):
                    visit(v, depth + 1)

        # Modules, not gc.get_objects(): objects frozen with gc.freeze() before the
        # workers were forked are invisible to the collector's lists.
        for mod in list(sys.modules.values()):
            for v in list(getattr(mod, "__dict__", {}).values()):
                visit(v)
        for obj in gc.get_objects():
            code = _code_of(obj)
            if code is not None:
                add(code)
        f: FrameType | None = sys._getframe()
        while f is not None:
            add(f.f_code)
            f = f.f_back

    def resolve(self, key: int) -> Site:
        if not key:
            return UNKNOWN
        cid, lasti = key >> 16, key & 0xFFFF
        code = self._codes.get(cid)
        if code is None:
            self._index()
            code = self._codes.get(cid)
            if code is None:
                return UNKNOWN
        line = code.co_firstlineno
        for start, end, ln in code.co_lines():
            if start <= lasti < end and ln is not None:
                line = ln
                break
        return Site(code.co_qualname if hasattr(code, "co_qualname") else code.co_name,
                    _shorten(code.co_filename), line)


def _shorten(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path
