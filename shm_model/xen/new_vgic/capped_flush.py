"""Design ``capped-flush``: Xen 4.11 with a ``vgic_flush_lr_state`` that stops walking the
ap_list when the list registers are full, a mitigation of the DoS Julien Grall raised in the
review of "[Xen-devel,RFC,22/49] ARM: new VGIC: Implement virtual IRQ injection" (12 Feb
2018): "You compute the size of ap list in vgic_flush_lr_state() and take lock on every IRQ
one by one. A guest could be nasty and make that list quite big by make IRQs pending but
never "active" them (i.e read IAR)." Unmitigated upstream (4.11 to master).

Inferred (PROTOCOLS.md section 003: "capped-flush (stop walking after the LRs are full,
inferred)"; Andre Przywara's reply, 27 Feb 2018, mitigation 1: "Try to avoid iterating the
whole list while checking whether it needs to be sorted"). No such patch was posted; this
is the smallest change that bounds the walk:

- ``vgic_flush_lr_state`` neither counts the list (``compute_ap_list_depth``) nor sorts it
  (``vgic_sort_ap_list``): it fills LRs from the head and stops when they are full (4.11's
  loop already stops there), setting the underflow interrupt if more follow. Its cost is
  O(LRs) irq locks, whatever the list's length.
- What the sort gave, kept where it matters for correctness: ``vgic_irq_cmp`` puts active
  IRQs first, because an active IRQ must be in an LR for the guest to EOI it (GICv2 has no
  EOI for an INTID that no LR holds: it would stay active). ``vgic_prune_ap_list``, which
  already takes every kept IRQ's lock on each exit, moves an active IRQ it keeps to the head
  (``list_move``): after each prune the list has its active IRQs first (the workload's
  ``ap-list-order`` invariant checks it at every safe point). IRQs that are neither active nor
  enabled and pending are pruned, as in 4.11.
- What is given up: priority order beyond the LRs. When more IRQs are pending than there are
  LRs, the guest sees them in arrival order (FIFO; the underflow interrupt brings the rest),
  not the highest priority first. ``sorted-insert`` keeps the order.
- What stays O(list): ``vgic_prune_ap_list`` on every exit (each IRQ's lock, interrupts off:
  4.11's), and ``vgic_vcpu_pending_irq`` on WFI up to the first pending IRQ.

Locking order: as ``upstream`` (``list_move`` under the ap_list lock and the irq lock, which
prune holds).
"""

from __future__ import annotations

from ...spinlock import assert_held
from .upstream import Upstream


class CappedFlush(Upstream):
    """4.11 with a bounded ``vgic_flush_lr_state`` (see the module's docstring)."""

    name = "capped-flush"

    def prune_keep(self, vcpu: int, i: int) -> None:
        """``vgic_prune_ap_list`` keeps ``irq`` on this vCPU (4.11: ``/* We're on the right CPU
        */``); an active one goes to the head, ``list_move(&irq->ap_list,
        &vgic_cpu->ap_list_head)``, unless the entry before it is active too, so the list stays
        "active first" (``vgic_irq_cmp``'s first rule) without sorting. Needs the ap_list lock
        and the irq lock. (The entry before is read without its irq lock: ``active`` changes
        only in ``vgic_fold_lr_state`` on this vCPU's own pCPU, which has run before the prune.)"""
        irq = self.s.spis[i]
        if not irq.active:
            return
        prev = irq.ap_prev
        if prev == -1 or self.s.spis[prev].active:
            return
        self.list_del(vcpu, i)
        self.list_add(vcpu, i)

    def vgic_flush_lr_state(self, vcpu: int) -> None:
        """``vgic_flush_lr_state(vcpu)`` (vgic.c, 4.11) without ``compute_ap_list_depth`` and
        ``vgic_sort_ap_list``: each irq under its lock whose oracle is this vCPU goes into the
        next LR, from the head; the walk ends when the LRs are full, with the underflow
        interrupt (``vgic_set_underflow``) if the list goes on. Needs the ap_list lock."""
        assert_held(self.s.vcpus[vcpu].ap_list_lock)
        self.fill_lrs(vcpu)  # 4.11's loop stops at a full set of LRs already
