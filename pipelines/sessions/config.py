"""Stage 1's configuration: :class:`SessionsConfig` (every option of jobs/build_sessions.py)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from fractions import Fraction

from srgnn.core.config import StageConfig, opt
from srgnn.core.contracts import TABLE_FORMATS
from srgnn.core.dates import DAY_S, check_run_date, parse_run_date
from srgnn.core.errors import ConfigError

FORMATS = ("diginetica", "yoochoose", "events")
DEFAULT_SPLIT_DAYS = {"diginetica": 7, "yoochoose": 1, "events": 1}
INPUT_FORMATS = ("csv", "json", "parquet", "delta", "table")
TABLE_INPUTS = ("parquet", "delta", "table")   # events read as one table: the window applies


@dataclass
class SessionsConfig(StageConfig):
    """Stage 1: sessionize a click log (official SR-GNN preprocessing semantics)."""

    yaml_section = "build_sessions"

    input: str = opt(None, "input file, folder or glob", required=True)
    format: str = opt(None, "input layout", choices=FORMATS, required=True)
    output: str = opt(None, "output root OUT (tables go to OUT/<table>/run_date=D)", required=True)
    run_date: str = opt(None, "run date YYYY-MM-DD (the output partition)", required=True)
    table_format: str = opt("parquet", "table format", choices=TABLE_FORMATS)
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
    input_format: str = opt("csv", "events: file format, or a table: parquet/delta path, 'table' = --input is a "
                                   "catalog table name (spark.table)", choices=INPUT_FORMATS)
    window_days: int = opt(30, "events from parquet/delta/table: read only the events of the N days up to "
                               "the run date (UTC); 0 = the whole table")
    date_col: str = opt("", "events from parquet/delta/table: a date column the table is partitioned by "
                            "(UTC day); the window filters on it so that only its partitions are read "
                            "(default: filter on --time-col)")
    delimiter: str = opt(",", "events/csv: field delimiter")
    time_unit: str = opt("auto", "events: timestamps as ISO-8601 or epoch s/ms",
                         choices=("auto", "iso", "s", "ms"))
    allow_empty: bool = opt(False, "when no session survives, replace the run date's tables with empty "
                                   "ones before stopping (default: write nothing)")

    def validate(self) -> None:
        super().validate()
        if self.run_date is not None:
            check_run_date(self.run_date)
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
        if self.window_days < 0:
            raise ConfigError("option --window-days must be >= 0 (0 = the whole table)")
        if self.input_format in ("delta", "table") and self.format != "events":
            raise ConfigError(f"option --input-format {self.input_format} needs --format events")

    def effective_split_days(self) -> int:
        return self.split_days if self.split_days is not None else DEFAULT_SPLIT_DAYS[self.format]

    def windowed(self) -> bool:
        """True when only the events of ``window_days`` days up to the run date are read."""
        return self.format == "events" and self.input_format in TABLE_INPUTS and self.window_days > 0

    def window(self) -> tuple[dt.date, int, int]:
        """The window's first day and its bounds in Unix seconds: ``[start, end)`` = the UTC days
        ``run_date - window_days + 1 .. run_date`` (events from ``end`` on are quarantined as
        ``future_timestamp``, not dropped)."""
        last = parse_run_date(self.run_date)
        first = last - dt.timedelta(days=self.window_days - 1)
        epoch = dt.date(1970, 1, 1)
        return first, (first - epoch).days * DAY_S, ((last - epoch).days + 1) * DAY_S


def parse_fraction(text: str | float) -> float:
    """``"1/64"`` -> 0.015625, ``"0.25"`` -> 0.25; must be in (0, 1]."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"option --fraction: {text!r} is not a fraction like 1/64 or 0.25") from exc
    if not 0 < value <= 1:
        raise ConfigError(f"option --fraction: {text!r} must be in (0, 1]")
    return value
