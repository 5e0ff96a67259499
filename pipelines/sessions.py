"""Stage 1: sessionize click logs exactly as the official SR-GNN ``datasets/preprocess.py`` does.

The official semantics (CRIPAC-DIG/SR-GNN), reproduced here with Spark, in this order:

1. rows in file order; a session's clicks are its rows (diginetica: stably sorted by ``timeframe``;
   yoochoose: file order); its date is set each time the session id changes, so it is the date of
   the session's *last row in the file*; sessions keep the dict order in which they were first
   closed (the end of their first contiguous block) - this breaks ties between equal dates;
2. drop sessions with fewer than ``min_session_length`` (2) clicks;
3. count every occurrence of each item over the remaining sessions (``support``) and remove items
   seen fewer than ``min_item_support`` (5) times; drop sessions left with < 2 clicks;
4. ``split = max date - split_days`` (7 diginetica, 1 yoochoose); train: date < split,
   test: date > split (sessions exactly on it are in neither, unless ``inclusive_split``: test);
5. train and test sorted by date (stable); items numbered 1.. by first appearance walking the
   sorted train sessions; test clicks on unknown items removed; test sessions left with < 2 dropped.

``--fraction`` (yoochoose 1/64, 1/4) is only recorded here: stage 2 keeps the last fraction of the
augmented training pairs (``tr_seqs[-int(len / 64):]`` in the official code).

Outputs (``OUT/<table>/run_date=D``): ``sessions``, ``item_vocab``, ``quarantine``, and the stats
JSON ``OUT/stats/run_date=D/build_sessions.json`` (also returned and logged).
"""
from __future__ import annotations

import datetime as dt
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines import sources
from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.log import get_logger
from pipelines.tables import TableStore
from srgnn.core.fs import write_json_atomic

log = get_logger(__name__)

FORMATS = ("diginetica", "yoochoose", "events")
DEFAULT_SPLIT_DAYS = {"diginetica": 7, "yoochoose": 1, "events": 1}
STATS_NAME = "build_sessions.json"
# Session settings while stage 1 runs (restored afterwards). Every cached frame here is built once
# and scanned a few times; gathering the columnar compression statistics (a boxed hash-map probe
# per value, column and scheme) cost about a fifth of the stage's CPU, more than it saves.
STAGE_CONF = {"spark.sql.inMemoryColumnarStorage.compressed": "false"}


@dataclass
class SessionsConfig(StageConfig):
    """Stage 1: sessionize a click log (official SR-GNN preprocessing semantics)."""

    yaml_section = "build_sessions"

    input: str = opt(None, "input file, folder or glob", required=True)
    format: str = opt(None, "input layout", choices=FORMATS, required=True)
    output: str = opt(None, "output root OUT (tables go to OUT/<table>/run_date=D)", required=True)
    run_date: str = opt(None, "run date YYYY-MM-DD (the output partition)", required=True)
    table_format: str = opt("parquet", "table format", choices=("parquet", "delta"))
    min_item_support: int = opt(5, "drop items seen fewer times than this")
    min_session_length: int = opt(2, "drop sessions with fewer clicks than this")
    split_days: int | None = opt(None, "test window in days (default 7 diginetica, 1 yoochoose/events)")
    inclusive_split: bool = opt(False, "put sessions dated exactly on the split date into test")
    fraction: str = opt("1", "most recent fraction of training pairs stage 2 keeps (1/64, 1/4, 0.25)")
    gap_minutes: float = opt(30.0, "events: inactivity gap that starts a new session")
    event_types: list[str] = opt([], "events: keep only these event types (comma-separated)")
    user_col: str = opt("user_id", "events: user id column")
    time_col: str = opt("timestamp", "events: timestamp column")
    item_col: str = opt("item_id", "events: item id column")
    type_col: str = opt("event_type", "events: event type column (optional in the data)")
    input_format: str = opt("csv", "events: file format", choices=("csv", "json", "parquet"))
    delimiter: str = opt(",", "events/csv: field delimiter")
    time_unit: str = opt("auto", "events: timestamps as ISO-8601 or epoch s/ms",
                         choices=("auto", "iso", "s", "ms"))

    def validate(self) -> None:
        super().validate()
        if self.run_date is not None and not _valid_date(self.run_date):
            raise ConfigError(f"option --run-date: {self.run_date!r} is not a date YYYY-MM-DD")
        if self.min_item_support < 1:
            raise ConfigError("option --min-item-support must be >= 1")
        if self.min_session_length < 2:
            raise ConfigError("option --min-session-length must be >= 2 (a session needs a prefix and a target)")
        if self.split_days is not None and self.split_days < 0:
            raise ConfigError("option --split-days must be >= 0")
        if not self.gap_minutes > 0:
            raise ConfigError("option --gap-minutes must be > 0")
        if not self.delimiter:
            raise ConfigError("option --delimiter must not be empty")
        parse_fraction(self.fraction)

    def effective_split_days(self) -> int:
        return self.split_days if self.split_days is not None else DEFAULT_SPLIT_DAYS[self.format]


