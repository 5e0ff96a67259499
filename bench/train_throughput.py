"""SR-GNN training / evaluation throughput on synthetic examples .

    .venv/bin/python bench/train_throughput.py --items 40000 --pairs 20000 --batch-size 100 --device cpu

Synthetic sessions: lengths 2 + geometric with the mean of Diginetica's sessions (5.12 clicks, the
paper's Table 1), items drawn from a Zipf(1) popularity over the catalog, every prefix an example
(the official augmentation), the last ``--max-len`` clicks kept, right-padded. Batches are built
once and held on the device, so the figures are the model's (graph building, forward, backward,
Adam; for evaluation the forward and the metric accumulation), not a reader's.

Also measured in the same run: the float32 matrix product at the score shape (B x d @ d x N), whose
rate caps training at ``gflops / (6 d N)`` pairs/s (the three score products of a training pair).
On a shared VM that rate drifts by tens of % within a minute, so the timed training is cut into
``--windows`` consecutive chunks with a ``--ceiling-seconds`` matmul measurement before the first
and after every chunk: each chunk's rate is divided by the ceiling measured on either side of it,
and the median of those ratios is the "% of ceiling" printed (with their range). With
``--products-floor`` it also replays the step's own matrix products alone (their shapes recorded
from the warm-up steps): the rate the step could reach if everything else were free. The last line
is exactly ``train_pairs_per_s=<x> eval_pairs_per_s=<y>``.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from srgnn import cuda_graphs  # noqa: E402
from srgnn.data import Batch  # noqa: E402
from srgnn.memory import keep_freed_memory  # noqa: E402
from srgnn.model import SRGNN, ModelConfig  # noqa: E402
from srgnn.train import TrainStep, evaluate, make_optimizer  # noqa: E402


def synthetic_examples(n_items: int, n_pairs: int, max_len: int, mean_session_len: float, seed: int):
    """Right-padded prefixes [P, max_len], lengths [P], targets [P] (numpy, vectorised)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (mean_session_len - 1.0)          # 2 + Geometric(p) - 1 has mean 1 + 1/p
    pop = 1.0 / np.arange(1, n_items + 1)
    pop /= pop.sum()
    n_sessions = int(n_pairs / (mean_session_len - 1) * 1.3) + 10
    lens = np.minimum(1 + rng.geometric(p, size=n_sessions), 200)
    flat = rng.choice(np.arange(1, n_items + 1), size=int(lens.sum()), p=pop)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    # every prefix k = 1..n-1 of every session: its end position (exclusive) and its length
    k = np.concatenate([np.arange(1, n) for n in lens])
    end = np.repeat(starts, lens - 1) + k
    order = rng.permutation(len(k))[:n_pairs]
    k, end = k[order], end[order]
    length = np.minimum(k, max_len)
    pos = (end - length)[:, None] + np.arange(max_len)[None, :]
    valid = np.arange(max_len)[None, :] < length[:, None]
    items = np.where(valid, flat[np.minimum(pos, len(flat) - 1)], 0)
    return items.astype(np.int64), length.astype(np.int64), flat[end].astype(np.int64)


