"""Save / load an SR-GNN model: ``model.safetensors`` (weights) + ``config.json`` (everything else).

Never pickles: weights go through safetensors, the rest is JSON. ``save_model`` writes into a
hidden sibling folder and swaps it in by renames (:func:`srgnn.core.fs.replace_dir_atomic`), so a
reader sees the old model or the new one. ``config.json``'s ``model`` is the
:class:`~srgnn.model.ModelConfig`: what scoring needs, no training choices.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from srgnn.core.contracts import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from srgnn.core.errors import InputError
from srgnn.core.fs import local_path, replace_dir_atomic
from srgnn.core.log import get_logger
from srgnn.model import SRGNN, ModelConfig

log = get_logger(__name__)

WEIGHTS = WEIGHTS_FILE
CONFIG = CONFIG_FILE
LEGACY_MODEL_KEYS = ("kernel",)   # training choices older exports kept in config.json's "model"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_model(folder: str, model: SRGNN, extra: dict[str, Any] | None) -> dict[str, Any]:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})
    config: dict[str, Any] = {"model": model.cfg.to_dict(), "n_items": model.cfg.n_items,
                              "max_len": model.cfg.max_len,
                              "model_version": "srgnn-" + _sha256(os.path.join(folder, WEIGHTS))[:12]}
    config.update(extra or {})
    with open(os.path.join(folder, CONFIG), "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    log.info("saved model %s (%d tensors)", config["model_version"], len(tensors))
    return config


def save_model(directory: str, model: SRGNN, extra: dict[str, Any] | None = None,
               vocab: Any | None = None) -> dict[str, Any]:
    """Write the model to ``directory`` (replaced atomically); returns the config.json content.

    ``config.json`` = {"model": ModelConfig dict, "n_items", "max_len", "model_version", **extra};
    ``model_version`` defaults to ``srgnn-<first 12 hex of the weights' sha256>``. ``vocab`` (a
    pandas frame with item_id, item_idx) is written beside them as ``item_vocab.parquet``, for the
    next warm start (:mod:`srgnn.warm_start`).
    """
    result: dict[str, Any] = {}

    def write(folder: str) -> None:
        result.update(_write_model(folder, model, extra))
        if vocab is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(vocab[["item_id", "item_idx"]].sort_values("item_idx"),
                                         preserve_index=False)
            pq.write_table(table, os.path.join(folder, VOCAB_FILE))

    final = replace_dir_atomic(directory, write)
    log.info("model %s is at %s", result["model_version"], final)
    return result


def load_model(directory: str, device: torch.device | str = "cpu") -> tuple[SRGNN, dict[str, Any]]:
    """The model saved in ``directory`` (in eval mode, on ``device``) and its config.json content.

    Raises InputError naming the file at fault when the folder or a file is missing, the JSON is
    unreadable, or the weights are corrupt or do not match the configured model.
    """
    path = local_path(directory).rstrip("/")
    if not os.path.isdir(path):
        raise InputError(f"model folder not found: {path}")
    config_path, weights_path = os.path.join(path, CONFIG), os.path.join(path, WEIGHTS)
    for f in (config_path, weights_path):
        if not os.path.isfile(f):
            raise InputError(f"model file missing: {f}")
    try:
        with open(config_path) as fh:
            config = json.load(fh)
        model_options = {k: v for k, v in config["model"].items() if k not in LEGACY_MODEL_KEYS}
        cfg = ModelConfig.from_dict(model_options, source=config_path)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"model config {config_path} is unreadable: {exc}") from exc
    try:
        tensors = load_file(weights_path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"model weights {weights_path} are corrupt: {exc}") from exc
    model = SRGNN(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        shapes = sorted(f"{k}: {found[k]} != {expected[k]}" for k in set(expected) & set(found)
                        if expected[k] != found[k])
        raise InputError(f"model weights {weights_path} do not match its config ({cfg.variant}, "
                         f"{cfg.readout}, n_items={cfg.n_items}, d={cfg.hidden_size}): missing {missing}, "
                         f"unexpected {unexpected}, wrong shapes {shapes}")
    model.load_state_dict(tensors)
    model.to(device).eval()
    log.info("loaded model %s from %s", config.get("model_version"), path)
    return model, config
