"""The new VGIC: virtual IRQ injection and the ap_list (seed 003, PROTOCOLS.md section 003).

One module per design, as Xen keeps code apart in files:

- :mod:`.common`: the state (``NewVgicWorld``), the helpers every design shares;
- :mod:`.upstream`: ``upstream``, Xen 4.11 (RELEASE-4.11.0, xen/arch/arm/vgic/);
- :mod:`.unblock_only`: ``unblock-only``, RFC 22/49 as posted (``vcpu_unblock`` only);
- :mod:`.no_recheck`: ``no-recheck``, step 4 of ``vgic_queue_irq_unlock`` skipped;
- :mod:`.unordered_ap_list_locks`: ``unordered-ap-list-locks``, prune's two list locks
  in (own, target) order;
- :mod:`.irq_unsafe`: ``irq-unsafe``, plain ``spin_lock`` for ``irq_lock`` in task context;
- :mod:`.sorted_insert`: ``sorted-insert``, the ap_list sorted on insertion (inferred DoS
  mitigation);
- :mod:`.capped_flush`: ``capped-flush``, ``vgic_flush_lr_state`` stops when the LRs are
  full (inferred DoS mitigation);
- :mod:`._measure`: the DoS measurement (timed flush and prune, histograms): instrumentation.
"""

from __future__ import annotations

from .capped_flush import CappedFlush
from .common import EVENTS, KEY_EVENTS, NewVgic, NewVgicWorld
from .irq_unsafe import IrqUnsafe
from .no_recheck import NoRecheck
from .sorted_insert import SortedInsert
from .unblock_only import UnblockOnly
from .unordered_ap_list_locks import UnorderedApListLocks
from .upstream import Upstream

#: variant id -> the design's CPU class
DESIGNS: dict[str, type[NewVgic]] = {c.name: c for c in (Upstream, UnblockOnly, NoRecheck, UnorderedApListLocks,
                                                         IrqUnsafe, SortedInsert, CappedFlush)}

__all__ = ["DESIGNS", "EVENTS", "KEY_EVENTS", "NewVgic", "NewVgicWorld"]
