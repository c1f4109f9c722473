"""The new VGIC's shared state and the helpers every design uses (seed 003, PROTOCOLS.md
section 003): Xen 4.11's ``xen/arch/arm/vgic/vgic.c`` (RELEASE-4.11.0), ``vgic-v2.c``,
``vgic-mmio.c``, ``vgic-mmio-v2.c``, ``xen/arch/arm/domain.c`` (``vcpu_kick``,
``vcpu_block_unless_event_pending``) and ``xen/common/schedule.c`` (``vcpu_unblock``), which
port KVM's ``virt/kvm/arm/vgic/vgic.c`` (Linux commit 81eeb95ddbab and its series).

What is here is what the designs do not disagree about: the objects (``struct vgic_irq`` per
SPI, ``struct vgic_cpu`` per vCPU with its ap_list and list registers, the distributor), the
helpers Xen names (``irq_is_pending``, ``vgic_target_oracle``, ``vgic_validate_injection``,
``vgic_irq_cmp``/``vgic_sort_ap_list``, ``compute_ap_list_depth``, ``vgic_v2_populate_lr``,
``vgic_v2_fold_lr_state``, ``vgic_vcpu_pending_irq``, ``vcpu_unblock``, ``vcpu_kick``,
``vcpu_block_unless_event_pending``), the index-linked list primitives and the model's own
bookkeeping for the invariants and the liveness check. Each design (``upstream``,
``unblock_only``, ``no_recheck``, ``unordered_ap_list_locks``, ``irq_unsafe``) writes the
protocol functions that differ; their locking orders are in their own headers.

Locking order (Xen 4.11, the comment at the top of vgic.c), outermost first::

    vgic->lock                  documentary: no such field is taken by any path modelled
      vgic_cpu->ap_list_lock    two of them: the lower vcpu_id first (vgic_prune_ap_list)
        vgic->lpi_list_lock     LPIs only: not modelled (no LPIs yet)
          desc->lock            hardware-mapped IRQs only: not modelled (irq->hw is 0)
            vgic_irq->irq_lock  two of them: vgic_irq_cmp (the sort), the second nested

"Since the VGIC must support injecting virtual interrupts from ISRs, we have to use the
spin_lock_irqsave/spin_unlock_irqrestore versions of outer spinlocks for any lock that may
be taken while injecting an interrupt": ``ap_list_lock`` and ``irq_lock`` are taken in
interrupt context (``vgic_inject_irq`` from a physical interrupt's handler), so everywhere
else with interrupts disabled.

Lock classes as lockdep sees them: ``&irq->irq_lock`` is one class for every SPI (the sort
takes the second with ``spin_lock_nested(.., 1)``, KVM's ``SINGLE_DEPTH_NESTING``);
``&vgic_cpu->ap_list_lock`` has a class per vCPU (``[0]``, ``[1]``, ...: lockdep's dynamic
keys), so that the vcpu_id order of two ap_list locks is checked. KVM's lockdep cannot
check that order (it annotates the inner lock with ``raw_spin_lock_nested``, one class for
all); per-instance classes are this harness's stricter reading of the comment.

The world (simplifications that do not change what a run can find are said here):

- One domain, ``--vcpus`` vCPUs; vCPU ``v`` is pinned on pCPU ``v`` (the worker of the
  ``vcpu`` role with index ``v``): ``current`` on a pCPU is its vCPU, or the idle vCPU while
  it is blocked. ``is_running`` is "not blocked" (a vCPU in the hypervisor on its pCPU is
  running, as in Xen).
- ``--spis`` virtual SPIs, INTIDs ``32 ..``; even INTIDs are edge-triggered, odd ones
  level-sensitive (``config``). No SGIs/PPIs (private IRQs), no LPIs, no hardware-mapped
  IRQs (``irq->hw`` = 0: no ``desc->lock``, no physical active state).
- Refcounts are not modelled: Xen's ``vgic_put_irq`` returns at once for ``intid <
  VGIC_MIN_LPI`` (vgic.c, 4.11) and ``vgic_get_irq`` of an SPI is a plain array index, so an
  SPI's ``refcount`` never changes what a run can do. LPIs (seed 004) will bring them, on the
  heap.
- List registers: ``--lrs`` per vCPU, saved with it (``gic_save_state``): an LR is
  (intid, pending, active); neither pending nor active is an empty LR (``GICH_ELRSR``), whose
  INTID the fold still reads. Only the vCPU's own pCPU touches them (flush
  on entry, fold on exit, the guest in between).
- ``GICH_LR.EOI``: ``vgic_v2_populate_lr`` sets it for a (virtual) level IRQ, so the guest's
  EOI of a level IRQ raises a maintenance interrupt: the guest exits and the fold resamples.
- ``GICH_HCR.UIE`` (underflow): set by ``vgic_flush_lr_state`` when the list holds more than
  it could put in LRs; the maintenance interrupt fires when at most one LR is valid, and the
  guest exits.
- ``vcpu_unblock`` clears ``_VPF_blocked`` (a plain word: only the vCPU sets it, every
  unblocker clears it; ``vcpu_wake``'s scheduler lock is not modelled: it protects the
  scheduler's queues, not the VGIC).
- ``smp_send_event_check_mask``: a real interrupt (``EVENT_CHECK``) raised at the target
  pCPU; its handler makes a vCPU that is in the guest exit (the physical IRQ traps to EL2).
  Any physical interrupt taken while the guest runs is an exit.

Measurement (model bookkeeping, not Xen; the DoS question of the thread): every
``vgic_sync_to_lrs`` records the ap_list's length (``ap_len``, the model's counter: no
walk) and times ``vgic_flush_lr_state``; every ``vgic_sync_from_lrs`` times
``vgic_prune_ap_list``; both with the model's clock (``cpu.clock_ns()``: CLOCK_MONOTONIC in
free mode, the virtual clock in controlled mode, so a replay records the same numbers), in
the worker process of the vCPU's pCPU, into arena histograms (:func:`hist_add`: exact below
8 ns, then 8 buckets per power of two, a quantile within 1/16 of its value).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from ...cpu import Panic
from ...layout import Array, Int, Spinlock, Struct
from ...spinlock import assert_held, spin_lock, spin_lock_nested, spin_unlock
from . import _irqsave, _measure
from ._measure import HIST_BUCKETS, hist_add, hist_bucket, hist_quantile, hist_value

SPI_BASE = 32  # VGIC_NR_PRIVATE_IRQS
#: GICv2's largest SPI count: INTIDs 32 .. 1019
VGIC_MAX_SPIS = 988
VGIC_CONFIG_EDGE, VGIC_CONFIG_LEVEL = 0, 1
NO_VCPU = -1
#: the physical SGI of smp_send_event_check_mask (GIC_SGI_EVENT_CHECK is SGI 0 in Xen)
EVENT_CHECK = 0
#: run state of a vCPU (the model's; Xen knows is_running and _VPF_blocked)
IN_HYP, IN_GUEST, BLOCKED = 0, 1, 2
STATE_NAMES = {IN_HYP: "in the hypervisor", IN_GUEST: "running in the guest", BLOCKED: "blocked in WFI"}
#: why a vCPU exited the guest
EXIT_KICK, EXIT_UNDERFLOW, EXIT_TRAP, EXIT_WFI = 1, 2, 3, 4

#: trace events of the model: the first argument is the INTID (the subject), or a vCPU id
EVENTS = {
    "inject": "irq {a}: vgic_inject_irq level {b} (on pcpu{c})",
    "inject_ignored": "irq {a}: injection level {b} not valid (vgic_validate_injection)",
    "queue": "irq {a}: vgic_queue_irq_unlock: added to vcpu{b}'s ap_list (len {c})",
    "queued_already": "irq {a}: already on vcpu{b}'s ap_list, oracle vcpu{c}: kick only",
    "queue_retry": "irq {a}: re-check failed (irq->vcpu {b}, oracle vcpu{c}): retry",
    "queue_none": "irq {a}: not pending and enabled: nothing to queue",
    "kick": "irq {a}: vcpu_kick(vcpu{b}) ipi={c}",
    "unblock_only": "irq {a}: vcpu_unblock(vcpu{b}) only (was {c}: 1 in guest)",
    "prune_drop": "irq {a}: pruned off vcpu{b}'s ap_list",
    "prune_move": "irq {a}: moved from vcpu{b}'s ap_list to vcpu{c}'s",
    "prune_replay": "irq {a}: vgic_prune_ap_list: oracle changed, replay (vcpu{b} -> vcpu{c})",
    "lr_set": "irq {a}: into LR{c} of vcpu{b}",
    "lr_fold": "irq {a}: folded from LR{c} of vcpu{b}",
    "ack": "irq {a}: guest on vcpu{b} acknowledges LR{c} (pending -> active)",
    "eoi": "irq {a}: guest on vcpu{b} EOIs LR{c}",
    "isenabler": "irq {a}: ISENABLER from vcpu{b}",
    "icenabler": "irq {a}: ICENABLER from vcpu{b}",
    "itargetsr": "irq {a}: ITARGETSR vcpu{b} -> vcpu{c}",
    "ispendr": "irq {a}: ISPENDR from vcpu{b}",
    "icpendr": "irq {a}: ICPENDR from vcpu{b}",
    "raise": "irq {a}: physical IRQ raised at pcpu{b}",
    "exit": "vcpu{a}: exits the guest (reason {b}: 1 kick, 2 underflow, 3 trap, 4 WFI)",
    "enter": "vcpu{a}: enters the guest with {b} LRs used",
    "block": "vcpu{a}: WFI: blocked",
    "wake": "vcpu{a}: unblocked ({b}: 1 kick, 2 vtimer)",
}
KEY_EVENTS = ("inject", "queue", "queued_already", "queue_retry", "kick", "unblock_only", "prune_drop",
              "prune_move", "lr_set", "lr_fold", "ack", "eoi", "isenabler", "icenabler", "itargetsr", "ispendr",
              "icpendr")


class VgicIrq(Struct):
    """``struct vgic_irq`` (xen/include/asm-arm/new_vgic.h, 4.11) of one SPI: the fields the
    protocol reads (no ``hw``/``hwintid``: not hardware-mapped; no ``refcount``: see the module
    docstring). ``vcpu`` is the vCPU whose ap_list it is on (-1: NULL); ``ap_next``/``ap_prev``
    are ``irq->ap_list``, index-linked (SPI indices, -1 the head)."""

    irq_lock = Spinlock("&irq->irq_lock")
    intid = Int()
    enabled = Int()
    config = Int()
    pending_latch = Int()
    line_level = Int()
    active = Int()
    priority = Int()
    vcpu = Int(init=NO_VCPU)
    target_vcpu = Int(init=NO_VCPU)
    targets = Int()
    ap_next = Int(init=-1)
    ap_prev = Int(init=-1)
    # model bookkeeping, not in Xen:
    moved = Int()  # nobody kicked irq->vcpu since: 1 vgic_prune_ap_list moved it there, 2 ITARGETSR retargeted it
    unlive = Int(init=-1)  # irq->vcpu's prune_passes when it stopped being live (queued-is-live)
    raised_ns = Int()  # model clock when the device raised it as a physical IRQ, until a handler took it (0: none)


class VgicCpu(Struct):
    """``struct vgic_cpu`` (``v->arch.vgic``) of one vCPU, its list registers and run state."""

    ap_list_lock = Spinlock("&vgic_cpu->ap_list_lock", per_instance=True)
    ap_head = Int(init=-1)
    ap_tail = Int(init=-1)
    ap_len = Int()
    used_lrs = Int()
    lr_intid = Array(Int, "lrs", init=-1)
    lr_pending = Array(Int, "lrs")
    lr_active = Array(Int, "lrs")
    underflow = Int()  # GICH_HCR.UIE
    # run state
    state = Int(init=IN_HYP)
    blocked = Int()  # _VPF_blocked
    need_exit = Int()  # a physical interrupt (an IPI) arrived while in the guest: exit at the next step
    # model bookkeeping
    prune_passes = Int()
    pid = Int()
    exits_kick = Int()
    exits_underflow = Int()
    exits_trap = Int()
    exits_wfi = Int()
    exits_maint = Int()  # EOI maintenance interrupts (level IRQs: GICH_LR.EOI)
    max_ap_len = Int()
    raised = Int()  # physical interrupts a device raised at this pCPU
    isr_spi = Int()  # ... handled by this pCPU's handler (in its worker's process)
    isr_wrong = Int()  # handled in another process, or more than raised
    isr_deferred = Int()  # handlers that ran late: the signal came while interrupts were masked
    isr_in_irqsave = Int()  # handlers that ran inside an irqsave section (must stay 0)
    # the DoS measurement (see the module docstring), all times in ns of the model's clock
    entries = Int()  # vgic_sync_to_lrs calls (guest entries)
    ap_len_hist = Array(Int, lambda o: o.spis + 1)  # ap_list length at each guest entry
    flushes = Int()  # vgic_flush_lr_state calls (entries with a non-empty list)
    flush_ns = Int()
    flush_max_ns = Int()
    flush_hist = Array(Int, HIST_BUCKETS)
    prunes = Int()  # vgic_prune_ap_list calls
    prune_ns = Int()
    prune_max_ns = Int()
    prune_hist = Array(Int, HIST_BUCKETS)
    vcpu_ns = Int()  # the vCPU's steps on its pCPU (not idle in WFI; the model's liveness check excluded)
    steps_t0 = Int()  # first and last step of this pCPU (its span)
    steps_t1 = Int()
    # the bystander: a benign vCPU of another domain sharing this pCPU (--bystander-us)
    byst_slices = Int()
    byst_ns = Int()
    byst_wait_ns = Int()
    byst_wait_max_ns = Int()
    byst_wait_hist = Array(Int, HIST_BUCKETS)
    # physical IRQ latency at this pCPU: the device's raise to its handler's entry
    irqlat_n = Int()
    irqlat_ns = Int()
    irqlat_max_ns = Int()
    irqlat_hist = Array(Int, HIST_BUCKETS)


class NewVgicWorld(Struct):
    """One domain's new VGIC: the distributor, its SPIs, its vCPUs; then model counters."""

    enabled = Int(init=1)  # d->arch.vgic.enabled (GICD_CTLR.EnableGrp0): on
    spis = Array(VgicIrq, "spis")
    vcpus = Array(VgicCpu, "vcpus")
    # model bookkeeping: the INTID each CPU context (worker * 2 + ctx) is inside
    # vgic_queue_irq_unlock for, until its kick is sent (-1: none); the liveness check waits
    queueing = Array(Int, lambda o: 2 * (o.vcpus + 1), init=-1)
    # counters (the summary)
    injections = Int()
    injections_isr = Int()
    injections_ignored = Int()
    queued = Int()
    queue_retries = Int()
    kicks = Int()
    ipis = Int()
    unblock_only = Int()
    prune_moves = Int()
    prune_drops = Int()
    lr_fills = Int()
    acks = Int()
    eois = Int()
    mmio = Int()
    retargets = Int()
    wfi_blocks = Int()
    vtimer_wakes = Int()
    sorts = Int()
    clock_virtual = Int()  # the DoS measurement's clock: 1 the controlled scheduler's virtual clock


