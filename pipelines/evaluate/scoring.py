"""Scoring the test examples: every model, SR-GNN or baseline, as ``batch -> [B, n_items]`` scores
ranked by :class:`srgnn.metrics.MetricAccumulator` (one code path for all of them)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from pipelines.evaluate.config import EvaluateConfig
from srgnn.core.contracts import SHARD_COLUMNS
from srgnn.core.errors import InputError
from srgnn.integrity import check_finite_scores


@dataclass
class TestExamples:
    items: np.ndarray      # int64 [N, L], right-padded
    lengths: np.ndarray    # int64 [N]
    targets: np.ndarray    # int64 [N], 1..n_items
    ngc_w: np.ndarray      # float32 [N, L]

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int):
        from srgnn.data import batches_from_arrays
        return batches_from_arrays(self.items, self.lengths, self.targets, self.ngc_w, batch_size=batch_size)


def load_test_examples(cfg: EvaluateConfig, manifest: dict[str, Any]) -> TestExamples:
    from srgnn.reader import read_split

    got = read_split(cfg.shards_dir, "test", columns=SHARD_COLUMNS)
    ex = TestExamples(items=np.asarray(got["items"], dtype=np.int64),
                      lengths=np.asarray(got["length"], dtype=np.int64),
                      targets=np.asarray(got["target"], dtype=np.int64),
                      ngc_w=np.asarray(got["ngc_w"], dtype=np.float32))
    where = cfg.layout.shard_split(cfg.run_date, "test")
    if len(ex) == 0:
        raise InputError(f"no test examples in {where}: nothing to evaluate (stage 1's test split is empty)")
    expected = manifest.get("splits", {}).get("test", {}).get("examples")
    if expected is not None and int(expected) != len(ex):
        raise InputError(f"{where}: {len(ex)} test examples, the manifest says {expected}")
    n_items = int(manifest["n_items"])
    bad = (ex.targets < 1) | (ex.targets > n_items) | (ex.lengths < 1)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} example(s) with a target outside 1..{n_items} or an "
                         f"empty prefix")
    return ex


def evaluate_scores(score_batch: Callable[[Any], torch.Tensor], examples: TestExamples, n_items: int,
                    ks: Iterable[int], batch_size: int, popularity: torch.Tensor | None = None,
                    desc: str = "eval", progress: bool = False) -> dict[str, float]:
    """Metrics (fractions, srgnn.metrics keys) of ``score_batch(Batch) -> [B, n_items]`` over the examples."""
    from srgnn.metrics import MetricAccumulator

    acc = MetricAccumulator(n_items, tuple(ks), popularity)
    total = math.ceil(len(examples) / batch_size)
    with torch.no_grad():
        for batch in tqdm(examples.batches(batch_size), total=total, desc=desc, disable=not progress, leave=False):
            scores = score_batch(batch)
            acc.update(scores.to("cpu"), batch.targets, batch.lengths)
    return acc.finalize()


def model_score_fn(model: torch.nn.Module, device: torch.device, name: str = "the model"
                   ) -> Callable[[Any], torch.Tensor]:
    """Scores of an SR-GNN model; NaN or infinite scores are an error naming ``name``."""
    def score(batch):
        b = batch.to(device)
        scores = model(b.items, b.lengths, b.ngc_w).float()
        check_finite_scores(scores, name)
        return scores
    return score


def baseline_score_fn(scorer) -> Callable[[Any], torch.Tensor]:
    return lambda batch: scorer.score(batch.items, batch.lengths)
