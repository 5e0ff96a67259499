"""Stage 3: train SR-GNN on stage 2's Petastorm shards, on 1..N processes, and export the best model.

What one run does (every rank calls :func:`train_job`):

1. check stage 2's output: shards of the three splits and ``_manifest.json``; the manifest's
   content hash is recomputed from the shard files (a mismatch is one clear line);
2. set up the process group from the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment
   (:mod:`srgnn.ddp`; none for one process);
3. seed, build the model (:mod:`srgnn.model`), optionally warm-started from a previous export
   (``--init-from``, :mod:`srgnn.warm_start`: item rows follow their item ids);
4. train with :func:`srgnn.train.train` (every rank streams its own row groups: Petastorm
   ``cur_shard=rank``, ``shard_count=world``, order reshuffled from ``(seed, epoch)``); rank 0
   checkpoints under ``OUT/checkpoints/run_date=D/`` and logs to MLflow;
5. rank 0 exports the best epoch's weights to ``OUT/models/run_date=D/`` (:mod:`srgnn.export`:
   ``model.safetensors`` + ``config.json`` + ``item_vocab.parquet`` for the next warm start).

``OUT`` may be an object store (``s3://bucket/out``): every read and write goes through
:mod:`srgnn.core.fs` (shards, manifest, checkpoints, export) or pyarrow on
:func:`srgnn.core.fs.arrow_filesystem` (item_vocab); MLflow's default file store is then the local
folder ``./mlruns`` (see :func:`mlflow_default_root`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import torch

from srgnn import reader
from srgnn.core import fs
from srgnn.core.commit import RunLock, complete_pending
from srgnn.core.contracts import ITEM_VOCAB, SPLITS
from srgnn.core.errors import InputError, PipelineError
from srgnn.core.fs import makedirs
from srgnn.core.log import get_logger
from srgnn.ddp import DistContext, barrier, broadcast_object, setup_distributed, teardown_distributed
from srgnn.device import seed_everything, set_determinism
from srgnn.export import save_model
from srgnn.model import SRGNN, ModelConfig
from srgnn.train import TrainData, TrainState, train
from srgnn.warm_start import warm_start

from pipelines.train.config import TrainJobConfig
from pipelines.train.tracking import Tracker

log = get_logger(__name__)


def check_inputs(cfg: TrainJobConfig) -> dict[str, Any]:
    """The manifest of ``cfg``'s shards, after checking that every split is there (and the hash)."""
    shards = cfg.shards_dir
    if not fs.isdir(shards):
        raise InputError(f"no shards for run_date={cfg.run_date}: {shards} does not exist; "
                         f"run stage 2 (jobs/build_graph.py --output {cfg.output} --run-date {cfg.run_date}) first")
    manifest = reader.load_manifest_at(shards)
    for split in SPLITS:
        expected = int(manifest["splits"][split]["examples"])
        if expected and not reader.split_files(shards, split):
            raise InputError(f"shards of split '{split}' are missing: no Parquet files under "
                             f"{cfg.layout.shard_split(cfg.run_date, split)} (the manifest says {expected} examples)")
    if cfg.verify_manifest:
        reader.verify_manifest(shards, manifest=manifest)
    if int(manifest["splits"]["train"]["examples"]) == 0:
        raise InputError(f"the training split of {shards} has 0 examples (manifest)")
    return manifest


def read_item_vocab(cfg: TrainJobConfig) -> Any | None:
    """Stage 1's ``item_vocab`` of this run date as a pandas frame (item_id, item_idx), or None.

    Parquet tables are read with pyarrow (no Spark in the trainer). A Delta table is read only
    through a SparkSession that is already active (a Databricks driver); in TorchDistributor's or
    torchrun's worker processes there is none, and the export then carries no item_vocab.parquet
    (warm starts from it fall back to item indices, see docs/training.md).
    """
    path = cfg.layout.partition(ITEM_VOCAB, cfg.run_date)
    try:
        if cfg.table_format == "parquet":
            if not fs.isdir(path):
                log.warning("no item_vocab table at %s: the export carries no item_vocab.parquet", path)
                return None
            import pyarrow.parquet as pq
            arrow_fs, inner = fs.arrow_filesystem(path)
            return pq.read_table(inner, filesystem=arrow_fs, columns=["item_id", "item_idx"]).to_pandas()
        from pyspark.sql import SparkSession

        from pipelines.tables import TableStore
        spark = SparkSession.getActiveSession()
        if spark is None:
            log.warning("item_vocab is a Delta table and no SparkSession is active in this process: "
                        "the export carries no item_vocab.parquet")
            return None
        return TableStore(cfg.output, "delta").read(spark, ITEM_VOCAB, cfg.run_date) \
            .select("item_id", "item_idx").toPandas()
    except PipelineError:
        raise
    except Exception as exc:  # an unreadable vocab only disables id-based warm start
        log.warning("could not read item_vocab for run_date=%s (%s)", cfg.run_date, exc)
        return None


