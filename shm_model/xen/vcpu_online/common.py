"""vCPU online: the state and the functions every design shares (seed 002, PROTOCOLS.md
section 002, ``vcpu-online-race``).

What is here is what the designs do not disagree about: ``struct vcpu``'s fields the race
touches, the domain lock, one schedule lock per pCPU, the scheduler (``vcpu_wake``,
``vcpu_sleep_nosync``, the pick under the schedule lock, ``context_switch_to``,
``vcpu_context_saved``), ``vcpu_block``, PSCI ``CPU_OFF``, and the checks of a register
read. Each design (``upstream``, ``mb_before_down_clear``, ``wmb_before_initialised``,
``wmb_rmb``, ``wmb_no_pause_mb``) says which barriers ``arch_set_info_guest``,
``XEN_DOMCTL_getvcpucontext`` and ``sync_vcpu_execstate`` have: the three hooks
:meth:`VcpuCpu.barrier_before_initialised`, :meth:`VcpuCpu.barrier_before_down_clear`,
:meth:`VcpuCpu.barrier_after_initialised_check` and :meth:`VcpuCpu.sync_vcpu_execstate`.

Xen sources (mirror, RELEASE-4.15.0 unless said): xen/arch/arm/vpsci.c
(``do_common_cpu_on``, ``do_psci_cpu_off``), xen/arch/arm/domain.c (``arch_set_info_guest``,
``sync_vcpu_execstate``), xen/arch/arm/domctl.c (``arch_get_info_guest``),
xen/common/domctl.c (``XEN_DOMCTL_getvcpucontext``), xen/common/sched/core.c (``vcpu_wake``,
``vcpu_sleep_nosync``, ``vcpu_sleep_sync``, ``vcpu_pause``/``vcpu_unpause``,
``vcpu_context_saved``), xen/common/event_channel.c / sched.h (``vcpu_unblock``).

Weak memory (shm_model.weak): the registers ``v->arch.*``, ``v->is_initialised``,
``v->pause_flags`` and ``v->is_running`` are relaxed fields (plain C accesses on Arm, and
Arm's ``set_bit``/``clear_bit`` are LDXR/STXR loops with no barrier). Locks are
acquire/release.

Simplifications (each says why it does not change what a run can find):

- Register values carry a generation: register ``r`` of the online numbered ``g`` holds
  ``g * 16 + r`` (:func:`reg_value`), so a reader can tell the generation of every value it
  read. Generation 0 is the state before the first online.
- ``v->is_initialised`` holds the generation of the ``arch_set_info_guest`` that set it
  (non-zero is true; Xen stores 1), and the ``_VPF_down`` word holds ``gen << 1 | down``
  (Xen: a bit). Both are ghost annotations inside the word the reader loads anyway: a reader
  that sees ``is_initialised`` or ``_VPF_down`` clear knows, from the very message it read,
  which online it observed, so "registers no older than the online it observed" is
  decided from what this CPU read, not from a global clock.
- ``v->pause_flags`` is one word in Xen updated with atomic bitops; here each bit used is
  its own relaxed word (``down`` for ``_VPF_down``, ``blocked`` for ``_VPF_blocked``), so
  that ``_VPF_down`` can carry its online's generation. The bitops keep Xen's ordering
  (arm64/lib/bitops.c, 4.15): ``set_bit``/``clear_bit`` order nothing, ``test_and_set_bit``
  (CPU_OFF, an ``xchg`` of the down word) and ``test_and_clear_bit`` (``vcpu_unblock``) are
  fully ordered (shm_model.weak's atomics). ``clear_bit(_VPF_down)`` in
  ``arch_set_info_guest`` is a relaxed store of the word (its one clearer, the CPU_ON caller
  that saw it set). What is lost is the atomicity of two bits of one word, which no path
  needs: each bit has one setter and one clearer that never overlap.
- ``pause_count`` (``atomic_t``) is a plain word: only the toolstack changes it.
- Each target vCPU is onlined by one caller (vCPU ``v`` by caller ``v % callers``): the
  guest serialises its own CPU_ONs of one CPU (Linux's hotplug lock). Two concurrent
  CPU_ONs of one vCPU both passing the unlocked ``test_bit(_VPF_down)`` would overwrite a
  running vCPU's registers: a real guest-induced race, but not this question.
- Saving a descheduled vCPU's registers (``ctxt_switch_from``) does not change them here:
  the guest's own register changes carry no generation. ``vcpu_context_saved`` still does
  its ``smp_wmb(); is_running = 0``, which ``vcpu_sleep_sync`` waits for.
- The scheduler: each vCPU has a home pCPU (``v % pcpus``); a run queue is one word per vCPU
  (``on_runq``, with the generation the waker observed), guarded by that pCPU's schedule
  lock. ``vcpu_wake`` takes the lock, checks ``vcpu_runnable`` (``_VPF_down``,
  ``_VPF_blocked``, ``pause_count``) and queues; the pCPU picks a queued vCPU under the
  same lock and does not re-read ``pause_flags`` (credit's ``runq_candidate`` takes the
  runq): it observes the online "through the schedule lock". A vCPU runs for one
  operation of its pCPU's worker and then blocks (WFI: ``vcpu_block``), turns itself off
  (PSCI CPU_OFF) or is preempted (requeued).
- CPU_OFF also stores ``is_initialised = 0`` (PROTOCOLS.md: inferred; Xen's
  ``do_psci_cpu_off`` only sets ``_VPF_down``) so that vCPUs cycle and every online has a
  generation of its own.

Locking order (no path holds two of these):

    d->domain_lock               do_common_cpu_on around arch_set_info_guest
    sched_lock[pcpu]             vcpu_wake, vcpu_sleep_nosync, the pick, the deschedule
"""

