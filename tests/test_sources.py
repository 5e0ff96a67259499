"""Stage 1 inputs: malformed rows go to quarantine with a reason, bad paths/columns stop with a clear
error, file order is dense over valid rows, events are sessionized by inactivity gap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from pipelines.sessions import SessionsConfig, build_sessions, sources, transforms
from pipelines.sessions.inputs import read_parsed
from srgnn.core.contracts import STATS_SESSIONS
from srgnn.core.errors import InputError
from srgnn.core.fs import read_json
from srgnn.core.layout import Layout
from pipelines.tables import TableStore

RUN_DATE = "2024-02-01"


def quarantine_of(spark, out):
    return TableStore(str(out)).read(spark, "quarantine", RUN_DATE).drop("run_date").collect()


def parsed_rows(spark, cfg):
    parsed, counts, _ = transforms.resolve_headers_and_segments(read_parsed(spark, cfg))
    return parsed.orderBy("source", "line_id").collect(), counts


# ---- quarantine: at least 10 kinds of bad rows --------------------------------------------------
def test_bad_diginetica_rows_are_quarantined_with_reasons(spark, fixtures_dir, tmp_path):
    path = fixtures_dir / "bad_diginetica.csv"
    cfg = SessionsConfig(input=str(path), format="diginetica", output=str(tmp_path / "out"),
                         run_date=RUN_DATE, min_item_support=1, split_days=3)
    stats = build_sessions(spark, cfg)
    q = quarantine_of(spark, tmp_path / "out")
    expected = {"blank_line": 2, "repeated_header": 1, "too_few_columns": 1, "too_many_columns": 1,
                "empty_session_id": 1, "empty_item_id": 2, "malformed_timeframe": 2,
                "malformed_date": 1, "invalid_date": 2, "bad_encoding": 1}
    assert len(expected) >= 10
    assert stats["quarantined_by_reason"] == expected
    got = {}
    for r in q:
        got[r.reason] = got.get(r.reason, 0) + 1
    assert got == expected
    assert all(r.source.endswith("bad_diginetica.csv") for r in q)
    raws = {r.raw: r.reason for r in q}
    assert raws["3;NA;11;100;2016-02-30"] == "invalid_date"
    assert raws["3;NA;10;100;2016-05-09;extra"] == "too_many_columns"
    assert raws["session_id;user_id;item_id;timeframe;eventdate"] == "repeated_header"
    assert raws["3;NA;\ufffd\ufffd;100;2016-05-09"] == "bad_encoding"

    data_rows = len(path.read_bytes().splitlines()) - 1
    sessions = TableStore(str(tmp_path / "out")).read(spark, "sessions", RUN_DATE).orderBy("session_order").collect()
    used = sum(len(r.item_ids) for r in sessions)
    assert stats["rows_read"] == data_rows == 23
    assert stats["rows_read"] == used + stats["rows_filtered"] + len(q)
    # the good rows: session 1 (CRLF line kept), 2 (clicks sorted by timeframe), 3 (mixed with bad
    # rows), 4; the one-click session 5 is filtered. max date 05-10, split 05-07.
    assert [(r.session_id, r.split, list(r.item_ids)) for r in sessions] == [
        ("1", "train", ["10", "11"]), ("2", "train", ["12", "10"]),
        ("3", "test", ["11", "10"]), ("4", "test", ["12", "10"])]
    assert stats["filtered_by_step"]["short_sessions"] == 1


def test_bad_yoochoose_rows_and_top_header(spark, fixtures_dir, tmp_path):
    cfg = SessionsConfig(input=str(fixtures_dir / "bad_yoochoose.dat"), format="yoochoose",
                         output=str(tmp_path / "out"), run_date=RUN_DATE)
    rows, counts = parsed_rows(spark, cfg)
    assert counts == {None: 6, "repeated_header": 1, "malformed_date": 1, "invalid_date": 2,
                      "too_few_columns": 1, "too_many_columns": 1, "empty_session_id": 1,
                      "empty_item_id": 1, "blank_line": 1}
    assert sum(counts.values()) == 15 == len(rows)          # the top header is not a row
    valid = [(r.session_id, r.item_id, r.time_s) for r in rows if r.reason is None]
    assert valid[2] == ("2", "101", 1396432800)              # 2014-04-02T10:00:00Z, read as UTC
    assert valid[3][2] == 1396433100                        # milliseconds cut ([:19])


def test_events_csv_mapping_gap_and_type_filter(spark, fixtures_dir, tmp_path):
    cfg = SessionsConfig(input=str(fixtures_dir / "bad_events.csv"), format="events",
                         output=str(tmp_path / "out"), run_date=RUN_DATE, user_col="uid", time_col="ts",
                         item_col="product", type_col="kind", event_types=["view", "cart"],
                         min_item_support=1, split_days=1)
    stats = build_sessions(spark, cfg)
    sessions = TableStore(cfg.output).read(spark, "sessions", RUN_DATE).orderBy("session_order").collect()
    assert [(r.session_id, r.split, list(r.item_ids), list(r.item_idx), r.session_order) for r in sessions] == [
        ("B#1", "train", ["p1", "p2"], [1, 2], 0),
        ("A#1", "train", ["p1", "p2", "p3"], [1, 2, 3], 1),       # 10:50 is 30 min after 10:20
        ("A#2", "train", ["p1", "p2"], [1, 2], 2),                # purchase at 11:25 filtered
        ("C#1", "test", ["p1", "p3"], [1, 3], 3)]
    assert str(sessions[3].session_date) == "2024-01-05"
    assert stats["quarantined_by_reason"] == {"empty_user_id": 1, "malformed_date": 1,
                                             "empty_item_id": 1, "too_few_columns": 1}
    assert stats["filtered_by_step"]["event_type"] == 1
    assert stats["rows_read"] == 14 == stats["rows_used"] + stats["rows_filtered"] + stats["rows_quarantined"]
    assert stats["rows_used"] == 9


def test_events_json_and_parquet_inputs(spark, tmp_path):
    good = [{"user_id": "u1", "timestamp": "2024-01-01T10:00:00Z", "item_id": 7, "event_type": "view"},
            {"user_id": "u1", "timestamp": 1704103260, "item_id": 8, "event_type": "view"},
            {"user_id": None, "timestamp": "2024-01-01T10:02:00Z", "item_id": 9, "event_type": "view"}]
    jl = tmp_path / "events.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in good) + "\n{not json\n")
    cfg = SessionsConfig(input=str(jl), format="events", input_format="json", output=str(tmp_path / "o"),
                         run_date=RUN_DATE)
    rows, counts = parsed_rows(spark, cfg)
    assert counts == {None: 2, "empty_user_id": 1, "malformed_json": 1}
    assert [(r.user_id, r.item_id, r.ts_ms) for r in rows if r.reason is None] == [
        ("u1", "7", 1704103200000), ("u1", "8", 1704103260000)]

    pq = tmp_path / "events_parquet"
    spark.createDataFrame([(r["user_id"], str(r["timestamp"]), r["item_id"]) for r in good],
                          "user string, ts string, item long").coalesce(1).write.parquet(str(pq))
    cfg = cfg.replace(input=str(pq), input_format="parquet", window_days=0, user_col="user", time_col="ts",
                      item_col="item")
    rows, counts = parsed_rows(spark, cfg)
    assert counts == {None: 2, "empty_user_id": 1}
    bad = [r for r in rows if r.reason]
    assert json.loads(bad[0].raw) == {"ts": "2024-01-01T10:02:00Z", "item": 9}   # the row as JSON
    with pytest.raises(InputError, match="columns \\['user_id'\\] not found"):
        build_sessions(spark, cfg.replace(user_col="user_id"))


# ---- clear errors for paths and columns ---------------------------------------------------------
def test_missing_empty_and_wrong_columns_stop_with_clear_errors(spark, tmp_path, fixtures_dir, sample_csv):
    def cfg(path, fmt="diginetica", **kw):
        return SessionsConfig(input=str(path), format=fmt, output=str(tmp_path / "out"), run_date=RUN_DATE, **kw)

    digi_cols = "session_id;user_id;item_id;timeframe;eventdate"
    with pytest.raises(InputError, match=f"{tmp_path}/missing.csv does not exist.*{digi_cols}"):
        build_sessions(spark, cfg(tmp_path / "missing.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv is empty"):
        build_sessions(spark, cfg(tmp_path / "empty.csv"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="emptydir is empty"):
        build_sessions(spark, cfg(tmp_path / "emptydir"))
    with pytest.raises(InputError, match=f"bad_yoochoose.dat: header .* lacks column.*{digi_cols}"):
        build_sessions(spark, cfg(fixtures_dir / "bad_yoochoose.dat"))
    with pytest.raises(InputError, match="sample_train-item-views.csv: first lines have 1 comma-separated"):
        build_sessions(spark, cfg(sample_csv, "yoochoose"))
    with pytest.raises(InputError, match="lacks column.*'user'.*user, timestamp, item_id"):
        build_sessions(spark, cfg(fixtures_dir / "bad_events.csv", "events", user_col="user"))
    assert not (tmp_path / "out").exists()


# ---- file order ---------------------------------------------------------------------------------
def test_file_positions_dense_over_valid_rows_across_files_and_splits(spark, tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    expected = []
    for name in ("b.dat", "a.dat"):           # order is by file name, not by listing or size
        lines = []
        for i in range(60):
            if i % 7 == 3:
                lines.append(f"bad line {i}")                          # quarantined
            else:
                lines.append(f"{ord(name[0])}{i // 4:03d},2014-04-01T10:{i % 60:02d}:00Z,{i},0")
        (d / name).write_text("\n".join(lines) + "\n")
        expected.append([ln.split(",")[0] + "/" + ln.split(",")[2] for ln in lines if not ln.startswith("bad")])
    expected = expected[1] + expected[0]
    cfg = SessionsConfig(input=str(d), format="yoochoose", output=str(tmp_path / "o"), run_date=RUN_DATE)
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    old = {k: spark.conf.get(k) for k in keys}
    # several splits per file; then both files packed into one partition
    for conf, many in (({keys[0]: "300"}, True), ({keys[0]: "10000000", keys[1]: "0"}, False)):
        for k, v in conf.items():
            spark.conf.set(k, v)
        try:
            parsed, counts, segments = transforms.resolve_headers_and_segments(read_parsed(spark, cfg))
            assert (parsed.rdd.getNumPartitions() > 4) == many
            valid = transforms.with_file_positions(transforms.valid_rows(parsed)).collect()
            # the segments counted with the headers give the same positions without a second pass
            valid_seg = transforms.with_file_positions(transforms.valid_rows(parsed), segments).collect()
        finally:
            for k, v in old.items():
                spark.conf.set(k, v)
        assert counts == {None: len(expected), "too_few_columns": 2 * 9}
        got = sorted((r.pos, f"{r.session_id}/{r.item_id}") for r in valid)
        assert [p for p, _ in got] == list(range(len(expected)))
        assert [k for _, k in got] == expected
        assert sorted((r.pos, f"{r.session_id}/{r.item_id}") for r in valid_seg) == got


def test_sessionize_events_cuts_at_gaps_per_user(spark):
    events = spark.createDataFrame(
        [("u", "a", 0, 0), ("u", "b", 30 * 60_000, 1), ("v", "c", 10, 2), ("u", "c", 60 * 60_000 + 1, 3),
         ("u", "d", 60 * 60_000 + 1, 4)],
        "user_id string, item_id string, ts_ms long, pos long")
    got = transforms.sessionize_events(events, 30).orderBy("pos").collect()
    assert [r.session_id for r in got] == ["u#1", "u#1", "v#1", "u#2", "u#2"]
    assert [r.time_s for r in got] == [0, 1800, 0, 3600, 3600]


def test_bom_and_crlf_file_parses_with_its_header_dropped(spark, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfsession_id;user_id;item_id;timeframe;eventdate\r\n"
                     b"1;NA;5;1;2016-01-01\r\n1;NA;6;2;2016-01-02\r\n")
    cfg = SessionsConfig(input=str(path), format="diginetica", output=str(tmp_path / "o"), run_date=RUN_DATE)
    rows, counts = parsed_rows(spark, cfg)
    assert counts == {None: 2}
    assert [(r.session_id, r.item_id, r.click_key, r.time_s) for r in rows] == [
        ("1", "5", 1, 1451606400), ("1", "6", 2, 1451692800)]


def test_yoochoose_time_is_utc_seconds_of_first_19_chars_in_any_session_zone(spark):
    """``timestamp[:19]`` read as UTC whatever the session time zone; null when not a real time."""
    import datetime as dt
    values = ["2014-04-01T00:00:04.977Z", "2014-04-01T00:00:04", "1969-12-31T23:59:59.5Z",
              "2016-02-29T12:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
              "2014-02-30T00:00:00Z", "2014-04-01T25:00:00Z", "2014-04-01T23:60:00Z",
              "2014-04-01T23:59:60Z", "2014-13-01T00:00:00Z"]

    def expected(v):
        try:
            t = dt.datetime.strptime(v[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return None
        return int((t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds())

    df = spark.createDataFrame([(v,) for v in values], "ts string")
    zone = spark.conf.get("spark.sql.session.timeZone")
    try:
        for tz in ("UTC", "America/Los_Angeles", "Asia/Kolkata"):
            spark.conf.set("spark.sql.session.timeZone", tz)
            got = {r.ts: r.t for r in df.select("ts", sources._utc_seconds(F.col("ts")).alias("t")).collect()}
            assert got == {v: expected(v) for v in values}, tz
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


# ---- bad rows: future clicks, untrimmed and malformed ids, inputs without sessions -------------
def quarantine_reasons(spark, out, run_date=RUN_DATE):
    return sorted((r.raw, r.reason) for r in quarantine_of_date(spark, out, run_date))


def quarantine_of_date(spark, out, run_date):
    return TableStore(str(out)).read(spark, "quarantine", run_date).collect()


def test_clicks_after_the_run_date_are_quarantined_and_do_not_move_the_split(spark, tmp_path):
    lines = [f"{s},2014-04-0{d}T10:0{i}:00Z,{100 + (s + i) % 3},0" for s, d in ((1, 1), (2, 2), (3, 3), (4, 4))
             for i in range(2)]
    lines += ["5,2014-04-04T23:59:59Z,100,0", "5,2014-04-04T23:59:59.999Z,101,0",   # the run date's last second
              "6,2014-04-05T00:00:00Z,100,0", "6,2014-04-20T08:00:00Z,101,0"]      # after the run date
    path = tmp_path / "clicks.dat"
    path.write_text("\n".join(lines) + "\n")
    cfg = SessionsConfig(input=str(path), format="yoochoose", output=str(tmp_path / "out"),
                         run_date="2014-04-04", min_item_support=1)
    stats = build_sessions(spark, cfg)
    assert stats["quarantined_by_reason"] == {"future_timestamp": 2}
    assert quarantine_reasons(spark, cfg.output, "2014-04-04") == [
        ("6,2014-04-05T00:00:00Z,100,0", "future_timestamp"), ("6,2014-04-20T08:00:00Z,101,0", "future_timestamp")]
    assert stats["max_date"] == "2014-04-04T23:59:59Z" and stats["split_date"] == "2014-04-03T23:59:59Z"
    assert (stats["train_sessions"], stats["test_sessions"]) == (3, 2)

    events = tmp_path / "events.csv"     # events: the same rule on their millisecond times
    events.write_text("user_id,timestamp,item_id\nv,2014-04-01T10:00:00Z,a\nv,2014-04-01T10:01:00Z,b\n"
                      "u,2014-04-04T10:00:00Z,a\nu,2014-04-04T10:01:00Z,b\nu,1396656000000,c\n")
    stats = build_sessions(spark, cfg.replace(input=str(events), format="events"))
    assert stats["quarantined_by_reason"] == {"future_timestamp": 1}


def test_ids_are_trimmed(spark, tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("session_id;user_id;item_id;timeframe;eventdate\n"
                    "1;NA; 12;1;2016-05-01\n1 ;NA;10;2;2016-05-01\n 2;NA;12 ;1;2016-05-05\n"
                    "2;NA;10;2;2016-05-05\n3;NA;12;1;2016-05-09\n3;NA; 10 ;2;2016-05-09\n")
    cfg = SessionsConfig(input=str(path), format="diginetica", output=str(tmp_path / "out"),
                         run_date=RUN_DATE, min_item_support=1, split_days=2)
    stats = build_sessions(spark, cfg)
    store = TableStore(cfg.output)
    vocab = sorted((r.item_id, r.item_idx, r.support) for r in store.read(spark, "item_vocab", RUN_DATE).collect())
    assert vocab == [("10", 2, 3), ("12", 1, 3)]
    sessions = store.read(spark, "sessions", RUN_DATE).orderBy("session_order").collect()
    assert [(r.session_id, list(r.item_ids)) for r in sessions] == [("1", ["12", "10"]), ("2", ["12", "10"]),
                                                                    ("3", ["12", "10"])]
    assert stats["rows_quarantined"] == 0 and stats["n_items"] == 2


def test_ids_with_control_characters_quotes_or_non_digits_are_malformed(spark, tmp_path):
    good = [f"{s},2014-04-0{s}T10:0{i}:00Z,{10 + i},0" for s in (1, 2, 3) for i in range(2)]
    bad = ["4,2014-04-03T10:00:00Z,1\x002,0", '4,2014-04-03T10:00:00Z,"12,0', "x4,2014-04-03T10:00:00Z,12,0",
           "4,2014-04-03T10:00:00Z,12a,0", "4\x01,2014-04-03T10:00:00Z,12,0", "-4,2014-04-03T10:00:00Z,12,0"]
    path = tmp_path / "clicks.dat"
    path.write_bytes(("\n".join(good + bad) + "\n").encode())
    cfg = SessionsConfig(input=str(path), format="yoochoose", output=str(tmp_path / "out"), run_date=RUN_DATE,
                         min_item_support=1)
    stats = build_sessions(spark, cfg)
    assert stats["quarantined_by_reason"] == {"malformed_id": 6}
    assert quarantine_reasons(spark, cfg.output) == sorted((b, "malformed_id") for b in bad)

    digi = tmp_path / "clicks.csv"
    digi.write_text("session_id;user_id;item_id;timeframe;eventdate\n1;NA;10;1;2016-05-01\n1;NA;11;2;2016-05-01\n"
                    "1;NA;1.5;3;2016-05-01\nA1;NA;10;1;2016-05-01\n")
    stats = build_sessions(spark, cfg.replace(input=str(digi), format="diginetica"))
    assert stats["quarantined_by_reason"] == {"malformed_id": 2}

    events = tmp_path / "events.csv"     # any text is an id here, except control characters and quotes
    events.write_bytes(b'user_id,timestamp,item_id\nv,2014-03-30T10:00:00Z,sku 7\nv,2014-03-30T10:01:00Z,x\n'
                       b'u-1,2014-04-01T10:00:00Z,sku 7\nu-1,2014-04-01T10:01:00Z,x\n'
                       b'u\x00,2014-04-01T10:02:00Z,x\nu-1,2014-04-01T10:03:00Z,"x\nu-1,2014-04-01T10:04:00Z,x\x7f\n')
    stats = build_sessions(spark, cfg.replace(input=str(events), format="events"))
    assert stats["quarantined_by_reason"] == {"malformed_id": 3}
    assert stats["rows_used"] == 4


def test_an_input_without_sessions_keeps_the_dates_good_tables(spark, tmp_path):
    good = tmp_path / "good.dat"
    good.write_text("".join(f"{s},2014-04-0{s}T10:0{i}:00Z,{10 + i},0\n" for s in (1, 2, 3) for i in range(2)))
    out = tmp_path / "out"
    cfg = SessionsConfig(input=str(good), format="yoochoose", output=str(out), run_date=RUN_DATE, min_item_support=1)
    stats = build_sessions(spark, cfg)
    store = TableStore(str(out))
    before = {t: sorted(store.read(spark, t, RUN_DATE).collect()) for t in ("sessions", "item_vocab", "quarantine")}
    stats_file = Layout(str(out)).stats(RUN_DATE, STATS_SESSIONS)
    assert read_json(stats_file) == stats

    empty = tmp_path / "one_click_sessions.dat"       # every session is too short; one bad row
    empty.write_text("7,2014-04-05T10:00:00Z,10,0\n8,2014-04-05T10:00:00Z,11,0\nbad\n")
    with pytest.raises(InputError, match=r"no sessions left in .*one_click_sessions.dat after filtering: "
                                         r"3 rows read, 1 quarantined .*2 sessions, 0 with >= 2 clicks; "
                                         r"nothing written"):
        build_sessions(spark, cfg.replace(input=str(empty)))
    assert {t: sorted(store.read(spark, t, RUN_DATE).collect()) for t in before} == before
    assert read_json(stats_file) == stats

    with pytest.raises(InputError, match="wrote empty tables"):
        build_sessions(spark, cfg.replace(input=str(empty), allow_empty=True))
    assert store.read(spark, "sessions", RUN_DATE).count() == 0
    assert store.read(spark, "item_vocab", RUN_DATE).count() == 0
    assert [r.reason for r in store.read(spark, "quarantine", RUN_DATE).collect()] == ["too_few_columns"]