def to_batches(items, lengths, targets, batch_size, device):
    n = len(targets) // batch_size * batch_size   # whole batches only (static shapes)
    out = []
    for s in range(0, n, batch_size):
        out.append(Batch(torch.from_numpy(items[s:s + batch_size]), torch.from_numpy(lengths[s:s + batch_size]),
                         torch.from_numpy(targets[s:s + batch_size])).to(device))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(batch: int, d: int, n_items: int, device, dtype=torch.float32, seconds=1.0) -> float:
    a = torch.randn(batch, d, device=device, dtype=dtype)
    b = torch.randn(d, n_items, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        sync(device)
    return 2.0 * batch * d * n_items * reps / (time.perf_counter() - start) / 1e9


def products_floor(step, batches, device, reps: int = 7) -> tuple[float, float]:
    """(MFLOP, median ms) per step of the step's matrix products alone (``mm``, ``addmm`` and the
    in-place ``addmm_`` the native kernel accumulates gradients with): their shapes are recorded
    with the profiler over ``batches``, then replayed on random tensors of the same shapes. The
    rate they allow is what the step could reach if everything but the products were free."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for b in batches:
            step(b)
    calls = []
    for e in prof.events():
        shapes = [tuple(s) for s in e.input_shapes if s]
        if e.name in ("aten::addmm", "aten::addmm_"):      # bias or accumulator, a, b
            fn = torch.addmm if e.name == "aten::addmm" else torch.Tensor.addmm_
            calls.append((fn, shapes[:3], 2 * shapes[1][0] * shapes[1][1] * shapes[2][1]))
        elif e.name == "aten::mm":
            calls.append((torch.mm, shapes[:2], 2 * shapes[0][0] * shapes[0][1] * shapes[1][1]))
    args = [[torch.randn(*s, device=device) for s in shapes] for _, shapes, _ in calls]
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for (fn, _, _), a in zip(calls, args):
            fn(*a)
        sync(device)
        times.append((time.perf_counter() - start) / len(batches) * 1e3)
    return sum(f for _, _, f in calls) / len(batches) / 1e6, float(np.median(times))


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"nproc={os.cpu_count()} cpu='{cpu}' load1={load:.2f} torch={torch.__version__}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=40000)
    ap.add_argument("--pairs", type=int, default=20000, help="training pairs timed (one pass)")
    ap.add_argument("--eval-pairs", type=int, default=0, help="evaluation pairs (default: = --pairs)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--variant", default="srgnn", choices=["srgnn", "fc"])
    ap.add_argument("--readout", default="hybrid", choices=["hybrid", "att", "last", "avg"])
    ap.add_argument("--mean-session-len", type=float, default=5.12)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (static shapes)")
    ap.add_argument("--compile-mode", default="reduce-overhead",
                    help="torch.compile mode (reduce-overhead = CUDA graphs on GPU)")
    ap.add_argument("--static-shapes", action="store_true", help="static shapes without compiling")
    ap.add_argument("--kernel", default="auto", choices=["auto", "eager", "fused"],
                    help="training loss: eager PyTorch, the native CPU kernel (srgnn.fused_cpu), or auto (the kernel "
                         "where it can run: CPU float32 without --compile/--static-shapes/--amp; the job's default)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="the whole step (forward, backward, Adam) as one CUDA graph (srgnn.cuda_graphs; CUDA only)")
    ap.add_argument("--no-fused-adam", action="store_true")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc thresholds as they are (the job sets them: srgnn.memory)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed warm-up batches")
    ap.add_argument("--windows", type=int, default=6, help="training chunks, each between two ceiling measurements")
    ap.add_argument("--ceiling-seconds", type=float, default=0.5, help="length of each ceiling measurement")
    ap.add_argument("--products-floor", action="store_true",
                    help="also time the step's matrix products alone (their shapes recorded over the --warmup "
                         "batches, then replayed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cuda_graphs and (args.device != "cuda" or args.compile):
        ap.error("--cuda-graphs needs --device cuda and excludes --compile")

    torch.set_num_threads(args.threads)
    kept = False if args.malloc_default else keep_freed_memory()   # as the training job does (srgnn.memory)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    print(machine(), f"threads={torch.get_num_threads()} keep_freed_memory={kept}", flush=True)
    if device.type == "cuda":
        print(f"gpu={torch.cuda.get_device_name(device)}", flush=True)

    eval_pairs = args.eval_pairs or args.pairs
    t0 = time.perf_counter()
    tr = synthetic_examples(args.items, args.pairs + args.warmup * args.batch_size, args.max_len,
                            args.mean_session_len, args.seed)
    ev = synthetic_examples(args.items, eval_pairs, args.max_len, args.mean_session_len, args.seed + 1)
    uniq = np.mean([len(set(r[:n])) for r, n in zip(tr[0][:2000], tr[1][:2000])])
    print(f"data: {len(tr[2])} train + {len(ev[2])} eval pairs, mean prefix length {tr[1].mean():.2f}, "
          f"mean distinct items {uniq:.2f}, built in {time.perf_counter() - t0:.1f}s", flush=True)
    train_b = to_batches(*tr, args.batch_size, device)
    warm, train_b = train_b[:args.warmup], train_b[args.warmup:]
    eval_b = to_batches(*ev, args.batch_size, device)

    static = args.static_shapes or args.compile or args.cuda_graphs
    cfg = ModelConfig(n_items=args.items, hidden_size=args.hidden, step=args.step, variant=args.variant,
                      readout=args.readout, max_len=args.max_len, static_shapes=static)
    model = SRGNN(cfg).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else None
    engine = "cuda graph"
    if args.cuda_graphs:   # as the job's --cuda-graphs: weight 1/B per row = the batch's mean loss
        optimizer = cuda_graphs.make_optimizer(model.parameters(), 1e-3, 1e-5, device)
        graphed = cuda_graphs.GraphedTrainStep(model, optimizer, args.batch_size, args.max_len, args.variant, device,
                                               torch.bfloat16 if args.amp == "bf16" else None)

        def step(b: Batch) -> torch.Tensor:
            return graphed.step(b, 1.0 / len(b)) / len(b)
    else:
        optimizer = (torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5) if args.no_fused_adam
                     else make_optimizer(model.parameters(), 1e-3, 1e-5))
        trainer = TrainStep(model, optimizer, kernel=args.kernel, autocast=autocast, compile=args.compile,
                            compile_mode=args.compile_mode)
        engine = trainer.engine

        def step(b: Batch) -> torch.Tensor:   # as the job's steps: weight 1/B per row = the batch's mean loss
            return trainer(b, 1.0 / len(b)) / len(b)

    def score(batches: list[Batch], ks=(20,)) -> dict[str, float]:
        return evaluate(model, batches, ks=ks, autocast=autocast)
    print(f"model: d={args.hidden} step={args.step} variant={args.variant} readout={args.readout} "
          f"amp={args.amp} compile={args.compile} cuda_graphs={args.cuda_graphs} static_shapes={static} "
          f"kernel={args.kernel} ({engine}) "
          f"fused_adam={not args.no_fused_adam}", flush=True)

    t0 = time.perf_counter()
    model.train()
    for b in warm:
        step(b)
    score(eval_b[:5])
    sync(device)
    print(f"warm-up ({len(warm)} batches{', compile' if args.compile else ''}): "
          f"{time.perf_counter() - t0:.1f}s", flush=True)

    model.train()
    loss_sum = torch.zeros((), device=device)
    per_pair = 6.0 * args.hidden * args.items            # flops of the three score products
    windows = max(1, min(args.windows, len(train_b)))
    bounds = np.linspace(0, len(train_b), windows + 1).astype(int)
    gflops = [matmul_gflops(args.batch_size, args.hidden, args.items, device, seconds=args.ceiling_seconds)]
    train_s, ratios, faults = 0.0, [], 0
    for w in range(windows):
        chunk = train_b[bounds[w]:bounds[w + 1]]
        sync(device)
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for b in chunk:
            loss_sum += step(b)
        sync(device)
        secs = time.perf_counter() - start
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt
        train_s += secs
        gflops.append(matmul_gflops(args.batch_size, args.hidden, args.items, device, seconds=args.ceiling_seconds))
        rate = len(chunk) * args.batch_size / secs
        ceiling_w = (gflops[-2] + gflops[-1]) / 2 * 1e9 / per_pair
        ratios.append(rate / ceiling_w)
        print(f"window {w + 1}/{windows}: {rate:,.0f} train pairs/s, matmul {gflops[-2]:.0f} -> {gflops[-1]:.0f} "
              f"GFLOP/s, {100 * ratios[-1]:.1f}% of ceiling", flush=True)
    train_pairs = len(train_b) * args.batch_size

    sync(device)
    start = time.perf_counter()
    scored = score(eval_b, (10, 20))
    sync(device)
    eval_s = time.perf_counter() - start
    eval_pairs = len(eval_b) * args.batch_size

    train_rate, eval_rate = train_pairs / train_s, eval_pairs / eval_s
    median_gflops = float(np.median(gflops))
    print(f"train: {train_pairs} pairs in {train_s:.2f}s (mean loss {float(loss_sum) / len(train_b):.3f}, "
          f"{faults / len(train_b):,.0f} minor page faults per step); "
          f"eval: {eval_pairs} pairs in {eval_s:.2f}s (hr@20 {scored['hr@20']:.4f})")
    print(f"score-shape matmul fp32 ({args.batch_size}x{args.hidden} @ {args.hidden}x{args.items}): "
          f"median {median_gflops:.1f} GFLOP/s of {len(gflops)} measurements ({min(gflops):.0f}-{max(gflops):.0f}) "
          f"-> ceiling 6*d*N = {per_pair / 1e6:.1f} MFLOP/pair = {median_gflops * 1e9 / per_pair:,.0f} train pairs/s; "
          f"reached {100 * float(np.median(ratios)):.1f}% (median of {len(ratios)} windows, "
          f"{100 * min(ratios):.1f}-{100 * max(ratios):.1f}%)")
    if args.products_floor:
        mflop, ms = products_floor(step, warm, device)
        print(f"matrix products alone: {mflop:.3g} MFLOP per {args.batch_size}-pair step "
              f"({mflop / args.batch_size:.3g} per pair) in {ms:.2f} ms (median of 7 replays, {mflop / ms:.0f} GFLOP/s) "
              f"-> at most {args.batch_size / ms * 1e3:,.0f} train pairs/s if everything else were free; the timed step took "
              f"{args.batch_size / train_rate * 1e3:.2f} ms")
    if device.type == "cuda":
        print(f"epoch-equivalent: 719,000 pairs at this rate = {719000 / train_rate:.1f}s")
    print(f"train_pairs_per_s={train_rate:.1f} eval_pairs_per_s={eval_rate:.1f}", flush=True)


if __name__ == "__main__":
    main()
