"""stress: the engine (CLI, coordinator, workers, detectors, recording, console).
Knows workloads only through :mod:`stress.workload`; no hypervisor word appears here."""

__version__ = "0.1.0"
