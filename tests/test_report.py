"""The HTML report: rendered from a store filled by real runs, checked as text and in a real
headless browser (Debian's chromium driven by playwright, or chromium's own command line).

The runs are real and short (ABBA inverted, the vGIC rank-lock inversion, a clean ABBA
ordered run); a copy of the ABBA run has ``<script>`` and ``<img onerror>`` planted in its finding
text, trace events, class and operation names before it is ingested. A soak is made of
copies of those runs under one soak id. Screenshots go to the test's tmp directory and to
``/tmp/stress-report-screenshots/`` (the paths are printed).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from markupsafe import escape

from reports import html as report
from reports.svg import class_graph_svg, swimlane_svg
from stress.store import Store, StoreError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = "/tmp/stress-report-screenshots"
XSS_TEXT = "<script>window.__xss = 1</script>"
XSS_CLASS = 'B<script>window.__xss = 2</script>'
XSS_OP = 'b_then_a<img src=x onerror="window.__xss = 3">'
XSS_EVENT = "<script>window.__xss = 4</script> in a trace"

RUNS = {
    "abba": ["--workload", os.path.join(ROOT, "examples", "abba.py"), "--variant", "inverted", "--seed", "5"],
    "storm": ["--workload", "migration-storm", "--variant", "rank-lock-inversion", "--seed", "3"],
    "clean": ["--workload", os.path.join(ROOT, "examples", "abba.py"), "--variant", "ordered", "--duration", "3s",
              "--workers", "3", "--seed", "1"],
}


@dataclass
class Demo:
    base: str
    db: str
    dirs: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    html: dict[str, str] = field(default_factory=dict)  # name -> rendered file
    soak_id: str = "soak-test"


def _rewrite(path: str, fn) -> None:
    with open(path) as fh:
        d = json.load(fh)
    d = fn(d)
    with open(path, "w") as fh:
        json.dump(d, fh)


def _clone(src: str, root: str, new_id: str, started_at: float | None = None) -> str:
    """A copy of a run directory under a new run id (as if it were another run)."""
    dst = os.path.join(root, new_id)
    shutil.copytree(src, dst)

    def cfg(d):
        d["run_id"] = new_id
        if started_at is not None:
            d["started_at"] = started_at
        return d

    def summ(d):
        d["run_id"] = new_id
        d["run_dir"] = dst
        return d

    _rewrite(os.path.join(dst, "config.json"), cfg)
    _rewrite(os.path.join(dst, "summary.json"), summ)
    return dst


def _plant_xss(run_dir: str) -> None:
    """Markup in every place a workload or a trace puts a string: a finding's text and its
    trace events, a lock class name, an operation name."""
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "findings.jsonl")) if l.strip()]
    for f in rows:
        f["text"] = f["text"].replace("\n", f"\n{XSS_TEXT}\n", 1)
        f["title"] = f["title"] + " " + XSS_TEXT
        for evs in f["traces"].values():
            if evs:
                evs[-1]["text"] = XSS_EVENT
    with open(os.path.join(run_dir, "findings.jsonl"), "w") as fh:
        fh.write("".join(json.dumps(f) + "\n" for f in rows))

    def summ(d):
        g = d["graph"]
        g["classes"] = [XSS_CLASS if c == "B" else c for c in g["classes"]]
        for e in g["edges"]:
            e["from"] = XSS_CLASS if e["from"] == "B" else e["from"]
            e["to"] = XSS_CLASS if e["to"] == "B" else e["to"]
        for l in d["locks"]:
            if l["class"] == "B":
                l["class"] = XSS_CLASS
        d["ops"] = {(XSS_OP if k == "b_then_a" else k): v for k, v in d["ops"].items()}
        return d

    _rewrite(os.path.join(run_dir, "summary.json"), summ)
    mrows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    for m in mrows:
        m["ops"] = {(XSS_OP if k == "b_then_a" else k): v for k, v in m["ops"].items()}
        for c in m["classes"]:
            if c["cls"] == "B":
                c["cls"] = XSS_CLASS
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as fh:
        fh.write("".join(json.dumps(m) + "\n" for m in mrows))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    base = str(tmp_path_factory.mktemp("report"))
    out = os.path.join(base, "runs")
    procs = {name: subprocess.Popen([sys.executable, "-m", "stress", "run", *args, "--quiet", "--out", out],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in RUNS.items()}
    d = Demo(base, os.path.join(base, "stress.db"))
    for name, p in procs.items():
        so, se = p.communicate(timeout=90)
        m = re.search(r"^run directory: (.+)$", so, re.M)
        assert m, f"{name}: no run directory (exit {p.returncode}):\n{so}\n{se}"
        d.dirs[name] = m.group(1).strip()
    with open(os.path.join(d.dirs["abba"], "summary.json")) as fh:
        found = set(json.load(fh)["verdict"]["found"])
    assert "lock-order-inversion" in found, f"ABBA inverted found {found}"

    # the copy with markup planted everywhere, and one whose run directory is gone
    d.dirs["xss"] = _clone(d.dirs["abba"], out, "20990101T000000-1-xss000")
    _plant_xss(d.dirs["xss"])
    d.dirs["gone"] = _clone(d.dirs["abba"], out, "20990101T000000-2-gone00")
    with Store(d.db) as st:
        for name in ("clean", "storm", "abba", "xss", "gone"):
            d.ids[name] = st.ingest_run(d.dirs[name])
        # a small soak: the three real runs, twice, one hour apart, the last one most recent
        st.begin_soak(d.soak_id, {"workloads": ["abba", "migration-storm"], "duration": "1h"},
                      "stress soak --duration 1h", out, 3600.0)
        t0 = time.time() - 3600
        st.db.execute("UPDATE soaks SET started_at = ? WHERE id = ?", (t0, d.soak_id))
        for i in range(6):
            name = ("abba", "storm", "clean")[i % 3]
            cd = _clone(d.dirs[name], os.path.join(base, "soak"), f"{d.soak_id}-it{i}", t0 + 600 * i)
            st.ingest_run(cd, d.soak_id, i)
        st.end_soak(d.soak_id, "done")
    shutil.rmtree(d.dirs["gone"])
    for name in ("abba", "storm", "clean", "xss", "gone"):
        d.html[name] = report.write_report(d.db, d.ids[name], os.path.join(base, f"{name}.html"))
    d.html["soak"] = report.write_report(d.db, d.soak_id, os.path.join(base, "soak.html"))
    return d


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


# --------------------------------------------------------------------------------------------
# the HTML as text
# --------------------------------------------------------------------------------------------

def test_run_report_has_verdict_command_statistics_findings_charts_in_that_order(demo):
    h = _read(demo.html["abba"])
    with open(os.path.join(demo.dirs["abba"], "config.json")) as fh:
        command = json.load(fh)["command"]
    assert "PASS" in h and "as expected" in h
    head = h[h.index('id="verdict"'):]
    assert head.index("found</span>") < head.index("PASS"), "what was found leads; the match word follows"
    assert 'class="headline bug"' in head, "a deadlock is never shown in green"
    assert str(escape(command)) in h, "the command that repeats the run"
    order = [h.index(s) for s in ('id="verdict"', 'id="configuration"', 'id="statistics"', 'id="findings"',
                                  'id="charts"', 'id="class-graph"')]
    assert order == sorted(order), "Locust's order: verdict and statistics, findings, charts"
    # lock statistics per class, operations
    assert ">acquisitions<" in h and ">b_then_a<" in h and ">A<" in h


def test_finding_text_is_shown_exactly_and_escaped(demo):
    h = _read(demo.html["abba"])
    with Store(demo.db) as st:
        findings = st.findings(demo.ids["abba"])
    assert findings
    for f in findings:
        assert f"<pre class=\"splat\">{escape(f['text'])}</pre>" in h
        assert "-&gt; #1" in h  # lockdep's chain arrows, escaped


def test_class_graph_marks_the_inverted_edges(demo):
    h = _read(demo.html["abba"])
    graph = h[h.index('<svg class="class-graph"'):]
    graph = graph[:graph.index("</svg>")]
    edges = re.findall(r'<g class="([^"]*)" data-from="([^"]*)" data-to="([^"]*)">', graph)
    cyc = {(a, b) for cls, a, b in edges if "cycle" in cls.split()}
    assert cyc == {("A", "B"), ("B", "A")}, edges
    assert 'stroke="#c81e1e"' in graph and "marker-end" in graph
    # tooltips: first sites and worker
    assert re.search(r"<title>A -&gt; B: B taken while holding A\n.*abba\.py:\d+", graph)
    assert "first seen in worker" in graph


def test_markup_from_workloads_and_traces_is_text(demo):
    h = _read(demo.html["xss"])
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in h  # finding text and title
    assert "&lt;script&gt;window.__xss = 4&lt;/script&gt; in a trace" in h  # a trace event (tooltip)
    assert "B&lt;script&gt;window.__xss = 2&lt;/script&gt;" in h  # a class name (table, graph, charts)
    assert "b_then_a&lt;img src=x onerror=" in h  # an operation name
    assert "<script" not in h.lower() and "<img" not in h.lower()
    assert "onerror=" not in h.replace("onerror=&#34;", "").replace("onerror=&quot;", "")


def test_report_is_self_contained(demo):
    for name, path in demo.html.items():
        h = _read(path)
        tags = re.findall(r"<[a-zA-Z][^>]*>", h)  # markup, not text (text has its < escaped)
        assert not [t for t in tags if re.search(r"\s(src|srcset)\s*=", t)], name
        assert not re.search(r'href="(?!#)', h), f"{name}: a link out of the page"
        assert not re.search(r"url\((?!#)", h), name
        assert "@import" not in h and "<link" not in h and "<script" not in h, name
        assert "http://" not in h and "https://" not in h, f"{name}: a URL"


def test_charts_are_inline_svg_with_text_kept_as_text(demo):
    h = _read(demo.html["clean"])
    plots = re.findall(r'<svg class="plot" data-plot="([\w-]+)"', h)
    assert {"throughput", "lock-contention", "contention-over-time", "wait-hold-histograms"} <= set(plots), plots
    assert "<text" in h and "<image" not in h  # fonttype none: text, not glyph paths or bitmaps
    assert "wait p50 / p99" in h and "log2 buckets" in h  # from the engine's histograms
    ids = re.findall(r'\bid="([^"]+)"', h)
    assert len(ids) == len(set(ids)), "duplicate ids between inline SVGs"


def test_run_report_without_its_run_directory(demo):
    h = _read(demo.html["gone"])
    assert "swimlane" in h and 'class="ev ' in h
    # the findings' times were recovered from the text: no "not recorded" note
    assert "was not recorded" not in h
    assert "Workers at the end" not in h  # that came from the run directory


def test_soak_report(demo):
    h = _read(demo.html["soak"])
    assert "soak-test" in h
    with Store(demo.db) as st:
        statuses = {r.status for r in st.runs(soak_id=demo.soak_id)}
    assert ("FAIL" if "fail" in statuses else "PASS") in h.split('id="verdict"')[1][:300]
    for i in range(6):
        assert f'id="it-{i}"' in h
    assert 'data-plot="detection-rate"' in h and 'data-plot="trends"' in h
    assert "Per variant" in h and "Iterations that did not pass" in h
    order = [h.index(s) for s in ('id="verdict"', 'id="statistics"', 'id="iterations"', 'id="findings"', 'id="charts"')]
    assert order == sorted(order)
    # one full finding per distinct signature, linked from the iterations that showed it
    assert h.count('<section class="finding') >= 2
    assert re.search(r'<tr id="it-0".*?<a href="#g\d+">', h, re.S)


def test_soak_with_an_iteration_that_left_no_run_directory(demo, tmp_path):
    db = str(tmp_path / "s.db")
    with Store(db) as st:
        if not hasattr(st, "record_iteration"):
            pytest.skip("this store cannot record an iteration without a run directory")
        st.begin_soak("soak-skip", {}, "stress soak", str(tmp_path), 60.0)
        st.ingest_run(_clone(demo.dirs["abba"], str(tmp_path), "soak-skip-it0"), "soak-skip", 0)
        rid = st.record_iteration("soak-skip", 1, workload="migration-storm", variant="nope", seed=1,
                                  expected=["clean"], status="skipped", text="unknown variant 'nope' <b>",
                                  command="stress run --workload migration-storm --variant nope")
        h = report.render_soak(st, "soak-skip")
        r = report.render_run(st, rid)
    assert "INCOMPLETE" in h and "unknown variant &#39;nope&#39; &lt;b&gt;" in h
    assert "skipped" in r and "No lock class was registered" in r and "No finding" in r


def test_write_report_latest_prefix_unknown_and_atomic(demo, tmp_path):
    out = str(tmp_path / "latest.html")
    assert report.write_report(demo.db, None, out) == out
    with Store(demo.db) as st:
        kind, ident = st.latest()
    assert f"{kind} <code>{ident}</code>" in _read(out) or f"run <code>{ident}</code>" in _read(out)
    p = report.write_report(demo.db, demo.ids["storm"][:22], str(tmp_path / "sub" / "storm.html"))
    assert "rank-lock-inversion" in _read(p)
    with pytest.raises(StoreError) as e:
        report.write_report(demo.db, "19990101", str(tmp_path / "x.html"))
    assert "\n" not in str(e.value) and "19990101" in str(e.value)
    with pytest.raises(StoreError):
        report.write_report(demo.db, "2", str(tmp_path / "x.html"))  # names several runs
    with pytest.raises(StoreError):
        report.write_report(str(tmp_path / "none.db"), None, str(tmp_path / "x.html"))
    assert sorted(os.listdir(tmp_path)) == ["latest.html", "sub"], "no temporary file left behind"


def test_render_functions_return_html(demo):
    with Store(demo.db) as st:
        h = report.render_run(st, demo.ids["storm"])
        assert h.startswith("<!DOCTYPE html>") and "migration-storm / rank-lock-inversion" in h
        s = report.render_soak(st, demo.soak_id)
        assert "Detection rate per variant" in s


def test_without_histograms_the_distribution_is_over_intervals(demo, tmp_path):
    """A run recorded before the engine kept log2 histograms: the spread of the per-second
    mean waits, labelled as such, and no percentile columns."""
    d = _clone(demo.dirs["clean"], str(tmp_path), "20990101T000000-3-nohist")

    def summ(s):
        for l in s["locks"]:
            l.pop("wait_hist", None)
            l.pop("hold_hist", None)
        return s

    _rewrite(os.path.join(d, "summary.json"), summ)
    db = str(tmp_path / "h.db")
    with Store(db) as st:
        rid = st.ingest_run(d)
        h = report.render_run(st, rid)
    assert 'data-plot="wait-distribution"' in h and 'data-plot="wait-hold-histograms"' not in h
    assert "distribution over intervals" in h and "wait p50" not in h


def test_histogram_percentiles():
    from reports.plots import hist_percentile

    # bucket b counts t with 2**(b-1) <= t < 2**b ns
    assert hist_percentile([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10], 0.5) == 2048 / 1000
    assert hist_percentile([0] * 11 + [98, 0, 2], 0.99) == 8192 / 1000
    assert hist_percentile([], 0.5) is None


def test_series_turns_cumulative_counters_into_rates():
    metrics = [{"t_s": 0.0, "total_ops": 0, "ops": {"a": 0}, "classes": [
                   {"cls": "L", "acquisitions": 0, "contended": 0, "wait_ns": 0, "wait_max_ns": 0, "hold_max_ns": 0}]},
               {"t_s": 1.0, "total_ops": 100, "ops": {"a": 100}, "classes": [
                   {"cls": "L", "acquisitions": 200, "contended": 20, "wait_ns": 40000, "wait_max_ns": 5000, "hold_max_ns": 9000}]},
               {"t_s": 3.0, "total_ops": 400, "ops": {"a": 400}, "classes": [
                   {"cls": "L", "acquisitions": 400, "contended": 20, "wait_ns": 40000, "wait_max_ns": 5000, "hold_max_ns": 9000}]}]
    ops, total, per_class = report._series(metrics)
    assert ops["a"] == ([1.0, 3.0], [100.0, 150.0])
    assert total == ([1.0, 3.0], [100.0, 150.0])
    assert per_class["L"]["pct"] == [10.0, 0.0]
    assert per_class["L"]["wait_mean_us"][0] == 2.0 and math.isnan(per_class["L"]["wait_mean_us"][1])
    assert per_class["L"]["wait_max_us"] == [0.0, 5.0, 5.0]


def test_graph_guarded_edges_are_dashed_and_named():
    graph = {"classes": ["A", "B", "G", "lonely"], "edges": [
        {"from": "G", "to": "A", "seq": 1, "from_site": "f() x.py:1", "to_site": "f() x.py:2", "first_by": "worker 0", "guards": []},
        {"from": "A", "to": "B", "seq": 2, "from_site": "f() x.py:2", "to_site": "f() x.py:3", "first_by": "worker 0", "guards": ["G"]},
        {"from": "B", "to": "A", "seq": 3, "from_site": "g() x.py:7", "to_site": "g() x.py:8", "first_by": "worker 1", "guards": ["G"]}]}
    svg = str(class_graph_svg(graph, [(["A", "B", "A"], True)], [], "t"))
    assert svg.count('stroke-dasharray="6 4"') == 2 and svg.count(">under G<") == 2
    assert svg.count('class="edge guarded-cycle guarded"') == 2 and "#c81e1e" not in svg.split("</defs>")[1]
    assert "every time under G" in svg and "g() x.py:7" in svg
    assert 'data-class="lonely"' in svg


def test_swimlane_lanes_and_waits():
    t = 10_000_000_000
    lanes = [("worker 0 (a, pid 1)", [{"t_ns": t - 5_000_000, "ctx": "task", "kind": "op", "text": "x"},
                                      {"t_ns": t - 4_000_000, "ctx": "task", "kind": "contend", "text": "A at f() x.py:1"}]),
             ("worker 1 (b, pid 2)", [{"t_ns": t - 3_000_000, "ctx": "irq", "kind": "irq-enter", "text": "irq 3"},
                                      {"t_ns": t - 2_000_000, "ctx": "irq", "kind": "irq-exit", "text": "irq 3"}])]
    svg = str(swimlane_svg(lanes, t, "s"))
    assert svg.count('class="ev ') == 4
    assert 'class="wait open"' in svg and "still waiting" in svg  # a contend never acquired
    assert "in interrupt context" in svg
    assert "worker 1 (b, pid 2)" in svg and "-4.000 ms" in svg


# --------------------------------------------------------------------------------------------
# in a real browser
# --------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

DOM_PROBE = """() => {
  const count = (root, sel) => root ? root.querySelectorAll(sel).length : 0;
  const graph = document.querySelector('svg.class-graph');
  const plots = [...document.querySelectorAll('svg.plot')].map(s => ({
      name: s.dataset.plot, paths: count(s, 'path'), texts: count(s, 'text'),
      width: s.getBoundingClientRect().width, height: s.getBoundingClientRect().height}));
  const lanes = [...document.querySelectorAll('svg.swimlane')].map(s => ({
      events: count(s, 'g.ev'), width: s.getBoundingClientRect().width}));
  return {
    graph: graph ? {edges: count(graph, 'g.edge path'), cycle: count(graph, 'g.edge.cycle'), nodes: count(graph, 'g.node'),
                    width: graph.getBoundingClientRect().width} : null,
    plots, lanes,
    splats: [...document.querySelectorAll('pre.splat')].map(p => p.textContent),
    scripts: document.querySelectorAll('script').length,
    imgs: document.querySelectorAll('img').length,
    xss: typeof window.__xss,
    title: document.title,
  };
}"""


class _Playwright:
    def __init__(self, chromium: str) -> None:
        from playwright.sync_api import sync_playwright

        self.pw = sync_playwright().start()
        self.user_data = tempfile.mkdtemp(prefix="stress-report-chromium-")
        self.ctx = self.pw.chromium.launch_persistent_context(
            self.user_data, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS[1:],
            viewport={"width": 1280, "height": 900}, offline=True)

    def load(self, path: str, shot: str) -> tuple[dict, list[str]]:
        page = self.ctx.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith("file://") else None)
        page.goto("file://" + path, wait_until="load")
        dom = page.evaluate(DOM_PROBE)
        page.screenshot(path=shot, full_page=True)
        page.close()
        return dom, problems

    def close(self) -> None:
        self.ctx.close()
        self.pw.stop()
        shutil.rmtree(self.user_data, ignore_errors=True)


class _ChromiumCli:
    """Chromium's own command line, when playwright is not installed: --dump-dom gives the
    DOM after load (parsed here), console output goes to the log, --screenshot the picture.
    The page has no script, so any console line at all is a problem."""

    def __init__(self, chromium: str) -> None:
        self.chromium = chromium

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="stress-report-chromium-") as ud:
            return subprocess.run([self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={ud}", "--enable-logging=stderr",
                                   "--v=0", *args], capture_output=True, text=True, timeout=120)

    def load(self, path: str, shot: str) -> tuple[dict, list[str]]:
        p = self._run("--dump-dom", "file://" + path)
        problems = [l for l in p.stderr.splitlines() if ":CONSOLE" in l]
        dom = _DomCounter.probe(p.stdout)
        self._run(f"--screenshot={shot}", "--window-size=1280,9000", "--hide-scrollbars", "file://" + path)
        return dom, problems

    def close(self) -> None:
        pass


class _DomCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.dom: dict = {"graph": None, "plots": [], "lanes": [], "splats": [], "scripts": 0, "imgs": 0,
                          "xss": "undefined", "title": ""}
        self.pre: list[str] | None = None
        self.cur: dict | None = None

    @classmethod
    def probe(cls, html: str) -> dict:
        p = cls()
        p.feed(html)
        return p.dom

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "script":
            self.dom["scripts"] += 1
        if tag == "img":
            self.dom["imgs"] += 1
        if tag == "svg" and "class-graph" in cls:
            self.cur = self.dom["graph"] = {"edges": 0, "cycle": 0, "nodes": 0, "width": float(a.get("width", 0))}
            self.kind = "graph"
        elif tag == "svg" and "plot" in cls:
            self.cur = {"name": a.get("data-plot"), "paths": 0, "texts": 0, "width": 1.0, "height": 1.0}
            self.dom["plots"].append(self.cur)
            self.kind = "plot"
        elif tag == "svg" and "swimlane" in cls:
            self.cur = {"events": 0, "width": float(a.get("width", 0))}
            self.dom["lanes"].append(self.cur)
            self.kind = "lane"
        elif self.cur is not None:
            if self.kind == "graph":
                if tag == "g" and "edge" in cls:
                    self.cur["cycle"] += "cycle" in cls
                if tag == "g" and "node" in cls:
                    self.cur["nodes"] += 1
                if tag == "path" and self.stack and "edge" in (self.stack[-1][1].get("class") or "").split():
                    self.cur["edges"] += 1
            elif self.kind == "plot":
                self.cur["paths"] += tag == "path"
                self.cur["texts"] += tag == "text"
            elif self.kind == "lane" and tag == "g" and "ev" in cls:
                self.cur["events"] += 1
        if tag == "pre" and "splat" in cls:
            self.pre = []
        self.stack.append((tag, a))

    def handle_endtag(self, tag):
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break
        if tag == "svg" and not any(t == "svg" for t, _ in self.stack):
            self.cur = None
        if tag == "pre" and self.pre is not None:
            self.dom["splats"].append("".join(self.pre))
            self.pre = None

    def handle_data(self, data):
        if self.pre is not None:
            self.pre.append(data)


def _chromium() -> str | None:
    for c in (os.environ.get("STRESS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and os.path.exists(c):
            return c
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    try:
        import playwright.sync_api  # noqa: F401
        have_pw = True
    except ImportError:
        have_pw = False
    if chromium is None:
        pytest.skip("no chromium to render the report in (Debian: apt-get install chromium; .ci/run installs it)"
                    + ("" if have_pw else "; playwright is not installed either (pip install -e .[test])"))
    b = _Playwright(chromium) if have_pw else _ChromiumCli(chromium)
    yield b
    b.close()


def _shoot(browser, demo, name: str) -> tuple[dict, list[str]]:
    shot = os.path.join(demo.base, f"report-{name}.png")
    dom, problems = browser.load(demo.html[name], shot)
    assert os.path.getsize(shot) > 10_000
    os.makedirs(SHOTS, exist_ok=True)
    keep = os.path.join(SHOTS, f"report-{name}.png")
    shutil.copyfile(shot, keep)
    print(f"\nscreenshot ({name}): {shot}\n  copy: {keep}")
    return dom, problems


@pytest.mark.timeout(180)
def test_browser_run_report_with_findings(browser, demo):
    dom, problems = _shoot(browser, demo, "abba")
    assert not problems, problems
    g = dom["graph"]
    assert g and g["nodes"] == 2 and g["edges"] >= 4 and g["cycle"] == 2 and g["width"] > 50
    assert len(dom["lanes"]) >= 2 and all(l["events"] > 0 and l["width"] > 100 for l in dom["lanes"])
    assert dom["plots"], "no chart"
    for p in dom["plots"]:
        assert p["paths"] > 0 and p["texts"] > 0 and p["width"] > 100 and p["height"] > 50, p
    assert any("WARNING: possible circular locking dependency detected" in s for s in dom["splats"])
    assert dom["scripts"] == 0 and dom["title"].startswith("DEADLOCK and lock-order inversion found · PASS")


@pytest.mark.timeout(180)
def test_browser_long_run_and_vgic_report(browser, demo):
    for name in ("clean", "storm"):
        dom, problems = _shoot(browser, demo, name)
        assert not problems, (name, problems)
        assert dom["graph"] and dom["graph"]["edges"] > 0
        names = {p["name"] for p in dom["plots"]}
        for p in dom["plots"]:
            assert p["paths"] > 0 and p["texts"] > 0 and p["width"] > 100, (name, p)
        if name == "clean":
            assert {"throughput", "lock-contention", "contention-over-time", "wait-hold-histograms"} <= names
        else:
            assert dom["graph"]["cycle"] >= 2 and dom["lanes"]


@pytest.mark.timeout(180)
def test_browser_markup_in_a_finding_shows_as_text(browser, demo):
    dom, problems = _shoot(browser, demo, "xss")
    assert not problems, problems
    assert any(XSS_TEXT in s for s in dom["splats"]), "the <script> in the finding text is shown as text"
    assert dom["xss"] == "undefined", "an injected script ran"
    assert dom["scripts"] == 0 and dom["imgs"] == 0


@pytest.mark.timeout(180)
def test_browser_soak_report(browser, demo):
    dom, problems = _shoot(browser, demo, "soak")
    assert not problems, problems
    names = {p["name"] for p in dom["plots"]}
    assert {"detection-rate", "trends"} <= names
    for p in dom["plots"]:
        assert p["paths"] > 0 and p["texts"] > 0 and p["width"] > 100, p
    assert dom["lanes"] and all(l["events"] > 0 for l in dom["lanes"])


def test_soak_marks_known_findings_as_known_and_never_as_found(demo, tmp_path):
    """A known finding is reported and recorded, but decides nothing: the iteration table
    shows it as known, never in the "found" column (issue 19, item 16)."""
    import shutil
    db = str(tmp_path / "k.db")
    shutil.copy(demo.db, db)
    with Store(db) as st:
        rid = st.runs(soak_id=demo.soak_id)[0].id
        st.db.execute("UPDATE findings SET known = 'a known race' WHERE run_id = ?", (rid,))
        outcomes = {f["outcome"] for f in st.findings(rid)}
        ctx = report._soak_context(st, demo.soak_id)
        h = report.render_soak(st, demo.soak_id)
    row = next(r for r in ctx["iter_rows"] if r["run"].id == rid)
    assert row["found"] == [] and set(row["known"]) == outcomes
    assert "(known)" in h


def test_open_iterations_count_as_passed_as_the_cli_counts_them(demo, tmp_path):
    import shutil
    db = str(tmp_path / "o.db")
    shutil.copy(demo.db, db)
    with Store(db) as st:
        st.db.execute("UPDATE runs SET status = 'open' WHERE soak_id = ? AND status = 'pass'", (demo.soak_id,))
        st.db.execute("UPDATE runs SET status = 'pass' WHERE soak_id = ? AND status != 'open'", (demo.soak_id,))
        ctx = report._soak_context(st, demo.soak_id)
    assert ctx["verdict"]["status"] == "pass", ctx["verdict"]


def test_shortened_labels_never_make_two_variants_one():
    from reports.plots import _shorts
    labels = ["migration-storm/unlocked-target-read", "migration-storm/unlocked-target-read-assert"]
    out = _shorts(labels, 28)
    assert len(set(out)) == 2 and all(len(x) <= len(l) for x, l in zip(out, labels))


def test_soak_report_splits_variants_by_schedule(demo, tmp_path):
    """Per variant and schedule, as `stress runs` counts; each iteration shows its schedule; a
    soak from before schedules keeps its labels."""
    import shutil
    db = str(tmp_path / "s.db")
    shutil.copy(demo.db, db)
    with Store(db) as st:
        old = report._soak_context(st, demo.soak_id)
        st.db.execute("UPDATE runs SET schedule = 'pct' WHERE soak_id = ? AND iteration = 0", (demo.soak_id,))
        ctx = report._soak_context(st, demo.soak_id)
        h = report.render_soak(st, demo.soak_id)
    abba = ctx["runs"][0]
    mine = [s["h"] for s in ctx["stats"] if (s["h"].workload, s["h"].variant) == (abba.workload, abba.variant)]
    assert sorted((x.schedule, x.runs) for x in mine) == [("free", 1), ("pct", 1)]
    assert len(ctx["stats"]) == len(old["stats"]) + 1
    assert all("[pct]" not in c["svg"] and "[free]" not in c["svg"] for c in old["charts"])
    assert any("[pct]" in c["svg"] for c in ctx["charts"])
    assert "Per variant and schedule" in h

    def row(i: int) -> str:
        return h.split(f'<tr id="it-{i}"')[1].split("</tr>")[0]
    assert '<td class="mono">pct</td>' in row(0) and '<td class="mono">free</td>' in row(1)
