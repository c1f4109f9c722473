"""Xen's old ARM vGIC (xen/arch/arm/vgic.c, vgic-v2.c, gic.c, irq.c, gic-v2.c) as of
RELEASE-4.8.0, stable-4.8, RELEASE-4.9.0 and RELEASE-4.10.0: ranks, per-vCPU vgic state,
pending_irq, list registers and physical SPI descriptors, with the operations of the
"rank/vgic locks inversion" thread (seed 000) in each of its variants.

One module per design, as Xen keeps its versions apart; each design is a class, a subclass
of the version its code is built on (a later release, or the thread's patch, is 4.8.0 +
commits), and overrides the Xen functions whose code differs there (a long function that
differs in a line or two is split at the seam the commit changed, into a small method named
after what that code does):

- :mod:`.common`: the constants, the state (``OldVgicDomain``, ``PendingIrq``, ``Rank``,
  ``VgicVcpu``, ``IrqDesc``, ``Gic``) and :class:`~.common.OldVgic`, the operations every
  design shares, with the LPI hooks;
- :mod:`.xen_4_8_0`: ``rank-lock-inversion``, RELEASE-4.8.0 (``Xen480``);
- :mod:`.xen_4_9_0`: ``xen-4.9.0``, RELEASE-4.9.0 = 4.8.0 + 378384399e, 31bc6a93a0,
  91ef736493, 408f16ddb3, 471d9ca43c (``Xen490``), and the ``--backport 408f16ddb3`` mixin;
- :mod:`.xen_4_10_0`: ``xen-4.10.0`` and its alias ``upstream``, RELEASE-4.10.0 = 4.9.0 +
  5f66da6590, 43208a9cb4 (``Xen4100``);
- :mod:`.xen_stable_4_8`: ``xen-stable-4.8``, 4.9.0's vGIC without 408f16ddb3
  (``XenStable48``);
- :mod:`.thread_patch`: ``unlocked-target-read`` and ``unlocked-target-read-assert``,
  4.8.0 + the thread's patch (``UnlockedTargetRead``, ``UnlockedTargetReadAssert``);
- :mod:`.proposal1`: ``drop-vgic-then-rank``, 4.8.0 + proposal 1 (``DropVgicThenRank``);
- :mod:`.proposal3`: ``old-vcpu-lock`` and ``old-vcpu-lock-recheck``, 4.8.0 + proposal 3
  (``OldVcpuLock``, ``OldVcpuLockRecheck``).

Every operation's docstring names the Xen function it follows and the version(s); each
design module's header says what it changes.

Locking order (outermost first), as the C takes them:

    rank->lock            vgic_lock_rank(): the MMIO handlers (vgic_v2_distr_mmio_write:
                          ITARGETSR, ISENABLER, ICENABLER); 4.8.0: vgic_get_target_vcpu();
                          4.8.0/stable-4.8: vgic_get_virq_priority()
      desc->lock          vgic_enable_irqs()/vgic_disable_irqs() (all versions, under the
                          rank lock); do_IRQ() holds it while injecting a guest SPI (IRQ ctx)
      v->arch.vgic.lock   vgic_migrate_irq(old); vgic_vcpu_inject_irq(); gic_clear_lrs();
                          gic_restore_pending_irqs(); vgic_enable_irqs(); 4.8/4.9:
                          gic_remove_from_queues()
        gicv2.lock        gicv2_irq_set_affinity() (irq_set_affinity), gicv2_irq_enable()/
                          gicv2_irq_disable() (desc->handler): a leaf
          sd->schedule_lock  vcpu_unblock() -> vcpu_wake() (vgic_vcpu_inject_irq's tail, after
                          the vgic lock is dropped; shm_model/xen/schedule.py): a leaf

Every lock above is taken with interrupts disabled (``_irqsave``) or in interrupt context,
but one: ``arch_move_irqs`` (vCPUs that move, ``--move-rate``) calls ``irq_set_affinity``
-> gicv2.lock with interrupts *on* — schedule() drops its lock with ``spin_unlock_irq``
before ``sched_move_irqs(next)``, and ARM's ``schedule_tail`` enables them before
``context_saved`` -> ``vcpu_migrate`` — while gicv2.lock is taken under the vgic lock
(vgic_migrate_irq) and in interrupt context (do_IRQ -> vgic_vcpu_inject_irq ->
gic_raise_inflight_irq -> gic_update_one_lr -> irq_set_affinity for an EOIed MIGRATING IRQ).
``gicv2_irq_set_affinity`` takes it with ``spin_lock``, not irqsave (gic-v2.c,
4.8.0-4.10.0). Where the C breaks that order, the model breaks it the same way and the run
says so:

- RELEASE-4.8.0 (variant ``rank-lock-inversion``): gic_update_one_lr runs with the vgic lock
  held and calls vgic_get_target_vcpu, which takes the rank lock: vgic -> rank (the thread's
  bug);
- RELEASE-4.8.0 and stable-4.8 (every 4.8-based variant): do_IRQ holds desc->lock and the
  injection takes the rank lock (vgic_get_target_vcpu in 4.8.0, vgic_get_virq_priority in
  both): desc -> rank, while vgic_enable_irqs/vgic_disable_irqs take desc->lock under the
  rank lock: rank -> desc;
- RELEASE-4.8.0 and stable-4.8: vgic_vcpu_inject_irq takes the rank lock through
  vgic_get_virq_priority before the vgic lock; vgic_migrate_irq's lr_pending branch calls it
  from vgic_store_itargetsr, which holds that same rank lock: a self-deadlock. Fixed by
  408f16ddb3 (RELEASE-4.9.0) / 43208a9cb4 (RELEASE-4.10.0), "ARM: vGIC: avoid rank lock when
  reading priority" ("It seems like this code path has never been exercised before"); never
  backported to stable-4.8;
- every version, with vCPUs that move: gicv2.lock with interrupts on in arch_move_irqs,
  HARDIRQ-safe elsewhere (above): lockdep's "HARDIRQ-safe -> HARDIRQ-unsafe" and
  "inconsistent lock state", and the deadlocks they warn of.

Note on ``irq_set_affinity``: PROTOCOLS.md says it writes ``desc->affinity`` under
``desc->lock``; Xen's GICv2 driver takes the distributor lock ``gicv2.lock`` instead
(gic-v2.c ``gicv2_irq_set_affinity``, 4.8.0-4.10.0), and callers do not hold desc->lock.
The model follows the code.

The hardware: a physical SPI routed to a guest is acknowledged by Xen (GICC_IAR: pending ->
active, one atomic step, here at the top of ``do_IRQ``) and deactivated by the guest's EOI
through a hardware list register (GICH_LR.HW = 1; Xen runs the GIC in EOImode 1 and
``gicv2_guest_irq_end`` only drops the priority), so the GIC does not deliver it again until
the guest EOIs it — not until ``gic_update_one_lr`` notices the EOI. ``desc->active`` is that
state; ``_IRQ_INPROGRESS`` is Xen's software bit (set in do_IRQ, cleared in
gic_update_one_lr) and gates nothing, as in Xen (do_IRQ does not test it for guest IRQs).

State is one domain with as many pCPUs (workers) as vCPUs. vCPU ``v`` starts on pCPU ``v``;
with ``--move-rate`` the scheduler (shm_model/xen/schedule.py: ``vcpu_migrate``, credit's
steal, ``sched_move_irqs`` -> :meth:`OldVgic.arch_move_irqs`) moves vCPUs between pCPUs, and
``current``/``v->processor`` are its. A vCPU's list registers are saved with it
(``gic_save_state``/``gic_restore_state``). SPIs are ``32 .. 32+spis-1``; ``pending[i]`` and
``descs[i]`` are those of SPI ``32 + i``.

Simplifications kept (issue 23, point 10):

- lists are FIFO: Xen orders inflight_irqs and lr_pending by priority
  (vgic_vcpu_inject_irq, gic_add_to_lr_pending: insert before the first entry of strictly
  greater priority value); the guest never writes IPRIORITYR here, so every SPI has the same
  priority and Xen's order *is* FIFO;
- no LR eviction: gic_restore_pending_irqs evicts only for a strictly higher priority
  (``if ( p_r->priority == p->priority ) goto out``): never with equal priorities;
- no virtual SPIs (``p->desc == NULL``): every SPI is a hardware one, so the
  ``p->desc == NULL`` branches (vgic_migrate_irq's early return, GICH_LR_PENDING re-set in
  gic_update_one_lr's ACTIVE branch) are not exercised;
- vCPUs are pinned unless ``--move-rate`` is given (the default keeps the measured tables'
  interleavings; the scheduler's header says what it simplifies). A vCPU blocks (WFI:
  ``vcpu_block``) and is then not ``current`` on its pCPU, so injections to it go to
  lr_pending and ``vcpu_kick``/``vcpu_unblock`` wake it; with moves a vCPU also waits,
  runnable, on a pCPU that runs another (not ``current`` either).

LPIs (the hooks ``lpi-discard-storm`` builds on, ``shm_model/xen/lpi/``): a domain state
that declares an option ``lpis`` gets per-vCPU list slots for LPIs ``LPI_OFFSET ..
LPI_OFFSET+lpis-1`` after the SPIs' (:func:`~.common.nr_irqs`); every other state (migration-storm)
has none and runs exactly the code it ran before. For an LPI, ``irq_to_pending`` asks
:meth:`OldVgic.lpi_to_pending` (the design's ``vgic_v3_lpi_to_pending``: a heap view of the
``struct pending_irq`` the ``pend_lpi_tree`` holds, or None for NULL), and the functions Xen
4.10 gave NULL checks (56e1b3ebc9) and PRISTINE handling (bccfbe70a3) take them, as
:attr:`OldVgic.lpi_pristine` and :attr:`OldVgic.inject_lookup_under_lock` say. The per-vCPU
lists hold the ``pending_irq``'s handle for an LPI (Xen's list links the object itself: an
object freed while linked is still reached through the list), and the list helpers take the
``pending_irq`` the caller holds, as Xen's do (``gic_remove_irq_from_queues(v, p)``); for an
SPI the handle is 1 and the object ``pending[irq - 32]``, as before. LPIs have no active
state and no ``irq_desc`` (gic-v3-lpi.c, 4.10.0: "LPIs are edge-triggered only, also have no
active state"): the guest's acknowledge empties the list register.
"""

