"""``stress campaign``: a soak's plan run on the hosts of a Ray cluster, into one store.

The plan is the soak's (:class:`stress.soak.Plan`: workloads × variants, iteration ``i``
with a seed derived from the campaign seed and ``i``, the schedule rule of its pair), made
and checked by the same code; ``--iterations N`` bounds it by count, ``--duration`` by wall
time (summed over resumes), either or both. Each iteration is one Ray task that asks for
one unit of the custom resource ``stress_host``: a host started with
``ray start ... --resources '{"stress_host": 1}'`` runs one iteration at a time, alone, as
a soak runs it (every iteration is timing-sensitive and uses the host's shared memory).

On its host the task runs ``python -m stress run ... --quiet --no-store`` as a child (the
soak's child command, :func:`stress.soak.child_command`) in a scratch directory, with
``PR_SET_PDEATHSIG`` (a task killed with its host takes its run down, which tears its arena
down itself), and returns its *record*: the run directory's files (config, summary,
metrics, findings, report, recorded schedule) and its log, but ``traces/`` only when
``--keep-traces`` keeps them (by default only for an iteration that did not pass or showed
a decisive finding). The scratch directory is then removed: nothing stays on the host.

The driver (this process) writes each record into ``<out>/<run-id>/`` on its own disk and
ingests it into its own SQLite store as it arrives, with the soak's recording code
(:func:`stress.soak.record_outcome`): the store is never on a shared file system. It keeps
as many tasks in flight as the cluster has ``stress_host`` units, shows live progress
(per host: running, done, passed, failed, harness errors; the detection rate so far; also
written to ``<out>/<campaign-id>/progress.json`` for a watcher), and prints one line per
finished iteration.

Faults. A host that dies under a task: Ray retries the task on another host
(``--retries``, default 3). Each attempt announces itself to a small tracker actor on the
driver's node before it starts its run, so the driver knows which host runs which
iteration and which iterations ran more than once: those are recorded with their attempts
and the hosts they were lost on (``runs.attempts``, ``runs.tried_on``), shown as
*retried*. An attempt lost before it announced itself is retried all the same but cannot be
told from a first one. A task that fails for good is recorded as a harness error. The
driver killed: ``--resume ID`` rebuilds the plan from the store and runs only the
iterations it does not hold (a campaign's iterations finish out of order, so the gaps
below the last recorded one are run first). A host whose iterations all fail for harness
reasons while other hosts run theirs is reported *unhealthy*; its errors are no findings.

Without ``--cluster`` the campaign starts an embedded Ray (``ray.init()`` with one
``stress_host``: this machine) and runs the very same path. Ray is imported here only, and
this module only by ``stress campaign``: ``stress soak`` never imports Ray, and stress
installs without it (``pip install 'stress[cluster]'`` brings it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .cli import UsageError
from .loader import Found
from .soak import (CHILD_GRACE_S, PASSING, STOP_WAIT_S, Iteration, Plan, PlanDriver, _fmt, _junit, _pdeathsig_setup, _rate,
                   _tail, check_plan, child_command, decisive_in, drop_traces, expects_bug, find_run_dir,
                   keeps_traces, open_to_resume, record_outcome, recorded_command, schedule_tag, soak_command,
                   stop_child)
from .store import HARNESS_STATUSES, RunRow, Store, StoreError, host_stats, run_status

RESOURCE = "stress_host"
DEFAULT_RETRIES = 3
MIN_RAY = (2, 9)
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.25
TRACKER_EVERY_S = 0.5
SIDELINE_AFTER = 3  # harness errors in a row (all of a host's) before the driver sends it nothing more
PLAIN_EVERY_S = 60.0  # without a terminal: a per-host progress line this often
LOG_TAIL_BYTES = 256 * 1024
INSTALL_HINT = "install stress[cluster] (pip install 'stress[cluster]'), on the driver and on every host"
#: an embedded Ray's object store: records are small (a few MB with traces)
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024


# -- Ray, lazily ----------------------------------------------------------------------------------
def import_ray() -> Any:
    """Ray, or one line saying how to get it."""
    try:
        import ray  # noqa: PLC0415 (only a campaign imports Ray)
    except ImportError:
        raise UsageError(f"stress campaign needs Ray: {INSTALL_HINT}") from None
    try:
        have = tuple(int(x) for x in ray.__version__.split(".")[:2])
    except ValueError:
        have = MIN_RAY
    if have < MIN_RAY:
        raise UsageError(f"stress campaign needs Ray >= {'.'.join(map(str, MIN_RAY))} (found {ray.__version__}): "
                         f"{INSTALL_HINT}")
    return ray


def _reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) address answers a TCP connect, else one line."""
    a = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--cluster takes a Ray address like 10.0.0.1:6379, ray://10.0.0.1:10001 or auto, "
                         f"not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        if isinstance(e, socket.timeout):
            why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        raise UsageError(f"cannot reach the Ray cluster at {address}: {why} (start it with: ray start --head "
                         f"--port {port})") from None


