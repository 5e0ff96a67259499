"""The ``evaluation`` table: one row per (model, metric, k, length bucket)."""
from __future__ import annotations

import math
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.evaluate.config import BUCKETS, EVALUATION_SCHEMA, RANK_METRICS


def train_session_ids(train_shard: DataFrame) -> DataFrame:
    """The session ids of stage 2's ``train`` shard (the sessions SR-GNN learnt from): ``session_id``."""
    return train_shard.select(F.col("session_id"))


def evaluation_rows(metrics: dict[str, dict[str, float]], ks: Iterable[int]) -> list[tuple]:
    """(model, metric, k, value, length_bucket) rows; empty length buckets (NaN) are left out."""
    rows = []
    for model, m in metrics.items():
        for k in ks:
            for metric in RANK_METRICS:
                for bucket, suffix in BUCKETS.items():
                    value = m.get(f"{metric}@{k}{suffix}")
                    if value is not None and not math.isnan(value):
                        rows.append((model, metric, int(k), float(value), bucket))
            for metric in ("coverage", "pop"):
                value = m.get(f"{metric}@{k}")
                if value is not None and not math.isnan(value):
                    rows.append((model, metric, int(k), float(value), "all"))
    return rows


def evaluation_frame(spark: SparkSession, metrics: dict[str, dict[str, float]], ks: Iterable[int]) -> DataFrame:
    return spark.createDataFrame(evaluation_rows(metrics, ks), EVALUATION_SCHEMA)
