"""Three consecutive nights on a drifting events stream, then a rerun of the middle night."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.synth import SynthConfig, write_events_table
from pipelines.nightly import NightlyConfig, run_nightly
from pipelines.tables import TableStore

ROOT = Path(__file__).resolve().parents[1]
NIGHTS = ["2024-01-08", "2024-01-09", "2024-01-10"]
TABLES = ["sessions", "item_vocab", "quarantine", "item_graph", "evaluation", "model_selection", "recommendations"]


def _night(spark, events: Path, out: Path, conf: Path, night: str) -> dict:
    cfg = NightlyConfig.from_args(["--config", str(conf), "--input", str(events), "--format", "events",
                                   "--input-format", "parquet", "--date-col", "event_date", "--window-days", "7",
                                   "--output", str(out), "--run-date", night])
    return run_nightly(cfg, spark=spark)


def _rows(spark, store: TableStore, table: str, night: str) -> list:
    return sorted(tuple(str(v) for v in r) for r in store.read(spark, table, night).drop("run_date").collect())


@pytest.mark.slow
def test_three_nights_then_a_rerun_of_the_second(spark, tmp_path):
    events = tmp_path / "events"
    write_events_table(events, SynthConfig(seed=1, n_items=300, start="2024-01-01"), clicks_per_day=1500, days=10)
    conf = tmp_path / "stream.yaml"
    sections = yaml.safe_load((ROOT / "conf" / "stream.yaml").read_text())
    sections["train"].update(epochs=2, hidden_size=16)
    sections["evaluate"]["baselines"] = ["pop", "spop", "vsknn"]
    conf.write_text(yaml.safe_dump(sections))
    out = tmp_path / "out"
    for night in NIGHTS:
        _night(spark, events, out, conf, night)
    store = TableStore(str(out))
    for table in TABLES:
        for night in NIGHTS:
            assert store.exists(spark, table, night), (table, night)
    for night in NIGHTS:
        chosen = store.read(spark, "model_selection", night).where("chosen").collect()
        assert len(chosen) == 1
        models = {r["model"] for r in store.read(spark, "recommendations", night).select("model").distinct().collect()}
        assert models == {chosen[0]["candidate"]}
    before = {(t, n): _rows(spark, store, t, n) for t in TABLES for n in (NIGHTS[0], NIGHTS[2])}
    _night(spark, events, out, conf, NIGHTS[1])
    assert {(t, n): _rows(spark, store, t, n) for t in TABLES for n in (NIGHTS[0], NIGHTS[2])} == before
