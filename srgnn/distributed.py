"""Stage 3: train SR-GNN on stage 2's Petastorm shards, on 1..N processes (torchrun / DDP).

One code path for every launcher:

- ``python jobs/train.py ...``: one process (no process group);
- ``torchrun --nproc_per_node=N jobs/train.py ...``: N processes, DDP; nccl on CUDA, gloo on CPU;
- ``TorchDistributor(...).run(distributor_train, cfg.to_dict())`` on Databricks (see
  :func:`distributor_train` and :func:`run_with_torch_distributor`);
- :func:`launch_local` (tests, notebooks): N local gloo processes via ``torch.multiprocessing``.

What one run does (``train_job``), nanoGPT-style:

1. check stage 2's output: shards of the three splits and ``_manifest.json``; the manifest's
   content hash is recomputed from the shard files (a mismatch is one clear line);
2. set up the process group from the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment;
3. build the model (``srgnn.model``), optionally warm-started from a previous export
   (``--init-from``: item rows are carried over by item id, new items keep their fresh rows);
4. per epoch: every rank streams its own row groups (Petastorm ``cur_shard=rank``,
   ``shard_count=world``; row-group order reshuffled from ``(seed, epoch)``) in batches of
   ``batch_size / world`` examples. Ranks rarely hold the same number of examples, so every step
   starts with an all-reduce of the ranks' example counts: the epoch ends when all ranks are
   exhausted; a rank that has run dry takes a zero-weight step on a dummy batch, and every rank
   scales its summed loss by ``world / global_count`` so the DDP-averaged gradient is exactly the
   mean over the examples of the global batch. Nothing hangs, no example is dropped;
5. distributed evaluation: each rank scores its part of ``valid`` (and ``test``), the raw sums
   (hits, reciprocal ranks, discounted gains, counts; float64) are all-reduced;
6. rank 0 checkpoints every epoch (and every N steps if asked): model, optimiser, scheduler,
   epoch/step, RNG states, early-stopping state, atomically (``srgnn.checkpoint``);
7. early stopping on validation MRR@20 with ``patience``; at the end the best epoch's weights are
   exported to ``OUT/models/run_date=D/`` (``srgnn.export``: ``model.safetensors`` +
   ``config.json``, plus ``item_vocab.parquet`` for the next warm start), and logged to MLflow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError, InputError, PipelineError
from srgnn.core.log import get_logger
from srgnn.core.fs import local_path
from srgnn.core.layout import normalize_root
from srgnn import checkpoint as ckpt
from srgnn import cuda_graphs, fused_cpu
from srgnn.data import Batch
from srgnn.memory import keep_freed_memory
from srgnn.train import LeanAdam

log = get_logger(__name__)

SPLITS = ("train", "valid", "test")
SELECT_METRIC = "mrr@20"
REPORT_KS = (10, 20)


# =============================================================================================
# Configuration
# =============================================================================================
@dataclass
class TrainJobConfig(StageConfig):
    """Stage 3: train SR-GNN on the shards of one run date (1 process, torchrun or TorchDistributor)."""

    yaml_section: ClassVar[str] = "train"

    output: str = opt(None, required=True, help="OUT root (reads OUT/shards/run_date=D, writes models, checkpoints)")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD of the shards to train on")
    table_format: str = opt("parquet", choices=("parquet", "delta"), help="format of stage 1's tables (item_vocab)")
    # ---- model (the paper's options) -----------------------------------------------------
    variant: str = opt("srgnn", choices=("srgnn", "ngc", "fc"), help="SR-GNN, SR-GNN-NGC or SR-GNN-FC")
    readout: str = opt("hybrid", choices=("hybrid", "att", "last", "avg"), help="session readout")
    hidden_size: int = opt(100, help="embedding / hidden size d")
    step: int = opt(1, help="gated graph propagation steps")
    static_shapes: bool = opt(False, help="model shapes depend on [B, L] only (for --compile / CUDA graphs)")
    kernel: str = opt("auto", choices=("auto", "eager", "fused"),
                      help="training loss: eager (srgnn.model, autograd) | fused (srgnn.fused_cpu: one native "
                           "forward and backward; float32 on CPU, compiled on first use; ~2x faster at 1,000 items) | "
                           "auto (fused where it can run: CPU, no --bf16/--compile/--static-shapes; else eager)")
    # ---- optimisation (defaults of the official code) ------------------------------------
    epochs: int = opt(30, help="maximum number of epochs")
    batch_size: int = opt(100, help="GLOBAL batch size; each of the W ranks takes batch_size / W")
    eval_batch_size: int = opt(500, help="per-rank batch size for evaluation")
    lr: float = opt(1e-3, help="Adam learning rate")
    lr_dc: float = opt(0.1, help="learning-rate decay factor")
    lr_dc_step: int = opt(3, help="decay the learning rate every this many epochs")
    l2: float = opt(1e-5, help="Adam weight decay")
    patience: int = opt(10, help="stop after this many epochs without a better validation MRR@20")
    seed: int = opt(2019, help="seed of model init, data order (with the epoch) and everything else")
    shuffle: bool = opt(True, help="reshuffle the row-group order every epoch from (seed, epoch)")
    # ---- checkpoints / warm start ---------------------------------------------------------
    resume: bool = opt(False, help="continue from the latest checkpoint of this run date (fresh start if none)")
    checkpoint_every_steps: int = opt(0, help="also checkpoint every N optimiser steps (0: epoch ends only)")
    keep_checkpoints: int = opt(2, help="keep this many newest checkpoints (0: all)")
    init_from: str | None = opt(None, help="warm start from a previous export (MODEL_DIR)")
    verify_manifest: bool = opt(True, help="recompute the shards' content hash and compare with the manifest")
    # ---- runtime --------------------------------------------------------------------------
    device: str = opt("auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    bf16: bool = opt(False, help="bf16 autocast for forward passes (CUDA only)")
    compile: bool = opt(False, help="torch.compile the model")
    cuda_graphs: bool = opt(False, help="capture the whole training step (forward, backward, Adam) as one CUDA graph "
                                        "and replay it (one CUDA process; implies --static-shapes)")
    deterministic: bool = opt(True, help="torch.use_deterministic_algorithms (warn-only on CUDA)")
    num_threads: int = opt(0, help="torch intra-op threads per process (0: torch's default)")
    reader_workers: int = opt(1, help="Petastorm reader threads per rank (1 keeps the order deterministic)")
    eval_test: bool = opt(True, help="also evaluate the test split every epoch (reported, never used to select)")
    progress: bool = opt(True, help="tqdm bar per epoch on rank 0")
    # ---- tracking -------------------------------------------------------------------------
    mlflow_tracking_uri: str = opt("", help="MLflow tracking URI; '' = $MLFLOW_TRACKING_URI or file:OUT/mlruns; 'none' = off")
    mlflow_experiment: str = opt("srgnn", help="MLflow experiment name (an absolute path on Databricks)")

    def validate(self) -> None:
        super().validate()
        for name in ("epochs", "batch_size", "eval_batch_size", "hidden_size", "step", "lr_dc_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option --{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"option --patience: must be >= 1, got {self.patience}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 0:
            raise ConfigError("option --checkpoint-every-steps: must be >= 0")
        if self.kernel == "fused" and (self.device == "cuda" or self.bf16 or self.compile or self.cuda_graphs
                                       or self.static_shapes):
            raise ConfigError("option --kernel fused: float32 on the CPU only; it excludes --device cuda, --bf16, "
                              "--compile, --cuda-graphs and --static-shapes")
        if self.cuda_graphs and (self.compile or self.device == "cpu"):
            raise ConfigError("option --cuda-graphs: needs a CUDA device and excludes --compile (got "
                              f"--device {self.device}{' --compile' if self.compile else ''})")

    # paths under OUT -------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return local_path(normalize_root(self.output))

    @property
    def shards_dir(self) -> str:
        return f"{self.root}/shards/run_date={self.run_date}"

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.root}/checkpoints/run_date={self.run_date}"

    @property
    def model_dir(self) -> str:
        return f"{self.root}/models/run_date={self.run_date}"

    def model_options(self) -> dict[str, Any]:
        return {"variant": self.variant, "readout": self.readout, "hidden_size": self.hidden_size,
                "step": self.step, "static_shapes": self.static_shapes or self.cuda_graphs, "kernel": self.kernel}


# =============================================================================================
# Process group (nanoGPT style: torchrun's environment decides)
# =============================================================================================
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
    """Process group from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun, TorchDistributor, launch_local).

    No ``RANK`` in the environment: one process, no process group.
    """
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("option --device cuda: no CUDA device is available on this machine")
    ddp = int(os.environ.get("RANK", -1)) != -1 and int(os.environ.get("WORLD_SIZE", 1)) > 1
    if not ddp:
        device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    world = int(os.environ["WORLD_SIZE"])
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
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


# =============================================================================================
# Determinism
# =============================================================================================
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(enabled: bool, device: torch.device) -> None:
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


# =============================================================================================
# Stage 2's output: shards + manifest
# =============================================================================================
def check_inputs(cfg: TrainJobConfig) -> dict[str, Any]:
    """The manifest of ``cfg``'s shards, after checking that every split is there (and the hash)."""
    from srgnn import reader

    shards = cfg.shards_dir
    if not os.path.isdir(shards):
        raise InputError(f"no shards for run_date={cfg.run_date}: {shards} does not exist; "
                         f"run stage 2 (jobs/build_graph.py --output {cfg.output} --run-date {cfg.run_date}) first")
    manifest = reader.load_manifest_at(shards)
    for split in SPLITS:
        split_dir = os.path.join(shards, split)
        expected = int(manifest["splits"][split]["examples"])
        if expected and not any(f.startswith(split + "/") for f in reader.shard_files(shards)):
            raise InputError(f"shards of split '{split}' are missing: no Parquet files under {split_dir} "
                             f"(the manifest says {expected} examples)")
    if cfg.verify_manifest:
        reader.verify_manifest(shards, manifest=manifest)
    if int(manifest["splits"]["train"]["examples"]) == 0:
        raise InputError(f"the training split of {shards} has 0 examples (manifest)")
    return manifest


