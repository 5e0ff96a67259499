"""torchrun workers die with their launcher (srgnn.core.proc.die_with_parent)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from srgnn.core.proc import die_with_parent, launched_by_torchrun
    if {protect} and launched_by_torchrun():
        die_with_parent()
    with open(os.path.join({pids!r}, os.environ["RANK"]), "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _run(tmp_path: Path, protect: bool) -> list[int]:
    pids = tmp_path / ("pids-on" if protect else "pids-off")
    pids.mkdir()
    script = tmp_path / f"worker_{protect}.py"
    script.write_text(WORKER.format(root=str(ROOT), pids=str(pids), protect=protect))
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list(pids.iterdir())) < 2:
        assert time.time() < deadline and launcher.poll() is None, "workers did not start"
        time.sleep(0.2)
    workers = [int(p.read_text()) for p in pids.iterdir()]
    os.killpg(launcher.pid, signal.SIGKILL)  # what an orchestrator does to a task it stops
    launcher.wait(timeout=30)
    time.sleep(1.0)
    return workers


@pytest.mark.slow
def test_torchrun_workers_die_with_the_launchers_process_group(tmp_path):
    survivors = [pid for pid in _run(tmp_path, protect=False) if _alive(pid)]
    try:  # without the request, the workers outlive the kill: the test can tell the difference
        assert survivors, "torchrun workers died with the group even unprotected"
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
    assert [pid for pid in _run(tmp_path, protect=True) if _alive(pid)] == []
