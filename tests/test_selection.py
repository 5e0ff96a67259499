"""The publication guard (srgnn.selection.choose)."""
from __future__ import annotations

import math

import pytest

from srgnn.selection import Candidate, choose


def _chosen(rows):
    chosen = [r for r in rows if r.chosen]
    assert len(chosen) == 1
    return chosen[0].candidate


def test_srgnn_is_published_when_within_the_margin_of_the_best():
    c = [Candidate("srgnn", "srgnn-a", 0.30), Candidate("vsknn", "vsknn-x", 0.31), Candidate("pop", "pop-x", 0.05)]
    assert _chosen(choose(c, margin=0.02)) == "srgnn"
    assert _chosen(choose(c, margin=0.0)) == "vsknn"


def test_a_model_worse_than_another_by_more_than_the_margin_is_never_published():
    c = [Candidate("srgnn", "srgnn-a", 0.09), Candidate("previous", "srgnn-p", 0.20),
         Candidate("spop", "spop-x", 0.60), Candidate("vsknn", "vsknn-x", 0.86)]
    rows = choose(c, margin=0.05)
    assert _chosen(rows) == "vsknn"
    assert [r.candidate for r in rows if "more than 0.0500 below the best (0.8600)" in r.reason] == \
        ["srgnn", "previous", "spop"]


def test_previous_beats_baselines_when_both_are_eligible_and_nan_is_never_chosen():
    c = [Candidate("srgnn", "srgnn-a", math.nan), Candidate("previous", "srgnn-p", 0.50),
         Candidate("vsknn", "vsknn-x", 0.51)]
    rows = choose(c, margin=0.02)
    assert _chosen(rows) == "previous"
    assert rows[0].reason == "mrr@20 is not a finite number"
    with pytest.raises(ValueError):
        choose([Candidate("srgnn", "v", math.nan)])