def iter_split(cfg: TrainJobConfig, split: str, batch_size: int, ctx: DistContext, epoch: int,
               shuffle: bool) -> Iterator[Batch]:
    """This rank's batches of one split (Petastorm cur_shard=rank, shard_count=world)."""
    from srgnn import reader

    return reader.iter_batches(cfg.shards_dir, split, batch_size, cur_shard=ctx.rank,
                               shard_count=ctx.world_size, seed=cfg.seed, epoch=epoch,
                               shuffle_row_groups=shuffle, workers_count=cfg.reader_workers,
                               with_ngc=cfg.variant == "ngc")


def step_schedule(rank_examples: list[int], local_batch: int) -> list[int]:
    """Global example count of every training step of an epoch.

    Rank r holds ``c_r = rank_examples[r]`` examples (``reader.shard_examples``, from the manifest)
    and reads them in batches of ``local_batch`` (the last one smaller), so step k takes
    ``min(b, c_r - k b)`` from rank r, and the epoch has ``max_r ceil(c_r / b)`` steps. Every rank
    knows this in advance: no per-step synchronisation.
    """
    steps = max(math.ceil(c / local_batch) for c in rank_examples)
    return [sum(max(0, min(local_batch, c - k * local_batch)) for c in rank_examples) for k in range(steps)]


