"""Stage 4: top-k recommendations scored inside Spark."""
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
from pyspark.sql import functions as F
from pyspark.sql import types as T

from srgnn.core.errors import InputError
from pipelines.recommend import RecommendConfig, recommend
from pipelines.recommend.transforms import (clicks_with_item_index, explode_top_k, padded_sessions,
                                            popular_items, session_clicks, session_counts,
                                            session_item_indices, sessions_to_score)
from pipelines.tables import TableStore
from srgnn.data import pad_prefixes
from srgnn.metrics import ranked_top_k
from srgnn.scoring import mask_seen

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
    vals, cols = ranked_top_k(scores, 3)
    assert cols.tolist() == [[1, 2, 4], [0, 1, 2], [0, 1, 2]]
    assert vals.tolist() == [[3.0, 3.0, 3.0], [5.0, 1.0, 1.0], [0.5, 0.5, 0.5]]
    # Many ties on a bigger matrix: integer scores from a small range.
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (64, 300), generator=g).float()
    ref_vals, ref_cols = reference_top_k(scores, 20)
    vals, cols = ranked_top_k(scores, 20)
    assert torch.equal(cols, ref_cols) and torch.equal(vals, ref_vals)
    # k larger than the catalogue: everything, ranked.
    assert ranked_top_k(scores[:2, :5], 20)[1].shape == (2, 5)


def test_mask_seen_hides_the_sessions_items_but_not_item_one_for_padding():
    scores = torch.zeros(2, 5)
    items = torch.tensor([[3, 5, 0, 0], [2, 0, 0, 0]])  # right-padded item indices (1-based)
    masked = mask_seen(scores.clone(), items)
    assert torch.isinf(masked).nonzero().tolist() == [[0, 2], [0, 4], [1, 1]]


def test_config_from_cli_and_yaml(tmp_path):
    from srgnn.core.errors import ConfigError

    yaml_file = tmp_path / "nightly.yaml"
    yaml_file.write_text("recommend:\n  k: 10\n  split: all\n  batch_size: 64\n")
    cfg = RecommendConfig.from_args(["--config", str(yaml_file), "--output", "OUT", "--run-date", "2016-06-01",
                                     "--k", "5", "--exclude-seen", "--sessions", "p", "--items-col", "clicks"])
    assert (cfg.k, cfg.split, cfg.batch_size, cfg.exclude_seen, cfg.items_col) == (5, "all", 64, True, "clicks")
    assert cfg.resolved_model_dir().endswith("/OUT/models/run_date=2016-06-01")
    with pytest.raises(ConfigError, match="--k must be >= 1"):
        RecommendConfig.from_args(["--output", "OUT", "--run-date", "2016-06-01", "--k", "0"])
    with pytest.raises(ConfigError, match="missing required option"):
        RecommendConfig.from_args(["--output", "OUT"])


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
        (None, ["a", "b"]),               # null session ids: kept apart, to be counted
        (None, []),
        ("s5", ["e"]),
        ("s5", ["a", "b"]),               # a duplicated id: n_rows 2
    ], SESSIONS_SCHEMA)
    got = session_item_indices(clicks_with_item_index(session_clicks(raw), small_vocab))
    expected = spark.createDataFrame(
        [("s1", [3, 1, 3], 4, 3, 1), ("s2", [], 0, 0, 1), ("s3", [], 0, 0, 1), ("s4", [], 3, 0, 1),
         (None, [1, 2], 2, 2, 2), ("s5", [1, 2, 5], 3, 3, 2)],
        "session_id string, items array<int>, n_clicks int, n_known int, n_rows int")
    # s5's two rows merge in no set order: sort that one
    got = got.withColumn("items", F.when(F.col("session_id") == "s5", F.array_sort("items")).otherwise(F.col("items")))
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    counts = session_counts(got, max_len=2).first().asDict()
    assert counts == {"rows_read": 8, "null_session_ids": 2, "duplicate_rows": 1, "sessions": 5,
                      "clicks_read": 10, "unknown_items_dropped": 4, "sessions_empty": 2,
                      "sessions_all_unknown": 1, "sessions_truncated": 2}


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


