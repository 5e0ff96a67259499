"""bench/sample_accuracy.py trains on the official sample pairs and keeps its output contract: one
line per seed, then exactly ``hr20_mean=<x> mrr20_mean=<y>`` (percent), the mean of the seed lines.
The figures themselves are the benchmark's business (docs/model.md), not this test's."""
from __future__ import annotations

import re

import pytest

from bench.sample_accuracy import main

pytestmark = pytest.mark.slow  # a benchmark script


def test_sample_accuracy_prints_one_line_per_seed_and_their_mean(capsys):
    main(["--seeds", "2", "--epochs", "2", "--patience", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "1205 train / 99 test pairs, 309 items" in lines[0]
    seeds = [re.fullmatch(r"seed (\d): best test HR@20 ([\d.]+)%  MRR@20 ([\d.]+)%  \((\d+) epochs, .*", line)
             for line in lines if line.startswith("seed ")]
    assert [int(m[1]) for m in seeds] == [0, 1]
    assert all(1 <= int(m[4]) <= 2 for m in seeds)
    hr = [float(m[2]) for m in seeds]
    mrr = [float(m[3]) for m in seeds]
    assert all(0 <= m <= h <= 100 for h, m in zip(hr, mrr))   # MRR@20 <= HR@20: reciprocal ranks <= 1
    last = re.fullmatch(r"hr20_mean=([\d.]+) mrr20_mean=([\d.]+)", lines[-1])
    assert last and abs(float(last[1]) - sum(hr) / 2) < 0.011 and abs(float(last[2]) - sum(mrr) / 2) < 0.011
