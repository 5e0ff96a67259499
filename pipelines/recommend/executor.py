"""Stage 4's scoring inside Spark's Python workers: the ``mapInArrow`` function.

Scoring runs in the executors as an Arrow batch UDF (``DataFrame.mapInArrow``: the same Arrow
batches as ``mapInPandas`` without a pandas round-trip, so no per-row Python at all). The model
travels by path: each worker loads it once (``srgnn.scoring.cached_model``) and scores its batches
in chunks of ``batch_size`` on the GPU Spark gave the task, or any visible GPU, or CPU.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator


def make_partition_scorer(model_dir: str, k: int, max_len: int, batch_size: int, device: str,
                          exclude_seen: bool, torch_threads: int, with_ngc: bool
                          ) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The mapInArrow function: Arrow batches of (session_id, items[L], length[, ngc_w[L]]) ->
    Arrow batches of (session_id, item_idx[k], score[k]). Only plain values are captured, so the
    closure ships small and references nothing of ``pipelines`` (the workers need only ``srgnn``);
    the model is loaded by path in the worker, once (srgnn.scoring cache)."""

    def score_partition(batches):
        import numpy as np
        import pyarrow as pa
        import torch
        from pyspark import TaskContext

        from srgnn.device import pick_device
        from srgnn.scoring import cached_model, score_arrays

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx is not None else None   # the GPU Spark gave the task
        dev = pick_device(device, assigned=gpus.addresses[0] if gpus is not None and gpus.addresses else None)
        model, _ = cached_model(model_dir, dev)
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            items = batch.column("items").flatten().to_numpy(zero_copy_only=False).reshape(n, max_len)
            lengths = batch.column("length").to_numpy(zero_copy_only=False)
            ngc_w = None
            if with_ngc:
                ngc_w = batch.column("ngc_w").flatten().to_numpy(zero_copy_only=False).reshape(n, max_len)
            idx, val = score_arrays(model, items, lengths, k, batch_size=batch_size, device=dev,
                                    ngc_w=ngc_w, exclude_seen=exclude_seen, name=f"model {model_dir}")
            kk = idx.shape[1]
            offsets = pa.array(np.arange(0, n * kk + 1, kk, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [batch.column("session_id"),
                 pa.ListArray.from_arrays(offsets, pa.array(idx.reshape(-1), type=pa.int32())),
                 pa.ListArray.from_arrays(offsets, pa.array(val.reshape(-1), type=pa.float32()))],
                names=["session_id", "item_idx", "score"])

    return score_partition


SCORED_SCHEMA = "session_id string, item_idx array<int>, score array<float>"


def default_torch_threads(spark) -> int:
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, sc.defaultParallelism))
    return max(1, int(sc.getConf().get("spark.task.cpus", "1")))
