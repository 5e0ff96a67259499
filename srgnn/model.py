"""SR-GNN (Wu et al., "Session-based Recommendation with Graph Neural Networks", AAAI 2019).

Follows the official PyTorch code (CRIPAC-DIG/SR-GNN, pytorch_code/model.py): same parameters
(same names, so its state dicts load), same gated cell, same readout, same initialisation.
The session graphs come from :mod:`srgnn.graph_batch`, built for the whole batch on its device.

    items [B, L], lengths [B] --graph--> nodes v (packed [M, d])
      --GGNN x step (Eq. 1-5)--> v --readout (Eq. 6-7)--> s --(Eq. 8)--> scores over all items
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError
from srgnn.graph_batch import SessionGraph, build_session_graph

VARIANTS = ("srgnn", "ngc", "fc")
READOUTS = ("hybrid", "att", "last", "avg")


@dataclass
class ModelConfig(StageConfig):
    """SR-GNN hyper-parameters (yaml section ``model``): what scoring needs to rebuild the model.
    Training choices (the loss engine, the optimiser) belong to the trainer."""

    yaml_section = "model"

    n_items: int = opt(0, help="number of items (indices 1..n_items; 0 is padding)")
    hidden_size: int = opt(100, help="embedding / hidden size d")
    step: int = opt(1, help="gated graph propagation steps")
    variant: str = opt("srgnn", choices=VARIANTS,
                       help="srgnn | ngc (global-graph edge weights) | fc (+ full higher-order links)")
    readout: str = opt("hybrid", choices=READOUTS,
                       help="hybrid (Eq. 7) | att (global only, official --nonhybrid) | last | avg")
    max_len: int = opt(50, help="clicks kept per prefix (the shards' L)")
    static_shapes: bool = opt(False, help="shapes depend on [B, L] only (CUDA graphs / torch.compile)")

    def validate(self) -> None:
        super().validate()
        if self.hidden_size < 1 or self.step < 1 or self.max_len < 1:
            raise ConfigError(f"model: hidden_size, step and max_len must be >= 1 (got "
                              f"{self.hidden_size}, {self.step}, {self.max_len})")
        if self.n_items < 0:
            raise ConfigError(f"model: n_items must be >= 0 (got {self.n_items})")


class GNN(nn.Module):
    """The gated graph network of Eq. 1-5 (a GRU cell fed by the in/out messages)."""

    def __init__(self, hidden_size: int, step: int = 1, full_connections: bool = False):
        super().__init__()
        d, self.step = hidden_size, step
        n_blocks = 4 if full_connections else 2                 # [A_in ; A_out (; A_fc_in ; A_fc_out)]
        self.w_ih = nn.Parameter(torch.empty(3 * d, n_blocks * d))
        self.w_hh = nn.Parameter(torch.empty(3 * d, d))
        self.b_ih = nn.Parameter(torch.empty(3 * d))
        self.b_hh = nn.Parameter(torch.empty(3 * d))
        self.b_iah = nn.Parameter(torch.empty(d))
        self.b_oah = nn.Parameter(torch.empty(d))
        self.linear_edge_in = nn.Linear(d, d, bias=True)
        self.linear_edge_out = nn.Linear(d, d, bias=True)
        if full_connections:
            self.b_fc_in = nn.Parameter(torch.empty(d))
            self.b_fc_out = nn.Parameter(torch.empty(d))
            self.linear_edge_fc_in = nn.Linear(d, d, bias=True)
            self.linear_edge_fc_out = nn.Linear(d, d, bias=True)

    def cell(self, g: SessionGraph, hidden: torch.Tensor) -> torch.Tensor:
        # Eq. 1: a = A_s [v_1 .. v_n]^T H + b, the in- and out-halves side by side
        input_in = g.A_in @ self.linear_edge_in(hidden) + self.b_iah
        input_out = g.A_out @ self.linear_edge_out(hidden) + self.b_oah
        parts = [input_in, input_out]
        if g.A_fc_in is not None:
            parts.append(g.A_fc_in @ self.linear_edge_fc_in(hidden) + self.b_fc_in)
            parts.append(g.A_fc_out @ self.linear_edge_fc_out(hidden) + self.b_fc_out)
        inputs = torch.cat(parts, dim=1)
        gi = F.linear(inputs, self.w_ih, self.b_ih)
        gh = F.linear(hidden, self.w_hh, self.b_hh)
        i_r, i_i, i_n = gi.chunk(3, dim=1)
        h_r, h_i, h_n = gh.chunk(3, dim=1)
        resetgate = torch.sigmoid(i_r + h_r)                    # Eq. 3: r
        updategate = torch.sigmoid(i_i + h_i)                   # Eq. 2: z
        newgate = torch.tanh(i_n + resetgate * h_n)             # Eq. 4: candidate state
        return newgate + updategate * (hidden - newgate)        # Eq. 5 (official form)

    def forward(self, g: SessionGraph, hidden: torch.Tensor) -> torch.Tensor:
        for _ in range(self.step):
            hidden = self.cell(g, hidden)
        return hidden


class _DenseItemGrad:
    """Hands the dense item-embedding gradient from the score's backward to the lookup's (one per
    forward pass), so the two parts of that gradient are summed in one [n_items + 1, d] buffer."""

    __slots__ = ("grad",)

    def __init__(self):
        self.grad: torch.Tensor | None = None


class FullCatalogCrossEntropy(torch.autograd.Function):
    """mean_b CE(s_b W[1:]^T, t_b - 1) (Eq. 8-10) with a hand-written backward.

    Same value and gradients as ``F.cross_entropy(s @ W[1:].t(), t - 1)``, but the [B, n_items]
    score buffer is reused for the softmax and the gradient goes straight into W's full shape:
    no zero-filled [B, n_items] / [n_items + 1, d] temporaries, which dominate on CPU at 40k items.
    The backward overwrites the saved buffer, so it runs once (no ``retain_graph`` double backward).
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                shared: _DenseItemGrad) -> torch.Tensor:
        log_p = torch.log_softmax(s @ weight[1:].t(), dim=1)    # [B, n_items], one buffer
        loss = -log_p.gather(1, (targets - 1).unsqueeze(1)).mean()
        ctx.save_for_backward(s, weight, targets, log_p)
        ctx.shared = shared
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, weight, targets, log_p = ctx.saved_tensors
        p = log_p.exp_()                                        # softmax, in place
        p[torch.arange(p.shape[0], device=p.device), targets - 1] -= 1.0   # d CE / d logits
        scale = grad / p.shape[0]                               # mean over the batch, applied to
        grad_weight = torch.empty_like(weight)                  # the small factors, not to p
        grad_weight[0].zero_()                                  # the padding row is never scored
        torch.mm(p.t(), s * scale, out=grad_weight[1:])
        ctx.shared.grad = grad_weight                           # the lookup's backward adds to it
        return (p @ weight[1:]) * scale, grad_weight, None, None


