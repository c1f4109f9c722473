"""Findings as text, in the shape and words of the kernel's lockdep and KASAN reports.

Workers stand where the kernel names tasks ("worker 1 (backward, pid 4242)"), contexts
where it names hardirq state ("[irq]"), ``function() file:line`` where it prints stacks.
Rendering reads only the finding's data and a roster of worker labels, so a stored finding
renders the same way later (``stress show``, the HTML report).
"""

from __future__ import annotations

from typing import Callable

from .findings import Finding

Roster = dict[int, str]  # worker id -> "worker 1 (backward, pid 4242)"


def _who(roster: Roster, owner: int) -> str:
    w, c = divmod(owner, 2)
    return roster.get(w, f"worker {w}") + (" [irq]" if c else "")


def _short(roster: Roster, owner: int) -> str:
    w, c = divmod(owner, 2)
    label = roster.get(w, f"worker {w}")
    # "worker 1 (backward, pid 4242)" -> "worker 1 (backward)"
    if "," in label:
        label = label.split(",")[0] + ")"
    return label + (" irq" if c else "")


def _banner(title: str) -> list[str]:
    bar = "=" * max(len(title), 20)
    return [bar, title, "-" * len(bar)]


def _lock(d: dict) -> str:
    name = f"({d['cls']})"
    if d.get("lock") and d["lock"] != d["cls"]:
        name += f" {d['lock']}"
    how = "read" if d.get("read") else d.get("how")  # a reader-writer lock's mode
    if how:
        name += f" [{how}]"
    return name


def _verb(d: dict) -> str:
    """Lockdep's scenario verb: ``rlock`` for a read of a reader-writer lock, else ``lock``."""
    return "rlock" if d.get("read") or d.get("how") == "read" else "lock"


def _held_block(roster: Roster, owner: int, holds: list[dict], op: str | None = None) -> list[str]:
    n = len(holds)
    head = f"{n} lock{'s' if n != 1 else ''} held by {_who(roster, owner)}"
    if op:
        head += f", in {op}"
    out = [head + ":"]
    for i, h in enumerate(holds):
        out.append(f" #{i}: {_lock(h)}, at: {h['site']}")
    return out


def _scenario(columns: list[str], steps: list[tuple[int, str]], width: int = 32) -> list[str]:
    """Lockdep's "Possible unsafe locking scenario": one column per context."""
    width = max([width] + [len(c) + 4 for c in columns] + [len(s) + 4 for _, s in steps])
    out = ["", " Possible unsafe locking scenario:", ""]
    out.append("       " + "".join(c.ljust(width) for c in columns).rstrip())
    out.append("       " + "".join("----".ljust(width) for _ in columns).rstrip())
    for col, text in steps:
        out.append("  " + " " * (width * col) + text)
    return out


