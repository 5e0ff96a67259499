"""Stage 4's transforms: pure ``DataFrame -> DataFrame`` functions (built-in functions only).

    sessions -> sessions_to_score -> session_clicks -> clicks_with_item_index (join with item_vocab)
      -> session_item_indices
      -> sessions with a known item:  padded_sessions [-> ngc_transition_weights] -> model_recommendations
                                      -> with_item_ids                                  source 'model'
      -> sessions with no known item: popular_recommendations -> with_item_ids          source 'popular'

The scorer is SR-GNN (``executor.make_partition_scorer``) or a fitted baseline
(``executor.make_baseline_partition_scorer``); both take and return the same Arrow batches. The
vocabulary that indexes the clicks is the scorer's: tonight's ``item_vocab``, or for a model of an
earlier night its export's ``item_vocab.parquet`` (:func:`export_vocabulary`).

Ranks follow ``srgnn.metrics``: score descending, ties by item index ascending. The prefix fed to
the model is the last ``max_len`` known clicks, right-padded: the shards' convention, so scoring a
test example here gives the same logits as the trainer's evaluation.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from srgnn.core.errors import InputError

SCORED_SCHEMA = "session_id string, item_idx array<int>, score array<float>"


def sessions_to_score(source, session_id_col: str, items_col: str, split: str, name: str = "sessions"):
    """session_id string, item_ids array<string> (click order) from any source (split filtered)."""
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
    return sessions.select("session_id", F.posexplode_outer("item_ids").alias("pos", "item_id"))


def clicks_with_item_index(clicks, vocab):
    """Clicks with their vocabulary index (null for an item the vocabulary does not know)."""
    index = vocab.select(F.col("item_id").cast("string").alias("item_id"),
                         F.col("item_idx").cast("int").alias("item_idx"))
    return (clicks.join(F.broadcast(index), on="item_id", how="left")
            .select("session_id", "pos", "item_id", "item_idx"))


def export_vocabulary(export_vocab):
    """An export's ``item_vocab.parquet`` (item_id, item_idx) as a vocabulary the transforms join
    with: item_id string, item_idx int, support long (null: popularity comes from tonight's vocabulary)."""
    return export_vocab.select(F.col("item_id").cast("string").alias("item_id"),
                               F.col("item_idx").cast("int").alias("item_idx"),
                               F.lit(None).cast("long").alias("support"))


def session_item_indices(indexed_clicks):
    """Per session id: ``items`` (the known items' indices in click order), ``n_clicks``,
    ``n_known`` and ``n_rows`` (input rows with this id: > 1 for a duplicated id; the null id's
    row counts the rows without an id)."""
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
    return (scored.select("session_id", F.posexplode(F.arrays_zip("item_idx", "score")).alias("pos", "top"))
            .select("session_id", (F.col("pos") + 1).cast("int").alias("rank"),
                    F.col("top.item_idx").alias("item_idx"), F.col("top.score").alias("score"))
            .where(F.col("score") > F.lit(float("-inf"))))  # --exclude-seen on a tiny catalogue


def with_item_ids(ranked, vocab, model_version: str, source: str, model: str = "srgnn"):
    """The output schema: session_id, rank, item_id (original id), score, model_version, source,
    model. ``vocab`` maps the scorer's item indices back to item ids (for a model of an earlier
    night: its export's own vocabulary)."""
    index = vocab.select(F.col("item_idx").cast("int").alias("item_idx"),
                         F.col("item_id").cast("string").alias("item_id"))
    return (ranked.join(F.broadcast(index), on="item_idx", how="inner")
            .select("session_id", F.col("rank").cast("int").alias("rank"), "item_id",
                    F.col("score").cast("float").alias("score"),
                    F.lit(model_version).cast("string").alias("model_version"),
                    F.lit(source).alias("source"),
                    F.lit(model).cast("string").alias("model")))


def popular_items(vocab, k: int):
    """The k most popular items (``support`` desc, item_idx asc) with rank and score = support."""
    ranked = vocab.agg(F.slice(F.sort_array(F.collect_list(F.struct(
        (-F.col("support").cast("long")).alias("neg_support"),
        F.col("item_idx").cast("int").alias("item_idx")))), 1, k).alias("top"))
    return (ranked.select(F.posexplode("top").alias("pos", "t"))
            .select((F.col("pos") + 1).cast("int").alias("rank"), F.col("t.item_idx").alias("item_idx"),
                    (-F.col("t.neg_support")).cast("float").alias("score")))


def popular_recommendations(indexed_sessions, vocab, k: int):
    """Sessions with no known item (empty, null or all unknown) -> the k most popular items."""
    fallback = indexed_sessions.where(F.col("n_known") == 0).select("session_id")
    return fallback.crossJoin(F.broadcast(popular_items(vocab, k))).select(
        "session_id", "rank", "item_idx", "score")


def model_recommendations(padded: DataFrame, scorer: Callable[[Iterator[Any]], Iterator[Any]],
                          partitions: int) -> DataFrame:
    """Score padded sessions in the executors with ``scorer`` (a mapInArrow function from
    :func:`pipelines.recommend.executor.make_partition_scorer`): (session_id, rank, item_idx, score)."""
    return explode_top_k(padded.repartition(partitions).mapInArrow(scorer, SCORED_SCHEMA))
