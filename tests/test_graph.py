"""Stage 2: global item graph (NGC weights), examples, shards, manifest, errors, parity with the
official preprocess.py on the bundled sample."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from srgnn.core.errors import InputError
from pipelines.graph import GraphConfig, build_graph
from pipelines.graph.transforms import (item_graph, padded_examples, recent_fraction_sessions, session_transitions,
                                        sessions_with_ngc_weights)
from pipelines.tables import TableStore
from srgnn.core.fs import write_json_atomic
from srgnn.data import augment_sessions
from srgnn.reader import load_manifest, read_split, shard_files, shards_dir

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = "2020-03-01"
SESSIONS_SCHEMA = ("session_id string, session_date date, split string, item_ids array<string>, "
                   "item_idx array<int>, session_order long")


# ---- helpers ------------------------------------------------------------------------------------
def write_stage1(spark, out, sessions, n_items=None, fraction=1.0, run_date=RUN_DATE):
    """Stage 1's outputs by hand: ``sessions`` = [(session_id, split, [item_idx...])], official
    order = list order."""
    n_items = n_items or max(i for _, _, items in sessions for i in items)
    rows = [(sid, date(2020, 2, 1), split, [f"i{i}" for i in items], list(items), order)
            for order, (sid, split, items) in enumerate(sessions)]
    store = TableStore(str(out))
    store.write(spark.createDataFrame(rows, SESSIONS_SCHEMA), "sessions", run_date)
    store.write(spark.createDataFrame([(f"i{i}", i, 1) for i in range(1, n_items + 1)],
                                      "item_id string, item_idx int, support long"), "item_vocab", run_date)
    write_json_atomic(f"{store.root}/stats/run_date={run_date}/build_sessions.json",
                      {"fraction": fraction, "n_items": n_items})
    return str(out)


def roles_df(spark, sessions):
    return spark.createDataFrame([(sid, role, items) for sid, role, items in sessions],
                                 "session_id string, role string, item_idx array<int>")


def random_sessions(n, n_items, seed, test_share=0.2, max_len=12):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n):
        length = int(rng.integers(2, max_len + 1))
        items = [int(x) for x in rng.integers(1, n_items + 1, length)]
        if rng.random() < 0.2:  # a repeated click
            j = int(rng.integers(0, length))
            items.insert(j, items[j])
        out.append((f"s{s:04d}", "test" if rng.random() < test_share else "train", items))
    return out


def python_graph(sessions):
    """Hand-computed NGC weights: edge -> count / out-count of its source."""
    counts = Counter((a, b) for seq in sessions for a, b in zip(seq, seq[1:]))
    out = Counter()
    for (a, _), c in counts.items():
        out[a] += c
    return {e: c / out[e[0]] for e, c in counts.items()}


def expected_rows(sessions, max_len, weights):
    """(session_id, items, length, target, ngc_w) of every prefix, computed in plain Python."""
    rows = []
    for sid, seq in sessions:
        for p in range(1, len(seq)):
            window = seq[max(0, p - max_len):p]
            w = [0.0] + [weights.get((a, b), 0.0) for a, b in zip(window, window[1:])]
            pad = max_len - len(window)
            rows.append((sid, tuple(window + [0] * pad), len(window), seq[p],
                         tuple(np.float32(x) for x in w + [0.0] * pad)))
    return rows


def rows_of(split):
    return [(sid, tuple(int(x) for x in it), int(n), int(t), tuple(np.float32(x) for x in w))
            for sid, it, n, t, w in zip(split["session_id"], split["items"], split["length"],
                                        split["target"], split["ngc_w"])]


# ---- the graph ----------------------------------------------------------------------------------
THREE_SESSIONS = [("a", "train", [1, 2, 3]), ("b", "train", [2, 3, 2, 4]), ("c", "train", [1, 1, 2]),
                  ("t", "test", [3, 4])]


def test_ngc_weights_match_a_hand_computed_graph_of_three_sessions(spark):
    # transitions: 1->2 (a), 2->3 (a), 2->3, 3->2, 2->4 (b), 1->1, 1->2 (c); test sessions do not count
    # out-counts: 1: 3, 2: 3, 3: 1;  in-counts: 1: 1, 2: 3, 3: 2, 4: 1
    graph = item_graph(session_transitions(roles_df(spark, THREE_SESSIONS)))
    expected = spark.createDataFrame([
        (1, 1, 1, 1 / 3, 1 / 1),
        (1, 2, 2, 2 / 3, 2 / 3),
        (2, 3, 2, 2 / 3, 2 / 2),
        (2, 4, 1, 1 / 3, 1 / 1),
        (3, 2, 1, 1 / 1, 1 / 3),
    ], "src_idx int, dst_idx int, count long, weight double, in_weight double")
    assert_df_equality(graph, expected, ignore_row_order=True, ignore_nullable=True)

    weighted = sessions_with_ngc_weights(session_transitions(roles_df(spark, THREE_SESSIONS)), graph)
    got = {r["session_id"]: (r["items"], r["trans_w"]) for r in weighted.collect()}
    f32 = lambda xs: [float(np.float32(x)) for x in xs]  # noqa: E731
    assert got["b"] == ([2, 3, 2, 4], f32([0, 2 / 3, 1, 1 / 3]))
    assert got["c"] == ([1, 1, 2], f32([0, 1 / 3, 2 / 3]))
    assert got["t"] == ([3, 4], f32([0, 0]))  # 3->4 is not a training edge


def test_self_loops_can_be_dropped(spark):
    graph = item_graph(session_transitions(roles_df(spark, THREE_SESSIONS)), self_loops="drop")
    got = {(r["src_idx"], r["dst_idx"]): r["weight"] for r in graph.collect()}
    assert (1, 1) not in got and got[(1, 2)] == 1.0 and got[(2, 3)] == 2 / 3


def test_out_weights_of_every_source_sum_to_one(spark):
    sessions = random_sessions(300, 40, seed=1, test_share=0)
    graph = item_graph(session_transitions(roles_df(spark, sessions)))
    sums = graph.groupBy("src_idx").sum("weight").collect()
    in_sums = graph.groupBy("dst_idx").sum("in_weight").collect()
    assert len(sums) >= 30
    assert all(abs(r[1] - 1.0) < 1e-12 for r in sums)
    assert all(abs(r[1] - 1.0) < 1e-12 for r in in_sums)
    weights = {(r["src_idx"], r["dst_idx"]): r["weight"] for r in graph.collect()}
    ref = python_graph([items for _, _, items in sessions])
    assert weights.keys() == ref.keys()
    assert all(abs(weights[e] - ref[e]) < 1e-12 for e in ref)


# ---- examples -----------------------------------------------------------------------------------
def test_padded_windows_truncate_to_the_last_clicks(spark):
    # one session of 5 clicks, L = 3: prefixes 1..4; p = 4 is truncated to its last 3 clicks and the
    # window's first weight is 0 (its predecessor is outside the window)
    df = spark.createDataFrame([("s", [5, 6, 7, 8, 9], [0.0, 0.5, 0.25, 0.125, 1.0], 0, 1, 4)],
                               "session_id string, items array<int>, trans_w array<float>, rg int, "
                               "p_lo int, p_hi int")
    got = sorted((r["length"], r["items"], r["ngc_w"], r["target"])
                 for r in padded_examples(df, 3).collect())
    assert got == [
        (1, [5, 0, 0], [0.0, 0.0, 0.0], 6),
        (2, [5, 6, 0], [0.0, 0.5, 0.0], 7),
        (3, [5, 6, 7], [0.0, 0.5, 0.25], 8),
        (3, [6, 7, 8], [0.0, 0.25, 0.125], 9),
    ]


def test_fraction_keeps_the_official_tail_of_training_pairs(spark):
    sessions = [(sid, "train", items) for sid, _, items in random_sessions(25, 30, seed=2, test_share=0)]
    df = spark.createDataFrame([(sid, split, items, i) for i, (sid, split, items) in enumerate(sessions)],
                               "session_id string, split string, item_idx array<int>, session_order long")
    prefixes, targets = augment_sessions([items for _, _, items in sessions])
    for keep in (1, 7, len(targets) // 4, len(targets) - 1):
        kept = recent_fraction_sessions(df, keep).collect()
        got_p, got_t = augment_sessions([r["item_idx"] for r in kept])
        assert Counter(zip(map(tuple, got_p), got_t)) == Counter(zip(map(tuple, prefixes[-keep:]), targets[-keep:]))


# ---- the job on hand-made stage-1 tables -----------------------------------------------------------
@pytest.fixture(scope="module")
def handmade(spark, tmp_path_factory):
    sessions = random_sessions(160, 25, seed=3, max_len=9)
    sessions.append(("long", "train", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]))  # truncated at L = 6
    out = write_stage1(spark, tmp_path_factory.mktemp("handmade"), sessions)
    cfg = GraphConfig(output=out, run_date=RUN_DATE, valid_share=0.25, max_len=6, world_size=4,
                      rows_per_row_group=40, seed=7)
    manifest = build_graph(spark, cfg)
    return {"out": out, "sessions": sessions, "cfg": cfg, "manifest": manifest}


def test_every_prefix_lands_in_exactly_one_split_with_its_ngc_weights(spark, handmade):
    out, cfg, manifest = handmade["out"], handmade["cfg"], handmade["manifest"]
    by_id = {sid: items for sid, _, items in handmade["sessions"]}
    splits = {s: rows_of(read_split(out, s, run_date=RUN_DATE)) for s in ("train", "valid", "test")}
    ids = {s: {r[0] for r in rows} for s, rows in splits.items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    assert ids["test"] == {sid for sid, split, _ in handmade["sessions"] if split == "test"}
    assert ids["train"] | ids["valid"] == {sid for sid, split, _ in handmade["sessions"] if split == "train"}
    share = len(ids["valid"]) / (len(ids["train"]) + len(ids["valid"]))
    assert 0.1 < share < 0.4

    weights = python_graph([by_id[sid] for sid in ids["train"]])  # the graph: train role only
    for s, rows in splits.items():
        expected = expected_rows([(sid, by_id[sid]) for sid in ids[s]], cfg.max_len, weights)
        assert Counter(rows) == Counter(expected), s
        assert manifest["splits"][s]["examples"] == len(expected)
    truncated = sum(max(0, len(by_id[sid]) - 1 - cfg.max_len) for sid in ids["train"])
    assert truncated >= 6 and manifest["splits"]["train"]["truncated"] == truncated

    graph = TableStore(out).read(spark, "item_graph", RUN_DATE)
    assert graph.columns == ["src_idx", "dst_idx", "count", "weight", "in_weight", "run_date"]
    assert {(r["src_idx"], r["dst_idx"]): r["weight"] for r in graph.collect()} == pytest.approx(weights)


def test_shards_are_balanced_row_groups_and_the_manifest_says_so(handmade):
    out, cfg, manifest = handmade["out"], handmade["cfg"], handmade["manifest"]

    folder = shards_dir(out, RUN_DATE)
    assert load_manifest(out, RUN_DATE) == manifest
    assert {k: manifest[k] for k in ("schema_version", "run_date", "max_len", "pad_side", "world_size",
                                     "valid_share", "fraction", "n_items")} == {
        "schema_version": 1, "run_date": RUN_DATE, "max_len": 6, "pad_side": "right", "world_size": 4,
        "valid_share": 0.25, "fraction": 1.0, "n_items": 25}
    assert manifest["content_hash"].startswith("sha256:")
    for s in ("train", "valid", "test"):
        info = manifest["splits"][s]
        files = [f for f in shard_files(folder) if f.startswith(s + "/")]
        n = info["examples"]
        assert info["row_groups"] % cfg.world_size == 0 and info["row_groups"] == len(files)
        assert info["row_groups"] == cfg.world_size * max(1, round(n / (cfg.world_size * 40)))
        metas = [pq.ParquetFile(os.path.join(folder, f)).metadata for f in files]
        assert [m.num_row_groups for m in metas] == [1] * len(files)
        sizes = [m.num_rows for m in metas]
        assert sizes == info["row_group_rows"] and sum(sizes) == n
        assert max(sizes) - min(sizes) <= 1
        schema = pq.read_schema(os.path.join(folder, files[0]))
        assert schema.names == ["items", "length", "target", "ngc_w", "session_id"]
        assert [schema.field("items").type.value_type, schema.field("length").type, schema.field("target").type,
                schema.field("ngc_w").type.value_type, schema.field("session_id").type] == [
            pa.int32(), pa.int32(), pa.int32(), pa.float32(), pa.string()]
    assert manifest["splits"]["train"]["row_groups"] >= 8  # k = 2 or more: several row groups per rank


def test_rows_are_shuffled_across_and_within_row_groups(handmade):
    split = read_split(handmade["out"], "train", run_date=RUN_DATE)
    sids = list(split["session_id"])
    # a session's prefixes are not stored next to each other, and sessions are not in input order
    adjacent_same = sum(a == b for a, b in zip(sids, sids[1:]))
    assert adjacent_same < len(sids) * 0.2
    assert sids != sorted(sids)


@pytest.mark.slow
def test_rerun_replaces_the_shards_and_the_graph(spark, handmade, tmp_path):
    out = tmp_path / "o"
    for part in ("sessions", "item_vocab", "stats", "item_graph", "shards"):
        shutil.copytree(Path(handmade["out"]) / part, out / part)
    files_before = shard_files(shards_dir(str(out), RUN_DATE))
    again = build_graph(spark, handmade["cfg"].replace(output=str(out)))
    assert again == handmade["manifest"]  # same seed, same rows: same content hash (whatever the encodings)
    assert shard_files(shards_dir(str(out), RUN_DATE)) == files_before
    assert sorted(os.listdir(out / "shards")) == [f"run_date={RUN_DATE}"]
    assert sorted(os.listdir(out / "item_graph")) == [f"run_date={RUN_DATE}"]
    graph = TableStore(str(out)).read(spark, "item_graph", RUN_DATE)
    assert graph.count() == graph.select("src_idx", "dst_idx").distinct().count() == \
        TableStore(handmade["out"]).read(spark, "item_graph", RUN_DATE).count()


def test_row_group_r_is_placed_in_partition_r(spark):
    from pyspark.sql import functions as F

    from pipelines.graph.transforms import _murmur3_int, hash_partition_keys

    values = list(range(-3, 300)) + [2**31 - 1, -2**31]
    got = spark.createDataFrame([(v,) for v in values], "v int").select("v", F.hash("v").alias("h")).collect()
    assert [_murmur3_int(r["v"]) for r in got] == [r["h"] for r in got]
    keys = hash_partition_keys(24)
    df = spark.createDataFrame([(k,) for k in keys], "k int").repartition(24, "k")
    assert df.select(F.spark_partition_id().alias("pid"), "k").orderBy("pid").collect() == \
        [(r, k) for r, k in enumerate(keys)]


def test_fraction_from_stage1_stats_is_applied_to_training_pairs(spark, tmp_path):
    sessions = random_sessions(40, 20, seed=5, max_len=7)
    out = write_stage1(spark, tmp_path / "o", sessions, fraction=0.25)
    manifest = build_graph(spark, GraphConfig(output=out, run_date=RUN_DATE, valid_share=0, world_size=2))
    train = [items for _, split, items in sessions if split == "train"]
    prefixes, targets = augment_sessions(train)
    keep = int(len(targets) * 0.25)
    assert manifest["fraction"] == 0.25 and manifest["kept_train_pairs"] == keep
    got = read_split(out, "train", run_date=RUN_DATE)
    pairs = Counter((tuple(int(x) for x in it[:n]), int(t)) for it, n, t in
                    zip(got["items"], got["length"], got["target"]))
    assert pairs == Counter(zip(map(tuple, prefixes[-keep:]), targets[-keep:]))
    test_pairs = sum(len(items) - 1 for _, split, items in sessions if split == "test")
    assert manifest["splits"]["test"]["examples"] == test_pairs  # the test split is never cut


# ---- bad input ----------------------------------------------------------------------------------
def test_missing_stage1_tables_is_one_clear_error(spark, tmp_path):
    with pytest.raises(InputError, match=r"table 'sessions' has no partition run_date=2020-03-01"):
        build_graph(spark, GraphConfig(output=str(tmp_path), run_date=RUN_DATE))


def test_empty_training_split_is_one_clear_error(spark, tmp_path):
    out = write_stage1(spark, tmp_path / "o", [("t1", "test", [1, 2, 3]), ("t2", "test", [2, 3])])
    with pytest.raises(InputError, match="empty training split"):
        build_graph(spark, GraphConfig(output=out, run_date=RUN_DATE))
    assert not (Path(out) / "shards").exists()
    assert not (Path(out) / "item_graph").exists()      # the checks run before the first write


def test_stats_that_disagree_with_the_tables_leave_the_last_good_outputs(spark, tmp_path):
    store = TableStore(str(tmp_path / "o"))
    good = [("a", "train", [1, 2, 3]), ("b", "train", [2, 3, 4]), ("t", "test", [3, 4])]
    out = write_stage1(spark, tmp_path / "o", good)
    cfg = GraphConfig(output=out, run_date=RUN_DATE, valid_share=0, world_size=1)
    manifest = build_graph(spark, cfg)
    graph = sorted(store.read(spark, "item_graph", RUN_DATE).drop("run_date").collect())
    # new sessions, but stats still counting the old ones: stage 1 did not finish for them
    write_stage1(spark, tmp_path / "o", [("c", "train", [4, 1]), ("d", "train", [1, 4, 2]), ("t", "test", [3, 4])])
    stats_path = store.layout.stats(RUN_DATE, "build_sessions.json")
    write_json_atomic(stats_path, {"fraction": 1.0, "n_items": 4, "train_pairs": 4, "test_pairs": 1})
    with pytest.raises(InputError, match="train_pairs=4 but the sessions table gives 3"):
        build_graph(spark, cfg)
    assert sorted(store.read(spark, "item_graph", RUN_DATE).drop("run_date").collect()) == graph
    assert load_manifest(out, RUN_DATE) == manifest


@pytest.mark.slow
def test_job_runs_under_spark_submit_and_reports_errors_in_one_line(spark, tmp_path):
    out = write_stage1(spark, tmp_path / "o", random_sessions(30, 15, seed=9))
    env = {**os.environ, "SRGNN_DRIVER_MEMORY": "1g", "SRGNN_LOG_LEVEL": "WARNING"}
    ok = subprocess.run([str(ROOT / ".venv/bin/spark-submit"), "--master", "local[1]", str(ROOT / "jobs/build_graph.py"),
                         "--output", out, "--run-date", RUN_DATE, "--world-size", "2", "--valid-share", "0"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    summary = json.loads(ok.stdout[ok.stdout.index("{"):])
    assert summary["splits"]["valid"]["examples"] == 0 and summary["splits"]["train"]["row_groups"] == 2
    assert load_manifest(out, RUN_DATE)["content_hash"] == summary["content_hash"]

    bad = subprocess.run([sys.executable, str(ROOT / "jobs/build_graph.py"), "--output", str(tmp_path / "nothing"),
                          "--run-date", RUN_DATE], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: table 'sessions' has no partition")
    assert "Traceback" not in bad.stderr


# ---- parity with the official preprocess.py on the bundled sample -------------------------------
def test_sample_parity_with_official_pairs(spark, sample_stage1, fixtures_dir, tmp_path):
    # a private copy of stage 1's output: the shared fixture's folders must stay untouched
    out = tmp_path / "out"
    for part in ("sessions", "item_vocab", "stats"):
        shutil.copytree(Path(sample_stage1["output"]) / part, out / part)
    manifest = build_graph(spark, GraphConfig(output=str(out), run_date=sample_stage1["run_date"], valid_share=0))
    official = json.loads((fixtures_dir / "official_preprocess_pairs.json").read_text())
    assert manifest["n_items"] == official["n_items"] == 309
    assert {s: manifest["splits"][s]["examples"] for s in ("train", "valid", "test")} == {
        "train": 1205, "valid": 0, "test": 99}
    for s in ("train", "test"):
        got = read_split(str(out), s, run_date=sample_stage1["run_date"])
        pairs = Counter((tuple(int(x) for x in it[:n]), int(t)) for it, n, t in
                        zip(got["items"], got["length"], got["target"]))
        want = Counter((tuple(p), t) for p, t in zip(official[s]["prefixes"], official[s]["targets"]))
        assert pairs == want, s


def test_sample_graph_weights_sum_to_one_per_source(spark, sample_stage2):
    graph = TableStore(sample_stage2["output"]).read(spark, "item_graph", sample_stage2["run_date"])
    sums = [r[1] for r in graph.groupBy("src_idx").sum("weight").collect()]
    assert len(sums) > 100 and max(abs(x - 1.0) for x in sums) < 1e-12


def test_config_from_yaml_and_command_line(tmp_path):
    from srgnn.core.errors import ConfigError

    y = tmp_path / "c.yaml"
    y.write_text("build_graph:\n  valid_share: 0\n  max_len: 20\n  world_size: 4\n")
    cfg = GraphConfig.from_args(["--config", str(y), "--output", "o", "--run-date", RUN_DATE, "--world-size", "2"])
    assert (cfg.valid_share, cfg.max_len, cfg.world_size, cfg.seed, cfg.self_loops) == (0.0, 20, 2, 0, "keep")
    with pytest.raises(ConfigError, match="--valid-share"):
        GraphConfig.from_args(["--output", "o", "--run-date", RUN_DATE, "--valid-share", "1.5"])
    with pytest.raises(ConfigError, match="--run-date"):
        GraphConfig.from_args(["--output", "o", "--run-date", "yesterday"])
    with pytest.raises(ConfigError, match="--output"):
        GraphConfig.from_args(["--run-date", RUN_DATE])