def render_circular(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    acq, hold = d["acquiring"], d["holding"]
    lines = _banner(f.title)
    lines += [f"{_who(roster, d['owner'])} is trying to acquire lock:",
              f"  {_lock(acq)}, at: {acq['site']}"]
    lines += [f"      called from {c}" for c in acq.get("callers", [])]
    lines += ["", "but task is already holding lock:",
              f"  {_lock(hold)}, at: {hold['site']}", "",
              "which lock already depends on the new lock.", "", "",
              "the existing dependency chain (in reverse order) is:", ""]
    chain = d["chain"]  # C -> X1 -> ... -> H
    for i, e in enumerate(reversed(chain)):
        lines.append(f"-> #{len(chain) - i} ({e['to']}):")
        lines.append(f"       {e['to_site']}")
        lines.append(f"       (taken while holding ({e['from']}), acquired at {e['from_site']};")
        lines.append(f"        first seen in {_who(roster, e['owner'])})")
        if e.get("types"):  # lockdep-design.rst's dependency types: held E/S, taken N/R
            lines.append("       (dependency " + ", ".join(f"-({t})->" for t in e["types"]) + ")")
        lines.append("")
    lines.append(f"-> #0 ({acq['cls']}):")
    lines.append(f"       {acq['site']}")
    lines.append(f"       (taken while holding ({hold['cls']}), acquired at {hold['site']}; {_who(roster, d['owner'])})")
    lines += ["", "other info that might help us debug this:", ""]
    if len(chain) > 1:
        lines.append("Chain exists of:")
        lines.append("  " + " --> ".join(f"({c})" for c in d["cycle"][:-1]) + f" --> ({d['cycle'][0]})")
    # columns: the current context takes H then C; each existing edge a -> b: a then b
    # a reader-writer dependency: rlock() where the first lock was held shared (S?) or the
    # second taken as a recursive reader (?R), as lockdep's scenario prints it
    def verbs(e: dict) -> tuple[str, str]:
        t = e.get("types") or []
        return ("rlock" if t and all(x[0] == "S" for x in t) else "lock",
                "rlock" if t and all(x[1] == "R" for x in t) else "lock")

    edges = [(d["owner"], hold["cls"], acq["cls"], _verb(hold), _verb(acq))] + [
        (e["owner"], e["from"], e["to"], *verbs(e)) for e in chain]
    cols = [_short(roster, o) for o, *_ in edges]
    steps = [(i, f"{va}({a});") for i, (_, a, _, va, _) in enumerate(edges)]
    steps += [(i, f"{vb}({b});") for i, (_, _, b, _, vb) in reversed(list(enumerate(edges)))]
    if len(set(cols)) < len(cols):
        # one worker took several of the paths (at different times): the scenario needs
        # as many CPUs as paths, so name them as lockdep does and say whose path each is
        who = [f"CPU{i}: the path of {c}" for i, c in enumerate(cols)]
        cols = [f"CPU{i}" for i in range(len(cols))]
        lines += _scenario(cols, steps)
        lines += [""] + [f" {w}" for w in who]
    else:
        lines += _scenario(cols, steps)
    if d.get("guarded_by"):
        cls = d.get("guarded_by_cls") or [None] * len(d["guarded_by"])
        g = ", ".join(f"({c}) {p}" if c and c != p else f"({p})" for c, p in zip(cls, d["guarded_by"]))
        lines += ["", f" Every edge of this cycle was taken while holding {g}, the same lock instance:",
                  " the outer lock serialises the paths, so this cycle cannot deadlock as long",
                  " as that stays true. Reported for information (lockdep would call it a",
                  " plain inversion)."]
    else:
        lines += ["", " *** DEADLOCK ***"]
    lines.append("")
    lines += _held_block(roster, d["owner"], d.get("held", []))
    return lines


def render_recursive(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    acq, hold = d["acquiring"], d["holding"]
    lines = _banner(f.title)
    lines += [f"{_who(roster, d['owner'])} is trying to acquire lock:",
              f"  {_lock(acq)}, at: {acq['site']}", "",
              "but task is already holding lock:",
              f"  {_lock(hold)}, at: {hold['site']}", "",
              "other info that might help us debug this:"]
    if d.get("same_instance") and hold.get("read") and acq.get("read"):
        lines.append(" the same lock, read twice: the second read waits behind any writer that queued in "
                     "between, and that writer waits for the first read.")
    elif d.get("same_instance"):
        lines.append(" the same lock instance: this context will wait for itself.")
    else:
        lines.append(" two instances of one class, nested without an order between them.")
    cols = [_short(roster, d["owner"])]
    lines += _scenario(cols, [(0, f"{_verb(hold)}({hold['cls']});"), (0, f"{_verb(acq)}({acq['cls']});")])
    lines += ["", " *** DEADLOCK ***", "", " May be due to missing lock nesting notation", ""]
    lines += _held_block(roster, d["owner"], d.get("held", []))
    return lines


def render_inconsistent(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    lines = _banner(f.title)
    lines += [f"inconsistent {{{d['usage_old']}}} -> {{{d['usage_new']}}} usage.",
              f"{_who(roster, d['owner'])} takes:",
              f"  {_lock(d)}, at: {d['site']}",
              f"{{{d['usage_old']}}} state was registered at:"]
    old = d["in_irq"] if d["usage_old"].startswith("IN-HARDIRQ") else d["irq_on"]
    lines.append(f"  {old['site']} ({_who(roster, old['owner'])})")
    lines += [f"      called from {c}" for c in old.get("callers", [])]
    lines += ["", "other info that might help us debug this:"]
    # lockdep's scenario: the task's use, then the interrupt's (rlock for a read usage)
    on, inn = (d["usage_new"], d["usage_old"]) if d["usage_new"].startswith("HARDIRQ-ON") else (
        d["usage_old"], d["usage_new"])
    v_on, v_in = ("rlock" if on.endswith("-R") else "lock"), ("rlock" if inn.endswith("-R") else "lock")
    lines += _scenario(["CPU0"], [(0, f"{v_on}({d['cls']});"), (0, "<Interrupt>"), (0, f"  {v_in}({d['cls']});")])
    lines += ["", " *** DEADLOCK ***", ""]
    lines += _held_block(roster, d["owner"], d.get("held", []))
    return lines


def render_irq_order(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    lines = _banner(f.title)
    lines += [f"{_who(roster, d['owner'])} is trying to acquire:",
              f"  {_lock(d['acquiring'])}, at: {d['acquiring']['site']}", "",
              f"({d['safe']}) is HARDIRQ-safe: taken in interrupt context at {d['in_irq']['site']}"
              f" ({_who(roster, d['in_irq']['owner'])})"]
    lines += [f"      called from {c}" for c in d["in_irq"].get("callers", [])]
    lines += [f"({d['unsafe']}) is HARDIRQ-unsafe: taken with interrupts enabled at {d['irq_on']['site']}"
              f" ({_who(roster, d['irq_on']['owner'])})"]
    lines += [f"      called from {c}" for c in d["irq_on"].get("callers", [])]
    lines += ["", "and the chain between them is:"]
    for e in d["chain"]:
        lines.append(f"  ({e['from']}) --> ({e['to']}) at {e['to_site']} (first seen in {_who(roster, e['owner'])})")
    lines += _scenario(["CPU0", "CPU1"], [
        (0, f"lock({d['unsafe']});"), (1, "local_irq_disable();"), (1, f"lock({d['safe']});"),
        (1, f"lock({d['unsafe']});"), (0, "<Interrupt>"), (0, f"  lock({d['safe']});")])
    lines += ["", " *** DEADLOCK ***"]
    return lines


def _member_lines(roster: Roster, m: dict) -> list[str]:
    who = _who(roster, m["owner"])
    out = []
    if "waiting" in m:
        wt = m["waiting"]
        out.append(f"{who} is waiting for lock:")
        out.append(f"  {_lock(wt)}, at: {wt['site']}  (for {wt['for_ms']:.0f} ms)")
        for c in wt.get("callers", []):
            out.append(f"      called from {c}")
        mode = wt.get("mode")  # a reader-writer lock's wait (shm_model/records.py)
        if mode == "readers" and wt.get("owners"):
            out.append("as a writer, for its readers to leave: it is held for reading by "
                       + ", ".join(_who(roster, o) for o in wt["owners"]) + ".")
        elif wt.get("owner", -1) >= 0:
            ost = wt.get("owner_state")
            held = {"queue": "whose wait queue is held by", "writer": "which is held for writing by"}.get(
                mode, "which is held by")
            out.append(f"{held} {_who(roster, wt['owner'])}" + (f", {ost['text']}." if ost else "."))
    elif m.get("interrupted"):
        out.append(f"{who} is interrupted: it runs again only when its interrupt handler returns.")
    if m.get("state") and ("waiting" in m or m.get("interrupted")):
        out.append(f"({who} is itself {m['state']['text']}.)")
    out.append("")
    return out


def _cycle_scenario(members: list[dict], roster: Roster) -> tuple[list[str], list[tuple[int, str]]]:
    """The scenario of a wait cycle: one column per worker; each member first takes the lock
    another member waits for, then waits. An interrupt handler is drawn in the column of
    the task it interrupted, as lockdep draws it (``<Interrupt>``, then its lock indented);
    a member that holds none of the cycle's locks (an interrupted task) takes nothing."""
    col: dict[int, int] = {}  # worker -> its column, named after its task context
    cols: list[str] = []
    for m in members:
        if m["worker"] not in col:
            col[m["worker"]] = len(cols)
            cols.append(_short(roster, 2 * m["worker"]))
    at = {m["owner"]: col[m["worker"]] for m in members}
    steps: list[tuple[int, str]] = []
    entered: set[int] = set()  # interrupt contexts already drawn as entered

    def take(m: dict, cls: str) -> None:
        c, irq = at[m["owner"]], m["ctx"] == "irq"
        if irq and m["owner"] not in entered:
            entered.add(m["owner"])
            steps.append((c, "<Interrupt>"))
        steps.append((c, f"{'  ' if irq else ''}lock({cls});"))

    for m in members:
        want = [x for x in members if m["owner"] in x.get("waiting", {}).get(
            "owners", [x.get("waiting", {}).get("owner")])]
        if want:
            take(m, want[0]["waiting"]["cls"])
    for m in members:
        if "waiting" in m:
            take(m, m["waiting"]["cls"])
    return cols, steps


def render_deadlock(f: Finding, roster: Roster) -> list[str]:
    members = f.details["members"]
    lines = _banner(f.title)
    for m in members:
        lines += _member_lines(roster, m)
    lines.append("other info that might help us debug this:")
    # scenario: each member takes the lock the previous member waits for, then waits
    if len({m["worker"] for m in members}) == 1 and len(members) == 2:
        task = next(m for m in members if m["ctx"] == "task")
        irq = next(m for m in members if m["ctx"] == "irq")
        wanted = irq.get("waiting", {}).get("cls", "?")
        lines += _scenario([_short(roster, task["owner"])],
                           [(0, f"lock({wanted});"), (0, "<Interrupt>"), (0, f"  lock({wanted});")])
    else:
        lines += _scenario(*_cycle_scenario(members, roster))
    lines += ["", " *** DEADLOCK ***", ""]
    for m in members:
        if m["ctx"] == "irq" and not m["holds"]:
            continue  # an ISR holding nothing: its waiting line above says it all
        op = f"operation {m['op']}" if m.get("op") else None
        lines += _held_block(roster, m["owner"], m["holds"], op)
    return lines


def render_dead_holder(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    lines = _banner(f.title)
    holds = d["holds"]
    lines.append(f"{roster.get(d['dead'], 'worker ' + str(d['dead']))} died holding "
                 f"{len(holds)} lock{'s' if len(holds) != 1 else ''}:")
    for i, h in enumerate(holds):
        lines.append(f" #{i}: {_lock(h)}, at: {h['site']}")
    lines.append("")
    if d.get("exit"):
        lines.append(f"it exited with {d['exit']}.")
    if d["waiters"]:
        lines.append("waiting for them:")
        for m in d["waiters"]:
            lines += _member_lines(roster, m)
    else:
        lines.append("nobody is waiting for them yet; the next context to take one will wait forever.")
    return lines


def render_hung(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    lines = _banner(f.title)
    for m in d["blocked"]:
        lines += _member_lines(roster, m)
    h = d["holder"]
    proc = h.get("process", {})
    who = _who(roster, h["owner"])
    st = h.get("state")
    where = (f", in operation {h['op']} for {h['op_age_ms']:.0f} ms" if h.get("op")
             else ", between operations")
    if st:  # stopped or not scheduled: the watchdog saw it for that long
        state = f"it is {st['text']} (process '{proc.get('status', '?')}', cpu {proc.get('cpu_s', '?')} s)"
    else:
        state = f"its process is '{proc.get('status', '?')}' (cpu {proc.get('cpu_s', '?')} s)"
    kind = d.get("kind")
    if kind in ("stopped", "in-operation"):  # no progress, whoever waits for it
        if "waiting" in h:
            lines += _member_lines(roster, h)
        lines.append(f"{who} has made no progress: {state}{where}.")
        waiters = d.get("waiters", [])
        lines.append("nobody is waiting for it." if not waiters else
                     f"{len(waiters)} context{'s' if len(waiters) != 1 else ''} wait{'' if len(waiters) != 1 else 's'} for it:")
        lines.append("")
        for m in waiters:
            lines += _member_lines(roster, m)
    else:
        lines.append(f"{who} is not waiting for any lock; {state}{where if h.get('op') else ''}.")
        if h.get("earlier_stop"):
            lines.append(f"({h['earlier_stop']['text']}.)")
        lines.append("")
    lines += _held_block(roster, h["owner"], h["holds"])
    return lines


def render_assert(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    lines = _banner(f.title)
    who = _who(roster, d.get("owner_of_report", f.worker * 2))
    lines.append(f"{who}" + (f" in operation {d['op']}" if d.get("op") else "") + ":")
    if "lock" in d:
        owner = d.get("owner", -1)
        lines.append(f"  ASSERT(spin_is_locked({d['lock']})) at: {d.get('site', '?')}")
        lines.append(f"  ({d.get('cls', '?')}) is " + ("not held by anyone." if owner < 0 else
                                                      f"held by {_who(roster, owner)}, not by this CPU."))
    if d.get("stack"):
        lines.append("call trace:")
        lines += [f"  {s}" for s in d["stack"]]
    if d.get("held") is not None:
        lines.append(f"locks held by this CPU: {', '.join(d['held']) or 'none'}")
    return lines


def render_invariant(f: Finding, roster: Roster) -> list[str]:
    d = f.details
    lines = _banner(f.title)
    lines.append(str(d.get("message", "")))
    lines.append(f"({d.get('how', 'checked')}, check #{d.get('check', '?')})")
    return lines + _subject_history(f, roster)


def _subject_history(f: Finding, roster: Roster) -> list[str]:
    """Every worker's trace events about the finding's subject (e.g. one IRQ), in time order."""
    d = f.details
    evs = d.get("subject_events")
    if not evs:
        return []
    lines = ["", f"the history of {d['subject']} in the trace (every worker, oldest first; "
                 "* marks the state changes):"]
    for e in evs:
        dt = (e["t_ns"] - f.t_ns) / 1e6 if f.t_ns else 0.0
        who = _short(roster, 2 * e["worker"] + (e["ctx"] == "irq"))
        mark = "*" if e.get("key") else " "
        lines.append(f" {mark}{dt:+10.3f} ms  {who:<22} {e['kind']:<10} {e['text']}")
    return lines


def render_generic(f: Finding, roster: Roster) -> list[str]:
    d = dict(f.details)
    lines = _banner(f.title)
    who = f.worker
    if who >= 0:
        lines.append(f"{roster.get(who, f'worker {who}')}" + (f" in operation {d.get('op')}" if d.get("op") else ""))
    tb = d.pop("traceback", None)
    msg = d.pop("message", None)
    d.pop("subject", None)
    d.pop("subject_events", None)
    if msg:
        lines.append(str(msg))
    for k, v in d.items():
        if k in ("op", "owner_of_report", "owner"):
            continue
        if isinstance(v, list) and v and isinstance(v[0], str):
            lines.append(f"{k}:")
            lines += [f"  {x}" for x in v]
        else:
            lines.append(f"{k}: {v}")
    if tb:
        lines.append("")
        lines += tb.rstrip().splitlines()
    return lines + _subject_history(f, roster)


KASAN_BAR = "=" * 66


def render_kasan(f: Finding, roster: Roster) -> list[str]:
    """A heap finding (shm_model/heap.py) in KASAN's words: the bad access and its stack,
    who allocated and who freed the object, and what the address belongs to."""
    d = f.details
    kind = d["kasan"]
    owner = d.get("owner_of_report", f.worker * 2)

    def who(o: int) -> str:
        return _who(roster, o) if o >= 0 else "the coordinator (workload setup)"

    def stack(st: list) -> list[str]:
        return [f" {s}" for s in st] or [" (no model frames)"]

    size = d.get("size", 8)
    verb = {"read": "Read", "write": "Write", "free": "Free"}.get(d.get("access", ""), "Access")
    field = f"field {d['field']} of {d['type']}" if d.get("field") and d["field"] != "refcount" else d.get("type", "?")
    lines = [KASAN_BAR, f.title]
    if kind == "null-ptr-deref":
        lines.append(f"#PF: supervisor {'write' if d.get('access') == 'write' else 'read'} access in kernel mode")
        lines.append(f"{verb} of size {size} by {who(owner)}: {field} through a NULL {d.get('type', '?')} *"
                     + (f" ({d['refcount_op']}() of its refcount)" if d.get("refcount_op") else ""))
    else:
        at = f" at addr {d['address']}" if d.get("address") else ""
        if verb == "Free":
            lines.append(f"Free of addr {d.get('address', '?')} by {who(owner)}")
        else:
            lines.append(f"{verb} of size {size}{at} by {who(owner)}")
    if d.get("refcount_op"):
        lines.append("refcount_t: " + ("addition on 0; use-after-free." if d["refcount_op"] == "get"
                                       else "underflow; use-after-free."))
    if d.get("op"):
        lines.append(f" in operation {d['op']}")
    lines += ["", "Call trace:"]
    lines += stack(d.get("stack") or ([d["site"]] if d.get("site") else []))
    if kind == "null-ptr-deref":
        lines += ["", f"Oops: the hypervisor would panic here. {_who(roster, owner)}'s operation ends at this access, and "
                      "this boot of the model with it: if the run goes on, the model reboots to its first state.",
                  KASAN_BAR]
        return lines
    if kind == "wild-memory-access" and "slot_gen" not in d:
        lines += ["", f"The handle {d.get('handle', 0):#x} names slot {d.get('slot', '?')} of a heap of "
                      f"{d.get('slots', '?')} {d.get('type', '?')} slots: no such object.",
                  f"Oops: the hypervisor would panic here. {_who(roster, owner)}'s operation ends at this access, and "
                  "this boot of the model with it.", KASAN_BAR]
        return lines
    if d.get("alloc"):
        a = d["alloc"]
        lines += ["", f"Allocated by {who(a['owner'])}:"] + stack(a.get("stack", []))
    if d.get("free"):
        fr = d["free"]
        lines += ["", f"Freed by {who(fr['owner'])}:"] + stack(fr.get("stack", []))
        if kind in ("use-after-free", "double-free") and fr.get("gen") not in (None, d.get("gen")):
            lines.append(f" (these are generation {fr['gen']}'s records: the slot was reallocated and freed "
                         f"again after generation {d.get('gen', '?')} was freed)")
    if d.get("realloc"):
        ra = d["realloc"]
        lines += ["", f"Reallocated by {who(ra['owner'])} (generation {ra.get('gen', '?')}):"] + stack(ra.get("stack", []))
    lines += ["", f"The buggy address belongs to the object of type {d.get('type', '?')}"]
    where = f" (slot {d.get('slot', '?')}, generation {d.get('gen', '?')}"
    if d.get("reallocated"):
        where += f"; the slot was reallocated since: generation {d.get('realloc_gen', '?')}"
    elif kind == "wild-memory-access" or kind == "invalid-free":
        sg = d.get("slot_gen", 0)
        where += ("; the slot was never allocated" if not d.get("alloc") else
                  f"; no such generation: the slot is at generation {sg}, {d.get('state', '?')}")
    lines.append(where + ")")
    if d.get("object") and verb != "Free":
        lines.append(f"The buggy address is located {d.get('offset', 0)} bytes inside of the "
                     f"{d.get('object_size', '?')}-byte object at {d['object']}"
                     + (f" (field {d['field']})" if d.get("field") and d["field"] != "refcount" else
                        " (its refcount, kept before the object)" if d.get("field") == "refcount" else ""))
    lines.append(KASAN_BAR)
    return lines


def render_stale_read(f: Finding, roster: Roster) -> list[str]:
    """A weak-memory finding (shm_model/weak.py: ``memory`` is MemCpu.explain's evidence) in
    KCSAN's words: the read and its site, the value it returned and who wrote it, the newer
    value already stored and by whom, and the program-order pair that was reordered, with the
    barrier whose absence allowed it (KCSAN's ``(reordered)``)."""
    d = f.details
    m = d["memory"]
    owner = d.get("owner_of_report", f.worker * 2)

    def writer(w: dict) -> str:
        if w.get("writer") is None:
            return "the initial value"
        return f"{_who(roster, 2 * w['writer'])} at {w.get('site', '?')}"

    loc = m.get("location", d.get("location", "?"))
    lines = [KASAN_BAR, f.title, "",
             f"read to {loc} of 8 bytes by {_who(roster, owner)}" + (f" in operation {d['op']}" if d.get("op") else "")
             + ":", f" {m.get('read_site', '?')}"]
    if "value" in m:
        lines.append(f"value read: {m['value']}, stored by {writer(m.get('written_by', {}))}")
    newer = m.get("newer", [])
    shown = newer if len(newer) <= 4 else newer[:1] + [None] + newer[-2:]
    for n in shown:
        if n is None:
            lines.append(f"  ... {len(newer) - 3} more newer values ...")
            continue
        when = "visible when it read" if n.get("visible_at_read") else "committed after the read"
        lines.append(f"newer value: {n['value']}, stored by {writer(n)} ({when})")
    for k in ("expected", "read_generation", "expected_generation"):
        if k in d:
            lines.append(f"{k.replace('_', ' ')}: {d[k]}")
    nw = d.get("newest_written")
    if isinstance(nw, dict):  # the model's own record of the newest write (generation, writer, value)
        lines.append("newest written: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in nw.items()))
    r = m.get("reordered")
    if r:
        kind = "stores" if r["kind"] == "store-store" else "loads"
        lines += ["", f"reordered {kind} of {_who(roster, 2 * r['cpu'])}:",
                  f" {r['first']['location']} at {r['first']['site']}",
                  "  |",
                  f"  +-> reordered to after: {r['then']['location']} at {r['then']['site']}",
                  f"{r['why']}; {r['missing']} between them forbids it on ARMv8"]
    elif any(n.get("visible_at_read") for n in newer):
        lines += ["", "no program-order pair of this CPU's recent loads explains the value: a newer value was "
                      "visible when it read, and nothing this CPU read before ordered the load after it"]
    else:
        lines += ["", "no program-order pair of this CPU's recent loads explains the value (the newer store "
                      "was not yet visible to any CPU)"]
    lines.append(KASAN_BAR)
    return lines


RENDERERS: dict[str, Callable[[Finding, Roster], list[str]]] = {
    "WARNING: possible circular locking dependency detected": render_circular,
    "WARNING: possible recursive locking detected": render_recursive,
    "WARNING: inconsistent lock state": render_inconsistent,
    "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected": render_irq_order,
    "BUG: lock held by a dead worker": render_dead_holder,
}


def render(f: Finding, roster: Roster, trace_tail: int = 12) -> str:
    if f.outcome == "deadlock" and "members" in f.details:
        fn = render_deadlock
    elif f.outcome == "hung":
        fn = render_hung
    elif f.outcome == "invariant:assert-held":
        fn = render_assert
    elif f.outcome.startswith("invariant:") and f.worker < 0:
        fn = render_invariant
    elif f.details.get("kasan"):  # a heap finding (shm_model/heap.py)
        fn = render_kasan
    elif isinstance(f.details.get("memory"), dict):  # a weak-memory finding (shm_model/weak.py)
        fn = render_stale_read
    else:
        fn = RENDERERS.get(f.title, render_generic)
    try:
        lines = fn(f, roster)
    except (KeyError, TypeError, IndexError, StopIteration) as e:  # never lose a finding to its renderer
        lines = render_generic(f, roster) + [f"(report shape incomplete: {type(e).__name__} {e})"]
    if "step" in f.details:
        how = ("the waits closed a cycle, or no thread could run: the scheduler froze every worker there, so "
               "this report is that state itself, not a wait that might still end"
               if f.outcome in ("deadlock", "held-by-dead-worker") else "")
        lines += ["", f"controlled scheduler: at step {f.details['step']}" + (f"; {how}" if how else "")
                  + f" ({f.details.get('replay', 'stress replay RUN_ID')} repeats the schedule exactly)"]
    if "boot" in f.details:
        lines += ["", f"boot {f.details['boot']} of this run: the model rebooted after a fault where the hypervisor panics; "
                      f"a run with this run's options and --seed {f.details.get('boot_seed')} starts where this "
                      "boot started"]
    lines += render_traces(f, roster, trace_tail)
    return "\n".join(lines).rstrip() + "\n"


def parties(f: Finding) -> list[int]:
    """Workers the finding is about (their traces come first)."""
    d = f.details
    ws: list[int] = []

    def add(owner: int | None) -> None:
        if owner is not None and owner >= 0 and owner // 2 not in ws:
            ws.append(owner // 2)

    add(d.get("owner"))
    for e in d.get("chain", []):
        add(e.get("owner"))
    for m in d.get("members", []) + d.get("blocked", []) + d.get("waiters", []):
        add(m.get("owner"))
    if "holder" in d:
        add(d["holder"].get("owner"))
    if "dead" in d:
        add(2 * d["dead"])
    if f.worker >= 0:
        add(2 * f.worker)
    for k in ("alloc", "free", "realloc"):  # a heap finding: who allocated and freed the object
        if isinstance(d.get(k), dict):
            add(d[k].get("owner"))
    m = d.get("memory")
    if isinstance(m, dict):  # a weak-memory finding: the writers of what was read and of what was not
        for w in [m.get("reordered", {}).get("cpu"), m.get("written_by", {}).get("writer")] + \
                 [n.get("writer") for n in m.get("newer", [])]:
            if isinstance(w, int):
                add(2 * w)
    return ws


def render_traces(f: Finding, roster: Roster, tail: int) -> list[str]:
    if not f.traces:
        return []
    who = parties(f) or [int(w) for w in f.traces if w.isdigit()]
    lines = ["", "last events (most recent last; times relative to the report):"]
    for w in who:
        evs = f.traces.get(str(w), [])[-tail:]
        if not evs:
            continue
        lines.append(f"  {roster.get(w, f'worker {w}')}:")
        for e in evs:
            dt = (e["t_ns"] - f.t_ns) / 1e6 if f.t_ns else 0.0
            lines.append(f"    {dt:+10.3f} ms  {e['ctx']:<4} {e['kind']:<12} {e['text']}")
    return lines
