"""The whole training step - forward, backward and Adam - captured once as a CUDA graph, replayed.

At batch 100 an SR-GNN step is a few hundred small kernels. Launched one by one from Python the
GPU waits on the launches; captured in a graph, one ``replay()`` launches them all.

What capture needs, and how this module provides it:

- fixed shapes and no host syncs: the model must have ``static_shapes=True`` (every size a
  function of ``[B, L]``); batches are copied into fixed input buffers, and a shorter batch (the
  epoch's last, or an empty one on a rank that ran dry) is padded with zero-weight rows;
- fixed memory: the gradients live in the graph's private pool (``zero_grad(set_to_none=True)``
  before capture, as PyTorch's whole-network capture recipe does);
- an optimiser that keeps its state on the device: Adam built with ``capturable=True``
  (:func:`make_optimizer`);
- warm-up iterations on a side stream before capture (lazy optimiser state, cuBLAS workspaces).
  They are real optimiser steps, so the parameters and optimiser state are copied before and put
  back after: the first replayed step is the training's first step;
- the learning rate is a Python float baked into the captured Adam kernels, so the step
  re-captures itself when the rate changes (the scheduler's decay every few epochs; ~1 s).

One process only: DDP's gradient all-reduce hooks are not captured here (a ConfigError in the job).
``use_graph=False`` runs the same fixed-buffer step eagerly: that is how the CPU tests check the
padding and weighting, which the graph replays unchanged.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from srgnn.data import Batch


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Adam whose step can be captured: state and step counts on the device, fused kernels."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=True,
                            fused=device.type == "cuda")


class GraphedTrainStep:
    """``step(batch, weight)``: one optimiser step on ``sum_b weight * CE_b``; returns the summed
    loss of the batch's real rows (a device tensor, no host sync).

    ``weight`` scales every row of this step's loss (the DDP job's ``world / n_global``, or
    ``1 / len(batch)`` for a mean). The gradient is that of ``weight * sum(CE)`` over the real rows.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, max_len: int,
                 variant: str, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 use_graph: bool = True, warmup: int = 3):
        if not getattr(getattr(model, "cfg", None), "static_shapes", False):
            raise ValueError("GraphedTrainStep needs a model built with static_shapes=True")
        if use_graph and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.model, self.optimizer, self.variant = model, optimizer, variant
        self.batch_size, self.device, self.use_graph, self.warmup = batch_size, device, use_graph, warmup
        self.autocast_dtype = autocast_dtype
        B, L = batch_size, max_len
        self.items = torch.zeros(B, L, dtype=torch.int64, device=device)
        self.lengths = torch.ones(B, dtype=torch.int64, device=device)
        self.targets = torch.ones(B, dtype=torch.int64, device=device)
        self.ngc_w = torch.zeros(B, L, dtype=torch.float32, device=device)
        self.row_weight = torch.zeros(B, dtype=torch.float32, device=device)   # 0 on padding rows
        self.real = torch.zeros(B, dtype=torch.float32, device=device)         # 1 on real rows
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_lrs: list[float] | None = None
        self.loss_sum: torch.Tensor | None = None

    # ---- inputs --------------------------------------------------------------------------
    def load(self, batch: Batch, weight: float) -> None:
        """Copy ``batch`` (any device) into the fixed buffers; rows past it become padding
        (the one-click session [1] -> 1 at weight 0)."""
        n = len(batch)
        if n > self.batch_size:
            raise ValueError(f"batch of {n} rows exceeds the captured batch size {self.batch_size}")
        nb = self.device.type == "cuda"
        self.items[:n].copy_(batch.items, non_blocking=nb)
        self.lengths[:n].copy_(batch.lengths, non_blocking=nb)
        self.targets[:n].copy_(batch.targets, non_blocking=nb)
        if batch.ngc_w is not None:
            self.ngc_w[:n].copy_(batch.ngc_w, non_blocking=nb)
        self.real[:n] = 1.0
        self.row_weight[:n] = weight
        if n < self.batch_size:
            self.items[n:] = 0
            self.items[n:, 0] = 1
            self.lengths[n:] = 1
            self.targets[n:] = 1
            self.ngc_w[n:] = 0.0
            self.real[n:] = 0.0
            self.row_weight[n:] = 0.0

    # ---- the step on the buffers ---------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        # autocast's weight cache must be off inside graph capture (PyTorch's CUDA graphs notes)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _compute(self) -> torch.Tensor:
        ngc_w = self.ngc_w if self.variant == "ngc" else None
        with self._autocast():
            logits = self.model(self.items, self.lengths, ngc_w)
        ce = F.cross_entropy(logits.float(), self.targets - 1, reduction="none")   # Eq. 9-10 per row
        (ce * self.row_weight).sum().backward()
        self.optimizer.step()
        return (ce.detach() * self.real).sum()

    # ---- capture -------------------------------------------------------------------------
    def _lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[int, dict]]:
        params = [p.detach().clone() for p in self.model.parameters()]
        state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                 for p, s in self.optimizer.state.items()}
        return params, state

    @torch.no_grad()
    def _restore(self, snapshot: tuple[list[torch.Tensor], dict[int, dict]]) -> None:
        params, state = snapshot
        for p, saved in zip(self.model.parameters(), params):
            p.copy_(saved)
        for p, s in self.optimizer.state.items():
            before = state.get(id(p))
            for k, v in s.items():
                if torch.is_tensor(v):
                    v.copy_(before[k]) if before is not None else v.zero_()   # fresh state: zeros

    def capture(self) -> None:
        """Warm up on a side stream, capture one step, and put parameters and optimiser state back."""
        snapshot = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._compute()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the job's Petastorm reader threads keep running during capture; only this
        # thread's CUDA calls belong to the graph
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.loss_sum = self._compute()
        self._restore(snapshot)
        self.captured_lrs = self._lrs()

    # ---- the step ------------------------------------------------------------------------
    def step(self, batch: Batch, weight: float) -> torch.Tensor:
        if not self.use_graph:
            self.load(batch, weight)
            self.optimizer.zero_grad(set_to_none=True)
            return self._compute()
        if self.graph is None or self.captured_lrs != self._lrs():
            self.load(batch, weight)   # capture runs on real inputs (its warm-up steps are undone)
            self.capture()
        self.load(batch, weight)
        self.graph.replay()
        return self.loss_sum.clone()
