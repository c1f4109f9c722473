"""LPIs: ``pending_irq`` lifetime under ITS DISCARD and MAPD V=0 (seed 004, PROTOCOLS.md
section 004, issue 25), on the old VGIC of ``migration-storm`` (``shm_model/xen/old_vgic/``,
RELEASE-4.10.0's).

One module per design, as Xen keeps code apart in files:

- :mod:`.common`: the state (``LpiDomain``: the old-VGIC domain, the virtual ITS, the
  pend_lpi_tree and the heaps), the locking order, the helpers every design shares (the
  tree lookup, the ITS tables, INV, ``gicv3_do_LPI``), the model's invariants;
- :mod:`.lookup_outside_lock`: ``lookup-outside-lock``, the v7 series (DISCARD frees at once,
  the pointer looked up before the vgic lock);
- :mod:`.null_entries_under_vgic_lock`: ``null-entries-under-vgic-lock``, Andre's proposal (with
  PRISTINE, bccfbe70a3, of the same series), and ``null-entries-as-posted``, the mail alone;
- :mod:`.upstream`: ``upstream``, Xen 4.10 (56e1b3ebc9, bccfbe70a3, 08055c8ea7, 5928960ee7,
  5e8d02560a).
"""

from __future__ import annotations

from .common import CHECKS, EVENTS, KEY_EVENTS, LpiDomain, LpiVgic
from .lookup_outside_lock import LookupOutsideLock
from .null_entries_under_vgic_lock import NullEntriesAsPosted, NullEntriesUnderVgicLock
from .upstream import Upstream

#: variant id -> the design's class
DESIGNS: dict[str, type[LpiVgic]] = {
    c.name: c for c in (LookupOutsideLock, NullEntriesUnderVgicLock, NullEntriesAsPosted, Upstream)}

__all__ = ["CHECKS", "DESIGNS", "EVENTS", "KEY_EVENTS", "LpiDomain", "LpiVgic"]