def _valid_date(text: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(text)):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def parse_fraction(text: str | float) -> float:
    """``"1/64"`` -> 0.015625, ``"0.25"`` -> 0.25; must be in (0, 1]."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"option --fraction: {text!r} is not a fraction like 1/64 or 0.25") from exc
    if not 0 < value <= 1:
        raise ConfigError(f"option --fraction: {text!r} must be in (0, 1]")
    return value


# ---- reading ----------------------------------------------------------------------------------
def read_parsed(spark: SparkSession, cfg: SessionsConfig) -> DataFrame:
    """All input rows parsed, with ``reason`` null (a click), a quarantine reason, or the internal
    header marker (see :func:`pipelines.sources.resolve_headers_and_segments`).

    Checks paths and columns first (InputError naming the path and the expected columns).
    """
    cols = sources.EventColumns(cfg.user_col, cfg.time_col, cfg.item_col, cfg.type_col or None)
    expected = sources.describe_expected(cfg.format, cols, cfg.delimiter, cfg.input_format)
    files = sources.list_input_files(spark, cfg.input, expected)
    log.info("reading %d %s file(s) from %s", len(files), cfg.format, cfg.input)
    if cfg.format == "diginetica":
        header = _check_text_header(spark, files, ";", sources.DIGINETICA_COLUMNS, expected)
        parsed = sources.diginetica_clicks(sources.raw_lines(spark, files), header)
    elif cfg.format == "yoochoose":
        _check_yoochoose(spark, files, expected)
        parsed = sources.yoochoose_clicks(sources.raw_lines(spark, files))
    elif cfg.input_format == "csv":
        header = _check_text_header(spark, files, cfg.delimiter, cols.required(), expected)
        if cfg.event_types and cols.type not in header:
            raise InputError(f"{files[0]}: --event-types needs the column {cols.type!r}; "
                             f"found {header}")
        parsed = sources.events_csv_clicks(sources.raw_lines(spark, files), header, cols,
                                           cfg.delimiter, cfg.time_unit)
    elif cfg.input_format == "json":
        _check_json_keys(spark, files, cols, cfg.event_types, expected)
        parsed = sources.events_json_clicks(sources.raw_lines(spark, files), cols, cfg.time_unit)
    else:
        frame = spark.read.parquet(*files)
        missing = [c for c in cols.required() + ([cols.type] if cfg.event_types else [])
                   if c not in frame.columns]
        if missing:
            raise InputError(f"input path {cfg.input}: columns {missing} not found "
                             f"(has {frame.columns}); expected {expected}")
        parsed = sources.events_frame_clicks(frame, cols, cfg.time_unit)
    return parsed


def _check_text_header(spark, files, delimiter, required, expected) -> list[str]:
    header = None
    for f in files:
        first = sources.read_first_lines(spark, f, 1)
        cols = sources.split_header(first[0], delimiter) if first else []
        missing = [c for c in required if c not in cols]
        if missing:
            raise InputError(f"{f}: header {first[0][:200] if first else ''!r} lacks column(s) "
                             f"{missing}; expected {expected}")
        if header is not None and cols != header:
            raise InputError(f"{f}: header {cols} differs from the first file's {header}; "
                             f"expected {expected}")
        header = cols
    return header


def _check_yoochoose(spark, files, expected) -> None:
    for f in files:
        lines = [ln for ln in sources.read_first_lines(spark, f, 20) if ln.strip()]
        if lines and not any(len(ln.split(",")) == len(sources.YOOCHOOSE_COLUMNS) for ln in lines):
            raise InputError(f"{f}: first lines have {len(lines[0].split(','))} comma-separated "
                             f"field(s), e.g. {lines[0][:120]!r}; expected {expected}")


def _check_json_keys(spark, files, cols, event_types, expected) -> None:
    need = cols.required() + ([cols.type] if event_types else [])
    for f in files:
        first = sources.read_first_lines(spark, f, 1)
        keys = sources.json_keys(first[0]) if first else None
        if keys is None:
            raise InputError(f"{f}: first line is not a JSON object; expected {expected} "
                             f"(JSON Lines: one object per line)")
        missing = [c for c in need if c not in keys]
        if missing:
            raise InputError(f"{f}: first record lacks {missing} (has {keys}); expected {expected}")


def clicks_in_file_order(valid: DataFrame, cfg: SessionsConfig, segments: list | None = None) -> DataFrame:
    """Valid rows -> clicks ``session_id, item_id, click_key, time_s, pos`` (events: sessionized).

    ``segments``: see :func:`pipelines.sources.with_file_positions`."""
    positioned = sources.with_file_positions(valid, segments)
    if cfg.format == "events":
        return sources.sessionize_events(positioned, cfg.gap_minutes)
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
        F.date_from_unix_date(F.floor(F.col("time_s") / sources.DAY_S).cast("int")).alias("session_date"),
        "split",
        "item_ids",
        F.col("item_idx").cast("array<int>").alias("item_idx"),
        F.col("session_order").cast("long"),
    )


# ---- the job ----------------------------------------------------------------------------------
def _iso(seconds: int | None, fmt: str) -> str | None:
    if seconds is None:
        return None
    t = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    if fmt == "diginetica" and seconds % sources.DAY_S == 0:
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


def _row(df: DataFrame, *aggs) -> dict:
    return df.agg(*aggs).collect()[0].asDict()


def build_sessions(spark: SparkSession, cfg: SessionsConfig) -> dict:
    """Run stage 1 for ``cfg``; write the tables and the stats JSON; return the stats."""
    cfg.validate_required()
    cfg.validate()
    with _session_conf(spark, STAGE_CONF):
        return _build_sessions(spark, cfg)


def _build_sessions(spark: SparkSession, cfg: SessionsConfig) -> dict:
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
        parsed, by_reason, segments = sources.resolve_headers_and_segments(
            keep(sources.raw_only_when_quarantined(read_parsed(spark, cfg))))
        n_valid = by_reason.pop(None, 0)
        rows_read = n_valid + sum(by_reason.values())
        log.info("read %d rows from %s: %d valid, %d quarantined %s", rows_read, cfg.input,
                 n_valid, sum(by_reason.values()), by_reason)
        lap("read_and_parse")
        quarantine = sources.quarantine_rows(parsed)
        valid = sources.valid_rows(parsed)
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
            _write_empty(spark, store, cfg, quarantine)
            raise InputError(
                f"no sessions left in {cfg.input} after filtering: {rows_read} rows read, "
                f"{sum(by_reason.values())} quarantined {by_reason}, {st0['sessions'] or 0} sessions, "
                f"{st0['sessions_long'] or 0} with >= {min_len} clicks; see the quarantine table")

        # 4. split by date, vocabulary from the train sessions in official order
        max_time = int(st2["max_time"])
        split_s = max_time - sources.DAY_S * cfg.effective_split_days()
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
        store.write(quarantine, "quarantine", cfg.run_date)
        store.write(sessions_table(ordered), "sessions", cfg.run_date)
        store.write(vocab.orderBy("item_idx"), "item_vocab", cfg.run_date)

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
            "seconds": round(time.perf_counter() - t_start, 2),
            "step_seconds": timings,
            "step_driver_jvm_cpu_seconds": cpu,   # local mode: the executors' work too
        }
        path = write_json_atomic(stats_path(cfg.output, cfg.run_date), stats)
        log.info("stage 1: %d train / %d test sessions, %d items, %d train / %d test pairs, "
                 "avg length %.3f; stats at %s", n_train, n_test, n_items, stats["train_pairs"],
                 stats["test_pairs"], stats["avg_length"] or math.nan, path)
        return stats
    finally:
        for df in cached:
            df.unpersist()


def stats_path(output: str, run_date: str) -> str:
    return f"{output.rstrip('/')}/stats/run_date={run_date}/{STATS_NAME}"


def _write_empty(spark: SparkSession, store: TableStore, cfg: SessionsConfig, quarantine: DataFrame) -> None:
    """No sessions survived: still replace this run date's tables (quarantine has the rows)."""
    store.write(quarantine, "quarantine", cfg.run_date)
    store.write(spark.createDataFrame([], "session_id string, session_date date, split string, "
                                          "item_ids array<string>, item_idx array<int>, session_order long"),
                "sessions", cfg.run_date)
    store.write(spark.createDataFrame([], "item_id string, item_idx int, support long"),
                "item_vocab", cfg.run_date)