from __future__ import annotations

from typing import Any

from ...cpu import Cpu
from .common import OldVgic, OldVgicDomain
from .proposal1 import DropVgicThenRank
from .proposal3 import OldVcpuLock, OldVcpuLockRecheck
from .thread_patch import UnlockedTargetRead, UnlockedTargetReadAssert
from .xen_4_8_0 import Xen480
from .xen_4_9_0 import Backport408f16ddb3, Xen490
from .xen_4_10_0 import Xen4100
from .xen_stable_4_8 import XenStable48

#: variant id -> the design's class
DESIGNS: dict[str, type[OldVgic]] = {c.name: c for c in (
    Xen480, UnlockedTargetRead, UnlockedTargetReadAssert, OldVcpuLock, OldVcpuLockRecheck, DropVgicThenRank,
    XenStable48, Xen490, Xen4100)}
DESIGNS["upstream"] = Xen4100  # the newest old-vGIC release: an alias
VARIANTS = tuple(DESIGNS)

#: commits that can be applied on top of a design (``--backport``): what each changes
BACKPORTS = {"408f16ddb3": "vgic_get_virq_priority reads the priority with ACCESS_ONCE, without the rank lock "
                           "(RELEASE-4.9.0; 43208a9cb4 in 4.10.0): removes the 4.8 lr_pending self-deadlock and "
                           "the desc -> rank edge of the priority read, so the thread's own races can be studied "
                           "on the 4.8-based variants"}
