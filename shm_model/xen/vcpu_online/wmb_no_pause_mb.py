"""Design ``wmb-no-pause-mb``: Julien's revision (:mod:`.wmb_before_initialised`) on a Xen
before f679038961 ("xen/arm: sched: Ensure the vCPU context is seen before vcpu_pause()
returns", Sep 2020), where Arm's ``sync_vcpu_execstate`` (xen/arch/arm/domain.c,
RELEASE-4.14.0) was empty: "/* Nothing to do -- no lazy switching */". The reader of
XEN_DOMCTL_getvcpucontext then has no barrier between its ``is_initialised`` (and
``is_running``) loads and ``arch_get_info_guest``'s register loads: the evidence for why
that commit mattered. No lock is added (the locking order of :mod:`.upstream` holds).
"""

from __future__ import annotations

from .wmb_before_initialised import WmbBeforeInitialised


class WmbNoPauseMb(WmbBeforeInitialised):
    name = "wmb-no-pause-mb"

    def sync_vcpu_execstate(self, v, seen):
        """Xen 4.14: nothing (no lazy switching)."""
        self.measure_floor(v, seen, "pause_mb_would_be_stale")
