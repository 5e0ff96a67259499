"""Benchmark stage 4: score N synthetic sessions with a random-weight model over M items in Spark.

    .venv/bin/python bench/bench_recommend.py                       # 100,000 sessions, 40,000 items, local[2]
    .venv/bin/python bench/bench_recommend.py --sessions 5000 --items 2000   # a quick check

Writes a synthetic OUT (item_vocab, sessions of split 'test', a model with random weights, d = 100)
under --workdir, runs ``pipelines.recommend.recommend`` once to warm up (JVM, Python workers,
model cache) and then --repeats timed runs, and prints the machine, the figures and a last line
``sessions_per_s=<x>`` (best timed run, whole stage: read, vocabulary join, scoring, write).
Also prints the in-process scorer alone (no Spark) on the same sessions for comparison.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model  # noqa: E402

import numpy as np  # noqa: E402

RUN_DATE = "2024-01-01"


def write_inputs(out: str, n_sessions: int, n_items: int, hidden: int, seed: int) -> dict:
    """Synthetic item_vocab + sessions (Zipf-like popularity, 1-15 clicks) and a random model."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from srgnn.export import save_model
    from srgnn.model import SRGNN, ModelConfig

    rng = np.random.default_rng(seed)
    idx = np.arange(1, n_items + 1, dtype=np.int32)
    ids = np.array([f"item{j}" for j in idx], dtype=object)
    support = (1e6 / idx).astype(np.int64) + 1
    vocab_dir = Path(out, "item_vocab", f"run_date={RUN_DATE}")
    vocab_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": ids, "item_idx": idx, "support": support}), vocab_dir / "part-0.parquet")

    lengths = np.clip(rng.lognormal(1.2, 0.6, n_sessions).astype(np.int64), 1, 15)
    p = 1.0 / idx
    clicks = rng.choice(idx, size=int(lengths.sum()), p=p / p.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    item_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[clicks - 1], type=pa.string()))
    sess_dir = Path(out, "sessions", f"run_date={RUN_DATE}")
    sess_dir.mkdir(parents=True, exist_ok=True)
    table = pa.table({"session_id": pa.array([f"s{i}" for i in range(n_sessions)]),
                      "split": pa.array(["test"] * n_sessions), "item_ids": item_ids})
    pq.write_table(table, sess_dir / "part-0.parquet", row_group_size=20_000)

    torch.manual_seed(seed)
    model = SRGNN(ModelConfig(n_items=n_items, hidden_size=hidden, max_len=50))
    save_model(f"{out}/models/run_date={RUN_DATE}", model, {"manifest_hash": "synthetic"})
    return {"lengths": lengths, "clicks": clicks, "offsets": offsets, "model": model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=40_000)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per Python worker (0 = auto)")
    ap.add_argument("--partitions", type=int, default=0, help="scoring partitions (0 = default parallelism)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default="", help="where to write the synthetic OUT (default: a temp dir)")
    ap.add_argument("--skip-direct", action="store_true", help="do not time the in-process scorer")
    args = ap.parse_args()

    import torch

    from pipelines.recommend import RecommendConfig, recommend
    from pipelines.spark import get_spark

    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"machine: nproc={nproc} cpu='{cpu_model()}' torch={torch.__version__} "
          f"loadavg(1m)={load[0]:.2f} master={args.master}", flush=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_recommend_")
    t = time.time()
    data = write_inputs(workdir, args.sessions, args.items, args.hidden, seed=0)
    print(f"inputs: {args.sessions:,} sessions ({int(data['lengths'].sum()):,} clicks), "
          f"{args.items:,} items, d={args.hidden}, written to {workdir} in {time.time() - t:.1f}s", flush=True)

    spark = get_spark("bench-recommend", master=args.master, shuffle_partitions=2 * int(nproc or 2))
    cfg = RecommendConfig(output=workdir, run_date=RUN_DATE, k=args.k, batch_size=args.batch_size,
                          torch_threads=args.threads, partitions=args.partitions)
    runs = []
    for r in range(args.repeats + 1):
        t = time.time()
        stats = recommend(spark, cfg)
        secs = time.time() - t
        label = "warm-up" if r == 0 else f"run {r}"
        print(f"{label}: {secs:.2f}s for {stats['sessions']:,} sessions -> {stats['rows_written']:,} rows "
              f"= {stats['sessions'] / secs:,.0f} sessions/s", flush=True)
        if r > 0:
            runs.append(secs)
    spark.stop()

    if not args.skip_direct:
        # The same scoring without Spark: one process, all cores, for comparison.
        from srgnn.data import pad_prefixes
        from srgnn.memory import keep_freed_memory
        from srgnn.scoring import score_arrays

        keep_freed_memory()  # as srgnn.scoring.cached_model does in the Spark workers

        clicks, off = data["clicks"], data["offsets"]
        prefixes = [clicks[off[i]:off[i + 1]] for i in range(args.sessions)]
        items, lengths = pad_prefixes(prefixes, 50)
        torch.set_num_threads(int(nproc or 1))
        t = time.time()
        score_arrays(data["model"].eval(), items, lengths, args.k, batch_size=args.batch_size)
        secs = time.time() - t
        print(f"scorer alone (no Spark, {torch.get_num_threads()} threads): {secs:.2f}s = "
              f"{args.sessions / secs:,.0f} sessions/s", flush=True)
    best = min(runs) if runs else float("nan")
    print(f"sessions_per_s={args.sessions / best:.0f}")


if __name__ == "__main__":
    main()
