"""vCPU online: PSCI CPU_ON's ``arch_set_info_guest`` racing the scheduler and
XEN_DOMCTL_getvcpucontext on Arm, under ARMv8 weak memory (seed 002, PROTOCOLS.md
section 002).

- :mod:`.common`: the state (``VcpuWorld``), the shared scheduler functions and the
  stale-read check;
- :mod:`.upstream`: ``upstream``, Xen as shipped (4.15 .. 4.21; f679038961);
- :mod:`.mb_before_down_clear`: Julien's first patch (26 Feb 2021);
- :mod:`.wmb_before_initialised`: Julien's revision (20 Mar 2021);
- :mod:`.wmb_rmb`: plus Stefano's ``smp_rmb`` (13 Apr 2021);
- :mod:`.wmb_no_pause_mb`: Julien's revision on a Xen before f679038961.
"""

from __future__ import annotations

from .common import EVENTS, KEY_EVENTS, REGS, VcpuCpu, VcpuWorld
from .mb_before_down_clear import MbBeforeDownClear
from .upstream import Upstream
from .wmb_before_initialised import WmbBeforeInitialised
from .wmb_no_pause_mb import WmbNoPauseMb
from .wmb_rmb import WmbRmb

#: variant id -> the design's CPU class
DESIGNS: dict[str, type[VcpuCpu]] = {c.name: c for c in (Upstream, MbBeforeDownClear, WmbBeforeInitialised,
                                                          WmbRmb, WmbNoPauseMb)}

__all__ = ["DESIGNS", "EVENTS", "KEY_EVENTS", "REGS", "VcpuCpu", "VcpuWorld"]
