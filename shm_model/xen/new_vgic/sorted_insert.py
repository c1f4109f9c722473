"""Design ``sorted-insert``: Xen 4.11 with the ap_list kept in ``vgic_irq_cmp``'s order as
IRQs are added, so that ``vgic_flush_lr_state`` never sorts and walks only as far as the list
registers go. A mitigation of the DoS Julien Grall raised in the review of
"[Xen-devel,RFC,22/49] ARM: new VGIC: Implement virtual IRQ injection" (12 Feb 2018): "I was
expecting the list to be sorted here [list_add_tail in vgic_queue_irq_unlock]. But you seem to
do it only in vgic_flush_lr_state() ... A guest could be nasty and make that list quite big
by make IRQs pending but never "active" them (i.e read IAR)." Unmitigated upstream (4.11 to
master).

Inferred (PROTOCOLS.md section 003: "sorted-insert (sort on insertion)"; Andre Przywara's
reply, 27 Feb 2018, mitigation 3: "Switch to sort-on-insertion once we reached a certain
number of IRQs on the list, to mitigate DOS attacks from the guest. This should avoid list
iterations in hot paths, with IRQs disabled"). No such patch was posted. This design sorts
on every insertion (no threshold: the threshold only changes when the cost is paid):

- ``vgic_queue_irq_unlock`` (step 5) and ``vgic_prune_ap_list``'s migration insert the IRQ
  with ``vgic_ap_list_add_sorted``: after every active IRQ and every IRQ of the same or a
  higher priority (a lower value), before the first of a lower one; each entry passed is
  compared under its irq lock, taken nested in the new IRQ's (``vgic_irq_cmp``'s locking).
  The cost moves to the insertion: O(position) irq locks, in interrupt context when an ISR
  injects, but only when an IRQ is first queued (an IRQ already on a list is not re-added).
- ``vgic_prune_ap_list`` restores the order where ``active`` changed outside the ap_list
  lock (``vgic_fold_lr_state``): an active IRQ it keeps goes to the head (as in
  ``capped-flush``); one that is no longer active and sits after an inactive IRQ of a lower
  priority is re-inserted with ``vgic_ap_list_add_sorted``. The walk is in list order, so
  this is an insertion sort of the entries out of place (after a guest's EOIs: few). With
  that, after each prune the list is in ``vgic_irq_cmp``'s order: active, then pending and
  enabled by priority (the rest pruned); the workload's ``ap-list-order`` invariant checks
  it at every safe point.
- ``vgic_flush_lr_state``: as ``capped-flush`` (no ``compute_ap_list_depth``, no sort; the
  walk ends when the LRs are full): O(LRs) irq locks.
- Still O(list): ``vgic_prune_ap_list`` on every exit, ``vgic_vcpu_pending_irq`` on WFI.
  Priorities are static here (no IPRIORITYR emulation modelled); a priority write would
  have to re-insert the IRQ under its list's lock.

Locking order: as ``upstream``; the insertion takes ``&irq->irq_lock`` of entries nested
(subclass 1) under the new IRQ's, inside the ap_list lock: the order ``vgic_irq_cmp`` has.
"""

from __future__ import annotations

from ...spinlock import assert_held, spin_lock_nested, spin_unlock
from .capped_flush import CappedFlush


class SortedInsert(CappedFlush):
    """4.11 with sort on insertion (see the module's docstring)."""

    name = "sorted-insert"

    def prune_keep(self, vcpu: int, i: int) -> None:
        """``vgic_prune_ap_list`` keeps ``irq`` on this vCPU: an active one goes to the head
        (``capped-flush``); an inactive one after an inactive entry of a lower priority is
        re-inserted in order (``list_del``, ``vgic_ap_list_add_sorted``). Needs the ap_list
        lock and the irq lock. (The entry before is read without its lock: see
        ``CappedFlush.prune_keep``; priorities do not change in this model.)"""
        irq = self.s.spis[i]
        if irq.active:
            super().prune_keep(vcpu, i)
            return
        prev = irq.ap_prev
        if prev == -1:
            return
        p = self.s.spis[prev]
        if p.active or p.priority <= irq.priority:
            return
        self.list_del(vcpu, i)
        self.vgic_ap_list_add_sorted(vcpu, i)

    def ap_list_add(self, vcpu: int, i: int) -> None:
        """Where 4.11 calls ``list_add_tail``: ``vgic_ap_list_add_sorted``."""
        self.vgic_ap_list_add_sorted(vcpu, i)

    def vgic_ap_list_add_sorted(self, vcpu: int, i: int) -> None:
        """Insert SPI ``i`` into ``vcpu``'s ap_list before the first entry that is not active
        and has a lower priority (a higher value); ``list_add_tail`` if none. Needs the
        ap_list lock and the irq's lock; each entry passed is read under its own lock, nested
        (inferred: no such function in Xen)."""
        vc = self.s.vcpus[vcpu]
        irq = self.s.spis[i]
        assert_held(vc.ap_list_lock)
        assert_held(irq.irq_lock)
        prio = irq.priority
        before = -1
        for j in self.ap_walk(vcpu):
            other = self.s.spis[j]
            spin_lock_nested(other.irq_lock, 1)
            later = not other.active and other.priority > prio
            spin_unlock(other.irq_lock)
            if later:
                before = j
                break
        if before == -1:
            self.list_add_tail(vcpu, i)
            return
        # list_add_tail(&irq->ap_list, &other->ap_list): insert before ``before``
        self.list_insert(vc, i, self.s.spis[before].ap_prev, before)
