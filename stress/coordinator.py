"""The coordinator: one run from configuration to verdict.

Order of work: validate (done by the caller, before this) -> sweep orphans of killed runs
-> write the run directory's config -> create the arena -> fork the workers -> start them
together -> loop (collect findings, watchdog scans, stop-the-world invariant checks,
metrics, console) until the duration, a finding that ends the run, Ctrl-C, SIGTERM or a
worker's death -> stop the workers (they leave even a lock wait when asked) -> kill
stragglers -> write results -> unlink every IPC object. The teardown runs on every path.

Controlled mode (``--schedule pct|random``, :mod:`stress.schedule`): the scheduler's
configuration (and a replay's script) is written into the arena before the fork; once every
worker has joined the schedule the coordinator hands out the first token, and afterwards
only watches: a worker that dies holding the token has it handed on for it; a step at
which no thread can run (``SC_STUCK``) is a frozen state, scanned and reported at once;
the scheduler itself checks invariants and ends the run at a finding or its step budget.
The recorded schedule is saved as ``schedule.bin`` and described in ``summary.json``.

Reboots: a model fault where the hypervisor panics (a NULL dereference: ``shm_model.cpu.Panic``) ends
the *boot*: the faulting worker raises ``H_STOP`` to ``STOP_PANIC`` and every worker leaves.
If the fault's finding does not end the run (the variant still looks for another outcome, or
the fault is known), the coordinator reboots the model as syzkaller reboots its VM: the same
arena reset to its first state (``World.reboot``), new workers, the next boot's seed
(``world.boot_seed``); the lock-class graph, statistics and traces go on. So a fault's
aftermath is never taken for the protocol's behaviour, and what the run still looks for is
looked for on a fresh machine. Each boot is a run of its own seed from the start: findings of
boot k > 0 say so, and ``stress replay`` replays the last boot (the run-ending finding's).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import multiprocess

from shm_model.arena import (H_PARK, H_START_NS, H_STOP, SC_CUR, SC_DONE, SC_STUCK, STOP_PANIC, W_PARK_ACK, W_PID,
                             WS_EXITED, WS_FAILED, W_STATE, sweep_orphans)

from .console import Console
from .evidence import full_trace, snapshot_traces, subject_events
from .findings import Finding
from .invariants import check as check_invariants
from .loader import Found
from .metrics import Snapshot, class_graph, class_histograms, snapshot
from .results import RunDir
from . import schedule as sch
from .splat import render
from .verdict import EXIT_HARNESS, EXIT_SIGINT, EXIT_SIGTERM, Verdict, judge
from .watchdog import Watchdog
from .workload import Counts
from .world import RunConfig, World, boot_seed, make_workload_instance
from .worker import worker_main

TICK_S = 0.01
WATCH_EVERY_S = 0.05
METRICS_EVERY_S = 1.0
UI_EVERY_S = 0.25
PARK_TIMEOUT_S = 0.1  # a worker that cannot park in 100 ms is blocked: the watchdog speaks to it
START_TIMEOUT_S = 20.0
STOP_GRACE_S = 3.0
PARKED = "checked with every worker parked at a safe point"
INTERLEAVING_TAIL = 400  # controlled runs keep the last events of all workers, merged


def _combine_model(before: dict, now: dict) -> dict:
    """The workload's summary over a run's boots: numbers are counters and add up, except
    under a key that names a maximum (the word "max"), which keeps the largest; anything else
    (text, a table) is the last boot's."""
    out = dict(now)
    for k, v in before.items():
        w = now.get(k)
        if isinstance(v, (int, float)) and isinstance(w, (int, float)) and not isinstance(v, bool):
            out[k] = max(v, w) if re.search(r"\bmax\b", k) else v + w
        elif k not in now:
            out[k] = v
    return out


