"""Stage 3, distributed: 2 gloo processes vs 1 process, uneven shards, distributed evaluation.

The shards here are written directly with pyarrow in stage 2's contract schema (one row group per
file, manifest with row_group_rows and content hash) so the tests control the row-group layout;
they are still read through srgnn.reader, i.e. the real Petastorm batch reader.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from srgnn.core.errors import ConfigError
from pipelines.train.config import TrainJobConfig
from pipelines.train.job import train_job
from pipelines.train.launch import launch_local
from srgnn.ddp import DistContext, step_schedule
from srgnn.train import evaluate

RUN_DATE = "2024-03-01"
MAX_LEN = 6
N_ITEMS = 30


# ---- tiny shards in the contract schema ---------------------------------------------------------
def markov_examples(n: int, seed: int, n_items: int = N_ITEMS, max_len: int = MAX_LEN) -> dict[str, np.ndarray]:
    """Prefixes of sessions that follow a fixed random successor table (learnable)."""
    rng = np.random.default_rng(seed)
    succ = np.random.default_rng(12345).integers(1, n_items + 1, size=(n_items + 1, 2))
    seq = np.zeros((n, max_len + 1), dtype=np.int64)
    seq[:, 0] = rng.integers(1, n_items + 1, size=n)
    for j in range(1, max_len + 1):
        seq[:, j] = np.where(rng.random(n) < 0.8, succ[seq[:, j - 1], rng.integers(0, 2, size=n)],
                             rng.integers(1, n_items + 1, size=n))
    lengths = rng.integers(1, max_len + 1, size=n).astype(np.int32)
    items = np.where(np.arange(max_len) < lengths[:, None], seq[:, :max_len], 0).astype(np.int32)
    targets = seq[np.arange(n), lengths].astype(np.int32)
    ngc_w = np.where((np.arange(max_len) >= 1) & (items > 0), 0.5, 0.0).astype(np.float32)
    return {"items": items, "length": lengths, "target": targets, "ngc_w": ngc_w,
            "session_id": np.array([f"s{seed}-{i}" for i in range(n)])}


def write_shards(out: Path, run_date: str, splits: dict[str, tuple[dict[str, np.ndarray], int]],
                 n_items: int = N_ITEMS, max_len: int = MAX_LEN) -> dict:
    """Write ``{split: (examples, rows_per_row_group)}`` as OUT/shards/run_date=D + manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from srgnn import reader

    folder = out / "shards" / f"run_date={run_date}"
    manifest = {"schema_version": 1, "run_date": run_date, "n_items": n_items, "max_len": max_len,
                "pad_side": "right", "world_size": 1, "valid_share": 0.1, "fraction": 1.0, "splits": {}}
    for split, (ex, rows) in splits.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        n = len(ex["target"])
        sizes = []
        for g, start in enumerate(range(0, n, rows)):
            sl = slice(start, min(start + rows, n))
            k = sl.stop - sl.start
            table = pa.table({
                "items": pa.ListArray.from_arrays(pa.array(np.arange(k + 1, dtype=np.int32) * max_len),
                                                  pa.array(ex["items"][sl].reshape(-1), pa.int32())),
                "length": pa.array(ex["length"][sl], pa.int32()),
                "target": pa.array(ex["target"][sl], pa.int32()),
                "ngc_w": pa.ListArray.from_arrays(pa.array(np.arange(k + 1, dtype=np.int32) * max_len),
                                                  pa.array(ex["ngc_w"][sl].reshape(-1), pa.float32())),
                "session_id": pa.array(ex["session_id"][sl]),
            })
            pq.write_table(table, folder / split / f"part-{g:05d}.parquet", row_group_size=k)
            sizes.append(k)
        manifest["splits"][split] = {"examples": n, "row_groups": len(sizes), "truncated": 0,
                                     "row_group_rows": sizes}
    manifest["content_hash"] = reader.content_hash(str(folder))
    (folder / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def small_config(out: Path, **kw) -> TrainJobConfig:
    base = dict(output=str(out), run_date=RUN_DATE, hidden_size=16, epochs=1, batch_size=16,
                eval_batch_size=64, num_threads=1, progress=False, mlflow_tracking_uri="none")
    base.update(kw)
    return TrainJobConfig(**base)


def test_step_schedule_equalises_uneven_ranks():
    # rank 0 holds 24 examples, rank 1 holds 17: 3 steps of 8 per rank; rank 1 runs dry in step 3
    assert step_schedule([24, 17], 8) == [16, 16, 9]
    assert step_schedule([41], 16) == [16, 16, 9]
    assert sum(step_schedule([5, 0, 3], 2)) == 8


def tile(ex: dict[str, np.ndarray], times: int) -> dict[str, np.ndarray]:
    return {k: np.concatenate([v] * times) for k, v in ex.items()}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_uneven_shards(tmp_path):
    """2 processes x 8 examples vs 1 process x 16: the same global batches, 5 train row groups.

    The 5 training row groups (not divisible by 2 ranks) hold the same 8 examples each, so whatever
    order Petastorm reads them in, every global step of both runs holds the same examples: steps
    1-2 are two copies of the 8 in both runs, step 3 is one copy (rank 0 reads 3 groups, rank 1
    reads 2, runs dry and takes a zero-weight step). The loss is scaled so DDP's average is the
    mean over the step's examples, so the runs differ only in the order of float32 sums (two
    half-batch gradients averaged vs one batch), ~1e-7 relative per step. After one epoch of 3 Adam
    steps the weights agree to 1e-5 and the metrics to 1e-4 (a rank could only move if two scores
    were within ~1e-6 of each other).
    """
    write_shards(tmp_path, RUN_DATE, {"train": (tile(markov_examples(8, 1), 5), 8),
                                      "valid": (markov_examples(50, 2), 10),
                                      "test": (markov_examples(30, 3), 10)})
    one = train_job(small_config(tmp_path, shuffle=False))
    w_one = {k: v.clone() for k, v in _weights(tmp_path).items()}
    two = launch_local(small_config(tmp_path, shuffle=False), nprocs=2)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["history"][0]["train_examples"] == two["history"][0]["train_examples"] == 40
    for split in ("valid", "test"):
        for name, value in one["metrics"][split].items():
            assert two["metrics"][split][name] == pytest.approx(value, abs=1e-4), (split, name)
    w_two = _weights(tmp_path)
    for name in w_one:
        torch.testing.assert_close(w_two[name], w_one[name], atol=1e-5, rtol=0)
    assert two["history"][0]["valid"]["examples"] == 50

    # Distributed evaluation == single-process evaluation of the same weights (to 1e-6): score the
    # 2-process run's exported (epoch-1) model in one process and compare with what the 2 ranks
    # all-reduced for that epoch.
    from srgnn import reader
    from srgnn.export import load_model

    model, _ = load_model(two["export_dir"])
    shards = str(tmp_path / "shards" / f"run_date={RUN_DATE}")
    for split in ("valid", "test"):
        single = evaluate(model, reader.iter_batches(shards, split, 7, workers_count=1), DistContext())
        distributed = two["history"][0][split]
        assert single["examples"] == distributed["examples"]
        for name in ("hr@20", "mrr@20", "ndcg@20", "hr@10", "mrr@10", "ndcg@10", "loss"):
            assert single[name] == pytest.approx(distributed[name], abs=1e-6), (split, name)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(out / "models" / f"run_date={RUN_DATE}" / "model.safetensors"))


