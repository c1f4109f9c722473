"""Finding workloads: built-in ones by name (files in the ``workloads`` package), a user's
by path. The engine imports no workload module by name in its code: it looks them up."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import traceback
from dataclasses import dataclass

from .workload import Workload, WorkloadError, validate

BUILTIN_PACKAGE = "workloads"


@dataclass
class Found:
    cls: type[Workload]
    origin: str  # the name or path the user gave
    source: str  # file it came from


def _workload_classes(module: object) -> list[type[Workload]]:
    out = []
    for v in vars(module).values():
        if isinstance(v, type) and issubclass(v, Workload) and v is not Workload and v.__module__ == module.__name__:
            out.append(v)
    return out


def _one_line(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def load_path(path: str) -> Found:
    if not os.path.exists(path):
        raise WorkloadError(f"no workload file {path!r}")
    if not path.endswith(".py"):
        raise WorkloadError(f"{path!r} is not a Python file")
    modname = "stress_user_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise WorkloadError(f"cannot load {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[modname]
        raise WorkloadError(f"cannot load {path}: {_one_line(e)}") from None
    classes = _workload_classes(module)
    if len(classes) != 1:
        raise WorkloadError(f"{path} must define exactly one Workload subclass (found {len(classes)})")
    validate(classes[0], path)
    return Found(classes[0], path, os.path.abspath(path))


def builtins() -> dict[str, Found]:
    """Every built-in workload, by name."""
    pkg = importlib.import_module(BUILTIN_PACKAGE)
    out: dict[str, Found] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
        except Exception as e:
            raise WorkloadError(f"built-in workload module {info.name} is broken: {_one_line(e)}") from None
        for cls in _workload_classes(module):
            validate(cls, info.name)
            out[cls.label()] = Found(cls, cls.label(), module.__file__ or info.name)
    return out


def find(name_or_path: str) -> Found:
    """A path (contains a slash or ends in .py) or a built-in name."""
    if os.sep in name_or_path or name_or_path.endswith(".py"):
        return load_path(name_or_path)
    table = builtins()
    if name_or_path not in table:
        known = ", ".join(sorted(table)) or "none"
        raise WorkloadError(f"unknown workload {name_or_path!r} (built-in: {known}; a file path also works)")
    return table[name_or_path]
