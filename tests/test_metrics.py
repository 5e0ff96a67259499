"""Metrics against hand-computed ranks, ties included; coverage, popularity, length buckets."""
from __future__ import annotations

import math

import pytest
import torch

from srgnn.metrics import (MetricAccumulator, candidate_topk, ranked_top_k, target_ranks, top_k_items,
                           top_k_mask)

# 6 items (columns 0..5 = items 1..6)
LOGITS = torch.tensor([
    [0.9, 0.1, 0.5, 0.5, 0.5, 0.0],   # target 4 (col 3, 0.5): 1 above (col 0), 1 tie before (col 2) -> 3
    [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],   # target 1 (col 0): all tied, lowest index -> 1
    [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],   # target 6 (col 5): all tied, highest index -> 6
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # target 2 (col 1, 1.0): 4 above -> 5
])
TARGETS = torch.tensor([4, 1, 6, 2])
LENGTHS = torch.tensor([3, 7, 5, 6])   # short (<= 5): rows 0, 2; long: rows 1, 3
RANKS = [3, 1, 6, 5]


def test_ranks_by_hand_with_ties():
    assert target_ranks(LOGITS, TARGETS).tolist() == RANKS


def test_top_k_mask_breaks_ties_by_index():
    top = top_k_mask(LOGITS, 2)
    assert top.sum(1).tolist() == [2, 2, 2, 2]
    assert top[0].nonzero().flatten().tolist() == [0, 2]      # 0.9, then the first 0.5
    assert top[1].nonzero().flatten().tolist() == [0, 1]      # all tied: lowest indices
    assert top[3].nonzero().flatten().tolist() == [4, 5]


def test_hr_mrr_ndcg_by_hand():
    acc = MetricAccumulator(n_items=6, ks=(2, 5), popularity=torch.tensor([6., 5., 4., 3., 2., 1.]))
    acc.update(LOGITS[:2], TARGETS[:2], LENGTHS[:2], loss_sum=3.0)   # two batches
    acc.update(LOGITS[2:], TARGETS[2:], LENGTHS[2:], loss_sum=1.0)
    m = acc.finalize()
    assert m["examples"] == 4 and m["examples_len<=5"] == 2 and m["examples_len>5"] == 2
    assert m["loss"] == pytest.approx(1.0)
    # K = 2: only rank 1 hits; K = 5: ranks 3, 1, 5 hit
    assert m["hr@2"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(3 / 4)
    assert m["mrr@5"] == pytest.approx((1 / 3 + 1 + 1 / 5) / 4)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(4) + 1 + 1 / math.log2(6)) / 4)
    assert m["hr@5_len<=5"] == pytest.approx(1 / 2)           # ranks 3 (hit), 6 (miss)
    assert m["hr@5_len>5"] == pytest.approx(2 / 2)            # ranks 1, 5
    assert m["mrr@5_len>5"] == pytest.approx((1 + 1 / 5) / 2)
    # top-2 lists: {1,3}, {1,2}, {1,2}, {5,6} -> 5 of 6 items covered
    assert m["coverage@2"] == pytest.approx(5 / 6)
    assert m["coverage@5"] == pytest.approx(1.0)
    pop = [(6 + 4) / 2, (6 + 5) / 2, (6 + 5) / 2, (2 + 1) / 2]
    assert m["pop@2"] == pytest.approx(sum(pop) / 4)


def test_raw_sums_merge_like_one_pass_and_empty_bucket_is_nan():
    one = MetricAccumulator(6, ks=(5,))
    one.update(LOGITS, TARGETS, LENGTHS)
    a, b = MetricAccumulator(6, ks=(5,)), MetricAccumulator(6, ks=(5,))
    a.update(LOGITS[:1], TARGETS[:1], LENGTHS[:1])
    b.update(LOGITS[1:], TARGETS[1:], LENGTHS[1:])
    a.merge(b)
    assert a.raw() == one.raw()
    assert a.finalize() == one.finalize()
    assert "loss" not in one.finalize()
    short_only = MetricAccumulator(6, ks=(5,))
    short_only.update(LOGITS[:1], TARGETS[:1], LENGTHS[:1])
    m = short_only.finalize()
    assert m["hr@5_len<=5"] == 1.0 and math.isnan(m["hr@5_len>5"])


