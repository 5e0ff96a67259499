"""The history report across nights and its alert (pipelines.history)."""
from __future__ import annotations

import datetime as dt

import pytest

from pipelines.history import alert_message, history_report
from pipelines.tables import TableStore
from srgnn.core import fs
from srgnn.core.layout import Layout

SELECTION_SCHEMA = "candidate string, model_version string, metric string, value double, chosen boolean, reason string"
EVALUATION_SCHEMA = "model string, metric string, k int, value double, length_bucket string"


def _night(spark, store: TableStore, day: str, srgnn: float, vsknn: float, items: int) -> None:
    chosen = "srgnn" if srgnn >= vsknn else "vsknn"
    store.write(spark.createDataFrame([("srgnn", "srgnn-x", "mrr@20", srgnn, chosen == "srgnn", "r"),
                                       ("vsknn", "vsknn-x", "mrr@20", vsknn, chosen == "vsknn", "r")],
                                      SELECTION_SCHEMA), "model_selection", day)
    store.write(spark.createDataFrame([(m, metric, 20, v * f, "all") for m, v in (("srgnn", srgnn), ("vsknn", vsknn))
                                       for metric, f in (("mrr", 1.0), ("hr", 2.0))], EVALUATION_SCHEMA),
                "evaluation", day)
    layout = Layout(store.root)
    fs.write_json_atomic(layout.stats(day, "build_sessions.json"),
                         {"rows_read": 1000, "sessions": {"train": 90, "test": 10}, "n_items": items,
                          "rows_quarantined": 3})


@pytest.mark.spark
def test_history_lists_every_night_and_alerts_on_a_drop(spark, tmp_path):
    store = TableStore(str(tmp_path))
    days = [str(dt.date(2024, 1, 1) + dt.timedelta(d)) for d in range(5)]
    for i, day in enumerate(days[:4]):
        _night(spark, store, day, srgnn=0.30, vsknn=0.25, items=100 + 10 * i)
    report = history_report(spark, store, days[3])
    assert report["alert"] is None and [r["run_date"] for r in report["nights"]] == days[:4]
    _night(spark, store, days[4], srgnn=0.10, vsknn=0.20, items=150)  # tonight: both fall, vsknn is published
    report = history_report(spark, store, days[4], alert_drop=0.2)
    assert [r["published"] for r in report["nights"]] == ["srgnn"] * 4 + ["vsknn"]
    assert report["alert"].startswith("published model vsknn has MRR@20 0.2000 on 2024-01-05, more than 20% "
                                       "below the median 0.3000 of the previous 4 nights")
    text = fs.read_bytes(report["markdown"]).decode()
    assert "| 2024-01-05 | vsknn | 10.00 | 20.00 | 40.00 | 1,000 | 100 | 150 | 20 | 3 | - |" in text
    assert "**ALERT**" in text
    assert fs.read_bytes(report["chart"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert history_report(spark, store, days[4], alert_drop=0.5)["alert"] is None


def test_alert_needs_three_earlier_nights_and_uses_their_median():
    rec = [{"run_date": f"d{i}", "published": "srgnn", "published_mrr@20": v}
           for i, v in enumerate([0.5, 0.1, 0.3, 0.2])]
    assert alert_message(rec[-2:], 0.2) is None                    # one earlier night is not a trend
    assert alert_message(rec, 0.2) is not None                     # 0.2 < 0.8 * median(0.5, 0.1, 0.3) = 0.24
    assert alert_message(rec, 0.4) is None                         # 0.2 >= 0.6 * 0.3
