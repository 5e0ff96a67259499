"""Checks that an exported model is whole and belongs to the data it is used with.

Used by the evaluation and by stage 4 before they score anything, so a damaged or mismatched
model fails as one clear line (:class:`srgnn.core.errors.InputError`) instead of a stack trace or,
worse, silently wrong numbers.
"""
from __future__ import annotations

import os
from typing import Any

from srgnn.core.contracts import CONFIG_FILE, WEIGHTS_FILE
from srgnn.core.errors import InputError, PipelineError
from srgnn.core.fs import local_path, read_json


def check_export(model_dir: str) -> dict[str, Any]:
    """config.json of the export in ``model_dir`` after loading its weights once (safetensors only).

    Raises InputError naming the folder or file for a missing folder, missing files, an unreadable
    config or corrupt weights."""
    path = local_path(model_dir)
    if not os.path.isdir(path):
        raise InputError(f"model folder not found: {model_dir} (run stage 3, jobs/train.py, for this "
                         f"run date first, or pass --model-dir)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(f"model folder {model_dir} has no {name} (an incomplete export?)")
    config = read_json(os.path.join(path, CONFIG_FILE))
    if not isinstance(config, dict):
        raise InputError(f"model config {path}/{CONFIG_FILE} is not a JSON object")
    for key in ("n_items", "max_len", "model"):
        if key not in config:
            raise InputError(f"model config {path}/{CONFIG_FILE} has no '{key}'")
    from srgnn.export import load_model

    try:
        load_model(path, "cpu")
    except PipelineError:
        raise
    except Exception as exc:  # safetensors' own errors, shape mismatches, truncated files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"model weights {path}/{WEIGHTS_FILE} could not be loaded "
                         f"({type(exc).__name__}: {first}); the file is corrupt or does not match "
                         f"{CONFIG_FILE}") from None
    return config


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
