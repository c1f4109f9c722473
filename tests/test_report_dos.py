"""The HTML report's view of a workload's measurement tables (issue 24 item 5): real runs of
irq-injection-storm under a malicious guest (pinned PCT, virtual clock: the same numbers on
any machine) ingested as a small soak; the run report shows the DoS table and its chart, the
soak report compares the variants."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from reports import html as report
from stress.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("upstream", "capped-flush")


@pytest.fixture(scope="module")
def dos_store(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("dosreport"))
    out = os.path.join(base, "runs")
    procs = {v: subprocess.Popen([sys.executable, "-m", "stress", "run", "--workload", "irq-injection-storm",
                                  "--variant", v, "--seed", "1", "--duration", "3s", "--guest", "malicious",
                                  "--spis", "24", "--bystander-us", "20", "--guest-run-ms", "2", "--schedule", "pct",
                                  "--pct-depth", "3", "--pct-steps", "64", "--quiet", "--no-store", "--out", out],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in VARIANTS}
    db = os.path.join(base, "stress.db")
    with Store(db) as st:
        st.begin_soak("dos-soak", {"workloads": ["irq-injection-storm"]}, "stress soak", out, 60.0)
        ids = {}
        for i, (v, p) in enumerate(procs.items()):
            so, se = p.communicate(timeout=120)
            m = re.search(r"^run directory: (.+)$", so, re.M)
            assert p.returncode == 0 and m, f"{v}: exit {p.returncode}\n{so[-2000:]}\n{se}"
            ids[v] = st.ingest_run(m.group(1).strip(), "dos-soak", i)
        st.end_soak("dos-soak", "done")
    return base, db, ids


@pytest.mark.timeout(180)
def test_the_run_report_shows_the_dos_table_and_its_chart(dos_store):
    base, db, ids = dos_store
    path = report.write_report(db, ids["upstream"], os.path.join(base, "run.html"))
    h = open(path, encoding="utf-8").read()
    table = h.split("<h3>DoS measurement (malicious guest", 1)[1].split("</table>", 1)[0]
    assert "<th>flush p99</th>" in table and "<th>ap_list max</th>" in table
    assert table.count("<tr><td>vcpu") == 2  # one row a vCPU, as the summary prints them
    assert 'data-plot="dos"' in h and "ap_list DoS: flush and prune time per vCPU" in h
    assert "vgic_flush_lr_state" in h.split('id="r-c-dos"', 1)[1]
    # the table is not flattened into the key-value counters any more
    assert "{&#39;title&#39;" not in h and "{'title'" not in h


@pytest.mark.timeout(180)
def test_the_soak_report_compares_the_variants(dos_store):
    base, db, ids = dos_store
    path = report.write_report(db, "dos-soak", os.path.join(base, "soak.html"))
    h = open(path, encoding="utf-8").read()
    fig = h.split('<figure id="s-c-dos">', 1)[1].split("</figure>", 1)[0]
    assert 'data-plot="dos"' in fig
    for v in VARIANTS:
        assert f"{v} [pct] / malicious (1)" in fig  # the schedule tag: these runs were controlled
