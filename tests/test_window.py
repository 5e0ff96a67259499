"""Stage 1 reads a window of a growing events table: Parquet path or catalog table, the events of
``--window-days`` UTC days up to the run date, filtered on ``--date-col`` (partition pruning) or on
the time column."""
from __future__ import annotations

import argparse
import datetime as dt
import shutil

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.nightly import NightlyConfig, stage_configs
from pipelines.sessions import SessionsConfig, build_sessions
from pipelines.sessions.inputs import read_parsed
from pipelines.sessions.job import run_end_s
from pipelines.sessions.transforms import with_future_quarantined
from pipelines.tables import TableStore
from srgnn.core import contracts as C
from srgnn.core.errors import ConfigError, InputError

START = "2024-03-01"        # the synthetic table's first day; 10 days: 2024-03-01 .. 2024-03-10
RUN_DATE = "2024-03-10"
WINDOW = 4                  # 2024-03-07 .. 2024-03-10


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


def events_cfg(input, out, **kw) -> SessionsConfig:
    return SessionsConfig(input=str(input), format="events", output=str(out), run_date=RUN_DATE,
                          input_format=kw.pop("input_format", "parquet"), **kw)


@pytest.fixture(scope="module")
def events_table(tmp_path_factory):
    """The synthetic events table: event_date=YYYY-MM-DD/part-0.parquet, 1,500 clicks a day, 10 days."""
    from bench.synth import SynthConfig, write_events_table

    root = tmp_path_factory.mktemp("window") / "events"
    write_events_table(root, SynthConfig(seed=5, n_items=200, start=START), clicks_per_day=1_500, days=10)
    return root


@pytest.fixture(scope="module")
def prefiltered_run(spark, events_table, tmp_path_factory):
    """Stage 1 on a copy of the table holding only the window's days, read whole (--window-days 0)."""
    base = tmp_path_factory.mktemp("prefiltered")
    copy = base / "events"
    for d in range(WINDOW):
        day = (dt.date.fromisoformat(RUN_DATE) - dt.timedelta(days=d)).isoformat()
        shutil.copytree(events_table / f"event_date={day}", copy / f"event_date={day}")
    stats = build_sessions(spark, events_cfg(copy, base / "out", window_days=0))
    return base / "out", stats


def tables(spark, out):
    store = TableStore(str(out))
    return {t: store.read(spark, t, RUN_DATE).drop("run_date") for t in (C.SESSIONS, C.ITEM_VOCAB)}


# ---- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SessionsConfig, NightlyConfig])
def test_both_jobs_list_the_three_flags(cls):
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    text = parser.format_help()
    for flag in ("--input-format", "--window-days", "--date-col"):
        assert flag in text
    choices = {a.dest: a.choices for a in parser._actions}
    assert choices["input_format"] == ["csv", "json", "parquet", "delta", "table"]


def test_nightly_hands_the_window_options_to_stage_1():
    cfg = NightlyConfig.from_args(["--format", "events", "--input", "db.events", "--input-format", "table",
                                   "--window-days", "7", "--date-col", "event_date"])
    s1 = stage_configs(cfg, ["build_sessions"])["build_sessions"]
    assert (s1.input, s1.input_format, s1.window_days, s1.date_col) == ("db.events", "table", 7, "event_date")
    # not given: the stage's own (YAML or default) values stay
    s1 = stage_configs(NightlyConfig.from_args([]), ["build_sessions"])["build_sessions"]
    assert (s1.input_format, s1.window_days, s1.date_col) == ("csv", 30, "")


def test_window_options_are_checked():
    with pytest.raises(ConfigError, match="--window-days must be >= 0"):
        SessionsConfig(window_days=-1).validate()
    with pytest.raises(ConfigError, match="--input-format table needs --format events"):
        SessionsConfig(format="diginetica", input_format="table").validate()
    cfg = SessionsConfig(format="events", input_format="parquet", run_date="2024-03-10", window_days=3)
    first, start_s, end_s = cfg.window()
    assert first == dt.date(2024, 3, 8)
    assert (start_s * 1000, end_s * 1000) == (ms("2024-03-08T00:00:00"), ms("2024-03-11T00:00:00"))
    assert not cfg.replace(window_days=0).windowed() and not cfg.replace(input_format="csv").windowed()


# ---- the window's bounds ------------------------------------------------------------------------
BOUNDARY = [   # (event_date, timestamp): run date 2024-03-10, 3-day window = 03-08 .. 03-10
    ("2024-03-07", "2024-03-07T00:00:00"), ("2024-03-07", "2024-03-07T23:59:59.999"),  # before: not read
    ("2024-03-08", "2024-03-08T00:00:00"), ("2024-03-08", "2024-03-08T12:00:00"),      # first day
    ("2024-03-10", "2024-03-10T23:59:59.999"),                                          # run date's last ms
    ("2024-03-11", "2024-03-11T00:00:00"),                                              # after: future
]


