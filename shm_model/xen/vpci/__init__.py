"""vPCI: device removal racing deferred BAR mapping (seed 001, PROTOCOLS.md section 001).

One module per design, as Xen keeps code apart in files:

- :mod:`.common`: the state (``VpciWorld``), the helpers every design shares, the invariant;
- :mod:`.unsynchronised`: ``unsynchronised-removal``, Xen 4.16 as the thread analyses it, and
  ``unsynchronised-removal-4.16.3`` (with the stable NULL checks of 96d26f11f5);
- :mod:`.cancel_pending`: ``cancel-pending``, patch v4 02/11 as posted (and
  ``cancel-pending-all-vcpus``, PROTOCOLS.md's reading of it);
- :mod:`.per_domain_rwlock`: ``per-domain-rwlock``, the thread's proposal;
- :mod:`.upstream`: ``upstream``, Xen 4.19 (8862c7b8b6, 4f78438b45, f20dde9259, 622bdd9628).
"""

from __future__ import annotations

from .cancel_pending import CancelPending, CancelPendingAllVcpus
from .common import EVENTS, KEY_EVENTS, VpciCpu, VpciWorld, stale_mappings
from .per_domain_rwlock import PerDomainRwlock
from .unsynchronised import UnsynchronisedRemoval, UnsynchronisedRemoval4163
from .upstream import Upstream

#: variant id -> the design's CPU class
DESIGNS: dict[str, type[VpciCpu]] = {c.name: c for c in (UnsynchronisedRemoval, UnsynchronisedRemoval4163, CancelPending,
                                                          CancelPendingAllVcpus, PerDomainRwlock, Upstream)}

__all__ = ["DESIGNS", "EVENTS", "KEY_EVENTS", "VpciCpu", "VpciWorld", "stale_mappings"]
