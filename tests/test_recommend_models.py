"""Stage 4 with any chosen model: tonight's SR-GNN, an earlier night's SR-GNN, or a baseline."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.recommend import RecommendConfig, recommend
from pipelines.select.config import SELECTION_SCHEMA
from srgnn.core.contracts import MODEL_SELECTION
from pipelines.tables import TableStore
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.layout import Layout
from srgnn.data import pad_prefixes

RUN_DATE = "2024-03-05"
EARLIER = "2024-03-04"
N_ITEMS, MAX_LEN = 30, 5
VOCAB_SCHEMA = "item_id string, item_idx int, support long"
SESSIONS_SCHEMA = "session_id string, split string, item_ids array<string>, item_idx array<int>"


def write_selection(spark, out: str, run_date: str, rows: list[tuple]) -> None:
    """A hand-written model_selection partition: (candidate, model_version, chosen)."""
    table = spark.createDataFrame([(c, v, "mrr@20", 0.1, chosen, "test") for c, v, chosen in rows],
                                  SELECTION_SCHEMA)
    TableStore(out).write(table, MODEL_SELECTION, run_date)


def read_recs(spark, out: str, run_date: str) -> dict[str, list]:
    rows = TableStore(out).read(spark, "recommendations", run_date).orderBy("session_id", "rank").collect()
    got: dict[str, list] = {}
    for r in rows:
        got.setdefault(r["session_id"], []).append(r)
    return got


def make_model(n_items: int, seed: int):
    from srgnn.model import SRGNN, ModelConfig

    torch.manual_seed(seed)
    return SRGNN(ModelConfig(n_items=n_items, hidden_size=8, max_len=MAX_LEN))


def direct_top_k(model, prefixes, k):
    from srgnn.scoring import score_arrays

    items, lengths = pad_prefixes(prefixes, MAX_LEN)
    return score_arrays(model, items, lengths, k, batch_size=len(prefixes))


# ---- a small hand-made OUT: tonight's vocabulary i1..i30, sessions, tonight's model --------------
@pytest.fixture()
def small_out(spark, tmp_path):
    from srgnn.export import save_model

    out = str(tmp_path / "out")
    store = TableStore(out)
    rng = np.random.default_rng(7)
    store.write(spark.createDataFrame([(f"i{j}", j, int(rng.integers(1, 50))) for j in range(1, N_ITEMS + 1)],
                                      VOCAB_SCHEMA), "item_vocab", RUN_DATE)
    sessions = []
    for s in range(10):
        clicks = [int(x) for x in rng.integers(1, N_ITEMS + 1, int(rng.integers(1, 8)))]
        sessions.append((f"s{s}", "test", [f"i{c}" for c in clicks], clicks))
    sessions.append(("s10", "test", ["i27", "i30"], [27, 30]))      # unknown to the earlier model
    store.write(spark.createDataFrame(sessions, SESSIONS_SCHEMA), "sessions", RUN_DATE)
    model = make_model(N_ITEMS, seed=0)
    config = save_model(Layout(out).model(RUN_DATE), model)
    return {"output": out, "sessions": sessions, "model": model, "config": config}


def test_model_name_option_and_its_choices():
    cfg = RecommendConfig.from_args(["--output", "OUT", "--run-date", RUN_DATE])
    assert cfg.model_name == "auto"
    assert RecommendConfig.from_args(["--output", "OUT", "--run-date", RUN_DATE, "--model-name", "vsknn"]).model_name == "vsknn"
    with pytest.raises(ConfigError, match=r"--model-name: 'gru4rec' is not one of \['auto', 'srgnn', 'previous'"):
        RecommendConfig(output="OUT", run_date=RUN_DATE).replace(model_name="gru4rec")


def test_srgnn_by_name_ignores_the_selection_and_keeps_the_rows(spark, small_out):
    """--model-name srgnn scores with tonight's export whatever model_selection chose, and writes the
    rows auto writes without a selection (those of the model itself), with model = 'srgnn'."""
    out = small_out["output"]
    cfg = RecommendConfig(output=out, run_date=RUN_DATE, k=4)
    stats = recommend(spark, cfg)                                   # no model_selection: srgnn
    assert (stats["model"], stats["model_version"]) == ("srgnn", small_out["config"]["model_version"])
    without = TableStore(out).read(spark, "recommendations", RUN_DATE).drop("run_date")
    without = spark.createDataFrame(without.collect(), without.schema)     # before the rerun replaces it
    assert without.columns == ["session_id", "rank", "item_id", "score", "model_version", "source", "model"]
    got = read_recs(spark, out, RUN_DATE)
    sessions = small_out["sessions"]
    idx, val = direct_top_k(small_out["model"], [s[3] for s in sessions], 4)
    for row, s in enumerate(sessions):
        assert [r["item_id"] for r in got[s[0]]] == [f"i{j}" for j in idx[row]]
        np.testing.assert_allclose([r["score"] for r in got[s[0]]], val[row], rtol=1e-5, atol=1e-6)
        assert {(r["model"], r["source"]) for r in got[s[0]]} == {("srgnn", "model")}

    write_selection(spark, out, RUN_DATE, [("srgnn", "x", False), ("vsknn", f"vsknn@{RUN_DATE}", True)])
    stats = recommend(spark, cfg.replace(model_name="srgnn"))
    assert stats["model"] == "srgnn" and stats["chosen_by"] == "--model-name srgnn"
    with_selection = TableStore(out).read(spark, "recommendations", RUN_DATE).drop("run_date")
    assert_df_equality(with_selection, without, ignore_row_order=True)


def test_previous_maps_item_ids_through_the_exports_own_vocabulary(spark, small_out):
    """An earlier night's model indexes items differently: clicks map to its indices by item id
    (items it does not know are dropped), its top k map back through its vocabulary."""
    from srgnn.export import save_model

    out = small_out["output"]
    # the earlier vocabulary: i1..i25 and five items gone tonight, under shuffled indices
    old_ids = [f"i{j}" for j in range(1, 26)] + [f"old{j}" for j in range(1, 6)]
    perm = np.random.default_rng(3).permutation(N_ITEMS) + 1
    old_idx = {item: int(perm[n]) for n, item in enumerate(old_ids)}
    old_model = make_model(N_ITEMS, seed=5)
    old_vocab = pd.DataFrame({"item_id": old_ids, "item_idx": [old_idx[i] for i in old_ids]})
    old_config = save_model(Layout(out).model(EARLIER), old_model, vocab=old_vocab)
    write_selection(spark, out, EARLIER, [("srgnn", old_config["model_version"], True)])
    write_selection(spark, out, RUN_DATE, [("srgnn", small_out["config"]["model_version"], False),
                                           ("previous", old_config["model_version"], True)])
    stats = recommend(spark, RecommendConfig(output=out, run_date=RUN_DATE, k=4))
    assert stats["model"] == "previous" and stats["model_dir"] == Layout(out).model(EARLIER)
    assert stats["model_version"] == old_config["model_version"]

    got = read_recs(spark, out, RUN_DATE)
    by_idx = {v: k for k, v in old_idx.items()}
    scored = [(s[0], [old_idx[i] for i in s[2] if i in old_idx]) for s in small_out["sessions"]]
    known = [(sid, p) for sid, p in scored if p]
    idx, val = direct_top_k(old_model, [p for _, p in known], 4)
    for row, (sid, _) in enumerate(known):
        assert [r["item_id"] for r in got[sid]] == [by_idx[int(j)] for j in idx[row]]
        np.testing.assert_allclose([r["score"] for r in got[sid]], val[row], rtol=1e-5, atol=1e-6)
        assert {(r["model"], r["source"], r["model_version"]) for r in got[sid]} == {
            ("previous", "model", old_config["model_version"])}
    # s10's items are all unknown to the earlier model: tonight's most popular items
    support = {r["item_id"]: r["support"] for r in TableStore(out).read(spark, "item_vocab", RUN_DATE).collect()}
    popular = sorted(support, key=lambda i: (-support[i], int(i[1:])))[:4]
    assert [r["item_id"] for r in got["s10"]] == popular
    assert {(r["model"], r["source"]) for r in got["s10"]} == {("previous", "popular")}
    assert stats["unknown_items_dropped"] == sum(len(s[2]) - len(p) for s, (_, p) in zip(small_out["sessions"], scored))
    assert stats["unknown_items_dropped"] > 2     # the earlier vocabulary lacks i26..i30


def test_a_selection_without_one_chosen_row_or_a_missing_previous_is_one_clear_error(spark, small_out):
    out = small_out["output"]
    write_selection(spark, out, RUN_DATE, [("srgnn", "a", False), ("vsknn", "b", False)])
    with pytest.raises(InputError, match=r"model_selection run_date=2024-03-05 .* has 0 chosen rows"):
        recommend(spark, RecommendConfig(output=out, run_date=RUN_DATE))
    with pytest.raises(InputError, match="no SR-GNN model was published before 2024-03-05"):
        recommend(spark, RecommendConfig(output=out, run_date=RUN_DATE, model_name="previous"))
    no_vocab = Layout(out).model(RUN_DATE)      # an export without item_vocab.parquet
    with pytest.raises(InputError, match="has no item_vocab.parquet"):
        recommend(spark, RecommendConfig(output=out, run_date=RUN_DATE, model_name="previous", model_dir=no_vocab))


# ---- a baseline chosen on the bundled sample ----------------------------------------------------
@pytest.mark.slow
def test_a_chosen_baseline_writes_the_scorers_own_top_k(spark, sample_stage2, tmp_path):
    """model_selection chose vsknn: the recommendations are V-SKNN's top k, equal to the scorer's
    ranking (srgnn.baselines.ranked_items) of the same prefixes computed without Spark."""
    from pipelines.baselines import fit_baselines, training_sessions
    from srgnn.baselines import BaselineParams, ranked_items

    run_date = sample_stage2["run_date"]
    out = tmp_path / "out"
    for table in ("sessions", "item_vocab", "item_graph", "shards"):
        shutil.copytree(Path(sample_stage2["output"], table), out / table)
    write_selection(spark, str(out), run_date, [("srgnn", "srgnn-000000000000", False),
                                                ("vsknn", f"vsknn@{run_date}", True)])
    k = 10
    stats = recommend(spark, RecommendConfig(output=str(out), run_date=run_date, k=k, batch_size=7))
    assert (stats["model"], stats["model_version"], stats["model_dir"]) == ("vsknn", f"vsknn@{run_date}", None)
    assert stats["sessions_model"] > 30 and stats["sessions_popular"] == 0

    # the same fit as the evaluation's, then the scorer alone on the test sessions' prefixes
    store = TableStore(str(out))
    manifest = sample_stage2["manifest"]
    train_ids = spark.read.parquet(str(Layout(str(out)).shard_split(run_date, "train"))).select("session_id")
    fitted = fit_baselines(training_sessions(store.read(spark, "sessions", run_date), train_ids), None,
                           int(manifest["n_items"]), BaselineParams(), names=["vsknn"])
    vocab = {r["item_id"]: r["item_idx"] for r in store.read(spark, "item_vocab", run_date).collect()}
    id_of = {v: i for i, v in vocab.items()}
    test = store.read(spark, "sessions", run_date).where(F.col("split") == "test").select("session_id", "item_ids")
    sessions = [(r["session_id"], [vocab[i] for i in r["item_ids"] if i in vocab]) for r in test.collect()]
    items, lengths = pad_prefixes([p for _, p in sessions], int(manifest["max_len"]))
    scores = fitted.scorers["vsknn"].score(torch.from_numpy(items.astype(np.int64)),
                                           torch.from_numpy(lengths.astype(np.int64)))
    expected_idx = ranked_items(scores, k)
    got = read_recs(spark, str(out), run_date)
    assert sorted(got) == sorted(sid for sid, _ in sessions)
    for row, (sid, _) in enumerate(sessions):
        assert [r["item_id"] for r in got[sid]] == [id_of[int(j)] for j in expected_idx[row]]
        assert [r["score"] for r in got[sid]] == [float(scores[row, int(j) - 1]) for j in expected_idx[row]]
        assert {(r["model"], r["model_version"], r["source"]) for r in got[sid]} == {
            ("vsknn", f"vsknn@{run_date}", "model")}
    # --model-name sr picks another baseline, fitted on the same sessions plus the item graph
    stats = recommend(spark, RecommendConfig(output=str(out), run_date=run_date, k=k, model_name="sr"))
    assert (stats["model"], stats["model_version"]) == ("sr", f"sr@{run_date}")
    assert {r["model"] for rows in read_recs(spark, str(out), run_date).values() for r in rows} == {"sr"}
