"""Stage 1's click-log formats: raw text lines parsed into clicks or quarantine reasons.

Every input row ends up in exactly one place: a parsed click (``reason`` null) or the quarantine
(``reason`` set). Text inputs are read as raw lines (``spark.read.text``) and split with built-in
functions, so a bad row keeps its exact text in ``raw``. A file's own first-line header is not a
row (:func:`pipelines.sessions.transforms.resolve_headers_and_segments` tells it from a repeated one).

File order: ``line_id`` is ``monotonically_increasing_id()`` attached right after the read (ordered
within a file split, splits of a file in offset order); rows are in file order by
``(source, line_id)``.

Parsed clicks (common schema of diginetica and yoochoose)::

    source, line_id, raw, reason, session_id string, item_id string,
    click_key long (order of clicks within a session), time_s long (Unix seconds: session date, split)

Events parse to ``user_id``, ``item_id``, ``ts_ms``, ``event_type`` instead and are cut into
sessions later (:func:`pipelines.sessions.transforms.sessionize_events`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from srgnn.core.dates import DAY_S

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
    "malformed_id",        # an id with a control character or a double quote; diginetica/yoochoose: not digits
    "malformed_timeframe",  # diginetica: timeframe is not an integer
    "malformed_date",      # date/timestamp text not in the expected layout
    "invalid_date",        # well-formed but not a real date/time (2016-02-30, 25:00:00)
    "future_timestamp",    # dated after the end of the run date (set by the job, see transforms)
)
HEADER_MARKER = "_header"  # internal marker: a line equal to the header, resolved later
_NUMERIC_ID = r"^[0-9]+$"               # diginetica and yoochoose ids are numbers
_BAD_ID_CHARS = r'[\p{Cntrl}"]'         # control characters (NUL ...) or a stray double quote


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


def _malformed_id(*ids, numeric: bool):
    """True when one of the (trimmed) ids is not all digits (``numeric``) or holds a control
    character or a double quote."""
    bad = [(~c.rlike(_NUMERIC_ID)) if numeric else c.rlike(_BAD_ID_CHARS) for c in ids]
    out = bad[0]
    for b in bad[1:]:
        out = out | b
    return out


def _common_reasons(line, header_text: str | None, n_fields, n_expected: int):
    """The reasons every delimited-text format shares (an open F.when chain)."""
    chain = F.when(_blank(line), "blank_line")
    if header_text is not None:
        chain = chain.when(line == F.lit(header_text), HEADER_MARKER)
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
    staged = (staged.withColumn("_session_id", F.trim("_session_id")).withColumn("_item_id", F.trim("_item_id"))
                    .withColumn("_day", F.col("_eventdate").try_cast("date")))  # time-zone free; null for 2016-02-30
    line, sid, item = F.col("_line"), F.col("_session_id"), F.col("_item_id")
    timeframe, eventdate, day = F.col("_timeframe"), F.col("_eventdate"), F.col("_day")
    reason = (_common_reasons(line, ";".join(header), F.col("_n"), len(header))
              .when(_blank(sid), "empty_session_id")
              .when(_blank(item), "empty_item_id")
              .when(_malformed_id(sid, item, numeric=True), "malformed_id")
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
    staged = (staged.withColumn("_sid", F.trim("_sid")).withColumn("_item", F.trim("_item"))
                    .withColumn("_t", _utc_seconds(F.col("_ts"))))
    line, sid, ts, item, t = (F.col(c) for c in ("_line", "_sid", "_ts", "_item", "_t"))
    reason = (_common_reasons(line, ",".join(YOOCHOOSE_COLUMNS), F.col("_n"), len(YOOCHOOSE_COLUMNS))
              .when(_blank(sid), "empty_session_id")
              .when(_blank(item), "empty_item_id")
              .when(_malformed_id(sid, item, numeric=True), "malformed_id")
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
    user, item = F.trim(user), F.trim(item)
    ts_ms = _event_time_ms(F.trim(ts), time_unit)
    if n_expected is not None:
        chain = _common_reasons(line, header_text, n_fields, n_expected)
    else:
        chain = F.when(F.lit(False), "")
    if json_check is not None:
        chain = chain.when(json_check, "malformed_json")
    reason = (chain.when(_blank(user), "empty_user_id")
                   .when(_blank(item), "empty_item_id")
                   .when(_malformed_id(user, item, numeric=False), "malformed_id")
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
    return re.escape(s)
