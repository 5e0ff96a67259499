"""The notebooks run as plain Python on the sample and write their PNG plots.

They run in this process (runpy), so they reuse the suite's SparkSession, on a copy of the shared
stage 1 + 2 outputs after a short in-process nightly run from stage 3 on (1 epoch)."""
from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sample_night(spark, sample_stage2, tmp_path_factory):
    from pipelines.nightly import NightlyConfig, run_nightly

    out = tmp_path_factory.mktemp("notebooks") / "out"
    shutil.copytree(sample_stage2["output"], out)  # the shared fixture's tables stay untouched
    conf = out.parent / "conf.yaml"
    conf.write_text("train:\n  epochs: 1\n  progress: false\nevaluate:\n  baselines: [pop]\n  progress: false\n")
    cfg = NightlyConfig(output=str(out), run_date=sample_stage2["run_date"], stage_config=str(conf),
                        start_at="train", show_sessions=2)
    result = run_nightly(cfg, spark=spark)
    return {"output": out, "run_date": sample_stage2["run_date"], "result": result}


def _run_notebook(name: str, night: dict, plots: Path, monkeypatch) -> dict:
    monkeypatch.setenv("SRGNN_OUTPUT", str(night["output"]))
    monkeypatch.setenv("SRGNN_RUN_DATE", night["run_date"])
    monkeypatch.setenv("SRGNN_PLOTS_DIR", str(plots))
    return runpy.run_path(str(ROOT / "notebooks" / name), run_name="__main__")


def _pngs(folder: Path) -> dict[str, int]:
    found = {}
    for p in sorted(folder.glob("*.png")):
        assert p.read_bytes()[:8] == PNG_MAGIC, f"{p} is not a PNG"
        found[p.name] = p.stat().st_size
    return found


def test_notebooks_are_in_databricks_source_format():
    for name in ("01_data.py", "02_model.py"):
        text = (ROOT / "notebooks" / name).read_text()
        assert text.startswith("# Databricks notebook source\n"), name
        assert text.count("\n# COMMAND ----------\n") >= 4, name
        compile(text, name, "exec")


@pytest.mark.slow
def test_01_data_writes_its_plots(sample_night, tmp_path, monkeypatch):
    plots = tmp_path / "plots01"
    ns = _run_notebook("01_data.py", sample_night, plots, monkeypatch)
    assert set(_pngs(plots)) == {"session_lengths.png", "item_popularity.png", "clicks_per_day.png",
                                 "stage1_filtering.png"}
    assert all(size > 5_000 for size in _pngs(plots).values())  # a drawn figure, not an empty canvas
    # the figures are drawn from the tables: session counts per split match stage 1's table
    lengths = ns["lengths"]
    sessions = ns["sessions"]
    assert int(lengths["count"].sum()) == sessions.count()


@pytest.mark.slow
def test_02_model_writes_its_plots(sample_night, tmp_path, monkeypatch):
    plots = tmp_path / "plots02"
    ns = _run_notebook("02_model.py", sample_night, plots, monkeypatch)
    assert {"training_curves.png", "metrics_by_length.png", "variants.png"} <= set(_pngs(plots))
    # the training curve has one point per epoch that stage 3 ran
    assert len(ns["curves"]) >= 1 and ns["curves"]["epoch"].max() == \
        sample_night["result"]["results"]["train"]["epochs_run"]
    assert len(ns["examples"]) > 0
