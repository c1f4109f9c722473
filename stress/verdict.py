"""The verdict: what a run found against what its variant expects."""

from __future__ import annotations

from dataclasses import dataclass

from .findings import Finding

EXIT_MATCH, EXIT_MISMATCH, EXIT_USAGE, EXIT_HARNESS = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


@dataclass
class Verdict:
    status: str  # "pass", "fail", "open", "incomplete"
    expected: tuple[str, ...]
    found: tuple[str, ...]
    unexpected: tuple[str, ...]
    text: str
    exit_code: int


def judge(expected: tuple[str, ...], findings: list[Finding], incomplete: str = "") -> Verdict:
    decisive = [f for f in findings if not f.info and not f.known]
    known = sorted({f.outcome for f in findings if f.known})
    v = _judge(expected, decisive, incomplete)
    if known:
        v.text += f" (known: {', '.join(known)})"
    return v


def _judge(expected: tuple[str, ...], decisive: list[Finding], incomplete: str) -> Verdict:
    found = tuple(sorted({f.outcome for f in decisive}))
    if expected == ("open",):
        shown = ", ".join(found) or "no finding"
        return Verdict("open", expected, found, (), f"open question; this run showed: {shown}", EXIT_MATCH)
    if expected == ("clean",):
        if found:
            return Verdict("fail", expected, found, found, f"expected clean, found {', '.join(found)}", EXIT_MISMATCH)
        if incomplete:
            return Verdict("incomplete", expected, found, (), f"no finding, but incomplete: {incomplete}", EXIT_MISMATCH)
        return Verdict("pass", expected, found, (), "clean, as expected", EXIT_MATCH)
    hit = [o for o in found if o in expected]
    unexpected = tuple(o for o in found if o not in expected)
    if hit and not unexpected:
        return Verdict("pass", expected, found, (), f"found {', '.join(hit)}, as expected", EXIT_MATCH)
    if unexpected:
        return Verdict("fail", expected, found, unexpected,
                       f"expected {' or '.join(expected)}, found {', '.join(found)}", EXIT_MISMATCH)
    why = f" (incomplete: {incomplete})" if incomplete else ""
    return Verdict("fail", expected, found, (), f"expected {' or '.join(expected)}, found nothing{why}", EXIT_MISMATCH)
