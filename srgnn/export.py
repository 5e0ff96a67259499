"""Save / load an SR-GNN model: ``model.safetensors`` (weights) + ``config.json`` (everything else).

Never pickles: weights go through safetensors, the rest is JSON. ``save_model`` writes into a
hidden sibling folder and swaps it in by renames (:func:`srgnn.core.fs.replace_dir_atomic`), so a
reader sees the old model or the new one. ``config.json``'s ``model`` is the
:class:`~srgnn.model.ModelConfig`: what scoring needs, no training choices.

Object stores (``s3://`` ...) have no atomic folder rename: the model is written to a local temporary
folder and published with :func:`srgnn.core.fs.publish_dir`, ``config.json`` (the marker) uploaded
last. ``config.json``'s default ``model_version`` is ``srgnn-`` + the first 12 hex digits of the
weights' sha256, so :func:`load_model` reading from an object store checks that the weights it got
are the ones its config.json names (reading again if a writer was replacing the model meanwhile).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file

from srgnn.core import fs
from srgnn.core.contracts import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from srgnn.core.errors import InputError
from srgnn.core.fs import file_sha256, local_path, replace_dir_atomic
from srgnn.core.log import get_logger
from srgnn.model import SRGNN, ModelConfig

log = get_logger(__name__)

WEIGHTS = WEIGHTS_FILE
CONFIG = CONFIG_FILE
LEGACY_MODEL_KEYS = ("kernel",)   # training choices older exports kept in config.json's "model"
VERSION_PREFIX = "srgnn-"
_DEFAULT_VERSION = re.compile(r"^srgnn-[0-9a-f]{12}$")
READ_ATTEMPTS = 3                 # object stores: reads of config.json + weights until they agree


def weights_version(weights: bytes) -> str:
    """The default ``model_version`` of these weights' bytes: ``srgnn-<sha256[:12]>``."""
    return VERSION_PREFIX + hashlib.sha256(weights).hexdigest()[:12]


def _write_model(folder: str, model: SRGNN, extra: dict[str, Any] | None) -> dict[str, Any]:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})
    config: dict[str, Any] = {"model": model.cfg.to_dict(), "n_items": model.cfg.n_items,
                              "max_len": model.cfg.max_len,
                              "model_version": VERSION_PREFIX + file_sha256(os.path.join(folder, WEIGHTS))[:12]}
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
    next warm start (:mod:`srgnn.warm_start`). ``directory`` may be on an object store (see the
    module's doc).
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

    if fs.is_local(directory):
        final = replace_dir_atomic(directory, write)
    else:
        with tempfile.TemporaryDirectory(prefix="srgnn-export-") as tmp:
            write(tmp)
            final = fs.publish_dir(tmp, directory.rstrip("/"), marker=CONFIG)
    log.info("model %s is at %s", result["model_version"], final)
    return result


def load_model(directory: str, device: torch.device | str = "cpu") -> tuple[SRGNN, dict[str, Any]]:
    """The model saved in ``directory`` (in eval mode, on ``device``) and its config.json content.

    Raises InputError naming the file at fault when the folder or a file is missing, the JSON is
    unreadable, or the weights are corrupt or do not match the configured model. ``directory`` may
    be on an object store: both files are then read as bytes (config.json first) and the weights
    checked against config.json's default ``model_version``.
    """
    if not fs.is_local(directory):
        return _load_remote(directory.rstrip("/"), device)
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
    except json.JSONDecodeError as exc:
        raise InputError(f"model config {config_path} is unreadable: {exc}") from exc
    cfg = _model_config(config, config_path)
    try:
        tensors = load_file(weights_path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"model weights {weights_path} are corrupt: {exc}") from exc
    model = _build(cfg, tensors, weights_path, device)
    log.info("loaded model %s from %s", config.get("model_version"), path)
    return model, config


def _load_remote(directory: str, device: torch.device | str) -> tuple[SRGNN, dict[str, Any]]:
    """load_model for an object store: config.json, then the weights, as bytes; again (a writer
    was publishing meanwhile) while the weights' hash differs from config.json's version."""
    if not fs.isdir(directory):
        raise InputError(f"model folder not found: {directory}")
    config_path, weights_path = f"{directory}/{CONFIG}", f"{directory}/{WEIGHTS}"
    for attempt in range(1, READ_ATTEMPTS + 1):
        config = fs.read_json(config_path)   # a missing file is an InputError naming it
        cfg = _model_config(config, config_path)
        data = fs.read_bytes(weights_path)
        version = str(config.get("model_version", ""))
        if not _DEFAULT_VERSION.match(version) or weights_version(data) == version:
            break
        if attempt == READ_ATTEMPTS:
            raise InputError(f"model weights {weights_path} are not the ones {config_path} names (model_version "
                             f"{version}, the weights hash to {weights_version(data)}): the export is incomplete "
                             f"or being replaced; rerun stage 3 or retry")
        log.warning("model %s changed while it was read; reading it again", directory)
        time.sleep(0.5 * attempt)
    try:
        tensors = load_bytes(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"model weights {weights_path} are corrupt: {exc}") from exc
    model = _build(cfg, tensors, weights_path, device)
    log.info("loaded model %s from %s", config.get("model_version"), directory)
    return model, config


def _model_config(config: Any, config_path: str) -> ModelConfig:
    try:
        model_options = {k: v for k, v in config["model"].items() if k not in LEGACY_MODEL_KEYS}
        return ModelConfig.from_dict(model_options, source=config_path)
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"model config {config_path} is unreadable: {exc}") from exc


def _build(cfg: ModelConfig, tensors: dict[str, torch.Tensor], weights_path: str,
           device: torch.device | str) -> SRGNN:
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
    return model
