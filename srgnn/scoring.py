"""The torch side of stage 4: score sessions with an exported SR-GNN model and keep the top k.

Used inside Spark's Python workers by :mod:`pipelines.recommend` (one model per worker process,
cached here), by the evaluation, and directly from tests and benchmarks.
Nothing here knows about Spark: the caller passes what the task was given (a GPU address).

Ranking convention (the same as :mod:`srgnn.metrics`): items are ordered by score descending and,
among equal scores, by item index ascending: the top k are the evaluation's own
:func:`srgnn.metrics.ranked_top_k`, so the recommendations are the lists the metrics scored.
"""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import numpy as np
import torch

from srgnn.core import fs
from srgnn.core.contracts import CONFIG_FILE, WEIGHTS_FILE
from srgnn.integrity import check_finite_scores
from srgnn.metrics import ranked_top_k

# One model per Python worker: key (model dir, files' mtime+size, device) -> (model, config).
_MODEL_CACHE: dict[tuple[str, str, str], tuple[torch.nn.Module, dict[str, Any]]] = {}
_CACHE_LOCK = threading.Lock()


def model_fingerprint(model_dir: str) -> str:
    """mtime and size of the weights and config files: a rewritten model gets a new cache key.

    Object stores: the sha256 of config.json, which is published last and names the weights' hash
    in its ``model_version`` (one small read per call)."""
    if not fs.is_local(model_dir):
        config = f"{model_dir.rstrip('/')}/{CONFIG_FILE}"
        return f"{CONFIG_FILE}:sha256:{hashlib.sha256(fs.read_bytes(config)).hexdigest()}"
    parts = []
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        st = os.stat(os.path.join(model_dir, name))
        parts.append(f"{name}:{st.st_mtime_ns}:{st.st_size}")
    return "|".join(parts)


def cached_model(model_dir: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load ``model_dir`` (a local folder or an object-store URI) once per process (and again only
    if its files change). Also keeps freed CPU memory in the process (srgnn.memory): the
    [batch, n_items] scores are then not re-faulted for every batch."""
    from srgnn.integrity import load_checked_model
    from srgnn.memory import keep_freed_memory

    keep_freed_memory()

    model_dir = os.path.abspath(fs.local_path(model_dir)) if fs.is_local(model_dir) else model_dir.rstrip("/")
    key = (model_dir, model_fingerprint(model_dir), str(device))
    with _CACHE_LOCK:
        hit = _MODEL_CACHE.get(key)
        if hit is None:
            _MODEL_CACHE.clear()  # a worker scores with one model at a time
            model, config = load_checked_model(model_dir, device)
            model.eval()
            hit = _MODEL_CACHE[key] = (model, config)
        return hit


def mask_seen(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Set the scores of the items in each session (right-padded indices, 0 = padding) to -inf."""
    seen = torch.zeros(scores.shape[0], scores.shape[1] + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, items, True)
    return scores.masked_fill_(seen[:, 1:], float("-inf"))


@torch.inference_mode()
def score_top_k(model: torch.nn.Module, items: torch.Tensor, lengths: torch.Tensor, k: int,
                ngc_w: torch.Tensor | None = None, exclude_seen: bool = False, name: str = "the model"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: item indices (1..n_items) and scores of the top k, shapes [B, k]. NaN or infinite
    scores raise :class:`srgnn.integrity.NonFiniteScores` naming ``name``."""
    logits = model(items, lengths, ngc_w)          # [B, n_items], column j is item j + 1 (Eq. 8)
    check_finite_scores(logits, name)
    if exclude_seen:
        logits = mask_seen(logits, items)
    values, cols = ranked_top_k(logits, k)
    return cols + 1, values


def score_arrays(model: torch.nn.Module, items: np.ndarray, lengths: np.ndarray, k: int,
                 batch_size: int = 128, device: torch.device | str = "cpu",
                 ngc_w: np.ndarray | None = None, exclude_seen: bool = False, name: str = "the model"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Score right-padded ``items`` [N, L] in batches; returns int32 [N, k'] indices and float32
    [N, k'] scores, k' = min(k, n_items)."""
    n = int(items.shape[0])
    out_idx, out_val = [], []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        b_items = torch.from_numpy(np.ascontiguousarray(items[start:stop], dtype=np.int64)).to(device)
        b_len = torch.from_numpy(np.ascontiguousarray(lengths[start:stop], dtype=np.int64)).to(device)
        b_w = None if ngc_w is None else torch.from_numpy(
            np.ascontiguousarray(ngc_w[start:stop], dtype=np.float32)).to(device)
        idx, val = score_top_k(model, b_items, b_len, k, ngc_w=b_w, exclude_seen=exclude_seen, name=name)
        out_idx.append(idx.to(torch.int32).cpu().numpy())
        out_val.append(val.to(torch.float32).cpu().numpy())
    if not out_idx:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    return np.concatenate(out_idx), np.concatenate(out_val)
