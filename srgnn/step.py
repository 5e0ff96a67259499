"""One optimiser step of the training loop, with its engine chosen from the trainer's ``kernel``
option (the model never chooses it)."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from srgnn import cuda_graphs, fused_cpu
from srgnn.core.errors import ConfigError
from srgnn.data import Batch
from srgnn.ddp import DistContext, dummy_batch, find_unused_parameters
from srgnn.model import SRGNN


class TrainStep:
    """``step(batch, weight)``: one optimiser step on ``weight * sum_b CE_b`` over this rank's batch
    (DDP then averages over the ranks); returns the batch's summed loss (a device tensor, no sync).

    The engine is chosen here, once, from ``kernel``: the native CPU kernel where it applies (in one
    process it sets the gradients itself, without autograd; under DDP through autograd, so DDP's
    hooks fire), else the model's own loss through autograd; ``graphed`` (a
    :class:`srgnn.cuda_graphs.GraphedTrainStep`) replaces all of it by one graph replay.
    """

    def __init__(self, model: SRGNN, optimizer: torch.optim.Optimizer, *, kernel: str = "auto",
                 ctx: DistContext | None = None, autocast: Any = None, compile: bool = False,
                 compile_mode: str | None = None, graphed: cuda_graphs.GraphedTrainStep | None = None):
        self.model, self.optimizer, self.autocast, self.graphed = model, optimizer, autocast, graphed
        self.ctx = ctx or DistContext(device=model.embedding.weight.device)
        if kernel == "fused" and self.ctx.device.type != "cpu":
            raise ConfigError(f"option --kernel fused runs on the CPU; this process got {self.ctx.device} "
                              "(--device auto picks CUDA when there is one): pass --device cpu or --kernel eager")
        self.fused = graphed is None and fused_cpu.use_kernel(kernel, model, autocast=autocast is not None,
                                                              compiled=compile)
        self.direct = self.fused and not self.ctx.ddp
        forward: torch.nn.Module = fused_cpu.KernelLoss(model) if self.fused else model
        if compile and not self.fused:
            forward = torch.compile(forward, mode=compile_mode)
        if self.ctx.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = find_unused_parameters(model, dummy_batch(model.cfg.max_len, self.ctx.device))
            forward = DDP(forward, device_ids=[self.ctx.local_rank] if self.ctx.device.type == "cuda" else None,
                          find_unused_parameters=unused)
        self.forward = forward

    @property
    def engine(self) -> str:
        return "cuda graph" if self.graphed is not None else "fused" if self.fused else "eager"

    def __call__(self, batch: Batch, weight: float) -> torch.Tensor:
        if self.graphed is not None:  # copied into the graph's fixed buffers (padded), then one replay
            return self.graphed.step(batch, weight)
        batch = batch.to(self.ctx.device, non_blocking=True)
        if self.direct:               # the native kernel in one process: it sets the gradients itself
            self.optimizer.zero_grad(set_to_none=True)
            loss_mean = fused_cpu.loss_and_grads(self.model, batch.items, batch.lengths, batch.ngc_w,
                                                 batch.targets, scale=len(batch) * weight)
            loss_sum = loss_mean.float() * len(batch)
            self.optimizer.step()
            return loss_sum
        with self.autocast or nullcontext():   # the model's fused loss path (mean CE, Eq. 9-10)
            loss_mean = self.forward(batch.items, batch.lengths, batch.ngc_w, batch.targets)
        loss_sum = loss_mean.detach().float() * len(batch)
        loss = loss_mean * (len(batch) * weight)  # DDP averages over ranks: all ranks' sums / n_global
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss_sum
