"""Benchmark stage 4: score N synthetic sessions with a random-weight model over M items in Spark.

    .venv/bin/python bench/bench_recommend.py                       # 100,000 sessions, 40,000 items, local[2]
    .venv/bin/python bench/bench_recommend.py --sessions 5000 --items 2000   # a quick check
    .venv/bin/python bench/bench_recommend.py --model-name srgnn,vsknn --sessions 20000 --repeats 1

Writes a synthetic OUT (item_vocab, sessions of split 'test', a model with random weights, d = 100)
under --workdir, runs ``pipelines.recommend.recommend`` once to warm up (JVM, Python workers,
model cache) and then --repeats timed runs, and prints the machine, the figures and a last line
``sessions_per_s=<x>`` (best timed run, whole stage: read, vocabulary join, scoring, write).
Also prints the in-process scorer alone (no Spark) on the same sessions for comparison.

``--model-name`` (comma-separated: srgnn and the baselines pop, spop, itemknn, sr, vsknn) runs the
stage once per model, back to back (``--model-name`` of stage 4). The OUT also holds
``--train-sessions`` synthetic training sessions (split 'train', same popularity), a train shard of
their ids, a manifest and an item_graph of their transitions, which the baselines are fitted on
inside the stage; their rate is printed with the fit (``fit_s``) and without it (``scoring``), and
``ratio`` is the baseline's scoring rate over SR-GNN's. Each model prints ``sessions_per_s[NAME]=``.
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


def write_training_data(out: str, rng, ids, idx, n_items: int, n_train: int, max_len: int) -> None:
    """What the baselines are fitted on: training sessions (split 'train', the same popularity),
    the train shard's session ids, the shards' manifest and the item graph of their transitions."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = np.clip(rng.lognormal(1.2, 0.6, n_train).astype(np.int64), 2, 15)
    p = 1.0 / idx
    clicks = rng.choice(idx, size=int(lengths.sum()), p=p / p.sum()).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    sids = pa.array([f"t{i}" for i in range(n_train)])
    table = pa.table({"session_id": sids, "split": pa.array(["train"] * n_train),
                      "item_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[clicks - 1], type=pa.string())),
                      "item_idx": pa.ListArray.from_arrays(pa.array(offsets), pa.array(clicks, type=pa.int32())),
                      "session_order": pa.array(np.arange(n_train, dtype=np.int64))})
    pq.write_table(table, Path(out, "sessions", f"run_date={RUN_DATE}", "part-1.parquet"), row_group_size=20_000)
    shards = Path(out, "shards", f"run_date={RUN_DATE}")
    (shards / "train").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"session_id": sids}), shards / "train" / "part-0.parquet")
    (shards / "_manifest.json").write_text(json.dumps({"n_items": n_items, "max_len": max_len}))
    first = np.ones(len(clicks), dtype=bool)
    first[offsets[:-1]] = False                       # a transition ends at every click but a session's first
    src, dst = clicks[np.flatnonzero(first) - 1].astype(np.int64), clicks[first].astype(np.int64)
    pairs, count = np.unique(src * (n_items + 1) + dst, return_counts=True)
    g_src, g_dst = (pairs // (n_items + 1)).astype(np.int32), (pairs % (n_items + 1)).astype(np.int32)
    out_deg = np.bincount(g_src, weights=count, minlength=n_items + 1)
    in_deg = np.bincount(g_dst, weights=count, minlength=n_items + 1)
    graph_dir = Path(out, "item_graph", f"run_date={RUN_DATE}")
    graph_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"src_idx": g_src, "dst_idx": g_dst, "count": count.astype(np.int64),
                             "weight": count / out_deg[g_src], "in_weight": count / in_deg[g_dst]}),
                   graph_dir / "part-0.parquet")


def write_inputs(out: str, n_sessions: int, n_items: int, hidden: int, seed: int, n_train: int = 0) -> dict:
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
    item_idx = pa.ListArray.from_arrays(pa.array(offsets), pa.array(clicks.astype(np.int32), type=pa.int32()))
    sess_dir = Path(out, "sessions", f"run_date={RUN_DATE}")
    sess_dir.mkdir(parents=True, exist_ok=True)
    table = pa.table({"session_id": pa.array([f"s{i}" for i in range(n_sessions)]),
                      "split": pa.array(["test"] * n_sessions), "item_ids": item_ids, "item_idx": item_idx,
                      "session_order": pa.array(np.arange(n_train, n_train + n_sessions, dtype=np.int64))})
    pq.write_table(table, sess_dir / "part-0.parquet", row_group_size=20_000)
    write_training_data(out, rng, ids, idx, n_items, n_train, max_len=50)

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
    ap.add_argument("--model-name", default="srgnn",
                    help="comma-separated models to run back to back: srgnn and/or pop, spop, itemknn, sr, vsknn")
    ap.add_argument("--train-sessions", type=int, default=0,
                    help="synthetic training sessions for the baselines (0 = as many as --sessions)")
    args = ap.parse_args()
    names = [n.strip() for n in args.model_name.split(",") if n.strip()]

    import torch

    from pipelines.recommend import RecommendConfig, recommend
    from pipelines.spark import get_spark

    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"machine: nproc={nproc} cpu='{cpu_model()}' torch={torch.__version__} "
          f"loadavg(1m)={load[0]:.2f} master={args.master}", flush=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_recommend_")
    t = time.time()
    data = write_inputs(workdir, args.sessions, args.items, args.hidden, seed=0,
                        n_train=args.train_sessions or args.sessions)
    print(f"inputs: {args.sessions:,} sessions ({int(data['lengths'].sum()):,} clicks), "
          f"{args.items:,} items, d={args.hidden}, written to {workdir} in {time.time() - t:.1f}s", flush=True)

    spark = get_spark("bench-recommend", master=args.master, shuffle_partitions=2 * int(nproc or 2))
    rates: dict[str, float] = {}
    for name in names:
        cfg = RecommendConfig(output=workdir, run_date=RUN_DATE, k=args.k, batch_size=args.batch_size,
                              torch_threads=args.threads, partitions=args.partitions, model_name=name,
                              check_manifest=False)   # the synthetic manifest describes no real shards
        runs, scoring = [], []
        for r in range(args.repeats + 1):
            t = time.time()
            stats = recommend(spark, cfg)
            secs = time.time() - t
            fit_s = float(stats.get("baseline_fit", {}).get("fit_seconds", 0.0))
            label = "warm-up" if r == 0 else f"run {r}"
            fit = f", fit_s={fit_s:.2f} -> scoring {stats['sessions'] / (secs - fit_s):,.0f} sessions/s" if fit_s else ""
            print(f"{name} {label}: {secs:.2f}s for {stats['sessions']:,} sessions -> {stats['rows_written']:,} rows "
                  f"= {stats['sessions'] / secs:,.0f} sessions/s{fit}", flush=True)
            if r > 0:
                runs.append(secs)
                scoring.append(secs - fit_s)
        best = min(runs) if runs else float("nan")
        rates[name] = args.sessions / min(scoring) if scoring else float("nan")
        print(f"sessions_per_s[{name}]={args.sessions / best:.0f}", flush=True)
    if "srgnn" in rates:
        for name, rate in rates.items():
            if name != "srgnn":
                print(f"ratio[{name}/srgnn] (scoring, fit excluded) = {rate / rates['srgnn']:.2f}", flush=True)
    spark.stop()

    if not args.skip_direct and "srgnn" in names:
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
    if "srgnn" in rates:
        print(f"sessions_per_s={rates['srgnn']:.0f}")


if __name__ == "__main__":
    main()