class EmbeddingLookup(torch.autograd.Function):
    """``weight[idx]`` (the node vectors) whose backward adds its rows into the dense gradient that
    :class:`FullCatalogCrossEntropy`'s backward made for the same weight (it runs first: the scores
    come after the lookup), instead of into a zero-filled [n_items + 1, d] tensor that autograd then
    adds to it: one 16 MB fill and one 16 MB add less per step at 40k items. Without a dense
    gradient (the logits path) it is ``nn.Embedding``'s backward."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, idx: torch.Tensor, shared: _DenseItemGrad) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.shared, ctx.weight_shape = shared, weight.shape
        return weight.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        dense, ctx.shared.grad = ctx.shared.grad, None
        if dense is None:
            return grad.new_zeros(ctx.weight_shape).index_add_(0, idx, grad), None, None
        dense.index_add_(0, idx, grad.to(dense.dtype))         # autograd sums nothing more for weight
        return None, None, None


class SRGNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_items < 1:
            raise ConfigError("model: n_items must be set (>= 1) to build SR-GNN")
        self.cfg = cfg
        d = cfg.hidden_size
        self.embedding = nn.Embedding(cfg.n_items + 1, d)      # row 0 = padding, never scored
        self.gnn = GNN(d, cfg.step, full_connections=cfg.variant == "fc")
        if cfg.readout in ("hybrid", "att"):
            self.linear_one = nn.Linear(d, d, bias=True)        # W_1 (applied to v_n)
            self.linear_two = nn.Linear(d, d, bias=True)        # W_2 (applied to v_i), bias = c
            self.linear_three = nn.Linear(d, 1, bias=False)     # q
        if cfg.readout == "hybrid":
            self.linear_transform = nn.Linear(2 * d, d, bias=True)  # W_3
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.cfg.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def session_graph(self, items: torch.Tensor, lengths: torch.Tensor,
                      ngc_w: torch.Tensor | None = None) -> SessionGraph:
        if self.cfg.variant == "ngc" and ngc_w is None:
            raise ConfigError("model variant 'ngc' needs the ngc_w edge weights (shards' ngc_w column)")
        return build_session_graph(items, lengths, ngc_w if self.cfg.variant == "ngc" else None,
                                   full_connections=self.cfg.variant == "fc",
                                   static_shapes=self.cfg.static_shapes)

    def readout(self, g: SessionGraph, hidden: torch.Tensor) -> torch.Tensor:
        """Session embedding s from the node vectors (Eq. 6-7); one row per session."""
        s_l = hidden.index_select(0, g.last_node)                               # local embedding: last click v_n
        if self.cfg.readout == "last":
            return s_l
        v = hidden.index_select(0, g.click_node)                               # v_i for every click
        if g.click_weight is not None:                                          # (padding slots -> 0)
            v = v * g.click_weight.unsqueeze(1)
        if self.cfg.readout == "avg":
            total = v.new_zeros((g.batch_size, v.shape[1])).index_add_(0, g.click_session, v)
            return total / g.lengths.unsqueeze(1).to(total.dtype)
        # Eq. 6: alpha_i = q^T sigmoid(W_1 v_n + W_2 v_i + c), s_g = sum_i alpha_i v_i
        # (W_2 is position-wise, so it is applied to the nodes once and gathered per click)
        q1 = self.linear_one(s_l).index_select(0, g.click_session)
        q2 = self.linear_two(hidden).index_select(0, g.click_node)
        alpha = self.linear_three(torch.sigmoid(q1 + q2))
        weighted = alpha * v
        s_g = weighted.new_zeros((g.batch_size, v.shape[1])).index_add_(0, g.click_session, weighted)
        if self.cfg.readout == "att":
            return s_g
        return self.linear_transform(torch.cat([s_g, s_l], dim=1))  # Eq. 7: s_h = W_3 [s_g ; s_l]

    def session_embedding(self, items: torch.Tensor, lengths: torch.Tensor,
                          ngc_w: torch.Tensor | None = None, shared: _DenseItemGrad | None = None) -> torch.Tensor:
        g = self.session_graph(items, lengths, ngc_w)
        if shared is None:
            hidden = self.embedding(g.node_items)               # node vectors v (packed [M, d])
        else:
            hidden = EmbeddingLookup.apply(self.embedding.weight, g.node_items, shared)
        hidden = self.gnn(g, hidden)
        return self.readout(g, hidden)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, ngc_w: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, n_items]``; column j scores item index j + 1 (Eq. 8: z_i = s_h^T v_i).

        With ``targets`` (item indices 1..n): the mean cross-entropy loss instead (Eq. 9-10), by a
        fused path that never returns the logits (training; works through DDP / torch.compile).
        The native CPU kernel (:mod:`srgnn.fused_cpu`) is the trainer's choice, never made here."""
        if targets is None or torch.is_autocast_enabled(items.device.type):
            s = self.session_embedding(items, lengths, ngc_w)
            logits = s @ self.embedding.weight[1:].t()
            return logits if targets is None else self.loss(logits, targets)
        shared = _DenseItemGrad()                               # both parts of W's gradient, one buffer
        s = self.session_embedding(items, lengths, ngc_w, shared)
        return FullCatalogCrossEntropy.apply(s, self.embedding.weight, targets, shared)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Eq. 9-10: softmax over all items and cross-entropy (targets are item indices 1..n)."""
        return F.cross_entropy(logits.float(), targets - 1)
