"""bench/train_throughput.py runs end to end on a tiny set and keeps its output contract: the last
line is exactly ``train_pairs_per_s=<x> eval_pairs_per_s=<y>``. The figures themselves
are the benchmark's business (docs/benchmarks.md), not this test's."""
from __future__ import annotations

import re

import pytest

import torch

from bench.train_throughput import main

pytestmark = pytest.mark.slow  # a benchmark script


def test_train_throughput_prints_its_contract_line_and_the_products_floor(capsys):
    threads = torch.get_num_threads()
    try:   # --malloc-default: leave this test process's malloc settings alone
        main(["--items", "60", "--pairs", "400", "--eval-pairs", "200", "--batch-size", "20", "--hidden", "8",
              "--warmup", "3", "--windows", "2", "--ceiling-seconds", "0.02", "--threads", "1", "--products-floor",
              "--malloc-default"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    last = re.fullmatch(r"train_pairs_per_s=(\d+\.\d) eval_pairs_per_s=(\d+\.\d)", lines[-1])
    assert last and float(last[1]) > 0 and float(last[2]) > 0
    floor = next(line for line in lines if line.startswith("matrix products alone:"))
    mflop = float(re.search(r"alone: ([\d.]+) MFLOP per 20-pair step", floor)[1])
    # per step at least the score product forward (2 * 20 * 8 * 60 flops) and its two backward products
    assert mflop >= 3 * 2 * 20 * 8 * 60 / 1e6
    assert sum(line.startswith("window ") for line in lines) == 2
