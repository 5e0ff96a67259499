"""Run-level commits and run locks (srgnn.core.commit): all outputs of a run or none, one writer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from srgnn.core.commit import LockHeld, RunCommit, RunLock, sweep
from srgnn.core.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
D = "2016-06-01"


def _write_dir(text: str):
    def write(path: str) -> None:
        os.makedirs(path, exist_ok=True)
        Path(path, "part-0.txt").write_text(text)
    return write


def _state(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.relative_to(out).as_posix().startswith("_locks")}


def _run(out: Path, text: str) -> None:
    layout = Layout(str(out))
    with RunCommit(layout, "stage", D) as commit:
        commit.add(layout.partition("a", D), _write_dir(text))
        commit.add(layout.partition("b", D), _write_dir(text))
        commit.add_json(layout.stats(D, "stage.json"), {"text": text})


def test_publish_replaces_every_output_and_leaves_nothing_else(tmp_path):
    _run(tmp_path, "old")
    _run(tmp_path, "new")
    assert _state(tmp_path) == {f"a/run_date={D}/part-0.txt": "new", f"b/run_date={D}/part-0.txt": "new",
                                f"stats/run_date={D}/stage.json": json.dumps({"text": "new"}, indent=2) + "\n"}


def test_a_failing_run_publishes_nothing_and_removes_its_staging(tmp_path):
    _run(tmp_path, "old")
    before = _state(tmp_path)
    layout = Layout(str(tmp_path))
    with pytest.raises(RuntimeError):
        with RunCommit(layout, "stage", D) as commit:
            commit.add(layout.partition("a", D), _write_dir("new"))
            raise RuntimeError("boom")
    assert _state(tmp_path) == before
    assert not [p for p in tmp_path.rglob("_staging-*")]


KILLED_RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from srgnn.core.commit import RunCommit
    from srgnn.core.layout import Layout
    out, text = sys.argv[1], sys.argv[2]
    layout = Layout(out)
    def write(path):
        os.makedirs(path, exist_ok=True)
        Path(path, "part-0.txt").write_text(text)
    with RunCommit(layout, "stage", "{d}") as commit:
        commit.add(layout.partition("a", "{d}"), write)
        commit.add(layout.partition("b", "{d}"), write)
""")


@pytest.mark.parametrize("point", ["stage:before_publish", "stage:publish:0", "stage:publish:1",
                                   "stage:after_publish"])
def test_a_kill_at_any_publish_step_is_completed_or_undone_by_the_next_run(tmp_path, point):
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(root=str(ROOT), d=D))
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), str(out), "old"], check=True)
    proc = subprocess.run([sys.executable, str(script), str(out), "new"],
                          env={**os.environ, "SRGNN_KILL_AT": point})
    assert proc.returncode == -signal.SIGKILL
    texts = {p: (out / p / f"run_date={D}" / "part-0.txt").read_text() for p in ("a", "b")}
    assert set(texts) == {"a", "b"}  # no partition is ever missing
    journal = out / "_commits" / f"stage-{D}.json"
    if point == "stage:before_publish":
        assert texts == {"a": "old", "b": "old"} and not journal.exists()
    # the next run of the same stage and date first completes (or sweeps) what the killed one left
    layout = Layout(str(out))
    rolled = RunCommit(layout, "stage", D).recover()
    assert rolled == (2 if point.startswith("stage:publish") else 0)
    after = {p: (out / p / f"run_date={D}" / "part-0.txt").read_text() for p in ("a", "b")}
    assert after == ({"a": "old", "b": "old"} if point == "stage:before_publish" else {"a": "new", "b": "new"})
    assert not journal.exists()
    assert [p.name for p in out.rglob("*") if p.name.startswith(("_staging-", "_trash-"))] == []


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from srgnn.core.commit import RunLock
    from srgnn.core.layout import Layout
    lock = RunLock(Layout(sys.argv[1]), "stage", "{d}").acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def test_one_writer_per_stage_and_date_and_a_dead_holders_lock_is_free(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLDER.format(root=str(ROOT), d=D))
    holder = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=rf"already running \(host \S+ pid {holder.pid} since "):
            RunLock(Layout(str(tmp_path)), "stage", D).acquire()
        RunLock(Layout(str(tmp_path)), "stage", "2016-06-02").acquire().release()  # other dates are free
        RunLock(Layout(str(tmp_path)), "other", D).acquire().release()             # other stages too
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.time() + 10
    while True:  # the kernel frees a killed holder's lock
        try:
            RunLock(Layout(str(tmp_path)), "stage", D).acquire().release()
            break
        except LockHeld:
            assert time.time() < deadline
            time.sleep(0.1)


def test_sweep_removes_only_this_stage_and_dates_leftovers(tmp_path):
    mine = [tmp_path / "a" / f"_staging-stage-{D}-abc", tmp_path / "stats" / f"run_date={D}" / f"_trash-stage-{D}-x.json"]
    others = [tmp_path / "a" / "_staging-stage-2016-06-02-abc", tmp_path / "a" / f"_staging-other-{D}-abc"]
    for p in mine + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert sweep(Layout(str(tmp_path)), "stage", D) == 2
    assert [p.exists() for p in mine + others] == [False, False, True, True]


def test_a_downstream_stage_completes_an_interrupted_upstream_publish_first(tmp_path):
    from srgnn.core.commit import complete_pending

    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(root=str(ROOT), d=D))
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), str(out), "old"], check=True)
    proc = subprocess.run([sys.executable, str(script), str(out), "new"], env={**os.environ, "SRGNN_KILL_AT": "stage:publish:1"})
    assert proc.returncode == -signal.SIGKILL
    assert (out / "b" / f"run_date={D}" / "part-0.txt").read_text() == "old"  # half published
    complete_pending(Layout(str(out)), ["stage"], D)
    assert [(out / p / f"run_date={D}" / "part-0.txt").read_text() for p in ("a", "b")] == ["new", "new"]
