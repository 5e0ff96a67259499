"""Foundation: config loading, table I/O (atomic per-run-date replace), Spark/Java/Delta checks."""
from __future__ import annotations

import dataclasses
import os

import pytest

from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError, EnvironmentProblem, InputError
from pipelines.tables import TableStore
from srgnn.core.fs import read_json, write_json_atomic


@dataclasses.dataclass
class DemoConfig(StageConfig):
    yaml_section = "demo"
    output: str = opt(None, required=True)
    min_support: int = opt(5)
    split_days: float = opt(7.0)
    inclusive: bool = opt(False)
    fmt: str = opt("parquet", choices=["parquet", "delta"])
    ks: list[int] = opt([10, 20])


def test_config_precedence_defaults_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("demo:\n  min_support: 3\n  split_days: 2\n  ks: [5]\n")
    cfg = DemoConfig.from_args(["--config", str(y), "--output", "o", "--split-days", "1.5",
                                "--inclusive"])
    assert cfg == DemoConfig(output="o", min_support=3, split_days=1.5, inclusive=True, ks=[5])
    assert DemoConfig.from_args(["--output", "o", "--ks", "1,2"]).ks == [1, 2]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="--output"):
        DemoConfig.from_args([])
    with pytest.raises(ConfigError, match="min_support"):
        DemoConfig().replace(min_support="many")
    with pytest.raises(ConfigError, match="unknown option"):
        DemoConfig.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="not one of"):
        DemoConfig().replace(fmt="csv")


def test_partition_replace_is_idempotent_and_keeps_other_dates(spark, tmp_path):
    store = TableStore(str(tmp_path / "out"))
    df1 = spark.createDataFrame([(1, "a"), (2, "b")], "k int, v string")
    store.write(df1, "t", "2020-01-01")
    store.write(df1, "t", "2020-01-02")
    store.write(spark.createDataFrame([(3, "c")], "k int, v string"), "t", "2020-01-01")
    got = store.read(spark, "t", "2020-01-01").select("k", "v").collect()
    assert [tuple(r) for r in got] == [(3, "c")]
    assert store.read(spark, "t", "2020-01-02").count() == 2
    # the whole table reads as the union of partitions, with no staging leftovers
    whole = spark.read.parquet(store.path("t"))
    assert whole.count() == 3
    assert sorted(os.listdir(store.path("t"))) == ["run_date=2020-01-01", "run_date=2020-01-02"]


def test_reading_a_missing_partition_is_one_clear_error(spark, tmp_path):
    with pytest.raises(InputError, match="table 'sessions' has no partition run_date=2020-01-01"):
        TableStore(str(tmp_path)).read(spark, "sessions", "2020-01-01")


def test_delta_without_jars_is_a_clear_error(spark):
    from pipelines.spark import delta_available, require_delta

    if delta_available(spark):
        pytest.skip("Delta jars are on this classpath")
    with pytest.raises(EnvironmentProblem, match="Delta Lake jars"):
        require_delta(spark)


def test_json_side_files_round_trip(tmp_path):
    p = write_json_atomic(str(tmp_path / "a" / "stats.json"), {"x": 1})
    assert read_json(p) == {"x": 1}
    assert os.listdir(tmp_path / "a") == ["stats.json"]


def test_java_is_detected():
    from pipelines.spark import java_major_version

    assert (java_major_version() or 0) >= 17
