"""Which model scores tonight's sessions: the publication guard.

Candidates are scored on the same examples (tonight's test split): this night's SR-GNN, the best
baseline of this night's evaluation, and the model published the night before (re-evaluated). The
rule, with a margin ``m`` (absolute, on the metric's 0..1 scale; MRR@20 by default):

1. a candidate whose value is more than ``m`` below the best value is never published;
2. among the others, the first in the order of preference wins: this night's SR-GNN, then the model
   published the night before, then the baselines (best value first).

So SR-GNN is published whenever it is within the margin of the best candidate; a margin of 0
publishes the best candidate outright (ties go to the preferred one). A candidate whose value is
not a finite number (a diverged model) is never chosen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SRGNN = "srgnn"
PREVIOUS = "previous"


@dataclass(frozen=True)
class Candidate:
    name: str            # "srgnn", "previous", or a baseline's name ("vsknn", "spop", ...)
    model_version: str
    value: float         # the selection metric on tonight's test examples


@dataclass(frozen=True)
class Decision:
    candidate: str
    model_version: str
    metric: str
    value: float
    chosen: bool
    reason: str


def _rank(c: Candidate) -> tuple:
    order = {SRGNN: 0, PREVIOUS: 1}.get(c.name, 2)
    return (order, -c.value if order == 2 else 0.0, c.name)


def choose(candidates: list[Candidate], metric: str = "mrr@20", margin: float = 0.0) -> list[Decision]:
    """One decision per candidate (in the given order), exactly one of them chosen."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    finite = [c for c in candidates if math.isfinite(c.value)]
    if not finite:
        raise ValueError("no candidate has a finite metric value")
    best = max(c.value for c in finite)
    eligible = [c for c in finite if c.value >= best - margin]
    winner = min(eligible, key=_rank)
    rows = []
    for c in candidates:
        if c is winner:
            reason = (f"{metric} {c.value:.4f} within {margin:.4f} of the best ({best:.4f}); "
                      f"preferred among {len(eligible)} eligible")
        elif not math.isfinite(c.value):
            reason = f"{metric} is not a finite number"
        elif c.value < best - margin:
            reason = f"{metric} {c.value:.4f} more than {margin:.4f} below the best ({best:.4f})"
        else:
            reason = f"eligible, but {winner.name} is preferred"
        rows.append(Decision(c.name, c.model_version, metric, float(c.value), c is winner, reason))
    return rows
