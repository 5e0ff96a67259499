"""Ranking metrics for next-item prediction, accumulated as plain sums (all-reducible).

Tie rule: items are ranked by (score descending, item index ascending), so the target's rank is
``1 + #(score > s_t) + #(score == s_t and index < t)``. A target tied with other items is ranked
below the tied items of lower index (no optimism from ties; the same order as a stable sort).
A NaN score ranks last: other items' NaNs rank below every number, and a target that scores NaN
gets the worst rank, ``n_items``, so a diverged model can never look good.

Per cut-off K (default 10 and 20), over the examples:
- ``hr@K``   hit rate (the paper's P@K): rank <= K
- ``mrr@K``  1 / rank if rank <= K else 0
- ``ndcg@K`` 1 / log2(1 + rank) if rank <= K else 0 (one relevant item)
- ``coverage@K`` fraction of the catalog that appears in at least one top-K list
- ``pop@K``  mean over examples of the mean popularity of the top-K items (popularity passed in,
  e.g. training item frequency)
and ``hr@K_len<=5`` / ``hr@K_len>5`` (likewise mrr, ndcg) split by prefix length (paper's Table 3).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

SHORT_MAX = 5  # sessions of <= 5 clicks are "short" (paper's Table 3)


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of each target item (index 1..n) among all items, ties by lower index first."""
    t = (targets - 1).unsqueeze(1)
    s_t = logits.gather(1, t)
    better = (logits > s_t).sum(1)          # a NaN is never greater: NaN items rank below numbers
    tied = logits == s_t
    if bool((tied.sum(1) > 1).any()):  # some target shares its score: lower indices go first
        index = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
        ranks = 1 + better + (tied & (index < t)).sum(1)
    else:
        ranks = 1 + better
    nan_target = torch.isnan(s_t.squeeze(1))
    if bool(nan_target.any()):         # the worst rank, whatever the other scores
        ranks = torch.where(nan_target, torch.full_like(ranks, logits.shape[1]), ranks)
    return ranks


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean [B, n_items], exactly k True per row: the top k by the same tie rule."""
    k = min(k, logits.shape[1])
    kth = logits.topk(k, dim=1).values[:, -1:]
    above = logits > kth
    tied = logits == kth
    room = k - above.sum(1, keepdim=True)
    return above | (tied & (tied.cumsum(1) <= room))


def candidate_topk(logits: torch.Tensor, m: int, group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(logits, m, dim=1)`` (sorted) by way of a much smaller candidate set.

    The columns are cut into ``nb = n // group`` strided blocks {j, j + nb, j + 2 nb, ...}; the
    m blocks with the largest maxima hold the m largest values (a block left out has a max no
    larger than each of the m kept blocks', each of which holds a value at least that large), so
    ``topk`` over those m * group columns (plus the < group tail columns) returns the same values.
    Among equal values the columns returned may differ, as with ``torch.topk`` itself. One pass
    over the row for the block maxima (vectorised across blocks) instead of a selection over
    all n columns: about 3x faster at 40,000 items on the CPU.
    """
    b, n = logits.shape
    nb = n // group
    if nb < 4 * m or not logits.is_contiguous():
        return logits.topk(m, dim=1)
    block_max = logits.as_strided((b, group, nb), (n, nb, 1)).amax(1)        # [B, nb]
    blocks = block_max.topk(m, dim=1).indices                                 # [B, m]
    offsets = torch.arange(0, group * nb, nb, device=logits.device)
    cand = (blocks.unsqueeze(2) + offsets).view(b, m * group)
    if n > group * nb:                                                        # tail columns
        tail = torch.arange(group * nb, n, device=logits.device).expand(b, n - group * nb)
        cand = torch.cat([cand, tail], dim=1)
    vals, pos = logits.gather(1, cand).topk(m, dim=1)
    return vals, cand.gather(1, pos)


