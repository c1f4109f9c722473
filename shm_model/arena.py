"""The arena: one POSIX shared-memory segment per run, plus one named semaphore per lock.

Everything the detectors read lives here, as signed 64-bit words at fixed offsets, so that
the coordinator can read the state of a worker that is wedged, stopped or dead:

    header | worker slots | op counters | lock-class stats | wait/hold histograms |
    lock records | read holds | class usage |
    class graph (edges) | interrupt rings | trace rings | scheduler | model state

Lock records and waiting records are typed by lock *kind* (shm_model/records.py, which the
detectors read them through); a reader-writer lock's readers each have a read-hold record.
The model state region holds the workload's structs and heap pools (shm_model/layout.py,
shm_model/heap.py). Besides the lock semaphores, a layout may ask for auxiliary semaphores
(``-a<i>``: a heap's allocator lock), never model locks.

The scheduler region is used only in controlled mode (``stress run --schedule pct``): the
run token, virtual clock, PCT priorities and change points, and the schedule's recording
(run-length encoded choices) and replay script. Untouched pages of a POSIX segment take no
memory, so a free run pays nothing for it. Each worker also has a *token* semaphore
(``-t<i>``): in controlled mode exactly one worker holds the run token, and it hands it on
by posting the next worker's token.

Names carry the run id (which embeds the coordinator's pid and a random part) and are
created mode 0600. :func:`sweep_orphans` unlinks the objects of runs whose coordinator is
dead; SIGKILL skips ``finally``, so that sweep (at start-up and in ``stress cleanup``) is
what guarantees that nothing stays in /dev/shm.

Lock ordering: the arena takes no lock itself. The class-graph semaphore (``graph_sem``) is
taken only by the lockdep slow path, with interrupts soft-masked, and never nests.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import time
from dataclasses import dataclass
from typing import Iterator

import posix_ipc

PREFIX = "stress-"
SHM_DIR = "/dev/shm"
MAGIC = 0x5354524553530001  # "STRESS" v1

# ---- header words -----------------------------------------------------------------------
H_MAGIC, H_PID, H_STOP, H_PARK, H_START_NS, H_NWORKERS, H_NLOCKS, H_NCLASSES = range(8)
H_EDGES, H_CAP_CLASSES, H_CAP_EDGES, H_CAP_TRACE, H_CHAINS, H_FINDINGS, H_EDGE_SEQ = range(8, 15)
H_EXPECT_SEEN = 15  # a variant that stops when *all* its outcomes are seen: bit i = expected outcome i seen
#: H_STOP's values: the run ends (the coordinator, the controlled scheduler), or a worker's
#: fault where Xen panics ended this boot of the model (shm_model.cpu.Panic; the coordinator
#: reboots the model unless the fault's finding ends the run)
STOP_RUN, STOP_PANIC = 1, 2
HEADER_WORDS = 16

# ---- worker slot words (one 128-byte-aligned slot per worker) -----------------------------
W_PID, W_STATE, W_OP, W_OP_START, W_OPS, W_IN_IRQ, W_IRQS, W_FINDINGS = range(8)
W_PARK_ACK, W_CHAIN_MISS, W_ACQ, W_HEARTBEAT_NS, W_IRQS_DEFERRED = range(16, 21)
# controlled mode: the worker's scheduler state, published at each scheduling point
W_SCHED_STATE, W_SCHED_WAKE, W_SCHED_IRQOK, W_SCHED_AT, W_SCHED_HAS_ISR = range(27, 32)
SCHED_OUT, SCHED_IN, SCHED_GONE = 0, 1, 2  # W_SCHED_STATE: not yet scheduled / scheduled / exited
AT_BOUNDARY, AT_MIDOP = 0, 1  # W_SCHED_AT: between operations (a safe point) / inside one
#: the waiting records, one per context c (0 task, 1 irq) at W_WAIT + WAIT_WORDS * c: a typed
#: record (shm_model.records.WaitRecord: lock, site, since, seq, mode, callers)
W_WAIT = 32
WAIT_WORDS = 8
WAIT_CALLERS = 3  # callers of the waiting site kept in the record
WSLOT = W_WAIT + 2 * WAIT_WORDS
WS_INIT, WS_RUNNING, WS_PARKED, WS_EXITED, WS_FAILED = range(5)
WORKER_STATES = {WS_INIT: "starting", WS_RUNNING: "running", WS_PARKED: "parked",
                 WS_EXITED: "exited", WS_FAILED: "failed"}

# ---- lock record words (64 bytes each: no false sharing between locks) --------------------
# a typed record per lock *kind* (shm_model.records.LockRecord): L_KIND says which; the words
# after L_KIND are the kind's own (a reader-writer lock: its count word and queue holder)
L_OWNER, L_CLASS, L_SITE, L_SINCE, L_KIND = range(5)
L_CNTS, L_QOWNER = 5, 6  # rw: Xen's cnts word (readers, writer state, writer CPU); who holds the queue
L_VIEW = 7  # weak memory: the view the lock's last release published (shm_model.weak; any kind)
LSLOT = 8
NO_OWNER = -1
LK_SPIN, LK_RW = 0, 1  # L_KIND

# ---- reader holds: per (rw lock, owner) its read depth, first site and time ---------------
RH_DEPTH, RH_SITE, RH_SINCE = range(3)
RHSLOT = 3

# ---- per (worker, class) lock statistics --------------------------------------------------
S_ACQ, S_CONTENDED, S_WAIT_NS, S_WAIT_MAX, S_HOLD_MAX = range(5)
S_RACQ, S_RCONTENDED = 5, 6  # of those, read acquisitions and contended reads (a reader-writer lock)
SSLOT = 7

# ---- per (worker, class) log2 histograms of hold and wait times (lock_stat's) -------------
# bucket b counts times t in ns with t.bit_length() == b, i.e. 2**(b-1) <= t < 2**b
HBUCKETS = 64  # every int64 time fits: no clamp on the fast path
H_HOLD, H_WAIT = 0, HBUCKETS
HSLOT = 2 * HBUCKETS

# ---- class usage (lockdep's usage bits, with the first site and worker of each) ----------
C_IN_IRQ, C_IN_IRQ_SITE, C_IN_IRQ_WORKER, C_IRQ_ON, C_IRQ_ON_SITE, C_IRQ_ON_WORKER = range(6)
C_REPORTED = 6
# the same two usages by a *recursive* reader (lockdep's USED_IN_HARDIRQ_READ, ENABLED_HARDIRQ_READ):
# a recursive read in an ISR and another with interrupts on cannot deadlock; either against a write can
C_IN_IRQ_R, C_IRQ_ON_R = 8, 11  # each followed by its site and worker
C_ORIGIN = 7  # a subclass made by spin_lock_nested: base class * 8 + subclass + 1 (0: declared)
# the callers of each usage's first site (innermost first, 0: none), as lockdep keeps a
# usage's stack trace: USAGE_CALLERS words per usage, in the order of USAGES
USAGES = (C_IN_IRQ, C_IRQ_ON, C_IN_IRQ_R, C_IRQ_ON_R)
USAGE_CALLERS = 3
C_CALLERS = 14
CSLOT = C_CALLERS + len(USAGES) * USAGE_CALLERS

# ---- class graph edge records (one per ordered class pair) --------------------------------
# E_GUARD: how many lock *instances* were held outside the edge's first lock on every
# occasion (E_G0.. hold their indices), or NO_GUARD_YET before the first sighting
# E_TYPES: the dependency types seen (lockdep's -(EN)->, -(ER)->, -(SN)->, -(SR)->: the first
# lock held exclusively or shared, the second taken non-recursively or as a recursive reader)
E_SEQ, E_FROM_SITE, E_TO_SITE, E_WORKER, E_GUARD, E_TYPES = range(6)
DEP_EN, DEP_ER, DEP_SN, DEP_SR = 1, 2, 4, 8
E_G0 = 6
GUARD_SLOTS = 4  # more outer instances than this: the innermost are kept (fewer guards: never a false one)
ESLOT = E_G0 + GUARD_SLOTS
NO_GUARD_YET = -1

MAX_CLASSES = 126  # declared classes plus the subclasses spin_lock_nested makes
MAX_OPS = 64
IRQ_RING = 64  # slots per (sender, target) ring
TRACE_EVENTS = 16384  # events per worker ring (640 KiB)
EV_WORDS = 5  # (time_ns, kind | ctx << 8 | name << 16, a, b, c)

# ---- scheduler region (controlled mode) ----------------------------------------------------
SC_MODE, SC_POLICY, SC_CUR, SC_STEP, SC_VCLOCK, SC_RNG, SC_K, SC_DEPTH = range(8)
SC_ROUND, SC_ROUND_AT, SC_STUCK, SC_DELIVER, SC_LOG_N, SC_LOG_LOST, SC_SCRIPT_N, SC_SCRIPT_POS = range(8, 16)
SC_SCRIPT_USED, SC_DIVERGED, SC_DIVERGE_WANT, SC_SWITCHES, SC_PREEMPT, SC_IRQS, SC_NEXT_CHECK, SC_CHECKS = range(16, 24)
SC_DRAIN, SC_CHECK_NS, SC_MAX_STEPS, SC_DONE, SC_FALLBACK, SC_CHECKS_SKIPPED, SC_STEP_NS, SC_OPS = range(24, 32)
SC_LENIENT, SC_MISSES = 32, 33  # shrinking: a scripted choice that cannot run is skipped, counted
SC_CHANGE = 40  # PCT change points of the current round: step offsets, SC_CHANGE + i for i < depth - 1
MAX_DEPTH = 9
SC_PRIO = SC_CHANGE + MAX_DEPTH  # priority of each thread: 2 * worker + (0 task, 1 its interrupts)
MAX_WORKERS = 64
SC_LOG = SC_PRIO + 2 * MAX_WORKERS  # the recording: run-length encoded choices, choice | count << 8
SCHED_LOG_CAP = 1 << 20  # entries (8 MiB, touched only as written)
SC_SCRIPT = SC_LOG + SCHED_LOG_CAP  # the replay script, same encoding
SCHED_WORDS = SC_SCRIPT + SCHED_LOG_CAP


@dataclass(frozen=True)
class Geometry:
    """Where each region starts, in words. Computed once from the run's sizes."""

    n_workers: int
    n_locks: int
    n_classes: int
    state_words: int
    trace_events: int = TRACE_EVENTS
    n_aux: int = 0  # auxiliary semaphores the layout asked for (a heap's allocator lock): no lock records

    @property
    def workers(self) -> int:
        return HEADER_WORDS

    @property
    def ops(self) -> int:
        return self.workers + self.n_workers * WSLOT

    @property
    def stats(self) -> int:
        return self.ops + self.n_workers * MAX_OPS

    @property
    def hists(self) -> int:
        return self.stats + self.n_workers * MAX_CLASSES * SSLOT

    @property
    def locks(self) -> int:
        return self.hists + self.n_workers * self.n_classes * HSLOT

    @property
    def rholds(self) -> int:
        return self.locks + self.n_locks * LSLOT

    @property
    def classes(self) -> int:
        return self.rholds + self.n_locks * 2 * self.n_workers * RHSLOT

    @property
    def graph(self) -> int:
        return self.classes + MAX_CLASSES * CSLOT

    @property
    def irq_rings(self) -> int:
        return self.graph + MAX_CLASSES * MAX_CLASSES * ESLOT

    @property
    def ring_words(self) -> int:
        return 2 + IRQ_RING  # head (written by the sender), tail (by the target), slots

    @property
    def traces(self) -> int:
        return self.irq_rings + (self.n_workers + 1) * self.n_workers * self.ring_words

    @property
    def trace_words(self) -> int:
        return 1 + self.trace_events * EV_WORDS

    @property
    def sched(self) -> int:
        return self.traces + self.n_workers * self.trace_words

    @property
    def state(self) -> int:
        return self.sched + SCHED_WORDS

    @property
    def total_words(self) -> int:
        return self.state + self.state_words

    # -- addressing helpers (used off the fast path) --
    def wslot(self, w: int) -> int:
        return self.workers + w * WSLOT

    def lslot(self, lock: int) -> int:
        return self.locks + lock * LSLOT

    def rhslot(self, lock: int, owner: int) -> int:
        """The read-hold record of lock ``lock`` by owner ``owner`` (worker * 2 + context)."""
        return self.rholds + (lock * 2 * self.n_workers + owner) * RHSLOT

    def wait_slot(self, w: int, ctx: int) -> int:
        """The waiting record of worker ``w``'s context ``ctx`` (shm_model.records.WaitRecord)."""
        return self.workers + w * WSLOT + W_WAIT + WAIT_WORDS * ctx

    def sslot(self, w: int, cls: int) -> int:
        return self.stats + (w * MAX_CLASSES + cls) * SSLOT

    def hslot(self, w: int, cls: int) -> int:
        return self.hists + (w * self.n_classes + cls) * HSLOT

    def cslot(self, cls: int) -> int:
        return self.classes + cls * CSLOT

    def eslot(self, a: int, b: int) -> int:
        return self.graph + (a * MAX_CLASSES + b) * ESLOT

    def ring(self, sender: int, target: int) -> int:
        """Interrupt ring from ``sender`` (a worker, or ``n_workers`` for the coordinator)."""
        return self.irq_rings + (sender * self.n_workers + target) * self.ring_words

    def trace(self, w: int) -> int:
        return self.traces + w * self.trace_words


