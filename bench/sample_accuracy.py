"""SR-GNN's accuracy on the bundled Diginetica sample under the official code's protocol, over seeds.

    .venv/bin/python bench/sample_accuracy.py --seeds 5

Trains ``srgnn.train`` on the pairs the official ``datasets/preprocess.py --dataset sample`` makes
(tests/fixtures/official_preprocess_pairs.json: 1,205 train and 99 test pairs over 309 items) with
the official ``pytorch_code/main.py`` settings: 30 epochs, patience 10, the official one-epoch-early
learning-rate decay (``official_lr_schedule``), no valid split (so test MRR@20 counts for patience,
docs/training.md) and the best test HR@20 and MRR@20 over the epochs reported (``test_picked``). So its figures sit beside the official code's own run on the same pairs
(docs/model.md). Prints one line per seed, then the mean and standard deviation; the last line is
exactly ``hr20_mean=<x> mrr20_mean=<y>`` (percent).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from srgnn.data import batches_from_arrays, pad_prefixes  # noqa: E402
from srgnn.model import READOUTS, SRGNN, ModelConfig  # noqa: E402
from srgnn.train import TrainConfig, TrainData, train  # noqa: E402

PAIRS = ROOT / "tests" / "fixtures" / "official_preprocess_pairs.json"


def run_seed(pairs: dict, seed: int, args: argparse.Namespace) -> tuple[float, float, int]:
    """(best test HR@20 %, best test MRR@20 %, epochs run) of one seed."""
    max_len = args.max_len
    tr_items, tr_len = pad_prefixes(pairs["train"]["prefixes"], max_len)
    te_items, te_len = pad_prefixes(pairs["test"]["prefixes"], max_len)
    tr_tgt, te_tgt = np.asarray(pairs["train"]["targets"]), np.asarray(pairs["test"]["targets"])
    torch.manual_seed(seed)
    model = SRGNN(ModelConfig(n_items=int(pairs["n_items"]), max_len=max_len, variant=args.variant,
                              readout=args.readout, step=args.step))
    cfg = TrainConfig(epochs=args.epochs, patience=args.patience, official_lr_schedule=True, progress=False)
    data = TrainData(   # no valid split: the epoch is selected and patience counted on test, as the official code
        train=lambda epoch: batches_from_arrays(tr_items, tr_len, tr_tgt, batch_size=cfg.batch_size, shuffle=True,
                                                seed=seed * 1000 + epoch - 1),
        test=lambda: batches_from_arrays(te_items, te_len, te_tgt, batch_size=cfg.batch_size))
    result = train(model, cfg, data)
    picked = result["test_picked"]
    return 100 * picked["hr@20"], 100 * picked["mrr@20"], result["epochs_run"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default=str(PAIRS), help="official preprocess.py pairs as JSON")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--variant", default="srgnn", choices=("srgnn", "fc"), help="not ngc: the pairs carry no ngc_w")
    p.add_argument("--readout", default="hybrid", choices=READOUTS)
    p.add_argument("--step", type=int, default=1)
    p.add_argument("--max-len", type=int, default=50)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    logging.getLogger("srgnn").setLevel(logging.WARNING)   # one line per seed, not per epoch
    pairs = json.loads(Path(args.pairs).read_text())
    print(f"cpu={cpu_model()} threads={torch.get_num_threads()} torch={torch.__version__}; "
          f"{len(pairs['train']['targets'])} train / {len(pairs['test']['targets'])} test pairs, "
          f"{pairs['n_items']} items; variant={args.variant} readout={args.readout} step={args.step}", flush=True)
    rows = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        hr, mrr, epochs = run_seed(pairs, seed, args)
        rows.append((hr, mrr))
        print(f"seed {seed}: best test HR@20 {hr:.2f}%  MRR@20 {mrr:.2f}%  ({epochs} epochs, "
              f"{time.perf_counter() - start:.1f}s)", flush=True)
    a = np.asarray(rows)
    sd = a.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(2)
    print(f"over {len(rows)} seeds: HR@20 {a[:, 0].mean():.2f} +- {sd[0]:.2f}%  MRR@20 {a[:, 1].mean():.2f} "
          f"+- {sd[1]:.2f}% (mean +- sd)")
    print(f"hr20_mean={a[:, 0].mean():.2f} mrr20_mean={a[:, 1].mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
