"""Scoring with a model whose item indices are not tonight's: the model published on an earlier night.

``mapping[tonight's index] = the model's index`` (0: an item the model does not know), made by item id
from both vocabularies (:func:`srgnn.warm_start.item_row_mapping`). Tonight's sessions are translated
into the model's indices (clicks on unknown items dropped, as stage 4 drops unknown items), and the
model's scores are laid out over tonight's items (items it does not know rank below every known one).
"""
from __future__ import annotations

import numpy as np
import torch


def to_model_items(items: torch.Tensor, lengths: torch.Tensor, ngc_w: torch.Tensor | None,
                   mapping: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Right-padded ``items`` [B, L] in tonight's indices -> the model's indices, unknown clicks
    removed (each row compacted to the left); a row left empty keeps one padding click (length 1)."""
    table = torch.as_tensor(mapping, dtype=torch.long, device=items.device)
    positions = torch.arange(items.shape[1], device=items.device)[None, :]
    mapped = table[items] * (positions < lengths[:, None])
    keep = mapped > 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)   # known clicks first, in order
    out = torch.gather(mapped, 1, order)
    new_len = keep.sum(1)
    w = None
    if ngc_w is not None:
        w = torch.gather(ngc_w * keep, 1, order)
    return out, torch.clamp(new_len, min=1), w


def to_tonight_scores(scores: torch.Tensor, mapping: np.ndarray) -> torch.Tensor:
    """The model's scores [B, old_n] (column j = its item j + 1) -> [B, n_tonight] over tonight's items;
    items the model does not know get a score below every known one."""
    table = torch.as_tensor(mapping[1:], dtype=torch.long, device=scores.device)   # tonight's 1..n
    known = table > 0
    floor = scores.min(dim=1, keepdim=True).values - 1.0
    picked = scores[:, torch.clamp(table - 1, min=0)]
    return torch.where(known[None, :], picked, floor)
