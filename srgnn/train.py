"""The training loop of SR-GNN, in one process or data-parallel (DDP), nanoGPT-style.

Three layers: :class:`srgnn.step.TrainStep` (one optimiser step; the engine is chosen there), :func:`train_epoch`
/ :func:`evaluate` (one pass), :func:`train` (epochs, learning-rate decay, early stopping, model
selection, checkpoints and resume). Stage 3's job (``pipelines.train``), the benchmarks and the
tests all run this loop; docs/training.md describes its rules.

- Steps. Every rank reads its own batches of ``batch_size / world`` examples. With the ranks'
  example counts known in advance (``TrainData.rank_examples``) the epoch has a fixed schedule of
  steps (:func:`srgnn.ddp.step_schedule`): a rank that has run dry takes a zero-weight step on a
  dummy batch, and every rank scales its summed loss by ``world / global_count``, so the
  DDP-averaged gradient is the mean over the examples of the global batch. In one process without
  counts the batches are taken as they come.
- Engine (:mod:`srgnn.step`). ``kernel``: ``eager`` (autograd through :mod:`srgnn.model`),
  ``fused`` (the native CPU kernel :mod:`srgnn.fused_cpu`; in one process it sets the gradients
  without autograd), ``auto`` (fused where it can run). ``cuda_graphs``: the whole step replayed
  as one CUDA graph.
- Learning rate: Adam (``lr``, L2 ``l2``), multiplied by ``lr_dc`` every ``lr_dc_step`` epochs;
  ``official_lr_schedule`` decays one epoch earlier, as the official code does.
- Selection: after every epoch the valid split is evaluated (the test split too when given); the
  best epoch is the one with the highest valid MRR@20 (``SELECT_METRIC``; on test when there is no
  valid split); training stops after ``patience`` epochs without a higher one. The official
  protocol's figures (best test HR@20 and best test MRR@20 over the epochs, each picked on test)
  are reported as ``test_picked``, never used to select.
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from srgnn import checkpoint as ckpt
from srgnn import cuda_graphs
from srgnn.core import fs
from srgnn.core.config import StageConfig, opt
from srgnn.core.contracts import REPORT_KS, SELECT_METRIC
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.log import get_logger
from srgnn.data import Batch
from srgnn.ddp import DistContext, all_reduce_sum, barrier, dummy_batch, per_rank_batch, step_schedule
from srgnn.memory import keep_freed_memory
from srgnn.metrics import MetricAccumulator
from srgnn.model import SRGNN
from srgnn.optim import LeanAdam, make_optimizer
from srgnn.step import TrainStep

__all__ = ["TrainConfig", "TrainData", "TrainState", "TrainStep", "train", "train_epoch", "evaluate",
           "make_optimizer", "LeanAdam"]

log = get_logger(__name__)

KERNELS = ("auto", "eager", "fused")


@dataclass
class TrainConfig(StageConfig):
    """The loop's options: the names and defaults of stage 3's command line (pipelines.train)."""

    epochs: int = opt(30, help="maximum number of epochs")
    batch_size: int = opt(100, help="GLOBAL batch size; each of the W ranks takes batch_size / W")
    lr: float = opt(1e-3, help="Adam learning rate")
    lr_dc: float = opt(0.1, help="learning-rate decay factor")
    lr_dc_step: int = opt(3, help="decay the learning rate every this many epochs")
    l2: float = opt(1e-5, help="Adam weight decay")
    patience: int = opt(10, help="stop after this many epochs without a better validation MRR@20")
    official_lr_schedule: bool = opt(False, help="decay the learning rate one epoch early, as the official code")
    kernel: str = opt("auto", choices=KERNELS, help="training loss: eager | fused (native CPU kernel) | auto")
    bf16: bool = opt(False, help="bf16 autocast for forward passes (CUDA only)")
    compile: bool = opt(False, help="torch.compile the model")
    cuda_graphs: bool = opt(False, help="replay the whole training step as one CUDA graph")
    checkpoint_every_steps: int = opt(0, help="also checkpoint every N optimiser steps (0: epoch ends only)")
    keep_checkpoints: int = opt(2, help="keep this many newest checkpoints (0: all)")
    resume: bool = opt(False, help="continue from the latest checkpoint (fresh start if none)")
    num_threads: int = opt(0, help="torch intra-op threads (0: torch's default)")
    progress: bool = opt(True, help="tqdm bar per epoch on rank 0")

    def validate(self) -> None:
        super().validate()
        for name in ("epochs", "batch_size", "lr_dc_step", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option --{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 0:
            raise ConfigError("option --checkpoint-every-steps: must be >= 0")


BatchSource = Callable[..., Iterable[Batch]] | Iterable[Batch]


def _read(source: BatchSource, *args: Any) -> Iterable[Batch]:
    return source(*args) if callable(source) else source


@dataclass
class TrainData:
    """This rank's batches. ``train(epoch)`` (1-based epoch) and ``valid()`` / ``test()``, or
    lists re-read every epoch. ``valid`` None: select on ``test``. ``rank_examples``: every
    rank's training examples per epoch (needed for more than one process; None in one process:
    the batches are taken as they come). ``source`` names the data in errors."""

    train: BatchSource
    valid: BatchSource | None = None
    test: BatchSource | None = None
    rank_examples: Sequence[int] | None = None
    source: str = "the training data"


@dataclass
class TrainState:
    epochs_done: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    mlflow_run_id: str = ""
    test_picked: dict = field(default_factory=dict)

    def early_stop_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "mlflow_run_id": self.mlflow_run_id, "test_picked": dict(self.test_picked)}


# =============================================================================================
# One pass
# =============================================================================================
def _steps(batches: Iterable[Batch], schedule: list[int] | None, my_examples: int, local_batch: int,
           ctx: DistContext, skip_steps: int, source: str) -> Iterator[tuple[int, int, Batch | None]]:
    """(1-based step, global examples of the step, this rank's batch or None when it ran dry)."""
    it = iter(batches)
    for _ in range(skip_steps):  # resuming mid-epoch: this rank's first batches were already used
        next(it, None)
    if schedule is None:         # one process, counts not known in advance
        for k, batch in enumerate(it, start=skip_steps + 1):
            yield k, len(batch), batch
        return
    for k in range(skip_steps + 1, len(schedule) + 1):
        batch = next(it, None)
        expected = max(0, min(local_batch, my_examples - (k - 1) * local_batch))
        if (0 if batch is None else len(batch)) != expected:
            raise InputError(f"rank {ctx.rank} read {0 if batch is None else len(batch)} training examples at step "
                             f"{k}, the manifest of {source} implies {expected} (row_group_rows); the shards "
                             f"changed after stage 2 wrote them")
        yield k, schedule[k - 1], batch
    if next(it, None) is not None:
        raise InputError(f"rank {ctx.rank} read more training examples than the manifest of {source} "
                         f"lists (row_group_rows); the shards changed after stage 2 wrote them")


def train_epoch(step: TrainStep, batches: Iterable[Batch], state: TrainState, *, schedule: list[int] | None = None,
                my_examples: int = 0, local_batch: int = 0, skip_steps: int = 0,
                accum: dict[str, float] | None = None, on_step: Callable | None = None, bar: Any = None,
                source: str = "the training data") -> dict[str, float]:
    """One epoch: {'loss' (mean per example), 'examples', 'steps'} over all ranks.

    ``schedule[k]`` is the global example count of step k (:func:`srgnn.ddp.step_schedule`),
    ``my_examples`` this rank's share (a batch of another size is an InputError); without a schedule
    (one process) every batch is one step. ``accum`` carries this rank's running sums when resuming
    mid-epoch; ``on_step(step, sums)`` is called on every rank after every step (``sums()`` gives
    the running sums).
    """
    ctx = step.ctx
    step.model.train()
    dummy = dummy_batch(step.model.cfg.max_len, ctx.device)
    accum = dict(accum or {"loss_sum": 0.0, "examples": 0.0})
    loss_sum_dev = torch.zeros((), dtype=torch.float64, device=ctx.device)  # no host sync per step
    examples = float(accum["examples"])
    steps = 0
    for k, n_global, batch in _steps(batches, schedule, my_examples, local_batch, ctx, skip_steps, source):
        weight = ctx.world_size / n_global
        if batch is None:       # this rank ran dry: a zero-weight step keeps DDP's all-reduces in step
            batch, weight = dummy, 0.0
        loss_sum = step(batch, weight)
        state.global_step += 1
        steps += 1
        if weight:
            loss_sum_dev += loss_sum.detach().to(torch.float64)
        examples += n_global / ctx.world_size  # summed over ranks: n_global
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            def sums(_loss=loss_sum_dev, _examples=examples) -> dict[str, float]:
                return {"loss_sum": accum["loss_sum"] + float(_loss.item()), "examples": _examples}
            on_step(k, sums)
    totals = torch.tensor([accum["loss_sum"] + float(loss_sum_dev.item()), examples], dtype=torch.float64,
                          device=ctx.device)
    all_reduce_sum(totals, ctx)
    return {"loss": float(totals[0] / max(float(totals[1]), 1.0)), "examples": float(totals[1]),
            "steps": len(schedule) if schedule is not None else skip_steps + steps}


@torch.no_grad()
def evaluate(model: SRGNN, batches: Iterable[Batch], ctx: DistContext | None = None, ks: Sequence[int] = REPORT_KS,
             popularity: torch.Tensor | None = None, autocast: Any = None) -> dict[str, float]:
    """HR/MRR/NDCG@K (fractions, also by length bucket), coverage and loss (see srgnn.metrics).

    Data-parallel: each rank scores its own batches and the raw sums (float64) are all-reduced, so
    the figures equal one process's evaluation of the same data.
    """
    device = ctx.device if ctx is not None else model.embedding.weight.device
    model.eval()
    acc = MetricAccumulator(model.cfg.n_items, ks, popularity, device=device)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        with autocast or nullcontext():
            logits = model(batch.items, batch.lengths, batch.ngc_w)
        loss_sum = F.cross_entropy(logits.float(), batch.targets - 1, reduction="sum")
        acc.update(logits.float(), batch.targets, batch.lengths, loss_sum=loss_sum)
    if ctx is not None and ctx.ddp:
        acc.all_reduce()
    model.train()
    return acc.finalize()


# =============================================================================================
# The driver
# =============================================================================================
def _epoch_line(epoch: int, epochs: int, rec: dict[str, Any]) -> str:
    valid, test = rec["valid"], rec["test"]
    line = (f"epoch {epoch}/{epochs}: {rec['train_seconds']:.1f}s train, {rec['pairs_per_s']:,.0f} pairs/s, "
            f"loss {rec['train_loss']:.4f}, valid hr@20 {valid.get('hr@20', float('nan')):.4f} "
            f"mrr@20 {valid.get('mrr@20', float('nan')):.4f} ndcg@20 {valid.get('ndcg@20', float('nan')):.4f}")
    if test:
        line += f"; test hr@20 {test['hr@20']:.4f} mrr@20 {test['mrr@20']:.4f}"
    return line


def _pick_on_test(picked: dict[str, float], test: dict[str, float], epoch: int) -> None:
    """The official protocol: the best test HR@20 and the best test MRR@20, each over the epochs."""
    for key in ("hr@20", "mrr@20"):
        if key in test and test[key] >= picked.get(key, -math.inf):
            picked[key], picked[f"{key}_epoch"] = test[key], epoch


def train(model: SRGNN, cfg: TrainConfig, data: TrainData, ctx: DistContext | None = None, *,
          checkpoint_dir: str | None = None, meta: dict[str, Any] | None = None,
          on_start: Callable[[TrainState], None] | None = None,
          on_epoch_end: Callable[[dict[str, Any], TrainState], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (already on ``ctx.device``) with early stopping; rank 0 keeps the best epoch.

    ``checkpoint_dir``: rank 0 checkpoints there every epoch (and every ``checkpoint_every_steps``
    steps); ``cfg.resume`` continues from the newest one, after checking that its ``meta`` equals
    ``meta`` (the data's hash, the model's options ...). ``on_start(state)`` runs on every rank once
    the state is known (resumed or fresh), ``on_epoch_end(record, state)`` after every epoch.
    Returns {"best_epoch", "best_score", "selected_on", "valid", "test", "test_picked", "history",
    "epochs_run", "stopped_early", "state"}; on rank 0 the model holds the best epoch's weights
    and ``best_state`` (CPU tensors) is in the result.
    """
    ctx = ctx or DistContext(device=model.embedding.weight.device)
    threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(model, cfg, data, ctx, checkpoint_dir, dict(meta or {}), on_start, on_epoch_end)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was


def _train(model, cfg, data, ctx, checkpoint_dir, meta, on_start, on_epoch_end) -> dict[str, Any]:
    keep_freed_memory()  # the big per-step tensors reuse freed memory (srgnn.memory)
    local_batch = per_rank_batch(cfg.batch_size, ctx.world_size)
    if ctx.world_size > 1 and data.rank_examples is None:
        raise ConfigError("training on several processes needs every rank's example count (rank_examples)")
    if cfg.cuda_graphs and (ctx.device.type != "cuda" or ctx.world_size > 1):
        raise ConfigError(f"option --cuda-graphs: needs exactly one CUDA process; this run has {ctx.world_size} "
                          f"process(es) on {ctx.device.type} (DDP's all-reduce is not captured)")
    if cfg.bf16 and ctx.device.type != "cuda":
        log.warning("--bf16 applies to CUDA only; training in float32 on %s", ctx.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and ctx.device.type == "cuda" else None
    if cfg.kernel == "fused" and ctx.device.type != "cpu":
        raise ConfigError(f"option --kernel fused runs on the CPU; this process got {ctx.device} (--device auto "
                          "picks CUDA when there is one): pass --device cpu or --kernel eager")
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.l2, ctx.device, capturable=cfg.cuda_graphs)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_dc_step, gamma=cfg.lr_dc)

    # ---- resume ---------------------------------------------------------------------------
    state = TrainState()
    skip_steps, accum = 0, None
    best_state: dict[str, torch.Tensor] | None = None
    latest = ckpt.latest_checkpoint(checkpoint_dir) if (cfg.resume and checkpoint_dir) else None
    if checkpoint_dir and ctx.is_main:
        if cfg.resume and latest is None:
            log.warning("--resume: no checkpoint under %s; starting from scratch", checkpoint_dir)
        if latest is None:
            ckpt.clear_checkpoints(checkpoint_dir)  # a fresh run replaces this folder's checkpoints
    barrier(ctx)
    if latest is not None:
        saved = ckpt.load_tensors(latest)
        for key in ("manifest_hash", "n_items", "max_len", "model", "batch_size"):
            if key in meta and saved["meta"].get(key) != meta[key]:
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
                           mlflow_run_id=str(es.get("mlflow_run_id", "")),
                           test_picked=dict(es.get("test_picked", {})))
        skip_steps = int(saved["step_in_epoch"])
        accum = saved.get("epoch_accum") or None
        if saved["meta"].get("world_size") != ctx.world_size and skip_steps:
            raise ConfigError(f"--resume: checkpoint {latest} is mid-epoch from {saved['meta'].get('world_size')} "
                              f"processes; resume it with the same number of processes")
        best_path = ckpt.checkpoint_path(checkpoint_dir, ckpt.BEST_NAME)
        if ctx.is_main and fs.exists(str(best_path)):
            best_state = ckpt.load_tensors(best_path)["model"]
        log.info("resumed from %s: %d epochs done, step %d of the next", ckpt.path_name(latest), state.epochs_done,
                 skip_steps)
    elif cfg.official_lr_schedule:
        with warnings.catch_warnings():  # the official code steps its scheduler before each epoch
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    meta["world_size"] = ctx.world_size

    # ---- the engine ---------------------------------------------------------------------------
    graphed = None
    if cfg.cuda_graphs:
        graphed = cuda_graphs.GraphedTrainStep(model, optimizer, local_batch, model.cfg.max_len, model.cfg.variant,
                                               ctx.device, torch.bfloat16 if autocast is not None else None)
    step = TrainStep(model, optimizer, kernel=cfg.kernel, ctx=ctx, autocast=autocast, compile=cfg.compile,
                     graphed=graphed)
    if on_start is not None:
        on_start(state)

    select_split = "valid" if data.valid is not None else "test"
    if data.valid is None and data.test is None:
        raise ConfigError("training needs a valid or a test split to select the best epoch")
    if select_split == "test" and ctx.is_main:
        log.warning("no valid split: the model is selected on the TEST split, as the official code does; "
                    "its test figures are then optimistic")

    def save_checkpoint(epochs_done: int, step_in_epoch: int, epoch_accum: dict | None) -> None:
        if not (ctx.is_main and checkpoint_dir):
            return
        obj = ckpt.make_checkpoint(
            model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(), epochs_done=epochs_done, step_in_epoch=step_in_epoch,
            global_step=state.global_step, early_stop=state.early_stop_dict(), history=state.history,
            meta=meta, epoch_accum=epoch_accum)
        name = ckpt.checkpoint_name(epochs_done, step_in_epoch)
        path = ckpt.save_atomic(obj, ckpt.checkpoint_path(checkpoint_dir, name))
        ckpt.prune_checkpoints(checkpoint_dir, cfg.keep_checkpoints)
        log.info("checkpoint %s", path)

    from tqdm.auto import tqdm

    rank_examples = list(data.rank_examples) if data.rank_examples is not None else None
    schedule = step_schedule(rank_examples, local_batch) if rank_examples is not None else None
    stopped_early = state.bad_epochs >= cfg.patience
    while state.epochs_done < cfg.epochs and not stopped_early:
        epoch = state.epochs_done + 1
        bar = tqdm(total=len(schedule) if schedule else None, desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
                   leave=False, disable=not (ctx.is_main and cfg.progress), initial=skip_steps)

        def on_step(step_in_epoch: int, sums, _epoch=epoch) -> None:
            if cfg.checkpoint_every_steps and step_in_epoch % cfg.checkpoint_every_steps == 0:
                acc = sums()
                # every rank stores the global loss sum / world, so the resumed ranks' sums add up
                total = all_reduce_sum(torch.tensor([acc["loss_sum"]], dtype=torch.float64,
                                                    device=ctx.device), ctx)
                acc["loss_sum"] = float(total.item()) / ctx.world_size
                save_checkpoint(_epoch - 1, step_in_epoch, acc)

        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        fit = train_epoch(step, _read(data.train, epoch), state, schedule=schedule,
                          my_examples=rank_examples[ctx.rank] if rank_examples else 0, local_batch=local_batch,
                          skip_steps=skip_steps, accum=accum, on_step=on_step, bar=bar, source=data.source)
        bar.close()
        train_seconds = time.perf_counter() - t0
        skip_steps, accum = 0, None
        scheduler.step()

        t1 = time.perf_counter()
        valid = evaluate(model, _read(data.valid), ctx, autocast=autocast) if data.valid is not None else {}
        test = evaluate(model, _read(data.test), ctx, autocast=autocast) if data.test is not None else {}
        eval_seconds = time.perf_counter() - t1
        pairs_per_s = fit["examples"] / max(train_seconds, 1e-9)

        score = (valid if select_split == "valid" else test)[SELECT_METRIC]
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            if ctx.is_main:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if checkpoint_dir:
                    ckpt.save_atomic({"model": best_state, "epoch": epoch},
                                     ckpt.checkpoint_path(checkpoint_dir, ckpt.BEST_NAME))
        else:
            state.bad_epochs += 1
        if test:
            _pick_on_test(state.test_picked, test, epoch)
        record = {"epoch": epoch, "train_loss": fit["loss"], "train_examples": fit["examples"],
                  "train_seconds": train_seconds, "eval_seconds": eval_seconds, "pairs_per_s": pairs_per_s,
                  "lr": lr, "valid": valid, "test": test}
        state.history.append(record)
        state.epochs_done = epoch
        stopped_early = state.bad_epochs >= cfg.patience
        if ctx.is_main:
            log.info(_epoch_line(epoch, cfg.epochs, record))
        if on_epoch_end is not None:
            on_epoch_end(record, state)
        save_checkpoint(epoch, 0, None)
        if stopped_early and ctx.is_main:
            log.info("early stop after epoch %d: no better %s %s for %d epochs (best epoch %d, %.4f)",
                     epoch, select_split, SELECT_METRIC, cfg.patience, state.best_epoch, state.best_score)
        barrier(ctx)

    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    if ctx.is_main and best is not None:
        if best_state is None and checkpoint_dir:
            best_state = ckpt.load_tensors(ckpt.checkpoint_path(checkpoint_dir, ckpt.BEST_NAME))["model"]
        if best_state is not None:
            model.load_state_dict(best_state)
    return {"best_epoch": state.best_epoch, "best_score": state.best_score,
            "selected_on": f"{select_split} {SELECT_METRIC}",
            "valid": best["valid"] if best else None, "test": best["test"] if best else None,
            "test_picked": dict(state.test_picked), "history": state.history, "epochs_run": state.epochs_done,
            "stopped_early": stopped_early, "state": state, "best_state": best_state}
