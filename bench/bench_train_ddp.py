"""Stage 3 benchmarks: the training job's speed (pairs/s) and where the time goes.

Synthetic shards in stage 2's contract schema are generated without Spark (``make_shards``:
bench/synth.py's Markov click log -> sessions -> every prefix -> global-graph NGC weights ->
Parquet, one row group per file, a multiple of ``--world-size`` row groups, manifest + hash), so
the same script runs on a GPU box that has no Java.

Modes:

``cpu`` (default)::

    python bench/bench_train_ddp.py --pairs 200000 --items 1000
    ->  input pipeline alone (Petastorm -> Batch tensors, one process) pairs/s
        model step alone (in-memory batches, forward + backward + Adam, the job's train_epoch) pairs/s
        the job, 1 process (all cores) vs 2 gloo processes (1 thread each), one epoch, pairs/s
    last line: ddp1_pairs_per_s=<x> ddp2_pairs_per_s=<y> input_pairs_per_s=<z> step_pairs_per_s=<w>

``gpu`` (bench/gpu.sh calls it; ``--device cpu`` for a dry run)::

    python bench/bench_train_ddp.py --mode gpu --device cuda --pairs 719000 --items 43000
    ->  the captured step (--cuda-graphs) against the same step run eagerly (losses, parameters);
        one full epoch of the job's step loop on device-resident batches with the whole step as
        one CUDA graph, per variant (srgnn fp32; srgnn, ngc, fc bf16); the eager step loop
        (--eager-batches); the whole job (Petastorm -> GPU, one epoch + evaluation) with and
        without graphs if Petastorm imports; torch.compile (inside the graph, and reduce-overhead).
        --budget-s stops starting measurements once spent (a device lease is short).

Every figure is measured in the run that prints it; the machine (nproc, CPU model, GPU) is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN_DATE = "2024-01-01"


# =============================================================================================
# Synthetic shards (stage 2's schema, no Spark)
# =============================================================================================
def _examples(clicks: np.ndarray, first: np.ndarray, lens: np.ndarray, max_len: int):
    """Every (prefix, next item) of the sessions: starts/lengths of the last <= L clicks, targets."""
    pairs_per = np.maximum(lens - 1, 0)
    sess = np.repeat(np.arange(len(lens)), pairs_per)
    start_of = np.concatenate([[0], np.cumsum(pairs_per)[:-1]])
    p = np.arange(len(sess)) - start_of[sess] + 1               # prefix length 1..len-1
    length = np.minimum(p, max_len)
    start = first[sess] + p - length
    target = clicks[first[sess] + p]
    return start, length, target, sess


def _fill(clicks: np.ndarray, start: np.ndarray, length: np.ndarray, max_len: int) -> np.ndarray:
    j = np.arange(max_len)
    idx = np.minimum(start[:, None] + j, len(clicks) - 1)
    return np.where(j < length[:, None], clicks[idx], 0).astype(np.int32)


def _ngc_weights(items: np.ndarray, keys: np.ndarray, weights: np.ndarray, n1: int) -> np.ndarray:
    src, dst = items[:, :-1].astype(np.int64), items[:, 1:].astype(np.int64)
    key = src * n1 + dst
    pos = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
    w = np.where((keys[pos] == key) & (dst > 0), weights[pos], 0.0).astype(np.float32)
    return np.concatenate([np.zeros((len(items), 1), np.float32), w], axis=1)


def _write_split(folder: Path, arrays: dict, rows_per_group: int, world_size: int, max_len: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n = len(arrays["target"])
    groups = max(1, math.ceil(n / rows_per_group))
    groups = world_size * math.ceil(groups / world_size)
    bounds = np.linspace(0, n, groups + 1).astype(np.int64)
    sizes = []
    for g in range(groups):
        a, b = int(bounds[g]), int(bounds[g + 1])
        k = b - a
        offsets = pa.array(np.arange(k + 1, dtype=np.int32) * max_len)
        table = pa.table({
            "items": pa.ListArray.from_arrays(offsets, pa.array(arrays["items"][a:b].reshape(-1), pa.int32())),
            "length": pa.array(arrays["length"][a:b], pa.int32()),
            "target": pa.array(arrays["target"][a:b], pa.int32()),
            "ngc_w": pa.ListArray.from_arrays(offsets, pa.array(arrays["ngc_w"][a:b].reshape(-1), pa.float32())),
            "session_id": pa.array(arrays["session_id"][a:b].astype(str)),
        })
        pq.write_table(table, folder / f"part-{g:05d}.parquet", row_group_size=max(k, 1))
        sizes.append(k)
    return {"examples": n, "row_groups": groups, "truncated": int((arrays["length"] == max_len).sum()),
            "row_group_rows": sizes}


def make_shards(out: str | Path, n_pairs: int, n_items: int, max_len: int = 50, seed: int = 0,
                world_size: int = 8, valid_pairs: int | None = None, test_pairs: int | None = None,
                rows_per_group: int = 50_000, run_date: str = RUN_DATE) -> dict:
    """Write OUT/shards/run_date=D/{train,valid,test} + _manifest.json; returns the manifest."""
    from bench.synth import SynthConfig, generate_clicks
    from srgnn import reader

    folder = Path(out) / "shards" / f"run_date={run_date}"
    manifest_path = folder / "_manifest.json"
    valid_pairs = valid_pairs if valid_pairs is not None else max(1000, n_pairs // 20)
    test_pairs = test_pairs if test_pairs is not None else max(1000, n_pairs // 12)
    want = {"n_pairs": n_pairs, "n_items": n_items, "max_len": max_len, "seed": seed, "world_size": world_size,
            "valid_pairs": valid_pairs, "test_pairs": test_pairs}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("bench") == want:
            return manifest
    t0 = time.perf_counter()
    total = n_pairs + valid_pairs + test_pairs
    n_clicks = int(total * 1.5)
    while True:
        c = generate_clicks(SynthConfig(n_clicks=n_clicks, seed=seed, n_items=n_items))
        clicks = (c["item_rank"] + 1).astype(np.int64)
        sid = c["session_id"]
        first = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        lens = np.diff(np.r_[first, len(sid)])
        if int(np.maximum(lens - 1, 0).sum()) >= total:
            break
        n_clicks *= 2
    start, length, target, sess = _examples(clicks, first, lens, max_len)
    # sessions in order: the first ones give exactly n_pairs training pairs (the last of them cut
    # short), the next whole sessions about valid_pairs, then test
    cut_train = n_pairs
    valid_start = int(np.searchsorted(sess, sess[cut_train - 1], side="right"))
    cut_valid = int(np.searchsorted(sess, sess[min(valid_start + valid_pairs, len(sess) - 1)]))
    cut_test = min(cut_valid + test_pairs, len(sess))
    parts = {"train": slice(0, cut_train), "valid": slice(valid_start, cut_valid),
             "test": slice(cut_valid, cut_test)}
    # global graph of the training sessions' clicks: weight = count(src -> dst) / out-count(src)
    train_sessions = np.unique(sess[:cut_train])
    in_train = np.zeros(len(lens), bool)
    in_train[train_sessions] = True
    click_sess = np.repeat(np.arange(len(lens)), lens)
    nxt = np.r_[click_sess[1:] == click_sess[:-1], False] & in_train[click_sess]
    n1 = n_items + 1
    keys_all = clicks[:-1][nxt[:-1]] * n1 + clicks[1:][nxt[:-1]]
    keys, counts = np.unique(keys_all, return_counts=True)
    out_count = np.bincount(keys // n1, weights=counts, minlength=n1)
    weights = counts / out_count[keys // n1]
    rng = np.random.default_rng(seed + 1)
    splits = {}
    for name, sl in parts.items():
        order = rng.permutation(np.arange(sl.start, sl.stop))    # rows shuffled once, as stage 2 does
        items = np.empty((len(order), max_len), np.int32)
        ngc = np.empty((len(order), max_len), np.float32)
        for a in range(0, len(order), 100_000):                  # chunks bound the index matrices
            o = order[a:a + 100_000]
            items[a:a + len(o)] = _fill(clicks, start[o], length[o], max_len)
            ngc[a:a + len(o)] = _ngc_weights(items[a:a + len(o)], keys, weights, n1)
        arrays = {"items": items, "length": length[order].astype(np.int32),
                  "target": target[order].astype(np.int32), "ngc_w": ngc, "session_id": sid[first[sess[order]]]}
        splits[name] = _write_split(folder / name, arrays, rows_per_group, world_size, max_len)
    manifest = {"schema_version": 1, "run_date": run_date, "n_items": n_items, "max_len": max_len,
                "pad_side": "right", "world_size": world_size, "valid_share": 0.0, "fraction": 1.0,
                "splits": splits, "bench": want}
    manifest["content_hash"] = reader.content_hash(str(folder))
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"shards: {splits['train']['examples']:,} train / {splits['valid']['examples']:,} valid / "
          f"{splits['test']['examples']:,} test pairs, {n_items:,} items, written in "
          f"{time.perf_counter() - t0:.1f}s to {folder}", flush=True)
    return manifest


# =============================================================================================
# Measurements
# =============================================================================================
def machine() -> str:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: nproc={os.cpu_count()}, CPU {cpu}{gpu}, torch {torch.__version__}, "
            f"python {platform.python_version()}, load average {load:.2f}")


def input_pipeline(shards: Path, batch_size: int, device: str, workers: int) -> tuple[float, int]:
    """Petastorm -> Batch tensors on ``device``, one process: (pairs/s, pairs)."""
    import torch
    from srgnn import reader

    n, t0 = 0, time.perf_counter()
    for batch in reader.iter_batches(str(shards), "train", batch_size, seed=0, epoch=1, workers_count=workers):
        batch = batch.to(device, non_blocking=True)
        n += len(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), n


def load_batches(shards: Path, batch_size: int, limit: int | None = None) -> list:
    from srgnn import reader
    out = []
    for batch in reader.iter_batches(str(shards), "train", batch_size, seed=0, epoch=1, workers_count=1):
        out.append(batch)
        if limit and len(out) >= limit:
            break
    return out


def batches_in_memory(shards: Path, batch_size: int, limit: int | None = None) -> list:
    """The training split as Batches without Petastorm (pyarrow only; for boxes without it)."""
    import torch
    from srgnn import reader
    from srgnn.data import Batch

    data = reader.read_split(str(shards), "train", columns=("items", "length", "target", "ngc_w"))
    n = len(data["target"]) if not limit else min(len(data["target"]), limit * batch_size)
    return [Batch(items=torch.from_numpy(data["items"][a:a + batch_size].astype(np.int64)),
                  lengths=torch.from_numpy(data["length"][a:a + batch_size].astype(np.int64)),
                  targets=torch.from_numpy(data["target"][a:a + batch_size].astype(np.int64)),
                  ngc_w=torch.from_numpy(data["ngc_w"][a:a + batch_size].astype(np.float32)))
            for a in range(0, n, batch_size)]


def step_rate(batches: list, n_items: int, max_len: int, hidden: int, device: str, variant: str = "srgnn",
              bf16: bool = False, compile_: bool = False, warmup: int = 5, graphs: bool = False,
              static: bool = False, compile_mode: str = "default", kernel: str = "auto") -> tuple[float, float, int]:
    """The job's train_epoch over device-resident batches: (pairs/s, seconds, pairs).

    ``graphs``: the whole step captured as one CUDA graph (srgnn.cuda_graphs, the job's
    --cuda-graphs); ``compile_``: torch.compile of the model (static shapes), also under ``graphs``
    (the compiled kernels are then captured with the rest of the step)."""
    import torch
    from srgnn import cuda_graphs
    from srgnn.memory import keep_freed_memory
    from srgnn.optim import make_optimizer
    from srgnn.train import TrainState, TrainStep, train_epoch
    from pipelines.train.config import TrainJobConfig
    from pipelines.train.job import build_model

    keep_freed_memory()  # as the job does
    cfg = TrainJobConfig(output="/unused", run_date=RUN_DATE, variant=variant, hidden_size=hidden,
                         batch_size=len(batches[0]), static_shapes=compile_ or static, bf16=bf16,
                         cuda_graphs=graphs, kernel=kernel)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg, n_items, max_len).to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and dev.type == "cuda" else None
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.l2, dev, capturable=graphs)
    graphed = None
    if graphs:   # the compiled model's kernels are captured with the rest of the step
        captured = torch.compile(model, mode=compile_mode, dynamic=False) if compile_ else model
        graphed = cuda_graphs.GraphedTrainStep(captured, optimizer, cfg.batch_size, max_len, variant, dev,
                                               torch.bfloat16 if autocast is not None else None)
    step = TrainStep(model, optimizer, kernel=kernel, autocast=autocast, compile=compile_ and not graphs,
                     compile_mode=compile_mode, graphed=graphed)
    on_dev = [b.to(dev) for b in batches]
    sched = [len(b) for b in on_dev]

    def run(bs, sc):
        return train_epoch(step, iter(bs), TrainState(), schedule=sc, my_examples=sum(sc),
                           local_batch=cfg.batch_size)

    run(on_dev[:warmup], sched[:warmup])  # warm-up (and compilation / capture)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(on_dev, sched)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return sum(sched) / seconds, seconds, sum(sched)


def graph_parity(batches: list, n_items: int, max_len: int, hidden: int, device: str, steps: int = 30) -> str:
    """The captured step against the same fixed-buffer step run eagerly, same start: losses and
    parameters after ``steps`` steps (fp32; CUDA's index_add_ atomics differ in the last bits)."""
    import torch
    from srgnn import cuda_graphs
    from pipelines.train.config import TrainJobConfig
    from pipelines.train.job import build_model

    cfg = TrainJobConfig(output="/unused", run_date=RUN_DATE, hidden_size=hidden, batch_size=len(batches[0]),
                         cuda_graphs=True)
    dev = torch.device(device)
    runs = []
    for use_graph in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, n_items, max_len).to(dev)
        opt = cuda_graphs.make_optimizer(model.parameters(), 1e-3, 1e-5, dev)
        step = cuda_graphs.GraphedTrainStep(model, opt, cfg.batch_size, max_len, "srgnn", dev, use_graph=use_graph)
        losses = [float(step.step(b, 1.0 / len(b))) / len(b) for b in batches[:steps]]
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    (la, pa), (lb, pb) = runs
    dl = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb))
    dp = max(float((x - y).abs().max()) for x, y in zip(pa, pb))
    return f"steps={len(la)} max_rel_loss_diff={dl:.2e} max_abs_param_diff={dp:.2e} first_loss={la[0]:.4f} last_loss={la[-1]:.4f}"