# =============================================================================================
# Model
# =============================================================================================
def build_model(cfg: TrainJobConfig, n_items: int, max_len: int) -> torch.nn.Module:
    from srgnn.model import SRGNN, ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    wanted = {"n_items": n_items, "max_len": max_len, **cfg.model_options()}
    model_cfg = ModelConfig(**{k: v for k, v in wanted.items() if k in known})
    return SRGNN(model_cfg)


def model_config_dict(model: torch.nn.Module) -> dict[str, Any]:
    mc = getattr(model, "cfg", None) or getattr(model, "config", None)
    return dataclasses.asdict(mc) if dataclasses.is_dataclass(mc) else {}


def read_item_vocab(cfg: TrainJobConfig) -> "Any | None":
    """Stage 1's ``item_vocab`` of this run date as a pandas frame (item_id, item_idx), or None.

    Parquet tables are read with pyarrow (no Spark in the trainer). A Delta table is read only
    through a SparkSession that is already active (a Databricks driver); in TorchDistributor's or
    torchrun's worker processes there is none, and the export then carries no item_vocab.parquet
    (warm starts from it fall back to item indices, see docs/training.md).
    """
    path = f"{cfg.root}/item_vocab/run_date={cfg.run_date}"
    try:
        if cfg.table_format == "parquet":
            if not os.path.isdir(path):
                log.warning("no item_vocab table at %s: the export carries no item_vocab.parquet", path)
                return None
            import pyarrow.parquet as pq
            return pq.read_table(path, columns=["item_id", "item_idx"]).to_pandas()
        from pyspark.sql import SparkSession

        from pipelines.tables import TableStore
        spark = SparkSession.getActiveSession()
        if spark is None:
            log.warning("item_vocab is a Delta table and no SparkSession is active in this process: "
                        "the export carries no item_vocab.parquet")
            return None
        return TableStore(cfg.output, "delta").read(spark, "item_vocab", cfg.run_date) \
            .select("item_id", "item_idx").toPandas()
    except PipelineError:
        raise
    except Exception as exc:  # an unreadable vocab only disables id-based warm start
        log.warning("could not read item_vocab for run_date=%s (%s)", cfg.run_date, exc)
        return None


ITEM_TENSORS = ("embedding.weight",)  # [n_items + 1, d], row = item index (0 = padding)


def warm_start(model: torch.nn.Module, init_from: str, n_items: int, vocab_now) -> dict[str, Any]:
    """Load a previous export into ``model``; the item embedding's rows move with their items.

    With both vocabularies (the export's ``item_vocab.parquet`` and this run's ``item_vocab``
    table) row ``j`` of the new embedding is the old row of the same item id, so indices need not
    be stable. Without them, row ``i`` is reused for index ``i <= min(old, new n_items)``, which is
    right only if stage 1 kept item indices stable. Items new since then keep their fresh
    (uniform) rows; items gone are dropped. Every other tensor must have the same shape (same
    hidden size, variant and readout) or this is a ConfigError.
    """
    from safetensors.torch import load_file

    src = Path(local_path(init_from))
    weights, config_path = src / "model.safetensors", src / "config.json"
    if not weights.is_file() or not config_path.is_file():
        raise InputError(f"--init-from {init_from}: expected model.safetensors and config.json there")
    old_n = int(json.loads(config_path.read_text())["n_items"])
    old = load_file(str(weights))
    vocab_old_path = src / "item_vocab.parquet"
    if vocab_now is not None and vocab_old_path.is_file():
        import pyarrow.parquet as pq
        vocab_old = pq.read_table(vocab_old_path, columns=["item_id", "item_idx"]).to_pandas()
        old_by_id = dict(zip(vocab_old["item_id"], vocab_old["item_idx"].astype(np.int64)))
        mapping = np.zeros(n_items + 1, dtype=np.int64)        # new index -> old index (0: new item)
        for item_id, idx in zip(vocab_now["item_id"], vocab_now["item_idx"].astype(np.int64)):
            mapping[idx] = old_by_id.get(item_id, 0)
        mode = "by item id"
    else:
        mapping = np.arange(n_items + 1, dtype=np.int64)
        mapping[mapping > old_n] = 0
        mode = "by index (assumes stage 1 kept item indices stable)"
    new_state = {}
    for name, fresh in model.state_dict().items():
        if name not in old:
            raise ConfigError(f"--init-from {init_from}: tensor '{name}' is not in the previous model "
                              f"(a different variant or readout?)")
        prev = old[name]
        if name in ITEM_TENSORS and prev.shape[1:] == fresh.shape[1:] and prev.shape[0] == old_n + 1:
            rows = fresh.clone()
            new_idx = torch.from_numpy(np.nonzero(mapping)[0])
            rows[new_idx] = prev[torch.from_numpy(mapping[new_idx.numpy()])].to(rows.dtype)
            rows[0] = prev[0].to(rows.dtype)                    # the padding row
            new_state[name] = rows
        elif prev.shape == fresh.shape:
            new_state[name] = prev.to(fresh.dtype)
        else:
            raise ConfigError(f"--init-from {init_from}: tensor '{name}' has shape {tuple(prev.shape)} there "
                              f"and {tuple(fresh.shape)} here (hidden size or options differ)")
    model.load_state_dict(new_state)
    reused = int((mapping[1:] > 0).sum())
    log.info("warm start from %s: %d of %d items reused %s, %d fresh", init_from, reused, n_items, mode,
             n_items - reused)
    return {"reused_items": reused, "fresh_items": n_items - reused, "mode": mode}


