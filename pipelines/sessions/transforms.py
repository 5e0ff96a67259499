"""Stage 1's transforms: parsed rows -> quarantine and clicks in file order -> sessions in the
official order. Pure ``DataFrame -> DataFrame`` functions with built-in functions; the few that
collect a small table (counts per file segment or partition) say so.

File order: :func:`with_file_positions` turns ``(source, line_id)`` into ``pos``, a dense 0..N-1
position over the *valid* rows, which the official code's "a session's date is set when the
session id changes" rule needs (the quarantined rows are as if deleted from the file).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, TimestampType

from pipelines.sessions.config import SessionsConfig
from pipelines.sessions.sources import HEADER_MARKER
from srgnn.core.dates import DAY_S

_PID_SHIFT = 33            # monotonically_increasing_id = partition index << 33 | row in partition


# ---- headers, quarantine, positions -----------------------------------------------------------
def resolve_headers_and_segments(parsed: DataFrame) -> tuple[DataFrame, dict, list[tuple]]:
    """A line equal to the header is its file's header when it is the file's first line (dropped:
    not a row), else ``repeated_header`` (quarantined).

    Returns the rows, their counts by reason (``None`` = valid) and the valid rows' segments for
    :func:`with_file_positions` (``(source, partition, first line_id, rows)``), all from one
    aggregation pass. The segments hold only while the valid rows are exactly ``reason`` null in ``parsed``'s
    partitions (no further filter before the positions).
    """
    per = (parsed.groupBy("source", "reason", F.spark_partition_id().alias("_pid"))
           .agg(F.count(F.lit(1)).alias("n"), F.min("line_id").alias("first"))
           .collect())
    first_line: dict[str, int] = {}
    for r in per:
        first_line[r["source"]] = min(first_line.get(r["source"], r["first"]), r["first"])
    tops = sorted(int(r["first"]) for r in per
                  if r["reason"] == HEADER_MARKER and r["first"] == first_line[r["source"]])
    counts: dict = {}
    for r in per:
        reason = "repeated_header" if r["reason"] == HEADER_MARKER else r["reason"]
        counts[reason] = counts.get(reason, 0) + int(r["n"])
    if tops:
        counts["repeated_header"] -= len(tops)
        if not counts["repeated_header"]:
            del counts["repeated_header"]
    segments = [(r["source"], int(r["_pid"]), int(r["first"]), int(r["n"]))
                for r in per if r["reason"] is None]
    is_header = F.coalesce(F.col("reason") == HEADER_MARKER, F.lit(False))
    is_top = F.col("line_id").isin(tops) if tops else F.lit(False)
    reason = F.when(is_header, F.lit("repeated_header")).otherwise(F.col("reason"))
    return parsed.where(~(is_header & is_top)).withColumn("reason", reason), counts, segments


def with_future_quarantined(parsed: DataFrame, end_s: int) -> DataFrame:
    """Rows still valid whose time is at or after ``end_s`` (Unix seconds: the end of the run date)
    get the reason ``future_timestamp``: they are quarantined and cannot move the split date."""
    t_ms = F.col("ts_ms") if "ts_ms" in parsed.columns else F.col("time_s") * 1000
    future = F.col("reason").isNull() & (t_ms >= F.lit(int(end_s) * 1000))
    return parsed.withColumn("reason", F.when(future, F.lit("future_timestamp")).otherwise(F.col("reason")))


def events_from_day(frame: DataFrame, date_col: str, first_day) -> DataFrame:
    """Rows whose ``date_col`` (a date, or ``YYYY-MM-DD`` text) is ``first_day`` or later, or null.
    A filter on the partition column alone: Spark reads only the partitions it keeps."""
    bound = F.lit(first_day) if isinstance(frame.schema[date_col].dataType, DateType) \
        else F.lit(first_day.isoformat())
    c = F.col(f"`{date_col}`")
    return frame.where(c.isNull() | (c >= bound))


def events_from_time(frame: DataFrame, time_col: str, start_s: int) -> DataFrame:
    """Rows whose ``time_col`` is at or after ``start_s`` (Unix seconds), or null, when the column
    is a timestamp (a filter the Parquet reader applies to its row groups); other column types
    are filtered after parsing (:func:`parsed_from_time`)."""
    if not isinstance(frame.schema[time_col].dataType, TimestampType):
        return frame
    c = F.col(f"`{time_col}`")
    return frame.where(c.isNull() | (c >= F.timestamp_seconds(F.lit(int(start_s)))))


def parsed_from_time(parsed: DataFrame, start_s: int) -> DataFrame:
    """Parsed events at or after ``start_s`` (Unix seconds); rows without a time stay (they are
    quarantined with their reason)."""
    t = F.col("ts_ms")
    return parsed.where(t.isNull() | (t >= F.lit(int(start_s) * 1000)))


def raw_only_when_quarantined(parsed: DataFrame) -> DataFrame:
    """Null ``raw`` on valid rows (nothing reads it there): a much smaller cache."""
    return parsed.withColumn("raw", F.when(F.col("reason").isNotNull(), F.col("raw")))


def quarantine_rows(parsed: DataFrame) -> DataFrame:
    """The quarantine table: ``source``, ``raw``, ``reason`` (exact contract columns)."""
    return parsed.where(F.col("reason").isNotNull()).select(
        "source", F.make_valid_utf8("raw").alias("raw"), "reason")


def valid_rows(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col("reason").isNull()).drop("reason", "raw")


def with_file_positions(valid: DataFrame, segments: list[tuple] | None = None) -> DataFrame:
    """Add ``pos``: dense 0..N-1 over the valid rows in file order ``(source, line_id)``.

    A second ``monotonically_increasing_id`` after the filter is consecutive within each
    partition; a small per-(file, partition) offset table (collected, broadcast) makes it global.
    ``valid`` must come from a cached (or otherwise stable) DataFrame, so that recomputing the ids
    gives the same numbers. ``segments`` (from :func:`resolve_headers_and_segments` on the frame
    ``valid`` was filtered from, with no other filter) saves the pass that counts them.
    """
    spark = valid.sparkSession
    v = (valid.withColumn("_vid", F.monotonically_increasing_id())
              .withColumn("_pid", F.shiftright("_vid", _PID_SHIFT)))
    if segments is None:
        segs = [(s["source"], int(s["_pid"]), int(s["first"]), int(s["n"])) for s in
                v.groupBy("source", "_pid")
                 .agg(F.min("_vid").alias("first"), F.count(F.lit(1)).alias("n"))
                 .collect()]
    else:
        # a partition's rows come file after file: its valid ids start at pid << 33 and run on
        segs, next_vid = [], {}
        for source, pid, first_line, n in sorted(segments, key=lambda s: (s[1], s[2])):
            start = next_vid.get(pid, pid << _PID_SHIFT)
            segs.append((source, pid, start, n))
            next_vid[pid] = start + n
    rows, offset = [], 0
    for source, pid, first, n in sorted(segs, key=lambda s: (s[0], s[2])):
        rows.append((source, pid, offset - first))
        offset += n
    if not rows:
        return valid.withColumn("pos", F.lit(None).cast("long"))
    bases = spark.createDataFrame(rows, "source string, _pid long, _base long")
    return (v.join(F.broadcast(bases), ["source", "_pid"])
             .withColumn("pos", F.col("_vid") + F.col("_base"))
             .drop("_vid", "_pid", "_base"))


def sessionize_events(events: DataFrame, gap_minutes: float) -> DataFrame:
    """Cut each user's clicks (by time, then file order) into sessions at gaps > ``gap_minutes``.

    ``session_id`` = ``<user_id>#<n>`` (n = 1, 2, ... per user); ``click_key`` = time in ms;
    ``time_s`` = time in seconds.
    """
    gap_ms = int(round(gap_minutes * 60_000))
    by_user = Window.partitionBy("user_id").orderBy("ts_ms", "pos")
    prev = F.lag("ts_ms").over(by_user)
    starts = events.withColumn("_new", F.when(prev.isNull() | (F.col("ts_ms") - prev > gap_ms), 1).otherwise(0))
    numbered = starts.withColumn(
        "_n", F.sum("_new").over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
    return numbered.select(
        F.concat_ws("#", "user_id", F.col("_n").cast("string")).alias("session_id"),
        "item_id",
        F.col("ts_ms").alias("click_key"),
        F.floor(F.col("ts_ms") / 1000).cast("long").alias("time_s"),
        "pos",
    )


def clicks_in_file_order(valid: DataFrame, cfg: SessionsConfig, segments: list | None = None) -> DataFrame:
    """Valid rows -> clicks ``session_id, item_id, click_key, time_s, pos`` (events: sessionized).

    ``segments``: see :func:`with_file_positions`."""
    positioned = with_file_positions(valid, segments)
    if cfg.format == "events":
        return sessionize_events(positioned, cfg.gap_minutes)
    if cfg.format == "yoochoose":
        positioned = positioned.withColumn("click_key", F.col("pos"))
    return positioned.select("session_id", "item_id", "click_key", "time_s", "pos")


# ---- sessions (pure DataFrame -> DataFrame transforms) ----------------------------------------
def _first_block_end(positions):
    """The first p in sorted ``positions`` whose successor is not p + 1 (the end of the first block)."""
    n = F.size(positions)
    ends = F.filter(F.sequence(F.lit(0), n - 1),
                    lambda i: (i == n - 1) | (F.get(positions, i + 1) != F.get(positions, i) + 1))
    return F.get(positions, F.get(ends, 0))


def sessions_from_clicks(clicks: DataFrame, date_rule: str = "last_row") -> DataFrame:
    """One row per session: ``items`` (click order), ``time_s`` (session date), ``close_pos``.

    ``date_rule`` 'last_row': the time of the session's last row in the file (official rule);
    'max_time': its latest click (events). ``close_pos``: file position where the session's first
    contiguous block ends (the official dict order of ``sess_date``).
    """
    time_s = F.max_by("time_s", "pos") if date_rule == "last_row" else F.max("time_s")
    grouped = clicks.groupBy("session_id").agg(
        F.sort_array(F.collect_list(F.struct("click_key", "pos", "item_id"))).alias("_clicks"),
        F.min("pos").alias("_pmin"),
        F.max("pos").alias("_pmax"),
        time_s.alias("time_s"),
    )
    contiguous = F.col("_pmax") - F.col("_pmin") + 1 == F.size("_clicks")
    close = F.when(contiguous, F.col("_pmax")).otherwise(
        _first_block_end(F.sort_array(F.col("_clicks")["pos"])))
    return grouped.select(
        "session_id",
        F.col("_clicks")["item_id"].alias("items"),
        "time_s",
        close.alias("close_pos"),
    )


def item_support(sessions: DataFrame, min_session_length: int) -> DataFrame:
    """``item_id``, ``n_all`` (clicks in all sessions), ``support`` (clicks in sessions long enough)."""
    long_enough = (F.size("items") >= min_session_length).cast("long")
    exploded = sessions.select(F.explode("items").alias("item_id"), long_enough.alias("_long"))
    return exploded.groupBy("item_id").agg(F.count(F.lit(1)).alias("n_all"),
                                           F.sum("_long").alias("support"))


def sessions_with_frequent_items(sessions: DataFrame, frequent: DataFrame,
                                 min_session_length: int) -> DataFrame:
    """Remove items not in ``frequent`` (``item_id``) from each session, keeping click order;
    drop sessions left shorter than ``min_session_length``."""
    exploded = sessions.select("session_id", "time_s", "close_pos",
                               F.posexplode("items").alias("i", "item_id"))
    kept = exploded.join(F.broadcast(frequent.select("item_id")), "item_id")
    regrouped = kept.groupBy("session_id", "time_s", "close_pos").agg(
        F.sort_array(F.collect_list(F.struct("i", "item_id"))).alias("_items"))
    return (regrouped
            .select("session_id", F.col("_items")["item_id"].alias("items"),
                    "time_s", "close_pos")
            .where(F.size("items") >= min_session_length))


def split_sessions(sessions: DataFrame, split_s: int, inclusive: bool) -> DataFrame:
    """Add ``split``: 'train' (date < split), 'test' (date > split, or >= when inclusive);
    sessions dated exactly on the split date are dropped unless inclusive."""
    t = F.col("time_s")
    split = (F.when(t < split_s, "train")
              .when((t >= split_s) if inclusive else (t > split_s), "test"))
    return sessions.withColumn("split", split).where(F.col("split").isNotNull())


def order_key_bits(time_min: int, time_max: int, pos_max: int, len_max: int) -> tuple[int, int, int] | None:
    """Bit widths that pack ``(time_s - time_min, close_pos, i)`` into one non-negative long with
    the same order as the tuple, or None when they do not fit in 63 bits."""
    bits = ((int(time_max) - int(time_min)).bit_length(), int(pos_max).bit_length(),
            max(int(len_max) - 1, 0).bit_length())
    return bits if sum(bits) <= 63 else None


def item_vocabulary(sessions: DataFrame, support: DataFrame,
                    packing: tuple[int, tuple[int, int, int]] | None = None) -> DataFrame:
    """``item_id``, ``item_idx`` 1..N by first appearance walking the train sessions in the official
    order (date, then first-close position), ``support``. One single-partition window over items.

    ``packing`` = ``(time_min, (time_bits, pos_bits, i_bits))`` (see :func:`order_key_bits`, from
    bounds of the train sessions' ``time_s``, ``close_pos`` and length): the first appearance is
    then the min of one long per click, a hash aggregation, instead of the min of a struct, which
    Spark can only aggregate by sorting every click by item id. Same result either way.
    """
    train = sessions.where(F.col("split") == "train").select(
        "time_s", "close_pos", F.posexplode("items").alias("i", "item_id"))
    if packing is not None:
        time_min, (_, pos_bits, i_bits) = packing
        key = (F.shiftleft(F.col("time_s") - F.lit(int(time_min)), pos_bits + i_bits)
               + F.shiftleft(F.col("close_pos"), i_bits) + F.col("i").cast("long"))
        first_seen = train.groupBy("item_id").agg(F.min(key).alias("_first"))
    else:
        first_seen = train.groupBy("item_id").agg(
            F.min(F.struct("time_s", "close_pos", "i")).alias("_first"))
    numbered = first_seen.withColumn("item_idx", F.row_number().over(Window.orderBy("_first")))
    return (numbered.join(support.select("item_id", "support"), "item_id")
                    .select("item_id", F.col("item_idx").cast("int"), F.col("support").cast("long")))


def indexed_sessions(sessions: DataFrame, vocab: DataFrame) -> DataFrame:
    """Map items to ``item_idx`` (unknown items removed, which happens only in test sessions).

    Keeps ``n_before`` (clicks before the removal) for the stats; sessions may end up short.
    """
    exploded = sessions.select("session_id", "split", "time_s", "close_pos",
                               F.size("items").alias("n_before"),
                               F.posexplode("items").alias("i", "item_id"))
    joined = exploded.join(F.broadcast(vocab.select("item_id", "item_idx")), "item_id", "left")
    regrouped = joined.groupBy("session_id", "split", "time_s", "close_pos", "n_before").agg(
        F.sort_array(F.collect_list(F.struct("i", "item_id", "item_idx"))).alias("_clicks"))
    known = F.filter("_clicks", lambda c: c["item_idx"].isNotNull())
    return regrouped.select(
        "session_id", "split", "time_s", "close_pos", "n_before",
        known["item_id"].alias("item_ids"),
        known["item_idx"].alias("item_idx"),
    )


def with_dense_order(df: DataFrame, order_cols: list[str], name: str, cache=None) -> DataFrame:
    """Sort by ``order_cols`` (a distributed sort) and add ``name`` = 0-based position (long).

    Like zipWithIndex without leaving the DataFrame API: ids after the sort are consecutive per
    partition; per-partition counts (collected) give the offsets. ``cache`` (e.g.
    ``DataFrame.cache``) is applied to the sorted rows so that the sort runs once.
    """
    spark = df.sparkSession
    ranked = (df.orderBy(*order_cols)
                .withColumn("_rid", F.monotonically_increasing_id())
                .withColumn("_pid", F.shiftright("_rid", 33)))
    if cache is not None:
        ranked = cache(ranked)
    counts = sorted((int(r["_pid"]), int(r["n"]), int(r["first"])) for r in
                    ranked.groupBy("_pid").agg(F.count(F.lit(1)).alias("n"),
                                               F.min("_rid").alias("first")).collect())
    rows, offset = [], 0
    for pid, n, first in counts:
        rows.append((pid, offset - first))
        offset += n
    if not rows:
        return ranked.withColumn(name, F.lit(None).cast("long")).drop("_rid", "_pid")
    bases = spark.createDataFrame(rows, "_pid long, _base long")
    return (ranked.join(F.broadcast(bases), "_pid")
                  .withColumn(name, F.col("_rid") + F.col("_base"))
                  .drop("_rid", "_pid", "_base"))


def sessions_table(final: DataFrame) -> DataFrame:
    """The exact ``sessions`` contract columns."""
    return final.select(
        "session_id",
        F.date_from_unix_date(F.floor(F.col("time_s") / DAY_S).cast("int")).alias("session_date"),
        "split",
        "item_ids",
        F.col("item_idx").cast("array<int>").alias("item_idx"),
        F.col("session_order").cast("long"),
    )
