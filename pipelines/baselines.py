"""Fitting the baselines (POP, S-POP, item-kNN, SR, V-SKNN) with Spark.

The statistics that need the whole training set (click popularity, item co-occurrence, next-item
rules, the item -> recent-sessions index) are computed with built-in functions as small DataFrames
and collected to the driver as flat numpy arrays (CSR lists); the scorers that use them are in
:mod:`srgnn.baselines` (numpy/torch, no Spark), which also describes the methods and their ties.

Training data. The baselines learn from the sessions SR-GNN learnt from: stage 1's ``train``
split restricted to the session ids present in stage 2's ``train`` shard (so the ``valid``
hold-out stays held out, and ``--fraction`` is respected). SR with ``sr_steps = 1`` reads stage 2's
``item_graph`` (all of stage 2's training transitions) instead.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from srgnn.baselines import (BASELINES, BaselineParams, FittedBaselines, LastItemListScorer, PopScorer,
                             SPopScorer, VSKNNScorer, csr, popularity_tie_break)
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.log import get_logger

log = get_logger(__name__)

SESSIONS_COLUMNS = ("session_id", "split", "item_idx", "session_order")
GRAPH_COLUMNS = ("src_idx", "dst_idx", "count")


# =============================================================================================
# Fit: Spark transforms (pure DataFrame -> DataFrame)
# =============================================================================================
def require_columns(df: DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {missing}; found {df.columns}")


def training_sessions(sessions: DataFrame, train_session_ids: DataFrame | None = None) -> DataFrame:
    """The sessions the model trained on: ``split = 'train'``, optionally restricted to the
    session ids of the train shard. Columns: ``session_order`` long, ``item_idx`` array<int>."""
    train = sessions.where(F.col("split") == "train")
    if train_session_ids is not None:
        train = train.join(train_session_ids.select("session_id").distinct(), "session_id", "left_semi")
    return train.select(F.col("session_order").cast("long").alias("session_order"),
                        F.col("item_idx"))


def item_popularity(train: DataFrame) -> DataFrame:
    """Training clicks per item: ``item_idx``, ``clicks``."""
    clicks = train.select(F.explode("item_idx").alias("item_idx"))
    return clicks.groupBy("item_idx").agg(F.count(F.lit(1)).alias("clicks"))


def session_item_sets(train: DataFrame) -> DataFrame:
    """One row per (session, distinct item): ``session_order``, ``item_idx``."""
    return train.select("session_order", F.explode(F.array_distinct("item_idx")).alias("item_idx"))


def item_session_support(item_sets: DataFrame) -> DataFrame:
    """Training sessions containing each item: ``item_idx``, ``sessions``."""
    return item_sets.groupBy("item_idx").agg(F.count(F.lit(1)).alias("sessions"))


def item_cooccurrence(train: DataFrame) -> DataFrame:
    """Sessions in which two different items both occur: ``src_idx``, ``dst_idx``, ``sessions``
    (both directions; built per session with array functions, no self-join)."""
    sets = train.select(F.array_distinct("item_idx").alias("items"))
    src = sets.select("items", F.explode("items").alias("src_idx"))
    pairs = src.select("src_idx", F.explode("items").alias("dst_idx")).where(F.col("src_idx") != F.col("dst_idx"))
    return pairs.groupBy("src_idx", "dst_idx").agg(F.count(F.lit(1)).alias("sessions"))


def _top_per_src(scored: DataFrame, popularity: DataFrame, score_col: str, n: int) -> DataFrame:
    """Keep the top ``n`` destinations per source by (score desc, dst clicks desc, dst idx asc) and
    number them ``rank`` 0..n-1 in that order (the scorers' order, popularity tie-break included)."""
    pop = popularity.select(F.col("item_idx").alias("dst_idx"), F.col("clicks").alias("dst_clicks"))
    with_pop = scored.join(F.broadcast(pop), "dst_idx", "left").fillna(0, subset=["dst_clicks"])
    order = Window.partitionBy("src_idx").orderBy(F.col(score_col).desc(), F.col("dst_clicks").desc(),
                                                  F.col("dst_idx").asc())
    ranked = with_pop.withColumn("rank", F.row_number().over(order) - 1)
    return ranked.where(F.col("rank") < n).select("src_idx", "dst_idx", score_col, "rank")


def item_knn_neighbours(cooccurrence: DataFrame, support: DataFrame, popularity: DataFrame,
                        n: int, lam: float = 0.0, alpha: float = 0.5) -> DataFrame:
    """Top-``n`` item neighbours by ``co(i,j) / (supp(i)^alpha * supp(j)^(1-alpha) + lambda)``:
    ``src_idx``, ``dst_idx``, ``sim``, ``rank``."""
    s_src = support.select(F.col("item_idx").alias("src_idx"), F.col("sessions").alias("src_sessions"))
    s_dst = support.select(F.col("item_idx").alias("dst_idx"), F.col("sessions").alias("dst_sessions"))
    joined = cooccurrence.join(F.broadcast(s_src), "src_idx").join(F.broadcast(s_dst), "dst_idx")
    denominator = (F.pow(F.col("src_sessions"), F.lit(alpha)) * F.pow(F.col("dst_sessions"), F.lit(1.0 - alpha))
                   + F.lit(lam))
    scored = joined.select("src_idx", "dst_idx", (F.col("sessions") / denominator).alias("sim"))
    return _top_per_src(scored, popularity, "sim", n)


def sequential_rules(item_graph: DataFrame, popularity: DataFrame, n: int) -> DataFrame:
    """Top-``n`` rules ``src -> dst`` per source item by transition count (stage 2's graph):
    ``src_idx``, ``dst_idx``, ``count``, ``rank``."""
    rules = item_graph.select(F.col("src_idx").cast("int"), F.col("dst_idx").cast("int"),
                              F.col("count").cast("long"))
    return _top_per_src(rules, popularity, "count", n)


def multi_step_rules(train: DataFrame, popularity: DataFrame, n: int, steps: int) -> DataFrame:
    """session-rec's SequentialRules with its default weighting ``div``: for each click at position
    p and each step s = 1..``steps`` with p - s >= 0, the rule ``items[p - s] -> items[p]`` gains
    ``1 / s``; summed over the training sessions, top ``n`` per source: ``src_idx``, ``dst_idx``,
    ``weight``, ``rank``. The weights are held as exact integers ``lcm(1..steps) / s`` (the same
    order as the sums of ``1 / s``), so equal sums compare equal and the popularity tie-break decides."""
    scale = math.lcm(*range(1, steps + 1))
    clicks = (train.select("item_idx", F.posexplode("item_idx").alias("pos", "dst_idx"))
              .where(F.col("pos") > 0))
    pairs = clicks.select("item_idx", "pos", "dst_idx",
                          F.explode(F.sequence(F.lit(1), F.least(F.col("pos"), F.lit(steps)))).alias("step"))
    rules = pairs.select(F.element_at("item_idx", (F.col("pos") - F.col("step") + 1).cast("int")).alias("src_idx"),
                         F.col("dst_idx").cast("int").alias("dst_idx"),
                         (F.lit(scale) / F.col("step")).cast("long").alias("w"))
    summed = rules.groupBy("src_idx", "dst_idx").agg(F.sum("w").alias("weight"))
    return _top_per_src(summed, popularity, "weight", n)


def recent_sessions_by_item(item_sets: DataFrame, m: int) -> DataFrame:
    """V-SKNN's session index: for each item its ``m`` most recent training sessions
    (by ``session_order``): ``item_idx``, ``session_order``."""
    newest_first = Window.partitionBy("item_idx").orderBy(F.col("session_order").desc())
    ranked = item_sets.withColumn("recency", F.row_number().over(newest_first))
    return ranked.where(F.col("recency") <= m).select("item_idx", "session_order")


def indexed_session_items(item_sets: DataFrame, index: DataFrame) -> DataFrame:
    """The distinct items of every session that the index can return: ``session_order``, ``item_idx``."""
    needed = index.select("session_order").distinct()
    return item_sets.join(needed, "session_order", "left_semi").select("session_order", "item_idx")


def _collect(df: DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    table = df.select(*columns).toArrow()
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def check_sessions(sessions: DataFrame) -> None:
    require_columns(sessions, SESSIONS_COLUMNS, "table 'sessions'")


def check_item_graph(item_graph: DataFrame) -> None:
    require_columns(item_graph, GRAPH_COLUMNS, "table 'item_graph'")


def fit_baselines(train: DataFrame, item_graph: DataFrame | None, n_items: int, params: BaselineParams,
                  names: Sequence[str] = BASELINES, clock: Callable[[], float] | None = None) -> FittedBaselines:
    """Fit the named baselines on ``train`` (from :func:`training_sessions`) and, for SR,
    ``item_graph``. Item indices must lie in 1..n_items."""
    import time

    clock = clock or time.perf_counter
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    t0 = clock()
    train = train.persist()
    popularity = item_popularity(train).persist()
    pop = _collect(popularity, ["item_idx", "clicks"])
    n_train = train.count()
    if n_train == 0:
        raise InputError("table 'sessions': no training sessions to fit the baselines on")
    bad = (pop["item_idx"] < 1) | (pop["item_idx"] > n_items)
    if bad.any():
        raise InputError(f"table 'sessions': {int(bad.sum())} item index(es) outside 1..{n_items} "
                         f"(e.g. {int(pop['item_idx'][bad][0])}); stage 1 and stage 2 disagree")
    clicks = np.zeros(n_items, dtype=np.int64)
    clicks[pop["item_idx"].astype(np.int64) - 1] = pop["clicks"]
    tie_break = popularity_tie_break(clicks)
    popularity_s = clock() - t0
    fitted = FittedBaselines(scorers={}, clicks=clicks)
    fitted.stats.update(train_sessions=int(n_train), train_clicks=int(clicks.sum()),
                        items_with_clicks=int((clicks > 0).sum()))
    log.info("baselines: %d training sessions, %d clicks, %d/%d items clicked", n_train, clicks.sum(),
             (clicks > 0).sum(), n_items)

    if "pop" in names:
        fitted.scorers["pop"] = PopScorer(n_items, tie_break)
        fitted.fit_seconds["pop"] = popularity_s
    if "spop" in names:
        fitted.scorers["spop"] = SPopScorer(n_items, tie_break)
        fitted.fit_seconds["spop"] = popularity_s
    if "itemknn" in names:
        t = clock()
        item_sets = session_item_sets(train)
        nb = item_knn_neighbours(item_cooccurrence(train), item_session_support(item_sets), popularity,
                                 params.knn_neighbours, params.knn_lambda, params.knn_alpha)
        got = _collect(nb, ["src_idx", "dst_idx", "rank"])
        ptr, values = csr(got["src_idx"], got["dst_idx"], got["rank"], n_items + 1)
        fitted.scorers["itemknn"] = LastItemListScorer("itemknn", n_items, tie_break, ptr, values)
        fitted.fit_seconds["itemknn"] = popularity_s + clock() - t
        fitted.stats["itemknn_pairs"] = int(len(values))
    if "sr" in names:
        t = clock()
        if params.sr_steps == 1:          # direct successors: stage 2's graph holds their counts
            if item_graph is None:
                raise InputError("baseline 'sr' with sr_steps=1 needs stage 2's 'item_graph' table")
            check_item_graph(item_graph)
            sr = sequential_rules(item_graph, popularity, params.sr_rules)
        else:
            sr = multi_step_rules(train, popularity, params.sr_rules, params.sr_steps)
        rules = _collect(sr, ["src_idx", "dst_idx", "rank"])
        bad = (rules["dst_idx"] < 1) | (rules["dst_idx"] > n_items) | (rules["src_idx"] < 1) | (rules["src_idx"] > n_items)
        if bad.any():
            where = "table 'item_graph'" if params.sr_steps == 1 else "table 'sessions'"
            raise InputError(f"{where}: {int(bad.sum())} rule(s) with an item index outside 1..{n_items}")
        ptr, values = csr(rules["src_idx"], rules["dst_idx"], rules["rank"], n_items + 1)
        fitted.scorers["sr"] = LastItemListScorer("sr", n_items, tie_break, ptr, values)
        fitted.fit_seconds["sr"] = popularity_s + clock() - t
        fitted.stats["sr_rules"] = int(len(values))
    if "vsknn" in names:
        t = clock()
        item_sets = session_item_sets(train).persist()
        index = recent_sessions_by_item(item_sets, params.vsknn_sample).persist()
        idx = _collect(index, ["item_idx", "session_order"])
        members = _collect(indexed_session_items(item_sets, index), ["session_order", "item_idx"])
        index.unpersist()
        item_sets.unpersist()
        # session ids 0..S-1 in recency order (larger = more recent)
        orders = np.unique(members["session_order"])
        sid_members = np.searchsorted(orders, members["session_order"])
        sid_index = np.searchsorted(orders, idx["session_order"])
        session_ptr, session_items = csr(sid_members, members["item_idx"], None, len(orders))
        item_ptr, item_sessions = csr(idx["item_idx"], sid_index, None, n_items + 1)
        fitted.scorers["vsknn"] = VSKNNScorer(n_items, tie_break, item_ptr, item_sessions, session_ptr,
                                              session_items, params.vsknn_k, params.vsknn_sample,
                                              params.vsknn_score_decay)
        fitted.fit_seconds["vsknn"] = popularity_s + clock() - t
        fitted.stats.update(vsknn_index_entries=int(len(item_sessions)), vsknn_sessions=int(len(orders)))
    popularity.unpersist()
    train.unpersist()
    return fitted