def acquire_retrying(sem: posix_ipc.Semaphore, timeout_s: float) -> bool:
    """Acquire an internal semaphore, retrying when a signal interrupts the wait (posix_ipc
    raises SignalError without taking it, FACTS.md) with the deadline kept absolute.
    Returns False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sem.acquire(max(0.0, deadline - time.monotonic()))
            return True
        except posix_ipc.SignalError:
            continue
        except posix_ipc.BusyError:
            return False


def new_run_id() -> str:
    """``YYYYmmddTHHMMSS-<pid>-<random>``: sortable, names its coordinator, unguessable."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


def pid_of_run(run_id: str) -> int | None:
    parts = run_id.split("-")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


class Arena:
    """The run's segment and semaphores. Create in the coordinator; forked workers inherit
    the mapping and the semaphore objects (named semaphores are mmaps, no descriptors)."""

    def __init__(self, run_id: str, geo: Geometry, create: bool = True) -> None:
        self.run_id = run_id
        self.geo = geo
        self.base_name = f"/{PREFIX}{run_id}"
        self._owner_pid = os.getpid()
        self.sems: list[posix_ipc.Semaphore] = []
        self.tokens: list[posix_ipc.Semaphore] = []  # one run token per worker (controlled mode)
        self.aux: list[posix_ipc.Semaphore] = []  # the layout's own semaphores (value 1), not model locks
        self.graph_sem: posix_ipc.Semaphore | None = None
        self._shm: posix_ipc.SharedMemory | None = None
        self._map: mmap.mmap | None = None
        self.mv: memoryview
        if create:
            self._create()

    # -- lifecycle ------------------------------------------------------------------------
    def _create(self) -> None:
        size = self.geo.total_words * 8
        self._live_fd: int | None = None
        try:
            # first the liveness file, locked before it has its name: a sweeper that sees
            # ``stress-<run>-live`` and can take its lock knows the run is gone, in any PID
            # namespace (the flock is on the file; forked workers share it, which is right)
            tmp = os.path.join(SHM_DIR, f"{LIVE_TMP}{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.link(tmp, self.live_path())  # a rename that never replaces: EEXIST if taken
            except FileExistsError:
                os.close(fd)
                raise posix_ipc.ExistentialError(f"{self.live_path()} exists: run id {self.run_id} is taken")
            except BaseException:
                os.close(fd)
                raise
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            self._live_fd = fd
            self._shm = posix_ipc.SharedMemory(self.base_name, posix_ipc.O_CREX, mode=0o600, size=size)
            self._map = mmap.mmap(self._shm.fd, size)
            self._shm.close_fd()
            self.mv = memoryview(self._map).cast("q")
            self.mv[H_MAGIC] = MAGIC
            self.mv[H_PID] = os.getpid()
            self.mv[H_NWORKERS] = self.geo.n_workers
            self.mv[H_NLOCKS] = self.geo.n_locks
            self.mv[H_NCLASSES] = self.geo.n_classes
            for w in range(self.geo.n_workers):  # "not waiting", "no operation"
                ws = self.geo.wslot(w)
                self.mv[ws + W_OP] = -1
                for c in (0, 1):
                    self.mv[self.geo.wait_slot(w, c)] = -1
            self.graph_sem = posix_ipc.Semaphore(f"{self.base_name}-g", posix_ipc.O_CREX, mode=0o600, initial_value=1)
            for i in range(self.geo.n_locks):
                self.sems.append(
                    posix_ipc.Semaphore(f"{self.base_name}-l{i}", posix_ipc.O_CREX, mode=0o600, initial_value=1))
            for i in range(self.geo.n_aux):
                self.aux.append(
                    posix_ipc.Semaphore(f"{self.base_name}-a{i}", posix_ipc.O_CREX, mode=0o600, initial_value=1))
            for i in range(self.geo.n_workers):
                self.tokens.append(
                    posix_ipc.Semaphore(f"{self.base_name}-t{i}", posix_ipc.O_CREX, mode=0o600, initial_value=0))
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Unlink and unmap everything this arena created. Idempotent; only the process
        that created the arena unlinks (a forked worker exiting must not)."""
        if os.getpid() != self._owner_pid:
            return
        for sem in self.sems + self.aux + self.tokens + ([self.graph_sem] if self.graph_sem else []):
            try:
                sem.unlink()
            except posix_ipc.ExistentialError:
                pass
            try:
                sem.close()
            except posix_ipc.Error:
                pass
        self.sems = []
        self.aux = []
        self.tokens = []
        self.graph_sem = None
        if self._shm is not None:
            try:
                self._shm.unlink()
            except posix_ipc.ExistentialError:
                pass
            self._shm = None
        if self._map is not None:
            try:
                self.mv.release()
            except (AttributeError, ValueError, BufferError):
                pass
            try:
                self._map.close()
            except BufferError:
                pass  # views still exported; the mapping goes with the process
            self._map = None
        fd = getattr(self, "_live_fd", None)
        if fd is not None:  # last: until now a sweeper must see this run as alive
            try:
                os.unlink(self.live_path())
            except FileNotFoundError:
                pass
            os.close(fd)
            self._live_fd = None

    def live_path(self) -> str:
        return os.path.join(SHM_DIR, f"{self.base_name[1:]}{LIVE_SUFFIX}")

    def names(self) -> list[str]:
        """The /dev/shm entries this arena owns (for tests and cleanup)."""
        n = self.base_name[1:]
        return ([n, f"sem.{n}-g"] + [f"sem.{n}-l{i}" for i in range(self.geo.n_locks)]
                + [f"sem.{n}-a{i}" for i in range(self.geo.n_aux)]
                + [f"sem.{n}-t{i}" for i in range(self.geo.n_workers)] + [f"{n}{LIVE_SUFFIX}"])


LIVE_SUFFIX = "-live"  # ``stress-<run>-live``: flock'ed by the run for its whole life
LIVE_TMP = f"{PREFIX}live-tmp-"  # the liveness file before its rename: not a run's object


def _run_of_entry(entry: str) -> str | None:
    name = entry[4:] if entry.startswith("sem.") else entry
    if not name.startswith(PREFIX) or name.startswith(LIVE_TMP):
        return None
    rest = name[len(PREFIX):]
    # run id is "<stamp>-<pid>-<rand>"; semaphores add "-l<i>", "-a<i>", "-t<i>" or "-g", the liveness file "-live"
    parts = rest.split("-")
    return "-".join(parts[:3]) if len(parts) >= 3 else None


def list_objects(shm_dir: str = SHM_DIR) -> Iterator[tuple[str, str]]:
    """(entry, run id) of every stress object in /dev/shm."""
    try:
        entries = os.listdir(shm_dir)
    except OSError:  # missing, or not ours to read
        return
    for e in entries:
        run = _run_of_entry(e)
        if run is not None:
            yield e, run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_if_gone(shm_dir: str, run: str) -> int | None | bool:
    """Judge a run by its liveness file. Returns an fd holding its lock when the run is gone
    (keep it until its objects are unlinked), True when the run holds it (alive), False when
    there is no liveness file we can open (an older run, or another user's: judge by pid)."""
    path = os.path.join(shm_dir, f"{PREFIX}{run}{LIVE_SUFFIX}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        return False
    return fd


LIVE_TMP_GRACE_S = 60.0


def _sweep_live_tmp(shm_dir: str) -> list[str]:
    """A liveness file that never got its name (its creator died in the microseconds between
    creating and naming it): removed once it is old and nobody holds its lock."""
    out = []
    try:
        entries = [e for e in os.listdir(shm_dir) if e.startswith(LIVE_TMP)]
    except FileNotFoundError:
        return out
    for e in entries:
        path = os.path.join(shm_dir, e)
        try:
            if time.time() - os.lstat(path).st_mtime < LIVE_TMP_GRACE_S:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            out.append(e)
        except OSError:
            pass  # held (its run lives) or not ours to remove
        finally:
            os.close(fd)
    return out


def sweep_orphans(shm_dir: str = SHM_DIR, include_live: bool = False,
                  skipped: list[tuple[str, int]] | None = None) -> list[str]:
    """Unlink the objects of runs that are no longer alive. Returns the entries removed.
    ``include_live`` also removes those of live runs (never the default).

    A run is alive while it holds the flock of its liveness file (``stress-<run>-live``),
    whatever PID namespace it runs in; a run without one (older versions) while the pid in
    its id is. Objects that may not be removed (another user's: EPERM/EACCES) are skipped,
    never fatal; ``skipped``, if given, receives (entry, owner uid) for each."""
    runs: dict[str, list[str]] = {}
    for entry, run in list_objects(shm_dir):
        runs.setdefault(run, []).append(entry)
    removed = _sweep_live_tmp(shm_dir)
    for run, entries in runs.items():
        fd: int | None = None
        if not include_live:
            pid = pid_of_run(run)
            if pid is None or pid == os.getpid():
                continue  # unparseable (not ours to judge), or our own
            verdict = _lock_if_gone(shm_dir, run)
            if verdict is True:
                continue  # its run holds the lock: alive, maybe in another PID namespace
            if verdict is False:
                if _alive(pid):
                    continue  # a live coordinator's (no liveness file we may ask)
            else:
                fd = verdict  # the lock of a run that is gone: held until its objects are
        try:
            live = f"{PREFIX}{run}{LIVE_SUFFIX}"
            for entry in sorted(entries, key=lambda e: e == live):  # the liveness file last
                path = os.path.join(shm_dir, entry)
                try:
                    os.unlink(path)
                    removed.append(entry)
                except FileNotFoundError:
                    pass
                except OSError:  # EPERM/EACCES: another user's (sticky /dev/shm), or read-only
                    if skipped is not None:
                        try:
                            uid = os.lstat(path).st_uid
                        except OSError:
                            uid = -1
                        skipped.append((entry, uid))
        finally:
            if fd is not None:
                os.close(fd)
    return removed
