"""Design ``wmb-before-initialised``: Julien Grall's revision (xen-devel, 20 Mar 2021,
seed 002): one ``smp_wmb()`` in ``arch_set_info_guest`` (xen/arch/arm/domain.c, 4.15)
after the register stores and before ``v->is_initialised = 1``, relying on the reader
side's existing barriers: ``sync_vcpu_execstate``'s ``smp_mb()`` (f679038961) reached by
``vcpu_pause`` -> ``vcpu_sleep_sync`` for XEN_DOMCTL_getvcpucontext, and the schedule lock
(acquire/release) for the scheduler ("A single smp_wmb() barrier before
v->is_initialized should be sufficient to cover the two problems"). Everything else is
:mod:`.upstream`; no lock is added (its locking order holds).
"""

from __future__ import annotations

from ...weak import smp_wmb
from .upstream import Upstream


class WmbBeforeInitialised(Upstream):
    name = "wmb-before-initialised"

    def barrier_before_initialised(self):
        smp_wmb(self.cpu)
