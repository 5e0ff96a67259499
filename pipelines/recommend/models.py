"""Which model scores tonight's sessions (``--model-name``), and a baseline's fit for stage 4.

``auto`` takes the chosen row of table ``model_selection`` for the run date (written by
:mod:`pipelines.select` after the evaluation) and falls back to ``srgnn`` when the run date has no
such partition. ``srgnn`` is tonight's export, ``previous`` the SR-GNN export published on an
earlier night (:func:`pipelines.select.job.previous_model_dir`), any other name a baseline of
:mod:`srgnn.baselines`, fitted here exactly as the evaluation fits it: on the ``sessions`` table's
``train`` split restricted to the session ids of stage 2's ``train`` shard, and (SR) the
``item_graph`` of the run date.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pyspark.sql import functions as F

from pipelines.baselines import check_sessions, fit_baselines, training_sessions
from pipelines.recommend.config import AUTO, MODEL_NAMES, PREVIOUS, SRGNN, RecommendConfig
from srgnn.core.contracts import MODEL_SELECTION
from pipelines.tables import TableStore, path_exists
from srgnn.baselines import Scorer
from srgnn.core.contracts import ITEM_GRAPH, SESSIONS
from srgnn.core.errors import InputError
from srgnn.core.fs import is_local, local_path, read_json
from srgnn.core.layout import partition_name
from srgnn.core.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class ChosenModel:
    name: str                   # srgnn, previous, or a baseline's name
    model_version: str | None   # the model_selection row's model_version, when there is one
    chosen_by: str              # where the name came from, for the log and the stats


def selection_rows(spark, store: TableStore, run_date: str) -> list[dict[str, Any]] | None:
    """The ``model_selection`` rows of ``run_date`` (None without that partition)."""
    if not store.exists(spark, MODEL_SELECTION, run_date):
        return None
    table = store.read(spark, MODEL_SELECTION, run_date)
    return [r.asDict() for r in table.select("candidate", "model_version", "chosen").collect()]


def resolve_model(spark, store: TableStore, cfg: RecommendConfig) -> ChosenModel:
    """The model named by ``cfg.model_name``; ``auto``: the chosen candidate of the run date's
    ``model_selection`` (exactly one row must be chosen), else ``srgnn``."""
    rows = selection_rows(spark, store, cfg.run_date)
    where = f"table {MODEL_SELECTION} {partition_name(cfg.run_date)} under {store.root}"
    if cfg.model_name != AUTO:
        version = next((r["model_version"] for r in rows or [] if r["candidate"] == cfg.model_name), None)
        return ChosenModel(cfg.model_name, version, f"--model-name {cfg.model_name}")
    if rows is None:
        return ChosenModel(SRGNN, None, f"--model-name auto (no {MODEL_SELECTION} partition)")
    chosen = [r for r in rows if r["chosen"]]
    if len(chosen) != 1:
        raise InputError(f"{where} has {len(chosen)} chosen rows, expected exactly one; rerun "
                         f"jobs/select.py or pass --model-name")
    name = chosen[0]["candidate"]
    if name not in MODEL_NAMES or name == AUTO:
        raise InputError(f"{where} chose {name!r}, which stage 4 cannot score (known: "
                         f"{list(MODEL_NAMES[1:])}); pass --model-name")
    return ChosenModel(name, chosen[0]["model_version"], f"--model-name auto ({where})")


def srgnn_model_dir(spark, store: TableStore, cfg: RecommendConfig, name: str) -> str:
    """The export that scores as ``name`` (srgnn or previous): ``--model-dir`` when given."""
    if cfg.model_dir or name == SRGNN:
        return model_location(cfg.resolved_model_dir())
    assert name == PREVIOUS
    from pipelines.select.job import previous_model_dir

    found = previous_model_dir(store, spark, cfg.run_date)
    if found is None:
        raise InputError(f"no SR-GNN model was published before {cfg.run_date} under {store.root} "
                         f"(table {MODEL_SELECTION}); pass --model-dir for --model-name previous")
    return model_location(found)


def model_location(path: str) -> str:
    """An absolute local path, or the object-store URI as given (the executors read either)."""
    return os.path.abspath(local_path(path)) if is_local(path) else path.rstrip("/")


def fit_baseline(spark, store: TableStore, cfg: RecommendConfig, name: str) -> tuple[Scorer, dict[str, Any]]:
    """Baseline ``name`` fitted on tonight's training sessions, as the evaluation fits it; returns
    the scorer and {n_items, max_len (the shards'), fit_seconds, the fit's counts}."""
    params = cfg.baseline_params()
    params.check(cfg.k)
    layout = store.layout
    manifest_path = local_path(layout.manifest(cfg.run_date))
    if not os.path.isfile(manifest_path):
        raise InputError(f"shard manifest not found: {manifest_path}; baseline {name!r} is fitted on "
                         f"stage 2's train shard (run jobs/build_graph.py for this run date first)")
    manifest = read_json(manifest_path)
    train_dir = layout.shard_split(cfg.run_date, "train")
    if not path_exists(spark, train_dir):
        raise InputError(f"train shards not found: {train_dir} (run jobs/build_graph.py for this run date first)")
    sessions = store.read(spark, SESSIONS, cfg.run_date)
    check_sessions(sessions)
    train_ids = spark.read.parquet(train_dir).select(F.col("session_id"))
    item_graph = store.read(spark, ITEM_GRAPH, cfg.run_date) if name == "sr" else None
    n_items = int(manifest["n_items"])
    fitted = fit_baselines(training_sessions(sessions, train_ids), item_graph, n_items, params, names=[name])
    info = {"n_items": n_items, "max_len": int(manifest["max_len"]), "fit_seconds": round(fitted.fit_seconds[name], 3),
            **fitted.stats}
    log.info("baseline %s fitted on %d training sessions of %s in %.1f s", name, fitted.stats["train_sessions"],
             cfg.run_date, fitted.fit_seconds[name])
    return fitted.scorers[name], info