def lr_valid(vc: Any, lr: int) -> bool:
    """A list register in use: pending, active or both (GICH_ELRSR's bit clear). An LR the
    guest has EOIed keeps its INTID until the fold reads and clears it."""
    return vc.lr_intid[lr] >= 0 and bool(vc.lr_pending[lr] or vc.lr_active[lr])


def irq_is_pending(irq: Any) -> bool:
    """``irq_is_pending`` (xen/arch/arm/vgic/vgic.h, 4.11): edge: the latch; level: the latch
    or the line."""
    if irq.config == VGIC_CONFIG_EDGE:
        return bool(irq.pending_latch)
    return bool(irq.pending_latch or irq.line_level)


class NewVgic:
    """One pCPU of the model (worker ``cpu``), running vCPU ``vid`` (``None``: a pCPU that
    runs no vCPU of this domain, e.g. the emulated device's). A design subclasses it with the
    protocol's functions; these are the helpers they share, named as Xen names them."""

    #: the variant id (set by each design)
    name = "?"

    def __init__(self, s: Any, cpu: Any, vid: int | None, opts: Any, trace: Callable[..., None]) -> None:
        self.s = s
        self.cpu = cpu
        self.vid = vid
        self.trace = trace
        self.nr_lrs = opts.lrs
        self.nr_spis = len(s.spis)
        self.nr_vcpus = len(s.vcpus)
        self.peers: list[int] = []  # vCPU id -> worker id (pCPU), set by the workload
        #: irqsave sections this pCPU's task is inside (model bookkeeping: an ISR that finds it
        #: non-zero interrupted one, which the soft mask must never allow)
        self.irqsave_depth = 0

    # -- interrupt-disabled sections, counted (see _irqsave) ---------------------------------------
    lock_irqsave = _irqsave.lock_irqsave
    unlock_irqrestore = _irqsave.unlock_irqrestore
    irq_save = _irqsave.irq_save
    irq_restore = _irqsave.irq_restore

    # -- lookups ------------------------------------------------------------------------------
    def vgic_get_irq(self, intid: int) -> Any:
        """``vgic_get_irq(d, NULL, intid)`` (vgic.c, 4.11): an SPI is
        ``&d->arch.vgic.spis[intid - VGIC_NR_PRIVATE_IRQS]``; no reference is taken for an SPI."""
        return self.s.spis[intid - SPI_BASE]

    def vgic_put_irq(self, irq: Any) -> None:
        """``vgic_put_irq`` (vgic.c, 4.11): ``if ( irq->intid < VGIC_MIN_LPI ) return;``."""

    def current(self) -> int:
        """``current`` on this pCPU: its vCPU, NO_VCPU for the idle vCPU (blocked) or a pCPU
        running none of this domain's vCPUs."""
        if self.vid is None or self.s.vcpus[self.vid].state == BLOCKED:
            return NO_VCPU
        return self.vid

    # -- the oracle and injection checks (vgic.c, 4.11) ---------------------------------------
    def vgic_target_oracle(self, irq: Any) -> int:
        """``vgic_target_oracle`` (vgic.c, 4.11). Needs ``irq->irq_lock``. Active: stays on its
        vCPU (or goes to the target); enabled and pending with the distributor on: the target;
        else NO_VCPU."""
        assert_held(irq.irq_lock)
        if irq.active:
            return irq.vcpu if irq.vcpu != NO_VCPU else irq.target_vcpu
        if irq.enabled and irq_is_pending(irq):
            if irq.target_vcpu != NO_VCPU and not self.s.enabled:
                return NO_VCPU
            return irq.target_vcpu
        return NO_VCPU

    @staticmethod
    def vgic_validate_injection(irq: Any, level: int) -> bool:
        """``vgic_validate_injection`` (vgic.c, 4.11): edge: a rising edge only; level: the
        line level changes."""
        if irq.config == VGIC_CONFIG_EDGE:
            return bool(level)
        return irq.line_level != level

    # -- the ap_list: an index-linked list_head -----------------------------------------------
    def ap_walk(self, vcpu: int) -> Iterator[int]:
        """``list_for_each_entry(irq, &vgic_cpu->ap_list_head, ap_list)``: SPI indices. A walk
        longer than there are SPIs is a corrupted list: the finding, then Xen's crash."""
        vc = self.s.vcpus[vcpu]
        i = vc.ap_head
        n = 0
        while i != -1:
            n += 1
            if n > self.nr_spis:
                self.cpu.finding("invariant:one-ap-list", f"BUG: vcpu{vcpu}'s ap_list is corrupted (a cycle)",
                                 message=f"walked {n} entries of {self.nr_spis} SPIs", subject=SPI_BASE + i)
                # the operation ends here (the engine releases its locks and interrupt state):
                # so do the irqsave sections this task had open (walks run in task context)
                self.irqsave_depth = 0
                raise Panic()
            nxt = self.s.spis[i].ap_next
            yield i
            i = nxt

    def list_add_tail(self, vcpu: int, i: int) -> None:
        """``list_add_tail(&irq->ap_list, &vcpu->arch.vgic.ap_list_head)``. Needs the list's lock."""
        vc = self.s.vcpus[vcpu]
        assert_held(vc.ap_list_lock)
        self.list_insert(vc, i, vc.ap_tail, -1)

    def list_add(self, vcpu: int, i: int) -> None:
        """``list_add(&irq->ap_list, &vcpu->arch.vgic.ap_list_head)``: at the head. Needs the
        list's lock."""
        vc = self.s.vcpus[vcpu]
        assert_held(vc.ap_list_lock)
        self.list_insert(vc, i, -1, vc.ap_head)

    def list_insert(self, vc: Any, i: int, prev: int, nxt: int) -> None:
        """Linux's ``__list_add``: irq ``i`` between ``prev`` and ``nxt`` (-1: the list's head
        or tail) of ``vc``'s ap_list, whose lock the caller holds; the model's length counters."""
        spis = self.s.spis
        irq = spis[i]
        irq.ap_prev = prev
        irq.ap_next = nxt
        if prev == -1:
            vc.ap_head = i
        else:
            spis[prev].ap_next = i
        if nxt == -1:
            vc.ap_tail = i
        else:
            spis[nxt].ap_prev = i
        vc.ap_len += 1
        if vc.ap_len > vc.max_ap_len:
            vc.max_ap_len = vc.ap_len

    def ap_list_add(self, vcpu: int, i: int) -> None:
        """Where ``vgic_queue_irq_unlock`` and ``vgic_prune_ap_list`` put an IRQ on a list: 4.11's
        ``list_add_tail`` (``sorted-insert`` overrides it). Needs the list's lock and the irq's."""
        self.list_add_tail(vcpu, i)

    def list_del(self, vcpu: int, i: int) -> None:
        """``list_del(&irq->ap_list)`` from ``vcpu``'s list. Needs the list's lock."""
        vc = self.s.vcpus[vcpu]
        assert_held(vc.ap_list_lock)
        irq = self.s.spis[i]
        p, n = irq.ap_prev, irq.ap_next
        if p == -1:
            vc.ap_head = n
        else:
            self.s.spis[p].ap_next = n
        if n == -1:
            vc.ap_tail = p
        else:
            self.s.spis[n].ap_prev = p
        irq.ap_next = irq.ap_prev = -1
        vc.ap_len -= 1

    def compute_ap_list_depth(self, vcpu: int) -> int:
        """``compute_ap_list_depth`` (vgic.c, 4.11): walks the list. Needs its lock."""
        assert_held(self.s.vcpus[vcpu].ap_list_lock)
        return sum(1 for _ in self.ap_walk(vcpu))

    def vgic_irq_cmp(self, a: int, b: int) -> int:
        """``vgic_irq_cmp`` (vgic.c, 4.11): active first, then pending and enabled, then by
        priority; takes both irq locks (the second nested, as KVM annotates it)."""
        irqa, irqb = self.s.spis[a], self.s.spis[b]
        spin_lock(irqa.irq_lock)
        spin_lock_nested(irqb.irq_lock, 1)
        try:
            if irqa.active or irqb.active:
                return irqb.active - irqa.active
            penda = irqa.enabled and irq_is_pending(irqa)
            pendb = irqb.enabled and irq_is_pending(irqb)
            if not penda or not pendb:
                return int(bool(pendb)) - int(bool(penda))
            return irqa.priority - irqb.priority
        finally:
            spin_unlock(irqb.irq_lock)
            spin_unlock(irqa.irq_lock)

    def vgic_sort_ap_list(self, vcpu: int) -> None:
        """``vgic_sort_ap_list`` (vgic.c, 4.11): ``list_sort`` with ``vgic_irq_cmp``. Needs the
        ap_list lock. (``list_sort`` is a merge sort; Python's is too.)"""
        import functools

        vc = self.s.vcpus[vcpu]
        assert_held(vc.ap_list_lock)
        order = sorted(self.ap_walk(vcpu), key=functools.cmp_to_key(self.vgic_irq_cmp))
        self.s.sorts += 1
        vc.ap_head = vc.ap_tail = -1
        vc.ap_len = 0
        for i in order:
            self.list_add_tail(vcpu, i)

    # -- list registers (vgic-v2.c, 4.11) -------------------------------------------------------
    def vgic_populate_lr(self, vcpu: int, i: int, lr: int) -> None:
        """``vgic_populate_lr`` -> ``vgic_v2_populate_lr`` (vgic-v2.c, 4.11): the LR gets the
        IRQ's pending and active state; an edge IRQ's latch is consumed. Needs the irq lock."""
        irq = self.s.spis[i]
        assert_held(irq.irq_lock)
        vc = self.s.vcpus[vcpu]
        pending = irq_is_pending(irq)
        if pending and irq.config == VGIC_CONFIG_EDGE:
            irq.pending_latch = 0
        vc.lr_intid[lr] = irq.intid
        vc.lr_pending[lr] = 1 if pending else 0
        vc.lr_active[lr] = irq.active
        irq.moved = 0
        self.s.lr_fills += 1
        self.trace("lr_set", irq.intid, vcpu, lr)

    def vgic_fold_lr_state(self, vcpu: int) -> None:
        """``vgic_fold_lr_state`` -> ``vgic_v2_fold_lr_state`` (vgic-v2.c, 4.11): for each used
        LR (cleared as it is read): under ``local_irq_save`` and the irq lock, the active bit is
        preserved; an edge IRQ still pending in the LR latches again; a level IRQ the guest
        acknowledged loses its soft pending state. Then ``used_lrs = 0``."""
        vc = self.s.vcpus[vcpu]
        used = vc.used_lrs
        vc.underflow = 0  # update_hcr_status(GICH_HCR_UIE, false)
        if not used:
            return
        for lr in range(used):
            intid = vc.lr_intid[lr]
            pending, active = vc.lr_pending[lr], vc.lr_active[lr]
            vc.lr_intid[lr] = -1  # gic_hw_ops->clear_lr(lr)
            vc.lr_pending[lr] = vc.lr_active[lr] = 0
            if intid < 0:
                continue
            irq = self.vgic_get_irq(intid)
            flags = self.irq_save()
            spin_lock(irq.irq_lock)
            irq.active = active
            if irq.config == VGIC_CONFIG_EDGE and pending:
                irq.pending_latch = 1
            if irq.config == VGIC_CONFIG_LEVEL and not pending:
                irq.pending_latch = 0
            self.note_liveness(irq)
            self.trace("lr_fold", intid, vcpu, lr)
            spin_unlock(irq.irq_lock)
            self.irq_restore(flags)
            self.vgic_put_irq(irq)
        vc.used_lrs = 0

    # -- wake-ups (domain.c, schedule.c, 4.11) --------------------------------------------------
    def vcpu_unblock(self, vcpu: int) -> bool:
        """``vcpu_unblock`` (schedule.c, 4.11): ``test_and_clear_bit(_VPF_blocked)``, then
        ``vcpu_wake``. True when it was blocked."""
        vc = self.s.vcpus[vcpu]
        if not vc.blocked:
            return False
        vc.blocked = 0
        return True

    def vcpu_kick(self, vcpu: int, intid: int) -> None:
        """``vcpu_kick`` (arch/arm/domain.c, 4.11): ``running = vcpu->is_running``;
        ``vcpu_unblock``; if it was running and is not ``current``, an event-check IPI to its
        pCPU (``smp_send_event_check_mask``): a real interrupt."""
        vc = self.s.vcpus[vcpu]
        running = vc.state != BLOCKED
        self.vcpu_unblock(vcpu)
        ipi = running and vcpu != self.current()
        self.s.kicks += 1
        self.trace("kick", intid, vcpu, int(ipi))
        if ipi:
            self.s.ipis += 1
            flags = self.irq_save()  # one ring per sender: the ISR may raise too
            self.cpu.raise_irq(self.peers[vcpu], EVENT_CHECK)
            self.irq_restore(flags)

    def vgic_vcpu_pending_irq(self, vcpu: int) -> bool:
        """``vgic_vcpu_pending_irq`` (vgic.c, 4.11): under the ap_list lock (irqsave), is any
        IRQ on the list pending and enabled?"""
        if not self.s.enabled:
            return False
        vc = self.s.vcpus[vcpu]
        flags = self.lock_irqsave(vc.ap_list_lock)
        ret = False
        for i in self.ap_walk(vcpu):
            irq = self.s.spis[i]
            spin_lock(irq.irq_lock)
            ret = irq_is_pending(irq) and bool(irq.enabled)
            spin_unlock(irq.irq_lock)
            if ret:
                break
        self.unlock_irqrestore(vc.ap_list_lock, flags)
        return ret

    def vcpu_block_unless_event_pending(self, vcpu: int) -> bool:
        """``vcpu_block_unless_event_pending`` (arch/arm/domain.c, 4.11): ``vcpu_block()``
        (``_VPF_blocked`` set), then ``local_events_need_delivery_nomask()`` ->
        ``vgic_vcpu_pending_irq``: pending -> ``vcpu_unblock(current)``. True if it stays
        blocked."""
        vc = self.s.vcpus[vcpu]
        vc.blocked = 1
        vc.state = BLOCKED
        if self.vgic_vcpu_pending_irq(vcpu):
            self.vcpu_unblock(vcpu)
        if vc.blocked:
            return True
        vc.state = IN_HYP
        return False

    # -- the model's bookkeeping -------------------------------------------------------------------
    #: the DoS measurement around them (``_measure``: hidden from reports' call chains)
    timed_flush = _measure.timed_flush
    timed_prune = _measure.timed_prune

    def vgic_flush_lr_state(self, vcpu: int) -> None:
        raise NotImplementedError

    def vgic_prune_ap_list(self, vcpu: int) -> None:
        raise NotImplementedError

    def is_live(self, irq: Any) -> bool:
        """Live on its list: the oracle names a vCPU, or one of that vCPU's LRs holds it."""
        if self.vgic_target_oracle(irq) != NO_VCPU:
            return True
        v = irq.vcpu
        if v == NO_VCPU:
            return False
        vc = self.s.vcpus[v]
        return any(vc.lr_intid[lr] == irq.intid and lr_valid(vc, lr) for lr in range(self.nr_lrs))

    def note_liveness(self, irq: Any) -> None:
        """Under the irq lock, after a change of its liveness: when it stopped being live (in
        its vCPU's prune passes), so ``queued-is-live`` lets that vCPU's next prune remove it."""
        if self.is_live(irq):
            irq.unlive = -1
        elif irq.vcpu != NO_VCPU and irq.unlive < 0:
            irq.unlive = self.s.vcpus[irq.vcpu].prune_passes

    def queue_noted(self, irq: Any, flags: int | None) -> None:
        """``vgic_queue_irq_unlock(d, irq, flags)``, with the model's note that this CPU context
        is queueing ``irq`` until the call (and its kick) returns: an IRQ whose injection is in
        flight is not a lost wake-up."""
        slot = self.cpu.wid * 2 + self.cpu.ctx
        self.s.queueing[slot] = irq.intid
        try:
            self.vgic_queue_irq_unlock(irq, flags)
        finally:
            self.s.queueing[slot] = -1

    def vgic_queue_irq_unlock(self, irq: Any, flags: int | None) -> None:
        raise NotImplementedError

    def irq_lock_task(self, irq: Any) -> int | None:
        """``spin_lock_irqsave(&irq->irq_lock, flags)`` from task context (the design may say
        otherwise: ``irq_unsafe``). Returns the flags, None for a plain ``spin_lock``."""
        return self.lock_irqsave(irq.irq_lock)

    def unlock_restore(self, lock: Any, flags: int | None) -> None:
        """``spin_unlock_irqrestore(lock, flags)``; ``spin_unlock`` for flags None."""
        if flags is None:
            spin_unlock(lock)
        else:
            self.unlock_irqrestore(lock, flags)


__all__ = ["SPI_BASE", "VGIC_MAX_SPIS", "HIST_BUCKETS", "hist_add", "hist_bucket", "hist_value", "hist_quantile",
           "VGIC_CONFIG_EDGE", "VGIC_CONFIG_LEVEL", "NO_VCPU", "EVENT_CHECK", "IN_HYP", "IN_GUEST", "BLOCKED",
           "STATE_NAMES", "EVENTS", "KEY_EVENTS", "VgicIrq", "VgicCpu", "NewVgicWorld", "NewVgic",
           "irq_is_pending", "lr_valid"]
