"""Baseline scorers beside SR-GNN: POP, S-POP, item-kNN, V-SKNN and sequential rules (SR).

The statistics a baseline needs (click popularity, item neighbours, next-item rules, the item ->
recent-sessions index) are fitted with Spark by :mod:`pipelines.baselines` and handed over as flat
numpy arrays (CSR lists). This module holds the other half, numpy/torch only: ``scorer.score(items,
lengths)`` turns a batch of right-padded prefixes (the shards' ``items``/``length`` columns, exactly
what SR-GNN sees) into a score matrix ``[B, n_items]`` where column ``j`` is item ``j + 1`` -- the
shape of the model's logits -- so ``srgnn.metrics`` ranks every model the same way.

Ties. ``srgnn.metrics`` breaks equal scores by the smaller item index. The baselines define their
own total order instead: the items a method scores ("candidates": the last item's neighbours or
rules, the prefix's items for S-POP, the neighbours' items for V-SKNN) come first, in the method's
order, with equal method scores broken by global popularity; every other item follows by global
popularity (most clicked training item first, equal clicks by smaller index), as S-POP defines.
(session-rec leaves the order of equal scores to its sort.) The matrix holds that order as exact
integers: an item outside the candidates gets its popularity position ``tie_break`` (``n_items``
for the most clicked item, down to 1), the r-th of a row's C candidates (0-based) gets
``n_items + C - r``. All values stay below 2**24, so they survive ``srgnn.metrics``' cast to
float32 exactly and no two items tie.

Methods (parameters in :class:`BaselineParams`; docs/baselines.md has the details):

- ``pop``: items by training clicks.
- ``spop``: items of the prefix by their count in the prefix; ties and the rest by popularity.
- ``itemknn``: neighbours of the prefix's last item by (regularised) cosine of session
  co-occurrence ``co(i, j) / (supp(i)^a * supp(j)^(1-a) + lambda)`` (a = 0.5, lambda = 0: plain
  cosine), top ``knn_neighbours`` per item.
- ``sr``: sequential rules (session-rec's ``SequentialRules``, weighting ``div``): every click
  ``j`` that follows a click ``i`` of the same training session within ``sr_steps`` clicks adds
  ``1 / step`` to the rule ``i -> j``; the prefix's last item's rules, top ``sr_rules`` per item.
  With ``sr_steps = 1`` the rules are the transition counts of stage 2's ``item_graph``.
- ``vsknn``: V-SKNN (Ludewig & Jannach 2018; session-rec's ``VMContextKNN``): candidate sessions
  are the ``vsknn_sample`` most recent training sessions sharing an item with the prefix;
  similarity is the dot product of the prefix vector with linearly decaying weights
  (position / length, the last click weighs 1) and the neighbour's binary vector, divided by the
  number of distinct prefix items; the ``vsknn_k`` most similar sessions vote for their items with
  their similarity, times ``1 / step`` of the most recent shared prefix click when
  ``vsknn_score_decay = 'div'`` (session-rec's default) or 1 (``'same'``).

Truncating neighbour and rule lists to the top N does not change any rank <= N, so HR/MRR/NDCG@K
are exact for every K <= N (the config checks N >= the largest K).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from srgnn.core.errors import ConfigError

BASELINES = ("pop", "spop", "itemknn", "sr", "vsknn")


@dataclass(frozen=True)
class BaselineParams:
    knn_neighbours: int = 100       # item-kNN: neighbours kept per item
    knn_lambda: float = 0.0         # item-kNN: shrinkage in the denominator (session-rec uses 20)
    knn_alpha: float = 0.5          # item-kNN: supp(i)^a * supp(j)^(1-a); 0.5 = cosine
    sr_rules: int = 100             # SR: rules kept per item
    sr_steps: int = 10              # SR: rules from each click to the next `steps` clicks (session-rec: 10)
    vsknn_k: int = 100              # V-SKNN: neighbour sessions that vote
    vsknn_sample: int = 500         # V-SKNN: most recent candidate sessions considered (m)
    vsknn_score_decay: str = "div"  # V-SKNN: 'div' (1/step of the last shared click) | 'same'

    def check(self, max_k: int) -> None:
        if self.knn_neighbours < max_k or self.sr_rules < max_k:
            raise ConfigError(f"knn_neighbours ({self.knn_neighbours}) and sr_rules ({self.sr_rules}) must be "
                              f">= the largest cut-off k ({max_k}), else ranks <= k would change")
        if self.sr_steps < 1:
            raise ConfigError(f"sr_steps must be >= 1, got {self.sr_steps}")
        if self.vsknn_k < 1 or self.vsknn_sample < 1:
            raise ConfigError("vsknn_k and vsknn_sample must be >= 1")
        if self.vsknn_score_decay not in ("div", "same"):
            raise ConfigError(f"vsknn_score_decay {self.vsknn_score_decay!r} is not one of ['div', 'same']")


def popularity_tie_break(clicks: np.ndarray) -> np.ndarray:
    """``clicks[j]`` for item j+1 -> float64 tie-break: n for the most clicked item down to 1
    (equal clicks: smaller index first)."""
    n = len(clicks)
    order = np.lexsort((np.arange(n), -clicks))          # most clicked first, then smaller idx
    tb = np.empty(n, dtype=np.float64)
    tb[order] = np.arange(n, 0, -1, dtype=np.float64)
    return tb


def csr(src: np.ndarray, dst: np.ndarray, rank: np.ndarray | None, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr [n_rows+1], values) of ``dst`` grouped by ``src`` (rows 0..n_rows-1), in ``rank``
    order within a row when given, else ascending ``dst``."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    order = np.lexsort((rank if rank is not None else dst, src))
    counts = np.bincount(src, minlength=n_rows)
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, dst[order]


def gather_csr(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each requested row r (position q in ``rows``): (q, position within the row, value) of
    every entry of row r, concatenated."""
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, within, values[np.repeat(starts, counts) + within]


