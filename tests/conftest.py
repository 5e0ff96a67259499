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
