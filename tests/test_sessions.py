"""Stage 1: parity with the official preprocess.py (bundled sample + a line-by-line port of the
official code on crafted files), the transforms, idempotent reruns, the job's command line."""
from __future__ import annotations

import calendar
import csv
import json
import operator
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from bench.synth import SynthConfig, generate_clicks
from srgnn.core.errors import ConfigError
from pipelines.sessions import SessionsConfig, build_sessions, parse_fraction
from pipelines.sessions.transforms import (item_vocabulary, order_key_bits, sessions_from_clicks, split_sessions,
                                           with_dense_order)
from pipelines.tables import TableStore
from srgnn.core.contracts import STATS_SESSIONS
from srgnn.core.fs import read_json
from srgnn.core.layout import Layout
from srgnn.data import augment_sessions

ROOT = Path(__file__).resolve().parents[1]


# ---- the official CRIPAC-DIG/SR-GNN datasets/preprocess.py, ported line by line ---------------
def official_preprocess(lines, dataset: str, min_support: int = 5, split_days: int | None = None):
    """The official logic (dict orders and quirks included); ``time.mktime`` -> UTC ``timegm``."""
    if dataset == "yoochoose":
        reader = csv.DictReader(lines, delimiter=",", fieldnames=["session_id", "timestamp", "item_id", "category"])
    else:
        reader = csv.DictReader(lines, delimiter=";")
    sess_clicks, sess_date = {}, {}
    curid, curdate = -1, None

    def todate(d):
        if dataset == "yoochoose":
            return calendar.timegm(time.strptime(d[:19], "%Y-%m-%dT%H:%M:%S"))
        return calendar.timegm(time.strptime(d, "%Y-%m-%d"))

    for data in reader:
        sessid = data["session_id"]
        if curdate and not curid == sessid:
            sess_date[curid] = todate(curdate)
        curid = sessid
        item = data["item_id"] if dataset == "yoochoose" else (data["item_id"], int(data["timeframe"]))
        curdate = data["timestamp"] if dataset == "yoochoose" else data["eventdate"]
        if sessid in sess_clicks:
            sess_clicks[sessid] += [item]
        else:
            sess_clicks[sessid] = [item]
    sess_date[curid] = todate(curdate)
    if dataset != "yoochoose":
        for i in list(sess_clicks):
            sess_clicks[i] = [c[0] for c in sorted(sess_clicks[i], key=operator.itemgetter(1))]
    for s in list(sess_clicks):
        if len(sess_clicks[s]) == 1:
            del sess_clicks[s]
            del sess_date[s]
    iid_counts = {}
    for s in sess_clicks:
        for iid in sess_clicks[s]:
            iid_counts[iid] = iid_counts.get(iid, 0) + 1
    for s in list(sess_clicks):
        filseq = [i for i in sess_clicks[s] if iid_counts[i] >= min_support]
        if len(filseq) < 2:
            del sess_clicks[s]
            del sess_date[s]
        else:
            sess_clicks[s] = filseq
    dates = list(sess_date.items())
    maxdate = max(d for _, d in dates)
    days = split_days if split_days is not None else (1 if dataset == "yoochoose" else 7)
    splitdate = maxdate - 86400 * days
    tra_sess = sorted(filter(lambda x: x[1] < splitdate, dates), key=operator.itemgetter(1))
    tes_sess = sorted(filter(lambda x: x[1] > splitdate, dates), key=operator.itemgetter(1))
    item_dict, item_ctr = {}, 1
    train, test = [], []
    for s, _ in tra_sess:
        outseq = []
        for i in sess_clicks[s]:
            if i not in item_dict:
                item_dict[i] = item_ctr
                item_ctr += 1
            outseq.append(item_dict[i])
        train.append((s, outseq))
    for s, _ in tes_sess:
        outseq = [item_dict[i] for i in sess_clicks[s] if i in item_dict]
        if len(outseq) >= 2:
            test.append((s, outseq))
    return {"train": train, "test": test, "item_dict": item_dict, "n_test_before": len(tes_sess),
            "splitdate": splitdate, "support": iid_counts}