# =============================================================================================
# Scorers
# =============================================================================================
class Scorer:
    """``score(items, lengths) -> float32 [B, n_items]`` (column j = item j + 1; higher is better)."""

    name: str = "?"

    def __init__(self, n_items: int, tie_break: np.ndarray):
        if n_items >= 2 ** 23:
            raise ConfigError(f"{n_items} items: the baselines' integer scores need n_items < 2**23")
        self.n_items = n_items
        self.tb_np = np.asarray(tie_break, dtype=np.float64)
        self.tie_break = torch.from_numpy(self.tb_np.astype(np.float32))

    def score(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _base(self, batch: int) -> torch.Tensor:
        return self.tie_break.unsqueeze(0).repeat(batch, 1)

    def _candidate_scores(self, batch: int, rows: np.ndarray, items: np.ndarray, value: np.ndarray) -> torch.Tensor:
        """Scores with the candidates ``(rows, items)`` (unique per row, items 1-based) placed above
        everything else, ordered by ``value`` desc then popularity."""
        order = np.lexsort((-self.tb_np[items - 1], -value, rows))
        rows, items = rows[order], items[order]
        per_row = np.bincount(rows, minlength=batch)
        position = np.arange(len(rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        level = (self.n_items + per_row[rows] - position).astype(np.float32)
        scores = self._base(batch)
        scores[torch.from_numpy(rows), torch.from_numpy(items - 1)] = torch.from_numpy(level)
        return scores


class PopScorer(Scorer):
    """POP: the most clicked training items, the same list for every session."""

    name = "pop"

    def score(self, items, lengths):
        return self._base(items.shape[0])


class SPopScorer(Scorer):
    """S-POP: items of the prefix by their count in the prefix; ties and the rest by popularity."""

    name = "spop"

    def score(self, items, lengths):
        b, L = items.shape
        in_prefix = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
        counts = torch.zeros(b, self.n_items + 1, dtype=torch.int64)
        counts.scatter_add_(1, items.long(), in_prefix)
        rows, item = torch.nonzero(counts[:, 1:], as_tuple=True)
        value = counts[rows, item + 1]
        return self._candidate_scores(b, rows.numpy(), item.numpy() + 1, value.numpy().astype(np.float64))


class LastItemListScorer(Scorer):
    """Scores from the prefix's last item through a ranked list per item (item-kNN, SR): the
    r-th entry (0-based) of the last item's list of length C gets ``n_items + C - r``."""

    def __init__(self, name: str, n_items: int, tie_break: np.ndarray, ptr: np.ndarray, values: np.ndarray):
        super().__init__(n_items, tie_break)
        self.name = name
        self.ptr, self.values = ptr, values

    def score(self, items, lengths):
        b = items.shape[0]
        scores = self._base(b)
        last = items[torch.arange(b), (lengths - 1).clamp(min=0)].numpy().astype(np.int64)
        last[lengths.numpy() <= 0] = 0                    # no prefix: popularity only
        owner, within, dst = gather_csr(self.ptr, self.values, last)
        size = (self.ptr[last + 1] - self.ptr[last])[owner]
        level = torch.from_numpy((self.n_items + size - within).astype(np.float32))
        scores[torch.from_numpy(owner), torch.from_numpy(dst - 1)] = level
        return scores


class VSKNNScorer(Scorer):
    """V-SKNN (Ludewig & Jannach 2018), vectorised over a batch; see the module docstring."""

    name = "vsknn"

    def __init__(self, n_items: int, tie_break: np.ndarray, item_ptr: np.ndarray, item_sessions: np.ndarray,
                 session_ptr: np.ndarray, session_items: np.ndarray, k: int, sample: int, score_decay: str):
        super().__init__(n_items, tie_break)
        self.item_ptr, self.item_sessions = item_ptr, item_sessions     # item -> session ids (recency ids)
        self.session_ptr, self.session_items = session_ptr, session_items
        self.n_sessions = len(session_ptr) - 1
        self.k, self.sample, self.score_decay = k, sample, score_decay

    def neighbours(self, items: np.ndarray, lengths: np.ndarray):
        """The voting neighbours of each row: (row, session id, similarity, step) arrays."""
        b_all, p_all = np.nonzero(np.arange(items.shape[1])[None, :] < lengths[:, None])
        x_all = items[b_all, p_all].astype(np.int64)
        # pos_map: each distinct prefix item keeps the weight of its last click, i / length (1-based i)
        L = items.shape[1]
        key = b_all * (self.n_items + 1) + x_all
        order = np.argsort(key * L + p_all, kind="stable")          # by (row, item, position)
        last = np.ones(len(order), dtype=bool)
        last[:-1] = key[order][1:] != key[order][:-1]
        sel = order[last]
        ub, ux, up = b_all[sel], x_all[sel], p_all[sel]
        n_distinct = np.bincount(ub, minlength=len(lengths)).astype(np.float64)
        weight = (up + 1) / lengths[ub]
        # candidate sessions: every indexed session of every prefix item, one entry per (item, session)
        owner, _, sess = gather_csr(self.item_ptr, self.item_sessions, ux)
        cb, cw, cp = ub[owner], weight[owner], up[owner]
        key2 = cb * self.n_sessions + sess
        order = np.argsort(key2 * L + cp, kind="stable")            # by (row, session, position)
        key2_sorted = key2[order]
        starts = np.flatnonzero(np.r_[True, key2_sorted[1:] != key2_sorted[:-1]])
        ends = np.r_[starts[1:], len(order)] - 1
        g_row, g_sess = cb[order][starts], sess[order][starts]
        g_sim = np.add.reduceat(cw[order], starts) / n_distinct[g_row] if len(starts) else np.zeros(0)
        g_last_pos = cp[order][ends]                       # latest prefix click shared with the session
        # sampling: the `sample` most recent candidates of each row (groups sorted by row, session asc)
        per_row = np.bincount(g_row, minlength=len(lengths))
        row_end = np.cumsum(per_row)
        from_end = row_end[g_row] - np.arange(len(g_row)) - 1
        keep = from_end < self.sample
        g_row, g_sess, g_sim, g_last_pos = g_row[keep], g_sess[keep], g_sim[keep], g_last_pos[keep]
        # the k most similar (ties: more recent session first). One float sort key instead of a
        # 3-key lexsort: 0 < sim <= 1, and two different sims of one row differ by at least
        # 1 / (length * distinct items) >= 1 / L**2, far above float64 rounding; the groups are in
        # (row, session asc) order, so a stable sort of the reversed keys puts newer sessions first.
        key = (g_row * 2.0 + (1.0 - g_sim))[::-1]
        order = len(key) - 1 - np.argsort(key, kind="stable")
        g_row, g_sess, g_sim, g_last_pos = g_row[order], g_sess[order], g_sim[order], g_last_pos[order]
        per_row = np.bincount(g_row, minlength=len(lengths))
        rank = np.arange(len(g_row)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        top = rank < self.k
        step = lengths[g_row[top]] - g_last_pos[top]
        return g_row[top], g_sess[top], g_sim[top], step

    def item_scores(self, items: np.ndarray, lengths: np.ndarray):
        """Sparse V-SKNN scores: (row, item, score) for every item some neighbour votes for."""
        rows, sess, sim, step = self.neighbours(items, lengths)
        vote = sim / step if self.score_decay == "div" else sim
        owner, _, item = gather_csr(self.session_ptr, self.session_items, sess)
        key = rows[owner] * (self.n_items + 1) + item
        uniq, inverse = np.unique(key, return_inverse=True)
        total = np.bincount(inverse, weights=vote[owner])
        return uniq // (self.n_items + 1), uniq % (self.n_items + 1), total

    def score(self, items, lengths):
        items_np, lengths_np = items.numpy().astype(np.int64), lengths.numpy().astype(np.int64)
        rows, item, total = self.item_scores(items_np, lengths_np)
        return self._candidate_scores(len(lengths_np), rows, item, total)


@dataclass
class FittedBaselines:
    scorers: dict[str, Scorer]
    clicks: np.ndarray                   # training clicks, [n_items] (index j = item j + 1)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


def ranked_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` item indices (1-based) per row, ordered as ``srgnn.metrics`` ranks them
    (score desc, then smaller index). Used by tests and by a recommendation fallback."""
    n = scores.shape[1]
    # stable sort on -score keeps smaller column first among equal scores
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :min(k, n)]
    return order + 1
