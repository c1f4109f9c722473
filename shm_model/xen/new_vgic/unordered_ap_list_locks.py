"""Design ``unordered-ap-list-locks``: Xen 4.11's ``vgic_prune_ap_list`` taking its own
ap_list lock first and then the target's, whatever their vcpu_ids (PROTOCOLS.md section
003's buggy variant, inferred: the order the comment at the top of vgic.c forbids, "always
take the lowest numbered VCPU's ap_list_lock first"). Two vCPUs pruning IRQs towards each
other take ``ap_list_lock[0] -> [1]`` and ``[1] -> [0]``: lockdep's circular dependency (the
per-vCPU lock classes make it visible), and the deadlock when both are in the window.

Locking order: as ``upstream``, except the two ap_list locks of the move.
"""

from __future__ import annotations

from typing import Any

from .upstream import Upstream


class UnorderedApListLocks(Upstream):
    """4.11 with the prune's two ap_list locks in (own, target) order."""

    name = "unordered-ap-list-locks"

    def prune_move(self, vcpu: int, target: int, irq: Any) -> None:
        """The migration step of ``vgic_prune_ap_list`` with ``vcpuA = vcpu`` (its own list)
        and ``vcpuB = target_vcpu`` always."""
        self.move_locked(vcpu, target, irq, vcpu, target)
