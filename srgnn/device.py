"""Device choice, seeding and determinism: one place for training, evaluation and scoring."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from srgnn.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(requested: str = "auto", index: int | None = None, assigned: str | None = None) -> torch.device:
    """The device to run on.

    ``requested``: ``auto`` (a GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``index``: the GPU of this process when several share a node (a DDP rank's ``LOCAL_RANK``).
    ``assigned``: a GPU address given by the scheduler (e.g. the one Spark assigned to a task);
    it wins over ``index`` for ``auto`` and ``cuda``.
    Asking for CUDA on a machine without it is a ConfigError.
    """
    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise ConfigError(f"option --device: {requested!r} is not one of {list(DEVICES)} or cuda:N")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "auto":
            return torch.device("cpu")
        raise ConfigError(f"option --device {requested}: no CUDA device is available on this machine")
    if requested.startswith("cuda:"):
        return torch.device(requested)
    if assigned is not None:
        return torch.device(f"cuda:{assigned}")
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (model initialisation and anything random)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(enabled: bool, device: torch.device) -> None:
    """``torch.use_deterministic_algorithms`` (warn-only on CUDA, where some kernels have no
    deterministic form) and the cuBLAS workspace setting it needs."""
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
