"""Design ``wmb-rmb``: Julien's ``smp_wmb()`` before ``v->is_initialised = 1``
(:mod:`.wmb_before_initialised`) plus Stefano Stabellini's ``smp_rmb()`` right after
the ``v->is_initialised`` check of XEN_DOMCTL_getvcpucontext (xen/common/domctl.c, 4.15,
the lines Stefano links; xen-devel, 13 Apr 2021, seed 002: "I think it would be best to
have the smp_rmb() barrier above after the first v->is_initialised read to make sure we
take the right path").

The model measures what the extra barrier changes (summary): how often it raised this
CPU's read view (``rmb_raised``), and how often, just before it, some register's oldest
readable value was older than the generation of ``is_initialised`` just read
(``rmb_would_be_stale``: a register load hoisted above the barrier could have been stale).
The ``smp_mb()`` of ``sync_vcpu_execstate`` comes later on the same path, so a non-zero
count does not by itself mean the barrier changed what ``arch_get_info_guest`` reads.
No lock is added (the locking order of :mod:`.upstream` holds).
"""

from __future__ import annotations

from ...weak import smp_rmb
from .wmb_before_initialised import WmbBeforeInitialised


class WmbRmb(WmbBeforeInitialised):
    name = "wmb-rmb"

    def barrier_after_initialised_check(self, v, seen):
        wm = self.cpu.wm
        before = wm.vlow if wm is not None else 0
        self.measure_floor(v, seen, "rmb_would_be_stale")
        smp_rmb(self.cpu)
        if wm is not None and wm.vlow > before:
            self.s.rmb_raised += 1
