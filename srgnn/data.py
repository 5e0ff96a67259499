"""In-memory examples and the Batch that every consumer of examples (trainer, scorer, tests) uses.

An example is (prefix, target). In the shards and in a Batch the prefix is stored right-padded:
``items[b, :lengths[b]]`` are the last ``lengths[b]`` clicks of the prefix in click order, then zeros.
Item indices are 1..n_items (0 is padding). ``ngc_w[b, i]`` is the global-graph weight of the
transition ``items[b, i-1] -> items[b, i]`` (0 at i = 0 and on padding).

This module has no Petastorm in it: reading shards is ``srgnn.reader``'s job alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch


@dataclass
class Batch:
    items: torch.Tensor            # int64 [B, L]
    lengths: torch.Tensor          # int64 [B]
    targets: torch.Tensor          # int64 [B], 1..n_items
    ngc_w: torch.Tensor | None = None  # float32 [B, L]

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            items=self.items.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            ngc_w=None if self.ngc_w is None else self.ngc_w.to(device, non_blocking=non_blocking),
        )


def augment_sessions(sessions: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """Every prefix of every session with its next item, in the official preprocess.py order
    (per session, the longest prefix first)."""
    prefixes: list[list[int]] = []
    targets: list[int] = []
    for seq in sessions:
        for i in range(1, len(seq)):
            targets.append(int(seq[-i]))
            prefixes.append([int(x) for x in seq[:-i]])
    return prefixes, targets


def pad_prefixes(prefixes: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int32 [N, max_len] holding the last ``max_len`` clicks, and int32 lengths."""
    n = len(prefixes)
    items = np.zeros((n, max_len), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    for r, p in enumerate(prefixes):
        tail = list(p)[-max_len:]
        items[r, : len(tail)] = tail
        lengths[r] = len(tail)
    return items, lengths


def batches_from_arrays(items: np.ndarray, lengths: np.ndarray, targets: np.ndarray,
                        ngc_w: np.ndarray | None = None, batch_size: int = 100,
                        shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
    """Batches over in-memory arrays (tests, notebooks, benchmarks)."""
    n = len(targets)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield Batch(
            items=torch.from_numpy(np.asarray(items[idx], dtype=np.int64)),
            lengths=torch.from_numpy(np.asarray(lengths[idx], dtype=np.int64)),
            targets=torch.from_numpy(np.asarray(targets[idx], dtype=np.int64)),
            ngc_w=None if ngc_w is None else torch.from_numpy(np.asarray(ngc_w[idx], dtype=np.float32)),
        )