def mlflow_default_root(cfg: TrainJobConfig, announce: bool = False) -> str:
    """MLflow's default file store: ``OUT/mlruns`` for a local OUT; ``./mlruns`` (the working
    folder) for an object-store OUT, where MLflow's file store cannot live (said in the log when
    ``announce`` and no tracking URI is set)."""
    if fs.is_local(cfg.root):
        return cfg.layout.mlruns()
    root = os.path.abspath("mlruns")
    if announce and not cfg.mlflow_tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        log.info("OUT %s is on an object store: MLflow logs to the local file store %s "
                 "(--mlflow-tracking-uri or $MLFLOW_TRACKING_URI choose another)", cfg.root, root)
    return root


def warm_start_from(model: SRGNN, init_from: str, n_items: int, vocab: Any | None) -> dict[str, Any]:
    """:func:`srgnn.warm_start.warm_start` from an export on any root (object stores: a local copy)."""
    if fs.is_local(init_from):
        return warm_start(model, init_from, n_items, vocab)
    with tempfile.TemporaryDirectory(prefix="srgnn-init-from-") as tmp:
        log.info("--init-from %s: reading a local copy", init_from)
        return warm_start(model, fs.fetch_dir(init_from, tmp), n_items, vocab)


def build_model(cfg: TrainJobConfig, n_items: int, max_len: int) -> SRGNN:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    wanted = {"n_items": n_items, "max_len": max_len, **cfg.model_options()}
    return SRGNN(ModelConfig(**{k: v for k, v in wanted.items() if k in known}))


def train_data(cfg: TrainJobConfig, manifest: dict[str, Any], ctx: DistContext) -> TrainData:
    """This rank's batches of the shards (Petastorm cur_shard=rank, shard_count=world)."""
    def split(name: str, batch_size: int, epoch: int, shuffle: bool):
        return reader.iter_batches(cfg.shards_dir, name, batch_size, cur_shard=ctx.rank,
                                   shard_count=ctx.world_size, seed=cfg.seed, epoch=epoch,
                                   shuffle_row_groups=shuffle, workers_count=cfg.reader_workers,
                                   with_ngc=cfg.variant == "ngc")

    local_batch = cfg.batch_size // ctx.world_size
    has_valid = int(manifest["splits"]["valid"]["examples"]) > 0
    return TrainData(
        train=lambda epoch: split("train", local_batch, epoch, cfg.shuffle),
        valid=(lambda: split("valid", cfg.eval_batch_size, 0, False)) if has_valid else None,
        test=(lambda: split("test", cfg.eval_batch_size, 0, False)) if (cfg.eval_test or not has_valid) else None,
        rank_examples=reader.shard_examples(manifest, "train", ctx.world_size),
        source=cfg.shards_dir)