# ---- the stage on a small hand-made OUT, with a random-weight model ---------------------------
N_ITEMS, MAX_LEN = 30, 5


def make_model(n_items: int = N_ITEMS, seed: int = 0):
    from srgnn.model import SRGNN, ModelConfig

    torch.manual_seed(seed)
    return SRGNN(ModelConfig(n_items=n_items, hidden_size=8, max_len=MAX_LEN))


@pytest.fixture(scope="module")
def small_out(spark, tmp_path_factory):
    """OUT with item_vocab (i1..i30), sessions (test and train) and an exported random model."""
    from srgnn.export import save_model

    out = str(tmp_path_factory.mktemp("rec_out"))
    store = TableStore(out)
    rng = np.random.default_rng(1)
    vocab = spark.createDataFrame([(f"i{j}", j, int(rng.integers(1, 50))) for j in range(1, N_ITEMS + 1)],
                                  VOCAB_SCHEMA)
    store.write(vocab, "item_vocab", RUN_DATE)
    sessions = []
    for s in range(12):
        n = int(rng.integers(1, 9))
        clicks = [int(x) for x in rng.integers(1, N_ITEMS + 1, n)]
        sessions.append((f"s{s}", "test" if s < 9 else "train", [f"i{c}" for c in clicks], clicks))
    store.write(spark.createDataFrame(sessions, "session_id string, split string, item_ids array<string>, "
                                                "item_idx array<int>"), "sessions", RUN_DATE)
    model = make_model()
    config = save_model(f"{out}/models/run_date={RUN_DATE}", model, {"manifest_hash": "hash-of-shards"})
    return {"output": out, "sessions": sessions, "model": model, "config": config}


def direct_top_k(model, prefixes, k, exclude_seen=False):
    """Scores computed straight from the model (no Spark): {row: (item indices, scores)}."""
    from srgnn.scoring import score_arrays

    items, lengths = pad_prefixes(prefixes, MAX_LEN)
    return score_arrays(model, items, lengths, k, batch_size=len(prefixes), exclude_seen=exclude_seen)


def table_by_session(spark, out, run_date=RUN_DATE):
    rows = TableStore(out).read(spark, "recommendations", run_date).orderBy("session_id", "rank").collect()
    got: dict[str, list] = {}
    for r in rows:
        got.setdefault(r["session_id"], []).append(r)
    return got


def test_recommend_scores_the_test_split_like_the_model_and_reruns_idempotently(spark, small_out):
    cfg = RecommendConfig(output=small_out["output"], run_date=RUN_DATE, k=4, batch_size=3, partitions=2)
    stats = recommend(spark, cfg)
    table = TableStore(small_out["output"]).read(spark, "recommendations", RUN_DATE)
    assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == [
        ("session_id", "string"), ("rank", "int"), ("item_id", "string"), ("score", "float"),
        ("model_version", "string"), ("source", "string"), ("model", "string"), ("run_date", "date")]
    test_sessions = [s for s in small_out["sessions"] if s[1] == "test"]
    got = table_by_session(spark, small_out["output"])
    assert sorted(got) == sorted(s[0] for s in test_sessions)
    idx, val = direct_top_k(small_out["model"], [s[3] for s in test_sessions], 4)
    for row, (sid, _, _, _) in enumerate(test_sessions):
        recs = got[sid]
        assert [r["rank"] for r in recs] == [1, 2, 3, 4]
        assert [r["item_id"] for r in recs] == [f"i{j}" for j in idx[row]]
        np.testing.assert_allclose([r["score"] for r in recs], val[row], rtol=1e-5, atol=1e-6)
        assert {(r["source"], r["model_version"]) for r in recs} == {("model", small_out["config"]["model_version"])}
    assert stats["sessions"] == stats["sessions_model"] == 9
    assert stats["rows_written"] == stats["rows_model"] == 36
    assert stats["unknown_items_dropped"] == stats["sessions_popular"] == stats["null_session_ids"] == 0
    saved = json.loads(Path(small_out["output"], "stats", f"run_date={RUN_DATE}", "recommend.json").read_text())
    assert saved["rows_written"] == 36
    # Rerun for the same date: the partition is replaced, not appended to.
    before = table.drop("run_date").toPandas().sort_values(["session_id", "rank"]).reset_index(drop=True)
    recommend(spark, cfg)
    after = (TableStore(small_out["output"]).read(spark, "recommendations", RUN_DATE).drop("run_date")
             .toPandas().sort_values(["session_id", "rank"]).reset_index(drop=True))
    assert len(after) == 36
    assert before.equals(after)


