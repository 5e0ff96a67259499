"""Run dates: one form (``YYYY-MM-DD``) for every stage."""
from __future__ import annotations

import datetime as dt
import re

from srgnn.core.errors import ConfigError

DAY_S = 86_400


def parse_run_date(text: str | None, option: str = "--run-date") -> dt.date:
    """The date named by ``text`` (``YYYY-MM-DD``), or ConfigError naming the option."""
    try:
        if text is None or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(text)):
            raise ValueError(text)
        return dt.date.fromisoformat(str(text))
    except ValueError:
        raise ConfigError(f"option {option}: {text!r} is not a date YYYY-MM-DD") from None


def check_run_date(text: str | None, option: str = "--run-date") -> str:
    """``text`` unchanged when it is a valid ``YYYY-MM-DD`` date, else ConfigError."""
    parse_run_date(text, option)
    return str(text)
