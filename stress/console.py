"""What the user sees while a run goes: a rich live view on a terminal, plain periodic lines
without one (CI), finding reports as they appear, and the end-of-run summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console as RichConsole, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .metrics import Snapshot

PLAIN_EVERY_S = 5.0
WIDE = 10_000  # without a terminal: never cut a lock class, a site or a command


def make_console(file: Any = None, markup: bool = True, color: bool | None = None, width: int | None = None) -> RichConsole:
    """The one console factory (cli, the live view, soak): the real width on a terminal, a very
    wide one otherwise (CI logs keep whole lock names; lines are not wrapped either)."""
    stream = sys.stdout if file is None else file
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    kw: dict[str, Any] = {}
    if color is False:
        kw["no_color"] = True
        kw["color_system"] = None
    return RichConsole(file=file, highlight=False, markup=markup, emoji=False, soft_wrap=True,
                       width=width if width is not None else (None if tty else WIDE), **kw)


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _dur(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


class Console:
    def __init__(self, live: bool | None = None, quiet: bool = False, file: Any = None) -> None:
        """``file``: where progress, findings and the header go (stdout; stderr for --json)."""
        self.out = make_console(file)
        stream = sys.stdout if file is None else file
        self.live_enabled = (stream.isatty() if live is None else live) and not quiet
        self.quiet = quiet
        self._live: Live | None = None
        self._prev: Snapshot | None = None
        self._prev_t = 0.0
        self._last_plain = time.monotonic()
        self._rates: dict[str, float] = {}
        self._wrates: dict[int, float] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def begin(self, header: str) -> None:
        self.print(header)
        if self.live_enabled:
            self._live = Live(Text("starting workers..."), console=self.out, refresh_per_second=4, transient=True)
            self._live.start()

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def print(self, text: str = "", style: str | None = None) -> None:
        if self.quiet:
            return
        self.out.print(Text(text, style=style) if style else Text(text))

    def finding(self, text: str, info: bool = False) -> None:
        """A report appears above the live view at once."""
        self.out.print(Text(text, style="yellow" if info else "bold red"))

    # -- progress -------------------------------------------------------------------------------
    def update(self, snap: Snapshot, elapsed: float, duration: float, n_findings: int, extra: str = "") -> None:
        now = time.monotonic()
        if self._prev is not None and now > self._prev_t:
            dt = now - self._prev_t
            self._rates = {k: (v - self._prev.ops.get(k, 0)) / dt for k, v in snap.ops.items()}
            prev_w = {r.wid: r.ops for r in self._prev.workers}
            self._wrates = {r.wid: (r.ops - prev_w.get(r.wid, 0)) / dt for r in snap.workers}
        self._prev, self._prev_t = snap, now
        if self._live is not None:
            self._live.update(self._view(snap, elapsed, duration, n_findings, extra))
        elif not self.quiet and now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            total = sum(self._rates.values())
            per_op = "  ".join(f"{k} {_rate(v)}/s" for k, v in self._rates.items())
            self.out.print(Text(f"[{_dur(elapsed)}/{_dur(duration)}] {snap.total_ops} ops ({_rate(total)}/s), "
                                f"findings {n_findings}{extra} | {per_op}"))

    def _view(self, snap: Snapshot, elapsed: float, duration: float, n_findings: int, extra: str) -> Any:
        head = Text(f"elapsed {_dur(elapsed)}  remaining {_dur(max(0.0, duration - elapsed))}  "
                    f"ops {snap.total_ops} ({_rate(sum(self._rates.values()))}/s)  irqs {snap.irqs}  "
                    f"findings {n_findings}{extra}", style="bold red" if n_findings else "bold")
        wt = Table(box=None, pad_edge=False, header_style="bold")
        for c in ("cpu", "role", "pid", "state", "ops/s", "operation", "locks held", "waiting for"):
            wt.add_column(c, overflow="fold")
        for r in snap.workers:
            wt.add_row(str(r.wid), r.role, str(r.pid), r.state, _rate(self._wrates.get(r.wid, 0.0)), r.op,
                       ", ".join(r.held), r.waiting)
        ot = Table(box=None, pad_edge=False, header_style="bold")
        for c in ("operation", "total", "ops/s"):
            ot.add_column(c, overflow="fold")
        for k, v in snap.ops.items():
            ot.add_row(k, str(v), _rate(self._rates.get(k, 0.0)))
        return Group(head, wt, ot)