from __future__ import annotations

from typing import Any, Callable

from ...layout import Array, Int, Spinlock, Struct
from ...spinlock import spin_lock, spin_unlock
from ...weak import Relaxed, loc_of, value

#: the registers arch_set_info_guest writes (vcpu_regs_user_to_hyp, then v->arch.*)
REGS = ("pc", "cpsr", "x0", "sctlr", "ttbr0", "ttbr1", "ttbcr")
#: PSCI return values (xen/include/asm-arm/psci.h)
PSCI_SUCCESS, PSCI_ALREADY_ON = 0, -4
ENODATA = 61


def reg_value(gen: int, r: int) -> int:
    return gen * 16 + r


def reg_gen(v: int) -> int:
    return v >> 4


EVENTS = {
    "cpu_on": "vcpu{a}: PSCI CPU_ON by worker {b}, generation {c}",
    "already_on": "vcpu{a}: PSCI CPU_ON -> PSCI_ALREADY_ON",
    "cpu_off": "vcpu{a}: PSCI CPU_OFF (generation {b})",
    "wake": "vcpu{a}: vcpu_wake queued it on pcpu {b}, online generation {c}",
    "switch_to": "vcpu{a}: context_switch_to on pcpu {b}, registers of generation {c}",
    "saved": "vcpu{a}: vcpu_context_saved on pcpu {b}",
    "getctx": "vcpu{a}: XEN_DOMCTL_getvcpucontext saw is_initialised generation {b}, read generation {c}",
    "enodata": "vcpu{a}: XEN_DOMCTL_getvcpucontext -> -ENODATA",
}
KEY_EVENTS = ("cpu_on", "cpu_off", "wake", "switch_to", "getctx")


class Vcpu(Struct):
    """``struct vcpu`` (xen/include/xen/sched.h) and ``struct arch_vcpu`` (Arm): the fields
    the race touches, relaxed; then the run queue word and ghost records (plain)."""

    pc = Relaxed(Int())
    cpsr = Relaxed(Int(1))
    x0 = Relaxed(Int(2))
    sctlr = Relaxed(Int(3))
    ttbr0 = Relaxed(Int(4))
    ttbr1 = Relaxed(Int(5))
    ttbcr = Relaxed(Int(6))
    is_initialised = Relaxed(Int())  # generation of the online that set it; 0: not initialised
    down = Relaxed(Int(1))  # _VPF_down of v->pause_flags: gen << 1 | bit; secondary vCPUs start down
    blocked = Relaxed(Int())  # _VPF_blocked of v->pause_flags
    is_running = Relaxed(Int())
    pause_count = Int()
    # the run queue, under sched_lock[home pCPU]
    on_runq = Int()
    runq_gen = Int()  # the online generation the waker observed (ghost)
    runq_by = Int(init=-1)  # the worker whose vcpu_wake (or deschedule) queued it
    runq_ts = Int()  # the timestamp of the _VPF_down message that worker read (the evidence)
    # ghost records for the evidence (plain, written before the relaxed stores)
    next_gen = Int()  # the last generation arch_set_info_guest began to write
    set_by = Int(init=-1)  # the worker that wrote it


