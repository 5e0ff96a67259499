"""Stage 4: nightly top-k recommendations per session, scored inside Spark.

    sessions (stage 1, or any table/path with a session id and ordered item ids)
      -> session_clicks -> clicks_with_item_index (join with item_vocab) -> session_item_indices
      -> sessions with known items:  padded_sessions -> mapInArrow(score_partitions) -> explode_top_k
                                      -> with_item_ids                               source 'model'
      -> sessions with no known item: popular_recommendations                      source 'popular'
      -> table ``recommendations`` (OUT/recommendations/run_date=D/, replaced on rerun)

Scoring runs in the executors' Python workers as an Arrow batch UDF (``DataFrame.mapInArrow``: the
same Arrow batches as ``mapInPandas`` without a pandas round-trip, so no per-row Python at all).
The model travels by path: each worker loads it once (``srgnn.scoring.cached_model``) and scores
its batches in chunks of ``batch_size`` on the GPU Spark gave the task, or any visible GPU, or CPU.
Nothing is collected to the driver except counts.

Ranks follow ``srgnn.metrics``: score descending, ties by item index ascending. The prefix fed to
the model is the last ``max_len`` known clicks, right-padded: the shards' convention, so scoring a
test example here gives the same logits as the trainer's evaluation.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator

from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError, InputError, PipelineError
from srgnn.core.log import get_logger
from pipelines.tables import TableStore
from srgnn.core.fs import local_path, read_json, write_json_atomic

log = get_logger(__name__)

TABLE = "recommendations"
SOURCE_MODEL = "model"
SOURCE_POPULAR = "popular"
SOURCE_FORMATS = ("parquet", "delta", "orc", "json", "table")


@dataclasses.dataclass
class RecommendConfig(StageConfig):
    """Stage 4: top-k recommendations for the run date's sessions, written to table recommendations."""

    yaml_section = "recommend"

    output: str = opt(None, "table root OUT (reads item_vocab/sessions, writes recommendations)",
                      required=True)
    run_date: str = opt(None, "run date YYYY-MM-DD", required=True)
    table_format: str = opt("parquet", "table format", choices=("parquet", "delta"))
    model_dir: str = opt("", "exported model folder (default OUT/models/run_date=D)")
    sessions: str = opt("", "sessions to score: a path or table name with a session id and ordered "
                            "item ids (default: stage 1's sessions table of the run date)")
    sessions_format: str = opt("parquet", "format of --sessions ('table' = a catalog table name)",
                               choices=SOURCE_FORMATS)
    split: str = opt("test", "keep only this split of a source with a 'split' column "
                             "(the test split stands in for today's sessions on the sample)",
                     choices=("test", "train", "all"))
    session_id_col: str = opt("session_id", "session id column of --sessions")
    items_col: str = opt("item_ids", "column of --sessions holding the item ids in click order")
    k: int = opt(20, "recommendations per session")
    batch_size: int = opt(128, "sessions per model call inside a Python worker (CPU: small keeps the "
                                 "batch x n_items scores in cache; raise it on a GPU)")
    exclude_seen: bool = opt(False, "never recommend an item already in the session "
                                    "(off, as in the paper's evaluation)")
    max_len: int = opt(0, "clicks fed to the model, the last ones (0 = the model's max_len)")
    device: str = opt("auto", "'auto' (a GPU when the executor has one), 'cpu', 'cuda', 'cuda:N'")
    torch_threads: int = opt(0, "torch threads per Python worker (0 = cores / concurrent tasks "
                                "locally, spark.task.cpus on a cluster)")
    partitions: int = opt(0, "scoring partitions (0 = Spark's default parallelism)")
    check_manifest: bool = opt(True, "check the model's manifest hash against the run date's shards")

    def validate(self) -> None:
        super().validate()
        for name in ("k", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"option --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_len", "torch_threads", "partitions"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"option --{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.device and not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"option --device: {self.device!r} is not auto, cpu, cuda or cuda:N")

    def resolved_model_dir(self) -> str:
        if self.model_dir:
            return self.model_dir
        return f"{TableStore(self.output, self.table_format).root}/models/run_date={self.run_date}"


@dataclasses.dataclass
class ShowRecommendationsConfig(StageConfig):
    """Print the recommendations of one session (rank, item id, score, source, model version)."""

    yaml_section = "show_recommendations"

    output: str = opt(None, "table root OUT", required=True)
    run_date: str = opt(None, "run date YYYY-MM-DD", required=True)
    session_id: str = opt(None, "the session to show", required=True)
    table_format: str = opt("parquet", "table format", choices=("parquet", "delta"))


# ---- the model folder ------------------------------------------------------------------------
def check_model_dir(model_dir: str) -> dict[str, Any]:
    """config.json of an exported model after loading its weights once (safetensors only).

    Raises InputError naming the folder or file for a missing folder, missing files, an unreadable
    config or corrupt weights."""
    path = local_path(model_dir)
    if not os.path.isdir(path):
        raise InputError(f"model folder not found: {model_dir} (run stage 3, jobs/train.py, for this "
                         f"run date first, or pass --model-dir)")
    from srgnn.scoring import CONFIG_FILE, WEIGHTS_FILE

    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(f"model folder {model_dir} has no {name} (an incomplete export?)")
    try:
        config = read_json(os.path.join(path, CONFIG_FILE))
    except ValueError as exc:
        raise InputError(f"model config {path}/{CONFIG_FILE} is not valid JSON: {exc}") from None
    for key in ("n_items", "max_len", "model"):
        if key not in config:
            raise InputError(f"model config {path}/{CONFIG_FILE} has no '{key}'")
    from srgnn.export import load_model

    try:
        load_model(path, "cpu")
    except PipelineError:
        raise
    except Exception as exc:  # safetensors' own errors, shape mismatches, truncated files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"model weights {path}/{WEIGHTS_FILE} could not be loaded "
                         f"({type(exc).__name__}: {first}); the file is corrupt or does not match "
                         f"{CONFIG_FILE}") from None
    return config