#: the mixin class of each backport
_MIXINS = {"408f16ddb3": Backport408f16ddb3}
_composed: dict[tuple[type, str], type] = {}


def with_backports(cls: type[OldVgic], backport: str) -> type[OldVgic]:
    """``cls`` with the commits named in ``backport`` (comma-separated) applied: a subclass
    with each commit's mixin before it (``type(name, (Backport408f16ddb3, cls), {})``)."""
    for c in filter(None, (x.strip() for x in backport.split(","))):
        if c not in BACKPORTS:
            raise ValueError(f"unknown backport {c!r} (known: {', '.join(BACKPORTS)})")
        key = (cls, c)
        if key not in _composed:
            _composed[key] = type(f"{cls.__name__}+{c}", (_MIXINS[c], cls), {"__module__": cls.__module__})
        cls = _composed[key]
    return cls


def make_vgic(variant: str, d: Any, cpu: Cpu, trace: Any, backport: str = "", **sched: Any) -> OldVgic:
    """The design ``variant`` (:data:`DESIGNS`) with the commits of ``backport`` applied, as
    CPU ``cpu`` runs it on domain ``d``. ``trace`` is a callable ``(event, a, b, c)``;
    ``sched``: the scheduler's arguments of :class:`~.common.OldVgic` (``pcpu``,
    ``move_ns``, ``rand``)."""
    if variant not in DESIGNS:
        raise ValueError(f"unknown old-vGIC variant {variant!r}")
    return with_backports(DESIGNS[variant], backport)(d, cpu, trace, **sched)


__all__ = ["BACKPORTS", "DESIGNS", "VARIANTS", "OldVgic", "OldVgicDomain", "make_vgic", "with_backports"]