def test_messy_sessions_are_counted_fall_back_to_popular_and_never_crash(spark, small_out, tmp_path):
    long_session = [f"i{j}" for j in (1, 2, 3, 4, 5, 6, 7, 8)]
    rows = [
        ("a", ["i3", "zz", "i7", "i3"]),     # one unknown item dropped
        ("b", []),                           # empty -> popular
        ("c", None),                         # null list -> popular
        ("d", ["zz", None, "yy"]),           # nothing known (3 unknown) -> popular
        (None, ["i1"]),                      # null session id: skipped
        ("e", long_session),                 # longer than max_len: the last 5 clicks are scored
    ]
    src = str(tmp_path / "src")
    spark.createDataFrame(rows, "sid string, clicks array<string>").write.parquet(src)
    out = small_out["output"]
    cfg = RecommendConfig(output=out, run_date="2024-03-06", model_dir=f"{out}/models/run_date={RUN_DATE}",
                          sessions=src, session_id_col="sid", items_col="clicks", k=6, exclude_seen=True)
    # A second date of the vocabulary (same items) so that this run writes its own partition.
    store = TableStore(out)
    store.write(store.read(spark, "item_vocab", RUN_DATE), "item_vocab", "2024-03-06")
    stats = recommend(spark, cfg)
    assert {k: stats[k] for k in ("rows_read", "null_session_ids", "sessions", "sessions_model",
                                  "sessions_popular", "sessions_empty", "sessions_all_unknown",
                                  "unknown_items_dropped", "sessions_truncated", "clicks_read")} == {
        "rows_read": 6, "null_session_ids": 1, "sessions": 5, "sessions_model": 2, "sessions_popular": 3,
        "sessions_empty": 2, "sessions_all_unknown": 1, "unknown_items_dropped": 4, "sessions_truncated": 1,
        "clicks_read": 15}
    got = table_by_session(spark, out, "2024-03-06")
    assert sorted(got) == ["a", "b", "c", "d", "e"]
    support = {r["item_id"]: r["support"] for r in store.read(spark, "item_vocab", RUN_DATE).collect()}
    popular = sorted(support, key=lambda i: (-support[i], int(i[1:])))[:6]
    for sid in "bcd":
        assert [r["item_id"] for r in got[sid]] == popular
        assert [r["score"] for r in got[sid]] == [float(support[i]) for i in popular]
        assert {r["source"] for r in got[sid]} == {"popular"}
    idx, val = direct_top_k(small_out["model"], [[3, 7, 3], list(range(4, 9))], 6, exclude_seen=True)
    assert [r["item_id"] for r in got["a"]] == [f"i{j}" for j in idx[0]]
    assert [r["item_id"] for r in got["e"]] == [f"i{j}" for j in idx[1]]
    assert not {"i3", "i7"} & {r["item_id"] for r in got["a"]}       # --exclude-seen
    assert stats["rows_written"] == 5 * 6


