"""Stage 3, the job: SIGKILL + resume, early stopping, export, MLflow, warm start, clear errors,
and stage 1 -> 2 -> 3 end to end on the bundled sample (torchrun, 2 gloo processes)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from srgnn.core.cli import run_job
from srgnn.core.errors import ConfigError
from srgnn import checkpoint as ckpt
from pipelines.train.config import TrainJobConfig
from pipelines.train.job import train_job
from srgnn.ddp import per_rank_batch
from test_train_distributed import RUN_DATE, markov_examples, small_config, write_shards

ROOT = Path(__file__).resolve().parents[1]


def _standard_shards(out: Path, n_train: int = 160, **kw) -> dict:
    return write_shards(out, RUN_DATE, {"train": (markov_examples(n_train, 1, **kw), 40),
                                        "valid": (markov_examples(60, 2, **kw), 20),
                                        "test": (markov_examples(40, 3, **kw), 20)}, **kw)


def _model_dir(out: Path, run_date: str = RUN_DATE) -> Path:
    return out / "models" / f"run_date={run_date}"


def _one_line_error(capsys, cfg: TrainJobConfig) -> str:
    with pytest.raises(SystemExit) as exc:
        run_job(lambda: train_job(cfg))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---- SIGKILL after epoch 1, resume ----------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_after_first_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    _standard_shards(killed, n_train=2000)
    shutil.copytree(killed / "shards", clean / "shards")
    opts = dict(epochs=3, batch_size=20, lr=0.005, lr_dc_step=2)
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--output", str(killed), "--run-date", RUN_DATE,
           "--hidden-size", "16", "--epochs", "3", "--batch-size", "20", "--lr", "0.005", "--lr-dc-step", "2",
           "--eval-batch-size", "64", "--num-threads", "1", "--no-progress", "--mlflow-tracking-uri", "none"]
    epoch1 = killed / "checkpoints" / f"run_date={RUN_DATE}" / ckpt.checkpoint_name(1, 0)
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + 240
            while not epoch1.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            assert epoch1.exists(), log_path.read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not _model_dir(killed).exists()  # it died before exporting
    # killed within ~10 ms of the epoch-1 checkpoint, long before epoch 2 ended
    assert ckpt.latest_checkpoint(epoch1.parent) == epoch1
    saved = torch.load(epoch1, weights_only=True)  # tensors and plain containers only
    assert saved["epochs_done"] == 1 and saved["step_in_epoch"] == 0 and saved["global_step"] == 100
    assert set(saved["rng"]) >= {"torch", "numpy", "python"}

    resumed = train_job(small_config(killed, resume=True, **opts))
    uninterrupted = train_job(small_config(clean, **opts))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for got, want in zip(resumed["history"], uninterrupted["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-5)
        for split in ("valid", "test"):
            for name in ("hr@20", "mrr@20", "ndcg@20", "loss"):
                assert got[split][name] == pytest.approx(want[split][name], abs=1e-5), (got["epoch"], split, name)
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    w_resumed, w_clean = load_file(str(_model_dir(killed) / "model.safetensors")), \
        load_file(str(_model_dir(clean) / "model.safetensors"))
    for name, value in w_clean.items():
        torch.testing.assert_close(w_resumed[name], value, atol=1e-5, rtol=0)


def test_resume_from_a_mid_epoch_checkpoint_equals_uninterrupted_run(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _standard_shards(whole)  # 160 training examples: 10 steps of 16 per epoch
    opts = dict(epochs=2, checkpoint_every_steps=3, keep_checkpoints=0)
    uninterrupted = train_job(small_config(whole, **opts))
    ckpt_dir = whole / "checkpoints" / f"run_date={RUN_DATE}"
    names = [p.name for _, _, p in ckpt.list_checkpoints(ckpt_dir)]
    assert names == [ckpt.checkpoint_name(e, s) for e, s in
                     [(0, 3), (0, 6), (0, 9), (1, 0), (1, 3), (1, 6), (1, 9), (2, 0)]]
    # pretend the run died 3 steps into epoch 2: only the checkpoints up to then exist
    shutil.copytree(whole, cut)
    shutil.rmtree(_model_dir(cut))
    for name in names[5:]:
        (cut / "checkpoints" / f"run_date={RUN_DATE}" / name).unlink()
    resumed = train_job(small_config(cut, resume=True, **opts))
    for got, want in zip(resumed["history"], uninterrupted["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
        assert got["valid"]["mrr@20"] == pytest.approx(want["valid"]["mrr@20"], abs=1e-6)
    for name, value in load_file(str(_model_dir(whole) / "model.safetensors")).items():
        torch.testing.assert_close(load_file(str(_model_dir(cut) / "model.safetensors"))[name], value,
                                   atol=1e-6, rtol=0)


# ---- early stopping, export, MLflow --------------------------------------------------------------
def test_early_stopping_exports_best_epoch_and_logs_mlflow(tmp_path):
    manifest = _standard_shards(tmp_path)
    # lr = 0: no epoch can beat epoch 1, so patience 2 stops after epoch 3 and epoch 1 is exported
    cfg = small_config(tmp_path, epochs=6, lr=0.0, patience=2, mlflow_tracking_uri="",
                       mlflow_experiment="stage3-test")
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    result = train_job(cfg)
    # MLflow exports its tracking URI to os.environ; the job puts it back, so a later train_job
    # in the same process (notebook, nightly, this suite) logs to its own OUT, not this one.
    assert {k: os.environ.get(k) for k in env_before} == env_before
    assert result["stopped_early"] and result["epochs_run"] == 3 and result["best_epoch"] == 1

    config = json.loads((_model_dir(tmp_path) / "config.json").read_text())
    assert config["n_items"] == manifest["n_items"] and config["max_len"] == manifest["max_len"]
    assert config["manifest_hash"] == manifest["content_hash"]
    assert config["variant"] == "srgnn" and config["readout"] == "hybrid" and config["best_epoch"] == 1
    assert config["model"]["hidden_size"] == 16 and "kernel" not in config["model"]   # no training choices
    first = result["history"][0]
    for split in ("valid", "test"):
        for name in ("hr@20", "mrr@20", "ndcg@20"):
            assert config["metrics"][split][name] == pytest.approx(first[split][name])
            assert 0.0 <= config["metrics"][split][name] <= 1.0

    from srgnn.export import load_model
    model, loaded = load_model(str(_model_dir(tmp_path)))  # what stage 4 does, alone
    assert loaded["model_version"] and model.cfg.n_items == manifest["n_items"]

    # MLflow: the default local file store under OUT, read back with a real client
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"file:{tmp_path}/mlruns")
    exp = client.get_experiment_by_name("stage3-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result["mlflow_run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["variant"] == "srgnn" and run.data.params["batch_size"] == "16"
    history = client.get_metric_history(run.info.run_id, "valid_mrr_20")
    assert [m.step for m in history] == [1, 2, 3]
    assert history[0].value == pytest.approx(first["valid"]["mrr@20"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/config.json"} <= artifacts

    # the checkpoints of the run resume only with the same model options
    with pytest.raises(ConfigError, match="was made with model="):
        train_job(small_config(tmp_path, resume=True, hidden_size=8, epochs=6))


# ---- warm start ---------------------------------------------------------------------------------
def _write_vocab(out: Path, run_date: str, ids: list[str]) -> None:
    folder = out / "item_vocab" / f"run_date={run_date}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ids, "item_idx": pa.array(range(1, len(ids) + 1), pa.int32()),
                             "support": pa.array([5] * len(ids), pa.int64())}), folder / "part-0.parquet")


def test_warm_start_moves_item_rows_by_item_id(tmp_path):
    old_out, new_out = tmp_path / "old", tmp_path / "new"
    old_ids = [f"item{k}" for k in range(1, 31)]
    _standard_shards(old_out)
    _write_vocab(old_out, RUN_DATE, old_ids)
    train_job(small_config(old_out))
    old_dir = _model_dir(old_out)
    assert (old_dir / "item_vocab.parquet").is_file()
    old_w = load_file(str(old_dir / "model.safetensors"))

    # the next night: items 1..25 survive, listed in reverse order (indices NOT stable), 7 new items
    new_ids = old_ids[:25][::-1] + [f"new{k}" for k in range(7)]
    _standard_shards(new_out, n_items=32)
    _write_vocab(new_out, RUN_DATE, new_ids)
    result = train_job(small_config(new_out, init_from=str(old_dir), lr=0.0))  # lr 0: weights stay put
    new_w = load_file(str(_model_dir(new_out) / "model.safetensors"))
    emb_old, emb_new = old_w["embedding.weight"], new_w["embedding.weight"]
    assert emb_new.shape == (33, 16)
    for j, item in enumerate(new_ids, start=1):
        if item in old_ids:
            torch.testing.assert_close(emb_new[j], emb_old[old_ids.index(item) + 1], atol=0, rtol=0)
        else:  # fresh uniform(+-1/sqrt(d)) row, not a copy of any old row
            assert emb_new[j].abs().max() <= 0.25 + 1e-6
            assert not any(torch.equal(emb_new[j], emb_old[i]) for i in range(1, 31))
    for name, value in old_w.items():
        if name != "embedding.weight":
            torch.testing.assert_close(new_w[name], value, atol=0, rtol=0)
    assert result["export_dir"] == str(_model_dir(new_out))

    with pytest.raises(ConfigError, match="hidden size"):
        train_job(small_config(new_out, init_from=str(old_dir), hidden_size=8))


# ---- clear errors -------------------------------------------------------------------------------
def test_missing_or_changed_shards_are_one_clear_line(tmp_path, capsys):
    line = _one_line_error(capsys, small_config(tmp_path))
    assert f"no shards for run_date={RUN_DATE}" in line and "build_graph" in line

    _standard_shards(tmp_path)
    shards = tmp_path / "shards" / f"run_date={RUN_DATE}"
    victim = shards / "train" / "part-00001.parquet"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")  # one byte changed after stage 2
    line = _one_line_error(capsys, small_config(tmp_path))
    assert "do not match their manifest" in line and str(shards) in line

    for f in (shards / "test").iterdir():
        f.unlink()
    line = _one_line_error(capsys, small_config(tmp_path))
    assert "split 'test' are missing" in line

    (shards / "_manifest.json").unlink()
    line = _one_line_error(capsys, small_config(tmp_path))
    assert "manifest not found" in line

    with pytest.raises(ConfigError, match="global batch"):
        per_rank_batch(small_config(tmp_path, batch_size=100).batch_size, 3)
    assert per_rank_batch(small_config(tmp_path, batch_size=100).batch_size, 4) == 25


# ---- end to end on the bundled sample: stage 1 -> 2 -> 3 under torchrun ---------------------------
@pytest.mark.slow
def test_sample_stage_1_2_3_with_torchrun_exports_a_model(sample_stage2):
    out, run_date = sample_stage2["output"], sample_stage2["run_date"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
           str(ROOT / "jobs" / "train.py"), "--output", out, "--run-date", run_date, "--epochs", "1",
           "--hidden-size", "16", "--variant", "ngc", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = Path(out) / "models" / f"run_date={run_date}"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["world_size"] == 2 and config["variant"] == "ngc"
    assert config["n_items"] == sample_stage2["manifest"]["n_items"]
    assert config["manifest_hash"] == sample_stage2["manifest"]["content_hash"]
    assert config["metrics"]["test"]["hr@20"] > 0
    assert "epoch 1/1" in proc.stderr and "pairs/s" in proc.stderr
    assert (model_dir / "item_vocab.parquet").is_file()
    assert any((Path(out) / "mlruns").iterdir())  # the default MLflow file store under OUT
