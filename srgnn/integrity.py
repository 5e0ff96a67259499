"""Checks that an exported model is whole and belongs to the data it is used with.

Used by the evaluation and by stage 4 before they score anything, so a damaged or mismatched
model fails as one clear line (:class:`srgnn.core.errors.InputError`) instead of a stack trace or,
worse, silently wrong numbers.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import torch

from srgnn.core.contracts import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from srgnn.core.errors import InputError, PipelineError
from srgnn.core.fs import fetch_dir, file_sha256, is_local, local_path, read_json

_VERSION = re.compile(r"^srgnn-([0-9a-f]{12})$")


def one_line(text: str) -> str:
    """``text`` with its line breaks folded, for an ``error: ...`` line."""
    return " ".join(str(text).split())


def check_weights_version(config: dict[str, Any], weights_path: str, config_path: str) -> str:
    """The weights are the ones exported: ``model_version`` (``srgnn-<first 12 hex of the sha256 of
    model.safetensors>``, written by :func:`srgnn.export.save_model`) names their hash. Returns it."""
    version = config.get("model_version")
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        raise InputError(f"model config {config_path}: model_version {version!r} is not "
                         f"'srgnn-<12 hex digits of the weights' sha256>'; re-export the model")
    got = file_sha256(weights_path)
    if not got.startswith(match.group(1)):
        raise InputError(f"model weights {weights_path} do not match {CONFIG_FILE}: sha256 "
                         f"{got[:12]}..., model_version {version} (the file changed after the export; "
                         f"re-export or restore it)")
    return version


def check_finite_weights(model: torch.nn.Module, weights_path: str) -> None:
    """Every floating-point tensor of the model is finite (no NaN, no inf)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise InputError(f"model weights {weights_path}: tensor '{name}' holds {bad} non-finite "
                                 f"value(s) (NaN or inf: a diverged training run?)")


def check_export_vocabulary(model_dir: str, n_items: int) -> int | None:
    """The export's ``item_vocab.parquet`` (when it has one) holds exactly the item indices
    1..n_items of the model. Returns its row count, or None without the file."""
    path = os.path.join(local_path(model_dir), VOCAB_FILE)
    if not os.path.isfile(path):
        return None
    import numpy as np
    import pyarrow.parquet as pq

    try:
        idx = pq.read_table(path, columns=["item_idx"]).column("item_idx").to_numpy(zero_copy_only=False)
    except Exception as exc:  # not Parquet, truncated, no item_idx column
        raise InputError(f"exported vocabulary {path} cannot be read "
                         f"({type(exc).__name__}: {one_line(exc)[:200]})") from None
    distinct = len(np.unique(idx))
    if len(idx) != n_items or distinct != n_items or (n_items and (idx.min() != 1 or idx.max() != n_items)):
        span = f"{idx.min()}..{idx.max()}" if len(idx) else "none"
        raise InputError(f"exported vocabulary {path} has {len(idx)} rows ({distinct} distinct item_idx, "
                         f"{span}) but {CONFIG_FILE} says n_items={n_items}: the export is inconsistent")
    return len(idx)


def load_checked_model(model_dir: str, device: torch.device | str = "cpu"
                       ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The exported model in ``model_dir`` (eval mode, on ``device``) and its config.json, after
    checking that it is whole: both files present, config.json readable, the weights' sha256 the
    one ``model_version`` names, the weights loadable into the configured model and finite, and the
    export's item vocabulary (if any) of ``n_items`` items. Any failure is one InputError line.
    An object-store folder is fetched to a temporary local copy first."""
    if not is_local(model_dir):
        with tempfile.TemporaryDirectory(prefix="srgnn-model-") as tmp:
            return load_checked_model(fetch_dir(model_dir, tmp), device)
    path = local_path(model_dir)
    if not os.path.isdir(path):
        raise InputError(f"model folder not found: {model_dir} (run stage 3, jobs/train.py, for this "
                         f"run date first, or pass --model-dir)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(f"model folder {model_dir} has no {name} (an incomplete export?)")
    config_path, weights_path = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise InputError(f"model config {config_path} is not a JSON object")
    for key in ("n_items", "max_len", "model"):
        if key not in config:
            raise InputError(f"model config {config_path} has no '{key}'")
    check_weights_version(config, weights_path, config_path)
    from srgnn.export import load_model

    try:
        model, _ = load_model(path, device)
    except PipelineError as exc:
        raise InputError(one_line(exc)) from None
    except Exception as exc:  # safetensors' own errors, shape mismatches, truncated files
        raise InputError(f"model weights {weights_path} could not be loaded ({type(exc).__name__}: "
                         f"{one_line(exc)[:300]}); the file is corrupt or does not match "
                         f"{CONFIG_FILE}") from None
    check_finite_weights(model, weights_path)
    check_export_vocabulary(path, int(config["n_items"]))
    return model, config


def check_export(model_dir: str) -> dict[str, Any]:
    """config.json of the export in ``model_dir`` after :func:`load_checked_model` (on the CPU)."""
    return load_checked_model(model_dir, "cpu")[1]


class NonFiniteScores(InputError):
    """A model produced NaN or infinite scores."""


def check_finite_scores(scores: torch.Tensor, what: str) -> None:
    """``scores`` [B, n_items] hold no NaN or inf, else :class:`NonFiniteScores` naming ``what``."""
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        rows = int((~finite.all(1)).sum())
        raise NonFiniteScores(f"{what} produced non-finite scores (NaN or inf) for {rows} of "
                              f"{scores.shape[0]} sessions in a batch: a diverged model?")


def check_model_matches_manifest(config: dict[str, Any], manifest: dict[str, Any], model_dir: str,
                                 manifest_path: str, hint: str = "") -> None:
    """The model was trained on the shards ``manifest`` describes: the same ``n_items`` and, when
    the export records it, the same shard content hash. ``hint`` ends the error message."""
    n_items = int(config["n_items"])
    if "n_items" in manifest and int(manifest["n_items"]) != n_items:
        raise InputError(f"model/manifest mismatch: n_items {n_items} in {model_dir}/{CONFIG_FILE}, "
                         f"{manifest['n_items']} in {manifest_path}: the model was trained on another "
                         f"vocabulary")
    trained_on = config.get("manifest_hash")
    if trained_on and manifest.get("content_hash") != trained_on:
        raise InputError(f"model/manifest mismatch: {model_dir}/{CONFIG_FILE} has manifest_hash="
                         f"{trained_on} but {manifest_path} has content_hash="
                         f"{manifest.get('content_hash')}; the model was trained on other shards{hint}")