def test_bad_model_or_vocabulary_is_one_clear_error(spark, small_out, tmp_path):
    import shutil

    from srgnn.export import save_model

    out = small_out["output"]
    base = dict(output=out, run_date=RUN_DATE)
    with pytest.raises(InputError, match="model folder not found: .*nowhere"):
        recommend(spark, RecommendConfig(**base, model_dir=str(tmp_path / "nowhere")))
    bigger = str(tmp_path / "bigger")
    save_model(bigger, make_model(N_ITEMS + 1))
    with pytest.raises(InputError, match=r"model/vocabulary mismatch: .*n_items=31 .*max item_idx=30"):
        recommend(spark, RecommendConfig(**base, model_dir=bigger))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(f"{out}/models/run_date={RUN_DATE}", corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(InputError, match="model.safetensors"):
        recommend(spark, RecommendConfig(**base, model_dir=str(corrupt)))
    (corrupt / "model.safetensors").write_bytes(b"\x80\x04garbage-not-a-safetensors-file")
    with pytest.raises(InputError, match="model.safetensors"):
        recommend(spark, RecommendConfig(**base, model_dir=str(corrupt)))
    # A manifest of this date whose hash is not the one the model was trained on.
    manifest = Path(out, "shards", f"run_date={RUN_DATE}", "_manifest.json")
    manifest.parent.mkdir(parents=True)
    try:
        manifest.write_text(json.dumps({"content_hash": "another-hash", "n_items": N_ITEMS}))
        with pytest.raises(InputError, match="model/manifest mismatch: .*hash-of-shards.*another-hash"):
            recommend(spark, RecommendConfig(**base))
    finally:
        shutil.rmtree(manifest.parent)
    dup = str(tmp_path / "dup")
    spark.createDataFrame([("x", ["i1"]), ("x", ["i2"])], SESSIONS_SCHEMA).write.parquet(dup)
    with pytest.raises(InputError, match=r"1 extra rows share a session id \(e.g. \['x'\]\)"):
        recommend(spark, RecommendConfig(**base, sessions=dup))


def test_ngc_models_get_their_edge_weights_from_item_graph(spark, small_out, tmp_path):
    """An SR-GNN-NGC model is scored with ngc_w joined from item_graph (same run date)."""
    from srgnn.export import save_model
    from srgnn.model import SRGNN, ModelConfig
    from srgnn.scoring import score_arrays

    out, run_date = small_out["output"], "2024-03-07"
    store = TableStore(out)
    store.write(store.read(spark, "item_vocab", RUN_DATE), "item_vocab", run_date)
    sessions = [s for s in small_out["sessions"] if s[1] == "test"]
    store.write(spark.createDataFrame(sessions, "session_id string, split string, item_ids array<string>, "
                                                "item_idx array<int>"), "sessions", run_date)
    edges = {}
    for _, _, _, clicks in sessions:
        for a, b in zip(clicks, clicks[1:]):
            edges[(a, b)] = round(0.1 + 0.8 * ((a * 7 + b * 3) % 10) / 10, 3)
    store.write(spark.createDataFrame([(a, b, 1, w, w) for (a, b), w in edges.items()],
                                      "src_idx int, dst_idx int, count long, weight double, in_weight double"),
                "item_graph", run_date)
    torch.manual_seed(3)
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=MAX_LEN, variant="ngc"))
    save_model(str(tmp_path / "ngc_model"), model)
    recommend(spark, RecommendConfig(output=out, run_date=run_date, model_dir=str(tmp_path / "ngc_model"), k=4))
    got = table_by_session(spark, out, run_date)
    items, lengths = pad_prefixes([s[3] for s in sessions], MAX_LEN)
    ngc_w = np.zeros(items.shape, dtype=np.float32)
    for r in range(len(sessions)):
        for i in range(1, lengths[r]):
            ngc_w[r, i] = edges[(items[r, i - 1], items[r, i])]
    idx, _ = score_arrays(model, items, lengths, 4, ngc_w=ngc_w)
    idx_without, _ = score_arrays(model, items, lengths, 4, ngc_w=np.zeros_like(ngc_w))
    assert not np.array_equal(idx, idx_without)  # the weights matter for this model
    for r, s in enumerate(sessions):
        assert [x["item_id"] for x in got[s[0]]] == [f"i{j}" for j in idx[r]]