def ranked_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` scores per row and their column indices, ordered by (score desc, column asc).

    One candidate ``topk`` of k + 1: the (k+1)-th largest score is the best one left out, so a row
    has a tie across the boundary exactly when it equals the k-th; only those rows take the exact
    full-row path. NaN scores rank last (as in :func:`target_ranks`)."""
    n = logits.shape[1]
    k = min(k, n)
    if logits.is_floating_point() and bool(torch.isnan(logits).any()):
        logits = logits.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    vals, idx = candidate_topk(logits, min(k + 1, n))
    boundary_tie = vals[:, k - 1] == vals[:, k] if k < n else torch.zeros_like(vals[:, 0], dtype=torch.bool)
    idx, vals = idx[:, :k].clone(), vals[:, :k].clone()
    if bool(boundary_tie.any()):
        rows = boundary_tie.nonzero().squeeze(1)
        exact = top_k_mask(logits[rows], k).nonzero()[:, 1].view(-1, k)   # ascending index
        idx[rows] = exact
        vals[rows] = logits[rows].gather(1, exact)
    idx, order = idx.sort(dim=1)                                    # index ascending, then
    vals, order2 = vals.gather(1, order).sort(dim=1, descending=True, stable=True)  # score descending
    return vals, idx.gather(1, order2)


def top_k_items(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices [B, k] of the top k, in (score descending, index ascending) order."""
    return ranked_top_k(logits, k)[1]


class MetricAccumulator:
    """Sums and counts of the metrics; ``finalize()`` turns them into fractions.

    For data-parallel evaluation, all-reduce ``sums`` (SUM) and ``covered`` (MAX) across ranks
    (``all_reduce()`` does both with torch.distributed) before ``finalize()``.
    """

    def __init__(self, n_items: int, ks: Sequence[int] = (10, 20),
                 popularity: torch.Tensor | None = None, device: torch.device | str = "cpu"):
        self.n_items, self.ks = int(n_items), tuple(int(k) for k in ks)
        self.device = torch.device(device)
        self.popularity = None if popularity is None else popularity.to(self.device, torch.float64)
        if self.popularity is not None and self.popularity.shape != (self.n_items,):
            raise ValueError(f"popularity must have shape ({self.n_items},) (index j = item j + 1), "
                             f"got {tuple(self.popularity.shape)}")
        self.names = ["n", "n_len<=5", "n_len>5", "loss_sum"]
        for k in self.ks:
            for m in ("hr", "mrr", "ndcg"):
                self.names += [f"{m}@{k}", f"{m}@{k}_len<=5", f"{m}@{k}_len>5"]
            self.names.append(f"pop@{k}")
        self._index = {name: i for i, name in enumerate(self.names)}
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        self.covered = torch.zeros(len(self.ks), self.n_items, dtype=torch.uint8, device=self.device)
        self._has_loss = False

    def update(self, logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
               loss_sum: torch.Tensor | float | None = None) -> None:
        """Add one batch: logits [B, n_items], targets [B] (1..n), prefix lengths [B]."""
        logits = logits.detach().float()
        ranks = target_ranks(logits, targets).to(self.device, torch.float64)
        short = (lengths.to(self.device) <= SHORT_MAX).to(torch.float64)
        add = torch.zeros_like(self.sums)
        ix = self._index

        def put(name: str, per_example: torch.Tensor) -> None:
            add[ix[name]] = per_example.sum()
            add[ix[name + "_len<=5"]] = (per_example * short).sum()
            add[ix[name + "_len>5"]] = (per_example * (1 - short)).sum()

        put("n", torch.ones_like(ranks))
        top_items = top_k_items(logits, max(self.ks))                  # [B, max K], rule order
        for i, k in enumerate(self.ks):
            hit = (ranks <= k).to(torch.float64)
            put(f"hr@{k}", hit)
            put(f"mrr@{k}", hit / ranks)
            put(f"ndcg@{k}", hit / torch.log2(1 + ranks))
            top = top_items[:, :k].to(self.device)
            self.covered[i].index_fill_(0, top.flatten(), 1)
            if self.popularity is not None:
                add[ix[f"pop@{k}"]] = self.popularity[top].mean(1).sum()
        if loss_sum is not None:
            self._has_loss = True
            add[ix["loss_sum"]] = torch.as_tensor(loss_sum, dtype=torch.float64).to(self.device)
        self.sums += add

    def merge(self, other: "MetricAccumulator") -> None:
        self.sums += other.sums.to(self.device)
        self._has_loss |= other._has_loss
        self.covered |= other.covered.to(self.device)

    def all_reduce(self, group=None) -> None:
        """Sum the counters and OR the coverage sets over all ranks (torch.distributed)."""
        import torch.distributed as dist
        dist.all_reduce(self.sums, op=dist.ReduceOp.SUM, group=group)
        covered = self.covered.to(torch.int32)
        dist.all_reduce(covered, op=dist.ReduceOp.MAX, group=group)
        self.covered = covered.to(torch.uint8)

    def raw(self) -> dict[str, float]:
        """The plain sums by name (plus covered-item counts)."""
        out = dict(zip(self.names, self.sums.tolist()))
        for i, k in enumerate(self.ks):
            out[f"covered@{k}"] = float(self.covered[i].sum())
        return out

    def finalize(self) -> dict[str, float]:
        """Fractions: every metric divided by its example count (NaN for an empty length bucket)."""
        raw = self.raw()
        n = {"": raw["n"], "_len<=5": raw["n_len<=5"], "_len>5": raw["n_len>5"]}
        out: dict[str, float] = {"examples": raw["n"], "examples_len<=5": raw["n_len<=5"],
                                 "examples_len>5": raw["n_len>5"]}
        if self._has_loss and raw["n"] > 0:
            out["loss"] = raw["loss_sum"] / raw["n"]
        for k in self.ks:
            for m in ("hr", "mrr", "ndcg"):
                for suffix, count in n.items():
                    out[f"{m}@{k}{suffix}"] = raw[f"{m}@{k}{suffix}"] / count if count else math.nan
            out[f"coverage@{k}"] = raw[f"covered@{k}"] / self.n_items
            if self.popularity is not None:
                out[f"pop@{k}"] = raw[f"pop@{k}"] / raw["n"] if raw["n"] else math.nan
        return out
