"""Stage 4: nightly top-k recommendations per session, scored inside Spark (the job).

    model (--model-name; auto: the run date's model_selection): srgnn | previous | a baseline
    sessions (stage 1, or any table/path with a session id and ordered item ids)
      -> session_clicks -> clicks_with_item_index (join with the model's vocabulary) -> session_item_indices
      -> sessions with known items:  padded_sessions -> mapInArrow(score_partitions) -> explode_top_k
                                      -> with_item_ids                               source 'model'
      -> sessions with no known item: popular_recommendations                      source 'popular'
      -> table ``recommendations`` (OUT/recommendations/run_date=D/, replaced on rerun)

The model's vocabulary is tonight's ``item_vocab`` for ``srgnn`` and the baselines, and the
export's own ``item_vocab.parquet`` for ``previous`` (an earlier night's item indices). Which model
and which folder: :mod:`pipelines.recommend.models`, which also fits a baseline.

The transforms are in :mod:`pipelines.recommend.transforms`, the scoring inside the executors in
:mod:`pipelines.recommend.executor`; nothing is collected to the driver except counts.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.recommend.config import (PREVIOUS, SOURCE_MODEL, SOURCE_POPULAR, SRGNN, TABLE, RecommendConfig,
                                        ShowRecommendationsConfig)
from pipelines.recommend.executor import (default_torch_threads, make_baseline_partition_scorer,
                                          make_partition_scorer)
from pipelines.recommend.models import fit_baseline, resolve_model, srgnn_model_dir
from pipelines.recommend.transforms import (clicks_with_item_index, export_vocabulary, model_recommendations,
                                            ngc_transition_weights, padded_sessions,
                                            popular_recommendations, session_clicks, session_counts,
                                            session_item_indices, sessions_to_score, with_item_ids)
from pipelines.tables import TableStore
from srgnn.core.contracts import CONFIG_FILE, ITEM_GRAPH, ITEM_VOCAB, SESSIONS, STATS_RECOMMEND, VOCAB_FILE
from srgnn.core.errors import InputError, PipelineError
from srgnn.core.commit import RunCommit, complete_pending
from srgnn.core.fs import arrow_filesystem, exists, file_url, is_local, local_path, read_json
from srgnn.core.layout import Layout, partition_name
from srgnn.core.log import get_logger
from srgnn.integrity import NonFiniteScores, check_export, check_model_matches_manifest
from srgnn.reader import verify_manifest

log = get_logger(__name__)


def check_model_matches_run_date(config: dict[str, Any], model_dir: str, vocab: DataFrame, store: TableStore,
                                 run_date: str, check_manifest: bool) -> dict[str, Any]:
    """The model must be the run date's model: its ``n_items`` is the largest index of the run
    date's ``item_vocab``, and (when ``check_manifest`` and the run date has shards) it was trained
    on those shards, which are still the bytes their manifest describes."""
    row = vocab.agg(F.max("item_idx").alias("max_idx"), F.count("*").alias("n")).first()
    n_items = int(config["n_items"])
    if row["max_idx"] is None or int(row["max_idx"]) != n_items:
        raise InputError(
            f"model/vocabulary mismatch: {model_dir}/{CONFIG_FILE} has n_items={n_items} but table "
            f"item_vocab {partition_name(run_date)} under {store.root} has max item_idx={row['max_idx']} "
            f"({row['n']} items); score with the model trained on this vocabulary")
    manifest_path = local_path(store.layout.manifest(run_date))
    info = {"vocab_items": int(row["n"]), "manifest_checked": False}
    if check_manifest and os.path.isfile(manifest_path) and config.get("manifest_hash"):
        manifest = read_json(manifest_path)
        check_model_matches_manifest(config, manifest, model_dir, manifest_path,
                                     hint=" (retrain, or pass --no-check-manifest to score anyway)")
        verify_manifest(local_path(store.layout.shards(run_date)), manifest=manifest)
        info["manifest_checked"] = True
    return info


def check_baseline_matches_run_date(n_items: int, vocab: DataFrame, store: TableStore, run_date: str) -> dict[str, Any]:
    """A baseline fitted on the run date's shards indexes the run date's ``item_vocab``."""
    row = vocab.agg(F.max("item_idx").alias("max_idx"), F.count("*").alias("n")).first()
    if row["max_idx"] is None or int(row["max_idx"]) != n_items:
        raise InputError(f"shards/vocabulary mismatch: the manifest of {run_date} under {store.root} has "
                         f"n_items={n_items} but table item_vocab has max item_idx={row['max_idx']}; rerun stage 2")
    return {"vocab_items": int(row["n"]), "manifest_checked": False}


def read_export_vocabulary(spark, model_dir: str) -> DataFrame:
    """The export's own ``item_vocab.parquet`` (item_id, item_idx): an earlier night's item indices."""
    path = f"{model_dir}/{VOCAB_FILE}"
    if not exists(path):
        raise InputError(f"model {model_dir} has no {VOCAB_FILE}: its item indices cannot be mapped to "
                         f"item ids (an export of an earlier night needs its own vocabulary)")
    if is_local(path):
        return spark.read.parquet(file_url(local_path(path)))
    arrow_fs, inner = arrow_filesystem(path)   # the driver reads it: no Hadoop connector needed
    return spark.createDataFrame(pq.read_table(inner, filesystem=arrow_fs, columns=["item_id", "item_idx"]).to_pandas())


def written_rows(spark, store: TableStore, commit: RunCommit, run_date: str) -> DataFrame:
    """The rows this run wrote: for parquet the commit's staging folder (published when the run
    commits, so the table's partition is still the previous run's or absent), for Delta the table."""
    if store.fmt == "parquet":
        final = store.partition_path(TABLE, run_date).rstrip("/")
        staging = next(m.staging for m in reversed(commit.moves) if m.final == final)
        return spark.read.parquet(staging)
    return store.read(spark, TABLE, run_date)


def read_sessions_source(spark, cfg: RecommendConfig, store: TableStore):
    """The raw sessions source: stage 1's table of the run date, or --sessions."""
    if not cfg.sessions:
        return store.read(spark, SESSIONS, cfg.run_date), f"table sessions {partition_name(cfg.run_date)}"
    if cfg.sessions_format == "table":
        try:
            return spark.table(cfg.sessions), f"table {cfg.sessions}"
        except Exception as exc:  # AnalysisException: table not found
            raise InputError(f"sessions table {cfg.sessions} cannot be read: "
                             f"{str(exc).splitlines()[0]}") from None
    if "://" not in cfg.sessions and not os.path.exists(local_path(cfg.sessions)):
        raise InputError(f"sessions path not found: {cfg.sessions}")
    return spark.read.format(cfg.sessions_format).load(cfg.sessions), f"{cfg.sessions_format} {cfg.sessions}"