def read_outputs(spark, out, run_date):
    store = TableStore(str(out))
    rows = store.read(spark, "sessions", run_date).orderBy("session_order").collect()
    vocab = {r.item_id: r.item_idx for r in store.read(spark, "item_vocab", run_date).collect()}
    return rows, vocab


# ---- crafted inputs: synthetic clicks with non-contiguous sessions and tied dates ----------------
def crafted_rows(seed: int, n_clicks: int = 2500):
    """(session_id, timestamp_ms, item_id) rows in a file order with quirks: some sessions split
    into blocks far apart (the last block's date wins; ties by first close), many equal dates."""
    c = generate_clicks(SynthConfig(n_clicks=n_clicks, seed=seed, n_items=120, n_days=12, mean_gap_s=900))
    rng = np.random.default_rng(seed)
    ts = c["timestamp_ms"].copy()
    coarse = rng.random(len(ts)) < 0.5                       # many ties: whole hours
    ts[coarse] = ts[coarse] // 3_600_000 * 3_600_000
    rows = list(zip(c["session_id"].tolist(), ts.tolist(), c["item_id"].tolist()))
    for _ in range(40):                                      # move a row far down the file
        i = int(rng.integers(0, len(rows)))
        row = rows.pop(i)
        rows.insert(min(len(rows), i + int(rng.integers(5, 400))), row)
    return rows


def iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def write_yoochoose(path: Path, rows) -> list[str]:
    lines = [f"{s},{iso_ms(t)},{i},0" for s, t, i in rows]
    path.write_text("\n".join(lines) + "\n")
    return lines


