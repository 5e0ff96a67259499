"""Model selection after the evaluation (pipelines.select): the model_selection table, the guard, the alert."""
from __future__ import annotations

import pytest

from pipelines.select import SelectConfig, select_model
from pipelines.tables import TableStore
from srgnn.core import fs
from srgnn.core.errors import PipelineError
from srgnn.core.layout import Layout

EVALUATION_SCHEMA = "model string, metric string, k int, value double, length_bucket string"


def _evaluated(spark, out, day: str, mrr: dict[str, float]) -> None:
    store = TableStore(str(out))
    rows = [(m, metric, 20, v * f, bucket) for m, v in mrr.items() for metric, f in (("mrr", 1.0), ("hr", 1.5))
            for bucket in ("all", "<=5")]
    store.write(spark.createDataFrame(rows, EVALUATION_SCHEMA), "evaluation", day)
    if "srgnn" in mrr:
        fs.write_json_atomic(f"{Layout(str(out)).model(day)}/config.json", {"model_version": f"srgnn-{day}"})


def _table(spark, out, day):
    df = TableStore(str(out)).read(spark, "model_selection", day).drop("run_date")
    assert df.columns == ["candidate", "model_version", "metric", "value", "chosen", "reason"]
    return {r["candidate"]: r for r in df.collect()}


def test_a_baseline_beyond_the_margin_is_published_and_srgnn_within_it(spark, tmp_path):
    _evaluated(spark, tmp_path, "2024-01-01", {"srgnn": 0.04, "vsknn": 0.47, "spop": 0.50, "pop": 0.01})
    result = select_model(spark, SelectConfig(output=str(tmp_path), run_date="2024-01-01", margin=0.01))
    rows = _table(spark, tmp_path, "2024-01-01")
    assert set(rows) == {"srgnn", "spop"}               # tonight's SR-GNN and the best baseline
    assert [c for c, r in rows.items() if r["chosen"]] == ["spop"] == [result["published"]]
    assert rows["spop"]["model_version"] == "spop@2024-01-01" and rows["srgnn"]["model_version"] == "srgnn-2024-01-01"
    # the next night SR-GNN is within the margin of the best baseline: it is published, and the
    # night before's published model (a baseline) is not a separate candidate
    _evaluated(spark, tmp_path, "2024-01-02", {"srgnn": 0.495, "spop": 0.50})
    select_model(spark, SelectConfig(output=str(tmp_path), run_date="2024-01-02", margin=0.01))
    rows = _table(spark, tmp_path, "2024-01-02")
    assert [c for c, r in rows.items() if r["chosen"]] == ["srgnn"]
    assert fs.exists(Layout(str(tmp_path)).report("2024-01-02", "history.md"))


@pytest.mark.slow
def test_the_alert_fails_the_run_only_when_asked(spark, tmp_path):
    days = [f"2024-02-0{d}" for d in range(1, 6)]
    for day in days[:4]:
        _evaluated(spark, tmp_path, day, {"srgnn": 0.40, "spop": 0.30})
        select_model(spark, SelectConfig(output=str(tmp_path), run_date=day))
    _evaluated(spark, tmp_path, days[4], {"srgnn": 0.20, "spop": 0.10})
    quiet = select_model(spark, SelectConfig(output=str(tmp_path), run_date=days[4]))
    assert quiet["alert"] and "more than 20% below the median 0.4000" in quiet["alert"]
    assert fs.read_json(Layout(str(tmp_path)).stats(days[4], "select.json"))["alert"] == quiet["alert"]
    with pytest.raises(PipelineError, match="published srgnn for 2024-02-05, but: published model srgnn"):
        select_model(spark, SelectConfig(output=str(tmp_path), run_date=days[4], fail_on_alert=True))
    assert _table(spark, tmp_path, days[4])["srgnn"]["chosen"]   # it still published
