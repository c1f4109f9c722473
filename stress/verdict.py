"""The verdict: what a run found against what its variant expects.

The verdict's words lead with what was found, then say whether it matched, so that no
reader sees "PASS" as the first word of a deadlock:

    DEADLOCK and lock-order inversion found — as expected for rank-lock-inversion
    clean — as expected for upstream (2 known findings, not counted)
    invariant affinity-follows-target violated found — NOT expected: upstream expects clean

``status`` (pass, fail, open, incomplete) is what the store and the exit status use.

Outcome names follow lockdep's reports (see :data:`stress.workload.OUTCOMES`). Before
stress 0.2, an inconsistent irq state, an irq-safe -> irq-unsafe order and a recursion of
two instances of one class were all reported as ``lock-order-inversion``, and a *possible*
AA as ``deadlock``; a workload file written then still passes: its expectation of the old
umbrella name is met by the precise one (:data:`LEGACY`), and the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from .findings import Finding

EXIT_MATCH, EXIT_MISMATCH, EXIT_USAGE, EXIT_HARNESS = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

#: expectations written before the outcome kinds were split: the old name -> the precise
#: outcomes it used to stand for
LEGACY: dict[str, frozenset[str]] = {
    "lock-order-inversion": frozenset({"inconsistent-lock-state", "irq-lock-inversion", "recursive-locking"}),
    "deadlock": frozenset({"recursive-locking"}),
}

_WORDS = {
    "deadlock": "DEADLOCK",
    "lock-order-inversion": "lock-order inversion",
    "guarded-inversion": "guarded lock-order inversion",
    "recursive-locking": "recursive locking",
    "inconsistent-lock-state": "inconsistent lock state",
    "irq-lock-inversion": "HARDIRQ-safe -> HARDIRQ-unsafe lock order",
    "held-by-dead-worker": "lock held by a dead worker",
    "hung": "hung worker",
    "use-after-free": "use-after-free",
    "null-deref": "NULL pointer dereference",
    "double-free": "double free",
    "invalid-free": "invalid free",
    "invalid-access": "wild memory access",
    "stale-read": "stale read",
    "lost-wakeup": "lost wake-up",
    "crash": "crash",
    "bad-unlock": "bad unlock balance",
}


def outcome_words(outcome: str) -> str:
    """An outcome as a reader says it: ``DEADLOCK``, ``invariant assert-held violated``."""
    if outcome.startswith("invariant:"):
        return f"invariant {outcome.split(':', 1)[1]} violated"
    return _WORDS.get(outcome, outcome)


def _and(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _or(items: tuple[str, ...] | list[str]) -> str:
    return " or ".join(outcome_words(o) for o in items)


@dataclass
class Verdict:
    status: str  # "pass", "fail", "open", "incomplete"
    expected: tuple[str, ...]
    found: tuple[str, ...]  # decisive outcomes, and informational ones the variant expects
    unexpected: tuple[str, ...]
    text: str  # headline — match (notes)
    exit_code: int
    headline: str = ""  # what was found: "DEADLOCK and lock-order inversion found", "clean"
    match: str = ""  # whether that is what the variant expects
    known: int = 0  # known findings (reported, not counted)
    info: int = 0  # informational findings (a guarded cycle the variant does not expect)

    def line(self) -> str:
        """The verdict as one line, with the exit status."""
        return f"{self.text} (exit {self.exit_code})"


def _matches(outcome: str, expected: tuple[str, ...]) -> str | None:
    """The expectation ``outcome`` meets, or None (a legacy name counts, see LEGACY)."""
    if outcome in expected:
        return outcome
    for e in expected:
        if outcome in LEGACY.get(e, ()):
            return e
    return None


def judge(expected: tuple[str, ...], findings: list[Finding], incomplete: str = "", variant: str = "") -> Verdict:
    """Compare the findings of a run with what its variant expects."""
    expected = tuple(expected)
    known = [f for f in findings if f.known]
    decisive = [f for f in findings if not f.info and not f.known]
    # an informational finding (a guarded cycle) decides nothing unless the variant expects it
    info_hits = [f for f in findings if f.info and not f.known and f.outcome in expected]
    info_rest = [f for f in findings if f.info and not f.known and f.outcome not in expected]
    found = tuple(sorted({f.outcome for f in decisive + info_hits}))
    who = f" for {variant}" if variant else ""
    notes = []
    legacy = sorted({f"{o} counted as {e} (its name before stress 0.2)"
                     for o in found for e in [_matches(o, expected)] if e is not None and e != o})
    notes += legacy
    if known:
        n = len(known)
        notes.append(f"{n} known finding{'s' if n != 1 else ''}, not counted: "
                     + ", ".join(sorted({f.outcome for f in known})))
    if info_rest:
        n = len(info_rest)
        notes.append(f"{n} informational finding{'s' if n != 1 else ''}: "
                     + ", ".join(sorted({f.outcome for f in info_rest})))
    headline = (_and([outcome_words(o) for o in _order(found)]) + " found") if found else ("clean" if not incomplete
                                                                                          else "nothing found")
    if expected == ("open",):
        status, code = "open", EXIT_MATCH
        match = f"an open question{who}: this run's evidence is the answer"
        unexpected: tuple[str, ...] = ()
    elif expected == ("clean",):
        unexpected = found
        if found:
            status, code, match = "fail", EXIT_MISMATCH, f"NOT expected{who}: it expects clean"
        elif incomplete:
            status, code, match = "incomplete", EXIT_MISMATCH, f"but incomplete: {incomplete}"
        else:
            status, code, match = "pass", EXIT_MATCH, f"as expected{who}"
    else:
        hit = [o for o in found if _matches(o, expected)]
        unexpected = tuple(o for o in found if not _matches(o, expected))
        if hit and not unexpected:
            status, code, match = "pass", EXIT_MATCH, f"as expected{who}"
        elif unexpected:
            status, code = "fail", EXIT_MISMATCH
            match = (f"NOT as expected{who}: {_or(unexpected)} "
                     f"{'is' if len(unexpected) == 1 else 'are'} not among the expected {_or(expected)}")
        else:
            status, code = "fail", EXIT_MISMATCH
            match = f"NOT as expected{who}: it expects {_or(expected)}"
            if incomplete:
                notes.append(f"incomplete: {incomplete}")
    text = f"{headline} — {match}" + (f" ({'; '.join(notes)})" if notes else "")
    return Verdict(status, expected, found, unexpected, text, code, headline, match, len(known), len(info_rest))


_SEVERITY = ("deadlock", "held-by-dead-worker", "use-after-free", "null-deref", "double-free", "invalid-free",
             "invalid-access", "crash")


def _order(found: tuple[str, ...]) -> list[str]:
    """The most severe first (a DEADLOCK before the inversion that predicted it)."""
    return sorted(found, key=lambda o: (_SEVERITY.index(o) if o in _SEVERITY else len(_SEVERITY), o))