def job_epoch(out: Path, nprocs: int, hidden: int, batch_size: int, device: str, threads: int,
              variant: str = "srgnn", bf16: bool = False, workers: int = 1, graphs: bool = False,
              kernel: str = "auto") -> dict:
    """One epoch of the real job (train_job / launch_local); its own pairs/s and timings."""
    from pipelines.train.launch import TrainJobConfig, launch_local, train_job

    cfg = TrainJobConfig(output=str(out), run_date=RUN_DATE, epochs=1, hidden_size=hidden, batch_size=batch_size,
                         device=device, num_threads=threads, progress=False, mlflow_tracking_uri="none",
                         variant=variant, bf16=bf16, verify_manifest=False, reader_workers=workers,
                         deterministic=device == "cpu", eval_batch_size=500, cuda_graphs=graphs, kernel=kernel)
    result = train_job(cfg) if nprocs == 1 else launch_local(cfg, nprocs)
    h = result["history"][0]
    return {"pairs_per_s": h["pairs_per_s"], "train_seconds": h["train_seconds"], "eval_seconds": h["eval_seconds"],
            "examples": h["train_examples"], "valid_hr@20": h["valid"].get("hr@20")}


# =============================================================================================
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--device", default=None, help="cpu | cuda (gpu mode; default cuda if available)")
    p.add_argument("--pairs", type=int, default=200_000, help="training pairs")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--procs", default="1,2", help="cpu mode: process counts for the job")
    p.add_argument("--step-batches", type=int, default=0,
                   help="batches for the step-rate test (0: cpu mode 300, gpu mode the whole epoch)")
    p.add_argument("--variants", default="srgnn,ngc,fc", help="gpu mode")
    p.add_argument("--no-compile", action="store_true", help="gpu mode: skip the torch.compile runs")
    p.add_argument("--eager-batches", type=int, default=1500,
                   help="gpu mode: batches timed for the eager (uncaptured) step loops (0: the whole epoch)")
    p.add_argument("--budget-s", type=float, default=1e9,
                   help="gpu mode: start no further measurement after this many seconds")
    p.add_argument("--reader-workers", type=int, default=1)
    p.add_argument("--kernel", default="auto", choices=("auto", "eager", "fused"),
                   help="the training loss's engine (srgnn.fused_cpu for fused; auto: fused on CPU float32)")
    p.add_argument("--data", default=str(ROOT / "bench" / "_data" / "train_ddp"))
    args = p.parse_args(argv)

    import torch
    print(machine(), flush=True)
    data = Path(args.data) / f"p{args.pairs}_i{args.items}_L{args.max_len}"
    manifest = make_shards(data, args.pairs, args.items, max_len=args.max_len)
    shards = data / "shards" / f"run_date={RUN_DATE}"
    n_items, max_len = manifest["n_items"], manifest["max_len"]

    if args.mode == "cpu":
        nproc = os.cpu_count() or 1
        inp, n = input_pipeline(shards, args.batch_size, "cpu", args.reader_workers)
        print(f"input pipeline alone (Petastorm -> Batch, 1 process, {args.reader_workers} reader thread): "
              f"{inp:,.0f} pairs/s over {n:,} pairs", flush=True)
        torch.set_num_threads(nproc)
        batches = load_batches(shards, args.batch_size, args.step_batches or 300)
        step, secs, n = step_rate(batches, n_items, max_len, args.hidden, "cpu", kernel=args.kernel)
        print(f"model step alone (in-memory batches, {nproc} threads, d={args.hidden}, {n_items:,} items, "
              f"kernel {args.kernel}): "
              f"{step:,.0f} pairs/s over {n:,} pairs", flush=True)
        figures = {}
        for w in [int(x) for x in args.procs.split(",")]:
            threads = max(1, nproc // w)
            r = job_epoch(data, w, args.hidden, args.batch_size, "cpu", threads, kernel=args.kernel)
            figures[w] = r["pairs_per_s"]
            print(f"job, {w} process(es) x {threads} thread(s): {r['pairs_per_s']:,.0f} pairs/s, epoch "
                  f"{r['train_seconds']:.1f}s train + {r['eval_seconds']:.1f}s eval, {r['examples']:,.0f} pairs, "
                  f"valid hr@20 {r['valid_hr@20']:.4f}", flush=True)
        print(" ".join(f"ddp{w}_pairs_per_s={v:.0f}" for w, v in figures.items())
              + f" input_pairs_per_s={inp:.0f} step_pairs_per_s={step:.0f}")
        return

    # ---- gpu mode ------------------------------------------------------------------------------
    # Figures print as they come (RESULT lines); each later measurement starts only while the
    # --budget-s allows, so a device lease that runs short still returns the earlier ones.
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    began = time.perf_counter()

    def time_left(what: str, need: float) -> bool:
        left = args.budget_s - (time.perf_counter() - began)
        if left < need:
            print(f"SKIPPED {what}: {left:.0f}s of --budget-s left, needs ~{need:.0f}s", flush=True)
        return left >= need

    try:
        import petastorm  # noqa: F401
        have_petastorm = True
    except Exception as exc:  # the GPU image may lack it (wheels are carried by bench/gpu.sh)
        print(f"petastorm unavailable ({exc}); batches are read with pyarrow and the whole-job run is skipped")
        have_petastorm = False
    t0 = time.perf_counter()
    batches = batches_in_memory(shards, args.batch_size, args.step_batches or None)
    print(f"loaded {sum(len(b) for b in batches):,} training pairs in {len(batches):,} batches "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    eager = batches[:args.eager_batches] if args.eager_batches else batches
    variants = args.variants.split(",")

    def report(label: str, rate: float, secs: float, n: int) -> None:
        print(f"RESULT step_loop {label} seconds={secs:.2f} pairs={n} pairs_per_s={rate:.0f} "
              f"epoch_719k_s={719000 / rate:.2f}", flush=True)

    def guarded(label: str, fn, *a, **k):
        """One measurement; a failure is printed and the next measurement still runs."""
        try:
            return fn(*a, **k)
        except Exception as exc:
            print(f"RESULT {label} failed: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
            if cuda:
                torch.cuda.synchronize()
            return None

    def step_loop(variant: str, bf16: bool, graphs: bool, static: bool = False, compile_: bool = False,
                  mode: str = "default", need: float = 40) -> None:
        label = (f"variant={variant} precision={'bf16' if bf16 else 'fp32'} graphs={int(graphs)} "
                 f"compile={int(compile_)}{f' mode={mode}' if compile_ else ''} static_shapes={int(static or graphs or compile_)}")
        if time_left(label, need):
            r = guarded(f"step_loop {label}", step_rate, batches if graphs else eager, n_items, max_len, args.hidden,
                        device, variant, bf16, compile_=compile_, graphs=graphs, static=static, compile_mode=mode)
            if r:
                report(label, *r)

    def job(graphs: bool, bf16: bool, need: float) -> None:
        label = f"job variant=srgnn precision={'bf16' if bf16 else 'fp32'} graphs={int(graphs)}"
        if have_petastorm and time_left(label, need):
            r = guarded(label, job_epoch, data, 1, args.hidden, args.batch_size, device, 0, "srgnn", bf16,
                        args.reader_workers, graphs=graphs)
            if r:
                print(f"RESULT {label} epoch_s={r['train_seconds']:.2f} pairs_per_s={r['pairs_per_s']:.0f} "
                      f"eval_s={r['eval_seconds']:.2f} valid_hr@20={r['valid_hr@20']:.4f}", flush=True)

    # in order of importance: what is left out when the budget runs short comes last
    if cuda:  # the captured step against the same step run eagerly, then whole epochs captured
        parity = guarded("graph_parity", graph_parity, batches, n_items, max_len, args.hidden, device)
        if parity:
            print(f"RESULT graph_parity {parity}", flush=True)
        step_loop("srgnn", False, graphs=True)
        for variant in variants:
            step_loop(variant, True, graphs=True)
    step_loop("srgnn", False, graphs=False)                          # the eager loop, packed graphs
    if cuda:
        step_loop("srgnn", True, graphs=False, static=True)          # eager, the captured step's shapes
        if not args.no_compile:
            step_loop("srgnn", True, graphs=True, compile_=True, need=150)
        job(True, True, 60)
    if have_petastorm and time_left("input pipeline", 40):
        r = guarded("input_pipeline", input_pipeline, shards, args.batch_size, device, args.reader_workers)
        if r:
            print(f"RESULT input_pipeline device={device} pairs_per_s={r[0]:.0f} pairs={r[1]}", flush=True)
    job(False, False, 120)
    if cuda:
        step_loop("srgnn", True, graphs=False)
    if not args.no_compile:
        step_loop("srgnn", cuda, graphs=False, compile_=True, mode="reduce-overhead" if cuda else "default",
                  need=150)
    print(f"gpu mode done in {time.perf_counter() - began:.0f}s", flush=True)


if __name__ == "__main__":
    main()