def recommend(spark, cfg: RecommendConfig) -> dict[str, Any]:
    """Write ``recommendations`` for ``cfg.run_date`` and return (and log, and save) the stats."""
    cfg.validate_required()
    layout = Layout(cfg.output)
    complete_pending(layout, ["build_sessions"], cfg.run_date)
    # one writer per (OUT, run date); the table and the stats JSON are published together
    with RunCommit(layout, "recommend", cfg.run_date) as commit:
        return _recommend(spark, cfg, commit)


def _recommend(spark, cfg: RecommendConfig, commit: RunCommit) -> dict[str, Any]:
    t0 = time.time()
    store = TableStore(cfg.output, cfg.table_format)
    chosen = resolve_model(spark, store, cfg)
    vocab = store.read(spark, ITEM_VOCAB, cfg.run_date)
    model_vocab = vocab           # the vocabulary of the scorer's item indices
    baseline = None               # a fitted baseline's scorer (broadcast to the executors)
    fitted = None
    if chosen.name in (SRGNN, PREVIOUS):
        model_dir = srgnn_model_dir(spark, store, cfg, chosen.name)
        config = check_export(model_dir)
        if chosen.name == PREVIOUS:
            model_vocab = export_vocabulary(read_export_vocabulary(spark, model_dir))
            match = {"vocab_items": int(config["n_items"]), "manifest_checked": False}
        else:
            match = check_model_matches_run_date(config, model_dir, vocab, store, cfg.run_date, cfg.check_manifest)
        model_version = str(config.get("model_version") or os.path.basename(model_dir))
        max_len = cfg.max_len or int(config["max_len"])
        variant = str(config["model"].get("variant", "srgnn")) if isinstance(config["model"], dict) else "srgnn"
        n_items = int(config["n_items"])
        fit_info: dict[str, Any] = {}
    else:
        baseline, fit_info = fit_baseline(spark, store, cfg, chosen.name)
        n_items, max_len, variant, model_dir = fit_info["n_items"], cfg.max_len or fit_info["max_len"], chosen.name, None
        match = check_baseline_matches_run_date(n_items, vocab, store, cfg.run_date)
        model_version = chosen.model_version or f"{chosen.name}@{cfg.run_date}"
    with_ngc = variant == "ngc"
    if with_ngc and chosen.name == PREVIOUS:
        raise InputError(f"model {model_dir} is an SR-GNN-NGC model of an earlier night: its edge weights "
                         f"would come from tonight's item_graph in another item index; score it with "
                         f"--model-name srgnn --model-dir on its own night's data, or choose another model")
    log.info("model %s (%s; version %s, variant %s, n_items %s), max_len %d, k %d",
             chosen.name, chosen.chosen_by, model_version, variant, n_items, max_len, cfg.k)

    source, source_name = read_sessions_source(spark, cfg, store)
    sessions = sessions_to_score(source, cfg.session_id_col, cfg.items_col, cfg.split, source_name)
    indexed_all = session_item_indices(clicks_with_item_index(session_clicks(sessions), model_vocab))
    indexed_all = indexed_all.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = session_counts(indexed_all, max_len).first().asDict()
        if counts["duplicate_rows"]:
            examples = [r["session_id"] for r in indexed_all.where(F.col("session_id").isNotNull()
                                                                   & (F.col("n_rows") > 1)).limit(3).collect()]
            raise InputError(f"{source_name}: {counts['duplicate_rows']} extra rows share a session id "
                             f"(e.g. {examples}); session ids must be unique")
        if counts["rows_read"] == 0:
            log.warning("%s has no sessions (split %s): writing an empty recommendations partition",
                        source_name, cfg.split)
        indexed = indexed_all.where(F.col("session_id").isNotNull())
        threads = cfg.torch_threads or default_torch_threads(spark)
        partitions = cfg.partitions or spark.sparkContext.defaultParallelism
        padded = padded_sessions(indexed, max_len)
        if with_ngc:
            padded = ngc_transition_weights(padded, store.read(spark, ITEM_GRAPH, cfg.run_date), max_len)
        if baseline is None:
            scorer = make_partition_scorer(model_dir, cfg.k, max_len, cfg.batch_size, cfg.device,
                                           cfg.exclude_seen, threads, with_ngc)
        else:
            fitted = spark.sparkContext.broadcast(baseline)
            scorer = make_baseline_partition_scorer(fitted, cfg.k, max_len, cfg.batch_size,
                                                    cfg.exclude_seen, threads)
        from_model = with_item_ids(model_recommendations(padded, scorer, partitions), model_vocab,
                                   model_version, SOURCE_MODEL, chosen.name)
        from_popular = with_item_ids(popular_recommendations(indexed, vocab, cfg.k), vocab,
                                     model_version, SOURCE_POPULAR, chosen.name)
        log.info("scoring %d sessions from %s in %d partitions (%d torch threads each, batch %d)",
                 counts["sessions"], source_name, partitions, threads, cfg.batch_size)
        try:
            target = store.write(from_model.unionByName(from_popular), TABLE, cfg.run_date, commit)
        except PipelineError:
            raise
        except Exception as exc:  # a worker's NonFiniteScores arrives wrapped in Spark's error
            found = re.search(r"NonFiniteScores: ([^\n]*)", str(exc))
            if found is None:
                raise
            raise NonFiniteScores(found.group(1).strip()) from None
    finally:
        indexed_all.unpersist()
        if fitted is not None:
            fitted.destroy()

    written = written_rows(spark, store, commit, cfg.run_date)
    by_source = {r["source"]: int(r["count"]) for r in written.groupBy("source").count().collect()}
    elapsed = time.time() - t0
    n_sessions = counts["sessions"]
    n_popular = counts["sessions_empty"] + counts["sessions_all_unknown"]
    stats = {
        "run_date": cfg.run_date,
        "source": source_name,
        "split": cfg.split,
        "model": chosen.name,
        "chosen_by": chosen.chosen_by,
        "model_dir": model_dir,
        "model_version": model_version,
        "variant": variant,
        "k": cfg.k,
        "max_len": max_len,
        **{key: int(value) for key, value in counts.items() if key != "duplicate_rows"},
        "unknown_item_click_share": (counts["unknown_items_dropped"] / counts["clicks_read"]
                                     if counts["clicks_read"] else None),
        "sessions_model": n_sessions - n_popular,
        "sessions_popular": n_popular,
        "rows_written": sum(by_source.values()),
        "rows_model": by_source.get(SOURCE_MODEL, 0),
        "rows_popular": by_source.get(SOURCE_POPULAR, 0),
        "exclude_seen": cfg.exclude_seen,
        "manifest_checked": match["manifest_checked"],
        **({"baseline_fit": fit_info} if fit_info else {}),
        "output": target,
        "seconds": round(elapsed, 3),
        "sessions_per_s": round(n_sessions / elapsed, 1) if elapsed > 0 else None,
    }
    stats_path = store.layout.stats(cfg.run_date, STATS_RECOMMEND)
    commit.add_json(stats_path, stats)
    log.info("recommendations: %d sessions (%d model, %d popular; %d null ids skipped, %d unknown "
             "items dropped), %d rows -> %s; stats %s; %.1f s",
             n_sessions, stats["sessions_model"], n_popular, stats["null_session_ids"],
             stats["unknown_items_dropped"],
             stats["rows_written"], target, stats_path, elapsed)
    return stats


def session_recommendations(spark, cfg: ShowRecommendationsConfig):
    """One session's rows of ``recommendations`` as a pandas DataFrame ordered by rank."""
    cfg.validate_required()
    table = TableStore(cfg.output, cfg.table_format).read(spark, TABLE, cfg.run_date)
    rows = (table.where(F.col("session_id") == cfg.session_id)
            .select("rank", "item_id", "score", "source", "model_version").orderBy("rank"))
    pdf = rows.toPandas()
    if pdf.empty:
        raise InputError(f"session {cfg.session_id!r} has no rows in table {TABLE} "
                         f"{partition_name(cfg.run_date)} under {cfg.output}")
    return pdf
