"""Petastorm batch-reader throughput over stage 2's shards, in one process: examples/s.

    .venv/bin/python bench/read_throughput.py --output bench/_data/stage2/out_10000000 --run-date 2024-01-01

Reads one split (default train) once per configuration through ``srgnn.reader.iter_batches``
(petastorm.make_batch_reader, re-chunked to --batch-size, torch tensors out) and prints examples/s
for each reader pool / worker count, with list columns converted two ways: ``fast`` (Arrow
buffers reshaped to [rows, L], what iter_batches does by default) and ``petastorm`` (Petastorm's
own per-row ``np.vstack``). Also prints pyarrow alone (read + the same conversion, no Petastorm)
as a ceiling. Prints the machine first.

Without --output it first writes a small synthetic shard folder (--rows examples) so the script
can be checked anywhere in seconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_stage2 import machine  # noqa: E402
from srgnn import reader  # noqa: E402


def synthetic_shards(folder: str, rows: int, row_groups: int, max_len: int = 50, seed: int = 0) -> str:
    """A shard folder in stage 2's layout (schema, one row group per file, manifest) from numpy."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    os.makedirs(f"{folder}/train", exist_ok=True)
    sizes = [rows // row_groups + (i < rows % row_groups) for i in range(row_groups)]
    for i, n in enumerate(sizes):
        length = np.minimum(rng.geometric(0.25, n), max_len).astype(np.int32)
        mask = np.arange(max_len)[None, :] < length[:, None]
        items = np.where(mask, rng.integers(1, 40_000, (n, max_len)), 0).astype(np.int32)
        ngc = np.where(mask & (np.arange(max_len)[None, :] > 0), rng.random((n, max_len)), 0).astype(np.float32)
        table = pa.table({
            "items": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * max_len), items.ravel()),
            "length": length, "target": rng.integers(1, 40_000, n).astype(np.int32),
            "ngc_w": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * max_len), ngc.ravel()),
            "session_id": pa.array([f"s{j}" for j in range(n)])})
        pq.write_table(table, f"{folder}/train/part-{i:05d}.parquet", row_group_size=n)
    manifest = {"schema_version": reader.SCHEMA_VERSION, "max_len": max_len, "splits": {
        "train": {"examples": rows, "row_groups": row_groups, "row_group_rows": sizes, "truncated": 0}}}
    manifest["content_hash"] = reader.content_hash(folder)
    with open(f"{folder}/{reader.MANIFEST_NAME}", "w") as fh:
        json.dump(manifest, fh)
    return folder


def time_reader(folder: str, split: str, batch_size: int, **kw) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    for batch in reader.iter_batches(folder, split, batch_size, **kw):
        n += len(batch)
    return n, time.perf_counter() - start


def time_pyarrow(folder: str, split: str, width: int) -> tuple[int, float]:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    n = 0
    for rel in reader.shard_files(folder):
        if rel.startswith(split + "/"):
            table = pq.read_table(os.path.join(folder, rel), columns=list(reader.COLUMNS))
            items = reader._list_column(table.column("items"), width, np.int64)
            reader._list_column(table.column("ngc_w"), width, np.float32)
            n += len(items)
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", help="OUT of a stage-2 run (default: small synthetic shards)")
    ap.add_argument("--run-date", default="2024-01-01")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rows", type=int, default=400_000, help="synthetic examples when --output is not given")
    ap.add_argument("--row-groups", type=int, default=8)
    args = ap.parse_args(argv)

    print(f"machine: {machine()}", flush=True)
    if args.output:
        folder = reader.shards_dir(args.output, args.run_date)
    else:
        folder = synthetic_shards(tempfile.mkdtemp(prefix="shards-"), args.rows, args.row_groups)
        print(f"synthetic shards: {args.rows:,} examples in {args.row_groups} row groups at {folder}")
    manifest = reader.load_manifest_at(folder)
    info = manifest["splits"][args.split]
    print(f"split {args.split}: {info['examples']:,} examples, {info['row_groups']} row groups, "
          f"L={manifest['max_len']}, batch size {args.batch_size}", flush=True)
    time_pyarrow(folder, args.split, manifest["max_len"])  # warm the page cache
    n, dt = time_pyarrow(folder, args.split, manifest["max_len"])
    print(f"pyarrow alone (read + fast conversion, no Petastorm): {n / dt:12,.0f} examples/s", flush=True)
    for lists in ("fast", "petastorm"):
        configs = [("dummy", 1)] + [("thread", w) for w in args.workers]
        for pool, workers in configs:
            n, dt = time_reader(folder, args.split, args.batch_size, reader_pool_type=pool, workers_count=workers,
                                fast_lists=lists == "fast")
            assert n == info["examples"], (n, info["examples"])
            print(f"iter_batches lists={lists:9s} pool={pool:6s} workers={workers}: {n / dt:12,.0f} examples/s "
                  f"({n:,} in {dt:.2f} s)", flush=True)
    print(f"machine: {machine()}  (load average again, after the runs)")


if __name__ == "__main__":
    main()