def connect(cluster: str | None) -> tuple[Any, str]:
    """Join the cluster at ``cluster`` (None: start an embedded Ray with this machine as its
    one host). Returns (ray, what it is, for the header). Every failure is one line."""
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if cluster is None:
        try:
            ray.init(resources={RESOURCE: 1}, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        except Exception as e:  # Ray raises many kinds; all say the same to the user
            _shutdown(ray)
            raise UsageError(f"cannot start an embedded Ray: {_one_line(e)}") from None
        what = "an embedded Ray (this machine, one stress_host)"
    else:
        if cluster != "auto":
            _reachable(cluster)
        try:
            ray.init(address=cluster, **(quiet if not cluster.startswith("ray://") else {}))
        except Exception as e:
            _shutdown(ray)
            raise UsageError(f"cannot join the Ray cluster at {cluster}: {_one_line(e)}") from None
        what = f"the Ray cluster at {cluster}"
    units = float(ray.cluster_resources().get(RESOURCE, 0))
    if units < 1:
        _shutdown(ray)
        raise UsageError(f"{what} offers no {RESOURCE} resource: start each host with ray start --address ... "
                         f"--resources '{{\"{RESOURCE}\": 1}}'")
    return ray, what


def _shutdown(ray: Any) -> None:
    try:
        ray.shutdown()
    except Exception:
        pass


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(e: BaseException) -> str:
    text = " ".join(_ANSI.sub("", str(e)).split()) or type(e).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


# -- on the host: one iteration -------------------------------------------------------------------
def tracker_class() -> type:
    """The tracker actor's class: on the driver's node, which host runs which iteration and
    how many times each began. Made here so that Ray sends it by value: a host calls its
    methods without importing stress (see :func:`task_entry`)."""
    class Tracker:
        def __init__(self) -> None:
            self.running: dict = {}  # iteration -> (hostname, node id, started)
            self.starts: dict = {}  # iteration -> [(hostname, node id), ...]

        def started(self, index: int, hostname: str, node: str) -> list:
            """Note an attempt; returns the earlier attempts' (hostname, node id)."""
            import time as _time
            earlier = list(self.starts.get(index, []))
            self.starts.setdefault(index, []).append((hostname, node))
            self.running[index] = (hostname, node, _time.time())
            return earlier

        def finished(self, index: int) -> None:
            self.running.pop(index, None)

        def snapshot(self) -> tuple:
            return dict(self.running), {i: list(v) for i, v in self.starts.items()}
    return Tracker


def task_entry() -> Any:
    """The function each Ray task runs. Made here, so that it is sent to the hosts by value:
    it announces its host to the tracker first and imports stress only then, so a host where
    stress cannot even be imported (a broken or missing install) still says who it is, and
    its iterations are that host's harness errors, not anonymous ones."""
    def stress_iteration(spec: dict) -> dict:
        import socket as _socket
        import time as _time
        import ray as _ray
        t0 = _time.monotonic()
        hostname = _socket.gethostname()
        try:
            node = _ray.get_runtime_context().get_node_id()
        except Exception:
            node = ""
        index = int(spec["index"])
        tracker = spec.get("tracker")
        earlier = _ray.get(tracker.started.remote(index, hostname, node)) if tracker is not None else []
        try:
            from stress.campaign import run_iteration as _run
        except BaseException as e:  # noqa: BLE001 (whatever breaks the import: say it, with the host)
            if tracker is not None:
                tracker.finished.remote(index)
            return {"index": index, "hostname": hostname, "node": node, "earlier": earlier,
                    "broken": f"stress cannot be imported on this host: {type(e).__name__}: {e}"}
        return _run(spec, hostname, node, earlier, t0)
    return stress_iteration


def run_iteration(spec: dict, hostname: str, node: str, earlier: list, t0: float) -> dict:
    """One iteration on this host (inside the task, after :func:`task_entry` announced it);
    returns its record (see the module docstring). Runs ``stress run`` exactly as a soak's
    child, in a scratch directory."""
    index = int(spec["index"])
    plan = Plan.from_dict(spec["plan"])
    it = Iteration(index, spec["workload"], spec["variant"], int(spec["seed"]), spec["schedule"])
    d = float(spec["duration_s"])
    tmp = tempfile.mkdtemp(prefix="stress-campaign-")
    rec: dict[str, Any] = {"index": index, "hostname": hostname, "node": node, "earlier": earlier, "files": {},
                           "traces_bytes": 0, "traces_kept": False}
    proc: subprocess.Popen | None = None
    try:
        plan.out = "runs"
        wl_path = None
        if spec.get("source") is not None:  # a workload file: this host gets a copy
            os.makedirs(os.path.join(tmp, "workload"))
            wl_path = os.path.join(tmp, "workload", spec["source"]["name"])
            with open(wl_path, "w") as fh:
                fh.write(spec["source"]["text"])
        cmd = child_command(plan, it, d, python=sys.executable, workload=wl_path)
        if spec.get("pct_steps"):
            cmd += ["--pct-steps", str(int(spec["pct_steps"]))]
        rec["command"] = recorded_command(cmd, it.workload if wl_path else None)
        log_path = os.path.join(tmp, "iteration.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "w") as log:
            log.write("# " + shlex.join(cmd) + "\n")
            log.flush()
            c0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, preexec_fn=_pdeathsig_setup())
        rc, timed_out = _wait_child(proc, c0 + d + CHILD_GRACE_S)
        pid, proc = proc.pid, None
        rec["child_s"] = time.monotonic() - c0
        rec.update(rc=rc, timed_out=timed_out)
        run_dir = find_run_dir(log_path, tmp, plan.out, pid)
        rec["tail"] = _tail(log_path) if run_dir is None else ""
        rec["log"] = _read_tail(log_path, LOG_TAIL_BYTES, wl_path, it.workload)
        if run_dir is not None:
            rec["run_id"] = os.path.basename(run_dir.rstrip("/"))
            try:
                with open(os.path.join(run_dir, "summary.json")) as fh:
                    status = run_status(json.load(fh))
            except (OSError, ValueError):
                status = "error"
            if timed_out:
                status = "error"
            keep = keeps_traces(spec.get("keep_traces", "failed"), status, decisive_in(run_dir))
            rec["traces_kept"] = keep
            if not keep:
                rec["traces_bytes"] = drop_traces(run_dir)
            rec["files"] = _pack(run_dir, wl_path, it.workload)
    finally:
        if proc is not None:  # cancelled (KeyboardInterrupt): stop the run, wait
            stop_child(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        if spec.get("tracker"):
            spec["tracker"].finished.remote(index)
    rec["task_s"] = time.monotonic() - t0
    return rec


def _wait_child(proc: subprocess.Popen, deadline: float) -> tuple[int, bool]:
    """Wait for an iteration's child; past ``deadline`` SIGTERM, then SIGKILL. (rc, timed out)."""
    timed_out = False
    kill_at = math.inf
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline and not timed_out:
            proc.send_signal(signal.SIGTERM)
            timed_out, kill_at = True, now + STOP_WAIT_S
        if now > kill_at:
            proc.kill()
            kill_at = math.inf
        time.sleep(0.05)
    return proc.returncode, timed_out


_TEXT_SUFFIXES = (".json", ".jsonl", ".txt", ".log")


def _fix(data: bytes, path: bytes | None, name: bytes) -> bytes:
    return data.replace(path, name) if path else data


def _pack(run_dir: str, wl_path: str | None, workload: str) -> dict[str, bytes]:
    """Every file of a run directory, by relative path; the host's copy of a workload file
    named as the user named it."""
    out: dict[str, bytes] = {}
    p, n = (wl_path.encode(), workload.encode()) if wl_path else (None, b"")
    for root, _, files in os.walk(run_dir):
        for f in files:
            full = os.path.join(root, f)
            rel = os.path.relpath(full, run_dir)
            try:
                with open(full, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            out[rel] = _fix(data, p, n) if rel.endswith(_TEXT_SUFFIXES) else data
    return out


def _read_tail(path: str, limit: int, wl_path: str | None, workload: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return ""
    data = _fix(data, wl_path.encode() if wl_path else None, workload.encode())
    return data.decode("utf-8", "replace")


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class Pending:
    it: Iteration
    d: float
    submitted: float  # monotonic
    pinned: str = ""  # the node it was sent to, once some host is unhealthy


@dataclass
class HostLive:
    done: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    retried: int = 0
    running: list[int] = field(default_factory=list)


class Campaign(PlanDriver):
    def __init__(self, store: Store, campaign_id: str, plan: Plan, found: dict[str, Found], resumed: bool,
                 ray: Any, where: str, retries: int = DEFAULT_RETRIES, live: bool | None = None) -> None:
        super().__init__(store, campaign_id, plan, found, resumed, live)
        self.ray = ray
        self.where = where
        self.retries = retries
        self.dir = os.path.join(plan.cwd, plan.out, campaign_id)
        self.pending: dict[Any, Pending] = {}
        self.rows: list[RunRow] = []
        self.found_of: dict[str, list[str]] = {}
        self.labels: dict[str, str] = {}  # node id -> host label
        self.running: dict[int, tuple[str, str, float]] = {}
        self.starts: dict[int, list[tuple[str, str]]] = {}
        self.done_this_session = 0
        self.timings: list[dict] = []  # per iteration this session: driver wall, host task, child
        self.unhealthy_said: set[str] = set()
        self._next_plain = 0.0
        self._next_track = 0.0
        self.tracker: Any = None
        self.remote: Any = None
        self.sources: dict[str, dict] = {}

    # -- plan -----------------------------------------------------------------------------------
    def _capacity(self) -> int:
        """stress_host units of the cluster, but an unhealthy host's."""
        try:
            total = int(float(self.ray.cluster_resources().get(RESOURCE, 0)))
        except Exception:
            return 1
        bad = self._unhealthy_nodes()
        if bad:
            total -= sum(units for nid, units in self._host_units().items() if nid in bad)
        return max(1, total)

    def _host_units(self) -> dict[str, int]:
        """Alive nodes offering stress_host: node id -> units."""
        try:
            return {n["NodeID"]: int(float((n.get("Resources") or {}).get(RESOURCE, 0))) for n in self.ray.nodes()
                    if n.get("Alive") and float((n.get("Resources") or {}).get(RESOURCE, 0)) >= 1}
        except Exception:
            return {}

    def _unhealthy_nodes(self) -> set[str]:
        """Nodes the driver stops sending iterations to: their last :data:`SIDELINE_AFTER` or
        more iterations, all of them, failed for harness reasons, and another alive node is not
        so (a broken host must not eat the plan; if every host is so, nothing is gained)."""
        bad_labels = {h.host for h in host_stats(self.rows) if h.iterations >= SIDELINE_AFTER and h.errors == h.iterations}
        bad = {nid for nid, label in self.labels.items() if label in bad_labels}
        if bad and not set(self._host_units()) - bad:
            return set()
        return bad

    def _placement(self) -> Any:
        """None (Ray places the task) while every host is healthy; once one is not, the
        healthy node with the fewest iterations in flight, so that a broken host stops
        eating the plan (its units are no longer counted, so the node chosen has room)."""
        bad = self._unhealthy_nodes()
        if not bad:
            return None
        units = {nid: u for nid, u in self._host_units().items() if nid not in bad}
        if not units:
            return None
        load = dict.fromkeys(units, 0)
        running_on = {i: nd for i, (_, nd, _) in self.running.items()}
        for p in self.pending.values():
            nid = p.pinned or running_on.get(p.it.index, "")
            if nid in load:
                load[nid] += 1
        best = min(units, key=lambda nid: (load[nid] / units[nid], nid))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        return best, NodeAffinitySchedulingStrategy(node_id=best, soft=True)

    # -- main -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = ray.get_runtime_context().get_node_id()
        self.tracker = ray.remote(num_cpus=0, max_restarts=0)(tracker_class()).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
        self.remote = ray.remote(task_entry())
        self.task_options = dict(resources={RESOURCE: 1}, num_cpus=0, max_retries=self.retries,
                                 retry_exceptions=False)
        for w in self.plan.workloads:
            if os.sep in w or w.endswith(".py"):  # a file: each host gets a copy with its task
                path = w if os.path.isabs(w) else os.path.join(self.plan.cwd, w)
                try:
                    with open(path) as fh:
                        self.sources[w] = {"name": os.path.basename(w), "text": fh.read()}
                except OSError as e:
                    raise UsageError(f"cannot read the workload file {w}: {e.strerror}") from None
        self._refresh_labels()
        self._divert_ray_messages()

    def _divert_ray_messages(self) -> None:
        """Ray prints its own error messages (a task retried after its node died, ...) on the
        driver's stdout, over the live view: they go to ``<out>/<campaign-id>/ray.log``
        instead (the campaign says what happened in its own words)."""
        try:
            from ray._private import worker as ray_worker
        except ImportError:
            return
        if not callable(getattr(ray_worker, "print_to_stdstream", None)):
            return
        path = os.path.join(self.dir, "ray.log")

        def to_log(data: dict, ignore_prefix: bool = False) -> None:
            try:
                with open(path, "a") as fh:
                    for line in data.get("lines") or []:
                        fh.write(f"{time.strftime('%H:%M:%S')} ({data.get('pid', '')}) {line}\n")
            except OSError:
                pass

        ray_worker.print_to_stdstream = to_log

    def _run(self) -> int:
        store, plan = self.store, self.plan
        done = store.completed_iterations(self.id)
        for row in store.runs(soak_id=self.id):
            self._count(row)
        os.makedirs(self.dir, exist_ok=True)
        self._setup()
        pairs = ", ".join(plan.pair_label(k) for k in range(len(plan.pairs)))
        bound = self._bound_words()
        hosts = self._capacity()
        if self.resumed:
            self._say(f"stress: resuming campaign {self.id} on {self.where} ({hosts} host{'s' if hosts != 1 else ''}):"
                      f" {len(done)} iterations recorded, {_fmt(self.base_spent)} spent of {bound}; seed {plan.seed}; "
                      f"schedule {plan.schedule}; {len(plan.pairs)} variants ({pairs})")
        else:
            self._say(f"stress: campaign {self.id} on {self.where} ({hosts} host{'s' if hosts != 1 else ''}) for "
                      f"{bound}: {len(plan.pairs)} variants ({pairs}), schedule {plan.schedule}, seed {plan.seed}, "
                      f"keep traces {plan.keep_traces}; store {store.path}; resume with: stress campaign --resume "
                      f"{self.id} {self._where_args()}")
        if self.live_enabled:
            self._live = Live(self._view(), console=self.out, auto_refresh=False, transient=True)
            self._live.start()
        status = "done"
        nxt = 0
        try:
            while not self.stop_signal:
                while not self.stop_signal and len(self.pending) < self._capacity():
                    while nxt in done:
                        nxt += 1
                    it = plan.iteration(nxt)
                    d = self._may_start(it, bool(done) or bool(self.done_this_session) or bool(self.pending))
                    if d is None:
                        break
                    self._submit(it, d)
                    nxt += 1
                if not self.pending:
                    break
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
                self._track()
                for ref in ready:
                    self._finish(ref)
                self._unhealthy_check()
                self._refresh()
        except (StoreError, sqlite3.Error, OSError) as e:
            status = "failed"
            self._stop_view()
            sys.stderr.write(f"stress: error: campaign {self.id} stopped: {e}\n")
        except Exception as e:  # Ray's own failures (the cluster went away, ...): one line, resumable
            status = "failed"
            self._stop_view()
            sys.stderr.write(f"stress: error: campaign {self.id} stopped: {type(e).__name__}: {_one_line(e)} "
                             f"(resume with: stress campaign --resume {self.id})\n")
        finally:
            self._stop_view()
            self._cancel_pending()
            self._write_progress(final=True)
        tm = self.timing_summary()
        overhead = (f"overhead per iteration (Ray dispatch, record transfer, recording; beyond the run "
                    f"itself): median {tm['overhead_s']:.3f} s over {tm['iterations']} iterations; "
                    f"median record {tm['record_bytes'] / 1024:.0f} KiB") if tm["overhead_s"] is not None else ""
        return self._close(status, "campaign", "the iterations in flight are not counted",
                           f"stress campaign --resume {self.id} {self._where_args()}", overhead)

    def _bound_words(self) -> str:
        parts = []
        if self.plan.iterations is not None:
            parts.append(f"{self.plan.iterations} iterations")
        if math.isfinite(self.plan.duration_s):
            parts.append(_fmt(self.plan.duration_s))
        return " or ".join(parts) or "no bound"

    def _may_start(self, it: Iteration, any_done: bool) -> float | None:
        """The duration to start ``it`` with, or None when the plan is spent."""
        if self.plan.iterations is not None and it.index >= self.plan.iterations:
            return None
        full = self._iteration_duration(it)
        if not math.isfinite(self.plan.duration_s):
            return full
        remaining = self.plan.duration_s - self.spent()
        if remaining < full / 2 and (any_done or remaining <= 0):
            return None
        return min(full, max(remaining, 0.1))

    def _where_args(self) -> str:
        parts = ["--out", self.plan.out]
        default = os.path.abspath(os.path.join(self.plan.cwd, self.plan.out, "stress.db"))
        if os.path.abspath(self.store.path) != default:
            parts += ["--db", self.store.path]
        return shlex.join(parts)

    # -- one iteration --------------------------------------------------------------------------
    def _pct_steps(self, it: Iteration) -> int:
        """PCT's k as a soak's child would learn it from this store (a host has none)."""
        if it.schedule != "pct":
            return 0
        try:
            from types import SimpleNamespace
            from .cli import parse_workload_options
            from .schedule import learned_k
            from .workload import role_counts
            spo = self.store.steps_per_op(it.workload, it.variant)
            if not spo:
                return 0
            f = self.found[it.workload]
            values = parse_workload_options(f, self.plan.options.get(it.workload, []))
            return learned_k(spo, role_counts(f.cls, SimpleNamespace(**values), None).total)
        except Exception:
            return 0

    def _submit(self, it: Iteration, d: float) -> None:
        spec = {"index": it.index, "workload": it.workload, "variant": it.variant, "seed": it.seed,
                "schedule": it.schedule, "duration_s": d, "plan": self.plan.as_dict(), "tracker": self.tracker,
                "source": self.sources.get(it.workload), "keep_traces": self.plan.keep_traces,
                "pct_steps": self._pct_steps(it)}
        place = self._placement()
        opts = dict(self.task_options)
        if place is not None:
            opts["scheduling_strategy"] = place[1]
        ref = self.remote.options(**opts).remote(spec)
        self.pending[ref] = Pending(it, d, time.monotonic(), place[0] if place else "")
        self._refresh(force=True)

    def _cancel_pending(self) -> None:
        for ref in list(self.pending):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self.pending.clear()

    def _finish(self, ref: Any) -> None:
        p = self.pending.pop(ref)
        it = p.it
        ray = self.ray
        try:
            rec = ray.get(ref)
            failure = None
        except ray.exceptions.TaskCancelledError:
            return
        except Exception as e:  # the task failed for good (its hosts died, or it raised)
            if self.stop_signal:
                return
            rec, failure = None, e
        if rec is not None and self.stop_signal and rec.get("rc") in (130, 143, -2, -15):
            return  # stopped with the campaign (Ctrl-C reaches an embedded Ray's runs too): not counted
        self._track(force=True)
        driver_s = time.monotonic() - p.submitted
        starts = self.starts.get(it.index, [])
        if rec is not None:
            hostname, node, earlier = rec["hostname"], rec["node"], [tuple(x) for x in rec.get("earlier") or []]
        else:
            hostname, node = starts[-1] if starts else ("", "")
            earlier = starts[:-1]
        host = self._label(hostname, node) if hostname else "(no host)"
        tried_on = [self._label(h, n) for h, n in earlier]
        fields = dict(workload=it.workload, variant=it.variant, seed=it.seed,
                      expected=list(self.found[it.workload].cls.variant_named(it.variant).outcomes),
                      command=(rec or {}).get("command") or "", exit_code=(rec or {}).get("rc"),
                      spent_s=self.spent(), schedule=it.schedule, host=host, attempts=len(earlier) + 1,
                      tried_on=tried_on)
        log_path = os.path.join(self.dir, f"iteration-{it.index:04d}.log")
        with open(log_path, "a") as log:
            log.write(f"## attempt {len(earlier) + 1} on {host}"
                      + (f" (lost on {', '.join(tried_on)})" if tried_on else "") + "\n")
            log.write((rec.get("log") or rec.get("broken", "") + "\n") if rec else
                      f"the task failed: {type(failure).__name__}: {_ANSI.sub('', str(failure))}\n")
        if rec is not None and rec.get("broken"):
            rid = self.store.record_iteration(self.id, it.index, status="error", text=str(rec["broken"]), **fields)
        elif rec is None:
            what = "its hosts died" if _is_system_failure(ray, failure) else "it raised"
            rid = self.store.record_iteration(
                self.id, it.index, status="error",
                text=f"the task failed after {len(starts) or 1} attempt{'s' if len(starts) > 1 else ''} ({what}): "
                     f"{type(failure).__name__}: {_one_line(failure)}", **fields)
        else:
            run_dir = None
            if rec.get("run_id"):
                run_dir = os.path.join(self.plan.cwd, self.plan.out, rec["run_id"])
                _write_files(run_dir, rec["files"])
            rid = record_outcome(self.store, self.id, it, run_dir, int(rec["rc"]), rec.get("tail") or "", fields,
                                 bool(rec.get("timed_out")), p.d, self.plan.keep_traces)
        row = self.store.run(rid)
        self._count(row)
        self.done_this_session += 1
        self.timings.append({"index": it.index, "driver_s": driver_s, "task_s": (rec or {}).get("task_s"),
                             "child_s": (rec or {}).get("child_s"), "bytes": sum(len(v) for v in
                                                                               (rec or {}).get("files", {}).values())})
        self._report(it, row, p.d)

    def _track(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_track:
            return
        self._next_track = now + TRACKER_EVERY_S
        try:
            running, starts = self.ray.get(self.tracker.snapshot.remote(), timeout=10)
        except Exception:
            return
        live = {p.it.index for p in self.pending.values()}
        running = {i: v for i, v in running.items() if i in live}
        changed = running != self.running
        self.running = running
        self.starts = starts
        if any(n not in self.labels for _, n, _ in self.running.values()):
            self._refresh_labels()
        if changed:
            self._write_progress()

    # -- hosts ----------------------------------------------------------------------------------
    def _refresh_labels(self) -> None:
        """A host's label is its hostname; nodes that share one (several Ray nodes on one
        machine) are told apart by their node id."""
        try:
            nodes = [n for n in self.ray.nodes() if float((n.get("Resources") or {}).get(RESOURCE, 0)) >= 1
                     or n.get("NodeID") in self.labels]
        except Exception:
            return
        by_name: dict[str, set[str]] = {}
        for n in nodes:
            by_name.setdefault(n.get("NodeManagerHostname") or "", set()).add(n.get("NodeID") or "")
        for n in nodes:
            nid, name = n.get("NodeID") or "", n.get("NodeManagerHostname") or ""
            if nid and nid not in self.labels:
                self.labels[nid] = name if len(by_name.get(name, ())) == 1 else f"{name}/{nid[:8]}"

    def _label(self, hostname: str, node: str) -> str:
        if node and node not in self.labels:
            self._refresh_labels()
        return self.labels.get(node) or hostname

    def _count(self, row: RunRow) -> None:
        self.rows.append(row)
        self.found_of[row.id] = self.store.found(row.id)
        self.findings += self.store.decisive_findings(row.id)

    def _detection(self) -> tuple[int, int]:
        """(iterations of buggy variants that found what they expect, iterations of buggy variants)."""
        buggy = [r for r in self.rows if expects_bug(r.expected) and r.status not in HARNESS_STATUSES]
        hit = sum(1 for r in buggy if any(o in r.expected for o in self.found_of.get(r.id, [])))
        return hit, len(buggy)

    def _hosts(self) -> dict[str, HostLive]:
        out: dict[str, HostLive] = {label: HostLive() for label in self.labels.values()}
        for r in self.rows:
            if not r.host:
                continue
            h = out.setdefault(r.host, HostLive())
            h.done += 1
            if r.status in PASSING:
                h.passed += 1
            elif r.status in ("fail", "incomplete"):
                h.failed += 1
            elif r.status in HARNESS_STATUSES:
                h.errors += 1
            h.retried += r.attempts > 1
        for i, (hostname, node, _) in sorted(self.running.items()):
            out.setdefault(self._label(hostname, node), HostLive()).running.append(i)
        return out

    def _unhealthy_check(self) -> None:
        for h in host_stats(self.rows):
            if h.unhealthy and h.host not in self.unhealthy_said and h.iterations >= 2:
                self.unhealthy_said.add(h.host)
                self._print_event(f"host {h.host} looks unhealthy: all {h.iterations} of its iterations failed for "
                                  f"harness reasons (see {os.path.join(self.plan.out, self.id)}/iteration-*.log)")

    # -- progress -------------------------------------------------------------------------------
    def _print_event(self, line: str, style: str = "bold red") -> None:
        if self._live is not None:
            self._live.console.print(Text(line, style=style))
        else:
            self.out.print(line)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._live is not None and (force or now >= self._next_view):
            self._next_view = now + 0.5
            self._live.update(self._view(), refresh=True)
        if now >= self._next_plain:
            self._next_plain = now + (PLAIN_EVERY_S if self._live is None else 1.0)
            self._write_progress()
            if self._live is None and (self.done_this_session or self.pending):
                self.out.print(self._plain_progress())

    def _report(self, it: Iteration, r: RunRow, d: float) -> None:
        retried = f" (retried: lost on {', '.join(r.tried_on)})" if r.attempts > 1 else ""
        line = (f"[{_fmt(self.spent())}] #{it.index} {it.workload} {it.variant} {schedule_tag(it.schedule)} seed "
                f"{it.seed} {_fmt(d)} on {r.host}{retried}: {r.status.upper()} {r.verdict_text}; "
                f"{_rate(r.total_ops_per_s)} ops/s; findings so far {self.findings}")
        if self._live is not None:
            if r.status not in PASSING or r.attempts > 1:
                self._live.console.print(Text(line, style="bold red" if r.status not in PASSING else "yellow"))
            self._refresh(force=True)
        else:
            self.out.print(line)
        self._write_progress()

    def _rate_words(self) -> str:
        hit, n = self._detection()
        return f"detection {100 * hit / n:.0f}% ({hit}/{n} buggy iterations)" if n else "detection -"

    def _plain_progress(self) -> str:
        hosts = self._hosts()
        per = "; ".join(f"{h}: running {','.join(f'#{i}' for i in v.running) or '-'}, done {v.done}, failed "
                        f"{v.failed}, errors {v.errors}" for h, v in hosts.items())
        return (f"[{_fmt(self.spent())}] campaign {self.id}: {len(self.rows)} done, {len(self.pending)} in flight, "
                f"{self._rate_words()}; {per}")

    def _view(self) -> Any:
        head = Text(f"campaign {self.id}  elapsed {_fmt(self.spent())} of {self._bound_words()}  iterations "
                    f"{len(self.rows)} done, {len(self.pending)} in flight  findings so far {self.findings}  "
                    f"{self._rate_words()}", style="bold")
        t = Table(box=None, pad_edge=False, header_style="bold")
        for c in ("host", "running", "done", "passed", "failed", "harness errors", "retried here"):
            t.add_column(c, overflow="fold")
        for h, v in self._hosts().items():
            t.add_row(h, " ".join(f"#{i}" for i in v.running) or "-", str(v.done), str(v.passed), str(v.failed),
                      str(v.errors), str(v.retried))
        return Group(head, t)

    def timing_summary(self) -> dict:
        """Medians over this session's iterations: the driver's wall from dispatch to recorded
        (``driver_s``), the task on its host (``task_s``), the ``stress run`` child in it
        (``child_s``), the record's bytes; ``overhead_s``: driver minus child (Ray dispatch,
        record transfer, writing and ingesting the record)."""
        def med(xs: list) -> float | None:
            xs = sorted(x for x in xs if x is not None)
            return xs[len(xs) // 2] if xs else None
        ts = self.timings
        return {"iterations": len(ts), "driver_s": med([t["driver_s"] for t in ts]),
                "task_s": med([t["task_s"] for t in ts]), "child_s": med([t["child_s"] for t in ts]),
                "overhead_s": med([t["driver_s"] - t["child_s"] for t in ts if t["child_s"] is not None]),
                "record_bytes": med([t["bytes"] for t in ts])}

    def _write_progress(self, final: bool = False) -> None:
        """``<out>/<campaign-id>/progress.json``: what the live view shows, for a watcher."""
        hit, n = self._detection()
        doc = {"campaign": self.id, "updated_at": time.time(), "final": final, "spent_s": self.spent(),
               "done": len(self.rows), "in_flight": len(self.pending),
               "detection": {"detected": hit, "buggy_iterations": n},
               "running": [{"iteration": i, "hostname": h, "node": nd, "host": self._label(h, nd), "since": t}
                           for i, (h, nd, t) in sorted(self.running.items())],
               "hosts": {h: {"running": v.running, "done": v.done, "passed": v.passed, "failed": v.failed,
                             "errors": v.errors, "retried_here": v.retried} for h, v in self._hosts().items()},
               "timings": self.timing_summary()}
        path = os.path.join(self.dir, "progress.json")
        try:
            with open(path + ".tmp", "w") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(path + ".tmp", path)
        except OSError:
            pass


def _is_system_failure(ray: Any, e: BaseException | None) -> bool:
    ex = ray.exceptions
    kinds = tuple(k for k in (getattr(ex, n, None) for n in ("WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                                                              "OwnerDiedError", "RaySystemError",
                                                              "LocalRayletDiedError")) if k)
    return isinstance(e, kinds)


def _write_files(run_dir: str, files: dict[str, bytes]) -> None:
    """A record's run directory on the driver's disk (a second delivery replaces the first)."""
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    for rel, data in files.items():
        rel = os.path.normpath(rel)
        if rel.startswith("..") or os.path.isabs(rel):
            continue
        path = os.path.join(run_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


# -- entry points (called by the CLI) -------------------------------------------------------------
def new_campaign_id() -> str:
    return f"campaign-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"


def campaign_command(plan: Plan, retries: int, cluster: str | None) -> str:
    extra = (["--retries", str(retries)] if retries != DEFAULT_RETRIES else []) + (["--cluster", cluster]
                                                                                   if cluster else [])
    cmd = soak_command(plan, "campaign", extra)
    if not math.isfinite(plan.duration_s):  # bounded by --iterations only
        words = shlex.split(cmd)
        i = words.index("--duration")
        del words[i:i + 2]
        cmd = shlex.join(words)
    return cmd


def start(store: Store, plan: Plan, found: dict[str, Found], cluster: str | None, retries: int = DEFAULT_RETRIES,
          junit_xml: str | None = None) -> int:
    ray, where = connect(cluster)
    try:
        cid = new_campaign_id()
        plan_d = dict(plan.as_dict(), retries=retries)
        store.begin_soak(cid, plan_d, campaign_command(plan, retries, cluster), plan.out, plan.duration_s,
                         kind="campaign")
        store.claim_soak(cid, os.getpid(), socket.gethostname())
        code = Campaign(store, cid, plan, found, False, ray, where, retries).run()
    finally:
        _shutdown(ray)
    _junit(store, cid, junit_xml)
    return code


def resume(store: Store, ident: str, cluster: str | None, junit_xml: str | None = None) -> int:
    s, done = open_to_resume(store, ident, "campaign", "(see: stress runs --soak ID)", junit_xml)
    if done is not None:
        return done
    plan = Plan.from_dict(s["plan"])
    retries = int(s["plan"].get("retries", DEFAULT_RETRIES))
    found = check_plan(plan)
    ray, where = connect(cluster)
    try:
        store.mark_soak(s["id"], "running")
        store.claim_soak(s["id"], os.getpid(), socket.gethostname(), resumed=True)
        code = Campaign(store, s["id"], plan, found, True, ray, where, retries).run()
    finally:
        _shutdown(ray)
    _junit(store, s["id"], junit_xml)
    return code
