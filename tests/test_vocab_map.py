"""Scoring with an earlier night's model: tonight's indices to the model's and back (srgnn.vocab_map)."""
from __future__ import annotations

import numpy as np
import torch

from srgnn.vocab_map import to_model_items, to_tonight_scores


def test_sessions_are_translated_and_unknown_clicks_dropped():
    mapping = np.array([0, 3, 0, 1, 2])      # tonight 1->3, 2 unknown, 3->1, 4->2
    items = torch.tensor([[1, 2, 3, 0], [2, 2, 0, 0], [4, 1, 0, 0]])
    lengths = torch.tensor([3, 2, 2])
    w = torch.tensor([[0.0, 0.5, 0.25, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.75, 0.0, 0.0]])
    out, new_len, new_w = to_model_items(items, lengths, w, mapping)
    assert out.tolist() == [[3, 1, 0, 0], [0, 0, 0, 0], [2, 3, 0, 0]]
    assert new_len.tolist() == [2, 1, 2]
    assert new_w.tolist() == [[0.0, 0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.75, 0.0, 0.0]]


def test_scores_are_laid_out_over_tonights_items():
    mapping = np.array([0, 3, 0, 1, 2])
    old = torch.tensor([[0.1, 0.2, 0.3]])     # the model's items 1, 2, 3
    now = to_tonight_scores(old, mapping)
    assert torch.allclose(now, torch.tensor([[0.3, 0.1 - 1.0, 0.1, 0.2]]))
    assert torch.argsort(now, dim=1, descending=True)[0, -1].item() == 1   # the unknown item ranks last
