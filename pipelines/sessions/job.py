"""Stage 1's job: read and parse the click log, sessionize it, write ``sessions``, ``item_vocab``,
``quarantine`` (``OUT/<table>/run_date=D``) and the stats JSON ``OUT/stats/run_date=D/build_sessions.json``
(also returned and logged).
"""
from __future__ import annotations

import datetime as dt
import math
import time
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.sessions.config import SessionsConfig, parse_fraction
from pipelines.sessions.inputs import read_parsed
from pipelines.sessions.transforms import (clicks_in_file_order, indexed_sessions, item_support, item_vocabulary,
                                           order_key_bits, quarantine_rows, raw_only_when_quarantined,
                                           resolve_headers_and_segments, sessions_from_clicks, sessions_table,
                                           sessions_with_frequent_items, split_sessions, valid_rows,
                                           with_dense_order, with_future_quarantined)
from pipelines.tables import TableStore
from srgnn.core import contracts as C
from srgnn.core.dates import DAY_S, parse_run_date
from srgnn.core.errors import InputError
from srgnn.core.commit import RunCommit
from srgnn.core.layout import Layout
from srgnn.core.log import get_logger

log = get_logger(__name__)

# Session settings while stage 1 runs (restored afterwards). Every cached frame here is built once
# and scanned a few times; gathering the columnar compression statistics (a boxed hash-map probe
# per value, column and scheme) cost about a fifth of the stage's CPU, more than it saves.
STAGE_CONF = {"spark.sql.inMemoryColumnarStorage.compressed": "false"}


def _iso(seconds: int | None, fmt: str) -> str | None:
    if seconds is None:
        return None
    t = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    if fmt == "diginetica" and seconds % DAY_S == 0:
        return t.date().isoformat()
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _jvm_cpu_s(spark: SparkSession) -> float:
    """CPU seconds used so far by the driver JVM (in local mode: all executor threads too)."""
    try:
        info = spark._jvm.java.lang.ProcessHandle.current().info().totalCpuDuration()
        return info.get().toMillis() / 1000.0 if info.isPresent() else 0.0
    except Exception:  # not a local JVM (Spark Connect / restricted clusters)
        return 0.0


@contextmanager
def _session_conf(spark: SparkSession, conf: dict[str, str]):
    """Set SQL settings for the duration of the block, then put the previous values back."""
    old = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def run_end_s(run_date: str) -> int:
    """Unix seconds of the end of ``run_date`` (UTC midnight after it): clicks from then on are in
    the future of the run."""
    day = parse_run_date(run_date)
    return (day - dt.date(1970, 1, 1)).days * DAY_S + DAY_S


def _window_stats(cfg: SessionsConfig) -> dict:
    """The window read from a table input (nulls when the whole input is read). The rows before
    the window are not read (pruned partitions, skipped row groups), so not counted either."""
    if not cfg.windowed():
        return {"window_days": None, "window_start": None, "window_end": None, "rows_outside_window": None}
    _, start_s, end_s = cfg.window()
    return {"window_days": cfg.window_days, "window_start": _iso(start_s, "events"),
            "window_end": _iso(end_s, "events"), "rows_outside_window": None}


def _row(df: DataFrame, *aggs) -> dict:
    return df.agg(*aggs).collect()[0].asDict()


def build_sessions(spark: SparkSession, cfg: SessionsConfig) -> dict:
    """Run stage 1 for ``cfg``; write the tables and the stats JSON; return the stats."""
    cfg.validate_required()
    cfg.validate()
    # one writer per (OUT, run date); every output is published at once when the block ends
    with _session_conf(spark, STAGE_CONF), RunCommit(Layout(cfg.output), "build_sessions", cfg.run_date) as commit:
        return _build_sessions(spark, cfg, commit)


