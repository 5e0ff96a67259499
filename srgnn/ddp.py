"""Data parallelism (nanoGPT style: torchrun's environment decides) and the step schedule of
ranks that hold different numbers of examples.

No ``RANK`` in the environment (or ``WORLD_SIZE`` 1): one process, no process group, and every
helper here is a no-op. Otherwise a process group (nccl on CUDA, gloo on CPU) from ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun, TorchDistributor, ``pipelines.train.launch``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from srgnn.core.errors import ConfigError
from srgnn.data import Batch
from srgnn.device import pick_device


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    ddp: bool = False
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str = "auto") -> DistContext:
    """The process group from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; none for one process."""
    ddp = int(os.environ.get("RANK", -1)) != -1 and int(os.environ.get("WORLD_SIZE", 1)) > 1
    if not ddp:
        return DistContext(device=pick_device(device_pref))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    world = int(os.environ["WORLD_SIZE"])
    device = pick_device(device_pref, index=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
        owns = True
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=device, ddp=True,
                       owns_group=owns)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.ddp and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.ddp:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(ctx: DistContext) -> None:
    if ctx.ddp:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    if not ctx.ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def per_rank_batch(batch_size: int, world: int) -> int:
    """The per-rank share of the global batch (which must divide by the number of processes)."""
    if batch_size % world:
        raise ConfigError(f"option --batch-size {batch_size} is the global batch and must divide by the "
                          f"number of processes ({world})")
    return batch_size // world


def step_schedule(rank_examples: list[int], local_batch: int) -> list[int]:
    """Global example count of every training step of an epoch.

    Rank r holds ``c_r = rank_examples[r]`` examples and reads them in batches of ``local_batch``
    (the last one smaller), so step k takes ``min(b, c_r - k b)`` from rank r, and the epoch has
    ``max_r ceil(c_r / b)`` steps. Every rank knows this in advance: no per-step synchronisation.
    """
    steps = max(math.ceil(c / local_batch) for c in rank_examples)
    return [sum(max(0, min(local_batch, c - k * local_batch)) for c in rank_examples) for k in range(steps)]


def dummy_batch(max_len: int, device: torch.device) -> Batch:
    """A one-example batch (item 1 -> item 1) for the zero-weight steps of a rank that ran dry."""
    items = torch.zeros(1, max_len, dtype=torch.int64)
    items[0, 0] = 1
    return Batch(items=items, lengths=torch.ones(1, dtype=torch.int64),
                 targets=torch.ones(1, dtype=torch.int64),
                 ngc_w=torch.zeros(1, max_len, dtype=torch.float32)).to(device)


def find_unused_parameters(model: torch.nn.Module, batch: Batch) -> bool:
    """True if a forward/backward on ``batch`` leaves some parameter without a gradient (DDP's
    ``find_unused_parameters``)."""
    logits = model(batch.items, batch.lengths, batch.ngc_w)
    logits.float().sum().backward()
    unused = any(p.requires_grad and p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    return unused
