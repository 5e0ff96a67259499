"""Stage 2's transforms: stage 1's sessions -> roles, the item graph, NGC weights, padded shard rows.

Pure ``DataFrame -> DataFrame`` functions with built-in functions (the steps are listed in
:mod:`pipelines.graph`).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from srgnn.core import contracts as C

VALID_HASH_BUCKETS = 1_000_000  # valid_share resolution: 1e-6
OFFSET_BUCKETS = 64             # parallel running sums for the example numbering
SHARD_COLUMNS = (*C.SHARD_COLUMNS, "session_id")


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