def _build_sessions(spark: SparkSession, cfg: SessionsConfig, commit: RunCommit) -> dict:
    t_start = time.perf_counter()
    store = TableStore(cfg.output, cfg.table_format)
    min_len = cfg.min_session_length
    cached: list[DataFrame] = []
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    t_step = [time.perf_counter(), _jvm_cpu_s(spark)]

    def lap(step: str) -> None:
        now, now_cpu = time.perf_counter(), _jvm_cpu_s(spark)
        timings[step] = round(now - t_step[0], 2)
        cpu[step] = round(now_cpu - t_step[1], 2)
        t_step[:] = [now, now_cpu]
        log.info("step %s done in %.1f s (driver JVM CPU %.1f s)", step, timings[step], cpu[step])

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.cache())
        return df

    def release(df: DataFrame) -> None:
        """Drop a cache whose dependants are all materialized (frees memory for the next ones)."""
        df.unpersist()
        cached.remove(df)

    try:
        # 1. rows: quarantined by reason, valid (one pass)
        rows = with_future_quarantined(read_parsed(spark, cfg), run_end_s(cfg.run_date))
        parsed, by_reason, segments = resolve_headers_and_segments(keep(raw_only_when_quarantined(rows)))
        n_valid = by_reason.pop(None, 0)
        rows_read = n_valid + sum(by_reason.values())
        log.info("read %d rows from %s: %d valid, %d quarantined %s", rows_read, cfg.input,
                 n_valid, sum(by_reason.values()), by_reason)
        lap("read_and_parse")
        quarantine = quarantine_rows(parsed)
        valid = valid_rows(parsed)
        n_type_filtered = 0
        if cfg.format == "events" and cfg.event_types:
            wanted = F.col("event_type").isin(list(cfg.event_types))
            n_type_filtered = int(_row(valid, F.sum(F.when(wanted, 0).otherwise(1)).alias("n"))["n"] or 0)
            valid = valid.where(F.coalesce(wanted, F.lit(False)))
            segments = None   # counted before this filter: count the positions again

        # 2. sessions in file order, then drop short sessions
        clicks = clicks_in_file_order(valid, cfg, segments)
        s0 = keep(sessions_from_clicks(clicks, "max_time" if cfg.format == "events" else "last_row"))
        support = keep(item_support(s0, min_len))
        st0 = _row(s0, F.count(F.lit(1)).alias("sessions"), F.sum(F.size("items")).alias("clicks"),
                   F.sum((F.size("items") >= min_len).cast("long")).alias("sessions_long"),
                   F.sum(F.when(F.size("items") >= min_len, F.size("items"))).alias("clicks_long"))
        sti = _row(support, F.count(F.lit(1)).alias("items"),
                   F.sum((F.col("support") > 0).cast("long")).alias("items_long"),
                   F.sum((F.col("support") >= cfg.min_item_support).cast("long")).alias("items_kept"),
                   F.sum(F.when(F.col("support") < cfg.min_item_support, F.col("support"))).alias("rare_clicks"))

        lap("sessions_and_support")
        # 3. drop rare items, then sessions left short
        frequent = support.where(F.col("support") >= cfg.min_item_support)
        s2 = keep(sessions_with_frequent_items(s0.where(F.size("items") >= min_len), frequent, min_len))
        st2 = _row(s2, F.count(F.lit(1)).alias("sessions"), F.sum(F.size("items")).alias("clicks"),
                   F.max("time_s").alias("max_time"), F.min("time_s").alias("min_time"),
                   F.max("close_pos").alias("max_pos"), F.max(F.size("items")).alias("max_len"))
        release(s0)   # s2 and support are built
        lap("frequent_items")
        if not st2["sessions"]:
            counts = (f"no sessions left in {cfg.input} after filtering: {rows_read} rows read, "
                      f"{sum(by_reason.values())} quarantined {by_reason}, {st0['sessions'] or 0} sessions, "
                      f"{st0['sessions_long'] or 0} with >= {min_len} clicks")
            if not cfg.allow_empty:
                raise InputError(f"{counts}; nothing written (the tables of {cfg.run_date} are left as they "
                                 f"were; --allow-empty replaces them with empty ones)")
            _write_empty(spark, store, cfg, quarantine, commit)
            commit.publish()
            raise InputError(f"{counts}; wrote empty tables for {cfg.run_date} (--allow-empty), "
                             f"see the quarantine table")

        # 4. split by date, vocabulary from the train sessions in official order
        max_time = int(st2["max_time"])
        split_s = max_time - DAY_S * cfg.effective_split_days()
        s3 = split_sessions(s2, split_s, cfg.inclusive_split)
        bits = order_key_bits(st2["min_time"], max_time, st2["max_pos"], st2["max_len"])
        vocab = keep(item_vocabulary(s3, support, (int(st2["min_time"]), bits) if bits else None))
        final = keep(indexed_sessions(s3, vocab))
        by_split = {r["split"]: r.asDict() for r in final.groupBy("split").agg(
            F.count(F.lit(1)).alias("sessions"),
            F.sum("n_before").alias("clicks_before"),
            F.sum((F.size("item_ids") >= min_len).cast("long")).alias("sessions_kept"),
            F.sum(F.when(F.size("item_ids") >= min_len, F.size("item_ids"))).alias("clicks_kept"),
            F.sum(F.size("item_ids")).alias("clicks_known"),
            F.sum(F.when(F.size("item_ids") >= min_len, F.size("item_ids") - 1)).alias("pairs"),
            F.max(F.array_max("item_idx")).alias("max_idx"),
        ).collect()}
        n_items = int(by_split.get("train", {}).get("max_idx") or 0)   # train items are 1..N
        release(s2)   # final and vocab are built
        lap("split_and_vocab")

        # 5. official order, write
        kept = final.where(F.size("item_ids") >= min_len)
        ordered = with_dense_order(kept, ["time_s", "close_pos"], "session_order", cache=keep)
        release(final)   # the sorted copy is built
        lap("official_order")
        store.write(quarantine, C.QUARANTINE, cfg.run_date, commit)
        store.write(sessions_table(ordered), C.SESSIONS, cfg.run_date, commit)
        store.write(vocab.orderBy("item_idx"), C.ITEM_VOCAB, cfg.run_date, commit)

        lap("write_tables")
        tr, te = by_split.get("train", {}), by_split.get("test", {})
        g = lambda d, k: int(d.get(k) or 0)  # noqa: E731
        n_train, n_test = g(tr, "sessions_kept"), g(te, "sessions_kept")
        clicks_used = g(tr, "clicks_kept") + g(te, "clicks_kept")
        filtered = {
            "event_type": n_type_filtered,
            "short_sessions": int(st0["clicks"] or 0) - int(st0["clicks_long"] or 0),
            "rare_items": int(sti["rare_clicks"] or 0),
            "short_after_rare_items": int(st0["clicks_long"] or 0) - int(sti["rare_clicks"] or 0)
            - int(st2["clicks"] or 0),
            "on_split_date": int(st2["clicks"] or 0) - g(tr, "clicks_before") - g(te, "clicks_before"),
            # (train sessions never lose clicks here: every train item is in the vocabulary)
            "unknown_test_items": sum(g(d, "clicks_before") - g(d, "clicks_known") for d in (tr, te)),
            "short_test_sessions": sum(g(d, "clicks_known") - g(d, "clicks_kept") for d in (tr, te)),
        }
        stats = {
            "stage": "build_sessions",
            "run_date": cfg.run_date,
            "input": cfg.input,
            "format": cfg.format,
            "rows_read": rows_read,
            "rows_quarantined": sum(by_reason.values()),
            "quarantined_by_reason": dict(sorted(by_reason.items())),
            "rows_filtered": sum(filtered.values()),
            "filtered_by_step": filtered,
            "rows_used": clicks_used,
            "sessions": {
                "read": int(st0["sessions"] or 0),
                f"min_length_{min_len}": int(st0["sessions_long"] or 0),
                f"min_item_support_{cfg.min_item_support}": int(st2["sessions"] or 0),
                "train": n_train,
                "test_before_unknown_item_filter": g(te, "sessions"),
                "test": n_test,
                "on_split_date": int(st2["sessions"] or 0) - g(tr, "sessions") - g(te, "sessions"),
            },
            "items": {
                "read": int(sti["items"] or 0),
                f"min_length_{min_len}": int(sti["items_long"] or 0),
                f"min_item_support_{cfg.min_item_support}": int(sti["items_kept"] or 0),
                "vocab": n_items,
            },
            "train_sessions": n_train,
            "test_sessions": n_test,
            "train_pairs": g(tr, "pairs"),
            "test_pairs": g(te, "pairs"),
            "avg_length": (clicks_used / (n_train + n_test)) if n_train + n_test else None,
            "n_items": n_items,
            "fraction": parse_fraction(cfg.fraction),
            "fraction_spec": str(cfg.fraction),
            "split_days": cfg.effective_split_days(),
            "inclusive_split": cfg.inclusive_split,
            "split_date": _iso(split_s, cfg.format),
            "split_epoch_s": split_s,
            "max_date": _iso(max_time, cfg.format),
            "max_epoch_s": max_time,
            "min_item_support": cfg.min_item_support,
            "min_session_length": min_len,
            "gap_minutes": cfg.gap_minutes if cfg.format == "events" else None,
            "event_types": list(cfg.event_types) if cfg.format == "events" else None,
            **_window_stats(cfg),
            "seconds": round(time.perf_counter() - t_start, 2),
            "step_seconds": timings,
            "step_driver_jvm_cpu_seconds": cpu,   # local mode: the executors' work too
        }
        path = Layout(cfg.output).stats(cfg.run_date, C.STATS_SESSIONS)
        commit.add_json(path, stats)
        log.info("stage 1: %d train / %d test sessions, %d items, %d train / %d test pairs, "
                 "avg length %.3f; stats at %s", n_train, n_test, n_items, stats["train_pairs"],
                 stats["test_pairs"], stats["avg_length"] or math.nan, path)
        return stats
    finally:
        for df in cached:
            df.unpersist()


def _write_empty(spark: SparkSession, store: TableStore, cfg: SessionsConfig, quarantine: DataFrame,
                 commit: RunCommit) -> None:
    """No sessions survived: still replace this run date's tables (quarantine has the rows)."""
    store.write(quarantine, C.QUARANTINE, cfg.run_date, commit)
    store.write(spark.createDataFrame([], "session_id string, session_date date, split string, "
                                          "item_ids array<string>, item_idx array<int>, session_order long"),
                C.SESSIONS, cfg.run_date, commit)
    store.write(spark.createDataFrame([], "item_id string, item_idx int, support long"),
                C.ITEM_VOCAB, cfg.run_date, commit)
