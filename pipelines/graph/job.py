"""Stage 2's job: read stage 1's tables and stats for one run date, check them, write ``item_graph``
and the shard folder with its manifest."""
from __future__ import annotations

from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.graph.config import GraphConfig
from pipelines.graph.shards import split_layout, write_shard_folder
from pipelines.graph.transforms import (item_graph, recent_fraction_sessions, session_transitions,
                                        sessions_with_ngc_weights, sessions_with_role)
from pipelines.tables import TableStore
from srgnn.core import contracts as C
from srgnn.core.commit import RunCommit, complete_pending
from srgnn.core.layout import Layout
from srgnn.core.errors import InputError
from srgnn.core.fs import exists, read_json
from srgnn.core.log import get_logger

log = get_logger(__name__)

SESSION_COLUMNS = ("session_id", "split", "item_idx")


def _stats_path(store: TableStore, run_date: str) -> str:
    return store.layout.stats(run_date, C.STATS_SESSIONS)


def _read_inputs(spark: SparkSession, cfg: GraphConfig, store: TableStore) -> tuple[DataFrame, int, float]:
    sessions = store.read(spark, C.SESSIONS, cfg.run_date)
    vocab = store.read(spark, C.ITEM_VOCAB, cfg.run_date)
    missing = [c for c in SESSION_COLUMNS if c not in sessions.columns]
    if missing:
        raise InputError(f"table 'sessions' (run_date={cfg.run_date}) under {store.root} lacks column(s) "
                         f"{missing}; has {sessions.columns}")
    stats_path = _stats_path(store, cfg.run_date)
    if not exists(stats_path):
        raise InputError(f"stage 1 stats not found: {stats_path} (run jobs/build_sessions.py for "
                         f"run date {cfg.run_date} first)")
    stats = read_json(stats_path)
    fraction = float(stats.get("fraction") or 1.0)
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"{stats_path}: fraction {fraction} is not in (0, 1]")
    n_items = vocab.count()
    if "n_items" in stats and int(stats["n_items"]) != n_items:
        raise InputError(f"{stats_path} says n_items={stats['n_items']} but table 'item_vocab' "
                         f"for run date {cfg.run_date} has {n_items} rows")
    if fraction < 1.0 and "session_order" not in sessions.columns:
        raise InputError(f"table 'sessions' (run_date={cfg.run_date}) lacks column 'session_order', "
                         f"needed to apply fraction={fraction}")
    return sessions, n_items, fraction


def _roles(sessions: DataFrame, fraction: float, cfg: GraphConfig, where: str) -> tuple[DataFrame, dict[str, Any]]:
    train = sessions.where(F.col("split") == "train")
    test = sessions.where(F.col("split") == "test")
    counts: dict[str, Any] = {}
    if fraction < 1.0:
        total = train.select(F.sum(F.size("item_idx") - 1)).first()[0] or 0
        keep = int(total * fraction)
        counts.update(train_pairs_before_fraction=int(total), kept_train_pairs=keep)
        if keep == 0:
            raise InputError(f"empty training split: fraction {fraction} of the {total} training pairs "
                             f"of {where} keeps none")
        log.info("fraction %s: keeping the last %d of %d training pairs (official order)", fraction, keep, total)
        train = recent_fraction_sessions(train.select("session_id", "split", "item_idx", "session_order"), keep)
    cols = ["session_id", "split", "item_idx"]
    return sessions_with_role(train.select(*cols).unionByName(test.select(*cols)), cfg.valid_share), counts


def _check_stage1_counts(counts: dict, fraction_counts: dict, stats_path: str) -> None:
    """The examples must be the prefix pairs stage 1 counted (before the fraction)."""
    stats = read_json(stats_path)
    train_pairs = fraction_counts.get("train_pairs_before_fraction",
                                      counts["train"]["examples"] + counts["valid"]["examples"])
    for key, got in (("train_pairs", train_pairs), ("test_pairs", counts["test"]["examples"])):
        if key in stats and int(stats[key]) != got:
            raise InputError(f"{stats_path} says {key}={stats[key]} but the sessions table gives {got} "
                             f"prefix pairs; rerun stage 1 for this run date")


def build_graph(spark: SparkSession, cfg: GraphConfig) -> dict[str, Any]:
    """Run stage 2 for ``cfg.run_date``; return the manifest (also written next to the shards)."""
    cfg.validate_required()
    # one writer per (OUT, run date); item_graph and the shards are published together
    complete_pending(Layout(cfg.output), ["build_sessions"], cfg.run_date)
    with RunCommit(Layout(cfg.output), "build_graph", cfg.run_date) as commit:
        return _build_graph(spark, cfg, commit)


def _build_graph(spark: SparkSession, cfg: GraphConfig, commit: RunCommit) -> dict[str, Any]:
    store = TableStore(cfg.output, cfg.table_format)
    where = f"table 'sessions' for run date {cfg.run_date} under {store.root}"
    sessions, n_items, fraction = _read_inputs(spark, cfg, store)
    log.info("read %s and item_vocab (%d items), fraction=%s", where, n_items, fraction)
    roles, fraction_counts = _roles(sessions, fraction, cfg, where)

    transitions = session_transitions(roles)
    graph = item_graph(transitions, cfg.self_loops).persist(StorageLevel.MEMORY_AND_DISK)
    weighted = sessions_with_ngc_weights(transitions, graph.select("src_idx", "dst_idx", "weight"))
    weighted = weighted.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # every check before the first write: a failed run leaves the date's outputs as they were
        counts, layout = split_layout(spark, weighted, cfg, where)
        _check_stage1_counts(counts, fraction_counts, _stats_path(store, cfg.run_date))
        log.info("examples per split: %s", {s: counts[s]["examples"] for s in C.SPLITS})
        store.write(graph, C.ITEM_GRAPH, cfg.run_date, commit)
        fields = {
            "schema_version": C.SCHEMA_VERSION, "run_date": cfg.run_date, "n_items": n_items,
            "max_len": cfg.max_len, "pad_side": "right", "world_size": cfg.world_size,
            "valid_share": cfg.valid_share, "fraction": fraction, "seed": cfg.seed,
            "self_loops": cfg.self_loops, **fraction_counts,
        }
        return write_shard_folder(spark, store.layout.shards(cfg.run_date), weighted, layout, counts, cfg,
                                  fields, commit)
    finally:
        weighted.unpersist()
        graph.unpersist()
