"""Shared fixtures: one local[2] SparkSession for the whole suite (few shuffle partitions)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CSV = ROOT / "data" / "sample" / "diginetica" / "sample_train-item-views.csv"
FIXTURES = ROOT / "tests" / "fixtures"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SRGNN_DRIVER_MEMORY", "3g")

# ---- markers (registered in pyproject.toml): slow, spark, gpu ----------------------------------
SPARK_FIXTURES = {"spark", "sample_stage1", "sample_stage2"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so that -m "not spark" sees these markers
def pytest_collection_modifyitems(config, items):
    """Mark `spark` every test that uses the SparkSession (directly or through another fixture);
    skip the `gpu` tests where CUDA is not available."""
    gpu_items = []
    for item in items:
        if SPARK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.spark)
        if item.get_closest_marker("gpu") is not None:
            gpu_items.append(item)
    if gpu_items:
        import torch

        if not torch.cuda.is_available():
            for item in gpu_items:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session")
def spark():
    from pipelines.spark import get_spark

    session = get_spark("srgnn-tests", master="local[2]", shuffle_partitions=2)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    return SAMPLE_CSV


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


# ---- stage outputs on the bundled sample, built once per test session --------------------------
# Tests must not modify these outputs (copy them to tmp_path first if a test rewrites a stage).
SAMPLE_RUN_DATE = "2016-06-01"


@pytest.fixture(scope="session")
def sample_stage1(spark, tmp_path_factory):
    """Stage 1 on the bundled Diginetica sample: {'output', 'run_date', 'stats'}."""
    from pipelines.sessions import SessionsConfig, build_sessions

    out = tmp_path_factory.mktemp("sample_out")
    cfg = SessionsConfig(input=str(SAMPLE_CSV), format="diginetica", output=str(out),
                         run_date=SAMPLE_RUN_DATE)
    stats = build_sessions(spark, cfg)
    return {"output": str(out), "run_date": SAMPLE_RUN_DATE, "stats": stats}


@pytest.fixture(scope="session")
def sample_stage2(spark, sample_stage1):
    """Stage 2 on top of sample_stage1 (default options): adds 'manifest'."""
    from pipelines.graph import GraphConfig, build_graph

    cfg = GraphConfig(output=sample_stage1["output"], run_date=SAMPLE_RUN_DATE)
    manifest = build_graph(spark, cfg)
    return {**sample_stage1, "manifest": manifest}
