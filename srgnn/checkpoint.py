"""Resumable training checkpoints: tensors, numbers and strings only, written atomically.

A checkpoint is one file ``ckpt-epoch{E:04d}-step{S:07d}.pt`` under the run date's checkpoint folder
(``OUT/checkpoints/run_date=D/``): ``E`` epochs are complete and ``S`` steps of epoch ``E + 1`` are
done (``S = 0`` at an epoch boundary), so the newest checkpoint is the largest ``(E, S)``.
It holds the model, optimiser and scheduler state dicts, the epoch and step counters, the RNG
states of torch (CPU and CUDA), numpy and Python, the early-stopping state and a small ``meta``
dict (manifest hash, model config) checked on resume.

Everything is saved as plain containers of tensors, ints, floats, bools and strings, so it loads
with ``torch.load(path, weights_only=True)``: nothing is ever unpickled as an object.
The numpy and Python RNG states, which are tuples with arrays inside, are converted to tensors.

Writes go to a temporary file in the same folder followed by ``os.replace``: a reader (or a run
killed mid-write) sees the previous checkpoint or the new one, never half a file. On an object
store (``s3://`` ...) a checkpoint is one object, which is visible only once its upload is complete;
listing, loading (from bytes) and pruning go through :mod:`srgnn.core.fs`. Paths are
:class:`~pathlib.Path` objects for local folders and URI strings for object stores.
"""
from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from srgnn.core import fs
from srgnn.core.errors import InputError
from srgnn.core.fs import write_file_atomic

CKPT_RE = re.compile(r"^ckpt-epoch(\d{4,})-step(\d{7,})\.pt$")
BEST_NAME = "best.pt"
FORMAT_VERSION = 1


CkptPath = Union[Path, str]   # a Path for local folders, a URI string for object stores


def checkpoint_name(epochs_done: int, step_in_epoch: int = 0) -> str:
    return f"ckpt-epoch{epochs_done:04d}-step{step_in_epoch:07d}.pt"


def _remote(folder: str | os.PathLike) -> bool:
    return not fs.is_local(str(folder))


def checkpoint_path(folder: str | os.PathLike, name: str) -> CkptPath:
    """``folder/name``: a Path for a local folder, a URI string for an object store."""
    if _remote(folder):
        return f"{str(folder).rstrip('/')}/{name}"
    return Path(fs.local_path(str(folder))) / name


def path_name(path: CkptPath) -> str:
    """The file name of a checkpoint path (local or URI)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


# ---- RNG states as tensors --------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / Python RNG states as tensors and numbers (weights_only-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ---- atomic save / load ---------------------------------------------------------------------
def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> CkptPath:
    """torch.save to a temporary file in the same folder, then renamed onto ``path`` (object
    stores: one upload, visible when complete)."""
    write_file_atomic(str(path), lambda fh: torch.save(obj, fh))
    return str(path) if _remote(path) else Path(path)


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never objects."""
    try:
        if _remote(path):
            if not fs.exists(str(path)):
                raise FileNotFoundError(path)
            return torch.load(io.BytesIO(fs.read_bytes(str(path))), map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # a truncated or foreign file
        raise InputError(f"checkpoint {path} cannot be read as a tensors-only checkpoint: {exc}") from exc


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, int, CkptPath]]:
    """``(epochs_done, step_in_epoch, path)`` for every complete checkpoint, oldest first."""
    if _remote(folder):
        found = []
        for name in fs.listdir(str(folder)):
            m = CKPT_RE.match(name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), checkpoint_path(folder, name)))
        return sorted(found)
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> CkptPath | None:
    found = list_checkpoints(folder)
    return found[-1][2] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> list[CkptPath]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return []
    removed = []
    for _, _, p in list_checkpoints(folder)[:-keep]:
        if isinstance(p, Path):
            p.unlink(missing_ok=True)
        else:
            fs.remove_tree(p)
        removed.append(p)
    return removed


def clear_checkpoints(folder: str | os.PathLike) -> None:
    """Remove this run date's checkpoints and best-model file (a fresh, non-resumed run)."""
    if _remote(folder):
        for name in fs.listdir(str(folder)):
            if CKPT_RE.match(name) or name == BEST_NAME or name.startswith("."):
                fs.remove_tree(str(checkpoint_path(folder, name)))
        return
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if CKPT_RE.match(p.name) or p.name == BEST_NAME or p.name.startswith("."):
            p.unlink(missing_ok=True)


def make_checkpoint(*, model_state: dict, optimizer_state: dict, scheduler_state: dict,
                    epochs_done: int, step_in_epoch: int, global_step: int,
                    early_stop: dict[str, Any], history: list[dict[str, Any]],
                    meta: dict[str, Any], epoch_accum: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "epochs_done": int(epochs_done),
        "step_in_epoch": int(step_in_epoch),
        "global_step": int(global_step),
        "rng": rng_state(),
        "early_stop": dict(early_stop),
        "history": list(history),
        "epoch_accum": dict(epoch_accum or {}),
        "meta": dict(meta),
    }
