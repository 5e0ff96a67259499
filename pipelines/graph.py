"""Stage 2: the global item-transition graph (NGC weights) and the training shards Petastorm reads.

Reads stage 1's ``sessions`` and ``item_vocab`` tables and its ``build_sessions.json`` stats for one
run date, and writes (see docs/stage2.md and docs/contracts.md):

- ``OUT/item_graph/run_date=D/``: ``src_idx``, ``dst_idx``, ``count`` (times ``src`` is directly
  followed by ``dst`` in the training sessions, repeats counted), ``weight`` = count / out-count of
  ``src`` (the NGC weight), ``in_weight`` = count / in-count of ``dst``. Self-loops (a repeated
  click ``a -> a``) are ordinary edges by default (``--self-loops drop`` leaves them out).
- ``OUT/shards/run_date=D/{train,valid,test}/part-NNNNN.parquet`` and ``_manifest.json``: every
  prefix of every session as one example (``items`` the last L clicks, right-padded, ``length``,
  ``target``, ``ngc_w``, ``session_id``), ``k * world_size`` files of equal size (+-1 row), each one
  row group, rows in a seeded shuffled order. The whole folder is swapped in atomically.

Order of the steps (each a pure DataFrame -> DataFrame function below):

1. ``recent_fraction_sessions``: stage 1's ``fraction`` keeps the last ``int(n * fraction)`` training
   pairs in the official order (sessions by ``session_order``, longest prefix first), i.e. the
   official ``tr_seqs[-split:]``; a session whose pairs are cut part-way keeps its first clicks.
2. ``sessions_with_role``: ``train`` sessions whose ``xxhash64(session_id)`` falls in the first
   ``valid_share`` of the hash range become ``valid`` (whole sessions, so never on both sides).
3. ``session_transitions`` -> ``item_graph`` (from ``train`` sessions only).
4. ``sessions_with_ngc_weights``: each session's items and, once per session, the weight of the
   transition into each position; every example then slices the same window out of both arrays.
5. ``session_offsets`` / ``session_row_groups`` / ``padded_examples``: sessions in a seeded hash
   order get consecutive example numbers g; example g goes to row group ``g * P // N``, so the P
   row groups hold ``floor(N/P)`` or ``ceil(N/P)`` examples. Sessions (not padded examples) are
   what is shuffled across the cluster; the examples are exploded and padded after the shuffle.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.log import get_logger
from pipelines.tables import TableStore, atomic_write_dir
from srgnn.core.contracts import TABLE_FORMATS as FORMATS
from srgnn.core.fs import local_path, read_json, write_json_atomic

log = get_logger(__name__)

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
VALID_HASH_BUCKETS = 1_000_000  # valid_share resolution: 1e-6
OFFSET_BUCKETS = 64             # parallel running sums for the example numbering
SESSION_COLUMNS = ("session_id", "split", "item_idx")
SHARD_COLUMNS = ("items", "length", "target", "ngc_w", "session_id")
SHARD_SCHEMA = "items array<int>, length int, target int, ngc_w array<float>, session_id string"
PARQUET_BLOCK_SIZE = 1 << 30    # larger than any shard file: one row group per file


@dataclasses.dataclass
class GraphConfig(StageConfig):
    """Stage 2: build the global item graph (NGC weights) and the Petastorm training shards."""

    yaml_section = "build_graph"

    output: str = opt(None, required=True, help="OUT root: stage 1's tables are read from it, stage 2 writes there")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD (the stage-1 partition to read)")
    table_format: str = opt("parquet", choices=FORMATS, help="format of the tables under OUT")
    valid_share: float = opt(0.1, help="share of training sessions held out as 'valid' (0 = paper parity)")
    max_len: int = opt(50, help="L: examples keep the last L clicks of the prefix")
    world_size: int = opt(8, help="the number of row groups of each split is a multiple of this")
    rows_per_row_group: int = opt(65536, help="target examples per row group (sets k when --row-groups-per-rank is 0)")
    row_groups_per_rank: int = opt(0, help="k: row groups per rank and split (0 = from --rows-per-row-group)")
    seed: int = opt(0, help="seed of the shard shuffle")
    self_loops: str = opt("keep", choices=["keep", "drop"], help="repeated clicks a->a as graph edges or not")
    shuffle_partitions: int = opt(0, help="spark.sql.shuffle.partitions for this job (0 = Spark's setting)")

    def validate(self) -> None:
        super().validate()
        if self.run_date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(self.run_date)):
            raise ConfigError(f"option --run-date: {self.run_date!r} is not YYYY-MM-DD")
        if not 0.0 <= self.valid_share < 1.0:
            raise ConfigError(f"option --valid-share: {self.valid_share} is not in [0, 1)")
        for name, low in (("max_len", 1), ("world_size", 1), ("rows_per_row_group", 1),
                          ("row_groups_per_rank", 0), ("shuffle_partitions", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"option --{name.replace('_', '-')}: {getattr(self, name)} is below {low}")


# ---- 1. stage 1's fraction ------------------------------------------------------------------------
def recent_fraction_sessions(train_sessions: DataFrame, keep_pairs: int) -> DataFrame:
    """Training sessions cut to the last ``keep_pairs`` prefix pairs of the official order.

    The official preprocess.py lists pairs session by session in ``session_order``, longest prefix
    first, and keeps ``tr_seqs[-keep:]``. The pairs of a session that are kept are thus its
    shortest ones, i.e. all pairs of its first ``kept + 1`` clicks. Needs ``session_order``.
    """
    n_pairs = F.size("item_idx") - 1
    later = (Window.orderBy(F.col("session_order").desc(), F.col("session_id").desc())
             .rowsBetween(Window.unboundedPreceding, -1))
    with_later = train_sessions.withColumn("_pairs_after", F.coalesce(F.sum(n_pairs).over(later), F.lit(0)))
    kept = F.least(n_pairs, F.greatest(F.lit(keep_pairs) - F.col("_pairs_after"), F.lit(0)))
    return (with_later.withColumn("_kept", kept)
            .where(F.col("_kept") > 0)
            .withColumn("item_idx", F.slice("item_idx", 1, F.col("_kept") + 1))
            .drop("_pairs_after", "_kept"))


# ---- 2. roles -------------------------------------------------------------------------------------
def sessions_with_role(sessions: DataFrame, valid_share: float) -> DataFrame:
    """``role``: 'test' for test sessions; 'valid' for the training sessions whose hash of
    ``session_id`` falls below ``valid_share``; 'train' for the rest."""
    threshold = int(round(valid_share * VALID_HASH_BUCKETS))
    bucket = F.pmod(F.xxhash64("session_id"), F.lit(VALID_HASH_BUCKETS))
    role = (F.when(F.col("split") == "test", F.lit("test"))
            .when(bucket < threshold, F.lit("valid"))
            .otherwise(F.lit("train")))
    return sessions.select("session_id", role.alias("role"), "item_idx")


# ---- 3. the global graph --------------------------------------------------------------------------
def session_transitions(sessions: DataFrame) -> DataFrame:
    """One row per click-to-click step: ``session_id``, ``role``, ``pos`` (1-based index of the
    step's destination click), ``src_idx``, ``dst_idx``."""
    n = F.size("item_idx")
    steps = F.zip_with(F.slice("item_idx", 1, n - 1), F.slice("item_idx", 2, n - 1),
                       lambda s, d: F.struct(s.alias("src_idx"), d.alias("dst_idx")))
    exploded = sessions.select("session_id", "role", F.posexplode(steps).alias("pos0", "step"))
    return exploded.select("session_id", "role", (F.col("pos0") + 1).cast("int").alias("pos"),
                           F.col("step.src_idx").alias("src_idx"), F.col("step.dst_idx").alias("dst_idx"))


def item_graph(transitions: DataFrame, self_loops: str = "keep") -> DataFrame:
    """The global graph of the ``train`` transitions: ``src_idx``, ``dst_idx``, ``count``,
    ``weight`` = count / out-count of src (NGC), ``in_weight`` = count / in-count of dst."""
    edges = transitions.where(F.col("role") == "train")
    if self_loops == "drop":
        edges = edges.where(F.col("src_idx") != F.col("dst_idx"))
    counts = edges.groupBy("src_idx", "dst_idx").agg(F.count(F.lit(1)).alias("count"))
    out_count = F.sum("count").over(Window.partitionBy("src_idx"))
    in_count = F.sum("count").over(Window.partitionBy("dst_idx"))
    return counts.select(
        F.col("src_idx").cast("int").alias("src_idx"),
        F.col("dst_idx").cast("int").alias("dst_idx"),
        F.col("count").cast("long").alias("count"),
        (F.col("count") / out_count).cast("double").alias("weight"),
        (F.col("count") / in_count).cast("double").alias("in_weight"),
    )


# ---- 4. per-session NGC weights -------------------------------------------------------------------
def sessions_with_ngc_weights(transitions: DataFrame, graph: DataFrame) -> DataFrame:
    """Per session: ``items`` (its clicks) and ``trans_w`` (same length): ``trans_w[j]`` = weight of
    the global edge ``items[j-1] -> items[j]`` (0 at j = 0 and for edges not in the graph)."""
    weighted = transitions.join(graph.select("src_idx", "dst_idx", "weight"), ["src_idx", "dst_idx"], "left")
    step = F.struct("pos", "src_idx", "dst_idx", F.coalesce("weight", F.lit(0.0)).cast("float").alias("w"))
    grouped = weighted.groupBy("session_id", "role").agg(F.array_sort(F.collect_list(step)).alias("steps"))
    items = F.concat(F.array(F.col("steps")[0]["src_idx"]), F.transform("steps", lambda s: s["dst_idx"]))
    trans_w = F.concat(F.array(F.lit(0.0).cast("float")), F.transform("steps", lambda s: s["w"]))
    return grouped.select("session_id", "role", items.alias("items"), trans_w.alias("trans_w"))


# ---- 5. shard layout ------------------------------------------------------------------------------
def session_order_key(seed: int):
    """The seeded shuffle order of sessions: (bucket for parallel running sums, key inside it)."""
    return (F.pmod(F.xxhash64(F.lit(seed), F.col("session_id")), F.lit(OFFSET_BUCKETS)).cast("int"),
            F.xxhash64(F.lit(seed + 1), F.col("session_id")))


def bucket_totals(sessions: DataFrame, seed: int, max_len: int) -> DataFrame:
    """Sessions, examples and truncated examples per (role, offset bucket): small, collected."""
    bucket, _ = session_order_key(seed)
    n_pairs = F.size("items") - 1
    return (sessions.select("role", bucket.alias("bucket"), n_pairs.alias("n_pairs"))
            .groupBy("role", "bucket")
            .agg(F.count(F.lit(1)).alias("sessions"), F.sum("n_pairs").alias("examples"),
                 F.sum(F.greatest(F.col("n_pairs") - max_len, F.lit(0))).alias("truncated")))


def session_offsets(sessions: DataFrame, layout: DataFrame, seed: int) -> DataFrame:
    """``g_start``: the number of the session's first example within its role, sessions taken in the
    seeded hash order (bucket, key). ``layout`` (one row per role and bucket) has ``offset``
    (examples of the role in earlier buckets), the role's ``n_examples``, ``n_row_groups`` and
    ``rg_base`` (number of its first row group among all roles')."""
    bucket, key = session_order_key(seed)
    n_pairs = (F.size("items") - 1).cast("long")
    earlier = (Window.partitionBy("role", "bucket").orderBy("_key", "session_id")
               .rowsBetween(Window.unboundedPreceding, -1))
    keyed = sessions.select("*", bucket.alias("bucket"), key.alias("_key"), n_pairs.alias("n_pairs"))
    within = keyed.withColumn("_before", F.coalesce(F.sum("n_pairs").over(earlier), F.lit(0).cast("long")))
    joined = within.join(F.broadcast(layout), ["role", "bucket"])
    return joined.select("session_id", "role", "items", "trans_w", "n_pairs", "n_examples", "n_row_groups",
                         "rg_base", (F.col("offset") + F.col("_before")).alias("g_start"))


def session_row_groups(sessions: DataFrame) -> DataFrame:
    """One row per (session, row group it has examples in): example g of a role goes to its row
    group ``g * P // N``; ``p_lo``..``p_hi`` are the prefix lengths of the session's examples
    there; ``rg`` numbers row groups across roles (``rg_base`` + the role's own number)."""
    n, p = F.col("n_examples"), F.col("n_row_groups")
    g_first, g_last = F.col("g_start"), F.col("g_start") + F.col("n_pairs") - 1
    # floor of a double quotient is exact here: numerators < 2^53, N < 2^31
    rg_of = lambda g: F.floor(g * p / n).cast("int")  # noqa: E731
    first_g_of = lambda r: F.floor((r * n + p - 1) / p).cast("long")  # ceil(r * N / P)  # noqa: E731
    spread = sessions.select("*", F.explode(F.sequence(rg_of(g_first), rg_of(g_last))).alias("_rg"))
    lo = F.greatest(g_first, first_g_of(F.col("_rg")))
    hi = F.least(g_last, first_g_of(F.col("_rg") + 1) - 1)
    return spread.select("session_id", "role", "items", "trans_w", (F.col("rg_base") + F.col("_rg")).alias("rg"),
                         (lo - g_first + 1).cast("int").alias("p_lo"), (hi - g_first + 1).cast("int").alias("p_hi"))


def padded_examples(session_groups: DataFrame, max_len: int) -> DataFrame:
    """The shard rows: for every prefix length p in ``p_lo..p_hi``: ``items`` = the last ``max_len``
    clicks of the prefix, right-padded with 0; ``ngc_w`` = the same window of ``trans_w`` with 0 at
    the first position (no transition into it inside the window) and on padding; ``target``."""
    ex = session_groups.select("*", F.explode(F.sequence("p_lo", "p_hi")).alias("p"))
    p = F.col("p")
    start = F.greatest(p - max_len, F.lit(0))     # 0-based first click of the window
    width = p - start                             # = least(p, L)
    pad = F.lit(max_len) - width
    items = F.concat(F.slice("items", start + 1, width), F.array_repeat(F.lit(0), pad))
    ngc_w = F.concat(F.array(F.lit(0.0).cast("float")), F.slice("trans_w", start + 2, width - 1),
                     F.array_repeat(F.lit(0.0).cast("float"), pad))
    return ex.select(items.alias("items"), width.cast("int").alias("length"),
                     F.element_at("items", p + 1).cast("int").alias("target"), ngc_w.alias("ngc_w"),
                     "session_id", *[c for c in ("role", "rg") if c in session_groups.columns], "p")


# ---- placing row group r in partition r ------------------------------------------------------------
def _murmur3_int(value: int, seed: int = 42) -> int:
    """Spark's Murmur3_x86_32.hashInt (what ``F.hash`` and hash partitioning use on an int)."""
    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    k1 = (value & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF
    k1 = rotl(k1, 15) * 0x1B873593 & 0xFFFFFFFF
    h1 = rotl(seed ^ k1, 13)
    h1 = (h1 * 5 + 0xE6546B64) & 0xFFFFFFFF
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & 0xFFFFFFFF
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & 0xFFFFFFFF
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def hash_partition_keys(n: int) -> list[int]:
    """For each r in [0, n): an int key that Spark's hash partitioning into n partitions puts in
    partition r (``pmod(murmur3(key), n) == r``), so ``repartition(n, key)`` sends row group r to
    partition r, i.e. to its own file."""
    keys: dict[int, int] = {}
    k = 0
    while len(keys) < n:
        keys.setdefault(_murmur3_int(k) % n, k)  # Python's % of a negative int is Spark's pmod
        k += 1
    return [keys[r] for r in range(n)]


def shard_rows(session_groups: DataFrame, n_partitions: int, max_len: int, seed: int) -> DataFrame:
    """Row group ``rg`` alone in partition ``rg``, its rows in a seeded hash order, shard columns + role."""
    keys = hash_partition_keys(n_partitions)
    key_of = F.element_at(F.array(*[F.lit(k).cast("int") for k in keys]), F.col("rg") + 1)
    placed = session_groups.withColumn("_pkey", key_of).repartition(n_partitions, "_pkey")
    examples = padded_examples(placed, max_len)
    order = F.xxhash64(F.lit(seed + 2), F.col("session_id"), F.col("p"))
    return (examples.sortWithinPartitions("role", order, "session_id", "p")
            .select(*SHARD_COLUMNS, "role"))


# ---- the job --------------------------------------------------------------------------------------
def row_group_count(n_examples: int, cfg: GraphConfig) -> int:
    """Row groups of a split: k * world_size, k from --row-groups-per-rank or --rows-per-row-group."""
    if n_examples == 0:
        return 0
    k = cfg.row_groups_per_rank or max(1, round(n_examples / (cfg.world_size * cfg.rows_per_row_group)))
    return k * cfg.world_size


def _stats_path(store: TableStore, run_date: str) -> str:
    return local_path(f"{store.root}/stats/run_date={run_date}/build_sessions.json")


def _read_inputs(spark: SparkSession, cfg: GraphConfig, store: TableStore) -> tuple[DataFrame, int, float]:
    sessions = store.read(spark, "sessions", cfg.run_date)
    vocab = store.read(spark, "item_vocab", cfg.run_date)
    missing = [c for c in SESSION_COLUMNS if c not in sessions.columns]
    if missing:
        raise InputError(f"table 'sessions' (run_date={cfg.run_date}) under {store.root} lacks column(s) "
                         f"{missing}; has {sessions.columns}")
    stats_path = _stats_path(store, cfg.run_date)
    if not os.path.isfile(stats_path):
        raise InputError(f"stage 1 stats not found: {stats_path} (run jobs/build_sessions.py for "
                         f"run date {cfg.run_date} first)")
    stats = read_json(stats_path)
    fraction = float(stats.get("fraction") or 1.0)
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"{stats_path}: fraction {fraction} is not in (0, 1]")
    n_items = vocab.count()
    if "n_items" in stats and int(stats["n_items"]) != n_items:
        raise InputError(f"{stats_path} says n_items={stats['n_items']} but table 'item_vocab' "
                         f"(run_date={cfg.run_date}) has {n_items} rows")
    if fraction < 1.0 and "session_order" not in sessions.columns:
        raise InputError(f"table 'sessions' (run_date={cfg.run_date}) lacks column 'session_order', "
                         f"needed to apply fraction={fraction}")
    return sessions, n_items, fraction


def _roles(sessions: DataFrame, fraction: float, cfg: GraphConfig, where: str) -> tuple[DataFrame, dict[str, Any]]:
    train = sessions.where(F.col("split") == "train")
    test = sessions.where(F.col("split") == "test")
    counts: dict[str, Any] = {}
    if fraction < 1.0:
        total = train.select(F.sum(F.size("item_idx") - 1)).first()[0] or 0
        keep = int(total * fraction)
        counts.update(train_pairs_before_fraction=int(total), kept_train_pairs=keep)
        if keep == 0:
            raise InputError(f"empty training split: fraction {fraction} of the {total} training pairs "
                             f"of {where} keeps none")
        log.info("fraction %s: keeping the last %d of %d training pairs (official order)", fraction, keep, total)
        train = recent_fraction_sessions(train.select("session_id", "split", "item_idx", "session_order"), keep)
    cols = ["session_id", "split", "item_idx"]
    return sessions_with_role(train.select(*cols).unionByName(test.select(*cols)), cfg.valid_share), counts


def _layout(spark: SparkSession, weighted: DataFrame, cfg: GraphConfig, where: str
            ) -> tuple[dict[str, dict[str, int]], DataFrame]:
    """Counts per split and the (role, bucket) -> offsets table that numbers the examples."""
    totals = bucket_totals(weighted, cfg.seed, cfg.max_len).collect()
    counts = {s: {"sessions": 0, "examples": 0, "truncated": 0} for s in SPLITS}
    for r in totals:
        for k in ("sessions", "examples", "truncated"):
            counts[r["role"]][k] += int(r[k])
    if counts["train"]["examples"] == 0:
        raise InputError(f"empty training split: {where} gives no training examples (valid_share="
                         f"{cfg.valid_share}); it needs training sessions of 2 or more clicks")
    rg_base = 0
    for s in SPLITS:
        counts[s]["row_groups"] = row_group_count(counts[s]["examples"], cfg)
        counts[s]["rg_base"] = rg_base
        rg_base += counts[s]["row_groups"]
        if 0 < counts[s]["examples"] < counts[s]["row_groups"]:
            log.warning("split %s has %d examples, fewer than its %d row groups: some are empty",
                        s, counts[s]["examples"], counts[s]["row_groups"])
    rows, running = [], {s: 0 for s in SPLITS}
    for r in sorted(totals, key=lambda r: (r["role"], r["bucket"])):
        c = counts[r["role"]]
        rows.append((r["role"], int(r["bucket"]), running[r["role"]], c["examples"], c["row_groups"], c["rg_base"]))
        running[r["role"]] += int(r["examples"])
    layout = spark.createDataFrame(rows, "role string, bucket int, offset long, n_examples long, "
                                         "n_row_groups long, rg_base int")
    return counts, layout


def _check_stage1_counts(counts: dict, fraction_counts: dict, stats_path: str) -> None:
    """The examples must be the prefix pairs stage 1 counted (before the fraction)."""
    stats = read_json(stats_path)
    train_pairs = fraction_counts.get("train_pairs_before_fraction",
                                      counts["train"]["examples"] + counts["valid"]["examples"])
    for key, got in (("train_pairs", train_pairs), ("test_pairs", counts["test"]["examples"])):
        if key in stats and int(stats[key]) != got:
            raise InputError(f"{stats_path} says {key}={stats[key]} but the sessions table gives {got} "
                             f"prefix pairs; rerun stage 1 for this run date")


def _hadoop_fs(spark: SparkSession, path: str):
    hpath = spark._jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark._jsc.hadoopConfiguration()), hpath


