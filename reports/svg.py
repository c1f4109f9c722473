"""Hand-laid SVG pictures: the lock-class dependency graph and the per-worker swimlane.

Both are built as strings from escaped parts (every class name, site and trace text goes
through :func:`esc`), returned as :class:`markupsafe.Markup` for the templates. No script,
no external reference: tooltips are SVG ``<title>`` elements, which browsers show on hover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from markupsafe import Markup, escape

# colours shared with the stylesheet
INK = "#1f2933"
MUTED = "#7b8794"
EDGE = "#52606d"
RED = "#c81e1e"
AMBER = "#b7791f"
BLUE = "#2b6cb0"
GREEN = "#2f855a"
ORANGE = "#dd6b20"
FONT = "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace"
CHAR_W = 7.3  # px per character of the 12px monospace font (DejaVu Sans Mono ~0.6 em)


def esc(s: object) -> str:
    return str(escape(str(s)))


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


# --------------------------------------------------------------------------------------------
# the lock-class dependency graph
# --------------------------------------------------------------------------------------------

@dataclass
class GEdge:
    src: str
    dst: str
    data: dict
    colour: str = EDGE
    role: str = ""  # "cycle" | "guarded-cycle" | "" ; "new" for a reported edge not in the graph
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class GNode:
    name: str
    rank: int
    dummy: bool = False
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    order: float = 0.0


def _cycle_pairs(cycle: list[str]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(cycle, cycle[1:])} if len(cycle) > 1 else set()


def class_graph_svg(graph: dict, cycles: list[tuple[list[str], bool]], extra_edges: list[dict], uid: str) -> Markup:
    """The class graph laid out in layers (lockdep's order top to bottom: a lock is drawn
    above the locks taken while holding it), so an inversion is an edge drawn upwards.

    ``cycles``: (classes on a reported cycle, guarded); ``extra_edges``: dependencies a
    finding reported that the stored graph lacks (the edge that would close a cycle)."""
    classes: list[str] = list(dict.fromkeys(list(graph.get("classes") or [])))
    raw_edges = list(graph.get("edges") or [])
    seen = {(e.get("from"), e.get("to")) for e in raw_edges}
    for e in extra_edges:
        if (e.get("from"), e.get("to")) not in seen:
            raw_edges.append(dict(e, _new=True))
            seen.add((e.get("from"), e.get("to")))
    for e in raw_edges:
        for c in (e.get("from"), e.get("to")):
            if c not in classes:
                classes.append(str(c))
    if not classes:
        return Markup('<p class="muted">No lock class was registered.</p>')

    red: set[tuple[str, str]] = set()
    amber: set[tuple[str, str]] = set()
    for cyc, guarded in cycles:
        (amber if guarded else red).update(_cycle_pairs([str(c) for c in cyc]))
    edges: list[GEdge] = []
    for e in raw_edges:
        ge = GEdge(str(e.get("from")), str(e.get("to")), e)
        pair = (ge.src, ge.dst)
        if pair in red:
            ge.colour, ge.role = RED, "cycle"
        elif pair in amber:
            ge.colour, ge.role = AMBER, "guarded-cycle"
        edges.append(ge)

    # 1. ranks: break cycles (DFS from the sources, edges in first-seen order), longest path
    out: dict[str, list[str]] = {c: [] for c in classes}
    indeg = {c: 0 for c in classes}
    for ge in sorted(edges, key=lambda g: g.data.get("seq", 1 << 30)):
        if ge.src != ge.dst:
            out[ge.src].append(ge.dst)
            indeg[ge.dst] += 1
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()

    def dfs(u: str) -> None:
        state[u] = 1
        for v in out[u]:
            if state.get(v) == 1:
                back.add((u, v))
            elif v not in state:
                dfs(v)
        state[u] = 2

    for c in [c for c in classes if indeg[c] == 0] + classes:
        if c not in state:
            dfs(c)
    dag: dict[str, list[str]] = {c: [] for c in classes}
    for u in classes:
        for v in out[u]:
            a, b = ((v, u) if (u, v) in back else (u, v))
            if b not in dag[a]:
                dag[a].append(b)
    rank: dict[str, int] = {}

    def depth(u: str, stack: frozenset = frozenset()) -> int:
        if u in rank:
            return rank[u]
        preds = [a for a in classes if u in dag[a] and a not in stack]
        rank[u] = 0 if not preds else 1 + max(depth(a, stack | {u}) for a in preds)
        return rank[u]

    for c in classes:
        depth(c)
    # classes in no dependency at all: a row of their own at the bottom, not among the outer locks
    linked = {g.src for g in edges} | {g.dst for g in edges}
    lonely = [c for c in classes if c not in linked]
    if lonely and len(lonely) < len(classes):
        bottom = max(rank[c] for c in classes if c in linked) + 1
        for c in lonely:
            rank[c] = bottom

    # 2. nodes, with dummy nodes on edges that span more than one layer
    nodes: dict[str, GNode] = {c: GNode(c, rank[c], w=max(60.0, len(c) * CHAR_W + 22)) for c in classes}
    chains: list[tuple[GEdge, list[str]]] = []  # edge -> node names from its upper to its lower end
    for i, ge in enumerate(edges):
        if ge.src == ge.dst:
            chains.append((ge, [ge.src]))
            continue
        top, bottom = (ge.src, ge.dst) if rank[ge.src] < rank[ge.dst] else (ge.dst, ge.src)
        path = [top]
        for r in range(rank[top] + 1, rank[bottom]):
            d = f"\0{i}:{r}"
            nodes[d] = GNode(d, r, dummy=True, w=14.0)
            path.append(d)
        path.append(bottom)
        chains.append((ge, path))
    layers: dict[int, list[str]] = {}
    for n in nodes.values():
        layers.setdefault(n.rank, []).append(n.name)
    nbrs: dict[str, set[str]] = {n: set() for n in nodes}
    for _, path in chains:
        for a, b in zip(path, path[1:]):
            nbrs[a].add(b)
            nbrs[b].add(a)

    # 3. order within layers: barycentre sweeps
    for r, names in layers.items():
        for k, n in enumerate(names):
            nodes[n].order = k
    depth_max = max(layers)
    for sweep in range(6):
        rng = range(1, depth_max + 1) if sweep % 2 == 0 else range(depth_max - 1, -1, -1)
        for r in rng:
            ref = r - 1 if sweep % 2 == 0 else r + 1
            names = layers.get(r, [])

            def bary(n: str) -> float:
                adj = [nodes[m].order for m in nbrs[n] if nodes[m].rank == ref]
                return sum(adj) / len(adj) if adj else nodes[n].order

            names.sort(key=lambda n: (bary(n), nodes[n].order))
            for k, n in enumerate(names):
                nodes[n].order = k

    # 4. coordinates
    gap, layer_h, node_h, margin = 34.0, 96.0, 30.0, 24.0
    widths = {r: sum(nodes[n].w for n in names) + gap * (len(names) - 1) for r, names in layers.items()}
    total_w = max(widths.values()) + 2 * margin + 160  # room on the right for edges drawn upwards
    for r, names in layers.items():
        x = margin + (total_w - 160 - 2 * margin - widths[r]) / 2
        for n in names:
            nodes[n].x = x + nodes[n].w / 2
            nodes[n].y = margin + 14 + r * layer_h + node_h / 2
            x += nodes[n].w + gap
    height = margin * 2 + 14 + depth_max * layer_h + node_h + 10

    # 5. edges: ports on the box edges, cubic segments with vertical tangents through dummies
    pairs = {(g.src, g.dst) for g in edges}
    out_parts: list[str] = []
    defs = []
    for name, colour in (("n", EDGE), ("r", RED), ("a", AMBER)):
        defs.append(f'<marker id="{uid}-arr-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                    f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>')
    edge_svg: list[str] = []
    label_svg: list[str] = []
    for ge, path in chains:
        data = ge.data
        marker = {RED: "r", AMBER: "a"}.get(ge.colour, "n")
        guards = [str(g) for g in (data.get("guards") or [])]
        dash = ' stroke-dasharray="6 4"' if guards else ""
        width = 2.4 if ge.role else 1.4
        tip = _edge_tooltip(ge)
        if ge.src == ge.dst:  # recursion: a loop on the right of the box
            n = nodes[ge.src]
            x0, y0 = n.x + n.w / 2, n.y - 6
            d = f"M{_f(x0)},{_f(y0)} C{_f(x0 + 46)},{_f(y0 - 30)} {_f(x0 + 46)},{_f(y0 + 42)} {_f(x0 + 2)},{_f(y0 + 12)}"
            mid = (x0 + 36, y0 + 6)
        else:
            upward = rank[ge.src] > rank[ge.dst]
            reciprocal = (ge.dst, ge.src) in pairs
            bow = (14.0 if upward else -14.0) if reciprocal else 0.0
            pts = []
            for k, n in enumerate(path):
                nd = nodes[n]
                if k == 0:
                    pts.append((nd.x + bow, nd.y + node_h / 2))
                elif k == len(path) - 1:
                    pts.append((nd.x + bow, nd.y - node_h / 2))
                else:
                    pts.append((nd.x + bow * 2, nd.y))
            if upward:
                pts.reverse()
            ge.points = pts
            segs = [f"M{_f(pts[0][0])},{_f(pts[0][1])}"]
            for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
                dy = (yb - ya) / 2
                bx = 2.2 * bow
                segs.append(f"C{_f(xa + bx)},{_f(ya + dy)} {_f(xb + bx)},{_f(yb - dy)} {_f(xb)},{_f(yb)}")
            d = " ".join(segs)
            k = len(pts) // 2
            (xa, ya), (xb, yb) = pts[k - 1], pts[k]
            mid = ((xa + xb) / 2 + 1.65 * bow, (ya + yb) / 2)
        cls = "edge" + (f" {ge.role}" if ge.role else "") + (" guarded" if guards else "") + (" new" if data.get("_new") else "")
        edge_svg.append(
            f'<g class="{cls}" data-from="{esc(ge.src)}" data-to="{esc(ge.dst)}"><title>{tip}</title>'
            f'<path d="{d}" fill="none" stroke="transparent" stroke-width="12"/>'
            f'<path d="{d}" fill="none" stroke="{ge.colour}" stroke-width="{width}"{dash} '
            f'marker-end="url(#{uid}-arr-{marker})"/></g>')
        if guards:
            text = "under " + ", ".join(guards)
            anchor = "start"
            label_svg.append(f'<g class="edge-label"><title>{tip}</title><text x="{_f(mid[0] + 6)}" y="{_f(mid[1] + 4)}" '
                             f'font-size="11" fill="{ge.colour if ge.role else MUTED}" text-anchor="{anchor}" '
                             f'paint-order="stroke" stroke="#fff" stroke-width="3">{esc(text)}</text></g>')
        elif data.get("_new"):
            label_svg.append(f'<text x="{_f(mid[0] + 6)}" y="{_f(mid[1] + 4)}" font-size="11" fill="{ge.colour}" '
                             f'paint-order="stroke" stroke="#fff" stroke-width="3">new</text>')

    node_svg: list[str] = []
    on_cycle = {c for p in red for c in p}
    on_guarded = {c for p in amber for c in p}
    for n in nodes.values():
        if n.dummy:
            continue
        stroke = RED if n.name in on_cycle else AMBER if n.name in on_guarded else "#9aa5b1"
        fill = "#fff5f5" if n.name in on_cycle else "#fffaf0" if n.name in on_guarded else "#f5f7fa"
        dash = ' stroke-dasharray="3 3"' if n.name in lonely else ""
        ins = sum(1 for g in edges if g.dst == n.name)
        outs = sum(1 for g in edges if g.src == n.name)
        node_svg.append(
            f'<g class="node" data-class="{esc(n.name)}"><title>lock class {esc(n.name)}: '
            f'{"never held together with another class" if n.name in lonely else f"{outs} dependencies out, {ins} in"}</title><rect x="{_f(n.x - n.w / 2)}" y="{_f(n.y - node_h / 2)}" width="{_f(n.w)}" height="{_f(node_h)}" '
            f'rx="5" fill="{fill}" stroke="{stroke}" stroke-width="1.4"{dash}/>'
            f'<text x="{_f(n.x)}" y="{_f(n.y + 4)}" text-anchor="middle" font-size="12" fill="{INK}">{esc(n.name)}</text></g>')
    return Markup(
        f'<svg class="class-graph" id="{uid}" viewBox="0 0 {_f(total_w)} {_f(height)}" width="{_f(total_w)}" '
        f'height="{_f(height)}" role="img" aria-label="lock-class dependency graph" font-family="{FONT}">'
        f'<defs>{"".join(defs)}</defs>{"".join(edge_svg)}{"".join(node_svg)}{"".join(label_svg)}</svg>')


def _edge_tooltip(ge: GEdge) -> str:
    d = ge.data
    lines = [f"{ge.src} -> {ge.dst}: {ge.dst} taken while holding {ge.src}"]
    if d.get("from_site"):
        lines.append(f"{ge.src} acquired at {d['from_site']}")
    if d.get("to_site"):
        lines.append(f"{ge.dst} acquired at {d['to_site']}")
    if d.get("first_by"):
        lines.append(f"first seen in {d['first_by']}")
    if d.get("guards"):
        lines.append("every time under " + ", ".join(map(str, d["guards"])))
    if ge.role == "cycle":
        lines.append("on the reported circular dependency")
    elif ge.role == "guarded-cycle":
        lines.append("on a cycle every edge of which is guarded by an outer lock (information)")
    if d.get("_new"):
        lines.append("the dependency the finding reported (it closes the cycle)")
    return esc("\n".join(lines))


# --------------------------------------------------------------------------------------------
# the swimlane of trace events
# --------------------------------------------------------------------------------------------

KIND_STYLE = {  # kind -> (shape, colour, legend)
    "op": ("tick", MUTED, "operation start"),
    "op-end": ("tick", MUTED, "operation end"),
    "event": ("dot", BLUE, "model event"),
    "contend": ("tri", RED, "lock contended"),
    "acquired": ("dot", GREEN, "lock acquired after waiting"),
    "acquire": ("bar", "#4a5568", "lock acquire"),
    "release": ("bar", "#a0aec0", "lock release"),
    "trylock-fail": ("x", RED, "trylock failed"),
    "irq-raise": ("up", ORANGE, "interrupt raised"),
    "irq-enter": ("bar", ORANGE, "interrupt handler entry"),
    "irq-exit": ("bar", ORANGE, "interrupt handler exit"),
}


def _nice_step(span: float, n: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _fmt_ms(v: float, step: float) -> str:
    dec = max(0, min(3, -int(math.floor(math.log10(step))) if step > 0 else 0))
    s = f"{v:+.{dec}f}"
    return "0" if float(s) == 0 else s


class _TimeAxis:
    """Piecewise-linear time -> x with long idle gaps compressed (and marked), so twenty
    events within 0.3 ms and one 250 ms later are all readable."""

    def __init__(self, times: list[float], x0: float, x1: float) -> None:
        ts = sorted(set(times)) or [0.0]
        span = ts[-1] - ts[0]
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        thr = span * 0.3
        small = sum(g for g in gaps if g <= thr)
        self.cap = max(small * 0.06, span * 0.01, 1e-9) if any(g > thr for g in gaps) else 0.0
        self.knots: list[tuple[float, float]] = [(ts[0], 0.0)]  # (time, display)
        self.breaks: list[tuple[float, float, float]] = []  # (display from, display to, real gap)
        self.cut: list[tuple[float, float]] = []  # (real from, real to) of each shortened gap
        d = 0.0
        for a, b in zip(ts, ts[1:]):
            g = b - a
            if thr and g > thr:
                self.breaks.append((d, d + self.cap, g))
                self.cut.append((a, b))
                d += self.cap
            else:
                d += g
            self.knots.append((b, d))
        self.d_total = d or 1.0
        self.x0, self.x1 = x0, x1
        self.pad = (x1 - x0) * 0.02

    def dx(self, d: float) -> float:
        return self.x0 + self.pad + (self.x1 - self.x0 - 2 * self.pad) * d / self.d_total

    def x(self, t: float) -> float:
        k = self.knots
        if t <= k[0][0]:
            return self.dx(k[0][1] - (k[0][0] - t))
        for (ta, da), (tb, db) in zip(k, k[1:]):
            if t <= tb:
                return self.dx(da + (db - da) * ((t - ta) / (tb - ta) if tb > ta else 0.0))
        return self.dx(k[-1][1] + (t - k[-1][0]))

    def segments(self) -> list[tuple[float, float]]:
        """Real-time ranges drawn at their true scale."""
        segs, start = [], self.knots[0][0]
        for a, b in self.cut:
            segs.append((start, a))
            start = b
        segs.append((start, self.knots[-1][0]))
        return segs


def _fmt_gap(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 10:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms * 1000:.0f} µs"


def swimlane_svg(lanes: list[tuple[str, list[dict]]], t_ref_ns: int, uid: str, caption: str = "",
                 keys: bool = False) -> Markup:
    """One lane per worker, x = time relative to the report (ms, negative = before).
    ``lanes``: (label, events oldest first) with t_ns/ctx/kind/text (and ``key``)."""
    lanes = [(lbl, [e for e in evs if isinstance(e, dict) and "t_ns" in e]) for lbl, evs in lanes]
    lanes = [(lbl, evs) for lbl, evs in lanes if evs]
    if not lanes:
        return Markup('<p class="muted">No trace events were recorded with this finding.</p>')
    ref = t_ref_ns or max(e["t_ns"] for _, evs in lanes for e in evs)
    rel = lambda e: (e["t_ns"] - ref) / 1e6  # noqa: E731
    label_w = max(120.0, min(260.0, max(len(lbl) for lbl, _ in lanes) * 6.7 + 16))
    width, top = 1120.0, 34.0
    lane_h = 48.0 if any(_short_label(e, keys and bool(e.get("key"))) for _, evs in lanes for e in evs) else 38.0
    x0, x1 = label_w, width - 16
    times = [rel(e) for _, evs in lanes for e in evs] + [0.0]
    ax = _TimeAxis(times, x0, x1)
    height = top + lane_h * len(lanes) + 34
    snap_t = max(times)
    p: list[str] = []
    # lanes
    for i, (lbl, evs) in enumerate(lanes):
        y = top + i * lane_h
        p.append(f'<rect x="0" y="{_f(y)}" width="{_f(width)}" height="{_f(lane_h)}" fill="{"#f7f9fb" if i % 2 == 0 else "#ffffff"}"/>')
        p.append(f'<text x="8" y="{_f(y + lane_h / 2 + 4)}" font-size="11.5" fill="{INK}">{esc(lbl)}</text>')
        p.append(f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(y + lane_h * 0.68)}" y2="{_f(y + lane_h * 0.68)}" stroke="#d9e2ec"/>')
        p.append(f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(y + lane_h * 0.3)}" y2="{_f(y + lane_h * 0.3)}" stroke="#fbe3cf"/>')
    # axis: true-scale segments with ticks, compressed gaps marked
    ya = top + lane_h * len(lanes)
    p.append(f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(ya)}" y2="{_f(ya)}" stroke="{MUTED}"/>')
    last_label_x = -1e9
    for a, b in ax.segments():
        xa, xb = ax.x(a), ax.x(b)
        n = max(1, int((xb - xa) / 110))
        step = _nice_step(b - a, n) if b > a else 0.0
        ticks = [a] if step == 0 else [step * k for k in range(math.ceil(a / step - 1e-9), math.floor(b / step + 1e-9) + 1)]
        if step and not ticks:
            ticks = [a]
        for t in ticks:
            xt = ax.x(t)
            p.append(f'<line x1="{_f(xt)}" x2="{_f(xt)}" y1="{_f(ya)}" y2="{_f(ya + 4)}" stroke="{MUTED}"/>')
            if xt - last_label_x > 64:
                p.append(f'<text x="{_f(xt)}" y="{_f(ya + 16)}" font-size="10.5" text-anchor="middle" '
                         f'fill="{MUTED}">{_fmt_ms(t, step or max(abs(t), 0.001))}</text>')
                last_label_x = xt
    for da, db, g in ax.breaks:
        xa, xb = ax.dx(da), ax.dx(db)
        xm = (xa + xb) / 2
        p.append(f'<g class="gap"><title>{esc(_fmt_gap(g))} without events, drawn shortened</title>'
                 f'<rect x="{_f(xa)}" y="{_f(top)}" width="{_f(max(2.0, xb - xa))}" height="{_f(ya - top)}" fill="url(#{uid}-hatch)"/>'
                 f'<text x="{_f(xm)}" y="{_f(top - 6)}" font-size="10" text-anchor="middle" fill="{MUTED}">'
                 f'⋯{esc(_fmt_gap(g))}⋯</text></g>')
    p.append(f'<text x="{_f(x1)}" y="{_f(ya + 30)}" font-size="10.5" text-anchor="end" fill="{MUTED}">'
             f'ms relative to the report{esc(" (hatched: idle time drawn shortened)") if ax.breaks else ""}</text>')
    x_ref = ax.x(0.0)
    p.append(f'<line class="report-time" x1="{_f(x_ref)}" x2="{_f(x_ref)}" y1="{_f(top - 2)}" y2="{_f(ya)}" stroke="{RED}" '
             f'stroke-dasharray="3 3"/><text x="{_f(x_ref)}" y="{_f(top - 18)}" font-size="10.5" text-anchor="middle" '
             f'fill="{RED}">report</text>')
    # spans (irq handler, lock wait) under the events; not for a filtered history (keys), whose
    # handler exits and acquisitions are not part of it
    for i, (lbl, evs) in enumerate(lanes if not keys else []):
        y = top + i * lane_h
        irq_open: float | None = None
        waits: dict[str, tuple[float, dict]] = {}
        for e in evs:
            t = rel(e)
            if e.get("kind") == "irq-enter":
                irq_open = t
            elif e.get("kind") == "irq-exit" and irq_open is not None:
                p.append(_span(ax, irq_open, t, y + 3, lane_h * 0.42, ORANGE, 0.22, f"in interrupt context: {_fmt_gap(t - irq_open)}"))
                irq_open = None
            elif e.get("kind") == "contend":
                waits[str(e.get("ctx"))] = (t, e)
            elif e.get("kind") == "acquired" and str(e.get("ctx")) in waits:
                t0, ce = waits.pop(str(e.get("ctx")))
                p.append(_span(ax, t0, t, y + lane_h * 0.52, lane_h * 0.32, RED, 0.25,
                               f"waited {_fmt_gap(t - t0)} for {e.get('text', '')}", cls="wait"))
        if irq_open is not None:
            p.append(_span(ax, irq_open, snap_t, y + 3, lane_h * 0.42, ORANGE, 0.22, "in interrupt context until the trace was taken"))
        for ctx, (t0, ce) in waits.items():
            yy = y + 3 if ctx == "irq" else y + lane_h * 0.52
            p.append(_span(ax, t0, max(snap_t, t0), yy, lane_h * 0.32, RED, 0.45,
                           f"still waiting when the trace was taken ({_fmt_gap(max(snap_t, t0) - t0)}): {ce.get('text', '')}",
                           cls="wait open"))
    # events, and a short label under the ones that tell the story (where there is room)
    for i, (lbl, evs) in enumerate(lanes):
        y = top + i * lane_h
        label_end = -1e9
        for e in evs:
            t = rel(e)
            kind = str(e.get("kind", ""))
            ctx = str(e.get("ctx", "task"))
            shape, colour, _ = KIND_STYLE.get(kind, ("dot", INK, kind))
            cy = y + (lane_h * 0.3 if ctx == "irq" else lane_h * 0.68)
            stroke = ORANGE if ctx == "irq" and colour not in (ORANGE,) else "none"
            tip = f"{t:+.3f} ms  {ctx}  {kind}\n{e.get('text', '')}"
            key = bool(keys and e.get("key"))
            if key:
                tip += "\n(* a state change of the subject)"
            xe = ax.x(t)
            p.append(f'<g class="ev ev-{esc(kind)} ctx-{esc(ctx)}{" key" if key else ""}"><title>{esc(tip)}</title>'
                     f'{_glyph(shape, xe, cy, colour, stroke, big=key)}</g>')
            short = _short_label(e, key)
            if short and xe - 3 > label_end and xe + len(short) * 5.6 < width:
                p.append(f'<text class="evlabel" x="{_f(xe - 3)}" y="{_f(y + lane_h - 3)}" font-size="9.5" '
                         f'fill="{colour if kind == "contend" else "#3e4c59"}">{esc(short)}</text>')
                label_end = xe - 3 + len(short) * 5.75 + 6
    legend = _legend(lanes, keys)
    cap = f'<text x="8" y="14" font-size="11" fill="{MUTED}">{esc(caption)}</text>' if caption else ""
    return Markup(
        f'<svg class="swimlane" id="{uid}" viewBox="0 0 {_f(width)} {_f(height)}" width="{_f(width)}" height="{_f(height)}" '
        f'role="img" aria-label="{esc(caption or "trace events per worker")}" font-family="{FONT}">'
        f'<defs><pattern id="{uid}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="#ffffff"/><line x1="0" y1="0" x2="0" y2="6" stroke="#cbd2d9" stroke-width="2"/></pattern></defs>'
        f'{cap}{"".join(p)}</svg>') + legend


def _short_label(e: dict, key: bool) -> str:
    """A few words for an event worth naming in the picture: a lock contended (its class),
    a state change of the subject (the model event's name)."""
    text = str(e.get("text", ""))
    kind = e.get("kind")
    if kind in ("contend", "trylock-fail"):
        return text.split(" at ", 1)[0][:34]
    if key:
        return text.split(":", 1)[0][:22]
    return ""


def _span(ax: _TimeAxis, t0: float, t1: float, y: float, h: float, colour: str, alpha: float, tip: str,
          cls: str = "span") -> str:
    xa, xb = ax.x(t0), ax.x(t1)
    return (f'<g class="{cls}"><title>{esc(tip)}</title><rect x="{_f(xa)}" y="{_f(y)}" width="{_f(max(1.5, xb - xa))}" '
            f'height="{_f(h)}" fill="{colour}" fill-opacity="{alpha}" rx="2"/></g>')


def _glyph(shape: str, x: float, y: float, colour: str, stroke: str, big: bool = False) -> str:
    r = 4.6 if big else 3.4
    st = f' stroke="{stroke}" stroke-width="1.2"' if stroke != "none" else ""
    if shape == "tick":
        return f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(y - 6)}" y2="{_f(y + 6)}" stroke="{colour}" stroke-width="1.3"/>'
    if shape == "bar":
        return f'<rect x="{_f(x - 1.2)}" y="{_f(y - 7)}" width="2.4" height="14" fill="{colour}"/>'
    if shape == "tri":
        return f'<path d="M{_f(x)},{_f(y - 6)} L{_f(x + 5)},{_f(y + 4)} L{_f(x - 5)},{_f(y + 4)} z" fill="{colour}"{st}/>'
    if shape == "up":
        return f'<path d="M{_f(x)},{_f(y - 6)} L{_f(x + 4)},{_f(y + 2)} L{_f(x - 4)},{_f(y + 2)} z" fill="none" stroke="{colour}" stroke-width="1.4"/>'
    if shape == "x":
        return (f'<path d="M{_f(x - 4)},{_f(y - 4)} L{_f(x + 4)},{_f(y + 4)} M{_f(x - 4)},{_f(y + 4)} L{_f(x + 4)},{_f(y - 4)}" '
                f'stroke="{colour}" stroke-width="1.6"/>')
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" fill="{colour}"{st}/>'


def _legend(lanes: Iterable[tuple[str, list[dict]]], keys: bool) -> Markup:
    kinds = []
    for _, evs in lanes:
        for e in evs:
            k = str(e.get("kind", ""))
            if k not in kinds:
                kinds.append(k)
    items = []
    for k in sorted(kinds, key=lambda k: list(KIND_STYLE).index(k) if k in KIND_STYLE else 99):
        shape, colour, text = KIND_STYLE.get(k, ("dot", INK, k))
        items.append(f'<span class="lg"><svg width="14" height="14" viewBox="0 0 14 14">{_glyph(shape, 7, 8, colour, "none")}</svg>'
                     f'{esc(text)} <code>{esc(k)}</code></span>')
    items.append(f'<span class="lg"><span class="sw" style="background:{ORANGE};opacity:.35"></span>interrupt context '
                 f'(upper track; lower track: task)</span>')
    items.append(f'<span class="lg"><span class="sw" style="background:{RED};opacity:.4"></span>waiting for a lock</span>')
    if keys:
        items.append('<span class="lg">larger marks: state changes of the subject (<code>*</code> in the text)</span>')
    return Markup('<div class="legend">' + "".join(items) + "</div>")
