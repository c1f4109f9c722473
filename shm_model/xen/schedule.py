"""Xen's vCPU scheduler, the part that decides which vCPU a pCPU runs and moves vCPUs
between pCPUs (xen/common/schedule.c and sched_credit.c, RELEASE-4.8.0 .. RELEASE-4.10.0:
the functions cited below do not change between these releases in what is modelled).

What it is for: when a vCPU changes pCPU, ``schedule()`` (a steal by ``csched_load_balance``)
or ``vcpu_migrate()`` (a move asked for by ``csched_vcpu_acct``) calls
``sched_move_irqs(v)`` -> ARM's ``arch_move_irqs(v)``, which re-routes the physical IRQs of
the vCPU's virtual SPIs to its new pCPU, with no vgic lock held. The vGIC model gives the
scheduler that callback (``on_move``) and asks it ``current`` and ``v->processor``.

Locking order: ``per_cpu(schedule_data, cpu).schedule_lock`` is a leaf with respect to the
vGIC's locks: Xen never takes a rank, desc or vgic lock under it (``schedule()`` drops it
before ``sched_move_irqs`` and ``context_switch``; ``vcpu_migrate`` before
``sched_move_irqs``), while ``vcpu_wake`` takes it under them (``vgic_vcpu_inject_irq`` ->
``vcpu_kick`` -> ``vcpu_unblock``, with desc->lock held by do_IRQ, or the rank lock in
vgic_migrate_irq's lr_pending branch). Two schedule locks nest in two places:

- ``vcpu_migrate`` takes the old and the new pCPU's with ``sched_spin_lock_double`` (lower
  address first: here, lower pCPU first). Xen has no lockdep; the model annotates the inner
  one as Linux's ``double_rq_lock`` does (``spin_lock_nested(.., 1)``), so the class graph
  checks the order instead of reporting recursion;
- ``csched_load_balance`` holds its own pCPU's and takes a peer's with
  ``pcpu_schedule_trylock``: a trylock, which cannot deadlock and adds no dependency.

What the model simplifies, and why:

- one scheduler, credit1's choices reduced to what moves a vCPU: a pCPU runs, in turn (a
  time slice of ``slice_ns``), the runnable vCPUs whose ``processor`` it is; an idle pCPU
  steals a runnable vCPU waiting on another pCPU (``csched_runq_steal``: ``vc->processor =
  cpu``, ``migrated``); the running vCPU is moved, at a rate (``move_ns``, the model's
  stand-in for ``csched_vcpu_acct`` finding a better pCPU), to another pCPU picked at random
  (``csched_cpu_pick`` prefers idle ones: the model does not need the preference to move a
  vCPU). Priorities, credits, boosting and tickling are not modelled;
- ``move_ns == 0`` (:class:`PinnedScheduler`): every vCPU is pinned to the pCPU of its
  number (``vcpu_set_hard_affinity`` to one pCPU, as ``dom0_vcpus_pin``): no vCPU ever
  changes pCPU and each pCPU has one vCPU. Xen's ``schedule()``/``vcpu_wake`` still take the
  pCPU's schedule lock; it is a leaf that guards nothing another pCPU writes then, so the
  pinned scheduler leaves it out: it could add no cycle and change no decision, only
  scheduling points (runs without moves keep the interleavings measured before moves
  existed);
- the context switch saves nothing: the list registers are kept per vCPU in the vGIC model
  (``gic_save_state``/``gic_restore_state`` are copies), and the pCPU's next cycle runs
  ``gic_restore_pending_irqs`` for the vCPU it switched to, as ``gic_restore_state`` does.
"""

from __future__ import annotations

from typing import Any, Callable

from ..layout import Array, Int, Spinlock, Struct
from ..spinlock import spin_lock_irqsave, spin_lock_nested, spin_trylock, spin_unlock, spin_unlock_irqrestore

IDLE = -1  # the idle vCPU
SLICE_NS = 1_000_000  # model: the time slice between runnable vCPUs of one pCPU (credit1: 30 ms)


class SchedPcpu(Struct):
    """``per_cpu(schedule_data, cpu)``: its lock and ``curr``; and ``per_cpu(curr_vcpu)``,
    what ``current`` is on that pCPU: ``schedule()`` sets ``sd->curr = next`` under the lock,
    ``current`` changes only at ``context_switch``, after ``sched_move_irqs(next)``."""

    schedule_lock = Spinlock("&sd->schedule_lock")
    curr = Int(init=IDLE)  # sd->curr: the vCPU the scheduler picked to run here (IDLE: the idle vCPU)
    current = Int(init=IDLE)  # per_cpu(curr_vcpu): the vCPU whose context is loaded here
    slice_end = Int()  # when curr's time slice ends (virtual ns)