def train_job(cfg: TrainJobConfig) -> dict[str, Any]:
    """Train on ``OUT/shards/run_date=D`` and export the best model; returns the export dir and metrics.

    Works in one process or under torchrun / TorchDistributor / :func:`pipelines.train.launch.launch_local`
    (every rank calls it; rank 0 writes checkpoints, the export and MLflow; all ranks return the
    same figures).
    """
    cfg.validate_required()
    if int(os.environ.get("RANK", "0")) == 0:
        complete_pending(cfg.layout, ["build_graph"], cfg.run_date)
    manifest = check_inputs(cfg)  # before the process group: a bad input fails every rank at once
    main_rank = int(os.environ.get("RANK", "0")) == 0
    lock = None
    if main_rank:  # one trainer per (OUT, run date), and its outputs' folders usable, before any training
        lock = RunLock(cfg.layout, "train", cfg.run_date).acquire()
        for folder in (cfg.layout.models_root(), cfg.checkpoint_dir):
            try:
                makedirs(folder)
            except BaseException:
                lock.release()
                raise
    ctx = setup_distributed(cfg.device)
    tracker = None
    # process-wide torch settings this job changes, restored at the end (notebooks, test sessions)
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        tracker = Tracker(cfg.mlflow_tracking_uri, cfg.mlflow_experiment,
                          mlflow_default_root(cfg, announce=ctx.is_main), enabled=ctx.is_main)
        return _run(cfg, manifest, ctx, tracker)
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
    finally:
        teardown_distributed(ctx)
        if lock is not None:
            lock.release()
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _run(cfg: TrainJobConfig, manifest: dict[str, Any], ctx: DistContext, tracker: Tracker) -> dict[str, Any]:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    set_determinism(cfg.deterministic, ctx.device)
    seed_everything(cfg.seed)
    n_items, max_len = int(manifest["n_items"]), int(manifest["max_len"])
    manifest_hash = str(manifest.get("content_hash", ""))
    loop = cfg.loop_config()
    model = build_model(cfg, n_items, max_len)
    vocab = read_item_vocab(cfg)
    warm = warm_start_from(model, cfg.init_from, n_items, vocab) if cfg.init_from else {}
    model.to(ctx.device)
    meta = {"manifest_hash": manifest_hash, "n_items": n_items, "max_len": max_len,
            "model": json.dumps({k: v for k, v in cfg.model_options().items() if k != "static_shapes"},
                                sort_keys=True), "batch_size": cfg.batch_size}
    params = {**cfg.to_dict(), "world_size": ctx.world_size, "n_items": n_items, "max_len": max_len,
              "manifest_hash": manifest_hash, "train_examples": manifest["splits"]["train"]["examples"],
              **{f"warm_{k}": v for k, v in warm.items()}}

    def on_start(state: TrainState) -> None:
        if ctx.is_main:
            state.mlflow_run_id = tracker.start(state.mlflow_run_id, f"{cfg.run_date}-{cfg.variant}-{cfg.readout}",
                                                params)

    def on_epoch_end(record: dict[str, Any], state: TrainState) -> None:
        if ctx.is_main:
            valid, test = record["valid"], record["test"]
            tracker.log_metrics({"train_loss": record["train_loss"], "pairs_per_s": record["pairs_per_s"],
                                 "epoch_seconds": record["train_seconds"], "lr": record["lr"],
                                 **{f"valid_{k}": v for k, v in valid.items() if k != "examples"},
                                 **{f"test_{k}": v for k, v in test.items() if k != "examples"}},
                                step=record["epoch"])

    result = train(model, loop, train_data(cfg, manifest, ctx), ctx, checkpoint_dir=cfg.checkpoint_dir, meta=meta,
                   on_start=on_start, on_epoch_end=on_epoch_end)
    state: TrainState = result["state"]
    if result["valid"] is None:
        raise PipelineError(f"no epoch was evaluated for run_date={cfg.run_date} (epochs={cfg.epochs})")
    metrics = {"valid": {k: v for k, v in result["valid"].items() if k != "examples"},
               "test": {k: v for k, v in result["test"].items() if k != "examples"}}
    export_dir = None
    if ctx.is_main:
        extra = {
            "n_items": n_items, "max_len": max_len, "manifest_hash": manifest_hash,
            "run_date": cfg.run_date, "variant": cfg.variant, "readout": cfg.readout,
            "metrics": metrics, "selected_on": result["selected_on"], "best_epoch": state.best_epoch,
            "epochs_run": state.epochs_done, "world_size": ctx.world_size,
            "training": {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "lr_dc", "lr_dc_step", "l2",
                                                       "patience", "seed", "init_from")},
        }
        save_model(cfg.model_dir, model.to("cpu"), extra, vocab)   # the model holds the best epoch's weights
        export_dir = cfg.model_dir
        log.info("exported the best model to %s", export_dir)
        tracker.log_metrics({f"best_valid_{k}": v for k, v in metrics["valid"].items()}
                            | {f"best_test_{k}": v for k, v in metrics["test"].items()}, step=state.best_epoch)
        tracker.finish(export_dir, {"best_epoch": str(state.best_epoch), "run_date": cfg.run_date,
                                    "selected_on": result["selected_on"]})
    export_dir = broadcast_object(export_dir, ctx)
    barrier(ctx)
    return {"export_dir": export_dir, "metrics": metrics, "best_epoch": state.best_epoch,
            "epochs_run": state.epochs_done, "stopped_early": result["stopped_early"], "history": state.history,
            "world_size": ctx.world_size, "mlflow_run_id": state.mlflow_run_id,
            "checkpoint_dir": cfg.checkpoint_dir}
