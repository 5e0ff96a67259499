"""Stage 4's scoring inside Spark's Python workers: the ``mapInArrow`` function.

Scoring runs in the executors as an Arrow batch UDF (``DataFrame.mapInArrow``: the same Arrow
batches as ``mapInPandas`` without a pandas round-trip, so no per-row Python at all). The model
travels by path: each worker loads it once (``srgnn.scoring.cached_model``) and scores its batches
in chunks of ``batch_size`` on the GPU Spark gave the task, or any visible GPU, or CPU.

A baseline (:mod:`srgnn.baselines`) scores the same Arrow batches on the CPU: its fitted scorer
(numpy arrays, fitted once in the driver) travels as a Spark broadcast, and each worker ranks the
scorer's ``[batch, n_items]`` matrices with the metrics' order (:func:`srgnn.metrics.ranked_top_k`).
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
            items, lengths = padded_arrays(batch, max_len)
            ngc_w = None
            if with_ngc:
                ngc_w = batch.column("ngc_w").flatten().to_numpy(zero_copy_only=False).reshape(n, max_len)
            idx, val = score_arrays(model, items, lengths, k, batch_size=batch_size, device=dev,
                                    ngc_w=ngc_w, exclude_seen=exclude_seen, name=f"model {model_dir}")
            yield scored_batch(batch.column("session_id"), idx, val)

    return score_partition


def padded_arrays(batch, max_len: int):
    """``items`` [n, max_len] and ``length`` [n] of an Arrow batch of padded sessions, as numpy."""
    n = batch.num_rows
    items = batch.column("items").flatten().to_numpy(zero_copy_only=False).reshape(n, max_len)
    return items, batch.column("length").to_numpy(zero_copy_only=False)


def scored_batch(session_ids, idx, val):
    """One output Arrow batch: (session_id, item_idx[k'], score[k']) from [n, k'] arrays."""
    import numpy as np
    import pyarrow as pa

    n, kk = idx.shape
    offsets = pa.array(np.arange(0, n * kk + 1, kk, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [session_ids,
         pa.ListArray.from_arrays(offsets, pa.array(np.asarray(idx, dtype=np.int32).reshape(-1), type=pa.int32())),
         pa.ListArray.from_arrays(offsets, pa.array(np.asarray(val, dtype=np.float32).reshape(-1), type=pa.float32()))],
        names=["session_id", "item_idx", "score"])


def baseline_top_k(scorer, items, lengths, k: int, batch_size: int, exclude_seen: bool):
    """A fitted baseline's top ``k`` of right-padded ``items`` [N, L]: int32 item indices (1-based)
    and float32 scores [N, k'], ranked as :func:`srgnn.metrics.ranked_top_k` ranks (score desc,
    then smaller index). The same function scores inside Spark and in tests without Spark."""
    import numpy as np
    import torch

    from srgnn.metrics import ranked_top_k
    from srgnn.scoring import mask_seen

    n = int(items.shape[0])
    kk = min(k, scorer.n_items)
    out_idx, out_val = [np.zeros((0, kk), np.int32)], [np.zeros((0, kk), np.float32)]
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            b_items = torch.from_numpy(np.ascontiguousarray(items[start:stop], dtype=np.int64))
            b_len = torch.from_numpy(np.ascontiguousarray(lengths[start:stop], dtype=np.int64))
            scores = scorer.score(b_items, b_len)
            if exclude_seen:
                scores = mask_seen(scores, b_items)
            val, cols = ranked_top_k(scores, k)
            out_idx.append((cols + 1).to(torch.int32).numpy())
            out_val.append(val.to(torch.float32).numpy())
    return np.concatenate(out_idx), np.concatenate(out_val)


def make_baseline_partition_scorer(fitted, k: int, max_len: int, batch_size: int, exclude_seen: bool,
                                   torch_threads: int) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The mapInArrow function of a baseline: ``fitted`` is a Spark broadcast of the fitted
    :class:`srgnn.baselines.Scorer`; same input and output batches as :func:`make_partition_scorer`."""

    def score_partition(batches):
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        scorer = fitted.value                      # once per Python worker (Spark caches broadcasts)
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            items, lengths = padded_arrays(batch, max_len)
            idx, val = baseline_top_k(scorer, items, lengths, k, batch_size, exclude_seen)
            yield scored_batch(batch.column("session_id"), idx, val)

    return score_partition


SCORED_SCHEMA = "session_id string, item_idx array<int>, score array<float>"


def default_torch_threads(spark) -> int:
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, sc.defaultParallelism))
    return max(1, int(sc.getConf().get("spark.task.cpus", "1")))