def check_model_matches(spark, config: dict[str, Any], model_dir: str, vocab, store: TableStore,
                        run_date: str, check_manifest: bool) -> dict[str, Any]:
    """The model must be the run date's vocabulary's model: same n_items; same shards if known."""
    from pyspark.sql import functions as F

    row = vocab.agg(F.max("item_idx").alias("max_idx"), F.count("*").alias("n")).first()
    n_items = int(config["n_items"])
    if row["max_idx"] is None or int(row["max_idx"]) != n_items:
        raise InputError(
            f"model/vocabulary mismatch: {model_dir}/config.json has n_items={n_items} but table "
            f"item_vocab run_date={run_date} under {store.root} has max item_idx={row['max_idx']} "
            f"({row['n']} items); score with the model trained on this vocabulary")
    manifest_path = local_path(f"{store.root}/shards/run_date={run_date}/_manifest.json")
    info = {"vocab_items": int(row["n"]), "manifest_checked": False}
    if check_manifest and os.path.isfile(manifest_path) and config.get("manifest_hash"):
        manifest = read_json(manifest_path)
        if manifest.get("content_hash") != config["manifest_hash"]:
            raise InputError(
                f"model/manifest mismatch: {model_dir}/config.json has manifest_hash="
                f"{str(config['manifest_hash'])[:16]}... but {manifest_path} has content_hash="
                f"{str(manifest.get('content_hash'))[:16]}...; the model was trained on other shards "
                f"(retrain, or pass --no-check-manifest to score anyway)")
        if "n_items" in manifest and int(manifest["n_items"]) != n_items:
            raise InputError(f"model/manifest mismatch: n_items {n_items} in {model_dir}/config.json, "
                             f"{manifest['n_items']} in {manifest_path}")
        info["manifest_checked"] = True
    return info


