"""``stress report``: one self-contained HTML file for a run or a soak, read from the store.

The page opens offline: CSS inline, charts as inline SVG (matplotlib, text kept as text),
the class graph and the swimlanes as SVG laid out here, no script and no external
reference. Templates are jinja2 with autoescape on and ``StrictUndefined``: every string
that came from a workload or a trace is shown as text. The order is Locust's: verdict and
statistics first, findings next, charts after.

Reports read only the store (:class:`stress.store.Store`); the run directory it points at
is read when it is still there, for what the store does not keep (each finding's time,
the workers' last state), and missed quietly when it is gone.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
import time
from typing import Any

import jinja2

from stress.store import RunRow, Store, StoreError, host_stats

from . import plots
from .svg import class_graph_svg, swimlane_svg

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: findings rendered in full in a soak report (one per distinct finding); the rest are listed
SOAK_FULL_FINDINGS = 24

__all__ = ["write_report", "render_run", "render_soak"]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def write_report(db_path: str, target: str | None, out_path: str) -> str:
    """Render the run or soak ``target`` (an id, a unique prefix of one, or None for the
    latest) from the store at ``db_path`` into ``out_path`` atomically; return the path."""
    if not os.path.exists(db_path):
        raise StoreError(f"no store at {db_path} (run something first, or give --db)")
    with Store(db_path) as store:
        kind, ident = store.latest() if target is None else store.kind_of(target)
        html = render_soak(store, ident) if kind == "soak" else render_run(store, ident)
    out_path = os.path.abspath(out_path)
    d = os.path.dirname(out_path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html.tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out_path


def render_run(store: Store, run_id: str) -> str:
    """The HTML report of one run."""
    ctx = _run_context(store, run_id)
    return _env().get_template("run.html").render(**ctx, generated=_now())


def render_soak(store: Store, soak_id: str) -> str:
    """The HTML report of one soak: its iterations, detection rate per variant, trends."""
    ctx = _soak_context(store, soak_id)
    return _env().get_template("soak.html").render(**ctx, generated=_now())


# --------------------------------------------------------------------------------------------
# jinja2
# --------------------------------------------------------------------------------------------

_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                 keep_trailing_newline=False)
        env.filters.update(num=fmt_num, secs=fmt_secs, when=fmt_when, us=fmt_us, rate=fmt_rate,
                           pct=fmt_pct, clock=fmt_clock)
        _ENV = env
    return _ENV


def _now() -> str:
    return fmt_when(time.time())


def fmt_num(v: Any) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return str(v)


def fmt_rate(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def fmt_us(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    return f"{v:,.0f}" if v >= 1000 else f"{v:,.1f}"


def fmt_pct(v: Any) -> str:
    if v is None:
        return "–"
    return f"{100.0 * float(v):.0f}%"


def fmt_secs(v: Any) -> str:
    """0.0038 -> '3.8 ms', 12.3 -> '12.3 s', 3725 -> '1 h 02 min'."""
    if v is None:
        return "–"
    v = float(v)
    if not math.isfinite(v):  # a campaign bounded by its iterations only
        return "no time limit"
    if v < 0.001:
        return f"{v * 1e6:.0f} µs"
    if v < 1:
        return f"{v * 1000:.1f} ms"
    if v < 120:
        return f"{v:.2f} s" if v < 10 else f"{v:.1f} s"
    if v < 3600:
        return f"{int(v // 60)} min {int(v % 60):02d} s"
    return f"{int(v // 3600)} h {int(v % 3600 // 60):02d} min"


def fmt_clock(v: Any) -> str:
    """Seconds since a start as +h:mm:ss."""
    if v is None:
        return "–"
    v = max(0, int(round(float(v))))
    return f"+{v // 3600}:{v % 3600 // 60:02d}:{v % 60:02d}"


def fmt_when(ts: Any) -> str:
    if ts is None:
        return "–"
    try:
        return _dt.datetime.fromtimestamp(float(ts)).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    except (OverflowError, OSError, ValueError):
        return str(ts)


# --------------------------------------------------------------------------------------------
# reading what the store does not keep from the run directory (when it is still there)
# --------------------------------------------------------------------------------------------

def _tail_jsonl(path: str, max_bytes: int = 262144) -> dict | None:
    """The last complete JSON line of a file, reading at most its last ``max_bytes``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            chunk = fh.read()
    except OSError:
        return None
    for line in reversed(chunk.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            return d
    return None


def _read_jsonl(path: str) -> list[dict]:
    out: list[dict] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if isinstance(d, dict):
                    out.append(d)
    except OSError:
        pass
    return out


_WHO = re.compile(r"worker (\d+) \(([^(),]+), pid (\d+)\)")
_EVLINE = re.compile(r"^\s+([+-]\d+\.\d+) ms\s+(task|irq)\s+(\S+)\s+(.*?)\s*$")


def _roster(run_dir: str, findings: list[dict], summary: dict) -> tuple[dict[int, str], list[dict]]:
    """Worker id -> "worker 1 (vcpu, pid 4242)", and the workers' last state (if known)."""
    roster: dict[int, str] = {}
    workers: list[dict] = []
    last = _tail_jsonl(os.path.join(run_dir, "metrics.jsonl")) if run_dir else None
    if last and isinstance(last.get("workers"), list):
        for w in last["workers"]:
            if isinstance(w, dict) and "wid" in w:
                roster[int(w["wid"])] = f"worker {w['wid']} ({w.get('role', '?')}, pid {w.get('pid', '?')})"
                workers.append(w)
    texts = [f.get("text") or "" for f in findings]
    texts += [str(e.get("first_by", "")) for e in (summary.get("graph") or {}).get("edges", [])]
    for t in texts:
        for m in _WHO.finditer(t):
            roster.setdefault(int(m.group(1)), m.group(0))
    return roster, workers


def _finding_times(run_dir: str, findings: list[dict]) -> list[int | None]:
    """Each finding's CLOCK_MONOTONIC time (the store keeps only seconds since the start):
    from findings.jsonl when it is there, otherwise recovered from the rendered text, whose
    trace lines give each event's time relative to the report."""
    out: list[int | None] = [None] * len(findings)
    rows = _read_jsonl(os.path.join(run_dir, "findings.jsonl")) if run_dir else []
    for i, f in enumerate(findings):
        if i < len(rows) and rows[i].get("title") == f.get("title") and isinstance(rows[i].get("t_ns"), int):
            out[i] = rows[i]["t_ns"]
            continue
        traces = f.get("traces") or {}
        section: str | None = None
        for line in (f.get("text") or "").splitlines():
            m = re.match(r"^  worker (\d+)\b.*:$", line)
            if m:
                section = m.group(1)
                continue
            m = _EVLINE.match(line)
            if m and section is not None:
                dt_ms, ctx, kind, text = float(m.group(1)), m.group(2), m.group(3), m.group(4)
                for e in traces.get(section, []):
                    if e.get("kind") == kind and e.get("ctx") == ctx and str(e.get("text", "")).strip() == text:
                        out[i] = int(e["t_ns"] - dt_ms * 1e6)
                        break
                if out[i] is not None:
                    break
    return out


# --------------------------------------------------------------------------------------------
# a run
# --------------------------------------------------------------------------------------------

def _parties(f: dict) -> list[int]:
    d = f.get("details") or {}
    ws: list[int] = []

    def add(owner: Any) -> None:
        if isinstance(owner, int) and owner >= 0 and owner // 2 not in ws:
            ws.append(owner // 2)

    add(d.get("owner"))
    for e in d.get("chain", []) or []:
        if isinstance(e, dict):
            add(e.get("owner"))
    for key in ("members", "blocked", "waiters"):
        for m in d.get(key, []) or []:
            if isinstance(m, dict):
                add(m.get("owner"))
    if isinstance(d.get("holder"), dict):
        add(d["holder"].get("owner"))
    if isinstance(d.get("dead"), int):
        add(2 * d["dead"])
    return ws


def _flags(f: dict, expected: list[str]) -> list[tuple[str, str]]:
    """(css class, words) describing how a finding counts."""
    out = []
    if f.get("info"):
        out.append(("info", "information: does not decide the verdict"))
    if f.get("known"):
        out.append(("known", f"known for this variant: {f['known']}"))
    if f.get("potential"):
        out.append(("potential", "possible deadlock (lockdep WARNING): the run went on"))
    if not f.get("info") and not f.get("known"):
        if f.get("outcome") in expected or expected == ["open"]:
            out.append(("expected", "expected by the variant"))
        else:
            out.append(("unexpected", "not expected by the variant"))
    return out


def _finding_ctx(f: dict, t_ns: int | None, roster: dict[int, str], expected: list[str], uid: str) -> dict:
    traces = f.get("traces") or {}
    parties = _parties(f)
    wids = sorted((int(w) for w in traces if str(w).lstrip("-").isdigit()), key=lambda w: (w not in parties, w))
    t_ref = t_ns or 0
    if not t_ref:
        allt = [e["t_ns"] for evs in traces.values() for e in evs if isinstance(e, dict) and "t_ns" in e]
        t_ref = max(allt) if allt else 0
    lanes = [(roster.get(w, f"worker {w}") + (" ◂" if w in parties else ""), traces.get(str(w), [])) for w in wids]
    d = f.get("details") or {}
    subject = None
    if isinstance(d.get("subject_events"), list) and d["subject_events"]:
        by: dict[int, list[dict]] = {}
        for e in d["subject_events"]:
            if isinstance(e, dict) and isinstance(e.get("worker"), int):
                by.setdefault(e["worker"], []).append(e)
        subject = swimlane_svg([(roster.get(w, f"worker {w}"), by[w]) for w in sorted(by)], t_ref, uid + "-subj",
                               caption=f"the history of {d.get('subject', 'the subject')}: every worker's events about it",
                               keys=True)
    flags = _flags(f, expected)
    kinds = [k for k, _ in flags]
    return {
        "anchor": uid,
        "kind": "unexpected" if "unexpected" in kinds else "expected" if "expected" in kinds else "",
        "seq": f.get("seq", 0),
        "title": f.get("title") or f.get("outcome") or "finding",
        "outcome": f.get("outcome", ""),
        "since_start_s": f.get("since_start_s"),
        "flags": flags,
        "signature": f.get("signature", ""),
        "text": f.get("text") or "",
        "cycle": [str(c) for c in (d.get("cycle") or [])],
        "guarded_by": [str(c) for c in (d.get("guarded_by") or [])],
        "swimlane": swimlane_svg(lanes, t_ref, uid + "-lanes",
                                 caption="last trace events of every worker (◂: a party to the finding)"),
        "subject_swimlane": subject,
        "time_known": bool(t_ns),
    }


def _series(metrics: list[dict]) -> tuple[dict[str, tuple[list[float], list[float]]], tuple[list[float], list[float]],
                                          dict[str, dict[str, list[float]]]]:
    """Cumulative counters -> per-interval rates: ops/s per operation and in total; per
    class the contended %, the mean wait of a contended acquisition, the running maxima."""
    ops: dict[str, tuple[list[float], list[float]]] = {}
    total: tuple[list[float], list[float]] = ([], [])
    per_class: dict[str, dict[str, list[float]]] = {}
    prev: dict | None = None
    for m in metrics:
        t = float(m.get("t_s") or 0.0)
        classes = {str(c.get("cls")): c for c in (m.get("classes") or []) if isinstance(c, dict)}
        for cls, c in classes.items():
            d = per_class.setdefault(cls, {"t": [], "pct": [], "wait_mean_us": [], "t_all": [], "wait_max_us": [],
                                           "hold_max_us": []})
            d["t_all"].append(t)
            d["wait_max_us"].append((c.get("wait_max_ns") or 0) / 1000)
            d["hold_max_us"].append((c.get("hold_max_ns") or 0) / 1000)
        if prev is not None:
            dt = t - prev["t"]
            if dt > 0:
                for op, n in (m.get("ops") or {}).items():
                    p = (prev["ops"] or {}).get(op, 0)
                    xs, ys = ops.setdefault(str(op), ([], []))
                    xs.append(t)
                    ys.append(max(0.0, (n - p) / dt))
                total[0].append(t)
                total[1].append(max(0.0, (m.get("total_ops", 0) - prev["total"]) / dt))
                for cls, c in classes.items():
                    pc = prev["classes"].get(cls)
                    if pc is None:
                        continue
                    d = per_class[cls]
                    dacq = (c.get("acquisitions") or 0) - (pc.get("acquisitions") or 0)
                    dcon = (c.get("contended") or 0) - (pc.get("contended") or 0)
                    dw = (c.get("wait_ns") or 0) - (pc.get("wait_ns") or 0)
                    d["t"].append(t)
                    d["pct"].append(100.0 * dcon / dacq if dacq > 0 else 0.0)
                    d["wait_mean_us"].append(dw / dcon / 1000 if dcon > 0 else math.nan)
        prev = {"t": t, "ops": m.get("ops") or {}, "total": m.get("total_ops", 0), "classes": classes}
    return ops, total, per_class


def _schedule_facts(sc: dict) -> list[tuple[str, str]]:
    """A controlled run's schedule as (label, value) pairs; none for a free run."""
    if sc.get("policy", "free") == "free":
        return []
    facts = [("policy", str(sc["policy"])), ("steps", f"{int(sc.get('steps', 0)):,}"),
             ("hand-overs", f"{int(sc.get('switches', 0)):,}"), ("preemptions", f"{int(sc.get('preemptions', 0)):,}"),
             ("interrupt deliveries", f"{int(sc.get('irqs_delivered', 0)):,}"),
             ("invariant checks", f"{sc.get('checks', 0)} ({sc.get('checks_skipped', 0)} skipped)"),
             ("virtual time", f"{int(sc.get('virtual_ns', 0)) / 1e6:.1f} ms")]
    if sc["policy"] == "pct":
        facts += [("PCT", f"depth {sc.get('depth')}, k = {sc.get('k')} steps a round, {sc.get('rounds')} rounds"),
                  ("bound", f"≥ {float(sc.get('round_bound', 0)):.3g} a round, ≥ {float(sc.get('run_bound', 0)):.3g} "
                            "this run (a given bug of that depth)")]
    if sc.get("replay_of"):
        facts.append(("replay of", str(sc["replay_of"])))
    if sc.get("diverged_step"):
        facts.append(("diverged", f"at step {sc['diverged_step']}: the recording chose {sc.get('diverged_want')}, "
                                  "which could not run; continued under the scheduler"))
    return facts


def _config_rows(config: dict, row: RunRow) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(k: str, v: Any) -> None:
        if v is None or v == "" or v == {} or v == []:
            return
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        rows.append((k, str(v)))

    add("workload", config.get("workload", row.workload))
    add("workload file", config.get("workload_source"))
    add("variant", config.get("variant", row.variant))
    add("provenance", config.get("variant_provenance", row.provenance))
    add("expected", " or ".join(row.expected))
    add("seed", config.get("seed", row.seed))
    add("duration", fmt_secs(config["duration"]) if isinstance(config.get("duration"), (int, float)) else config.get("duration"))
    add("workers", config.get("counts"))
    add("paced rates", config.get("rates"))
    add("noise", config.get("noise"))
    add("workload options", config.get("options"))
    add("trace every lock", "yes" if config.get("trace_locks") else None)
    add("hung-task limit", fmt_secs(config["hung_timeout"]) if isinstance(config.get("hung_timeout"), (int, float)) else None)
    add("started", fmt_when(config.get("started_at", row.started_at)))
    add("host", config.get("host"))
    add("python", config.get("python"))
    add("run directory", row.run_dir)
    known = {"workload", "workload_source", "variant", "variant_provenance", "expected", "seed", "duration", "counts",
             "rates", "noise", "options", "trace_locks", "hung_timeout", "started_at", "host", "python", "run_id",
             "command", "out"}
    for k in sorted(set(config) - known):
        add(k, config[k] if not isinstance(config[k], (dict, list)) or not config[k] else json.dumps(config[k]))
    return rows


def _verdict(row: RunRow, summary: dict) -> dict:
    v = summary.get("verdict") or {}
    det = summary.get("detectors") or {}
    notes = []
    if summary.get("message"):
        notes.append(str(summary["message"]))
    if det.get("capacity_hits"):
        notes.append(f"the detectors hit a capacity limit {det['capacity_hits']} times: the verdict is incomplete")
    if det.get("trace_overruns"):
        notes.append(f"{fmt_num(det['trace_overruns'])} older trace events were overwritten (rings are finite)")
    text = row.verdict_text or v.get("text") or ""
    headline, match = v.get("headline"), v.get("match")
    if not headline and " — " in text:  # a run recorded before the verdict had its parts
        headline, _, match = text.partition(" — ")
    return {
        "status": row.status,
        "text": text,
        # what was found leads, then whether it matched: never "PASS" first for a deadlock
        "headline": headline or text,
        "match": match or "",
        "rest": text[len(f"{headline} — {match}"):].strip() if headline and match else "",
        "bug": bool(v.get("found")),
        "found": [str(x) for x in (v.get("found") or [])],
        "expected": row.expected,
        "stop_reason": row.stop_reason or summary.get("stop_reason", ""),
        "exit_code": row.exit_code,
        "notes": notes,
    }


def _run_context(store: Store, run_id: str, uid: str = "r") -> dict:
    d = store.run_detail(run_id)
    row: RunRow = d["run"]
    config, summary, metrics, findings = d["config"], d["summary"], d["metrics"], d["findings"]
    roster, workers = _roster(row.run_dir, findings, summary)
    times = _finding_times(row.run_dir, findings)
    fctx = [_finding_ctx(f, t, roster, row.expected, f"{uid}-f{f.get('seq', i)}")
            for i, (f, t) in enumerate(zip(findings, times))]

    ops_counts = summary.get("ops") or (metrics[-1]["ops"] if metrics else {})
    ops_rates = summary.get("ops_per_s") or {}
    ops_rows = [{"op": op, "count": n, "rate": ops_rates.get(op)} for op, n in ops_counts.items()]
    locks = [l for l in (summary.get("locks") or []) if isinstance(l, dict)]
    if not locks and metrics:  # a run killed before its summary: the last snapshot
        for c in metrics[-1].get("classes") or []:
            acq, con = c.get("acquisitions", 0), c.get("contended", 0)
            locks.append({"class": c.get("cls"), "acquisitions": acq, "contended": con,
                          "contended_pct": 100.0 * con / acq if acq else 0.0,
                          "wait_avg_us": c.get("wait_ns", 0) / con / 1000 if con else 0.0,
                          "wait_max_us": c.get("wait_max_ns", 0) / 1000, "hold_max_us": c.get("hold_max_ns", 0) / 1000})

    has_hist = False
    for l in locks:
        for key, name in (("wait_hist", "wait"), ("hold_hist", "hold")):
            h = l.get(key)
            if isinstance(h, list) and any(h):
                has_hist = True
                l[f"_{name}_p50"] = plots.hist_percentile(h, 0.5)
                l[f"_{name}_p99"] = plots.hist_percentile(h, 0.99)

    # the class graph: edges on a reported cycle in red (amber when guarded)
    cycles, extra = [], []
    for f in findings:
        det = f.get("details") or {}
        if det.get("cycle"):
            cycles.append(([str(c) for c in det["cycle"]], bool(det.get("guarded_by")) or bool(f.get("info"))))
            if isinstance(det.get("new_edge"), dict):
                ne = dict(det["new_edge"])
                ne.setdefault("guards", det.get("guarded_by") or [])
                if isinstance(ne.get("owner"), int):
                    ne.setdefault("first_by", _owner_label(roster, ne["owner"]))
                extra.append(ne)
    graph = summary.get("graph") or {"classes": [l.get("class") for l in locks], "edges": []}
    graph_svg = class_graph_svg(graph, cycles, extra, f"{uid}-graph")
    cyc_pairs = {(a, b): guarded for c, guarded in cycles for a, b in zip(c, c[1:])}
    edge_rows = [{"from": e.get("from"), "to": e.get("to"), "from_site": e.get("from_site", ""),
                  "to_site": e.get("to_site", ""), "first_by": e.get("first_by", ""),
                  "guards": ", ".join(map(str, e.get("guards") or [])),
                  "cycle": {True: "cycle guarded", False: "cycle"}.get(cyc_pairs.get((e.get("from"), e.get("to"))), "")}
                 for e in graph.get("edges") or []]

    ops_series, total, per_class = _series(metrics)
    model = summary.get("model") or {}
    charts = []
    intervals = len(total[0])
    if intervals >= 2:
        charts.append({"id": f"{uid}-c-throughput", "title": "Throughput over time",
                       "note": "Operations completed per second in each metrics interval (one snapshot a second; "
                               "a run that stopped early has a short last interval).",
                       "svg": plots.throughput(ops_series, total, f"{uid}-c-throughput")})
    if locks:
        charts.append({"id": f"{uid}-c-locks", "title": "Lock statistics per class",
                       "note": "Contended: the acquisition found the lock held. Average wait is over the contended "
                               "acquisitions; maxima are the largest single wait and hold of the run.",
                       "svg": plots.lock_contention(locks, f"{uid}-c-locks")})
    if intervals >= 2 and per_class:
        charts.append({"id": f"{uid}-c-contention", "title": "Contention over time",
                       "note": "Per class and 1-s interval, from the cumulative counters: the share of contended "
                               "acquisitions and the mean wait of one; and the largest wait and hold seen so far.",
                       "svg": plots.contention_over_time(per_class, f"{uid}-c-contention")})
    hists = {str(l.get("class")): {k: l[k] for k in ("wait_hist", "hold_hist") if isinstance(l.get(k), list)}
             for l in locks if isinstance(l.get("wait_hist"), list) or isinstance(l.get("hold_hist"), list)}
    if any(any(h.values()) for h in hists.values()):
        charts.append({"id": f"{uid}-c-hist", "title": "Wait and hold time distributions",
                       "note": "Per class, every hold (lock released) and every wait (contended acquisition) of the "
                               "run, counted in log2 buckets of nanoseconds: a bar from 1 µs to 2 µs counts the times "
                               "in that range.",
                       "svg": plots.histograms(hists, f"{uid}-c-hist")})
    elif per_class and locks and not hists:
        charts.append({"id": f"{uid}-c-dist", "title": "Wait and hold times: distribution over intervals",
                       "note": "The engine keeps per class the number of contended acquisitions, their total wait and "
                               "the largest single wait and hold, not every wait: each dot is one 1-s interval's mean "
                               "wait of a contended acquisition (the spread over the run), each diamond the largest "
                               "single wait or hold.",
                       "svg": plots.interval_distribution(per_class, locks, f"{uid}-c-dist")})
    dos = model.get("dos")
    if isinstance(dos, dict) and dos.get("vcpus"):  # irq-injection-storm's ap_list DoS measurement
        charts.append({"id": f"{uid}-c-dos", "title": "ap_list DoS: flush and prune time per vCPU",
                       "note": f"{dos.get('guest', '?')} guest; timed in each vCPU's worker "
                               f"({dos.get('clock', '?')} clock). Left: vgic_flush_lr_state and vgic_prune_ap_list "
                               "per call (p50, p99, max), with the ap_list's length. Right: the flush's share of "
                               "the vCPU's time, and the share of the pCPU a benign vCPU sharing it got.",
                       "svg": plots.dos_chart(plots.dos_rows_of_run(dos), f"{uid}-c-dos", "Time per call")})

    det = summary.get("detectors") or {}
    detectors = []
    for k, label in (("classes", "lock classes"), ("edges", "dependency edges"), ("chains_checked", "chains checked"),
                     ("acquisitions", "acquisitions"), ("watchdog_scans", "watchdog scans"),
                     ("capacity_hits", "capacity hits"), ("trace_overruns", "trace events overwritten")):
        if k in det:
            detectors.append((label, fmt_num(det[k])))
    if "chain_cache_hit_rate" in det:
        detectors.append(("chain cache hit rate", f"{100.0 * float(det['chain_cache_hit_rate']):.3f}%"))
    for k, label in (("invariant_checks", "invariant checks"), ("invariant_checks_skipped", "invariant checks skipped"),
                     ("irqs_handled", "interrupts handled")):
        if k in summary:
            detectors.append((label, fmt_num(summary[k])))

    short = None
    if intervals < 2:
        short = (f"The run lasted {fmt_secs(row.elapsed_s)}: too short for a time series (one metrics snapshot a "
                 "second), so throughput and contention over time are not drawn; the statistics above have the totals.")
    return {
        "kind": "run",
        "uid": uid,
        "short_note": short,
        "run": row,
        "title": f"{row.workload} / {row.variant}",
        "verdict": _verdict(row, summary),
        "command": row.command or config.get("command", "") or summary.get("command", ""),
        "schedule": _schedule_facts(summary.get("schedule") or {}),
        "replay": f"stress replay {row.id}" if (summary.get("schedule") or {}).get("policy", "free") != "free" else "",
        "config_rows": _config_rows(config, row),
        "elapsed_s": row.elapsed_s,
        "startup_s": summary.get("startup_s"),
        "total_ops_per_s": row.total_ops_per_s,
        "total_ops": sum(int(v) for v in ops_counts.values() if isinstance(v, (int, float))),
        "ops_rows": ops_rows,
        "locks": locks,
        "has_hist": has_hist,
        "workers": workers,
        "detectors": detectors,
        "model": [(str(k), v) for k, v in model.items() if not _is_table(v)],
        "model_tables": [v for v in model.values() if _is_table(v)],
        "findings": fctx,
        "graph_svg": graph_svg,
        "edge_rows": edge_rows,
        "charts": charts,
        "soak_id": row.soak_id,
        "iteration": row.iteration,
    }


def _is_table(v: Any) -> bool:
    """A workload's summary table (stress.workload.SummaryTable, stored as a plain object)."""
    return isinstance(v, dict) and isinstance(v.get("columns"), list) and isinstance(v.get("rows"), list)


def _dos_rows(store: Store, runs: list[RunRow], tagged: bool) -> list[dict]:
    """Per variant (and guest) of a soak, the median over its iterations of the most loaded
    vCPU's ap_list DoS measurements (irq-injection-storm's ``model.dos``: only that workload
    measures it, so a row is named by its variant)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        dos = ((store.run_summary(r.id) or {}).get("model") or {}).get("dos")
        if not (isinstance(dos, dict) and dos.get("vcpus")):
            continue
        rows = plots.dos_rows_of_run(dos)
        worst = max(rows, key=lambda x: (x["ap"] or {}).get("max", 0))
        by = (dos.get("bystander") or {}).get("pcpu_share")
        worst = dict(worst, bystander_share=by)
        groups.setdefault(f"{r.variant}{_tag(r, tagged)} / {dos.get('guest', '?')}", []).append(worst)

    def med(xs: list) -> Any:
        xs = sorted(x for x in xs if isinstance(x, (int, float)))
        return xs[len(xs) // 2] if xs else None

    out = []
    for label, rs in groups.items():
        q = {w: {k: med([(x[w] or {}).get(k) for x in rs]) for k in ("p50", "p99", "max")} for w in ("flush", "prune")}
        out.append({"label": f"{label} ({len(rs)})", "flush": q["flush"], "prune": q["prune"],
                    "ap": {k: med([(x["ap"] or {}).get(k) for x in rs]) for k in ("p99", "max")},
                    "flush_share": med([x["flush_share"] for x in rs]),
                    "bystander_share": med([x["bystander_share"] for x in rs])})
    return out


def _owner_label(roster: dict[int, str], owner: int) -> str:
    w, c = divmod(owner, 2)
    return roster.get(w, f"worker {w}") + (" [irq]" if c else "")


# --------------------------------------------------------------------------------------------
# a soak
# --------------------------------------------------------------------------------------------

def _soak_context(store: Store, soak_id: str) -> dict:
    soak = store.soak(soak_id)
    sid = soak["id"]
    runs = sorted(store.runs(soak_id=sid), key=lambda r: (r.iteration if r.iteration is not None else 1 << 30, r.started_at))
    hist = store.history(soak_id=sid)
    t0 = min([soak.get("started_at") or math.inf] + [r.started_at for r in runs])
    t0 = t0 if math.isfinite(t0) else time.time()
    t_end = soak.get("ended_at") or max([r.started_at + (r.elapsed_s or 0) for r in runs], default=t0)

    # findings of every iteration, grouped by what they are (one shown in full per group)
    groups: dict[tuple, dict] = {}
    found_by_run: dict[str, list[str]] = {}
    info_by_run: dict[str, list[str]] = {}
    known_by_run: dict[str, list[str]] = {}
    group_of_run: dict[str, list[tuple]] = {}
    for r in runs:
        fs = store.findings(r.id)
        # known findings are reported, never counted as found (they decide nothing)
        found_by_run[r.id] = sorted({f["outcome"] for f in fs if not f["info"] and not f["known"]})
        info_by_run[r.id] = sorted({f["outcome"] for f in fs if f["info"] and not f["known"]} - set(found_by_run[r.id]))
        known_by_run[r.id] = sorted({f["outcome"] for f in fs if f["known"]} - set(found_by_run[r.id]))
        for f in fs:
            key = (r.workload, r.variant, f.get("signature") or f.get("title"), f.get("outcome"))
            g = groups.get(key)
            if g is None:
                unexpected = not f["info"] and not f["known"] and f["outcome"] not in r.expected and r.expected != ["open"]
                g = groups[key] = {"key": key, "run": r, "finding": f, "iterations": [], "count": 0,
                                   "unexpected": unexpected, "info": bool(f["info"] or f["known"]),
                                   "known": bool(f["known"]),
                                   "anchor": f"g{len(groups)}"}
            g["count"] += 1
            g["iterations"].append(r.iteration)
            group_of_run.setdefault(r.id, []).append(key)
    ordered = sorted(groups.values(), key=lambda g: (not g["unexpected"], g["info"], g["run"].started_at))
    full, listed = ordered[:SOAK_FULL_FINDINGS], ordered[SOAK_FULL_FINDINGS:]
    finding_groups = []
    roster_cache: dict[str, dict[int, str]] = {}
    for g in full:
        r: RunRow = g["run"]
        f = g["finding"]
        if r.id not in roster_cache:
            roster_cache[r.id] = _roster(r.run_dir, store.findings(r.id), {})[0]
        t = _finding_times(r.run_dir, store.findings(r.id))
        t_ns = t[f["seq"]] if f["seq"] < len(t) else None
        fc = _finding_ctx(f, t_ns, roster_cache[r.id], r.expected, g["anchor"])
        finding_groups.append({"g": g, "f": fc, "run": r, "iterations": _ranges(g["iterations"])})
    listed_groups = [{"g": g, "run": g["run"], "iterations": _ranges(g["iterations"])} for g in listed]
    shown = {g["key"] for g in full}
    rank_of = {g["key"]: k for k, g in enumerate(ordered)}
    iter_rows = []
    for r in runs:
        keys = sorted(group_of_run.get(r.id, []), key=lambda k: rank_of[k])
        anchor = next((groups[k]["anchor"] for k in keys if k in shown), None)
        iter_rows.append({"run": r, "offset": r.started_at - t0, "found": found_by_run.get(r.id, []),
                          "info": info_by_run.get(r.id, []), "known": known_by_run.get(r.id, []),
                          "anchor": anchor})
    # iterations that did not pass, grouped by what went wrong (a night can fail hundreds of times
    # the same way): how often, where, and one command that repeats it
    fgroups: dict[tuple, dict] = {}
    for r in runs:
        if r.status == "pass":
            continue
        key = (r.workload, r.variant, r.schedule, r.status, r.verdict_text)
        g = fgroups.setdefault(key, {"run": r, "count": 0, "iterations": []})
        g["count"] += 1
        g["iterations"].append(r.iteration)
    failures = [dict(g, iterations=_ranges(g["iterations"])) for g in
                sorted(fgroups.values(), key=lambda g: (g["run"].status != "fail", -g["count"], g["run"].iteration or 0))]

    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    # counted as `stress soak` counts them: an open variant that ran to its end passed
    failed = [r for r in runs if r.status in ("fail", "error")]
    unsure = [r for r in runs if r.status in ("incomplete", "interrupted", "skipped")]
    if failed:
        status = "fail"
    elif unsure or soak.get("status") in ("interrupted", "failed", "running"):
        status = "incomplete" if runs else "error"
    else:
        status = "pass" if runs else "error"
    lines = []
    tagged = any(r.schedule != "free" for r in runs)  # a soak from before schedules: labels as they were
    for h in hist:
        bad = h.failed + sum(1 for r in _of(runs, h) if r.status == "error")
        if bad:
            seen = ", ".join(f"{o} ×{n}" for o, n in sorted(h.outcomes.items())) or "nothing"
            lines.append(f"{h.workload}/{h.variant}{_tag(h, tagged)}: {bad} of {h.runs} iterations failed "
                         f"(expected {' or '.join(h.expected)}; found {seen})")
    if not runs:
        text = "no iteration was recorded"
    elif failed:
        bugs = sum(1 for r in runs if found_by_run.get(r.id))
        text = f"{bugs} of {len(runs)} iterations found bugs; {len(failed)} of {len(runs)} NOT as their variant expects"
    else:
        n_open = sum(1 for r in runs if r.status == "open")
        bugs = sum(1 for r in runs if found_by_run.get(r.id))
        text = (f"{bugs} of {len(runs)} iterations found bugs, " if bugs else f"no bug found in {len(runs)} iterations, ") + \
            "all as their variant expects" + (f" ({n_open} open questions answered)" if n_open else "") + (
            f"; {len(unsure)} incomplete or skipped" if unsure else "")
    if soak.get("status") not in ("done", None):
        text += f"; the soak is {soak.get('status')}"

    stats = []
    rate_rows = []
    for h in hist:
        mine = _of(runs, h)
        opss = [r.total_ops_per_s for r in mine if r.total_ops_per_s is not None]
        clean = h.expected == ["clean"]
        rate = h.detection_rate if not clean else (h.passed / h.runs if h.runs else None)
        stats.append({"h": h, "rate": rate, "clean": clean, "ops": sum(opss) / len(opss) if opss else None,
                      "outcomes": ", ".join(f"{o} ×{n}" for o, n in sorted(h.outcomes.items()))})
        if rate is not None:
            n_ok = h.passed if clean else h.detected
            rate_rows.append({"label": _variant_label(h) + _tag(h, tagged), "rate": rate,
                              "good": rate >= 0.999 if clean else rate > 0,
                              "note": f"{n_ok}/{h.runs} {'clean' if clean else 'detected'}"})

    charts = []
    if rate_rows:
        charts.append({"id": "s-c-rate", "title": "Detection rate per variant",
                       "note": "Buggy variants: the share of iterations in which the expected finding appeared. "
                               "Clean variants: the share that stayed clean (passed)."
                               + (" One bar per schedule: [pct] and [random] runs were controlled, the others free."
                                  if tagged else ""),
                       "svg": plots.detection_rates(rate_rows, "s-c-rate")})
    if runs:
        per_variant: dict[str, dict[str, list]] = {}
        unit = 3600.0 if t_end - t0 > 7200 else 60.0
        for r in runs:
            d = per_variant.setdefault(_variant_label(r) + _tag(r, tagged),
                                       {"x": [], "ttd": [], "ops": [], "status": []})
            d["x"].append((r.started_at - t0) / unit)
            d["ttd"].append(r.time_to_detect_s)
            d["ops"].append(r.total_ops_per_s)
            d["status"].append(r.status)
        charts.append({"id": "s-c-trends", "title": "Trends over the soak",
                       "note": "Each point is one iteration, placed at its start. Time to detect is the time of the "
                               "first expected finding; an iteration that found none has no point.",
                       "svg": plots.trends(per_variant, "hours" if unit == 3600.0 else "minutes", "s-c-trends")})

    dos_rows = _dos_rows(store, runs, tagged)
    if dos_rows:
        charts.append({"id": "s-c-dos", "title": "ap_list DoS per variant",
                       "note": "irq-injection-storm iterations that measured the ap_list DoS, per variant and guest "
                               "(how many in brackets): the median over them of the most loaded vCPU's "
                               "vgic_flush_lr_state and vgic_prune_ap_list time per call (p50, p99, max) and "
                               "ap_list length, the flush's share of that vCPU's time, and the share of the pCPU a "
                               "benign vCPU sharing it got.",
                       "svg": plots.dos_chart(dos_rows, "s-c-dos", "Time per call, per variant")})

    plan_rows = []
    for k, v in (soak.get("plan") or {}).items():
        plan_rows.append((str(k), v if isinstance(v, str) else json.dumps(v, default=str)))
    # a campaign (its iterations ran on a cluster's hosts): the same report with a per-host column
    campaign = soak.get("kind") == "campaign" or any(r.host for r in runs)
    hosts = host_stats(runs) if campaign else []
    for h in hosts:
        if h.unhealthy:
            lines.append(f"host {h.host} is unhealthy: all {h.iterations} of its iterations failed for harness "
                         "reasons (not findings)")
    retried = [r for r in runs if r.attempts > 1]
    if retried:
        lines.append(f"{len(retried)} iteration{'s' if len(retried) != 1 else ''} retried after their host died under "
                     f"them: " + ", ".join(f"#{r.iteration} ({' → '.join([*r.tried_on, r.host])})" for r in retried[:20])
                     + (" …" if len(retried) > 20 else ""))
    word = "campaign" if campaign else "soak"
    return {
        "kind": "soak",
        "word": word,
        "campaign": campaign,
        "hosts": hosts,
        "n_retried": len(retried),
        "soak": soak,
        "title": f"{word} {sid}",
        "verdict": {"status": status, "text": text, "lines": lines, "counts": sorted(counts.items())},
        "command": soak.get("command") or "",
        "plan_rows": plan_rows,
        "started": t0,
        "span_s": max(0.0, t_end - t0),
        "runs": runs,
        "iter_rows": iter_rows,
        "stats": stats,
        "finding_groups": finding_groups,
        "failures": failures,
        "n_failed": sum(g["count"] for g in failures),
        "listed_groups": listed_groups,
        "charts": charts,
    }


def _of(runs: list[RunRow], h: Any) -> list[RunRow]:
    """The runs a history row counts: its workload, variant and schedule."""
    return [r for r in runs if (r.workload, r.variant, r.schedule) == (h.workload, h.variant, h.schedule)]


def _tag(r: Any, tagged: bool) -> str:
    """' [pct]' after a label, when the soak ran more than free iterations."""
    sched = getattr(r, "schedule", "free") or "free"
    return f" [{sched}]" if tagged and sched != "free" else ""


def _variant_label(r: Any) -> str:
    """'workload/variant', a workload given as a file by its file name."""
    wl = str(r.workload)
    if wl.endswith(".py") or "/" in wl:
        wl = os.path.basename(wl)
    return f"{wl}/{r.variant}"


def _ranges(xs: list[int | None]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1–3, 7, 9–10'."""
    vals = sorted({x for x in xs if x is not None})
    out, start, prev = [], None, None
    for v in vals:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}–{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}–{prev}" if prev != start else f"{start}")
    return ", ".join(out)