class SchedVcpu(Struct):
    """What the scheduler keeps of a vCPU: ``v->processor``, ``_VPF_blocked`` in
    ``v->pause_flags``, and the guest's virtual timer while it is blocked."""

    processor = Int()
    blocked = Int()  # _VPF_blocked: in WFI (vcpu_block), until vcpu_unblock
    wake_at = Int()  # the guest's virtual timer deadline while blocked (CLOCK_MONOTONIC ns)
    #: _VPF_migrating, then off every run queue: set when csched_vcpu_acct asks for the move,
    #: still set after vcpu_migrate changed ``processor`` (test_and_clear_bit(_VPF_migrating)
    #: made it runnable, but on no run queue yet), cleared by vcpu_wake, which queues it on its
    #: new pCPU: nobody runs or steals it before sched_move_irqs has finished
    migrating = Int()


class SchedDomain(Struct):
    """The pCPUs (one per vCPU of the domain) and the domain's vCPUs, with the scheduler's
    counters (read by the summary)."""

    pcpus = Array(SchedPcpu, "vcpus")
    vcpus = Array(SchedVcpu, "vcpus")
    kicks = Int()  # vcpu_unblock that woke a blocked vCPU
    blocks = Int()  # vcpu_block that blocked
    migrations = Int()  # vcpu_migrate: the running vCPU moved to another pCPU
    steals = Int()  # csched_load_balance: a waiting vCPU taken by an idle pCPU
    switches = Int()  # context switches between two guest vCPUs (not to or from idle)


def init_pinned(sd: Any) -> None:
    """Boot: vCPU v on pCPU v, running (``sched_init_vcpu``, then ``vcpu_wake``)."""
    for v, sv in enumerate(sd.vcpus):
        sv.processor = v
        sd.pcpus[v].curr = sd.pcpus[v].current = v


class PinnedScheduler:
    """The scheduler as one pCPU (worker ``pcpu``) runs it, with every vCPU pinned to the
    pCPU of its number (module header). ``trace(event, a, b, c)`` records model events:
    ``block``, ``kick``."""

    def __init__(self, sd: Any, pcpu: int, trace: Callable[..., None]) -> None:
        self.sd = sd
        self.pcpu = pcpu
        self.trace = trace
        self.nr = len(sd.vcpus)

    @property
    def current(self) -> int:
        """``current`` on this pCPU: the vCPU it runs, or IDLE while that vCPU is blocked
        (the pCPU runs the idle vCPU then)."""
        v = self.sd.pcpus[self.pcpu].current
        return IDLE if v == IDLE or self.sd.vcpus[v].blocked else v

    def processor(self, v: int) -> int:
        """``v->processor``."""
        return self.sd.vcpus[v].processor

    def blocked(self, v: int) -> bool:
        return bool(self.sd.vcpus[v].blocked)

    def vcpu_block(self, v: int, wake_at_ns: int, need_delivery: Callable[[], bool]) -> bool:
        """schedule.c ``vcpu_block`` (from traps.c ``do_trap_wfi``), for ``v == current``:
        ``set_bit(_VPF_blocked)``, then ``local_events_need_delivery()`` (``need_delivery``,
        the vGIC's) clears it again; else the pCPU's next ``schedule()`` switches to another
        vCPU or idle. No lock (Xen takes none). Returns whether it blocked."""
        sv = self.sd.vcpus[v]
        if sv.blocked:
            return False
        sv.wake_at = wake_at_ns
        sv.blocked = 1  # set_bit(_VPF_blocked); smp_mb__after_atomic()
        if need_delivery():
            sv.blocked = 0
            return False
        self.sd.blocks += 1
        self.trace("block", v)
        return True

    def vcpu_unblock(self, v: int) -> None:
        """schedule.c ``vcpu_unblock``: ``test_and_clear_bit(_VPF_blocked)``, then
        ``vcpu_wake(v)`` (pinned: it is runnable on its own pCPU; no lock, header)."""
        sv = self.sd.vcpus[v]
        if sv.blocked:
            sv.blocked = 0
            self.sd.kicks += 1
            self.trace("kick", v)

    def schedule(self, now_ns: int) -> int:
        """What this pCPU runs for one cycle: its vCPU, woken by its virtual timer
        (``virt_timer_expired`` -> ``vcpu_unblock``) if it is due, or IDLE."""
        v = self.pcpu
        if self.sd.vcpus[v].blocked:
            if now_ns < self.sd.vcpus[v].wake_at:
                return IDLE
            self.vcpu_unblock(v)
        return v