@dataclass
class RunResult:
    run_id: str
    run_dir: str
    verdict: Verdict | None
    exit_code: int
    stop_reason: str
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class Run:
    def __init__(self, found: Found, cfg: RunConfig, counts: Counts, console: Console,
                 script: list[int] | None = None) -> None:
        self.found = found
        self.cfg = cfg
        self.counts = counts
        self.console = console
        self.world = World(found, cfg, counts)  # validates sizes; creates nothing yet
        self.variant = found.cls.variant_named(cfg.variant)
        self.findings: list[Finding] = []
        self._signatures: set[str] = set()
        self._seen_files: set[str] = set()
        self.stop_reason = ""
        self.message = ""
        self.procs: list[Any] = []
        self.dead: dict[int, int] = {}
        self.exits: dict[int, str] = {}
        self.t0 = 0.0
        self.t_stop = 0.0  # when the workers were told to stop
        self.t0_ns = 0
        self.checks = 0
        self.checks_skipped = 0
        self.startup_s = 0.0
        self.rundir: RunDir | None = None
        self.roster: dict[int, str] = {}
        self.script = script or []  # a replay's recorded choices (run-length encoded)
        self.sched_cfg: sch.SchedConfig | None = None
        self.sched: sch.Controlled | None = None  # the coordinator's hand in controlled mode
        self.token_out = False  # the first token was handed out
        self.stuck_seen = False
        self.schedule_info: sch.ScheduleInfo | None = None
        self.seed0 = cfg.seed  # the run's seed; cfg.seed is the current boot's
        self.boots: list[dict] = []  # each reboot: boot number, seed, when, after which fault
        self.last_panic = ""
        self.watchdog_scans = 0  # scans of the boots before this one
        self.model_before: dict = {}  # the workload's summary over the boots before this one

    # -- public -----------------------------------------------------------------------------------
    def execute(self) -> RunResult:
        sweep_orphans()
        cfg = self.cfg
        self.rundir = RunDir(cfg.out, cfg.run_id)
        self.rundir.write_json("config.json", {
            **cfg.as_dict(), "workload_source": self.found.source, "variant_provenance": self.variant.provenance,
            "expected": list(self.variant.outcomes), "python": os.sys.version.split()[0],
            "started_at": time.time(), "host": os.uname().nodename})
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        last: Snapshot | None = None
        try:
            self.world.create()
            self._start()
            if not self.stop_reason:
                last = self._loop()
        except Exception as e:  # a harness bug: say so, keep what we have
            self.stop_reason = self.stop_reason or "harness-error"
            self.message = f"harness error: {type(e).__name__}: {e}"
            self.rundir.text("harness-error.txt", traceback.format_exc())
        finally:
            last = self._teardown(last)
            for s, h in old.items():
                signal.signal(s, h)
        return self._finish(last)

    @property
    def boot(self) -> int:
        """Which boot of the model runs now (0: the first; see the module's doc on reboots)."""
        return self.world.boot

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_reason = "interrupted" if signum == signal.SIGINT else "terminated"

    # -- start ------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._boot_model()
        self._spawn()
        if self.stop_reason:
            return
        self.t0 = time.monotonic()
        self.t0_ns = time.monotonic_ns()
        self.world.mv[H_START_NS] = self.t0_ns
        self.console.begin(self._header())

    def _boot_model(self) -> None:
        """The workload's own setup of a fresh state, and the controlled scheduler's region."""
        world = self.world
        wl = make_workload_instance(world.cls, self.cfg.variant, world.opts)
        world.workload = wl  # type: ignore[attr-defined]
        wl.setup(world.state)
        if self.cfg.controlled:
            self._configure_schedule()

    def _spawn(self) -> None:
        """Fork the workers and wait until each has published its pid."""
        world = self.world
        ctx = multiprocess.get_context("fork")
        world.resolver.resolve(1 << 16)  # index the model's code once, before fork: workers inherit it
        gc.collect()
        gc.freeze()  # forked workers then do not copy pages the collector would touch
        t = time.monotonic()
        for w in range(world.geo.n_workers):
            p = ctx.Process(target=worker_main, args=(world, w, self.rundir.findings_dir), daemon=True,
                            name=f"stress-worker-{w}")
            p.start()
            self.procs.append(p)
        mv = world.mv
        deadline = t + START_TIMEOUT_S
        while any(mv[world.geo.wslot(w) + W_PID] == 0 for w in range(world.geo.n_workers)):
            if time.monotonic() > deadline or self.stop_reason:
                self.stop_reason = self.stop_reason or "harness-error"
                self.message = self.message or "workers did not start in time"
                return
            if any(p.exitcode is not None for p in self.procs):
                self.stop_reason = "harness-error"
                self.message = "a worker exited during start-up"
                return
            time.sleep(0.001)
        if not self.boot:
            self.startup_s = time.monotonic() - t
        for w, info in enumerate(world.workers):
            info.pid = self.procs[w].pid
            self.roster[w] = info.label()

    def _reboot(self) -> None:
        """A worker's fault ended this boot (the hypervisor panics there): collect its findings; unless
        one ends the run, reset the world and start the next boot (see the module's doc)."""
        world, mv = self.world, self.world.mv
        self._stop_workers()
        self._collect()
        if self.stop_reason:
            return
        seed = boot_seed(self.seed0, self.boot + 1)
        at = time.monotonic() - self.t0
        self.boots.append({"boot": self.boot + 1, "seed": seed, "at_s": round(at, 3), "after": self.last_panic})
        self.cfg.seed = seed  # the workers' and the scheduler's seeds (the world shares this config)
        self.model_before = self._model_summary()  # this boot's counters, before its state is reset
        world.reboot()  # the next boot (world.boot)
        self.procs, self.dead, self.exits = [], {}, {}
        self.token_out = self.stuck_seen = False
        self._boot_model()
        self._spawn()
        if self.stop_reason:
            return
        mv[H_START_NS] = time.monotonic_ns()
        self.watchdog_scans += self.watchdog.scans
        self.watchdog = self._new_watchdog()
        self.console.print(f"reboot: {self.last_panic or 'a fault'} ended boot {self.boot - 1} at {at:.3f} s "
                           f"(the hypervisor panics there); boot {self.boot} starts from the first state with seed {seed}",
                           style="yellow")

    def _check_interval(self) -> float:
        ci = self.cfg.check_interval
        return float(self.world.cls.check_interval if ci is None else ci)

    def _configure_schedule(self) -> None:
        c, world = self.cfg, self.world
        check_ns = int(self._check_interval() * 1e9) if world.cls.invariants() else 0
        if c.check_interval is None:  # the scheduler's default: at least every CHECK_STEPS steps
            check_ns = min(check_ns, sch.CHECK_STEPS * c.step_ns)
        self.sched_cfg = sch.SchedConfig(
            policy=c.schedule, seed=c.seed, depth=c.pct_depth, k=c.pct_steps or sch.DEFAULT_K, step_ns=c.step_ns,
            check_ns=check_ns, max_steps=c.steps, script=self.script,
            fallback="steady" if c.script_mode == "shrink" else "", lenient=c.script_mode == "shrink")
        sch.configure(world.mv, world.geo, self.sched_cfg)
        self.sched = sch.Controlled(world, -1)

    def _header(self) -> str:
        c = self.cfg
        roles = ", ".join(f"{r}×{n}" for r, n in c.counts.items())
        how = f"noise {c.noise:g}"
        if c.controlled:
            how = f"schedule {c.schedule}" + (f" (depth {c.pct_depth}, {self.sched_cfg.k} steps a round)"
                                               if c.schedule == "pct" and self.sched_cfg else "")
            if c.replay_of:
                how += f", replaying {c.replay_of} ({len(self.script)} recorded runs of choices)"
        return (f"stress: {c.workload} --variant {c.variant} (expect {' or '.join(self.variant.outcomes)}) "
                f"seed {c.seed}, {how}, {c.duration:g}s, {roles}; started {self.world.geo.n_workers} workers "
                f"in {self.startup_s * 1e3:.0f} ms; run {c.run_id}")

    # -- main loop --------------------------------------------------------------------------------
    def _loop(self) -> Snapshot:
        world, mv = self.world, self.world.mv
        self.watchdog = self._new_watchdog()
        invariants = world.cls.invariants()
        interval = self._check_interval()
        next_watch = next_metrics = next_ui = time.monotonic()
        next_check = self.t0 + interval if invariants and interval > 0 else float("inf")
        if self.cfg.controlled:
            next_check = float("inf")  # the scheduler checks them itself, at drained safe points
        snap = snapshot(world, 0.0)
        while True:
            now = time.monotonic()
            elapsed = now - self.t0
            if self.stop_reason:
                break
            if elapsed >= self.cfg.duration:
                self.stop_reason = "duration"
                break
            self._collect()
            watchdog = self.watchdog
            alive = [p.exitcode is None for p in self.procs]
            died = [w for w, a in enumerate(alive) if not a and w not in self.dead]
            for w in died:
                self.exits[w] = self._exit_text(w)
            if self.sched is not None:
                self._steer(alive, died, watchdog)
            halt = mv[H_STOP]  # read once: a worker may raise it at any time
            if halt == STOP_PANIC:  # a fault ended this boot: reboot, unless its finding ends the run
                self._reboot()
                if self.stop_reason:
                    break
                continue
            if halt:  # a controlled run's scheduler ended it at a step: the exits that follow are orderly
                self._collect()
                if not self.stop_reason:
                    done = mv[self.world.geo.sched + SC_DONE]
                    self.stop_reason = "steps" if done == sch.DONE_STEPS else "finding"
                break
            if died or now >= next_watch:
                next_watch = now + WATCH_EVERY_S
                for f in watchdog.scan(alive):
                    if f.outcome == "held-by-dead-worker":
                        f.details["exit"] = self.exits.get(f.details["dead"], "")
                    self._add(f, world_traces=True)
            for w in died:
                self._on_death(w)
            if self.stop_reason:
                break
            # sample before a stop-the-world check, never right after one: the workers are
            # then doing their work, not still leaving the park (issue 19's 8 in 10 frames)
            if now >= next_metrics:
                next_metrics = now + METRICS_EVERY_S
                snap = snapshot(world, elapsed)
                self.rundir.metrics(snap.as_dict())
            if now >= next_ui:
                next_ui = now + UI_EVERY_S
                snap = snapshot(world, elapsed)
                self.console.update(snap, elapsed, self.cfg.duration, len(self._decisive()))
            if now >= next_check:
                self._check(invariants)
                next_check = time.monotonic() + interval
            time.sleep(TICK_S)
        return snap

    def _new_watchdog(self) -> Watchdog:
        world, mv = self.world, self.world.mv
        return Watchdog(world, self.cfg.hung_timeout,
                        runner=(lambda: mv[world.geo.sched + SC_CUR]) if self.cfg.controlled else None)

    def _steer(self, alive: list[bool], died: list[int], watchdog: Watchdog) -> None:
        """Controlled mode: the first token, a dead holder's token, a frozen state."""
        mv, s, sched = self.world.mv, self.world.geo.sched, self.sched
        for w in died:
            sched.mark_gone(w)
            if self.token_out and mv[s + SC_CUR] == w and not mv[H_STOP]:
                sched.hand_on()  # it died holding the run token: the others go on
        if not self.token_out and sched.all_in(alive):
            self.token_out = True
            sched.hand_on()
        if mv[s + SC_STUCK] and not self.stuck_seen:
            # no thread can run: the state is frozen, so what the watchdog sees now is final
            self.stuck_seen = True
            found = watchdog.scan(alive, settled=True)
            for f in found:
                if f.outcome == "held-by-dead-worker":
                    f.details["exit"] = self.exits.get(f.details["dead"], "")
                f.details.setdefault("step", mv[s + SC_STUCK])
                self._add(f, world_traces=True)
            if not any(f.ends_run for f in found):
                self.stop_reason = self.stop_reason or "stuck"
                self.message = self.message or (f"no worker could run at step {mv[s + SC_STUCK]}, "
                                                "and the wait-for graph shows no cycle")
        # the run's end at a finding or the step budget: the loop's H_STOP check

    def _decisive(self) -> list[Finding]:
        return [f for f in self.findings if not f.info and not f.known]

    def _exit_text(self, w: int) -> str:
        code = self.procs[w].exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def _on_death(self, w: int) -> None:
        code = self.procs[w].exitcode
        self.dead[w] = code
        if code in (0, 1) and self.world.mv[self.world.geo.wslot(w) + W_STATE] in (WS_EXITED, WS_FAILED):
            return  # a crash the worker reported itself, or an orderly exit
        how = self.exits.get(w) or self._exit_text(w)
        if any(f.outcome == "held-by-dead-worker" and f.details.get("dead") == w for f in self.findings):
            return  # reported with its locks: that is the finding
        self.stop_reason = "worker-died"
        self.message = (f"{self.roster.get(w, f'worker {w}')} was {how} holding no lock; "
                        f"run stopped, partial results kept")

    # -- findings ---------------------------------------------------------------------------------
    def _collect(self) -> None:
        d = self.rundir.findings_dir
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".json") and n not in self._seen_files)
        except FileNotFoundError:
            return
        import json
        for n in names:
            self._seen_files.add(n)
            try:
                with open(os.path.join(d, n)) as fh:
                    f = Finding.from_dict(json.load(fh))
            except (OSError, ValueError, TypeError) as e:
                self.message = f"unreadable finding file {n}: {e}"
                continue
            self._add(f)

    def _add(self, f: Finding, world_traces: bool = False) -> None:
        if f.details.get("panic"):
            self.last_panic = f"{f.title} ({self.roster.get(f.worker, f'worker {f.worker}')})"
        if f.signature and f.signature in self._signatures:
            return
        self._signatures.add(f.signature)
        f.known = self.variant.known.get(f.outcome, "")
        if self.boot:  # a finding of a later boot: the seed that starts a run there
            f.details.setdefault("boot", self.boot)
            f.details.setdefault("boot_seed", self.cfg.seed)
        if "subject" in f.details and "subject_events" not in f.details and self.world.arena is not None:
            # a finding about one subject (an IRQ): its history from every worker
            f.details["subject_events"] = [e for e in subject_events(self.world, f.details["subject"],
                                                                     tuple(self.world.cls.key_events))
                                           if not f.t_ns or e["t_ns"] <= f.t_ns]  # what led to it
        if world_traces:
            f.traces = snapshot_traces(self.world)
        f.since_start_s = max(0.0, (f.t_ns - self.t0_ns) / 1e9) if self.t0_ns else 0.0
        stops = False
        if f.ends_run and not self.stop_reason:
            expected = set(self.variant.outcomes)
            seen = {x.outcome for x in self.findings if not x.info} | {f.outcome}
            stops = not (getattr(self.variant, "stop", "first") == "all" and f.outcome in expected
                         and not expected <= seen)  # else an expected outcome is still missing: the run goes on
        if "step" in f.details:  # a controlled run's finding: the command that replays its schedule
            out = os.path.dirname(self.rundir.path) if self.rundir else ""
            if stops or not self.world.heaps:  # the last boot (a world without a heap never reboots)
                f.details.setdefault("replay", f"stress replay {self.cfg.run_id}"
                                     + (f" --out {out}" if out not in ("", "stress-runs") else ""))
            else:  # a reboot may follow: its boot is a run of its own seed, which repeats it exactly
                f.details.setdefault("replay", f"a run with this run's options and --seed {self.cfg.seed}")
        f.text = render(f, self.roster)
        self.findings.append(f)
        note = f"known for this variant: {f.known}\n" if f.known else ""
        self.console.finding(f.text + note + f"(found {f.since_start_s:.3f} s after start)\n", info=f.info or bool(f.known))
        self.rundir.finding(f.as_dict())
        self.rundir.text("report.txt", f.text + "\n")
        if stops:
            self.stop_reason = "finding"

    # -- stop-the-world checks --------------------------------------------------------------------
    def _check(self, invariants: dict) -> None:
        world, mv, geo = self.world, self.world.mv, self.world.geo
        seq = mv[H_PARK] + 1
        if seq % 2 == 0:
            seq += 1
        mv[H_PARK] = seq
        deadline = time.monotonic() + PARK_TIMEOUT_S
        try:
            while True:
                pending = [w for w in range(geo.n_workers)
                           if self.procs[w].exitcode is None and mv[geo.wslot(w) + W_PARK_ACK] != seq]
                if not pending:
                    break
                if time.monotonic() > deadline or self.stop_reason:
                    self.checks_skipped += 1  # someone is blocked: the watchdog speaks to that
                    return
                time.sleep(0.0002)
            if mv[H_STOP]:
                return  # a fault ended this boot (the hypervisor panics there): that state is not checked
            self.checks += 1
            for f in check_invariants(world, invariants, self.checks, PARKED):
                self._add(f, world_traces=True)
        finally:
            mv[H_PARK] = seq + 1

    # -- teardown ---------------------------------------------------------------------------------
    def _teardown(self, last: Snapshot | None) -> Snapshot | None:
        world = self.world
        self.console.end()
        try:
            if world.arena is not None:
                mv = world.mv
                mv[H_STOP] = 1
                self.t_stop = time.monotonic()  # the run's length ends here, not after the dumps
                self._stop_workers()
                if self.rundir is not None:
                    self._save_results()
        except Exception as e:  # results are best effort; the unlink below is not
            self.message = self.message or f"harness error while saving results: {type(e).__name__}: {e}"
            if self.rundir is not None:
                self.rundir.text("harness-error.txt", traceback.format_exc())
        finally:
            world.destroy()
            gc.unfreeze()
        return getattr(self, "_last", last)

    def _stop_workers(self) -> None:
        """Every worker leaves (``H_STOP`` is set): wake the stopped, wait the grace, kill the rest."""
        mv = self.world.mv
        mv[H_STOP] = mv[H_STOP] or 1
        mv[H_PARK] = mv[H_PARK] + (mv[H_PARK] & 1)
        for p in self.procs:  # a stopped worker (SIGSTOP) would sit out the grace period
            if p.exitcode is None and p.pid:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
                p.join(1.0)

    def _save_results(self) -> None:
        world = self.world
        self._collect()
        self._last = snapshot(world, self._elapsed())
        self.rundir.metrics(self._last.as_dict())
        self.model_summary = self._model_summary()
        self.graph = class_graph(world)
        self.histograms = class_histograms(world)
        self.overruns = 0
        tails: list[dict] = []
        for w, info in enumerate(world.workers):
            events, overrun = full_trace(world, w)
            self.overruns += overrun
            self.rundir.trace(w, info.label(), events, overrun)
            if self.cfg.controlled:
                tails.extend(dict(e, worker=w) for e in events[-INTERLEAVING_TAIL:])
        if self.cfg.controlled:
            # one worker ran at a time: the merged tails in time order are the interleaving
            tails.sort(key=lambda e: e["t_ns"])
            ends = [f.t_ns for f in self.findings if f.ends_run and f.t_ns]
            self.rundir.write_json("interleaving.json", {
                "workers": {str(w): info.label() for w, info in enumerate(world.workers)},
                "end_t_ns": min(ends) if ends else None, "events": tails[-INTERLEAVING_TAIL:]})
        if self.sched_cfg is not None:
            ops = sum(self._last.ops.values())
            roles = world.cls.roles()
            threads = sum(1 + (roles[w.role].isr_fn() is not None) for w in world.workers)
            self.schedule_info = sch.read_info(world, self.sched_cfg, threads, ops, self.cfg.replay_of)
            sch.save(self.rundir.path, sch.read_log(world))

    def _model_summary(self) -> dict:
        try:
            now = dict(self.world.workload.summary(self.world.state))
        except Exception as e:
            now = {"summary error": f"{type(e).__name__}: {e}"}
        self.model_boot = now  # this boot's alone (a replay of the last boot compares with it)
        return _combine_model(self.model_before, now) if self.boot else now

    # -- verdict ----------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds from the workers' start to the stop request (0 if they never started)."""
        if not self.t0:
            return 0.0
        return (self.t_stop or time.monotonic()) - self.t0

    def _finish(self, last: Snapshot | None) -> RunResult:
        cfg = self.cfg
        elapsed = self._elapsed()
        incomplete = ""
        if last is not None and last.capacity_hits:
            incomplete = f"a detector capacity was hit {last.capacity_hits} times"
        if self.schedule_info is not None and self.schedule_info.steps == 0 and not self._decisive():
            incomplete = "the controlled scheduler ran no step (the workers never got the run token)"
        verdict: Verdict | None = None
        code = EXIT_HARNESS
        if self.stop_reason in ("duration", "finding", "steps", "stuck"):
            verdict = judge(self.variant.outcomes, self.findings, incomplete, self.variant.id)
            code = verdict.exit_code
        elif self.stop_reason == "worker-died" and self._decisive():
            verdict = judge(self.variant.outcomes, self.findings, incomplete, self.variant.id)
            code = verdict.exit_code
        elif self.stop_reason == "interrupted":
            code = EXIT_SIGINT
            self.message = self.message or "interrupted (Ctrl-C): run stopped, partial results kept"
        elif self.stop_reason == "terminated":
            code = EXIT_SIGTERM
            self.message = self.message or "terminated (SIGTERM): run stopped, partial results kept"
        summary = self._summary(last, elapsed, verdict, code)
        if self.rundir is not None:
            self.rundir.write_json("summary.json", summary)
            self.rundir.close()
        return RunResult(cfg.run_id, self.rundir.path if self.rundir else "", verdict, code, self.stop_reason,
                         self.findings, summary, self.message)

    def _summary(self, last: Snapshot | None, elapsed: float, verdict: Verdict | None, code: int) -> dict:
        s: dict[str, Any] = {
            "run_id": self.cfg.run_id, "workload": self.cfg.workload, "variant": self.cfg.variant,
            "provenance": self.variant.provenance, "expected": list(self.variant.outcomes),
            "seed": self.cfg.seed, "stop_reason": self.stop_reason, "message": self.message,
            "elapsed_s": round(elapsed, 3), "startup_s": round(self.startup_s, 4), "exit_code": code,
            "verdict": None if verdict is None else {"status": verdict.status, "text": verdict.text,
                                                     "headline": verdict.headline, "match": verdict.match,
                                                     "known": verdict.known, "info": verdict.info,
                                                     "found": list(verdict.found)},
            "command": self.cfg.command, "run_dir": self.rundir.path if self.rundir else "",
            "findings": [{"outcome": f.outcome, "title": f.title, "since_start_s": round(f.since_start_s, 4),
                          "info": f.info, "known": bool(f.known), "signature": f.signature,
                          **({"step": f.details["step"]} if "step" in f.details else {}),
                          **({"boot": f.details["boot"]} if "boot" in f.details else {})} for f in self.findings],
            "invariant_checks": self.checks, "invariant_checks_skipped": self.checks_skipped,
            "model": getattr(self, "model_summary", {}), "workers": dict(self.cfg.counts),
            "graph": getattr(self, "graph", {"classes": [], "edges": []}),
            "schedule": self.schedule_info.as_dict() if self.schedule_info is not None else {"policy": "free"},
        }
        if self.boots:  # the model rebooted after faults where the hypervisor panics: each boot's seed
            s["boots"] = self.boots
            s["model_last_boot"] = getattr(self, "model_boot", {})
        if last is not None:
            dur = max(elapsed, 1e-9)
            s["ops"] = last.ops
            s["ops_per_s"] = {k: round(v / dur, 1) for k, v in last.ops.items()}
            s["total_ops_per_s"] = round(last.total_ops / dur, 1)
            s["irqs_handled"] = last.irqs
            hists = getattr(self, "histograms", {})
            s["locks"] = [{"class": c.cls, "acquisitions": c.acquisitions, "contended": c.contended,
                           "contended_pct": round(c.contended_pct, 2), "wait_max_us": round(c.wait_max_ns / 1e3, 1),
                           "hold_max_us": round(c.hold_max_ns / 1e3, 1),
                           "wait_avg_us": round(c.wait_ns / c.contended / 1e3, 1) if c.contended else 0.0,
                           "hold_hist": hists.get(c.cls, {}).get("hold", []),
                           "wait_hist": hists.get(c.cls, {}).get("wait", []),
                           # a reader-writer lock's share of reads (the rest are writes)
                           **({"reads": c.read_acquisitions, "reads_contended": c.read_contended}
                              if c.read_acquisitions else {})}
                          for c in last.classes]
            s["detectors"] = {"classes": len(self.world.class_names), "edges": last.edges,
                              "chains_checked": last.chain_misses, "acquisitions": last.acquisitions,
                              "chain_cache_hit_rate": round(last.cache_hit_rate, 5),
                              "watchdog_scans": self.watchdog_scans + getattr(getattr(self, "watchdog", None), "scans", 0),
                              "capacity_hits": last.capacity_hits,
                              "trace_overruns": getattr(self, "overruns", 0)}
            if last.heaps:  # each pool's counters; an exhausted one refused allocations (never silent)
                s["detectors"]["heaps"] = last.heaps
        return s