def _move_split(spark: SparkSession, written: str, target: str) -> list[str]:
    """``written`` (Spark's role=<split> folder) -> ``target``/part-NNNNN.parquet, in Spark's part
    order (= row group order)."""
    jvm = spark._jvm
    fs, src = _hadoop_fs(spark, written)
    _, dst = _hadoop_fs(spark, target)
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


def _write_shards(spark: SparkSession, weighted: DataFrame, layout: DataFrame, counts: dict, cfg: GraphConfig,
                  staging: str) -> dict[str, Any]:
    """All splits in one Spark job (one task per row group), then one folder per split."""
    n_partitions = sum(counts[s]["row_groups"] for s in SPLITS)
    groups = session_row_groups(session_offsets(weighted, layout, cfg.seed))
    rows = shard_rows(groups, n_partitions, cfg.max_len, cfg.seed)
    (rows.write.mode("overwrite").partitionBy("role").option("parquet.block.size", PARQUET_BLOCK_SIZE)
     .option("compression", "snappy").parquet(f"{staging}/_rows"))
    splits = {}
    for s in SPLITS:
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
    fs, rows_path = _hadoop_fs(spark, f"{staging}/_rows")
    fs.delete(rows_path, True)
    return splits


def build_graph(spark: SparkSession, cfg: GraphConfig) -> dict[str, Any]:
    """Run stage 2 for ``cfg.run_date``; return the manifest (also written next to the shards)."""
    from srgnn.reader import MANIFEST_NAME, content_hash

    cfg.validate_required()
    store = TableStore(cfg.output, cfg.table_format)
    where = f"table 'sessions' (run_date={cfg.run_date}) under {store.root}"
    sessions, n_items, fraction = _read_inputs(spark, cfg, store)
    log.info("read %s and item_vocab (%d items), fraction=%s", where, n_items, fraction)
    roles, fraction_counts = _roles(sessions, fraction, cfg, where)

    transitions = session_transitions(roles)
    store.write(item_graph(transitions, cfg.self_loops), "item_graph", cfg.run_date)
    graph = store.read(spark, "item_graph", cfg.run_date).select("src_idx", "dst_idx", "weight")

    weighted = sessions_with_ngc_weights(transitions, graph).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts, layout = _layout(spark, weighted, cfg, where)
        _check_stage1_counts(counts, fraction_counts, _stats_path(store, cfg.run_date))
        log.info("examples per split: %s", {s: counts[s]["examples"] for s in SPLITS})
        manifest: dict[str, Any] = {}

        def write(staging: str) -> None:
            splits = _write_shards(spark, weighted, layout, counts, cfg, staging)
            manifest.update({
                "schema_version": SCHEMA_VERSION, "run_date": cfg.run_date, "n_items": n_items,
                "max_len": cfg.max_len, "pad_side": "right", "world_size": cfg.world_size,
                "valid_share": cfg.valid_share, "fraction": fraction, "seed": cfg.seed,
                "self_loops": cfg.self_loops, "splits": splits, **fraction_counts,
                "content_hash": content_hash(local_path(staging)),
            })
            write_json_atomic(f"{staging}/{MANIFEST_NAME}", manifest)

        final = atomic_write_dir(spark, f"{store.root}/shards/run_date={cfg.run_date}", write)
        log.info("wrote shards for run_date=%s at %s (%s)", cfg.run_date, final, manifest["content_hash"])
        return manifest
    finally:
        weighted.unpersist()