class CreditScheduler(PinnedScheduler):
    """vCPUs that move between pCPUs (module header): ``move_ns`` is the mean time between
    two ``csched_vcpu_acct`` moves of this pCPU's running vCPU; ``rand()`` a uniform [0, 1)
    draw (the worker's seeded generator); ``on_move(v)`` is ``sched_move_irqs(v)``, called
    after v's ``processor`` changed, with no lock held. More events: ``vcpu_migrate``,
    ``vcpu_steal``, ``vcpu_switch``."""

    def __init__(self, sd: Any, pcpu: int, trace: Callable[..., None], move_ns: int, rand: Callable[[], float],
                 on_move: Callable[[int], None], slice_ns: int = SLICE_NS) -> None:
        super().__init__(sd, pcpu, trace)
        self.move_ns = move_ns
        self.rand = rand
        self.on_move = on_move
        self.slice_ns = slice_ns
        self.next_move = 0  # set at the first cycle

    def _vcpu_schedule_lock_irqsave(self, v: int) -> tuple[Any, int]:
        """schedule.c ``vcpu_schedule_lock_irqsave``: the lock of ``v->processor``, taken
        and re-checked (v may move while we wait for it)."""
        while True:
            lock = self.sd.pcpus[self.sd.vcpus[v].processor].schedule_lock
            flags = spin_lock_irqsave(lock)
            if lock is self.sd.pcpus[self.sd.vcpus[v].processor].schedule_lock:
                return lock, flags
            spin_unlock_irqrestore(lock, flags)

    def vcpu_unblock(self, v: int) -> None:
        """schedule.c ``vcpu_unblock`` -> ``vcpu_wake`` (4.8.0-4.10.0):
        ``test_and_clear_bit(_VPF_blocked)``, then under ``v->processor``'s schedule lock
        (``vcpu_schedule_lock_irqsave``) ``SCHED_OP(wake)``: v is runnable on its pCPU."""
        sv = self.sd.vcpus[v]
        if not sv.blocked:
            return
        sv.blocked = 0  # test_and_clear_bit(_VPF_blocked)
        self.sd.kicks += 1
        self.trace("kick", v)
        self._vcpu_wake(v)

    def _vcpu_wake(self, v: int) -> None:
        """schedule.c ``vcpu_wake`` (4.8.0-4.10.0): under ``vcpu_schedule_lock_irqsave(v)``,
        ``SCHED_OP(wake)`` puts a runnable v on its pCPU's run queue (here: runnable, not
        ``migrating``, with that ``processor``)."""
        lock, flags = self._vcpu_schedule_lock_irqsave(v)
        self.sd.vcpus[v].migrating = 0  # on its pCPU's run queue
        spin_unlock_irqrestore(lock, flags)

    def _runnable_here(self, p: int) -> list[int]:
        sd = self.sd
        return [w for w in range(self.nr)
                if sd.vcpus[w].processor == p and not sd.vcpus[w].blocked and not sd.vcpus[w].migrating]

    def schedule(self, now_ns: int) -> int:
        """schedule.c ``schedule()`` with credit1's ``csched_schedule`` (4.8.0-4.10.0), one
        cycle of this pCPU: wake its blocked vCPUs whose timer is due; if a move of the
        running vCPU is due, set its ``_VPF_migrating`` (``csched_vcpu_acct``: it is not
        runnable from then on); under the pCPU's schedule lock keep ``curr`` until its slice
        ends, else the next runnable vCPU of this pCPU, else steal one waiting on a peer
        (``csched_load_balance``, ``pcpu_schedule_trylock``); after the lock,
        ``if ( next_slice.migrated ) sched_move_irqs(next)`` (``current`` is still prev),
        ``context_switch(prev, next)`` and, for a vCPU switched out with ``_VPF_migrating``,
        ``context_saved(prev)`` -> ``vcpu_migrate(prev)``. Returns the vCPU to run, or IDLE."""
        sd, p = self.sd, self.pcpu
        for w in range(self.nr):  # virt_timer_expired -> vcpu_unblock, on the timer's pCPU
            sw = sd.vcpus[w]
            if sw.blocked and sw.processor == p and now_ns >= sw.wake_at:
                self.vcpu_unblock(w)
        if not self.next_move:
            self.next_move = now_ns + int(self.rand() * 2 * self.move_ns)
        pc = sd.pcpus[p]
        moving = IDLE
        if now_ns >= self.next_move:
            self.next_move = now_ns + int(self.rand() * 2 * self.move_ns)
            v = pc.curr
            if v != IDLE and not sd.vcpus[v].blocked:
                sd.vcpus[v].migrating = 1  # set_bit(_VPF_migrating): no peer steals it meanwhile
                moving = v
        flags = spin_lock_irqsave(pc.schedule_lock)
        prev = pc.curr
        here = self._runnable_here(p)
        migrated = False
        if prev in here and (len(here) == 1 or now_ns < pc.slice_end):
            nxt = prev
        elif here:
            after = [w for w in here if w > prev]
            nxt = after[0] if after else here[0]  # round robin by vCPU number
        else:
            nxt = self._steal()
            migrated = nxt != IDLE
        if nxt != prev:
            pc.curr = nxt
            pc.slice_end = now_ns + self.slice_ns
            if prev != IDLE and nxt != IDLE:
                sd.switches += 1
                self.trace("vcpu_switch", prev, nxt, p)
        spin_unlock_irqrestore(pc.schedule_lock, flags)
        if migrated:
            self.on_move(nxt)  # sched_move_irqs(next): current is still prev
        pc.current = nxt  # context_switch(prev, next)
        if moving != IDLE:
            self._vcpu_migrate(moving)  # context_saved(prev): _VPF_migrating -> vcpu_migrate(prev)
        return IDLE if nxt == IDLE or sd.vcpus[nxt].blocked else nxt

    def _steal(self) -> int:
        """sched_credit.c ``csched_load_balance`` -> ``csched_runq_steal`` (4.8.0-4.10.0),
        with this pCPU's schedule lock held: for each peer (from the next pCPU on), a vCPU
        runnable there but not running, taken under ``pcpu_schedule_trylock(peer)``:
        ``vc->processor = cpu``. Returns it, or IDLE."""
        sd, p = self.sd, self.pcpu
        for k in range(1, self.nr):
            q = (p + k) % self.nr
            if not any(w != sd.pcpus[q].curr for w in self._runnable_here(q)):
                continue  # peek without the lock, as credit's runq_empty checks
            lock = sd.pcpus[q].schedule_lock
            if not spin_trylock(lock):
                continue
            waiting = [w for w in self._runnable_here(q) if w != sd.pcpus[q].curr]
            if waiting:
                w = waiting[0]
                sd.vcpus[w].processor = p  # "We got a candidate. Grab it!"
                sd.steals += 1
                self.trace("vcpu_steal", w, q, p)
            spin_unlock(lock)
            if waiting:
                return w
        return IDLE

    def _vcpu_migrate(self, v: int) -> None:
        """schedule.c ``vcpu_migrate(v)`` (4.8.0-4.10.0), from ``context_saved`` once v,
        ``_VPF_migrating`` set by ``csched_vcpu_acct``, was switched out: ``pick_cpu``, the old
        and new pCPU's schedule locks (``sched_spin_lock_double``),
        ``test_and_clear_bit(_VPF_migrating)``, ``vcpu_move_locked`` (``v->processor =
        new_cpu``), unlock, ``sched_move_irqs(v)`` (interrupts on: ARM's ``schedule_tail``
        enables them before ``context_saved``), ``vcpu_wake(v)``."""
        sd, p = self.sd, self.pcpu
        sv = sd.vcpus[v]
        new = (p + 1 + int(self.rand() * (self.nr - 1))) % self.nr  # pick_cpu: another pCPU
        lo, hi = sd.pcpus[min(p, new)].schedule_lock, sd.pcpus[max(p, new)].schedule_lock
        flags = spin_lock_irqsave(lo)  # sched_spin_lock_double: lower first
        spin_lock_nested(hi, 1)
        sv.processor = new  # test_and_clear_bit(_VPF_migrating); vcpu_move_locked: on no run queue yet
        sd.migrations += 1
        self.trace("vcpu_migrate", v, p, new)
        spin_unlock(hi)
        spin_unlock_irqrestore(lo, flags)
        self.on_move(v)  # if ( old_cpu != new_cpu ) sched_move_irqs(v)
        self._vcpu_wake(v)  # "Wake on new CPU.": on its run queue only now


__all__ = ["IDLE", "SLICE_NS", "SchedPcpu", "SchedVcpu", "SchedDomain", "init_pinned", "PinnedScheduler",
           "CreditScheduler"]