def find_unused_parameters(model: torch.nn.Module, batch: Batch, variant: str) -> bool:
    """True if a forward/backward on ``batch`` leaves some parameter without a gradient."""
    logits = forward(model, batch, variant)
    logits.float().sum().backward()
    unused = any(p.requires_grad and p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    return unused


def job_optimizer(params, cfg: TrainJobConfig, device: torch.device) -> torch.optim.Adam:
    """The job's Adam (lr ``--lr``, L2 ``--l2``): fused, i.e. one pass over each parameter per step
    (the for-each default makes ~7 passes over the [n_items + 1, d] embedding on CPU); capturable
    too under ``--cuda-graphs``."""
    if cfg.cuda_graphs:
        return cuda_graphs.make_optimizer(params, cfg.lr, cfg.l2, device)
    return LeanAdam(params, lr=cfg.lr, weight_decay=cfg.l2)


def forward(model: torch.nn.Module, batch: Batch, variant: str, targets: bool = False) -> torch.Tensor:
    """The logits [B, n_items]; with ``targets`` the batch's mean cross-entropy instead."""
    ngc_w = batch.ngc_w if variant == "ngc" else None
    if targets:
        return model(batch.items, batch.lengths, ngc_w, batch.targets)
    return model(batch.items, batch.lengths, ngc_w)


def dummy_batch(max_len: int, device: torch.device) -> Batch:
    """A one-example batch (item 1 -> item 1) for the zero-weight steps of a rank that ran dry."""
    items = torch.zeros(1, max_len, dtype=torch.int64)
    items[0, 0] = 1
    return Batch(items=items, lengths=torch.ones(1, dtype=torch.int64),
                 targets=torch.ones(1, dtype=torch.int64),
                 ngc_w=torch.zeros(1, max_len, dtype=torch.float32)).to(device)


# =============================================================================================
# Evaluation (distributed: raw sums all-reduced)
# =============================================================================================
@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[Batch], ctx: DistContext, variant: str, n_items: int,
             ks: tuple[int, ...] = REPORT_KS, autocast=None) -> dict[str, float]:
    """HR/MRR/NDCG@K (fractions, also by length bucket) and coverage over all ranks' examples.

    Each rank scores its own row groups; the raw sums (float64) are all-reduced, so the figures
    equal one process's evaluation of the same data.
    """
    from srgnn.metrics import MetricAccumulator

    model.eval()
    acc = MetricAccumulator(n_items, ks, device=ctx.device)
    for batch in batches:
        batch = batch.to(ctx.device, non_blocking=True)
        with autocast or nullcontext():
            logits = forward(model, batch, variant)
        loss_sum = F.cross_entropy(logits.float(), batch.targets - 1, reduction="sum")
        acc.update(logits.float(), batch.targets, batch.lengths, loss_sum=loss_sum)
    if ctx.ddp:
        acc.all_reduce()
    model.train()
    return acc.finalize()


# =============================================================================================
# Training
# =============================================================================================
@dataclass
class TrainState:
    epochs_done: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = dataclasses.field(default_factory=list)
    mlflow_run_id: str = ""

    def early_stop_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "mlflow_run_id": self.mlflow_run_id}


def per_rank_batch(cfg: TrainJobConfig, world: int) -> int:
    if cfg.batch_size % world:
        raise ConfigError(f"option --batch-size {cfg.batch_size} is the global batch and must divide by the "
                          f"number of processes ({world})")
    return cfg.batch_size // world