# ---- consistency with the trainer on the bundled sample -------------------------------------
@pytest.mark.slow
def test_recommendations_reproduce_the_trainers_test_metrics_exactly(spark, sample_stage2, tmp_path):
    """Every test example of the sample (prefix, target) scored as its own session: HR@20 and MRR@20
    computed from the recommendations table equal the trainer's exported test metrics exactly."""
    import shutil

    from pyspark.sql import functions as F

    from srgnn import metrics, reader
    from pipelines.train.job import TrainJobConfig, train_job
    from srgnn.export import load_model

    run_date = sample_stage2["run_date"]
    out = tmp_path / "out"
    for table in ("sessions", "item_vocab", "item_graph", "shards"):
        shutil.copytree(Path(sample_stage2["output"], table), out / table)
    train_job(TrainJobConfig(output=str(out), run_date=run_date, epochs=1, hidden_size=32,
                             mlflow_tracking_uri="none", progress=False))
    model_dir = out / "models" / f"run_date={run_date}"
    config = json.loads((model_dir / "config.json").read_text())
    trainer_test = config["metrics"]["test"]

    # One session per test example: "<sid>#<n>" = the first n clicks, target = click n + 1.
    test_sessions = TableStore(str(out)).read(spark, "sessions", run_date).where(F.col("split") == "test")
    examples = test_sessions.select(
        "session_id", "item_ids", "item_idx", F.explode(F.sequence(F.lit(1), F.size("item_ids") - 1)).alias("n"))
    examples = examples.select(
        F.concat_ws("#", "session_id", F.col("n").cast("string")).alias("session_id"),
        F.slice("item_ids", 1, F.col("n")).alias("item_ids"),
        F.element_at("item_ids", F.col("n") + 1).alias("target_id"),
        F.slice("item_idx", 1, F.col("n")).alias("prefix_idx"),
        F.element_at("item_idx", F.col("n") + 1).alias("target_idx"))
    src = str(tmp_path / "test_examples")
    examples.write.parquet(src)
    stats = recommend(spark, RecommendConfig(output=str(out), run_date=run_date, sessions=src))
    manifest = reader.load_manifest(str(out), run_date)
    n_examples = manifest["splits"]["test"]["examples"]
    assert stats["sessions"] == stats["sessions_model"] == n_examples == 99
    assert stats["unknown_items_dropped"] == stats["sessions_popular"] == 0
    assert stats["manifest_checked"] is True

    recs = TableStore(str(out)).read(spark, "recommendations", run_date)
    ex = spark.read.parquet(src)
    hits = ex.join(recs, (ex.session_id == recs.session_id) & (ex.target_id == recs.item_id), "left") \
        .select(ex.session_id, "prefix_idx", "target_idx", recs.rank)
    # As an analyst would, in Spark: HR@20 = hits / examples, an exact ratio of integers.
    row = hits.agg(F.count("rank").alias("hits"), F.count("*").alias("n")).first()
    assert row["n"] == n_examples
    assert row["hits"] / row["n"] == trainer_test["hr@20"]

    # Per example, the rank in the table equals srgnn.metrics' rank of the target (ties by index),
    # and MRR@20 summed in the trainer's example order (its reader, its batches) is equal bit for bit.
    ranks = {(tuple(r["prefix_idx"][-config["max_len"]:]), r["target_idx"]): r["rank"] for r in hits.collect()}
    model, _ = load_model(str(model_dir), "cpu")
    acc_sums = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in reader.iter_batches(str(out / "shards" / f"run_date={run_date}"), "test", 500,
                                         shuffle_row_groups=False, workers_count=1, with_ngc=False):
            model_ranks = metrics.target_ranks(model(batch.items, batch.lengths).float(), batch.targets)
            table_ranks = torch.tensor([
                ranks[(tuple(batch.items[i, :batch.lengths[i]].tolist()), int(batch.targets[i]))] or 21
                for i in range(len(batch))], dtype=torch.float64)
            assert torch.equal(table_ranks, model_ranks.clamp(max=21).to(torch.float64))
            hit = (table_ranks <= 20).to(torch.float64)
            acc_sums += torch.stack([hit.sum(), (hit / table_ranks).sum()])
    assert acc_sums[0].item() / n_examples == trainer_test["hr@20"]
    assert acc_sums[1].item() / n_examples == trainer_test["mrr@20"]