@pytest.mark.parametrize("time_type", ["timestamp", "epoch_ms"])
@pytest.mark.parametrize("date_col", ["", "event_date"])
def test_window_bounds_are_exact_utc_days(spark, tmp_path, time_type, date_col):
    rows = [(f"u{i}", ms(ts), f"i{i}", day) for i, (day, ts) in enumerate(BOUNDARY)]
    df = spark.createDataFrame(rows, "user_id string, t long, item_id string, event_date string")
    time = F.timestamp_millis("t") if time_type == "timestamp" else F.col("t")
    (df.select("user_id", time.alias("timestamp"), "item_id", F.to_date("event_date").alias("event_date"))
       .write.partitionBy("event_date").parquet(str(tmp_path / "events")))
    cfg = events_cfg(tmp_path / "events", tmp_path / "out", window_days=3, date_col=date_col,
                     time_unit="ms" if time_type == "epoch_ms" else "auto")
    parsed = with_future_quarantined(read_parsed(spark, cfg), run_end_s(RUN_DATE))
    got = sorted((r.ts_ms, r.reason) for r in parsed.select("ts_ms", "reason").collect())
    assert got == [(ms("2024-03-08T00:00:00"), None), (ms("2024-03-08T12:00:00"), None),
                   (ms("2024-03-10T23:59:59.999"), None), (ms("2024-03-11T00:00:00"), "future_timestamp")]
    # --window-days 0: the whole table
    assert read_parsed(spark, cfg.replace(window_days=0)).count() == len(BOUNDARY)


# ---- partition pruning --------------------------------------------------------------------------
def test_date_col_prunes_partitions(spark, events_table, tmp_path):
    cfg = events_cfg(events_table, tmp_path / "out", window_days=WINDOW, date_col="event_date")
    parsed = read_parsed(spark, cfg)
    plan = parsed._jdf.queryExecution().executedPlan().toString()
    assert "PartitionFilters: [" in plan and "event_date#" in plan.split("PartitionFilters: [", 1)[1].split("]")[0]
    files = {r.source.rsplit("/", 2)[-2] for r in parsed.select("source").distinct().collect()}
    assert files == {f"event_date=2024-03-{d:02d}" for d in range(7, 11)}   # only the window's partitions
    # without --date-col: a filter on the timestamp that the Parquet reader gets (row groups skipped)
    plan = read_parsed(spark, cfg.replace(date_col=""))._jdf.queryExecution().executedPlan().toString()
    assert "GreaterThanOrEqual(timestamp," in plan.split("PushedFilters: [", 1)[1].split("]")[0]


# ---- equal to a run on a pre-filtered copy --------------------------------------------------------
def test_window_run_equals_a_run_on_a_prefiltered_copy(spark, events_table, prefiltered_run, tmp_path):
    ref_out, ref_stats = prefiltered_run
    stats = build_sessions(spark, events_cfg(events_table, tmp_path / "out", window_days=WINDOW))
    got, want = tables(spark, tmp_path / "out"), tables(spark, ref_out)
    for name in want:
        assert_df_equality(got[name], want[name], ignore_row_order=True)
    assert stats["rows_read"] == ref_stats["rows_read"] == 4 * 1_500
    assert stats["train_sessions"] == ref_stats["train_sessions"] > 0
    assert (stats["window_days"], stats["window_start"], stats["window_end"], stats["rows_outside_window"]) == (
        WINDOW, "2024-03-07T00:00:00Z", "2024-03-11T00:00:00Z", None)
    assert ref_stats["window_days"] is None


def test_table_input_reads_a_catalog_table(spark, events_table, prefiltered_run, tmp_path):
    spark.read.parquet(str(events_table)).createOrReplaceTempView("window_test_events")
    try:
        stats = build_sessions(spark, events_cfg("window_test_events", tmp_path / "out", input_format="table",
                                                 window_days=WINDOW, date_col="event_date"))
    finally:
        spark.catalog.dropTempView("window_test_events")
    got, want = tables(spark, tmp_path / "out"), tables(spark, prefiltered_run[0])
    for name in want:
        assert_df_equality(got[name], want[name], ignore_row_order=True)
    assert stats["input"] == "window_test_events" and stats["rows_read"] == 4 * 1_500
    with pytest.raises(InputError, match="cannot read table no_such_table"):
        build_sessions(spark, events_cfg("no_such_table", tmp_path / "o2", input_format="table"))
    with pytest.raises(InputError, match="--date-col timestamp is timestamp, not a date"):
        read_parsed(spark, events_cfg(events_table, tmp_path / "o3", date_col="timestamp"))


def test_delta_input_without_the_jars_is_a_clear_error(spark, tmp_path):
    from pipelines.spark import delta_available
    from srgnn.core.errors import EnvironmentProblem

    if delta_available(spark):
        pytest.skip("Delta jars are on this classpath")
    with pytest.raises(EnvironmentProblem, match="Delta Lake jars"):
        read_parsed(spark, events_cfg(tmp_path / "events", tmp_path / "out", input_format="delta"))
