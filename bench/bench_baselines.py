"""Benchmark: time to fit (Spark, local[2]) and score (numpy/torch) each baseline on a synthetic set.

    .venv/bin/python bench/bench_baselines.py --clicks 10000000          # the recorded benchmark
    .venv/bin/python bench/bench_baselines.py --clicks 200000            # a quick check

Steps: write a synthetic yoochoose click log with bench/synth.py (seed 0; reused when present),
run stage 1 and stage 2 on it (timed, reused with --reuse), then for every baseline: fit on the
training sessions (Spark built-ins, collected to CSR arrays; each fit includes the shared
popularity pass), score every test example into [B, n_items] matrices (batch --batch-size), and
rank them with srgnn.metrics (timed apart, the same for every model). Prints one line per baseline
and the machine (nproc, CPU model, load average: figures taken on a loaded machine are not clean).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

RUN_DATE = "2014-05-01"


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"nproc={os.cpu_count()} cpu='{cpu_model()}' torch_threads={torch.get_num_threads()} "
            f"loadavg={load[0]:.1f},{load[1]:.1f},{load[2]:.1f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clicks", type=int, default=10_000_000)
    p.add_argument("--work", default=None, help="work folder (default bench/_out/baselines_<clicks>)")
    p.add_argument("--reuse", action="store_true", help="reuse stage 1/2 outputs already in the work folder")
    p.add_argument("--baselines", default="pop,spop,itemknn,sr,vsknn")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--max-test", type=int, default=0, help="score at most this many test examples (0: all)")
    args = p.parse_args(argv)

    from bench.synth import SynthConfig, write_click_log
    from pipelines.baselines import BaselineParams, fit_baselines, training_sessions
    from pipelines.evaluate.scoring import TestExamples
    from pipelines.graph import GraphConfig, build_graph
    from pipelines.sessions import SessionsConfig, build_sessions
    from pipelines.spark import get_spark
    from pipelines.tables import TableStore
    from srgnn.metrics import MetricAccumulator
    from srgnn.reader import load_manifest, read_split

    root = Path(__file__).resolve().parents[1]
    work = Path(args.work or root / "bench" / "_out" / f"baselines_{args.clicks}")
    work.mkdir(parents=True, exist_ok=True)
    data = root / "bench" / "_data" / f"yc_{args.clicks}.dat"
    out = str(work / "out")
    print(f"machine: {machine()}", flush=True)
    if not data.exists():
        t = time.perf_counter()
        write_click_log(data, "yoochoose", SynthConfig(n_clicks=args.clicks, seed=0))
        print(f"synthetic clicks: {data} ({time.perf_counter() - t:.1f}s)", flush=True)

    spark = get_spark("bench-baselines", master=args.master)
    store = TableStore(out)
    stages = {}
    if not (args.reuse and store.exists(spark, "sessions", RUN_DATE)
            and (work / "out" / "shards" / f"run_date={RUN_DATE}" / "_manifest.json").exists()):
        t = time.perf_counter()
        build_sessions(spark, SessionsConfig(input=str(data), format="yoochoose", output=out, run_date=RUN_DATE))
        stages["stage1_s"] = time.perf_counter() - t
        t = time.perf_counter()
        build_graph(spark, GraphConfig(output=out, run_date=RUN_DATE))
        stages["stage2_s"] = time.perf_counter() - t
        print(f"stages 1+2: {stages}", flush=True)

    manifest = load_manifest(out, RUN_DATE)
    n_items = int(manifest["n_items"])
    shards = f"{out}/shards/run_date={RUN_DATE}"
    te = read_split(shards, "test", columns=("items", "length", "target", "ngc_w"))
    n_test = len(te["target"]) if not args.max_test else min(args.max_test, len(te["target"]))
    examples = TestExamples(te["items"][:n_test].astype(np.int64), te["length"][:n_test].astype(np.int64),
                            te["target"][:n_test].astype(np.int64), te["ngc_w"][:n_test])
    print(f"n_items={n_items} train_examples={manifest['splits']['train']['examples']} "
          f"test_examples_scored={n_test}", flush=True)

    sessions = store.read(spark, "sessions", RUN_DATE)
    train = training_sessions(sessions, spark.read.parquet(f"{shards}/train").select("session_id"))
    graph = store.read(spark, "item_graph", RUN_DATE)
    t = time.perf_counter()   # warm-up (JVM, first scan) so the first baseline does not pay for it
    warm = (train.count(), graph.count())
    print(f"warm-up: {warm[0]} training sessions, {warm[1]} graph edges ({time.perf_counter() - t:.1f}s)", flush=True)
    results = {"clicks": args.clicks, "n_items": n_items, "test_examples": n_test, "machine": machine(), **stages,
               "baselines": {}}
    for name in args.baselines.split(","):
        # fit each baseline on its own so its time is its own (the popularity pass is included in each)
        t = time.perf_counter()
        fitted = fit_baselines(train, graph, n_items, BaselineParams(), names=[name])
        fit_s = time.perf_counter() - t
        scorer = fitted.scorers[name]
        acc = MetricAccumulator(n_items, (10, 20))
        score_s = metric_s = 0.0
        for batch in examples.batches(args.batch_size):
            t = time.perf_counter()
            scores = scorer.score(batch.items, batch.lengths)
            t2 = time.perf_counter()
            acc.update(scores, batch.targets, batch.lengths)
            score_s += t2 - t
            metric_s += time.perf_counter() - t2
        m = acc.finalize()
        row = {"fit_s": round(fit_s, 2), "score_s": round(score_s, 2), "metrics_s": round(metric_s, 2),
               "test_examples_per_s": round(n_test / max(score_s, 1e-9)), "hr@20": round(m["hr@20"], 4),
               "mrr@20": round(m["mrr@20"], 4), **{k: v for k, v in fitted.stats.items() if k not in
                                                     ("train_sessions", "train_clicks", "items_with_clicks")}}
        results["baselines"][name] = row
        print(f"{name:8s} fit {fit_s:7.1f}s  score {score_s:7.1f}s ({row['test_examples_per_s']:,} ex/s)  "
              f"metrics {metric_s:6.1f}s  HR@20 {100 * m['hr@20']:.2f}  MRR@20 {100 * m['mrr@20']:.2f}", flush=True)
    results["peak_rss_gb_driver_python"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    results["machine_after"] = machine()
    print(json.dumps(results, indent=2), flush=True)
    return results


if __name__ == "__main__":
    main()
