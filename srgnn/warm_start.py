"""Warm start: a previous export's weights in a new model whose item catalog may differ.

With both vocabularies (the export's ``item_vocab.parquet`` and this run's item_vocab) row ``j`` of
the new item embedding is the old row of the same item id, so indices need not be stable. Without
them, row ``i`` is reused for index ``i <= min(old, new n_items)``, which is right only if stage 1
kept item indices stable. Items new since then keep their fresh (uniform) rows; items gone are
dropped. Every other tensor must have the same shape (same hidden size, variant and readout).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from srgnn.core.contracts import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.fs import local_path, read_json
from srgnn.core.log import get_logger

log = get_logger(__name__)

ITEM_TENSORS = ("embedding.weight",)  # [n_items + 1, d], row = item index (0 = padding)


def item_row_mapping(n_items: int, old_n: int, vocab_now: Any | None = None,
                     vocab_old: Any | None = None) -> np.ndarray:
    """``mapping[new index] = old index`` (0: a new item, fresh row), by item id when both
    vocabularies (frames with item_id, item_idx) are given, else by index up to ``old_n``."""
    if vocab_now is not None and vocab_old is not None:
        old_by_id = dict(zip(vocab_old["item_id"], vocab_old["item_idx"].astype(np.int64)))
        mapping = np.zeros(n_items + 1, dtype=np.int64)
        for item_id, idx in zip(vocab_now["item_id"], vocab_now["item_idx"].astype(np.int64)):
            mapping[idx] = old_by_id.get(item_id, 0)
        return mapping
    mapping = np.arange(n_items + 1, dtype=np.int64)
    mapping[mapping > old_n] = 0
    return mapping


def carry_over(model: torch.nn.Module, old: dict[str, torch.Tensor], old_n: int, mapping: np.ndarray,
               source: str) -> dict[str, torch.Tensor]:
    """The state dict for ``model`` from ``old``: item rows moved by ``mapping``, the rest as is."""
    new_state = {}
    for name, fresh in model.state_dict().items():
        if name not in old:
            raise ConfigError(f"--init-from {source}: tensor '{name}' is not in the previous model "
                              f"(a different variant or readout?)")
        prev = old[name]
        if name in ITEM_TENSORS and prev.shape[1:] == fresh.shape[1:] and prev.shape[0] == old_n + 1:
            rows = fresh.clone()
            new_idx = torch.from_numpy(np.nonzero(mapping)[0])
            rows[new_idx] = prev[torch.from_numpy(mapping[new_idx.numpy()])].to(rows.dtype)
            rows[0] = prev[0].to(rows.dtype)                    # the padding row
            new_state[name] = rows
        elif prev.shape == fresh.shape:
            new_state[name] = prev.to(fresh.dtype)
        else:
            raise ConfigError(f"--init-from {source}: tensor '{name}' has shape {tuple(prev.shape)} there "
                              f"and {tuple(fresh.shape)} here (hidden size or options differ)")
    return new_state


def warm_start(model: torch.nn.Module, init_from: str, n_items: int, vocab_now: Any | None) -> dict[str, Any]:
    """Load the export in ``init_from`` into ``model``; the item embedding's rows move with their items."""
    from safetensors.torch import load_file

    src = local_path(init_from).rstrip("/")
    weights, config_path = os.path.join(src, WEIGHTS_FILE), os.path.join(src, CONFIG_FILE)
    if not os.path.isfile(weights) or not os.path.isfile(config_path):
        raise InputError(f"--init-from {init_from}: expected {WEIGHTS_FILE} and {CONFIG_FILE} there")
    old_n = int(read_json(config_path)["n_items"])
    old = load_file(weights)
    vocab_old_path = os.path.join(src, VOCAB_FILE)
    vocab_old = None
    if vocab_now is not None and os.path.isfile(vocab_old_path):
        import pyarrow.parquet as pq

        vocab_old = pq.read_table(vocab_old_path, columns=["item_id", "item_idx"]).to_pandas()
    mapping = item_row_mapping(n_items, old_n, vocab_now, vocab_old)
    mode = "by item id" if vocab_old is not None else "by index (assumes stage 1 kept item indices stable)"
    model.load_state_dict(carry_over(model, old, old_n, mapping, init_from))
    reused = int((mapping[1:] > 0).sum())
    log.info("warm start from %s: %d of %d items reused %s, %d fresh", init_from, reused, n_items, mode,
             n_items - reused)
    return {"reused_items": reused, "fresh_items": n_items - reused, "mode": mode}