# ---- transforms: DataFrame -> DataFrame ------------------------------------------------------
def read_sessions_source(spark, cfg: RecommendConfig, store: TableStore):
    """The raw sessions source: stage 1's table of the run date, or --sessions."""
    if not cfg.sessions:
        return store.read(spark, "sessions", cfg.run_date), f"table sessions run_date={cfg.run_date}"
    if cfg.sessions_format == "table":
        try:
            return spark.table(cfg.sessions), f"table {cfg.sessions}"
        except Exception as exc:  # AnalysisException: table not found
            raise InputError(f"sessions table {cfg.sessions} cannot be read: "
                             f"{str(exc).splitlines()[0]}") from None
    if "://" not in cfg.sessions and not os.path.exists(local_path(cfg.sessions)):
        raise InputError(f"sessions path not found: {cfg.sessions}")
    return spark.read.format(cfg.sessions_format).load(cfg.sessions), f"{cfg.sessions_format} {cfg.sessions}"


def sessions_to_score(source, session_id_col: str, items_col: str, split: str, name: str = "sessions"):
    """session_id string, item_ids array<string> (click order) from any source (split filtered)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    missing = [c for c in (session_id_col, items_col) if c not in source.columns]
    if missing:
        raise InputError(f"{name}: column(s) {missing} not found (columns: {source.columns}); "
                         f"set --session-id-col / --items-col")
    if not isinstance(source.schema[items_col].dataType, ArrayType):
        raise InputError(f"{name}: column '{items_col}' must be an array of item ids in click order, "
                         f"got {source.schema[items_col].dataType.simpleString()}")
    if split != "all" and "split" in source.columns:
        source = source.where(F.col("split") == split)
    return source.select(
        F.col(session_id_col).cast("string").alias("session_id"),
        F.transform(F.col(items_col), lambda x: x.cast("string")).alias("item_ids"),
    )


def session_clicks(sessions):
    """One row per click (session_id, pos, item_id). An empty or null item list keeps one row with
    a null pos, so every input row survives to be counted; so do rows with a null session id."""
    from pyspark.sql import functions as F

    return sessions.select("session_id", F.posexplode_outer("item_ids").alias("pos", "item_id"))


def clicks_with_item_index(clicks, vocab):
    """Clicks with their vocabulary index (null for an item the vocabulary does not know)."""
    from pyspark.sql import functions as F

    index = vocab.select(F.col("item_id").cast("string").alias("item_id"),
                         F.col("item_idx").cast("int").alias("item_idx"))
    return (clicks.join(F.broadcast(index), on="item_id", how="left")
            .select("session_id", "pos", "item_id", "item_idx"))


def session_item_indices(indexed_clicks):
    """Per session id: ``items`` (the known items' indices in click order), ``n_clicks``,
    ``n_known`` and ``n_rows`` (input rows with this id: > 1 for a duplicated id; the null id's
    row counts the rows without an id)."""
    from pyspark.sql import functions as F

    known = F.when(F.col("item_idx").isNotNull(), F.struct("pos", "item_idx"))
    first_of_row = F.col("pos").isNull() | (F.col("pos") == 0)   # exactly one per input row
    grouped = indexed_clicks.groupBy("session_id").agg(
        F.count("pos").alias("n_clicks"),
        F.count("item_idx").alias("n_known"),
        F.count(F.when(first_of_row, 1)).alias("n_rows"),
        F.array_sort(F.collect_list(known)).alias("known"),
    )
    return grouped.select(
        "session_id",
        F.transform("known", lambda c: c["item_idx"]).alias("items"),
        F.col("n_clicks").cast("int").alias("n_clicks"),
        F.col("n_known").cast("int").alias("n_known"),
        F.col("n_rows").cast("int").alias("n_rows"),
    )


def session_counts(indexed_sessions, max_len: int):
    """One row of counts over :func:`session_item_indices`' output (null id row included)."""
    from pyspark.sql import functions as F

    has_id = F.col("session_id").isNotNull()

    def total(value, where=has_id):
        return F.coalesce(F.sum(F.when(where, value)), F.lit(0)).cast("long")

    no_known = has_id & (F.col("n_known") == 0)
    return indexed_sessions.agg(
        total(F.col("n_rows"), F.lit(True)).alias("rows_read"),
        total(F.col("n_rows"), ~has_id).alias("null_session_ids"),
        total(F.col("n_rows") - 1, has_id & (F.col("n_rows") > 1)).alias("duplicate_rows"),
        total(F.lit(1)).alias("sessions"),
        total(F.col("n_clicks")).alias("clicks_read"),
        total(F.col("n_clicks") - F.col("n_known")).alias("unknown_items_dropped"),
        total(F.lit(1), no_known & (F.col("n_clicks") == 0)).alias("sessions_empty"),
        total(F.lit(1), no_known & (F.col("n_clicks") > 0)).alias("sessions_all_unknown"),
        total(F.lit(1), has_id & (F.col("n_known") > max_len)).alias("sessions_truncated"),
    )


def padded_sessions(indexed_sessions, max_len: int):
    """``items`` = the last ``max_len`` known items, right-padded with 0 to exactly ``max_len``
    (the shards' convention), and ``length``. Only sessions with a known item."""
    from pyspark.sql import functions as F

    n = F.size("items")
    window = F.slice("items", F.greatest(n - F.lit(max_len - 1), F.lit(1)), F.lit(max_len))
    length = F.size(window)
    padding = F.array_repeat(F.lit(0).cast("int"), F.lit(max_len) - length)
    return (indexed_sessions.where(F.col("n_known") > 0)
            .select("session_id", F.concat(window, padding).alias("items"),
                    length.cast("int").alias("length")))


def ngc_transition_weights(padded, item_graph, max_len: int):
    """Adds ``ngc_w`` (float [max_len]): the global graph's ``weight`` of ``items[i-1] -> items[i]``
    inside the padded window, 0 at i = 0, on padding and for unknown edges (the shards' rule)."""
    from pyspark.sql import functions as F

    pairs = padded.select(
        "session_id",
        F.posexplode(F.arrays_zip(F.slice("items", 1, max_len - 1).alias("src_idx"),
                                  F.slice("items", 2, max_len - 1).alias("dst_idx"))).alias("p", "e"),
    ).select("session_id", (F.col("p") + 1).alias("pos"), F.col("e.src_idx").alias("src_idx"),
             F.col("e.dst_idx").alias("dst_idx")).where(F.col("dst_idx") > 0)
    edges = item_graph.select(F.col("src_idx").cast("int"), F.col("dst_idx").cast("int"),
                              F.col("weight").cast("float").alias("w"))
    weights = (pairs.join(edges, on=["src_idx", "dst_idx"], how="inner")
               .groupBy("session_id").agg(F.map_from_entries(F.collect_list(F.struct("pos", "w"))).alias("wmap")))
    ngc_w = F.transform(F.sequence(F.lit(0), F.lit(max_len - 1)),
                        lambda i: F.coalesce(F.element_at(F.col("wmap"), i), F.lit(0.0).cast("float")))
    return (padded.join(weights, on="session_id", how="left")
            .select("session_id", "items", "length", ngc_w.alias("ngc_w")))


def explode_top_k(scored):
    """(session_id, item_idx array, score array) -> one row per (session_id, rank 1..k)."""
    from pyspark.sql import functions as F

    return (scored.select("session_id", F.posexplode(F.arrays_zip("item_idx", "score")).alias("pos", "top"))
            .select("session_id", (F.col("pos") + 1).cast("int").alias("rank"),
                    F.col("top.item_idx").alias("item_idx"), F.col("top.score").alias("score"))
            .where(F.col("score") > F.lit(float("-inf"))))  # --exclude-seen on a tiny catalogue


def with_item_ids(ranked, vocab, model_version: str, source: str):
    """The output schema: session_id, rank, item_id (original id), score, model_version, source."""
    from pyspark.sql import functions as F

    index = vocab.select(F.col("item_idx").cast("int").alias("item_idx"),
                         F.col("item_id").cast("string").alias("item_id"))
    return (ranked.join(F.broadcast(index), on="item_idx", how="inner")
            .select("session_id", F.col("rank").cast("int").alias("rank"), "item_id",
                    F.col("score").cast("float").alias("score"),
                    F.lit(model_version).cast("string").alias("model_version"),
                    F.lit(source).alias("source")))


def popular_items(vocab, k: int):
    """The k most popular items (``support`` desc, item_idx asc) with rank and score = support."""
    from pyspark.sql import functions as F

    ranked = vocab.agg(F.slice(F.sort_array(F.collect_list(F.struct(
        (-F.col("support").cast("long")).alias("neg_support"),
        F.col("item_idx").cast("int").alias("item_idx")))), 1, k).alias("top"))
    return (ranked.select(F.posexplode("top").alias("pos", "t"))
            .select((F.col("pos") + 1).cast("int").alias("rank"), F.col("t.item_idx").alias("item_idx"),
                    (-F.col("t.neg_support")).cast("float").alias("score")))


def popular_recommendations(indexed_sessions, vocab, k: int):
    """Sessions with no known item (empty, null or all unknown) -> the k most popular items."""
    from pyspark.sql import functions as F

    fallback = indexed_sessions.where(F.col("n_known") == 0).select("session_id")
    return fallback.crossJoin(F.broadcast(popular_items(vocab, k))).select(
        "session_id", "rank", "item_idx", "score")


# ---- scoring inside the executors ------------------------------------------------------------
def make_partition_scorer(model_dir: str, k: int, max_len: int, batch_size: int, device: str,
                          exclude_seen: bool, torch_threads: int, with_ngc: bool
                          ) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The mapInArrow function: Arrow batches of (session_id, items[L], length[, ngc_w[L]]) ->
    Arrow batches of (session_id, item_idx[k], score[k]). Only plain values are captured, so the
    closure ships small; the model is loaded by path in the worker, once (srgnn.scoring cache)."""

    def score_partition(batches):
        import numpy as np
        import pyarrow as pa
        import torch

        from srgnn.scoring import cached_model, pick_device, score_arrays

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        dev = pick_device(device)
        model, _ = cached_model(model_dir, dev)
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            items = batch.column("items").flatten().to_numpy(zero_copy_only=False).reshape(n, max_len)
            lengths = batch.column("length").to_numpy(zero_copy_only=False)
            ngc_w = None
            if with_ngc:
                ngc_w = batch.column("ngc_w").flatten().to_numpy(zero_copy_only=False).reshape(n, max_len)
            idx, val = score_arrays(model, items, lengths, k, batch_size=batch_size, device=dev,
                                    ngc_w=ngc_w, exclude_seen=exclude_seen)
            kk = idx.shape[1]
            offsets = pa.array(np.arange(0, n * kk + 1, kk, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [batch.column("session_id"),
                 pa.ListArray.from_arrays(offsets, pa.array(idx.reshape(-1), type=pa.int32())),
                 pa.ListArray.from_arrays(offsets, pa.array(val.reshape(-1), type=pa.float32()))],
                names=["session_id", "item_idx", "score"])

    return score_partition


SCORED_SCHEMA = "session_id string, item_idx array<int>, score array<float>"


def model_recommendations(padded, scorer, partitions: int):
    """Score padded sessions in the executors: (session_id, rank, item_idx, score)."""
    return explode_top_k(padded.repartition(partitions).mapInArrow(scorer, SCORED_SCHEMA))


def default_torch_threads(spark) -> int:
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, sc.defaultParallelism))
    return max(1, int(sc.getConf().get("spark.task.cpus", "1")))


# ---- the stage -------------------------------------------------------------------------------
def recommend(spark, cfg: RecommendConfig) -> dict[str, Any]:
    """Write ``recommendations`` for ``cfg.run_date`` and return (and log, and save) the stats."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cfg.validate_required()
    t0 = time.time()
    store = TableStore(cfg.output, cfg.table_format)
    model_dir = os.path.abspath(local_path(cfg.resolved_model_dir()))
    config = check_model_dir(model_dir)
    vocab = store.read(spark, "item_vocab", cfg.run_date)
    match = check_model_matches(spark, config, model_dir, vocab, store, cfg.run_date, cfg.check_manifest)
    model_version = str(config.get("model_version") or os.path.basename(model_dir))
    max_len = cfg.max_len or int(config["max_len"])
    variant = str(config["model"].get("variant", "srgnn")) if isinstance(config["model"], dict) else "srgnn"
    with_ngc = variant == "ngc"
    log.info("model %s (version %s, variant %s, n_items %s), max_len %d, k %d",
             model_dir, model_version, variant, config["n_items"], max_len, cfg.k)

    source, source_name = read_sessions_source(spark, cfg, store)
    sessions = sessions_to_score(source, cfg.session_id_col, cfg.items_col, cfg.split, source_name)
    indexed_all = session_item_indices(clicks_with_item_index(session_clicks(sessions), vocab))
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
            padded = ngc_transition_weights(padded, store.read(spark, "item_graph", cfg.run_date), max_len)
        scorer = make_partition_scorer(model_dir, cfg.k, max_len, cfg.batch_size, cfg.device,
                                       cfg.exclude_seen, threads, with_ngc)
        from_model = with_item_ids(model_recommendations(padded, scorer, partitions), vocab,
                                   model_version, SOURCE_MODEL)
        from_popular = with_item_ids(popular_recommendations(indexed, vocab, cfg.k), vocab,
                                     model_version, SOURCE_POPULAR)
        log.info("scoring %d sessions from %s in %d partitions (%d torch threads each, batch %d)",
                 counts["sessions"], source_name, partitions, threads, cfg.batch_size)
        target = store.write(from_model.unionByName(from_popular), TABLE, cfg.run_date)
    finally:
        indexed_all.unpersist()

    written = store.read(spark, TABLE, cfg.run_date)
    by_source = {r["source"]: int(r["count"]) for r in written.groupBy("source").count().collect()}
    elapsed = time.time() - t0
    n_sessions = counts["sessions"]
    n_popular = counts["sessions_empty"] + counts["sessions_all_unknown"]
    stats = {
        "run_date": cfg.run_date,
        "source": source_name,
        "split": cfg.split,
        "model_dir": model_dir,
        "model_version": model_version,
        "variant": variant,
        "k": cfg.k,
        "max_len": max_len,
        **{key: int(value) for key, value in counts.items() if key != "duplicate_rows"},
        "sessions_model": n_sessions - n_popular,
        "sessions_popular": n_popular,
        "rows_written": sum(by_source.values()),
        "rows_model": by_source.get(SOURCE_MODEL, 0),
        "rows_popular": by_source.get(SOURCE_POPULAR, 0),
        "exclude_seen": cfg.exclude_seen,
        "manifest_checked": match["manifest_checked"],
        "output": target,
        "seconds": round(elapsed, 3),
        "sessions_per_s": round(n_sessions / elapsed, 1) if elapsed > 0 else None,
    }
    stats_path = write_json_atomic(f"{store.root}/stats/run_date={cfg.run_date}/recommend.json", stats)
    log.info("recommendations: %d sessions (%d model, %d popular; %d null ids skipped, %d unknown "
             "items dropped), %d rows -> %s; stats %s; %.1f s",
             n_sessions, stats["sessions_model"], n_popular, stats["null_session_ids"],
             stats["unknown_items_dropped"],
             stats["rows_written"], target, stats_path, elapsed)
    return stats


def session_recommendations(spark, cfg: ShowRecommendationsConfig):
    """One session's rows of ``recommendations`` as a pandas DataFrame ordered by rank."""
    from pyspark.sql import functions as F

    cfg.validate_required()
    table = TableStore(cfg.output, cfg.table_format).read(spark, TABLE, cfg.run_date)
    rows = (table.where(F.col("session_id") == cfg.session_id)
            .select("rank", "item_id", "score", "source", "model_version").orderBy("rank"))
    pdf = rows.toPandas()
    if pdf.empty:
        raise InputError(f"session {cfg.session_id!r} has no rows in table {TABLE} "
                         f"run_date={cfg.run_date} under {cfg.output}")
    return pdf
