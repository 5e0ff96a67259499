"""Stage 1's inputs: find the data files, check their headers and columns, parse every row.

Bad paths and columns stop the stage before anything is written, with an InputError naming the
path and the columns the format expects.
"""
from __future__ import annotations

import json

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import DateType, StringType

from pipelines.sessions import sources, transforms
from pipelines.sessions.config import TABLE_INPUTS, SessionsConfig
from pipelines.spark import require_delta
from pipelines.tables import hadoop_fs
from srgnn.core.errors import InputError
from srgnn.core.log import get_logger

log = get_logger(__name__)


# ---- files ------------------------------------------------------------------------------------
def list_input_files(spark: SparkSession, path: str, expected: str) -> list[str]:
    """Data files under ``path`` (a file, a folder - recursively - or a glob), hidden ones skipped.

    Raises InputError naming the path and ``expected`` (the columns the format needs) when the
    path is missing or holds no non-empty file.
    """
    if not path:
        raise InputError(f"no input path given; expected {expected}")
    fs, hpath = hadoop_fs(spark, path)
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
    fs, hpath = hadoop_fs(spark, file)
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


def describe_expected(fmt: str, cols: sources.EventColumns | None = None, delimiter: str = ",",
                      input_format: str = "csv") -> str:
    if fmt == "diginetica":
        return "a ';'-separated file with header " + ";".join(sources.DIGINETICA_COLUMNS)
    if fmt == "yoochoose":
        return "comma-separated rows " + ",".join(sources.YOOCHOOSE_COLUMNS) + " (no header)"
    cols = cols or sources.EventColumns()
    names = cols.required() + ([f"optional {cols.type}"] if cols.type else [])
    if input_format == "csv":
        return f"a {delimiter!r}-separated events file with a header naming columns " + ", ".join(names)
    if input_format == "table":
        return "a catalog table of events with columns " + ", ".join(names)
    return f"{input_format} events with columns " + ", ".join(names)


def json_keys(line: str) -> list[str] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return list(obj) if isinstance(obj, dict) else None


# ---- reading ----------------------------------------------------------------------------------
def read_parsed(spark: SparkSession, cfg: SessionsConfig) -> DataFrame:
    """All input rows parsed, with ``reason`` null (a click), a quarantine reason, or the internal
    header marker (see :func:`pipelines.sessions.transforms.resolve_headers_and_segments`).

    Checks paths and columns first (InputError naming the path and the expected columns).
    """
    cols = sources.EventColumns(cfg.user_col, cfg.time_col, cfg.item_col, cfg.type_col or None)
    expected = describe_expected(cfg.format, cols, cfg.delimiter, cfg.input_format)
    if cfg.format == "events" and cfg.input_format in TABLE_INPUTS:
        return _read_events_table(spark, cfg, cols, expected)
    files = list_input_files(spark, cfg.input, expected)
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
    else:
        _check_json_keys(spark, files, cols, cfg.event_types, expected)
        parsed = sources.events_json_clicks(sources.raw_lines(spark, files), cols, cfg.time_unit)
    return parsed


def read_events_frame(spark: SparkSession, cfg: SessionsConfig, expected: str) -> DataFrame:
    """The events table named by ``--input``: a Parquet folder (partition columns included), a
    Delta path, or a catalog table or view (``spark.table``). InputError when it is missing."""
    if cfg.input_format == "parquet":
        list_input_files(spark, cfg.input, expected)   # a clear error for a missing or empty path
        return spark.read.parquet(cfg.input)
    if not cfg.input:
        raise InputError(f"no input given; expected {expected}")
    try:
        if cfg.input_format == "delta":
            require_delta(spark)   # EnvironmentProblem naming the missing jars
            return spark.read.format("delta").load(cfg.input)
        return spark.table(cfg.input)
    except AnalysisException as exc:
        what = "Delta table" if cfg.input_format == "delta" else "table"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {what} {cfg.input}: {first}; expected {expected}") from None


def _read_events_table(spark: SparkSession, cfg: SessionsConfig, cols: sources.EventColumns,
                       expected: str) -> DataFrame:
    """Parsed events of a table input, only those of the window (:meth:`SessionsConfig.window`)
    unless ``--window-days 0``: filtered on ``--date-col`` (partition pruning) when given, else on
    the time column (before parsing when it is a timestamp: the reader skips row groups)."""
    frame = read_events_frame(spark, cfg, expected)
    need = cols.required() + ([cols.type] if cfg.event_types else []) + ([cfg.date_col] if cfg.date_col else [])
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InputError(f"input {cfg.input}: columns {missing} not found "
                         f"(has {frame.columns}); expected {expected}")
    if cfg.date_col and not isinstance(frame.schema[cfg.date_col].dataType, (DateType, StringType)):
        raise InputError(f"input {cfg.input}: --date-col {cfg.date_col} is "
                         f"{frame.schema[cfg.date_col].dataType.simpleString()}, not a date or YYYY-MM-DD text")
    if not cfg.windowed():
        log.info("reading the whole %s table %s", cfg.input_format, cfg.input)
        return sources.events_frame_clicks(frame, cols, cfg.time_unit)
    first_day, start_s, _ = cfg.window()
    log.info("reading %s table %s from %s on (%d days up to %s, by %s)", cfg.input_format, cfg.input,
             first_day, cfg.window_days, cfg.run_date, cfg.date_col or cfg.time_col)
    if cfg.date_col:
        return sources.events_frame_clicks(transforms.events_from_day(frame, cfg.date_col, first_day),
                                           cols, cfg.time_unit)
    frame = transforms.events_from_time(frame, cols.time, start_s)
    return transforms.parsed_from_time(sources.events_frame_clicks(frame, cols, cfg.time_unit), start_s)


def _check_text_header(spark, files, delimiter, required, expected) -> list[str]:
    header = None
    for f in files:
        first = read_first_lines(spark, f, 1)
        cols = split_header(first[0], delimiter) if first else []
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
        lines = [ln for ln in read_first_lines(spark, f, 20) if ln.strip()]
        if lines and not any(len(ln.split(",")) == len(sources.YOOCHOOSE_COLUMNS) for ln in lines):
            raise InputError(f"{f}: first lines have {len(lines[0].split(','))} comma-separated "
                             f"field(s), e.g. {lines[0][:120]!r}; expected {expected}")


def _check_json_keys(spark, files, cols, event_types, expected) -> None:
    need = cols.required() + ([cols.type] if event_types else [])
    for f in files:
        first = read_first_lines(spark, f, 1)
        keys = json_keys(first[0]) if first else None
        if keys is None:
            raise InputError(f"{f}: first line is not a JSON object; expected {expected} "
                             f"(JSON Lines: one object per line)")
        missing = [c for c in need if c not in keys]
        if missing:
            raise InputError(f"{f}: first record lacks {missing} (has {keys}); expected {expected}")
