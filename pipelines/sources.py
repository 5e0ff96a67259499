"""Stage 1 inputs: find the files, check their columns, parse rows into clicks or quarantine them.

Every input row ends up in exactly one place: a parsed click (``reason`` null) or the quarantine
(``reason`` set). Text inputs are read as raw lines (``spark.read.text``) and split with built-in
functions, so a bad row keeps its exact text in ``raw``. A file's own first-line header is not a row.

File order: ``line_id`` is ``monotonically_increasing_id()`` attached right after the read (ordered
within a file split, splits of a file in offset order); rows are in file order by
``(source, line_id)``. :func:`with_file_positions` turns that into ``pos``, a dense 0..N-1 position
over the *valid* rows, which the official code's "a session's date is set when the session id
changes" rule needs (the quarantined rows are as if deleted from the file).

Parsed clicks (common schema for every format)::

    session_id string, item_id string, click_key long (order of clicks within a session),
    time_s long (Unix seconds used for the session date and the split), pos long (file order)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from srgnn.core.errors import InputError
from srgnn.core.log import get_logger

log = get_logger(__name__)

DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
YOOCHOOSE_COLUMNS = ("session_id", "timestamp", "item_id", "category")

# Quarantine reasons, in the order they are tested (the first that applies is recorded).
REASONS = (
    "blank_line",          # an empty or whitespace-only line
    "repeated_header",     # the header line again, not at the top of its file
    "bad_encoding",        # bytes that are not valid UTF-8 (stored with U+FFFD in ``raw``)
    "malformed_json",      # events/json: the line is not a JSON object
    "too_few_columns",     # fewer fields than the header / format has
    "too_many_columns",    # more fields than the header / format has
    "empty_session_id",
    "empty_user_id",       # events: user id missing, null or blank
    "empty_item_id",
    "malformed_timeframe",  # diginetica: timeframe is not an integer
    "malformed_date",      # date/timestamp text not in the expected layout
    "invalid_date",        # well-formed but not a real date/time (2016-02-30, 25:00:00)
)
_HEADER = "_header"        # internal marker: a line equal to the header, resolved later
_PID_SHIFT = 33            # monotonically_increasing_id = partition index << 33 | row in partition
DAY_S = 86_400


# ---- files ------------------------------------------------------------------------------------
def _jvm_path(spark: SparkSession, path: str):
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark._jsc.hadoopConfiguration()), hpath


def list_input_files(spark: SparkSession, path: str, expected: str) -> list[str]:
    """Data files under ``path`` (a file, a folder - recursively - or a glob), hidden ones skipped.

    Raises InputError naming the path and ``expected`` (the columns the format needs) when the
    path is missing or holds no non-empty file.
    """
    if not path:
        raise InputError(f"no input path given; expected {expected}")
    fs, hpath = _jvm_path(spark, path)
    statuses = fs.globStatus(hpath)
    if statuses is None or len(statuses) == 0:
        raise InputError(f"input path {path} does not exist; expected {expected}")
    files: list[tuple[str, int]] = []
    for st in statuses:
        if st.isDirectory():
            it = fs.listFiles(st.getPath(), True)
            while it.hasNext():
                f = it.next()
                files.append((f.getPath().toString(), int(f.getLen())))
        else:
            files.append((st.getPath().toString(), int(st.getLen())))
    root = hpath.toString().rstrip("/")
    files = [(p, n) for p, n in files
             if not any(part.startswith(("_", ".")) for part in p[len(root):].split("/") if part)
             or p == root]
    non_empty = sorted(p for p, n in files if n > 0)
    if not non_empty:
        raise InputError(f"input path {path} is empty (no non-empty data file); expected {expected}")
    return non_empty


def read_first_lines(spark: SparkSession, file: str, n: int = 1) -> list[str]:
    """The first ``n`` lines of a file (decompressed if the codec is known), BOM and CR stripped."""
    jvm = spark._jvm
    fs, hpath = _jvm_path(spark, file)
    stream = fs.open(hpath)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(
        spark._jsc.hadoopConfiguration()).getCodec(hpath)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
    lines: list[str] = []
    try:
        while len(lines) < n:
            line = reader.readLine()
            if line is None:
                break
            lines.append(line.lstrip("\ufeff").rstrip("\r"))
    finally:
        reader.close()
    return lines


def split_header(line: str, delimiter: str) -> list[str]:
    return [c.strip().strip('"').strip() for c in line.split(delimiter)]


# ---- raw lines --------------------------------------------------------------------------------
def raw_lines(spark: SparkSession, files: Sequence[str]) -> DataFrame:
    """``source``, ``line_id``, ``raw``: one row per text line, ids attached right at the read."""
    text = spark.read.text(list(files))
    return text.select(
        F.input_file_name().alias("source"),
        F.monotonically_increasing_id().alias("line_id"),
        F.col("value").alias("raw"),
    )


def _clean(col: str = "raw"):
    """The line without a leading BOM (the line reader already splits on \\n, \\r\\n and \\r).
    A byte-level prefix test: no regex on the hot path."""
    c = F.col(col)
    return F.when(c.startswith("\ufeff"), F.substring(c, 2, 1 << 30)).otherwise(c)


def _field(fields, i: int):
    return F.get(fields, i)


def _blank(c):
    return c.isNull() | (F.trim(c) == "")


def _common_reasons(line, header_text: str | None, n_fields, n_expected: int):
    """The reasons every delimited-text format shares (an open F.when chain)."""
    chain = F.when(_blank(line), "blank_line")
    if header_text is not None:
        chain = chain.when(line == F.lit(header_text), _HEADER)
    return (chain.when(~F.is_valid_utf8(F.col("raw")), "bad_encoding")
                 .when(n_fields < n_expected, "too_few_columns")
                 .when(n_fields > n_expected, "too_many_columns"))


# ---- delimited text: split once -------------------------------------------------------------
def _split_once(lines: DataFrame, delimiter: str, fields: dict[str, int]) -> DataFrame:
    """``lines`` plus ``_line`` (BOM stripped), ``_n`` (field count) and one column per named field.

    The line is cleaned and split in their own projections: written as one nested expression,
    the split (and the BOM test) would be repeated inside every branch of the reason chain and
    evaluated again and again per row (subexpression elimination does not reach into CASE WHEN
    branches); this way each runs once per row.
    """
    cleaned = lines.select("source", "line_id", "raw", _clean().alias("_line"))
    split = cleaned.select("*", F.split("_line", _regex_quote(delimiter), -1).alias("_f"))
    return split.select("source", "line_id", "raw", "_line", F.size("_f").alias("_n"),
                        *[_field(F.col("_f"), i).alias(name) for name, i in fields.items()])


# ---- diginetica -------------------------------------------------------------------------------
def diginetica_clicks(lines: DataFrame, header: Sequence[str]) -> DataFrame:
    """Parse ``;``-separated diginetica lines. Clicks in a session are ordered by ``timeframe``
    (``click_key``); the session date is ``eventdate`` (midnight UTC, ``time_s``)."""
    idx = {c: header.index(c) for c in ("session_id", "item_id", "timeframe", "eventdate")}
    staged = _split_once(lines, ";", {f"_{c}": i for c, i in idx.items()})
    staged = staged.withColumn("_day", F.col("_eventdate").try_cast("date"))  # time-zone free; null for 2016-02-30
    line, sid, item = F.col("_line"), F.col("_session_id"), F.col("_item_id")
    timeframe, eventdate, day = F.col("_timeframe"), F.col("_eventdate"), F.col("_day")
    reason = (_common_reasons(line, ";".join(header), F.col("_n"), len(header))
              .when(_blank(sid), "empty_session_id")
              .when(_blank(item), "empty_item_id")
              .when(~timeframe.rlike(r"^[+-]?\d{1,18}$"), "malformed_timeframe")
              .when(~eventdate.rlike(r"^\d{4}-\d{2}-\d{2}$"), "malformed_date")
              .when(day.isNull(), "invalid_date"))
    return staged.select(
        "source", "line_id", "raw", reason.alias("reason"),
        sid.alias("session_id"), item.alias("item_id"),
        timeframe.try_cast("long").alias("click_key"),
        (F.unix_date(day).cast("long") * DAY_S).alias("time_s"),
    )


# ---- yoochoose --------------------------------------------------------------------------------
_ISO_Z = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z?$"


def _utc_seconds(ts):
    """Unix seconds of ``ts[:19]`` (``YYYY-MM-DDTHH:MM:SS``) read as UTC; null when the date or
    the time is not real (2014-02-30, 25:00:00, 23:59:60). A cast to TIMESTAMP_NTZ (no time zone
    involved: the session time zone does not matter) and ``unix_timestamp`` of it: one substring
    and one parse per row, no formatter."""
    return F.unix_timestamp(F.substring(ts, 1, 19).try_cast("timestamp_ntz"))


def yoochoose_clicks(lines: DataFrame) -> DataFrame:
    """Parse ``session_id,timestamp,item_id,category`` lines (no header). Clicks keep file order;
    the time is ``timestamp[:19]`` read as UTC, as the official code does."""
    staged = _split_once(lines, ",", {"_sid": 0, "_ts": 1, "_item": 2})
    staged = staged.withColumn("_t", _utc_seconds(F.col("_ts")))
    line, sid, ts, item, t = (F.col(c) for c in ("_line", "_sid", "_ts", "_item", "_t"))
    reason = (_common_reasons(line, ",".join(YOOCHOOSE_COLUMNS), F.col("_n"), len(YOOCHOOSE_COLUMNS))
              .when(_blank(sid), "empty_session_id")
              .when(_blank(item), "empty_item_id")
              .when(~ts.rlike(_ISO_Z), "malformed_date")
              .when(t.isNull(), "invalid_date"))
    return staged.select(
        "source", "line_id", "raw", reason.alias("reason"),
        sid.alias("session_id"), item.alias("item_id"),
        F.lit(None).cast("long").alias("click_key"),   # file order: set to pos later
        t.alias("time_s"),
    )


# ---- events -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventColumns:
    user: str = "user_id"
    time: str = "timestamp"
    item: str = "item_id"
    type: str | None = "event_type"   # None or absent from the file: no event type

    def required(self) -> list[str]:
        return [self.user, self.time, self.item]


def _event_time_ms(ts, time_unit: str):
    """Unix milliseconds from text: epoch seconds / milliseconds or ISO-8601 (no offset = UTC session zone)."""
    digits = ts.rlike(r"^-?\d{1,18}$")
    num = ts.try_cast("long")
    iso = F.unix_millis(F.regexp_replace(ts, " UTC$", "").try_cast("timestamp"))
    if time_unit == "s":
        return F.when(digits, num * 1000)
    if time_unit == "ms":
        return F.when(digits, num)
    if time_unit == "iso":
        return F.when(~digits, iso)
    return F.when(digits, F.when(F.abs(num) < 100_000_000_000, num * 1000).otherwise(num)).otherwise(iso)


def _event_fields(raw_values: dict, line, n_fields, n_expected: int | None, header_text: str | None,
                  time_unit: str, json_check=None):
    user, ts, item, etype = raw_values["user"], raw_values["time"], raw_values["item"], raw_values["type"]
    ts_ms = _event_time_ms(F.trim(ts), time_unit)
    if n_expected is not None:
        chain = _common_reasons(line, header_text, n_fields, n_expected)
    else:
        chain = F.when(F.lit(False), "")
    if json_check is not None:
        chain = chain.when(json_check, "malformed_json")
    reason = (chain.when(_blank(user), "empty_user_id")
                   .when(_blank(item), "empty_item_id")
                   .when(_blank(ts) | ts_ms.isNull(), "malformed_date"))
    return reason, user, item, ts_ms, etype


def events_csv_clicks(lines: DataFrame, header: Sequence[str], cols: EventColumns, delimiter: str,
                      time_unit: str) -> DataFrame:
    """Parse delimited event lines whose first line is ``header``; fields may be double-quoted
    (a quoted field must not contain the delimiter)."""
    line = _clean()
    fields = F.transform(F.split(line, _regex_quote(delimiter), -1),
                         lambda f: F.regexp_replace(F.trim(f), r'^"(.*)"$', "$1"))
    pos = {c: header.index(c) for c in cols.required()}
    values = {k: _field(fields, pos[getattr(cols, k)]) for k in ("user", "time", "item")}
    values["type"] = (_field(fields, header.index(cols.type)) if cols.type and cols.type in header
                      else F.lit(None).cast("string"))
    reason, user, item, ts_ms, etype = _event_fields(
        values, line, F.size(fields), len(header), delimiter.join(header), time_unit)
    return _events_select(lines, reason, user, item, ts_ms, etype)


def events_json_clicks(lines: DataFrame, cols: EventColumns, time_unit: str) -> DataFrame:
    """Parse JSON Lines events (one object per line); scalar values are read as text."""
    line = _clean()
    names = cols.required() + ([cols.type] if cols.type else [])
    schema = ", ".join(f"`{n}` string" for n in dict.fromkeys(names))
    obj = F.from_json(line, schema)
    values = {k: obj[getattr(cols, k)] for k in ("user", "time", "item")}
    values["type"] = obj[cols.type] if cols.type else F.lit(None).cast("string")
    not_object = F.json_object_keys(line).isNull()
    chain_line = F.when(_blank(line), "blank_line").when(~F.is_valid_utf8(F.col("raw")), "bad_encoding")
    reason, user, item, ts_ms, etype = _event_fields(values, line, None, None, None, time_unit,
                                                     json_check=not_object)
    reason = F.coalesce(chain_line, reason)
    return _events_select(lines, reason, user, item, ts_ms, etype)


def events_frame_clicks(df: DataFrame, cols: EventColumns, time_unit: str) -> DataFrame:
    """Parse a typed events DataFrame (Parquet): the quarantined ``raw`` is the row as JSON."""
    lines = df.select(
        F.input_file_name().alias("source"),
        F.monotonically_increasing_id().alias("line_id"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns])).alias("raw"),
        *[F.col(f"`{c}`").cast("string").alias(f"_v_{i}") for i, c in enumerate(df.columns)],
    )
    col_of = {c: F.col(f"_v_{i}") for i, c in enumerate(df.columns)}
    values = {k: col_of[getattr(cols, k)] for k in ("user", "time", "item")}
    values["type"] = col_of[cols.type] if cols.type and cols.type in col_of else F.lit(None).cast("string")
    reason, user, item, ts_ms, etype = _event_fields(values, F.col("raw"), None, None, None, time_unit)
    return _events_select(lines, reason, user, item, ts_ms, etype)


def _events_select(lines, reason, user, item, ts_ms, etype) -> DataFrame:
    return lines.select(
        "source", "line_id", "raw", reason.alias("reason"),
        user.alias("user_id"), item.alias("item_id"),
        ts_ms.alias("ts_ms"), etype.alias("event_type"),
    )


def _regex_quote(s: str) -> str:
    import re
    return re.escape(s)


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
                  if r["reason"] == _HEADER and r["first"] == first_line[r["source"]])
    counts: dict = {}
    for r in per:
        reason = "repeated_header" if r["reason"] == _HEADER else r["reason"]
        counts[reason] = counts.get(reason, 0) + int(r["n"])
    if tops:
        counts["repeated_header"] -= len(tops)
        if not counts["repeated_header"]:
            del counts["repeated_header"]
    segments = [(r["source"], int(r["_pid"]), int(r["first"]), int(r["n"]))
                for r in per if r["reason"] is None]
    is_header = F.coalesce(F.col("reason") == _HEADER, F.lit(False))
    is_top = F.col("line_id").isin(tops) if tops else F.lit(False)
    reason = F.when(is_header, F.lit("repeated_header")).otherwise(F.col("reason"))
    return parsed.where(~(is_header & is_top)).withColumn("reason", reason), counts, segments


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


def describe_expected(fmt: str, cols: EventColumns | None = None, delimiter: str = ",",
                      input_format: str = "csv") -> str:
    if fmt == "diginetica":
        return "a ';'-separated file with header " + ";".join(DIGINETICA_COLUMNS)
    if fmt == "yoochoose":
        return "comma-separated rows " + ",".join(YOOCHOOSE_COLUMNS) + " (no header)"
    cols = cols or EventColumns()
    names = cols.required() + ([f"optional {cols.type}"] if cols.type else [])
    if input_format == "csv":
        return f"a {delimiter!r}-separated events file with a header naming columns " + ", ".join(names)
    return f"{input_format} events with columns " + ", ".join(names)


def json_keys(line: str) -> list[str] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return list(obj) if isinstance(obj, dict) else None
