"""Stage 3 under faults: output locations are checked before training, one trainer per run date."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.train.job import train_job
from srgnn.core.cli import run_job
from test_train_distributed import RUN_DATE, markov_examples, small_config, write_shards

ROOT = Path(__file__).resolve().parents[1]


def _shards(out: Path) -> None:
    write_shards(out, RUN_DATE, {"train": (markov_examples(64, 1), 32), "valid": (markov_examples(32, 2), 16),
                                 "test": (markov_examples(32, 3), 16)})


def _one_line(capsys, cfg) -> str:
    with pytest.raises(SystemExit) as exc:
        run_job(lambda: train_job(cfg))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_file_where_models_belongs_fails_before_any_training(tmp_path, capsys):
    _shards(tmp_path)
    (tmp_path / "models").write_text("not a folder")
    line = _one_line(capsys, small_config(tmp_path))
    assert "models is a file where a folder belongs" in line
    assert not (tmp_path / "checkpoints" / f"run_date={RUN_DATE}").exists() or \
        not any((tmp_path / "checkpoints" / f"run_date={RUN_DATE}").iterdir())


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from srgnn.core.commit import RunLock
    from srgnn.core.layout import Layout
    lock = RunLock(Layout(sys.argv[1]), "train", "{d}").acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_second_trainer_of_the_same_date_exits_naming_the_holder(tmp_path, capsys):
    _shards(tmp_path)
    script = tmp_path / "hold.py"
    script.write_text(HOLDER.format(root=str(ROOT), d=RUN_DATE))
    holder = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line(capsys, small_config(tmp_path))
        assert f"train for run_date={RUN_DATE} is already running (host" in line and f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait(timeout=30)
    result = train_job(small_config(tmp_path))  # the dead holder's lock is free
    assert Path(result["export_dir"], "model.safetensors").exists()
