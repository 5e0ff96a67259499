"""Stage 3 on an object-store OUT (an S3-compatible server on 127.0.0.1): ``jobs/train.py --output
s3://...`` trains from stage 2's shards there, checkpoints there, resumes there after a SIGKILL, and
exports there; the model loads from there (load_model, scoring.cached_model) with the scores of a
local copy. Stages 1-2 run locally on the bundled sample and their OUT is uploaded."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from srgnn import checkpoint as ckpt
from srgnn import reader, scoring
from srgnn.core import fs
from srgnn.core.errors import InputError
from srgnn.core.layout import Layout
from srgnn.export import load_model, save_model
from srgnn.model import SRGNN, ModelConfig
from pipelines.train.job import warm_start_from
from tests.s3server import s3_bucket

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OPTS = {"hidden-size": "16", "epochs": "3", "batch-size": "20", "eval-batch-size": "500", "num-threads": "1",
        "keep-checkpoints": "0"}


def _train_cmd(out: str, run_date: str, *extra: str) -> list[str]:
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--output", out, "--run-date", run_date, "--no-progress"]
    for key, value in OPTS.items():
        cmd += [f"--{key}", value]
    return cmd + list(extra)


def _objects(url: str) -> list[str]:
    """Keys under ``url`` straight from the server (no client-side listing cache)."""
    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def s3_run(sample_stage2, tmp_path_factory):
    """Stages 1-2 of the sample uploaded to ``s3://<bucket>/out``; then ``jobs/train.py`` on it,
    SIGKILLed right after its epoch-1 checkpoint, and ``jobs/train.py --resume``."""
    run_date, local_out = sample_stage2["run_date"], sample_stage2["output"]
    work = tmp_path_factory.mktemp("s3_run")
    with s3_bucket() as bucket:   # sets the AWS_* variables the job processes inherit
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        root = f"{bucket}/out"
        s3, inner = fs.fsspec_filesystem(root)
        s3.put(local_out, inner, recursive=True)
        layout = Layout(root)
        ckpt_dir, model_dir = layout.checkpoints(run_date), layout.model(run_date)
        epoch1 = ckpt.checkpoint_name(1)

        log_path = work / "killed.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(_train_cmd(root, run_date), cwd=work, env=env, stdout=subprocess.DEVNULL,
                                    stderr=log)
            try:
                deadline = time.time() + 300
                while epoch1 not in _objects(ckpt_dir) and proc.poll() is None and time.time() < deadline:
                    time.sleep(0.01)
                assert epoch1 in _objects(ckpt_dir), log_path.read_text()[-3000:]
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=60)
        killed = {"returncode": proc.returncode, "checkpoints": _objects(ckpt_dir), "model": _objects(model_dir)}

        resumed = subprocess.run(_train_cmd(root, run_date, "--resume"), cwd=work, env=env,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        yield {"root": root, "local": local_out, "run_date": run_date, "ckpt_dir": ckpt_dir, "model_dir": model_dir,
               "killed": killed, "resume_log": resumed.stderr, "work": work}


def test_jobs_train_on_s3_checkpoints_resumes_and_exports(s3_run, tmp_path):
    killed = s3_run["killed"]
    assert killed["returncode"] == -signal.SIGKILL
    assert killed["model"] == []                                   # it died before exporting
    assert ckpt.checkpoint_name(1) in killed["checkpoints"] and ckpt.checkpoint_name(2) not in killed["checkpoints"]
    assert "taking over lease" in s3_run["resume_log"]             # the killed run's lease: its pid is gone
    assert "resumed from ckpt-epoch0001-step0000000.pt: 1 epochs done" in s3_run["resume_log"]

    # checkpoints on S3: every epoch's (--keep-checkpoints 0) and the best epoch's weights
    listed = ckpt.list_checkpoints(s3_run["ckpt_dir"])
    assert [(e, s) for e, s, _ in listed] == [(1, 0), (2, 0), (3, 0)]
    assert listed[-1][2] == f"{s3_run['ckpt_dir']}/{ckpt.checkpoint_name(3)}"
    last = ckpt.load_tensors(listed[-1][2])                        # weights_only, from bytes
    assert last["epochs_done"] == 3 and [h["epoch"] for h in last["history"]] == [1, 2, 3]
    assert ckpt.BEST_NAME in fs.listdir(s3_run["ckpt_dir"])

    # the export on S3; config.json (published last) names the uploaded weights' hash
    model_dir = s3_run["model_dir"]
    assert _objects(model_dir) == ["config.json", "item_vocab.parquet", "model.safetensors"]
    weights = fs.read_bytes(f"{model_dir}/model.safetensors")
    config = fs.read_json(f"{model_dir}/config.json")
    assert config["model_version"] == "srgnn-" + hashlib.sha256(weights).hexdigest()[:12]
    assert config["run_date"] == s3_run["run_date"] and config["epochs_run"] == 3

    # MLflow: an object-store OUT logs to ./mlruns of the working folder by default
    assert "MLflow logs to the local file store" in s3_run["resume_log"]
    assert (s3_run["work"] / "mlruns").is_dir() and not fs.exists(f"{s3_run['root']}/mlruns")

    # the killed-and-resumed run on S3 equals an uninterrupted run on a local copy of the same OUT
    local = tmp_path / "out"
    shutil.copytree(s3_run["local"], local)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(_train_cmd(str(local), s3_run["run_date"], "--mlflow-tracking-uri", "none"), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    local_dir = Layout(str(local)).model(s3_run["run_date"])
    local_config = json.loads(Path(local_dir, "config.json").read_text())
    assert local_config["best_epoch"] == config["best_epoch"]
    for split in ("valid", "test"):
        for name, value in local_config["metrics"][split].items():
            assert config["metrics"][split][name] == pytest.approx(value, abs=1e-5), (split, name)
    ours = load_safetensors(weights)
    for name, value in load_safetensors(Path(local_dir, "model.safetensors").read_bytes()).items():
        torch.testing.assert_close(ours[name], value, atol=1e-5, rtol=0)


def test_load_model_and_cached_model_from_s3_score_like_a_local_copy(s3_run, tmp_path):
    model_dir, shards = s3_run["model_dir"], Layout(s3_run["root"]).shards(s3_run["run_date"])
    local_dir = fs.fetch_dir(model_dir, str(tmp_path / "model"))
    test_s3 = reader.read_split(shards, "test")                     # pyarrow on the object store
    test_local = reader.read_split(reader.shards_dir(s3_run["local"], s3_run["run_date"]), "test")
    assert len(test_s3["target"]) > 0
    for name, value in test_local.items():
        np.testing.assert_array_equal(test_s3[name], value)

    remote, remote_config = load_model(model_dir)
    copy, copy_config = load_model(local_dir)
    assert remote_config == copy_config
    got = scoring.score_arrays(remote, test_s3["items"], test_s3["length"], k=20)
    want = scoring.score_arrays(copy, test_local["items"], test_local["length"], k=20)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

    cached, cached_config = scoring.cached_model(model_dir + "/")  # what each Spark worker does
    assert cached_config["model_version"] == remote_config["model_version"]
    assert scoring.cached_model(model_dir)[0] is cached             # loaded once per process
    np.testing.assert_array_equal(scoring.score_arrays(cached, test_s3["items"], test_s3["length"], k=20)[0],
                                  want[0])


def _small_model(shift: float) -> SRGNN:
    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=12, hidden_size=8))
    with torch.no_grad():
        model.embedding.weight.add_(shift)
    return model


def test_republished_and_half_published_models_on_s3(tmp_path):
    with s3_bucket() as bucket:
        model_dir = f"{bucket}/out/models/run_date=2016-06-01"
        first = save_model(model_dir, _small_model(0.0))
        fs.write_bytes_atomic(f"{model_dir}/stale.txt", b"left by an older export")
        model, _ = scoring.cached_model(model_dir)
        second = save_model(model_dir, _small_model(1.0))            # publish_dir: stale files deleted
        assert _objects(model_dir) == ["config.json", "model.safetensors"]
        assert first["model_version"] != second["model_version"]
        reloaded, config = scoring.cached_model(model_dir)          # config.json changed: loaded again
        assert reloaded is not model and config["model_version"] == second["model_version"]
        assert torch.equal(reloaded.embedding.weight, _small_model(1.0).embedding.weight)

        # --init-from an export on the object store
        fresh = SRGNN(ModelConfig(n_items=12, hidden_size=8))
        assert warm_start_from(fresh, model_dir, 12, None)["reused_items"] == 12
        assert torch.equal(fresh.embedding.weight, reloaded.embedding.weight)

        # weights of one version under the config.json of another: one clear error, not a model
        save_model(str(tmp_path / "old"), _small_model(0.0))
        fs.write_bytes_atomic(f"{model_dir}/model.safetensors", (tmp_path / "old" / "model.safetensors").read_bytes())
        with pytest.raises(InputError, match="are not the ones .*config.json names"):
            load_model(model_dir)
        with pytest.raises(InputError, match="model folder not found"):
            load_model(f"{bucket}/out/models/run_date=2016-06-02")
        fs.remove_tree(f"{model_dir}/config.json")
        with pytest.raises(InputError, match="file not found: .*config.json"):
            load_model(model_dir)


def test_recommend_scores_with_a_model_on_s3_like_with_a_local_copy(s3_run, tmp_path):
    """Stage 4's driver and executors load the model from the object store (the AWS_* variables
    reach the job's local Spark workers through the environment)."""
    import shutil

    import pyarrow.dataset as ds

    run_date, model_dir = s3_run["run_date"], s3_run["model_dir"]
    local_model = fs.fetch_dir(model_dir, str(tmp_path / "model"))
    rows = {}
    for name, where in (("s3", model_dir), ("local", local_model)):
        out = tmp_path / f"out-{name}"
        shutil.copytree(s3_run["local"], out)
        proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "recommend.py"), "--output", str(out),
                               "--run-date", run_date, "--model-dir", where, "--model-name", "srgnn"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = ds.dataset(str(out / "recommendations" / f"run_date={run_date}")).to_table().to_pandas()
        rows[name] = table.sort_values(["session_id", "rank"]).reset_index(drop=True)
    assert len(rows["s3"]) > 0
    assert rows["s3"].equals(rows["local"])