class VcpuWorld(Struct):
    """The domain (its lock and vCPUs), one schedule lock per pCPU, model counters."""

    domain_lock = Spinlock("&d->domain_lock")
    sched_lock = Array(Spinlock("sched_res->schedule_lock"), "pcpus")
    vcpus = Array(Vcpu, "vcpus")
    # counters: per worker role where several workers write them
    cpu_on = Array(Int, "callers")
    already_on = Array(Int, "callers")
    switches = Array(Int, "pcpus")
    cpu_off = Array(Int, "pcpus")
    blocks = Array(Int, "pcpus")
    preempts = Array(Int, "pcpus")
    stale_switch = Array(Int, "pcpus")  # context_switch_to read a register older than the online it observed
    mixed_switch = Array(Int, "pcpus")  # ... registers of more than one generation
    wakes = Int()  # third-party vcpu_wake calls (the waker)
    unblocks = Int()
    getctx = Int()
    enodata = Int()
    stale_getctx = Int()
    torn_getctx = Int()  # registers of two generations, both >= observed: a concurrent CPU_ON (not stale)
    rmb_raised = Int()  # wmb-rmb: the smp_rmb after the is_initialised check raised the read view
    rmb_would_be_stale = Int()  # ... and without it some register's oldest readable value was older than observed
    pause_mb_would_be_stale = Int()  # at sync_vcpu_execstate: without its barrier a register could be stale


