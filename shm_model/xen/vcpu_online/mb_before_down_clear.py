"""Design ``mb-before-down-clear``: Julien Grall's first patch, "xen/arm: Ensure the vCPU
context is seen before clearing the _VPF_down" (xen-devel, 26 Feb 2021, never merged;
seed 002): in ``arch_set_info_guest`` (xen/arch/arm/domain.c, 4.15) an ``smp_mb()`` after
``v->is_initialised = 1`` and before ``clear_bit(_VPF_down, &v->pause_flags)``.

It orders the register stores before ``_VPF_down``'s clear (the scheduling path), but not
before ``is_initialised = 1``: XEN_DOMCTL_getvcpucontext may see ``is_initialised`` set
before the registers (Julien, 27 Feb 2021: "we would want a smp_wmb() before writing to
v->is_initialised"). Everything else is :mod:`.upstream`; no lock is added (its locking
order holds).
"""

from __future__ import annotations

from ...weak import smp_mb
from .upstream import Upstream


class MbBeforeDownClear(Upstream):
    name = "mb-before-down-clear"

    def barrier_before_down_clear(self):
        smp_mb(self.cpu)
