"""Issue 19 item 9: orphaned IPC objects of another user never crash ``stress run`` or
``stress cleanup`` (skipped, said in one line), and a run's liveness is the flock of its
``stress-<run>-live`` file, not only its pid: a live run in another PID namespace (its id
names a pid that does not exist here) keeps its objects."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import ROOT, run_cli, stress_objects
from shm_model.arena import PREFIX, SHM_DIR, _run_of_entry, list_objects, sweep_orphans

NOBODY = 65534
FAKE_PID = 999999


def _fake_rid(tag: str) -> str:
    return f"20260101T000000-{FAKE_PID}-{tag}"


@pytest.fixture
def fake_pid():
    if psutil.pid_exists(FAKE_PID):
        pytest.skip(f"pid {FAKE_PID} exists here")
    return FAKE_PID


def _as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _nobody_python() -> tuple[str, dict]:
    """An interpreter uid 65534 may run (this venv's may live under /root), with this tree
    and the venv's packages on its path."""
    site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(ROOT)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + site), HOME="/tmp")
    for exe in (sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}", "/usr/bin/python3"):
        try:
            r = subprocess.run([exe, "-c", "import sys, shm_model.arena, stress.cli; print(sys.version_info[:2])"],
                               cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=_as_nobody, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0 and r.stdout.strip() == str(tuple(sys.version_info[:2])):
            return exe, env
    pytest.skip("no Python interpreter that uid 65534 may run with this tree's packages")


def test_temp_liveness_name_is_not_a_run():
    assert _run_of_entry(f"{PREFIX}live-tmp-0123456789abcdef") is None
    rid = _fake_rid("abcdef")
    assert _run_of_entry(f"{PREFIX}{rid}-live") == rid


@pytest.mark.timeout(120)
def test_objects_of_another_user_are_skipped_never_fatal(fake_pid):
    if os.geteuid() != 0:
        pytest.skip("needs root: makes objects of one user and sweeps them as another")
    exe, env = _nobody_python()
    rid = _fake_rid(os.urandom(3).hex())
    names = [f"{PREFIX}{rid}", f"sem.{PREFIX}{rid}-l0", f"{PREFIX}{rid}-live"]
    paths = [os.path.join(SHM_DIR, n) for n in names]
    lock = None
    try:
        # objects of root's: uid 65534 may not unlink them (sticky /dev/shm), nor open the
        # liveness file (0600), so to it they look like a dead run's (pid 999999). This test
        # holds the liveness lock so that root's sweeps (a concurrent `stress run`) keep them.
        for p in paths:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            if p.endswith("-live"):
                fcntl.flock(fd, fcntl.LOCK_EX)
                lock = fd
            else:
                os.close(fd)
        # the library: sweep_orphans returns what it removed and reports the rest, no exception
        code = ("import json; from shm_model.arena import sweep_orphans\n"
                "sk = []; rm = sweep_orphans(skipped=sk)\n"
                "print(json.dumps({'removed': rm, 'skipped': sk}))")
        r = subprocess.run([exe, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           preexec_fn=_as_nobody, timeout=60)
        assert r.returncode == 0, r.stderr
        import json
        got = json.loads(r.stdout)
        assert not set(names) & set(got["removed"])
        assert {(n, 0) for n in names} <= {tuple(x) for x in got["skipped"]}
        # the command: one line says what was skipped and why
        c = subprocess.run([exe, "-m", "stress", "cleanup"], cwd=ROOT, env=env, capture_output=True, text=True,
                           preexec_fn=_as_nobody, timeout=60)
        assert c.returncode == 0, c.stdout + c.stderr
        assert "Traceback" not in c.stdout + c.stderr
        m = re.search(r"^skipped (\d+) objects of other users \(uid 0\): remove them as that user or as root$",
                      c.stdout, re.M)
        assert m and int(m.group(1)) >= 3, c.stdout
        assert all(os.path.exists(p) for p in paths)
        # and root removes them, once the run is gone (nobody holds its lock)
        os.close(lock)
        lock = None
        c = subprocess.run([sys.executable, "-m", "stress", "cleanup"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert c.returncode == 0 and "Traceback" not in c.stdout + c.stderr, c.stdout + c.stderr
        assert not any(os.path.exists(p) for p in paths)
    finally:
        if lock is not None:
            os.close(lock)
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


HELPER = r"""
import os, sys
from shm_model.arena import Arena, Geometry
a = Arena(sys.argv[1], Geometry(1, 1, 1, 1, trace_events=1))
print(" ".join(a.names()), flush=True)
sys.stdin.read()  # until the test lets go
os.kill(os.getpid(), 9)  # no destroy(): the objects stay, as after a crash
"""


@pytest.mark.timeout(120)
def test_a_live_run_in_another_pid_namespace_keeps_its_objects(fake_pid):
    """The run id names pid 999999, which does not exist here (as for a run in another PID
    namespace): its lock on the liveness file says it is alive."""
    rid = _fake_rid(os.urandom(3).hex())
    h = subprocess.Popen([sys.executable, "-c", HELPER, rid], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        names = set(h.stdout.readline().split())
        assert f"{PREFIX}{rid}-live" in names and f"{PREFIX}{rid}" in names and len(names) == 5  # + a run token
        assert {e for e, run in list_objects() if run == rid} == names
        assert not names & set(sweep_orphans())
        c = subprocess.run([sys.executable, "-m", "stress", "cleanup"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert c.returncode == 0, c.stdout + c.stderr
        assert "belong to runs still alive" in c.stdout
        assert names <= stress_objects(), "cleanup removed a live run's objects"
    finally:
        h.stdin.close()
        h.wait(30)
    # killed without destroy(): its objects stay behind until a sweep (maybe a concurrent run's)
    c = subprocess.run([sys.executable, "-m", "stress", "cleanup"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert c.returncode == 0, c.stdout + c.stderr
    assert not names & stress_objects(), "the run is gone (nobody holds its lock): cleanup removes it all"


@pytest.mark.timeout(120)
def test_a_real_run_holds_its_liveness_file_and_leaves_nothing(runs_dir):
    seen: dict = {}

    def watch() -> None:
        deadline = time.time() + 30
        while time.time() < deadline and "held" not in seen:
            for e in stress_objects():
                if e.endswith("-live") and e.startswith(PREFIX) and (m := re.match(rf"{PREFIX}\d+T\d+-(\d+)-", e)):
                    p = psutil.Process(int(m.group(1))) if psutil.pid_exists(int(m.group(1))) else None
                    if p is None or "stress" not in " ".join(p.cmdline()) or "abba" not in " ".join(p.cmdline()):
                        continue
                    if not runs_dir in " ".join(p.cmdline()):
                        continue
                    fd = os.open(os.path.join(SHM_DIR, e), os.O_RDONLY)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        seen["held"] = False
                    except BlockingIOError:
                        seen["held"] = True
                        seen["entry"] = e
                    finally:
                        os.close(fd)
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    r = run_cli(["run", "--workload", "examples/abba.py", "--variant", "ordered", "--duration", "3s"], runs_dir)
    t.join()
    assert r.code == 0, r.out + r.err
    assert seen.get("held") is True, "the live run holds the lock of its liveness file"
    assert seen["entry"] not in stress_objects()  # run_cli checked nothing else is left