class VcpuCpu:
    """One worker's CPU in the model. A design subclasses it (its barriers)."""

    name = "?"

    def __init__(self, s: Any, cpu: Any, wid: int, rng: Any, pcpus: int, trace: Callable[..., None]) -> None:
        self.s = s
        self.cpu = cpu
        self.wid = wid
        self.rng = rng
        self.pcpus = pcpus
        self.trace = trace
        self.reported: set[tuple[str, str]] = set()

    # -- barriers a design chooses ----------------------------------------------------------
    def barrier_before_initialised(self) -> None:
        """In arch_set_info_guest, after the register stores, before ``is_initialised = 1``."""

    def barrier_before_down_clear(self) -> None:
        """In arch_set_info_guest, after ``is_initialised = 1``, before ``clear_bit(_VPF_down)``."""

    def barrier_after_initialised_check(self, v: Any, seen: int) -> None:
        """In XEN_DOMCTL_getvcpucontext, after reading ``v->is_initialised``."""

    def sync_vcpu_execstate(self, v: Any, seen: int) -> None:
        """Arm ``sync_vcpu_execstate`` (called last by ``vcpu_sleep_sync``)."""

    # -- helpers --------------------------------------------------------------------------------
    def home(self, vid: int) -> int:
        return vid % self.pcpus

    def vcpu_runnable(self, v: Any) -> tuple[bool, int]:
        """``vcpu_runnable(v)``: no pause flag, no pause count. Also the ghost generation of
        the ``_VPF_down`` message read."""
        down = value(v.down)
        blocked = value(v.blocked)
        return (not (down & 1) and not blocked and v.pause_count == 0), down >> 1

    # -- the scheduler (xen/common/sched/core.c) ---------------------------------------------
    def vcpu_wake(self, vid: int) -> bool:
        """``vcpu_wake`` (sched/core.c): under the unit's schedule lock, if
        ``vcpu_runnable(v)``, ``sched_wake`` puts it on its pCPU's run queue."""
        s = self.s
        v = s.vcpus[vid]
        p = self.home(vid)
        lk = s.sched_lock[p]
        spin_lock(lk)
        ok, gen = self.vcpu_runnable(v)
        queued = False
        if ok and not v.on_runq:
            v.on_runq = 1
            v.runq_gen = gen
            v.runq_by = self.wid
            v.runq_ts = self.read_ts(v, "down")
            queued = True
        spin_unlock(lk)
        if queued:
            self.trace("wake", vid, p, gen)
        return queued

    def vcpu_sleep_nosync(self, vid: int) -> None:
        """``vcpu_sleep_nosync``: under the schedule lock, a vCPU no longer runnable leaves
        the run queue (``sched_sleep``); a running one is descheduled at its pCPU's next
        schedule (here: the end of its run)."""
        s = self.s
        v = s.vcpus[vid]
        lk = s.sched_lock[self.home(vid)]
        spin_lock(lk)
        ok, _ = self.vcpu_runnable(v)
        if not ok:
            v.on_runq = 0
        spin_unlock(lk)

    def read_ts(self, v: Any, field: str) -> int:
        """The timestamp of the message of ``field`` this CPU read last (0: unknown, e.g.
        its own buffered store)."""
        wm = self.cpu.wm
        rd = wm.last_read(loc_of(v, field)) if wm is not None else None
        return rd[1] if rd else 0

    # -- register reads and their check -------------------------------------------------------
    #: how the reader observed the online: (via, worker, location, timestamp), set by the reader
    observed: tuple[str, int, str, int] | None = None

    def check_register(self, v: Any, vid: int, r: int, raw: Any, expected: int, function: str) -> int:
        """The check of one register load (``context_switch_to``'s restore,
        ``arch_get_info_guest``'s copy): a value older than generation ``expected`` (the
        online the reader observed) is a stale read, reported at once with the weak
        memory's evidence. The loads themselves are in the readers, so the evidence names
        them. Returns the value's generation."""
        raw = value(raw)
        g = reg_gen(raw)
        if g < expected:
            self.last_stale = True
            self.report_stale(v, vid, REGS[r], raw, g, expected, function)
        return g

    last_stale = False

    def report_stale(self, v: Any, vid: int, reg: str, raw: int, g: int, expected: int, function: str) -> None:
        key = (function, reg)
        if key in self.reported:
            return
        self.reported.add(key)
        loc = loc_of(v, reg)
        mem = self.cpu.wm.explain(loc) if self.cpu.wm is not None else {}
        location = f"vcpu{vid}->arch.{reg}"
        newest = {"generation": int(v.next_gen), "written_by_worker": int(v.set_by),
                  "value": reg_value(int(v.next_gen), REGS.index(reg))}
        if "reordered" not in mem and self.observed is not None:
            self.reorder_evidence(v, vid, reg, loc, expected, mem)
        self.cpu.finding(
            "stale-read", f"BUG: stale read of {location} in {function} (reordered)",
            function=function, location=location, value=raw, expected_generation=expected, read_generation=g,
            newest_written=newest, memory=mem)

    def reorder_evidence(self, v: Any, vid: int, reg: str, loc: int, expected: int, mem: dict) -> None:
        """When this CPU's load log cannot explain the stale value (the reader observed the
        online through another CPU: ``vcpu_wake`` read ``_VPF_down`` clear and queued the
        vCPU, the schedule lock carrying that view here; or its own ``is_initialised`` load
        fell out of the log while it spun on ``is_running``), compare the writer's register
        store with the message the observer read (``self.observed``). Committed after it,
        or not at all: the writer's two stores were reordered (``arch.<reg>`` then that
        flag: a missing ``smp_wmb``). Committed before it: the register value was visible
        when the flag was read, so this CPU's two loads were reordered (a missing
        ``smp_rmb``)."""
        via, who, field, ts = self.observed
        wm = self.cpu.wm
        if not ts:
            return
        writer = int(v.set_by)
        want = reg_value(expected, REGS.index(reg))
        mine = [m for m in wm.wm.messages(loc) if m[0] == want]
        committed = mine[0][1] if mine else None
        fname = {"down": "_VPF_down", "is_initialised": "is_initialised"}.get(field, field)
        flag = wm.wm.name(loc_of(v, field))
        seen = f"worker {who}'s {via} read vcpu{vid}'s {fname} (online generation {expected}, message ts {ts})"
        if committed is None or committed > ts:
            mem["reordered"] = {
                "kind": "store-store", "cpu": writer, "missing": "smp_wmb",
                "first": {"location": wm.wm.name(loc), "value": want, "site": "arch_set_info_guest (register store)"},
                "then": {"location": flag, "value": expected if field == "is_initialised" else expected << 1,
                         "site": f"arch_set_info_guest ({fname})"},
                "why": f"{seen}; worker {writer}'s store of vcpu{vid}->arch.{reg} = {want}, before it in program "
                       "order, " + (f"became visible only at ts {committed}" if committed is not None
                                    else "was not yet visible to any CPU")}
        else:
            mem["reordered"] = {
                "kind": "load-load", "cpu": self.wid, "missing": "smp_rmb",
                "first": {"location": flag, "value": expected, "site": via},
                "then": {"location": wm.wm.name(loc), "value": mem.get("value"), "site": "the register load"},
                "why": f"{seen}; vcpu{vid}->arch.{reg} = {want} was visible since ts {committed}, before that "
                       f"message, yet the later load of it read an older value"}

    # -- what every design's arch_set_info_guest does -------------------------------------------
