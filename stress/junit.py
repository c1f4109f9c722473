"""JUnit XML for CI (``stress run --junit-xml`` and ``stress soak --junit-xml``).

Built from what a run left behind (its run directory, or the store's rows for a soak), never
from the console: one ``<testsuite>`` inside ``<testsuites>``, one ``<testcase>`` per run or
soak iteration, ``classname`` the workload, ``name`` ``workload/variant[seed]``, ``time`` the
run's elapsed seconds.

- a verdict that does not match (``fail``, ``incomplete``) is a ``<failure>`` whose
  ``message`` is the verdict text and whose body holds the verdict, the first decisive
  finding's report (``<run_dir>/findings.jsonl`` ``text``) and the rerun command;
- an ``open`` variant passes, with what it showed in ``<system-out>``;
- a harness error or an interrupted run is an ``<error>``; a configuration the run refused
  (a soak's ``skipped`` iteration) is ``<skipped>``.
"""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Iterable

from .cli import repeat_words
from .store import run_status

_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: str) -> str:
    """Characters XML 1.0 cannot hold (a control byte in a finding's text) become U+FFFD."""
    return _BAD_XML.sub("\ufffd", str(text))


@dataclass
class Case:
    workload: str
    variant: str
    seed: Any
    elapsed_s: float
    status: str  # pass, fail, open, incomplete, error, interrupted, skipped
    verdict: str
    command: str
    finding: str = ""  # the first decisive finding's report

    @property
    def name(self) -> str:
        return f"{self.workload}/{self.variant}[{self.seed}]"


def _jsonl(path: str) -> list[dict]:
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by a kill
    except OSError:
        pass
    return out


def _first_decisive(findings: Iterable[dict]) -> str:
    for f in findings:
        if not f.get("info") and not f.get("known"):
            return str(f.get("text") or f.get("title") or f.get("outcome") or "")
    return ""


_status = run_status  # one rule for a run's status, the store's


def case_from_run_dir(run_dir: str) -> Case:
    """A run directory as a test case (``stress run --junit-xml``)."""
    def load(name: str) -> dict:
        try:
            with open(os.path.join(run_dir, name)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}
    cfg, s = load("config.json"), load("summary.json")
    v = s.get("verdict") or {}
    return Case(str(s.get("workload") or cfg.get("workload", "")), str(s.get("variant") or cfg.get("variant", "")),
                s.get("seed", cfg.get("seed")), float(s.get("elapsed_s") or 0.0), _status(s) if s else "error",
                str(v.get("text") or s.get("message") or "the run left no summary.json"),
                str(s.get("command") or cfg.get("command", "")),
                _first_decisive(_jsonl(os.path.join(run_dir, "findings.jsonl"))))


def case_from_row(store: Any, row: Any) -> Case:
    """A stored run (a soak iteration) as a test case."""
    findings = _jsonl(os.path.join(row.run_dir, "findings.jsonl")) if row.run_dir else []
    if not findings:
        findings = store.findings(row.id)
    return Case(row.workload, row.variant, row.seed, float(row.elapsed_s or 0.0), row.status, row.verdict_text,
                row.command, _first_decisive(findings))


def build(cases: list[Case], suite: str) -> ET.Element:
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0
    for c in cases:
        counts["tests"] += 1
        total += c.elapsed_s
        tc = ET.SubElement(ts, "testcase", classname=_x(c.workload), name=_x(c.name), time=f"{c.elapsed_s:.3f}")
        body = [f"verdict: {c.verdict}"]
        if c.finding:
            body += ["", c.finding.rstrip("\n")]
        if c.command:
            body += ["", f"{repeat_words(c.command)}: {c.command}"]
        text = "\n".join(body) + "\n"
        if c.status in ("fail", "incomplete"):
            counts["failures"] += 1
            ET.SubElement(tc, "failure", message=_x(c.verdict), type=c.status).text = _x(text)
        elif c.status == "skipped":
            counts["skipped"] += 1
            ET.SubElement(tc, "skipped", message=_x(c.verdict))
        elif c.status not in ("pass", "open"):
            counts["errors"] += 1
            ET.SubElement(tc, "error", message=_x(c.verdict), type=c.status).text = _x(text)
        elif c.status == "open":
            ET.SubElement(tc, "system-out").text = _x(text)
    for el in (root, ts):
        for k, n in counts.items():
            el.set(k, str(n))
        el.set("time", f"{total:.3f}")
    return root


def _write(root: ET.Element, path: str) -> str:
    ET.indent(root)
    tmp = f"{path}.tmp"
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
    return path


def write_run(run_dir: str, path: str) -> str:
    c = case_from_run_dir(run_dir)
    return _write(build([c], f"stress run {c.workload}"), path)


def write_soak(store: Any, soak_id: str, path: str) -> str:
    rows = store.runs(soak_id=soak_id)
    return _write(build([case_from_row(store, r) for r in rows], f"stress soak {soak_id}"), path)