def write_diginetica(path: Path, rows, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = ["session_id;user_id;item_id;timeframe;eventdate"]
    for s, t, i in rows:   # timeframes with ties (stable sort) and not in file order
        lines.append(f"{s};NA;{i};{int(rng.integers(0, 6)) * 1000};{time.strftime('%Y-%m-%d', time.gmtime(t // 1000))}")
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture(scope="module")
def yoochoose_run(spark, tmp_path_factory):
    d = tmp_path_factory.mktemp("yc")
    lines = write_yoochoose(d / "clicks.dat", crafted_rows(seed=3))
    cfg = SessionsConfig(input=str(d / "clicks.dat"), format="yoochoose", output=str(d / "out"),
                         run_date="2024-01-02")
    return {"cfg": cfg, "lines": lines, "stats": build_sessions(spark, cfg), "dir": d}


def assert_same_as_official(spark, cfg, stats, official):
    rows, vocab = read_outputs(spark, cfg.output, cfg.run_date)
    train = [(r.session_id, list(r.item_idx)) for r in rows if r.split == "train"]
    test = [(r.session_id, list(r.item_idx)) for r in rows if r.split == "test"]
    assert train == official["train"]
    assert test == official["test"]
    assert vocab == official["item_dict"]
    assert [r.session_order for r in rows] == list(range(len(rows)))
    inv = {v: k for k, v in vocab.items()}
    assert all([inv[i] for i in r.item_idx] == list(r.item_ids) for r in rows)
    assert stats["sessions"]["test_before_unknown_item_filter"] == official["n_test_before"]
    assert stats["split_epoch_s"] == official["splitdate"]
    assert stats["n_items"] == len(official["item_dict"])


def test_yoochoose_matches_official_port_on_crafted_file(spark, yoochoose_run):
    official = official_preprocess(yoochoose_run["lines"], "yoochoose")
    assert len(official["train"]) > 50 and len(official["test"]) > 5   # the file exercises both
    assert_same_as_official(spark, yoochoose_run["cfg"], yoochoose_run["stats"], official)
    vocab = TableStore(yoochoose_run["cfg"].output).read(spark, "item_vocab", "2024-01-02").collect()
    assert {r.item_id: r.support for r in vocab} == {i: official["support"][i] for i in official["item_dict"]}


def test_diginetica_matches_official_port_on_crafted_file(spark, tmp_path):
    lines = write_diginetica(tmp_path / "views.csv", crafted_rows(seed=5), seed=5)
    cfg = SessionsConfig(input=str(tmp_path / "views.csv"), format="diginetica",
                         output=str(tmp_path / "out"), run_date="2024-01-02", min_item_support=3)
    stats = build_sessions(spark, cfg)
    official = official_preprocess(lines, "diginetica", min_support=3)
    assert len(official["train"]) > 50 and len(official["test"]) > 5
    assert_same_as_official(spark, cfg, stats, official)


# ---- the bundled sample: exactly the official numbers -------------------------------------------
def test_sample_parity_with_official_numbers_and_pairs(spark, sample_stage1, sample_csv, fixtures_dir):
    stats = sample_stage1["stats"]
    assert stats["train_sessions"] == 469
    assert stats["test_sessions"] == 39
    assert stats["sessions"]["test_before_unknown_item_filter"] == 47
    assert stats["n_items"] == 309
    assert stats["train_pairs"] == 1205
    assert stats["test_pairs"] == 99
    assert round(stats["avg_length"], 3) == 3.567
    assert stats["fraction"] == 1.0 and stats["split_date"] == "2016-05-25"

    rows, vocab = read_outputs(spark, sample_stage1["output"], sample_stage1["run_date"])
    assert sorted(vocab.values()) == list(range(1, 310))
    train = [list(r.item_idx) for r in rows if r.split == "train"]
    test = [list(r.item_idx) for r in rows if r.split == "test"]
    assert train[:2] == [[1, 2, 3], [4, 5]]
    official = json.loads((fixtures_dir / "official_preprocess_pairs.json").read_text())
    assert official["n_items"] == 309
    prefixes, targets = augment_sessions(train)
    assert prefixes == official["train"]["prefixes"] and targets == official["train"]["targets"]
    prefixes, targets = augment_sessions(test)
    assert prefixes == official["test"]["prefixes"] and targets == official["test"]["targets"]
    assert json.loads(Path(Layout(sample_stage1["output"]).stats(sample_stage1["run_date"], STATS_SESSIONS)).read_text()) == stats


def test_sample_every_row_is_used_filtered_or_quarantined(spark, sample_stage1, sample_csv):
    stats = sample_stage1["stats"]
    store = TableStore(sample_stage1["output"])
    data_lines = len(sample_csv.read_text().splitlines()) - 1          # minus the header
    used = store.read(spark, "sessions", sample_stage1["run_date"]).agg(F.sum(F.size("item_ids"))).first()[0]
    quarantined = store.read(spark, "quarantine", sample_stage1["run_date"]).count()
    assert stats["rows_read"] == data_lines == 12391
    assert stats["rows_used"] == used
    assert stats["rows_quarantined"] == quarantined == 0
    assert stats["rows_read"] == used + stats["rows_filtered"] + quarantined
    assert stats["rows_filtered"] == sum(stats["filtered_by_step"].values())
    assert stats["sessions"]["read"] == 2986


def test_sessions_table_schema_is_the_contract(spark, sample_stage1):
    df = TableStore(sample_stage1["output"]).read(spark, "sessions", sample_stage1["run_date"])
    assert df.drop("run_date").schema.simpleString() == (
        "struct<session_id:string,session_date:date,split:string,item_ids:array<string>,"
        "item_idx:array<int>,session_order:bigint>")
    vocab = TableStore(sample_stage1["output"]).read(spark, "item_vocab", sample_stage1["run_date"])
    assert vocab.drop("run_date").schema.simpleString() == "struct<item_id:string,item_idx:int,support:bigint>"
    q = TableStore(sample_stage1["output"]).read(spark, "quarantine", sample_stage1["run_date"])
    assert q.drop("run_date").schema.simpleString() == "struct<source:string,raw:string,reason:string>"


# ---- transforms ----------------------------------------------------------------------------------
def test_sessions_from_clicks_last_row_date_and_first_close(spark):
    # file: a a b a c   -> a's first block ends at pos 1, its last row (pos 3) sets its date
    clicks = spark.createDataFrame(
        [("a", "x", 0, 50, 0), ("a", "y", 1, 10, 1), ("b", "z", 0, 30, 2), ("a", "w", 2, 20, 3),
         ("c", "v", 0, 40, 4), ("c", "u", 0, 5, 5)],
        "session_id string, item_id string, click_key long, time_s long, pos long")
    got = sessions_from_clicks(clicks).orderBy("session_id")
    expected = spark.createDataFrame(
        [("a", ["x", "y", "w"], 20, 1), ("b", ["z"], 30, 2), ("c", ["v", "u"], 5, 5)],
        "session_id string, items array<string>, time_s long, close_pos long")
    assert_df_equality(got, expected, ignore_nullable=True)
    by_time = sessions_from_clicks(clicks, "max_time").orderBy("session_id")
    assert [r.time_s for r in by_time.collect()] == [50, 30, 40]


def test_split_sessions_exclusive_and_inclusive(spark):
    s = spark.createDataFrame([("a", 5), ("b", 10), ("c", 11)], "session_id string, time_s long")
    assert [(r.session_id, r.split) for r in split_sessions(s, 10, False).orderBy("session_id").collect()] == \
        [("a", "train"), ("c", "test")]
    assert [(r.session_id, r.split) for r in split_sessions(s, 10, True).orderBy("session_id").collect()] == \
        [("a", "train"), ("b", "test"), ("c", "test")]


def test_item_vocabulary_first_appearance_in_official_order(spark):
    sessions = spark.createDataFrame(
        [("s1", "train", ["b", "a"], 2, 9), ("s2", "train", ["c", "b"], 1, 7),
         ("s3", "train", ["d"], 2, 3), ("s4", "test", ["e", "a"], 0, 0)],
        "session_id string, split string, items array<string>, time_s long, close_pos long")
    support = spark.createDataFrame([(i, 5) for i in "abcde"], "item_id string, support long")
    expected = [("c", 1), ("b", 2), ("d", 3), ("a", 4)]
    got = item_vocabulary(sessions, support).orderBy("item_idx")
    # order: s2 (t=1), then s3 (t=2, close 3) before s1 (t=2, close 9); test items never numbered
    assert [(r.item_id, r.item_idx) for r in got.collect()] == expected
    # the packed-long first appearance (a hash aggregation) gives the same numbering
    bits = order_key_bits(1, 2, 9, 2)
    assert bits == (1, 4, 1)
    packed = item_vocabulary(sessions, support, (1, bits)).orderBy("item_idx")
    assert [(r.item_id, r.item_idx, r.support) for r in packed.collect()] == \
        [(r.item_id, r.item_idx, r.support) for r in got.collect()]
    assert order_key_bits(-2**40, 2**40, 2**20, 2**4) is None       # 42 + 21 + 4 bits: struct min


def test_with_dense_order_is_a_dense_position_across_partitions(spark):
    rng = np.random.default_rng(0)
    rows = [(int(a), int(b)) for a, b in zip(rng.integers(0, 20, 300), rng.permutation(300))]
    df = spark.createDataFrame(rows, "t long, c long").repartition(3)
    got = with_dense_order(df, ["t", "c"], "order", cache=lambda d: d.cache())
    pairs = [(r.order, r.t, r.c) for r in got.collect()]
    assert sorted(p[0] for p in pairs) == list(range(300))
    assert [p[1:] for p in sorted(pairs)] == sorted(rows)


# ---- config -------------------------------------------------------------------------------------
def test_config_defaults_yaml_and_validation(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("build_sessions:\n  min_item_support: 3\n  fraction: 1/64\n  event_types: [view]\n")
    cfg = SessionsConfig.from_args(["--config", str(y), "--input", "x", "--format", "yoochoose",
                                    "--output", "o", "--run-date", "2024-01-01", "--inclusive-split"])
    assert (cfg.min_item_support, cfg.inclusive_split, cfg.event_types) == (3, True, ["view"])
    assert cfg.effective_split_days() == 1 and parse_fraction(cfg.fraction) == 1 / 64
    assert cfg.replace(format="diginetica").effective_split_days() == 7
    assert parse_fraction("0.25") == 0.25
    with pytest.raises(ConfigError, match="fraction"):
        cfg.replace(fraction="2")
    with pytest.raises(ConfigError, match="run-date"):
        cfg.replace(run_date="2024-02-30")
    with pytest.raises(ConfigError, match="--format"):
        SessionsConfig.from_args(["--input", "x", "--output", "o", "--run-date", "2024-01-01"])
    with pytest.raises(ConfigError, match="min-session-length"):
        cfg.replace(min_session_length=1)


# ---- idempotent reruns --------------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_replaces_its_date_and_leaves_other_dates(spark, yoochoose_run, tmp_path):
    cfg = yoochoose_run["cfg"]
    store = TableStore(cfg.output)
    n_before = store.read(spark, "sessions", cfg.run_date).count()
    small = tmp_path / "small.dat"
    write_yoochoose(small, crafted_rows(seed=11, n_clicks=800))
    other = cfg.replace(input=str(small), run_date="2024-01-03", min_item_support=2)
    other_stats = build_sessions(spark, other)
    other_sessions = store.read(spark, "sessions", "2024-01-03").drop("run_date").collect()
    assert len(other_sessions) == other_stats["train_sessions"] + other_stats["test_sessions"]

    rerun = cfg.replace(min_item_support=3)          # same run date, different result
    stats = build_sessions(spark, rerun)
    again = store.read(spark, "sessions", cfg.run_date)
    assert again.count() == stats["train_sessions"] + stats["test_sessions"] != n_before
    official = official_preprocess(yoochoose_run["lines"], "yoochoose", min_support=3)
    assert again.where("split = 'train'").count() == len(official["train"])
    assert read_json(Layout(cfg.output).stats(cfg.run_date, STATS_SESSIONS))["min_item_support"] == 3
    assert store.read(spark, "sessions", "2024-01-03").drop("run_date").collect() == other_sessions
    assert sorted(p.name for p in Path(cfg.output, "sessions").iterdir()) == \
        ["run_date=2024-01-02", "run_date=2024-01-03"]


# ---- the job ------------------------------------------------------------------------------------
def _env():
    env = dict(os.environ)
    env.setdefault("SRGNN_DRIVER_MEMORY", "2g")
    env["SRGNN_SPARK_MASTER"] = "local[2]"
    return env


@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_job_on_the_sample(tmp_path, sample_csv):
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=2", str(ROOT / "jobs/build_sessions.py"),
         "--input", str(sample_csv), "--format", "diginetica", "--output", str(out),
         "--run-date", "2016-06-01"],
        capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # under spark-submit the driver's stderr (logs) is merged into stdout: the stats are the last block
    lines = proc.stdout.splitlines()
    stats = json.loads("\n".join(lines[lines.index("{"):]))
    assert (stats["train_sessions"], stats["test_sessions"], stats["n_items"]) == (469, 39, 309)
    assert read_json(Layout(str(out)).stats("2016-06-01", STATS_SESSIONS)) == stats
    for table in ("sessions", "item_vocab", "quarantine"):
        assert (out / table / "run_date=2016-06-01").is_dir()


@pytest.mark.slow
@pytest.mark.spark
def test_job_missing_input_is_one_clear_line(tmp_path):
    missing = tmp_path / "nope.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs/build_sessions.py"), "--input", str(missing),
         "--format", "diginetica", "--output", str(tmp_path / "out"), "--run-date", "2016-06-01"],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert str(missing) in errors[0] and "session_id;user_id;item_id;timeframe;eventdate" in errors[0]
    assert "Traceback" not in proc.stderr and "Py4J" not in proc.stderr
    assert not (tmp_path / "out" / "sessions").exists()
