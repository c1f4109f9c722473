"""The shared-memory world: arena, typed layout, instrumented locks, CPUs with interrupt
context, trace rings, and the modelled hypervisor objects. Imports nothing from the engine
(``stress``) or from ``workloads``."""
