"""Baselines against hand-computed rankings on tiny sessions, and V-SKNN against a loop reference."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from chispa import assert_df_equality

from pipelines.baselines import (fit_baselines, item_cooccurrence, multi_step_rules, sequential_rules,
                                 training_sessions)
from srgnn.baselines import BaselineParams, VSKNNScorer, popularity_tie_break, ranked_items
from srgnn.core.errors import ConfigError, InputError

SESSIONS_SCHEMA = "session_id string, split string, item_idx array<int>, session_order long"
GRAPH_SCHEMA = "src_idx int, dst_idx int, count long, weight double, in_weight double"

# Training sessions in order (session_order = position). Clicks per item:
# 1:2  2:4  3:5  4:2  5:2  6:1   -> popularity order 3, 2, 1, 4, 5, 6 (ties by smaller index)
TRAIN = [
    [1, 2, 3],      # s0 (oldest)
    [2, 3, 3],      # s1
    [3, 4, 2],      # s2
    [5, 3, 2],      # s3
    [1, 4, 5, 6],   # s4 (newest)
]
N_ITEMS = 6


def sessions_frame(spark, train=TRAIN, test=([4, 6],)):
    rows = [(f"t{i}", "train", s, i) for i, s in enumerate(train)]
    rows += [(f"x{i}", "test", s, 100 + i) for i, s in enumerate(test)]
    return spark.createDataFrame(rows, SESSIONS_SCHEMA)


def graph_frame(spark, sessions):
    """Stage 2's item_graph computed by hand: direct transitions with repeats counted."""
    counts: dict[tuple[int, int], int] = {}
    for s in sessions:
        for a, b in zip(s, s[1:]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
    out: dict[int, int] = {}
    for (a, _), c in counts.items():
        out[a] = out.get(a, 0) + c
    rows = [(a, b, c, c / out[a], 0.0) for (a, b), c in sorted(counts.items())]
    return spark.createDataFrame(rows, GRAPH_SCHEMA)


def batch(prefixes, L=6):
    items = torch.zeros(len(prefixes), L, dtype=torch.int64)
    for r, p in enumerate(prefixes):
        items[r, :len(p)] = torch.tensor(p)
    return items, torch.tensor([len(p) for p in prefixes])


def top(scorer, prefixes, k=N_ITEMS):
    items, lengths = batch(prefixes)
    scores = scorer.score(items, lengths)
    assert scores.shape == (len(prefixes), N_ITEMS) and scores.dtype == torch.float32
    # no ties at all: the baseline's own order is total, not left to the index tie-break
    assert all(len(set(row.tolist())) == N_ITEMS for row in scores)
    return ranked_items(scores, k).tolist()


@pytest.fixture(scope="module")
def fitted(spark):
    params = BaselineParams(knn_neighbours=20, sr_rules=20, vsknn_k=2, vsknn_sample=3, vsknn_score_decay="same")
    train = training_sessions(sessions_frame(spark))
    return fit_baselines(train, graph_frame(spark, TRAIN), N_ITEMS, params)


def test_popularity_tie_break_orders_by_clicks_then_index():
    tb = popularity_tie_break(np.array([2, 4, 5, 2, 2, 1]))
    assert tb.tolist() == [4.0, 5.0, 6.0, 3.0, 2.0, 1.0]


def test_pop_ranks_training_clicks(fitted):
    assert fitted.stats["train_sessions"] == 5 and fitted.stats["train_clicks"] == 16
    assert top(fitted.scorers["pop"], [[6], [1, 2]]) == [[3, 2, 1, 4, 5, 6]] * 2


def test_spop_counts_in_session_then_popularity(fitted):
    # [4, 6, 4, 5]: 4 twice; 5 and 6 once each -> 5 before 6 by popularity; then 3, 2, 1
    assert top(fitted.scorers["spop"], [[4, 6, 4, 5]]) == [[4, 5, 6, 3, 2, 1]]
    assert top(fitted.scorers["spop"], [[6]]) == [[6, 3, 2, 1, 4, 5]]


def test_itemknn_cosine_from_last_item(fitted):
    # Item 4 is in s2 {2,3,4} and s4 {1,4,5,6}: supp(4) = 2.
    # co(4,j): 1:1 2:1 3:1 5:1 6:1; supp: 1:2 2:4 3:4 5:2 6:1
    # cos = co / sqrt(2 * supp): 6: 1/sqrt(2)=.707, 1 and 5: 1/2, 2 and 3: 1/sqrt(8)=.354
    # -> 6, then 1 = 5 (tie: 1 is more popular... both 2 clicks: smaller index 1), then 3 (5 clicks) before 2
    assert top(fitted.scorers["itemknn"], [[3, 4]]) == [[6, 1, 5, 3, 2, 4]]
    # the last item decides, not the rest of the prefix: cos(6, j) = 1/sqrt(2) for j in 1, 4, 5
    assert top(fitted.scorers["itemknn"], [[4, 6]])[0][:3] == [1, 4, 5]


def test_itemknn_regularisation_changes_the_order(spark):
    # supp: 1: 3, 2: 8, 3: 1; co(1, 2) = 2, co(1, 3) = 1
    # lambda 0:  3: 1/sqrt(3) = .577 > 2: 2/sqrt(24) = .408
    # lambda 10: 3: 1/(1.73 + 10) = .085 < 2: 2/(4.90 + 10) = .134
    train = training_sessions(sessions_frame(spark, train=[[1, 2], [1, 2], [1, 3]] + [[2, 4]] * 6))
    orders = {}
    for lam in (0.0, 10.0):
        params = BaselineParams(knn_neighbours=20, sr_rules=20, knn_lambda=lam)
        f = fit_baselines(train, None, N_ITEMS, params, names=["itemknn"])
        assert set(f.scorers) == {"itemknn"}
        orders[lam] = top(f.scorers["itemknn"], [[1]])[0][:2]
    assert orders == {0.0: [3, 2], 10.0: [2, 3]}


def test_cooccurrence_counts_sessions_not_clicks(spark):
    train = training_sessions(sessions_frame(spark, train=[[1, 2, 2], [2, 1]]))
    expected = spark.createDataFrame([(1, 2, 2), (2, 1, 2)], "src_idx int, dst_idx int, sessions long")
    assert_df_equality(item_cooccurrence(train), expected, ignore_row_order=True, ignore_nullable=True)


def test_sr_with_one_step_follows_the_graphs_transition_counts(spark):
    params = BaselineParams(knn_neighbours=20, sr_rules=20, sr_steps=1)
    sr = fit_baselines(training_sessions(sessions_frame(spark)), graph_frame(spark, TRAIN), N_ITEMS, params,
                       names=["sr"]).scorers["sr"]
    # transitions from 3: 3->3 (s1), 3->4 (s2), 3->2 (s3) once each; 2->3 twice, 2->? none else
    # from 3: all count 1 -> by popularity: 3, 2, 4; then the rest by popularity: 1, 5, 6
    assert top(sr, [[1, 3]]) == [[3, 2, 4, 1, 5, 6]]
    # from 2: 2->3 twice -> 3 first, then popularity
    assert top(sr, [[2]]) == [[3, 2, 1, 4, 5, 6]]
    # from 6: no rule -> popularity
    assert top(sr, [[6]]) == [[3, 2, 1, 4, 5, 6]]
    with pytest.raises(InputError, match="sr_steps=1 needs stage 2's 'item_graph'"):
        fit_baselines(training_sessions(sessions_frame(spark)), None, N_ITEMS, params, names=["sr"])


def test_sr_rules_reach_ten_steps_weighted_one_over_step(spark, fitted):
    """session-rec's default (steps 10, weighting 1/step), by hand on TRAIN (no item_graph used).
    From 3: s1 3->3 (1), s2 3->4 (1) and 3->2 (1/2), s3 3->2 (1): 2 (1.5), then 3 and 4 (1 each,
    3 more popular), then the rest by popularity: 1, 5, 6.
    From 1: s0 1->2 (1), 1->3 (1/2); s4 1->4 (1), 1->5 (1/2), 1->6 (1/3): 2 and 4 (2 more popular),
    3 and 5 (3 more popular), 6, then 1. With two steps 1->6 is out of reach: 1 before 6."""
    assert top(fitted.scorers["sr"], [[1, 3]]) == [[2, 3, 4, 1, 5, 6]]
    assert top(fitted.scorers["sr"], [[1]]) == [[2, 4, 3, 5, 6, 1]]
    assert top(fitted.scorers["sr"], [[2]]) == [[3, 2, 1, 4, 5, 6]]     # only 2->3
    two = fit_baselines(training_sessions(sessions_frame(spark)), None, N_ITEMS,
                        BaselineParams(knn_neighbours=20, sr_rules=20, sr_steps=2), names=["sr"])
    assert top(two.scorers["sr"], [[1]]) == [[2, 4, 3, 5, 1, 6]]
    with pytest.raises(ConfigError, match="sr_steps must be >= 1"):
        BaselineParams(sr_steps=0).check(20)


def test_multi_step_rules_sum_exact_integer_weights(spark):
    # [1, 2, 1], two steps, lcm(1, 2) = 2: 1->2 (step 1: 2), 2->1 (step 1: 2), 1->1 (step 2: 1)
    train = training_sessions(sessions_frame(spark, train=[[1, 2, 1]]))
    pop = spark.createDataFrame([(1, 2), (2, 1)], "item_idx int, clicks long")
    expected = spark.createDataFrame([(1, 2, 2, 0), (1, 1, 1, 1), (2, 1, 2, 0)],
                                     "src_idx int, dst_idx int, weight long, rank int")
    assert_df_equality(multi_step_rules(train, pop, 10, 2), expected, ignore_row_order=True,
                       ignore_nullable=True)


def test_sequential_rules_truncate_per_source_in_score_order(spark):
    graph = graph_frame(spark, TRAIN)
    pop = spark.createDataFrame([(i + 1, c) for i, c in enumerate([2, 4, 5, 2, 2, 1])], "item_idx int, clicks long")
    got = sequential_rules(graph, pop, 2).where("src_idx = 3").orderBy("rank")
    assert [(r.dst_idx, r.rank) for r in got.collect()] == [(3, 0), (2, 1)]


def test_vsknn_hand_computed(fitted):
    # prefix [2, 5]: weights 2: 1/2, 5: 2/2 = 1; 2 distinct items.
    # sessions with 2 or 5: s0 {1,2,3}, s1 {2,3}, s2 {2,3,4}, s3 {2,3,5}, s4 {1,4,5,6}
    # sample = 3 most recent: s4, s3, s2.  sim: s4 = 1/2, s3 = 1.5/2 = .75, s2 = .5/2 = .25
    # k = 2: s3 (.75), s4 (.5); score_decay 'same':
    #   2: .75, 3: .75, 5: .75 + .5 = 1.25, 1: .5, 4: .5, 6: .5
    # -> 5, then 3 (pop 5) before 2 (pop 4), then 1 (pop 2, idx 1), 4, 6
    assert top(fitted.scorers["vsknn"], [[2, 5]]) == [[5, 3, 2, 1, 4, 6]]


def test_vsknn_div_score_decay(spark):
    # decay 1/step of the latest prefix click the neighbour shares. Prefix [1, 6]:
    # s0 {1,2,3} shares 1 (step 2), s4 {1,4,5,6} shares 6 (step 1). weights: 1: 1/2, 6: 1
    # sims: s0 = .5/2 = .25, s4 = 1.5/2 = .75. k = 2, sample 3 (s4, s0 are the only candidates)
    # votes: s0 -> .25/2 = .125 to 1,2,3;  s4 -> .75 to 1,4,5,6
    # 1: .875, 4/5/6: .75 (4 and 5 have 2 clicks, 6 one -> 4, 5, 6), 3: .125 (pop 5) > 2: .125
    params = BaselineParams(knn_neighbours=20, sr_rules=20, vsknn_k=2, vsknn_sample=3, vsknn_score_decay="div")
    f = fit_baselines(training_sessions(sessions_frame(spark)), None, N_ITEMS, params, names=["vsknn"])
    assert top(f.scorers["vsknn"], [[1, 6]]) == [[1, 4, 5, 6, 3, 2]]


def test_training_sessions_keep_only_train_shard_ids(spark):
    sessions = sessions_frame(spark)
    ids = spark.createDataFrame([("t1",), ("t1",), ("t3",), ("x0",)], "session_id string")
    got = training_sessions(sessions, ids)
    expected = spark.createDataFrame([(1, [2, 3, 3]), (3, [5, 3, 2])], "session_order long, item_idx array<int>")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_bad_inputs_are_clear(spark):
    with pytest.raises(ConfigError, match="knn_neighbours"):
        BaselineParams(knn_neighbours=10).check(20)
    with pytest.raises(InputError, match=r"outside 1\.\.3"):
        fit_baselines(training_sessions(sessions_frame(spark)), None, 3, BaselineParams(), names=["pop"])
    with pytest.raises(InputError, match="no training sessions"):
        fit_baselines(training_sessions(sessions_frame(spark, train=[])), None, N_ITEMS, BaselineParams(),
                      names=["pop"])
    with pytest.raises(ConfigError, match="unknown baseline"):
        fit_baselines(training_sessions(sessions_frame(spark)), None, N_ITEMS, BaselineParams(), names=["gru"])


# ---- V-SKNN: the vectorised scorer equals session-rec's loop, written out plainly -------------
def vsknn_reference(prefix, sessions, k, sample, decay):
    """session-rec VMContextKNN (similarity 'vec', weighting 'div', sampling 'recent')."""
    pos_map = {}
    for i, item in enumerate(prefix, start=1):
        pos_map[item] = i / len(prefix)
    candidates = {s for s, items in enumerate(sessions) if set(items) & set(prefix)}
    recent = sorted(candidates, reverse=True)[:sample]          # larger index = more recent
    sims = []
    for s in recent:
        inter = set(prefix) & set(sessions[s])
        sims.append((s, sum(pos_map[i] for i in inter) / len(pos_map)))
    sims.sort(key=lambda t: (-t[1], -t[0]))
    scores: dict[int, float] = {}
    for s, sim in sims[:k]:
        step = 1
        for item in reversed(prefix):
            if item in sessions[s]:
                break
            step += 1
        vote = sim / step if decay == "div" else sim
        for item in set(sessions[s]):
            scores[item] = scores.get(item, 0.0) + vote
    return scores


def build_vsknn(sessions, n_items, k, sample, decay):
    """The scorer's index built directly (what fit_baselines collects from Spark)."""
    item_lists = [[] for _ in range(n_items + 1)]
    for s, items in enumerate(sessions):
        for i in set(items):
            item_lists[i].append(s)
    item_lists = [sorted(lst, reverse=True)[:sample] for lst in item_lists]
    item_ptr = np.cumsum([0] + [len(lst) for lst in item_lists])
    item_sessions = np.array([s for lst in item_lists for s in lst], dtype=np.int64)
    members = [sorted(set(s)) for s in sessions]
    session_ptr = np.cumsum([0] + [len(m) for m in members])
    session_items = np.array([i for m in members for i in m], dtype=np.int64)
    return VSKNNScorer(n_items, np.arange(n_items, 0, -1), item_ptr, item_sessions, session_ptr,
                       session_items, k, sample, decay)


@pytest.mark.parametrize("decay", ["div", "same"])
def test_vsknn_vectorised_equals_loop_reference(decay):
    rng = random.Random(7)
    n_items = 30
    sessions = [[rng.randint(1, n_items) for _ in range(rng.randint(2, 8))] for _ in range(300)]
    # lengths 1, 2, 4, 8: position weights i/length are exact binary fractions, so similarities
    # tie exactly in both implementations and the top-k cut cannot differ by rounding
    prefixes = [[rng.randint(1, n_items) for _ in range(rng.choice([1, 2, 4, 8]))] for _ in range(60)]
    scorer = build_vsknn(sessions, n_items, k=15, sample=60, decay=decay)
    items = np.zeros((len(prefixes), 12), dtype=np.int64)
    for r, p in enumerate(prefixes):
        items[r, :len(p)] = p
    rows, item, total = scorer.item_scores(items, np.array([len(p) for p in prefixes]))
    got: list[dict[int, float]] = [{} for _ in prefixes]
    for r, i, v in zip(rows.tolist(), item.tolist(), total.tolist()):
        got[r][i] = v
    for r, p in enumerate(prefixes):
        ref = vsknn_reference(p, sessions, 15, 60, decay)
        assert got[r].keys() == ref.keys()
        for i in ref:
            assert math.isclose(got[r][i], ref[i], rel_tol=1e-12), (r, i)


def test_metrics_rank_baseline_scores_in_the_baselines_order(fitted):
    """srgnn.metrics (which casts to float32) ranks every target where the baseline's list puts it."""
    from srgnn.metrics import target_ranks

    prefixes = [[4, 6, 4, 5], [2, 5], [1, 3], [6]]
    items, lengths = batch(prefixes)
    for name, scorer in fitted.scorers.items():
        scores = scorer.score(items, lengths)
        order = ranked_items(scores, N_ITEMS)
        for target in range(1, N_ITEMS + 1):
            ranks = target_ranks(scores, torch.full((len(prefixes),), target))
            expected = [row.index(target) + 1 for row in order.tolist()]
            assert ranks.tolist() == expected, (name, target)


def test_scores_stay_exact_in_float32_for_millions_of_items():
    from srgnn.baselines import LastItemListScorer
    from srgnn.metrics import target_ranks

    n = 3_000_000
    clicks = np.zeros(n, dtype=np.int64)
    clicks[[10, 20, 30]] = [5, 4, 3]                 # items 11, 21, 31 are the most popular
    ptr = np.zeros(n + 2, dtype=np.int64)
    ptr[2:] = 2                                      # item 1's list: [n, n - 1]
    scorer = LastItemListScorer("sr", n, popularity_tie_break(clicks), ptr, np.array([n, n - 1]))
    scores = scorer.score(torch.tensor([[1, 0]]), torch.tensor([1]))
    expected = [n, n - 1, 11, 21, 31, 1, 2]          # the rules, then popularity, then by index
    got = [int(target_ranks(scores, torch.tensor([t]))[0]) for t in expected]
    assert got == [1, 2, 3, 4, 5, 6, 7]