def train_epoch(model, optimizer, batches: Iterator[Batch], schedule: list[int], my_examples: int,
                ctx: DistContext, cfg: TrainJobConfig, max_len: int, state: TrainState, *, skip_steps: int = 0,
                accum: dict[str, float] | None = None, on_step=None, bar=None, autocast=None,
                graphed=None) -> dict[str, float]:
    """One epoch of equalised steps; returns {'loss', 'examples', 'steps'} over all ranks.

    ``schedule[k]`` is the global example count of step k (:func:`step_schedule`), ``my_examples``
    this rank's share of the epoch (a batch of another size is an error). Every rank takes
    every step: a rank that has run dry takes a zero-weight step on a dummy batch, and each rank
    scales its summed loss by ``world / schedule[k]``, so DDP's gradient average is the exact mean
    over the step's examples, whatever their split between ranks.
    ``accum`` carries this rank's running sums when resuming mid-epoch; ``on_step(step, sums)`` is
    called on every rank after every step (``sums()`` gives the running sums).
    ``graphed`` (a :class:`srgnn.cuda_graphs.GraphedTrainStep`) replaces forward, backward and
    optimiser step by the replay of one captured CUDA graph (``autocast`` is then its own).
    """
    model.train()
    dummy = dummy_batch(max_len, ctx.device)
    local_batch = cfg.batch_size // ctx.world_size
    accum = dict(accum or {"loss_sum": 0.0, "examples": 0.0})
    # the native CPU kernel on an unwrapped model (no DDP, no torch.compile): gradients without autograd
    from srgnn.model import SRGNN
    direct = graphed is None and autocast is None and isinstance(model, SRGNN) and fused_cpu.applies(model)
    loss_sum_dev = torch.zeros((), dtype=torch.float64, device=ctx.device)  # no host sync per step
    examples = float(accum["examples"])
    it = iter(batches)
    for _ in range(skip_steps):  # resuming mid-epoch: this rank's first batches were already used
        next(it, None)
    for step_in_epoch in range(skip_steps + 1, len(schedule) + 1):
        n_global = schedule[step_in_epoch - 1]
        batch = next(it, None)
        expected = max(0, min(local_batch, my_examples - (step_in_epoch - 1) * local_batch))
        if (0 if batch is None else len(batch)) != expected:
            raise InputError(f"rank {ctx.rank} read {0 if batch is None else len(batch)} training examples at step "
                             f"{step_in_epoch}, the manifest of {cfg.shards_dir} implies {expected} "
                             f"(row_group_rows); the shards changed after stage 2 wrote them")
        weight = ctx.world_size / n_global
        if batch is None:       # this rank ran dry: a zero-weight step keeps DDP's all-reduces in step
            batch, weight = dummy, 0.0
        if graphed is not None:  # copied into the graph's fixed buffers (padded), then one replay
            loss_sum = graphed.step(batch, weight)
        elif direct:             # the native kernel in one process: it sets the gradients itself
            batch = batch.to(ctx.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            ngc_w = batch.ngc_w if cfg.variant == "ngc" else None
            loss_mean = fused_cpu.loss_and_grads(model, batch.items, batch.lengths, ngc_w, batch.targets,
                                                 scale=len(batch) * weight)
            loss_sum = loss_mean.float() * len(batch)
            optimizer.step()
        else:
            batch = batch.to(ctx.device, non_blocking=True)
            with autocast or nullcontext():   # the model's fused loss path (mean CE, Eq. 9-10)
                loss_mean = forward(model, batch, cfg.variant, targets=True)
            loss_sum = loss_mean.detach().float() * len(batch)
            loss = loss_mean * (len(batch) * weight)  # DDP averages over ranks: all ranks' sums / n_global
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        state.global_step += 1
        if weight:
            loss_sum_dev += loss_sum.detach().to(torch.float64)
        examples += n_global / ctx.world_size  # summed over ranks: n_global
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            def sums(_loss=loss_sum_dev, _examples=examples) -> dict[str, float]:
                return {"loss_sum": accum["loss_sum"] + float(_loss.item()), "examples": _examples}
            on_step(step_in_epoch, sums)
    if next(it, None) is not None:
        raise InputError(f"rank {ctx.rank} read more training examples than the manifest of {cfg.shards_dir} "
                         f"lists (row_group_rows); the shards changed after stage 2 wrote them")
    totals = torch.tensor([accum["loss_sum"] + float(loss_sum_dev.item()), examples], dtype=torch.float64,
                          device=ctx.device)
    all_reduce_sum(totals, ctx)
    return {"loss": float(totals[0] / max(float(totals[1]), 1.0)), "examples": float(totals[1]),
            "steps": len(schedule)}


# =============================================================================================
# MLflow (rank 0 only)
# =============================================================================================
def mlflow_name(metric: str) -> str:
    """MLflow-safe metric name: ``valid_hr@20_len<=5`` -> ``valid_hr_20_len_le5``."""
    return metric.replace("@", "_").replace("<=", "_le").replace(">", "_gt")


class Tracker:
    """Thin MLflow wrapper: off when the URI is 'none'; file store under OUT by default."""

    def __init__(self, cfg: TrainJobConfig, enabled: bool):
        self.run_id = ""
        self.mlflow = None
        uri = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or f"file:{cfg.root}/mlruns"
        if not enabled or uri.lower() == "none":
            return
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store only behind this switch; it is the contract's local default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow
        self.mlflow = mlflow
        self.uri = uri
        # mlflow.set_tracking_uri / set_experiment also export MLFLOW_TRACKING_URI and
        # MLFLOW_EXPERIMENT_ID to os.environ: put them back when the run ends, or the next
        # train_job in this process (a notebook, the nightly run, a test) would log to this OUT.
        self._saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
        mlflow.set_tracking_uri(uri)
        self.experiment = cfg.mlflow_experiment

    def start(self, run_id: str, run_name: str, params: dict[str, Any]) -> str:
        if self.mlflow is None:
            return ""
        mlflow = self.mlflow
        mlflow.set_experiment(self.experiment)
        if run_id:
            mlflow.start_run(run_id=run_id)
        else:
            mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        self.run_id = mlflow.active_run().info.run_id
        log.info("MLflow run %s at %s", self.run_id, self.uri)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.mlflow is not None:
            clean = {mlflow_name(k): float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and math.isfinite(float(v))}
            self.mlflow.log_metrics(clean, step=step)

    def finish(self, export_dir: str | None, tags: dict[str, str]) -> None:
        if self.mlflow is None:
            return
        if export_dir:
            self.mlflow.log_artifacts(export_dir, artifact_path="model")
        self.mlflow.set_tags(tags)
        self.mlflow.end_run()
        self._restore_environment()

    def fail(self) -> None:
        if self.mlflow is not None:
            if self.mlflow.active_run() is not None:
                self.mlflow.end_run(status="FAILED")
            self._restore_environment()

    def _restore_environment(self) -> None:
        saved = self._saved_env
        self.mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None unsets it
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# =============================================================================================
# Export
# =============================================================================================
def export_best(cfg: TrainJobConfig, model: torch.nn.Module, best_state: dict[str, torch.Tensor],
                extra: dict[str, Any], vocab) -> str:
    """Write the best weights to OUT/models/run_date=D/ through srgnn.export, swapped in atomically."""
    from srgnn import export

    final = Path(cfg.model_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = final.parent / f"_staging-{final.name}-{token}"
    trash = final.parent / f"_trash-{final.name}-{token}"
    cpu_model = model
    cpu_model.load_state_dict(best_state)
    try:
        export.save_model(str(staging), cpu_model, extra)
        if vocab is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq
            table = pa.Table.from_pandas(vocab[["item_id", "item_idx"]].sort_values("item_idx"),
                                         preserve_index=False)
            pq.write_table(table, staging / "item_vocab.parquet")
        had_old = final.exists()
        if had_old:
            os.replace(final, trash)
        os.replace(staging, final)
        if had_old:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported the best model to %s", final)
    return str(final)


# =============================================================================================
# The job
# =============================================================================================
def _epoch_metrics_line(epoch: int, epochs: int, seconds: float, pairs_per_s: float, loss: float,
                        valid: dict[str, float], test: dict[str, float] | None) -> str:
    line = (f"epoch {epoch}/{epochs}: {seconds:.1f}s train, {pairs_per_s:,.0f} pairs/s, loss {loss:.4f}, "
            f"valid hr@20 {valid.get('hr@20', float('nan')):.4f} mrr@20 {valid.get('mrr@20', float('nan')):.4f} "
            f"ndcg@20 {valid.get('ndcg@20', float('nan')):.4f}")
    if test:
        line += f"; test hr@20 {test['hr@20']:.4f} mrr@20 {test['mrr@20']:.4f}"
    return line


def train_job(cfg: TrainJobConfig) -> dict[str, Any]:
    """Train on ``OUT/shards/run_date=D`` and export the best model; returns the export dir and metrics.

    Works in one process or under torchrun / TorchDistributor / :func:`launch_local` (every rank
    calls it; rank 0 writes checkpoints, the export and MLflow; all ranks return the same figures).
    """
    cfg.validate_required()
    manifest = check_inputs(cfg)  # before the process group: a bad input fails every rank at once
    ctx = setup_distributed(cfg.device)
    tracker = None
    # process-wide torch settings this job changes, restored at the end (notebooks, test sessions)
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        tracker = Tracker(cfg, enabled=ctx.is_main)
        result = _train(cfg, manifest, ctx, tracker)
        return result
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
    finally:
        teardown_distributed(ctx)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _train(cfg: TrainJobConfig, manifest: dict[str, Any], ctx: DistContext, tracker: Tracker) -> dict[str, Any]:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()  # the big per-step tensors reuse freed memory (srgnn.memory)
    set_determinism(cfg.deterministic, ctx.device)
    seed_everything(cfg.seed)
    n_items, max_len = int(manifest["n_items"]), int(manifest["max_len"])
    manifest_hash = str(manifest.get("content_hash", ""))
    local_batch = per_rank_batch(cfg, ctx.world_size)
    if cfg.cuda_graphs and (ctx.device.type != "cuda" or ctx.world_size > 1):
        raise ConfigError(f"option --cuda-graphs: needs exactly one CUDA process; this run has {ctx.world_size} "
                          f"process(es) on {ctx.device.type} (DDP's all-reduce is not captured)")
    if cfg.bf16 and ctx.device.type != "cuda":
        log.warning("--bf16 applies to CUDA only; training in float32 on %s", ctx.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if cfg.bf16 and ctx.device.type == "cuda" else None)

    if cfg.kernel == "fused" and ctx.device.type != "cpu":
        raise ConfigError(f"option --kernel fused runs on the CPU; this process got {ctx.device} (--device auto "
                          "picks CUDA when there is one): pass --device cpu or --kernel eager")
    model = build_model(cfg, n_items, max_len)
    vocab = read_item_vocab(cfg)
    warm = {}
    if cfg.init_from:
        warm = warm_start(model, cfg.init_from, n_items, vocab)
    model.to(ctx.device)
    optimizer = job_optimizer(model.parameters(), cfg, ctx.device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_dc_step, gamma=cfg.lr_dc)
    meta = {"manifest_hash": manifest_hash, "n_items": n_items, "max_len": max_len,
            "model": json.dumps({k: v for k, v in cfg.model_options().items() if k != "static_shapes"},
                                sort_keys=True), "world_size": ctx.world_size,
            "batch_size": cfg.batch_size}

    # ---- resume ---------------------------------------------------------------------------
    state = TrainState()
    skip_steps, accum = 0, None
    best_state: dict[str, torch.Tensor] | None = None
    ckpt_dir = cfg.checkpoint_dir
    latest = ckpt.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if cfg.resume and latest is None and ctx.is_main:
        log.warning("--resume: no checkpoint under %s; starting from scratch", ckpt_dir)
    if latest is None and ctx.is_main:
        ckpt.clear_checkpoints(ckpt_dir)  # a fresh run replaces this run date's checkpoints
    barrier(ctx)
    if latest is not None:
        saved = ckpt.load_tensors(latest)
        for key in ("manifest_hash", "n_items", "max_len", "model", "batch_size"):
            if saved["meta"].get(key) != meta[key]:
                raise ConfigError(f"--resume: checkpoint {latest} was made with {key}={saved['meta'].get(key)!r}, "
                                  f"this run has {meta[key]!r}; rerun without --resume to start afresh")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
        es = saved["early_stop"]
        state = TrainState(epochs_done=saved["epochs_done"], global_step=saved["global_step"],
                           best_score=float(es["best_score"]), best_epoch=int(es["best_epoch"]),
                           bad_epochs=int(es["bad_epochs"]), history=list(saved["history"]),
                           mlflow_run_id=str(es.get("mlflow_run_id", "")))
        skip_steps = int(saved["step_in_epoch"])
        accum = saved.get("epoch_accum") or None
        if saved["meta"].get("world_size") != ctx.world_size and skip_steps:
            raise ConfigError(f"--resume: checkpoint {latest} is mid-epoch from {saved['meta'].get('world_size')} "
                              f"processes; resume it with the same number of processes")
        best_path = Path(ckpt_dir) / ckpt.BEST_NAME
        if ctx.is_main and best_path.is_file():
            best_state = ckpt.load_tensors(best_path)["model"]
        log.info("resumed from %s: %d epochs done, step %d of the next", latest.name, state.epochs_done,
                 skip_steps)

    # ---- DDP --------------------------------------------------------------------------------
    raw_model = model
    graphed = None
    if cfg.cuda_graphs:
        graphed = cuda_graphs.GraphedTrainStep(model, optimizer, local_batch, max_len, cfg.variant, ctx.device,
                                               torch.bfloat16 if autocast is not None else None)
    if cfg.compile:
        model = torch.compile(model)
    if ctx.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        unused = find_unused_parameters(raw_model, dummy_batch(max_len, ctx.device), cfg.variant)
        model = DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                    find_unused_parameters=unused)

    run_name = f"{cfg.run_date}-{cfg.variant}-{cfg.readout}"
    params = {**cfg.to_dict(), "world_size": ctx.world_size, "n_items": n_items, "max_len": max_len,
              "manifest_hash": manifest_hash, "train_examples": manifest["splits"]["train"]["examples"],
              **{f"warm_{k}": v for k, v in warm.items()}}
    if ctx.is_main:
        state.mlflow_run_id = tracker.start(state.mlflow_run_id, run_name, params)

    valid_examples = int(manifest["splits"]["valid"]["examples"])
    select_split = "valid" if valid_examples > 0 else "test"
    if select_split == "test" and ctx.is_main:
        log.warning("the valid split is empty (--valid-share 0 in stage 2): the model is selected on the "
                    "TEST split, as the official code does; its test figures are then optimistic")

    def save_checkpoint(epochs_done: int, step_in_epoch: int, epoch_accum: dict | None) -> None:
        if not ctx.is_main:
            return
        obj = ckpt.make_checkpoint(
            model_state=raw_model.state_dict(), optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(), epochs_done=epochs_done, step_in_epoch=step_in_epoch,
            global_step=state.global_step, early_stop=state.early_stop_dict(), history=state.history,
            meta=meta, epoch_accum=epoch_accum)
        path = ckpt.save_atomic(obj, Path(ckpt_dir) / ckpt.checkpoint_name(epochs_done, step_in_epoch))
        ckpt.prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        log.info("checkpoint %s", path)

    from tqdm.auto import tqdm

    from srgnn.reader import shard_examples

    rank_examples = shard_examples(manifest, "train", ctx.world_size)
    schedule = step_schedule(rank_examples, local_batch)
    stopped_early = state.bad_epochs >= cfg.patience
    while state.epochs_done < cfg.epochs and not stopped_early:
        epoch = state.epochs_done + 1
        bar = tqdm(total=len(schedule), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False,
                   disable=not (ctx.is_main and cfg.progress), initial=skip_steps)

        def on_step(step_in_epoch: int, sums, _epoch=epoch) -> None:
            if cfg.checkpoint_every_steps and step_in_epoch % cfg.checkpoint_every_steps == 0:
                acc = sums()
                # every rank stores the global loss sum / world, so the resumed ranks' sums add up
                total = all_reduce_sum(torch.tensor([acc["loss_sum"]], dtype=torch.float64,
                                                    device=ctx.device), ctx)
                acc["loss_sum"] = float(total.item()) / ctx.world_size
                save_checkpoint(_epoch - 1, step_in_epoch, acc)

        t0 = time.perf_counter()
        batches = iter_split(cfg, "train", local_batch, ctx, epoch, cfg.shuffle)
        train_stats = train_epoch(model, optimizer, batches, schedule, rank_examples[ctx.rank], ctx, cfg,
                                  max_len, state,
                                  skip_steps=skip_steps, accum=accum, on_step=on_step, bar=bar,
                                  autocast=autocast, graphed=graphed)
        bar.close()
        train_seconds = time.perf_counter() - t0
        skip_steps, accum = 0, None
        scheduler.step()

        t1 = time.perf_counter()
        valid = evaluate(raw_model, iter_split(cfg, "valid", cfg.eval_batch_size, ctx, 0, False), ctx,
                         cfg.variant, n_items, autocast=autocast) if valid_examples else {}
        test = evaluate(raw_model, iter_split(cfg, "test", cfg.eval_batch_size, ctx, 0, False), ctx,
                        cfg.variant, n_items, autocast=autocast) if (cfg.eval_test or select_split == "test") else {}
        eval_seconds = time.perf_counter() - t1
        pairs_per_s = train_stats["examples"] / max(train_seconds, 1e-9)

        score = (valid if select_split == "valid" else test)[SELECT_METRIC]
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            if ctx.is_main:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                ckpt.save_atomic({"model": best_state, "epoch": epoch}, Path(ckpt_dir) / ckpt.BEST_NAME)
        else:
            state.bad_epochs += 1
        record = {"epoch": epoch, "train_loss": train_stats["loss"], "train_examples": train_stats["examples"],
                  "train_seconds": train_seconds, "eval_seconds": eval_seconds, "pairs_per_s": pairs_per_s,
                  "lr": optimizer.param_groups[0]["lr"], "valid": valid, "test": test}
        state.history.append(record)
        state.epochs_done = epoch
        stopped_early = state.bad_epochs >= cfg.patience
        if ctx.is_main:
            log.info(_epoch_metrics_line(epoch, cfg.epochs, train_seconds, pairs_per_s, train_stats["loss"],
                                         valid, test))
            tracker.log_metrics({"train_loss": train_stats["loss"], "pairs_per_s": pairs_per_s,
                                 "epoch_seconds": train_seconds, "lr": record["lr"],
                                 **{f"valid_{k}": v for k, v in valid.items() if k != "examples"},
                                 **{f"test_{k}": v for k, v in test.items() if k != "examples"}}, step=epoch)
        save_checkpoint(epoch, 0, None)
        if stopped_early and ctx.is_main:
            log.info("early stop after epoch %d: no better valid %s for %d epochs (best epoch %d, %.4f)",
                     epoch, SELECT_METRIC, cfg.patience, state.best_epoch, state.best_score)
        barrier(ctx)

    # ---- export the best epoch --------------------------------------------------------------
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    if best is None:
        raise PipelineError(f"no epoch was evaluated for run_date={cfg.run_date} (epochs={cfg.epochs})")
    metrics = {"valid": {k: v for k, v in best["valid"].items() if k != "examples"},
               "test": {k: v for k, v in best["test"].items() if k != "examples"}}
    export_dir = None
    if ctx.is_main:
        if best_state is None:
            best_path = Path(ckpt_dir) / ckpt.BEST_NAME
            best_state = ckpt.load_tensors(best_path)["model"]
        extra = {
            "n_items": n_items, "max_len": max_len, "manifest_hash": manifest_hash,
            "run_date": cfg.run_date, "variant": cfg.variant, "readout": cfg.readout,
            "metrics": metrics, "selected_on": f"{select_split} {SELECT_METRIC}", "best_epoch": state.best_epoch,
            "epochs_run": state.epochs_done, "world_size": ctx.world_size,
            "training": {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "lr_dc", "lr_dc_step", "l2",
                                                       "patience", "seed", "init_from")},
        }
        export_model = build_model(cfg, n_items, max_len)
        export_dir = export_best(cfg, export_model, best_state, extra, vocab)
        tracker.log_metrics({f"best_valid_{k}": v for k, v in metrics["valid"].items()}
                            | {f"best_test_{k}": v for k, v in metrics["test"].items()}, step=state.best_epoch)
        tracker.finish(export_dir, {"best_epoch": str(state.best_epoch), "run_date": cfg.run_date,
                                    "selected_on": extra["selected_on"]})
    export_dir = broadcast_object(export_dir, ctx)
    barrier(ctx)
    return {"export_dir": export_dir, "metrics": metrics, "best_epoch": state.best_epoch,
            "epochs_run": state.epochs_done, "stopped_early": stopped_early, "history": state.history,
            "world_size": ctx.world_size, "mlflow_run_id": state.mlflow_run_id,
            "checkpoint_dir": ckpt_dir}


