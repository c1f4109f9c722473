"""Charts drawn with matplotlib (no pyplot, no global backend switch) as inline SVG.

Text stays text (``svg.fonttype = 'none'``), ids are stable (``svg.hashsalt``) and made
unique per chart, and the metadata block and DOCTYPE (with their URLs) are dropped, so the
page references nothing outside itself. Labels from workloads (operation and class names)
are escaped by matplotlib's SVG writer and never parsed as mathtext.
"""

from __future__ import annotations

import io
import math
import re
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator
from markupsafe import Markup

RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "stress-report",
    "svg.image_inline": True,
    "text.parse_math": False,
    "font.size": 9.5,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.7,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": "#323f4b",
    "xtick.color": "#52606d",
    "ytick.color": "#52606d",
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "axes.prop_cycle": matplotlib.cycler(color=["#2b6cb0", "#dd6b20", "#2f855a", "#c81e1e", "#6b46c1", "#b7791f",
                                                "#319795", "#d53f8c", "#4a5568", "#718096"]),
}

STATUS_COLOUR = {"pass": "#2f855a", "fail": "#c81e1e", "open": "#6b46c1", "incomplete": "#b7791f",
                 "interrupted": "#718096", "error": "#4a5568", "skipped": "#a0aec0"}


def _plain(v: float, _pos: object = None) -> str:
    """Tick labels as plain numbers (mathtext is off: no $10^{3}$)."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:,.0f}" if a >= 1 else f"{v:g}"


def _fix_ticks(fig: Figure) -> None:
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale in ("log", "symlog"):
                if not isinstance(axis.get_major_formatter(), FuncFormatter):
                    axis.set_major_formatter(FuncFormatter(_plain))
                axis.set_minor_formatter(NullFormatter())
                axis.set_minor_locator(NullLocator())  # minor log ticks cost most of a draw


def _svg(fig: Figure, uid: str, name: str) -> Markup:
    _fix_ticks(fig)
    buf = io.StringIO()
    # constrained layout already fits the figure: no bbox_inches="tight" (a second full draw)
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>\s*", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s, count=0)
    # ids unique per chart: several charts inline in one page must not share clip paths
    s = re.sub(r'id="([^"]+)"', lambda m: f'id="{uid}-{m.group(1)}"', s)
    s = re.sub(r'url\(#([^)]+)\)', lambda m: f'url(#{uid}-{m.group(1)})', s)
    s = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{uid}-{m.group(1)}"', s)
    # scale with the page: keep the viewBox, drop the fixed size
    head_end = s.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", s[:head_end])
    s = head + s[head_end:]
    s = s.replace("<svg ", f'<svg class="plot" data-plot="{name}" role="img" preserveAspectRatio="xMinYMin meet" ', 1)
    return Markup(s)


def _figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), dpi=72, layout="constrained")


def _rc():
    return matplotlib.rc_context(RC)


def _short(label: str, n: int = 28) -> str:
    """Cut in the middle: the start (the workload, the struct) and the end (the variant's
    suffix, the field) are what tell two labels apart."""
    if len(label) <= n:
        return label
    head = (n - 1) // 2
    return label[:head] + "…" + label[len(label) - (n - 1 - head):]


def _shorts(labels: Sequence[str], n: int) -> list[str]:
    """``_short`` of each label, widened until no two different labels look the same."""
    labels = [str(x) for x in labels]
    while True:
        out = [_short(x, n) for x in labels]
        if len(set(out)) == len(set(labels)) or n >= max((len(x) for x in labels), default=0):
            return out
        n += 4


def _log_wanted(values: Sequence[float]) -> bool:
    pos = [v for v in values if v > 0]
    return len(pos) > 1 and max(pos) / min(pos) > 50


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------

def throughput(series: dict[str, tuple[list[float], list[float]]], total: tuple[list[float], list[float]],
               uid: str) -> Markup:
    """Operations per second in each metrics interval, per operation (and the total)."""
    with _rc():
        fig = _figure(9.6, 3.4)
        ax = fig.add_subplot()
        allv: list[float] = []
        for op, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=_short(op))
            allv += ys
        if total[0]:
            ax.plot(total[0], total[1], color="#1f2933", linestyle="--", linewidth=1.2, label="total")
            allv += total[1]
        if _log_wanted(allv):
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=0)
            ax.set_ylabel("operations/s (log scale)")
        else:
            ax.set_ylabel("operations/s")
            ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds since the start (each point: one metrics interval, ~1 s)")
        ax.set_title("Throughput per operation")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, uid, "throughput")


def lock_contention(locks: list[dict], uid: str) -> Markup:
    """Per class: contended % of acquisitions; average and maximum wait, maximum hold."""
    names = _shorts([str(l.get("class", "?")) for l in locks], 24)
    y = list(range(len(names)))
    with _rc():
        fig = _figure(9.6, 0.9 + 0.42 * max(2, len(names)))
        a1, a2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.5]})
        pct = [float(l.get("contended_pct") or 0) for l in locks]
        a1.barh(y, pct, color="#dd6b20", height=0.6)
        for yi, v in zip(y, pct):
            a1.annotate(f"{v:.2f}%", (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        a1.set_yticks(y, names)
        a1.invert_yaxis()
        a1.set_xlabel("contended acquisitions, %")
        a1.set_title("Contention rate")
        a1.set_xlim(0, max(pct + [1.0]) * 1.25)
        h = 0.26
        waits = [float(l.get("wait_avg_us") or 0) for l in locks]
        wmax = [float(l.get("wait_max_us") or 0) for l in locks]
        hmax = [float(l.get("hold_max_us") or 0) for l in locks]
        a2.barh([v - h for v in y], waits, height=h, color="#2b6cb0", label="avg wait (contended)")
        a2.barh(y, wmax, height=h, color="#90cdf4", label="max wait")
        a2.barh([v + h for v in y], hmax, height=h, color="#9ae6b4", label="max hold")
        if any(v > 0 for v in waits + wmax + hmax):
            a2.set_xscale("symlog", linthresh=1)
        a2.set_xlim(left=0)
        a2.set_xlabel("µs (log scale)")
        a2.set_title("Wait and hold time")
        a2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        if not any(v > 0 for v in waits):
            a2.text(0.98, 0.02, "no contended acquisition: no wait", transform=a2.transAxes, ha="right", va="bottom",
                    color="#7b8794", fontsize=8)
        return _svg(fig, uid, "lock-contention")


def contention_over_time(per_class: dict[str, dict[str, list[float]]], uid: str) -> Markup:
    """Per class and metrics interval: contended % and the mean wait of a contended
    acquisition; the running maxima of wait and hold."""
    with _rc():
        fig = _figure(9.6, 5.2)
        (a1, a2), (a3, a4) = fig.subplots(2, 2, sharex=True)
        for cls, d in per_class.items():
            lab = _short(cls, 22)
            a1.plot(d["t"], d["pct"], marker="o", label=lab)
            a2.plot(d["t"], d["wait_mean_us"], marker="o", label=lab)
            a3.step(d["t_all"], d["wait_max_us"], where="post", label=lab)
            a4.step(d["t_all"], d["hold_max_us"], where="post", label=lab)
        a1.set_title("Contended %, per interval")
        a1.set_ylim(bottom=0)
        a2.set_title("Mean wait of a contended acquisition, per interval")
        a2.set_ylabel("µs")
        a3.set_title("Largest wait so far (running maximum)")
        a3.set_ylabel("µs")
        a4.set_title("Largest hold so far (running maximum)")
        a4.set_ylabel("µs")
        for a in (a2, a3, a4):
            vals = [float(v) for line in a.get_lines() for v in line.get_ydata()]
            if _log_wanted(vals):
                a.set_yscale("symlog", linthresh=1)
            a.set_ylim(bottom=0)
        for a in (a3, a4):
            a.set_xlabel("seconds since the start")
        a2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, uid, "contention-over-time")


def interval_distribution(per_class: dict[str, dict[str, list[float]]], locks: list[dict], uid: str) -> Markup:
    """What the engine keeps gives a distribution over intervals, not over single waits:
    one dot per 1-s interval (its mean wait per contended acquisition), the run's largest
    single wait and hold as diamonds."""
    names = list(per_class)
    maxes = {str(l.get("class")): l for l in locks}
    with _rc():
        fig = _figure(9.6, 0.9 + 0.42 * max(2, len(names)))
        ax = fig.add_subplot()
        for i, cls in enumerate(names):
            vals = [v for v in per_class[cls]["wait_mean_us"] if v > 0]
            if vals:
                jitter = [i + 0.18 * math.sin(k * 2.399) for k in range(len(vals))]
                ax.scatter(vals, jitter, s=14, color="#2b6cb0", alpha=0.6, label="interval mean wait" if i == 0 else None,
                           zorder=3)
                vs = sorted(vals)
                med = vs[len(vs) // 2]
                ax.plot([med, med], [i - 0.3, i + 0.3], color="#1f2933", linewidth=1.6, zorder=4,
                        label="median of the intervals" if i == 0 else None)
            m = maxes.get(cls, {})
            if m.get("wait_max_us"):
                ax.scatter([m["wait_max_us"]], [i], marker="D", s=30, color="#c81e1e", zorder=5,
                           label="largest single wait" if i == 0 else None)
            if m.get("hold_max_us"):
                ax.scatter([m["hold_max_us"]], [i], marker="D", s=30, facecolor="none", edgecolor="#2f855a", zorder=5,
                           label="largest single hold" if i == 0 else None)
        ax.set_yticks(range(len(names)), _shorts(names, 24))
        ax.set_ylim(len(names) - 0.5, -0.5)
        shown = [float(v) for c in names for v in per_class[c]["wait_mean_us"] if v > 0] + [
            float(maxes.get(c, {}).get(k) or 0) for c in names for k in ("wait_max_us", "hold_max_us")]
        shown = [v for v in shown if v > 0]
        if shown:
            ax.set_xscale("log")
            ax.set_xlim(min(shown) / 2, max(shown) * 2)
        else:
            ax.text(0.5, 0.5, "no wait or hold time was recorded", transform=ax.transAxes, ha="center", color="#7b8794")
        ax.set_xlabel("µs (log scale)")
        ax.set_title("Wait and hold times over the run's 1-s intervals")
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig, uid, "wait-distribution")


def _fmt_us(v: float, _pos: object = None) -> str:
    """A time axis in µs, labelled in the unit that reads best."""
    if v <= 0:
        return "0"
    if v >= 1e6:
        return f"{v / 1e6:g} s"
    if v >= 1e3:
        return f"{v / 1e3:g} ms"
    if v >= 1:
        return f"{v:g} µs"
    return f"{v * 1e3:g} ns"


def histograms(hists: dict[str, dict[str, list[int]]], uid: str) -> Markup:
    """Per class, the engine's log2 histograms of wait (contended acquisitions) and hold
    (every release) times: element b counts times t (ns) with 2**(b-1) <= t < 2**b."""
    names = [c for c in hists if any(hists[c].get(k) for k in ("wait_hist", "hold_hist"))]
    with _rc():
        fig = _figure(9.6, 0.7 + 1.45 * max(1, len(names)))
        axes = fig.subplots(max(1, len(names)), 1, sharex=True, squeeze=False)[:, 0]
        lo, hi = math.inf, 0.0
        legend_done: set[str] = set()
        for ax, cls in zip(axes, names):
            counts: list[int] = []
            for key, colour, lab in (("hold_hist", "#2f855a", "hold (every release)"),
                                     ("wait_hist", "#2b6cb0", "wait (contended acquisitions)")):
                hist = [int(v) for v in (hists[cls].get(key) or [])]
                if not any(hist):
                    continue
                # bucket b covers [2**(b-1), 2**b) ns; bucket 0 is t = 0 (drawn at 0.5 ns)
                edges = [0.5 / 1000] + [2 ** b / 1000 for b in range(len(hist))]
                ax.stairs(hist, edges, color=colour, fill=True, alpha=0.28, label=lab)
                ax.stairs(hist, edges, color=colour, linewidth=1.3)
                nz = [b for b, v in enumerate(hist) if v]
                lo = min(lo, edges[nz[0]])
                hi = max(hi, edges[nz[-1] + 1])
                counts += [v for v in hist if v]
            ax.set_xscale("log")
            if _log_wanted([float(c) for c in counts]):
                ax.set_yscale("log")
                ax.set_ylim(bottom=0.7)  # a bucket of one still shows
                ax.set_ylabel("count (log)")
            else:
                ax.set_ylabel("count")
            ax.set_title(_short(cls, 48), fontsize=9.5, fontfamily="monospace")
            kinds = ax.get_legend_handles_labels()[1]
            if kinds and set(kinds) - legend_done:  # a legend where a kind first appears
                ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
                legend_done |= set(kinds)
        if math.isfinite(lo):
            axes[-1].set_xlim(lo / 1.5, hi * 1.5)
        axes[-1].set_xlabel("time (log2 buckets)")
        for ax in axes:
            ax.xaxis.set_major_formatter(FuncFormatter(_fmt_us))
            if ax.get_yscale() == "log":
                ax.yaxis.set_major_locator(LogLocator(numticks=4))
        return _svg(fig, uid, "wait-hold-histograms")


def hist_percentile(hist: list[int], q: float) -> float | None:
    """The upper bound (µs) of the log2 bucket holding the q-quantile, or None."""
    total = sum(hist)
    if not total:
        return None
    need, acc = q * total, 0
    for b, v in enumerate(hist):
        acc += v
        if acc >= need:
            return (2 ** b) / 1000
    return (2 ** (len(hist) - 1)) / 1000


# --------------------------------------------------------------------------------------------
# a soak
# --------------------------------------------------------------------------------------------

def detection_rates(rows: list[dict], uid: str) -> Markup:
    """Per variant: how often its expected finding appeared (buggy variants), how often it
    stayed clean (clean variants)."""
    with _rc():
        fig = _figure(9.6, 0.9 + 0.42 * max(2, len(rows)))
        ax = fig.add_subplot()
        y = list(range(len(rows)))
        vals = [100.0 * r["rate"] if r["rate"] is not None else 0.0 for r in rows]
        colours = ["#2f855a" if r["good"] else "#c81e1e" for r in rows]
        ax.barh(y, vals, color=colours, height=0.6)
        for yi, r, v in zip(y, rows, vals):
            ax.annotate(r["note"], (v, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(y, _shorts([r["label"] for r in rows], 40))
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(0, 118)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel("% of the variant's iterations")
        ax.set_title("Detection rate (buggy variants) and clean rate (clean variants)")
        return _svg(fig, uid, "detection-rate")


def trends(per_variant: dict[str, dict[str, list]], unit: str, uid: str) -> Markup:
    """Over the soak: time to detect and throughput per variant against the iteration's
    start, and the outcome of every iteration."""
    from matplotlib.lines import Line2D

    with _rc():
        fig = _figure(9.6, 6.4 + 0.12 * len(per_variant))
        a1, a2, a3 = fig.subplots(3, 1, sharex=True,
                                  gridspec_kw={"height_ratios": [2.2, 2.2, 0.5 + 0.22 * len(per_variant)]})
        ttd_all: list[float] = []
        labels = list(per_variant)
        cycle = RC["axes.prop_cycle"].by_key()["color"]
        handles = []
        for k, (lab, d) in enumerate(per_variant.items()):
            colour = cycle[k % len(cycle)]
            handles.append(Line2D([], [], color=colour, marker="o", label=_short(lab, 40)))
            pts = [(x, v) for x, v in zip(d["x"], d["ttd"]) if v is not None]
            if pts:
                many = len(pts) > 30  # a night: points only, a line through them would be noise
                a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=2.5 if many else 4,
                        linestyle="none" if many else "-", linewidth=0.8, color=colour)
                ttd_all += [p[1] for p in pts]
            ops = [(x, v) for x, v in zip(d["x"], d["ops"]) if v is not None]
            if ops:
                many = len(ops) > 30
                a2.plot([p[0] for p in ops], [p[1] for p in ops], marker="o" if many else ".", markersize=2 if many else 5,
                        linestyle="none" if many else "-", linewidth=0.9, color=colour)
            # one path per variant and status (a night has thousands of iterations): ticks joined by gaps
            for st in dict.fromkeys(d["status"]):
                xs_st = [x for x, s in zip(d["x"], d["status"]) if s == st]
                a3.plot([v for x in xs_st for v in (x, x, math.nan)], [v for _ in xs_st for v in (k - 0.38, k + 0.38, math.nan)],
                        color=STATUS_COLOUR.get(st, "#4a5568"), linewidth=1.8, solid_capstyle="butt")
        if _log_wanted(ttd_all):
            a1.set_yscale("log")
            a1.set_ylabel("seconds (log scale)")
        else:
            a1.set_ylabel("seconds")
            a1.set_ylim(bottom=0)
        a1.set_title("Time to detect the expected finding, per variant")
        if not ttd_all:
            a1.text(0.5, 0.5, "no iteration detected an expected finding", transform=a1.transAxes, ha="center",
                    color="#7b8794")
        a1.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="variant")
        a2.set_title("Throughput per variant")
        a2.set_ylabel("operations/s")
        a2.set_ylim(bottom=0)
        a3.set_title("Outcome of each iteration")
        a3.set_yticks(range(len(labels)), _shorts(labels, 30))
        a3.set_ylim(len(labels) - 0.5, -0.5)
        a3.grid(False)
        st_handles = [Line2D([], [], color=c, linewidth=3, label=s) for s, c in STATUS_COLOUR.items()
                      if any(s in d["status"] for d in per_variant.values())]
        a3.legend(handles=st_handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="status")
        a3.set_xlabel(f"{unit} since the soak started (iteration start)")
        return _svg(fig, uid, "trends")


# --------------------------------------------------------------------------------------------
# a model's measurements: the new VGIC's ap_list DoS (irq-injection-storm's ``model.dos``)
# --------------------------------------------------------------------------------------------

def dos_rows_of_run(dos: dict) -> list[dict]:
    """One row a vCPU of one run's ``model.dos`` (see workloads/irq_injection_storm.py): its
    flush and prune times, ap_list length, the flush's share of the vCPU, and the share of
    the pCPU a bystander vCPU sharing it got."""
    by = dos.get("bystander") or {}
    rows = []
    for v in dos.get("vcpus") or []:
        rows.append({"label": f"vCPU {v.get('vcpu')}", "flush": v.get("flush_us") or {},
                     "prune": v.get("prune_us") or {}, "ap": v.get("ap_list_len") or {},
                     "flush_share": v.get("flush_share"),
                     "bystander_share": by.get("pcpu_share") if by and by.get("pcpu") == v.get("vcpu") else None})
    return rows


def dos_chart(rows: list[dict], uid: str, title: str) -> Markup:
    """Per row: ``vgic_flush_lr_state`` and ``vgic_prune_ap_list`` time (p50 dot, p99
    diamond, max cross; µs, log scale) with the ap_list length (p99/max) beside it; and the
    flush's share of the vCPU's time with the bystander's share of the pCPU."""
    from matplotlib.lines import Line2D

    names = [n + (f"\nap_list p99 {r['ap'].get('p99', '-')}, max {r['ap'].get('max', '-')}" if r.get("ap") else "")
             for n, r in zip(_shorts([str(r["label"]) for r in rows], 34), rows)]
    y = list(range(len(rows)))
    with _rc():
        fig = _figure(9.6, 1.9 + 0.62 * max(2, len(rows)))
        a1, a2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.7, 1]})
        cols = {"flush": "#2b6cb0", "prune": "#dd6b20"}
        for what, dy in (("flush", -0.13), ("prune", 0.13)):
            for yi, r in zip(y, rows):
                q = r.get(what) or {}
                pts = [(q.get(k), m) for k, m in (("p50", "o"), ("p99", "D"), ("max", "x"))]
                xs = [v for v, _ in pts if isinstance(v, (int, float)) and v > 0]
                if xs:
                    a1.plot([min(xs), max(xs)], [yi + dy] * 2, color=cols[what], linewidth=1, alpha=0.5)
                for v, m in pts:
                    if isinstance(v, (int, float)) and v > 0:
                        a1.plot([v], [yi + dy], marker=m, color=cols[what], linestyle="none", markersize=5)
        a1.set_xscale("log")
        a1.xaxis.set_major_formatter(FuncFormatter(_fmt_us))
        a1.set_yticks(y, names)
        a1.set_ylim(len(rows) - 0.5, -0.5)
        a1.set_xlabel("time per call (log scale)")
        a1.set_title(title)
        a1.legend(handles=[Line2D([], [], color=cols["flush"], marker="o", label="vgic_flush_lr_state"),
                           Line2D([], [], color=cols["prune"], marker="o", label="vgic_prune_ap_list"),
                           Line2D([], [], color="#52606d", marker="o", linestyle="none", label="p50"),
                           Line2D([], [], color="#52606d", marker="D", linestyle="none", label="p99"),
                           Line2D([], [], color="#52606d", marker="x", linestyle="none", label="max")],
                  loc="upper left", bbox_to_anchor=(0.0, -0.32), ncol=3, fontsize=7.5)
        h = 0.3
        fs = [100.0 * float(r["flush_share"]) if isinstance(r.get("flush_share"), (int, float)) else 0.0 for r in rows]
        bs = [100.0 * float(r["bystander_share"]) if isinstance(r.get("bystander_share"), (int, float)) else None
              for r in rows]
        a2.barh([v - h / 2 for v in y], fs, height=h, color="#2b6cb0", label="flush, % of the vCPU's time")
        a2.barh([v + h / 2 for v in y], [b or 0.0 for b in bs], height=h, color="#2f855a",
                label="bystander, % of the shared pCPU")
        for yi, f, b in zip(y, fs, bs):
            a2.annotate(f"{f:.1f}%", (f, yi - h / 2), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=7.5)
            if b is not None:
                a2.annotate(f"{b:.1f}%", (b, yi + h / 2), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7.5)
        a2.set_xlim(0, 118)
        a2.set_xticks([0, 25, 50, 75, 100])
        a2.set_xlabel("%")
        a2.set_title("Share of time")
        a2.legend(loc="upper left", bbox_to_anchor=(0.0, -0.32), fontsize=7.5)
        return _svg(fig, uid, "dos")