@pytest.mark.slow
def test_fused_kernel_through_ddp_matches_the_eager_model(tmp_path):
    """``--kernel fused`` in 1 process (gradients set without autograd) and in 2 gloo processes
    (through autograd, so DDP's hooks see them) against the eager model in 1 process, on the same
    global batches as above: same weights and metrics to float32 rounding after one epoch, for
    SR-GNN-NGC (the shards' ngc_w reach the kernel)."""
    write_shards(tmp_path, RUN_DATE, {"train": (tile(markov_examples(8, 1), 5), 8),
                                      "valid": (markov_examples(50, 2), 10),
                                      "test": (markov_examples(30, 3), 10)})
    one = train_job(small_config(tmp_path, shuffle=False, variant="ngc", kernel="eager"))
    w_one = {k: v.clone() for k, v in _weights(tmp_path).items()}
    fused_one = train_job(small_config(tmp_path, shuffle=False, variant="ngc", kernel="fused", device="cpu"))
    for name, value in _weights(tmp_path).items():   # one process: the kernel sets the gradients itself
        torch.testing.assert_close(value, w_one[name], atol=1e-5, rtol=0)
    assert fused_one["history"][0]["train_examples"] == one["history"][0]["train_examples"]
    two = launch_local(small_config(tmp_path, shuffle=False, variant="ngc", kernel="fused", device="cpu"),
                       nprocs=2)
    assert two["world_size"] == 2 and one["history"][0]["train_examples"] == two["history"][0]["train_examples"]
    for name, value in one["metrics"]["valid"].items():
        assert two["metrics"]["valid"][name] == pytest.approx(value, abs=1e-4), name
    w_two = _weights(tmp_path)
    for name in w_one:
        torch.testing.assert_close(w_two[name], w_one[name], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="--kernel fused"):
        small_config(tmp_path, kernel="fused", device="cuda").validate()
