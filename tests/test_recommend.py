"""Stage 4 (issue 6): top-k recommendations scored inside Spark."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from chispa import assert_df_equality
from pyspark.sql import types as T

from pipelines.errors import InputError
from pipelines.recommend import (RecommendConfig, explode_top_k, padded_sessions, popular_items,
                                 recommend, session_clicks, session_item_indices,
                                 clicks_with_item_index, sessions_to_score)
from pipelines.tables import TableStore
from srgnn.data import pad_prefixes
from srgnn.scoring import mask_seen, top_k

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = "2024-03-05"


# ---- torch side ------------------------------------------------------------------------------
def reference_top_k(scores: torch.Tensor, k: int):
    """Rank by (score desc, column asc) with a plain per-row Python sort."""
    vals, cols = [], []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        cols.append(order)
        vals.append([row[j] for j in order])
    return torch.tensor(vals), torch.tensor(cols)


def test_top_k_breaks_ties_by_item_index_inside_and_at_the_boundary():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0],    # ties inside the top 3
                           [5.0, 1.0, 1.0, 1.0, 1.0, 1.0],    # tie at the boundary (k-th)
                           [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])   # all tied
    vals, cols = top_k(scores, 3)
    assert cols.tolist() == [[1, 2, 4], [0, 1, 2], [0, 1, 2]]
    assert vals.tolist() == [[3.0, 3.0, 3.0], [5.0, 1.0, 1.0], [0.5, 0.5, 0.5]]
    # Many ties on a bigger matrix: integer scores from a small range.
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (64, 300), generator=g).float()
    ref_vals, ref_cols = reference_top_k(scores, 20)
    vals, cols = top_k(scores, 20)
    assert torch.equal(cols, ref_cols) and torch.equal(vals, ref_vals)
    # k larger than the catalogue: everything, ranked.
    assert top_k(scores[:2, :5], 20)[1].shape == (2, 5)


def test_mask_seen_hides_the_sessions_items_but_not_item_one_for_padding():
    scores = torch.zeros(2, 5)
    items = torch.tensor([[3, 5, 0, 0], [2, 0, 0, 0]])  # right-padded item indices (1-based)
    masked = mask_seen(scores.clone(), items)
    assert torch.isinf(masked).nonzero().tolist() == [[0, 2], [0, 4], [1, 1]]


# ---- Spark transforms ------------------------------------------------------------------------
SESSIONS_SCHEMA = T.StructType([T.StructField("session_id", T.StringType()),
                                T.StructField("item_ids", T.ArrayType(T.StringType()))])
VOCAB_SCHEMA = T.StructType([T.StructField("item_id", T.StringType()),
                             T.StructField("item_idx", T.IntegerType()),
                             T.StructField("support", T.LongType())])


@pytest.fixture(scope="module")
def small_vocab(spark):
    rows = [("a", 1, 5), ("b", 2, 9), ("c", 3, 9), ("d", 4, 1), ("e", 5, 7)]
    return spark.createDataFrame(rows, VOCAB_SCHEMA)


def test_session_item_indices_maps_through_the_vocabulary_and_counts(spark, small_vocab):
    raw = spark.createDataFrame([
        ("s1", ["c", "x", "a", "c"]),     # unknown x dropped, order and repeats kept
        ("s2", []),                       # empty
        ("s3", None),                     # null item list
        ("s4", ["x", None, "y"]),         # nothing known (a null item id counts as unknown)
        (None, ["a", "b"]),               # null session id: skipped
        ("s5", ["e"]),
    ], SESSIONS_SCHEMA)
    got = session_item_indices(clicks_with_item_index(session_clicks(raw), small_vocab))
    expected = spark.createDataFrame(
        [("s1", [3, 1, 3], 4, 3), ("s2", [], 0, 0), ("s3", [], 0, 0), ("s4", [], 3, 0), ("s5", [5], 1, 1)],
        "session_id string, items array<int>, n_clicks int, n_known int")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_sessions_to_score_casts_ids_filters_the_split_and_names_missing_columns(spark):
    src = spark.createDataFrame([(7, [10, 11], "test"), (8, [12], "train")],
                                "sid long, clicks array<long>, split string")
    got = sessions_to_score(src, "sid", "clicks", "test")
    expected = spark.createDataFrame([("7", ["10", "11"])], SESSIONS_SCHEMA)
    assert_df_equality(got, expected, ignore_nullable=True)
    assert sessions_to_score(src, "sid", "clicks", "all").count() == 2
    with pytest.raises(InputError, match=r"my_src: column\(s\) \['item_ids'\] not found"):
        sessions_to_score(src, "sid", "item_ids", "all", name="my_src")
    with pytest.raises(InputError, match="'split' must be an array"):
        sessions_to_score(src, "sid", "split", "all")


def test_padded_sessions_match_the_shards_convention(spark):
    prefixes = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 2], [1, 2, 3, 4, 5]]
    df = spark.createDataFrame([(f"s{i}", p, len(p), len(p)) for i, p in enumerate(prefixes)] + [("z", [], 2, 0)],
                               "session_id string, items array<int>, n_clicks int, n_known int")
    rows = {r["session_id"]: r for r in padded_sessions(df, 5).collect()}
    items, lengths = pad_prefixes(prefixes, 5)
    assert sorted(rows) == ["s0", "s1", "s2", "s3"]  # no known item: not scored
    for i in range(len(prefixes)):
        assert rows[f"s{i}"]["items"] == items[i].tolist()
        assert rows[f"s{i}"]["length"] == lengths[i]


def test_explode_top_k_and_popular_items(spark, small_vocab):
    scored = spark.createDataFrame([("s1", [3, 1], [2.5, 1.0]), ("s2", [2, 4], [0.5, float("-inf")])],
                                   "session_id string, item_idx array<int>, score array<float>")
    expected = spark.createDataFrame([("s1", 1, 3, 2.5), ("s1", 2, 1, 1.0), ("s2", 1, 2, 0.5)],
                                     "session_id string, rank int, item_idx int, score float")
    assert_df_equality(explode_top_k(scored), expected, ignore_row_order=True, ignore_nullable=True)
    # support 9, 9, 7, 5, 1: the tie between items 2 and 3 goes to the lower index.
    expected_pop = spark.createDataFrame([(1, 2, 9.0), (2, 3, 9.0), (3, 5, 7.0)],
                                         "rank int, item_idx int, score float")
    assert_df_equality(popular_items(small_vocab, 3), expected_pop, ignore_nullable=True)