# =============================================================================================
# Other launchers
# =============================================================================================
def distributor_train(config: dict[str, Any]) -> dict[str, Any]:
    """The function to hand to ``pyspark.ml.torch.distributor.TorchDistributor.run`` on Databricks.

    ``TorchDistributor(num_processes=N, local_mode=False, use_gpu=True).run(distributor_train,
    cfg.to_dict())`` starts N processes with torchrun's environment; each calls this, which calls
    :func:`train_job`. The return value (rank 0's) is a plain dict: export dir and metrics.
    """
    return train_job(TrainJobConfig.from_dict(config))


def run_with_torch_distributor(cfg: TrainJobConfig, num_processes: int, use_gpu: bool = True,
                               local_mode: bool = False) -> dict[str, Any]:
    """Run :func:`train_job` on a Spark cluster's workers (or the driver with ``local_mode``)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    return distributor.run(distributor_train, cfg.to_dict())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(rank: int, world: int, port: int, config: dict[str, Any], result_path: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)})
    result = train_job(TrainJobConfig.from_dict(config))
    if rank == 0:
        with open(result_path, "w") as fh:
            json.dump(result, fh, default=float)


def launch_local(cfg: TrainJobConfig, nprocs: int) -> dict[str, Any]:
    """Run :func:`train_job` in ``nprocs`` local processes (gloo on CPU); returns rank 0's result."""
    import torch.multiprocessing as mp

    fd, result_path = tempfile.mkstemp(prefix="srgnn-train-", suffix=".json")
    os.close(fd)
    try:
        mp.spawn(_spawn_entry, args=(nprocs, _free_port(), cfg.to_dict(), result_path), nprocs=nprocs,
                 join=True)
        with open(result_path) as fh:
            return json.load(fh)
    finally:
        os.unlink(result_path)
