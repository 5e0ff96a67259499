"""Stage 2's shard files: row group counts per split, one Spark job writing every split, the
per-split folders of ``part-NNNNN.parquet`` files and the manifest beside them."""
from __future__ import annotations

import os
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipelines.graph.config import GraphConfig
from pipelines.graph.transforms import bucket_totals, session_offsets, session_row_groups, shard_rows
from pipelines.tables import hadoop_fs
from srgnn.core.commit import RunCommit
from srgnn.core import contracts as C
from srgnn.core.errors import InputError
from srgnn.core.fs import local_path, write_json_atomic
from srgnn.core.log import get_logger

log = get_logger(__name__)

SHARD_SCHEMA = "items array<int>, length int, target int, ngc_w array<float>, session_id string"
PARQUET_BLOCK_SIZE = 1 << 30    # larger than any shard file: one row group per file


def row_group_count(n_examples: int, cfg: GraphConfig) -> int:
    """Row groups of a split: k * world_size, k from --row-groups-per-rank or --rows-per-row-group."""
    if n_examples == 0:
        return 0
    k = cfg.row_groups_per_rank or max(1, round(n_examples / (cfg.world_size * cfg.rows_per_row_group)))
    return k * cfg.world_size


def split_layout(spark: SparkSession, weighted: DataFrame, cfg: GraphConfig, where: str
            ) -> tuple[dict[str, dict[str, int]], DataFrame]:
    """Counts per split and the (role, bucket) -> offsets table that numbers the examples."""
    totals = bucket_totals(weighted, cfg.seed, cfg.max_len).collect()
    counts = {s: {"sessions": 0, "examples": 0, "truncated": 0} for s in C.SPLITS}
    for r in totals:
        for k in ("sessions", "examples", "truncated"):
            counts[r["role"]][k] += int(r[k])
    if counts["train"]["examples"] == 0:
        raise InputError(f"empty training split: {where} gives no training examples (valid_share="
                         f"{cfg.valid_share}); it needs training sessions of 2 or more clicks")
    rg_base = 0
    for s in C.SPLITS:
        counts[s]["row_groups"] = row_group_count(counts[s]["examples"], cfg)
        counts[s]["rg_base"] = rg_base
        rg_base += counts[s]["row_groups"]
        if 0 < counts[s]["examples"] < counts[s]["row_groups"]:
            log.warning("split %s has %d examples, fewer than its %d row groups: some are empty",
                        s, counts[s]["examples"], counts[s]["row_groups"])
    rows, running = [], {s: 0 for s in C.SPLITS}
    for r in sorted(totals, key=lambda r: (r["role"], r["bucket"])):
        c = counts[r["role"]]
        rows.append((r["role"], int(r["bucket"]), running[r["role"]], c["examples"], c["row_groups"], c["rg_base"]))
        running[r["role"]] += int(r["examples"])
    layout = spark.createDataFrame(rows, "role string, bucket int, offset long, n_examples long, "
                                         "n_row_groups long, rg_base int")
    return counts, layout


def _move_split(spark: SparkSession, written: str, target: str) -> list[str]:
    """``written`` (Spark's role=<split> folder) -> ``target``/part-NNNNN.parquet, in Spark's part
    order (= row group order)."""
    jvm = spark._jvm
    fs, src = hadoop_fs(spark, written)
    _, dst = hadoop_fs(spark, target)
    fs.mkdirs(dst)
    names = sorted(st.getPath().getName() for st in fs.listStatus(src) if st.getPath().getName().endswith(".parquet"))
    for i, name in enumerate(names):
        if not fs.rename(jvm.org.apache.hadoop.fs.Path(f"{written}/{name}"),
                         jvm.org.apache.hadoop.fs.Path(f"{target}/part-{i:05d}.parquet")):
            raise OSError(f"could not move {written}/{name} to {target}")
    fs.delete(src, True)
    return [f"part-{i:05d}.parquet" for i in range(len(names))]


def _row_group_rows(path: str, files: list[str]) -> list[int]:
    import pyarrow.parquet as pq

    rows = []
    for name in files:
        meta = pq.ParquetFile(os.path.join(local_path(path), name)).metadata
        rows += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return rows


def write_shards(spark: SparkSession, weighted: DataFrame, layout: DataFrame, counts: dict, cfg: GraphConfig,
                  staging: str) -> dict[str, Any]:
    """All splits in one Spark job (one task per row group), then one folder per split."""
    n_partitions = sum(counts[s]["row_groups"] for s in C.SPLITS)
    groups = session_row_groups(session_offsets(weighted, layout, cfg.seed))
    rows = shard_rows(groups, n_partitions, cfg.max_len, cfg.seed)
    (rows.write.mode("overwrite").partitionBy("role").option("parquet.block.size", PARQUET_BLOCK_SIZE)
     .option("compression", "snappy").parquet(f"{staging}/_rows"))
    splits = {}
    for s in C.SPLITS:
        path = f"{staging}/{s}"
        if counts[s]["examples"]:
            files = _move_split(spark, f"{staging}/_rows/role={s}", path)
        else:  # an empty split keeps the schema, in one file without rows
            spark.createDataFrame([], SHARD_SCHEMA).coalesce(1).write.parquet(f"{staging}/_rows/role={s}")
            files = _move_split(spark, f"{staging}/_rows/role={s}", path)
        sizes = _row_group_rows(path, files)
        if sum(sizes) != counts[s]["examples"]:
            raise RuntimeError(f"split {s}: wrote {sum(sizes)} rows, expected {counts[s]['examples']}")
        splits[s] = {"examples": counts[s]["examples"], "sessions": counts[s]["sessions"],
                     "truncated": counts[s]["truncated"], "row_groups": len(sizes), "row_group_rows": sizes}
        log.info("wrote %s: %d examples in %d row groups", path, sum(sizes), len(sizes))
    fs, rows_path = hadoop_fs(spark, f"{staging}/_rows")
    fs.delete(rows_path, True)
    return splits


def write_shard_folder(spark: SparkSession, final: str, weighted: DataFrame, layout: DataFrame, counts: dict,
                       cfg: GraphConfig, fields: dict[str, Any], commit: RunCommit) -> dict[str, Any]:
    """Write the splits and ``_manifest.json`` (``fields`` + ``splits`` + ``content_hash``) into a
    staging folder that ``commit`` publishes at ``final`` (the shards of one run date); return the
    manifest."""
    from srgnn.reader import content_hash

    manifest: dict[str, Any] = {}

    def write(staging: str) -> None:
        splits = write_shards(spark, weighted, layout, counts, cfg, staging)
        manifest.update({**fields, "splits": splits, "content_hash": content_hash(local_path(staging))})
        write_json_atomic(f"{staging}/{C.MANIFEST_NAME}", manifest)

    commit.add(final, write)
    log.info("wrote shards for run_date=%s at %s (%s)", cfg.run_date, final, manifest["content_hash"])
    return manifest