def test_ngc_weights_in_spark_equal_the_shards(spark, sample_stage2):
    """For SR-GNN-NGC models the scorer derives ngc_w in Spark; on the sample's test prefixes it
    equals the shards' ngc_w for the same (prefix, target)."""
    from pyspark.sql import functions as F

    from pipelines.recommend.transforms import ngc_transition_weights
    from srgnn import reader

    run_date, out = sample_stage2["run_date"], sample_stage2["output"]
    max_len = sample_stage2["manifest"]["max_len"]
    store = TableStore(out)
    test = store.read(spark, "sessions", run_date).where(F.col("split") == "test")
    prefixes = test.select("session_id", "item_idx", F.explode(F.sequence(F.lit(1), F.size("item_idx") - 1)).alias("n"))
    indexed = prefixes.select(
        F.concat_ws("#", "session_id", F.col("n").cast("string")).alias("session_id"),
        F.slice("item_idx", 1, F.col("n")).alias("items"), F.col("n").alias("n_clicks"), F.col("n").alias("n_known"))
    targets = {r["session_id"]: r["t"] for r in prefixes.select(
        F.concat_ws("#", "session_id", F.col("n").cast("string")).alias("session_id"),
        F.element_at("item_idx", F.col("n") + 1).alias("t")).collect()}
    got = ngc_transition_weights(padded_sessions(indexed, max_len), store.read(spark, "item_graph", run_date), max_len)
    ours = {(tuple(r["items"][:r["length"]]), targets[r["session_id"]]): r["ngc_w"] for r in got.collect()}
    shards = reader.read_split(out, "test", run_date=run_date, columns=("items", "length", "target", "ngc_w"))
    assert len(shards["target"]) == 99
    checked = 0
    for items, length, target, w in zip(shards["items"], shards["length"], shards["target"], shards["ngc_w"]):
        key = (tuple(int(x) for x in items[:length]), int(target))
        np.testing.assert_array_equal(np.asarray(ours[key], dtype=np.float32), w)
        checked += 1
    assert checked == 99 and any(np.asarray(w).any() for w in shards["ngc_w"])


# ---- the jobs, end to end --------------------------------------------------------------------
@pytest.mark.slow
def test_jobs_run_under_spark_submit_and_print_one_line_errors(spark, small_out):
    from pipelines.recommend import ShowRecommendationsConfig, session_recommendations

    out = small_out["output"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "spark-submit"), "--master", "local[2]", "--driver-memory", "1g",
         str(ROOT / "jobs" / "recommend.py"), "--output", out, "--run-date", RUN_DATE, "--k", "3"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert stats["rows_written"] == 9 * 3 and stats["k"] == 3
    shown = session_recommendations(spark, ShowRecommendationsConfig(output=out, run_date=RUN_DATE, session_id="s0"))
    assert shown["rank"].tolist() == [1, 2, 3] and set(shown["source"]) == {"model"}

    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "show_recommendations.py"), "--output", out,
         "--run-date", RUN_DATE, "--session-id", "no-such-session"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: session 'no-such-session' has no rows in table recommendations run_date={RUN_DATE} under {out}")
    assert "Traceback" not in proc.stderr


def test_damaged_or_diverged_models_are_one_line_errors(spark, small_out, tmp_path, capsys):
    """Flipped bytes in the weights (found by the weights' hash) and a model whose scores overflow
    (found in the Spark workers) both end the job with one ``error:`` line and exit 2."""
    import importlib.util
    import shutil

    from srgnn.core.cli import run_job
    from srgnn.export import save_model

    spec = importlib.util.spec_from_file_location("recommend_job", ROOT / "jobs" / "recommend.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = small_out["output"]

    def run(model_dir) -> str:
        with pytest.raises(SystemExit) as info:
            run_job(lambda: job.main(["--output", out, "--run-date", RUN_DATE, "--model-dir", str(model_dir)]))
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
        return err[-1]

    flipped = tmp_path / "flipped"
    shutil.copytree(f"{out}/models/run_date={RUN_DATE}", flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.safetensors").write_bytes(bytes(data))
    assert "model.safetensors do not match config.json" in run(flipped)

    huge = make_model()
    with torch.no_grad():
        huge.embedding.weight.fill_(3e38)                # finite weights, infinite scores
    save_model(str(tmp_path / "huge"), huge)
    line = run(tmp_path / "huge")
    assert "produced non-finite scores (NaN or inf)" in line and str(tmp_path / "huge") in line
