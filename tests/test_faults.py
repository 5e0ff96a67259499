"""The fault matrix on real stages: kill -9 at the write steps, two writers of one date, files in the
way, leftovers of killed writes. docs/reliability.md lists each fault with its guaranteed outcome."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.sessions import SessionsConfig, build_sessions
from srgnn.core.cli import run_job
from srgnn.core.commit import RunLock
from srgnn.core.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
D = "2016-06-01"
STAGE1_TABLES = ("sessions", "item_vocab", "quarantine")


def _rows(spark, out: Path, table: str) -> list:
    """The run date's rows, through a read of the WHOLE table (every partition folder)."""
    df = spark.read.parquet(str(out / table)).where(f"run_date = '{D}'").drop("run_date")
    return sorted(tuple(str(v) for v in r) for r in df.collect())


def _one_line(capsys, fn) -> str:
    with pytest.raises(SystemExit) as exc:
        run_job(fn)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _half_sample(sample_csv: Path, tmp_path: Path) -> Path:
    """The sample's first ~60% of lines: another night's input, with other sessions."""
    lines = sample_csv.read_text().splitlines()
    half = tmp_path / "half.csv"
    half.write_text("\n".join(lines[: int(len(lines) * 0.6)]) + "\n")
    return half


@pytest.mark.slow
@pytest.mark.parametrize("point", ["build_sessions:before_publish", "build_sessions:publish:1"])
def test_stage1_killed_at_a_write_step_leaves_readable_tables_and_the_rerun_equals_a_clean_run(
        spark, sample_stage1, sample_csv, tmp_path, point):
    out = tmp_path / "out"
    shutil.copytree(sample_stage1["output"], out)
    before = {t: _rows(spark, out, t) for t in STAGE1_TABLES}
    half = _half_sample(sample_csv, tmp_path)
    cmd = [sys.executable, str(ROOT / "jobs" / "build_sessions.py"), "--input", str(half), "--format", "diginetica",
           "--output", str(out), "--run-date", D]
    proc = subprocess.run(cmd, env={**os.environ, "SRGNN_KILL_AT": point}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # whole-table reads work right after the kill, leftovers and all
    after_kill = {t: _rows(spark, out, t) for t in STAGE1_TABLES}
    if point.endswith("before_publish"):
        assert after_kill == before                     # nothing of the killed run is visible
        assert list(out.glob("sessions/_staging-build_sessions-*"))  # its staging copy is there, unseen
    # the next run completes or sweeps what the killed one left, then runs: equal to a clean run
    build_sessions(spark, SessionsConfig(input=str(half), format="diginetica", output=str(out), run_date=D))
    clean = tmp_path / "clean"
    build_sessions(spark, SessionsConfig(input=str(half), format="diginetica", output=str(clean), run_date=D))
    for t in STAGE1_TABLES:
        assert _rows(spark, out, t) == _rows(spark, clean, t)
    assert _rows(spark, out, "sessions") != before["sessions"]
    assert not [p for p in out.rglob("*") if p.name.startswith(("_staging-", "_trash-"))]
    assert not (out / "_commits" / f"build_sessions-{D}.json").exists()


def test_a_second_writer_of_the_same_date_exits_naming_the_first(spark, sample_csv, tmp_path, capsys):
    layout = Layout(str(tmp_path))
    cfg = SessionsConfig(input=str(sample_csv), format="diginetica", output=str(tmp_path), run_date=D)
    with RunLock(layout, "build_sessions", D):
        line = _one_line(capsys, lambda: build_sessions(spark, cfg))
    assert line.startswith(f"error: build_sessions for run_date={D} is already running (host ")
    assert f"pid {os.getpid()}" in line
    assert not (tmp_path / "sessions").exists()   # the second writer wrote nothing


def test_a_file_where_a_table_folder_belongs_is_one_line_and_publishes_nothing(spark, sample_csv, tmp_path, capsys):
    (tmp_path / "item_vocab").write_text("not a folder")
    cfg = SessionsConfig(input=str(sample_csv), format="diginetica", output=str(tmp_path), run_date=D)
    line = _one_line(capsys, lambda: build_sessions(spark, cfg))
    assert "item_vocab" in line and "folder" in line, line
    assert not (tmp_path / "sessions" / f"run_date={D}").exists()   # all or nothing
    assert not list(tmp_path.rglob("_staging-*"))


def test_no_space_left_is_one_line(capsys):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/sessions/part-0.parquet")
    line = _one_line(capsys, full)
    assert line == ("error: no space left on the device: /data/out/sessions/part-0.parquet "
                    "(No space left on device)")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_job(lambda: 1 / 0)


def test_missing_object_store_credentials_are_one_line(capsys, monkeypatch):
    from srgnn.core import fs

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    line = _one_line(capsys, lambda: fs.read_json("s3://bucket/out/stats/x.json"))
    assert line.startswith("error: object store: ") and "AWS_* variables" in line