def test_popularity_shape_is_checked():
    with pytest.raises(ValueError, match="popularity"):
        MetricAccumulator(6, popularity=torch.ones(5))


@pytest.mark.parametrize("n", [1344, 5003, 40_000])
def test_candidate_topk_returns_the_same_values_as_a_full_topk(n):
    g = torch.Generator().manual_seed(n)
    continuous = torch.randn(64, n, generator=g)
    continuous[:8, : n // 2] = float("-inf")                       # masked (seen) items
    continuous[8:16, -7:] = 100.0                                  # winners in the tail columns
    ties = torch.randint(0, 5, (64, n), generator=g).float()       # ties everywhere
    spiked = torch.zeros(64, n)
    spiked[torch.arange(64), torch.randint(0, n, (64,), generator=g)] = 1.0   # one winner per row
    for logits in (continuous, ties, spiked):
        for m in (1, 21):
            vals, cols = candidate_topk(logits, m)
            ref = logits.topk(m, dim=1).values
            assert torch.equal(vals, ref)
            assert torch.equal(logits.gather(1, cols), vals)
            assert bool((cols.sort(1).values.diff(1) > 0).all())      # distinct columns


def test_ranked_top_k_matches_the_rule_on_a_large_catalog():
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(0, 50, (40, 3001), generator=g).float()  # ties inside and at the k-th
    vals, cols = ranked_top_k(logits, 20)
    order = sorted(range(3001), key=lambda j: (-logits[0, j].item(), j))[:20]
    assert cols[0].tolist() == order
    for row in range(40):
        ranks = target_ranks(logits[row:row + 1].expand(20, -1), cols[row] + 1)
        assert ranks.tolist() == list(range(1, 21))
    assert torch.equal(logits.gather(1, cols), vals)


def test_top_k_items_order_and_ties_match_the_mask():
    top = top_k_items(LOGITS, 3)
    assert top.tolist() == [[0, 2, 3], [0, 1, 2], [0, 1, 2], [5, 4, 3]]
    torch.manual_seed(0)
    logits = torch.randint(0, 4, (50, 30)).float()    # many ties everywhere
    for k in (1, 5, 29, 30, 40):
        items = top_k_items(logits, k)
        mask = top_k_mask(logits, k)
        assert torch.equal(torch.zeros_like(mask).scatter_(1, items, True), mask)
        # rule order: score descending, then index ascending
        scores = logits.gather(1, items)
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())
        same = scores[:, :-1] == scores[:, 1:]
        assert bool((items[:, :-1][same] < items[:, 1:][same]).all())
        # ranks agree with positions in the list
        ranks = target_ranks(logits, items[:, 0] + 1)
        assert ranks.tolist() == [1] * 50
    full = top_k_items(logits, 30)                    # the whole catalog in rule order
    targets = torch.randint(1, 31, (50,))
    position = (full == (targets - 1).unsqueeze(1)).float().argmax(1) + 1
    assert torch.equal(target_ranks(logits, targets), position)


def test_a_nan_score_ranks_last_so_a_diverged_model_scores_zero():
    nan = float("nan")
    logits = torch.tensor([
        [nan, 0.1, 0.5, nan, 0.2, 0.0],   # target 1 (NaN): the worst rank -> 6
        [nan, 0.1, 0.5, nan, 0.2, 0.0],   # target 4 (NaN) -> 6
        [nan, 0.1, 0.5, nan, 0.2, 0.0],   # target 5 (0.2): only 0.5 above, NaNs never -> 2
    ])
    assert target_ranks(logits, torch.tensor([1, 4, 5])).tolist() == [6, 6, 2]
    values, cols = ranked_top_k(logits[:1], 4)
    assert cols.tolist() == [[2, 4, 1, 5]]                      # the numbers first, no NaN
    assert not torch.isnan(values).any()
    diverged = torch.full((4, 6), nan)
    acc = MetricAccumulator(n_items=6, ks=(2, 5))
    acc.update(diverged, TARGETS, LENGTHS)
    m = acc.finalize()
    assert m["hr@5"] == 0.0 and m["mrr@5"] == 0.0 and m["ndcg@5"] == 0.0   # was 1.0 when NaN ranked first
    assert target_ranks(diverged, TARGETS).tolist() == [6, 6, 6, 6]
