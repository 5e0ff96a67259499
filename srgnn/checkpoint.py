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
killed mid-write) sees the previous checkpoint or the new one, never half a file.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srgnn.core.errors import InputError
from srgnn.core.fs import write_file_atomic

CKPT_RE = re.compile(r"^ckpt-epoch(\d{4,})-step(\d{7,})\.pt$")
BEST_NAME = "best.pt"
FORMAT_VERSION = 1


def checkpoint_name(epochs_done: int, step_in_epoch: int = 0) -> str:
    return f"ckpt-epoch{epochs_done:04d}-step{step_in_epoch:07d}.pt"


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
def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then renamed onto ``path``."""
    write_file_atomic(str(path), lambda fh: torch.save(obj, fh))
    return Path(path)


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # a truncated or foreign file
        raise InputError(f"checkpoint {path} cannot be read as a tensors-only checkpoint: {exc}") from exc


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, int, Path]]:
    """``(epochs_done, step_in_epoch, path)`` for every complete checkpoint, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][2] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return []
    removed = []
    for _, _, p in list_checkpoints(folder)[:-keep]:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def clear_checkpoints(folder: str | os.PathLike) -> None:
    """Remove this run date's checkpoints and best-model file (a fresh, non-resumed run)."""
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
