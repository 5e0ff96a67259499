"""Session graphs for a whole batch, built on the batch's device with sort/scatter ops.

The official code builds each session's graph in numpy, one session at a time (utils.get_slice).
Here the graphs of the whole batch come out of a handful of tensor ops, with no Python loop over
sessions, and are kept *packed*: the nodes of all sessions are stacked in one ``[M, d]`` table
(session 0's nodes, then session 1's, ...), so the gated graph network works on real nodes only
instead of ``B x max_nodes`` padded rows.

Per session (as the official code): the nodes are the distinct items, in ascending item order
(``np.unique``); ``W[u, v] = 1`` when the session holds the transition ``u -> v`` (a repeated
transition counts once). The connection matrix A_s = [A_in ; A_out] is normalised as the official
code does it:

- ``A_in[v, u]  = W[u, v] / sum_u' W[u', v]``  (row v: v's predecessors, weighted 1/in-degree(v))
- ``A_out[u, v] = W[u, v] / sum_v' W[u, v']``  (row u: u's successors, weighted 1/out-degree(u))

with a zero degree read as 1 (that row stays zero). Variants:

- NGC: ``W[u, v]`` is the global graph's weight of ``u -> v`` (the shards' ``ngc_w``) instead of 1,
  then normalised by the same row/column sums of the weighted matrix.
- FC: a second, boolean matrix ``F[u, v] = 1`` when ``u`` is clicked before ``v`` anywhere in the
  session (all higher-order links, the consecutive ones included; a re-clicked item links to
  itself), normalised the same way into ``A_fc_in`` / ``A_fc_out``.

Sparse matrices are (rows, cols, vals) triples over the packed node ids; ``A @ x`` is an
``index_add_``. ``static_shapes=True`` keeps every size a function of ``[B, L]`` alone (node
capacity ``B * L``, zero-weight slots), so nothing waits on the device: for CUDA graphs /
torch.compile. Otherwise the batch is trimmed to its longest session and compacted (a few host
syncs, cheapest on CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from srgnn.core.errors import InputError


@dataclass
class SparseMatrix:
    """An ``[n, n]`` sparse matrix over packed node ids: ``A[rows[k], cols[k]] += vals[k]``."""

    rows: torch.Tensor  # int64 [E]
    cols: torch.Tensor  # int64 [E]
    vals: torch.Tensor  # float32 [E]
    n: int

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        msg = self.vals.unsqueeze(1) * x.index_select(0, self.cols)
        return msg.new_zeros((self.n, x.shape[1])).index_add_(0, self.rows, msg)

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.n, self.n, dtype=self.vals.dtype, device=self.vals.device)
        return dense.index_put_((self.rows, self.cols), self.vals, accumulate=True)


@dataclass
class SessionGraph:
    node_items: torch.Tensor     # int64 [M]: item index of each packed node (0 on unused slots)
    n_nodes: torch.Tensor        # int64 [B]: distinct items per session
    node_offset: torch.Tensor    # int64 [B]: id of each session's first node
    click_node: torch.Tensor     # int64 [P]: node of each click (the official alias_inputs)
    click_session: torch.Tensor  # int64 [P]: session of each click
    click_weight: torch.Tensor | None  # float32 [P]: 1 for real clicks, 0 for padding slots (static
    #                                  shapes only; None when every packed click is real)
    last_node: torch.Tensor      # int64 [B]: node of each session's last click (v_n)
    lengths: torch.Tensor        # int64 [B]
    A_in: SparseMatrix
    A_out: SparseMatrix
    A_fc_in: SparseMatrix | None = None
    A_fc_out: SparseMatrix | None = None

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    def dense(self, name: str = "A_in") -> torch.Tensor:
        """Per-session dense ``[B, N, N]`` view of one matrix (N = most nodes in a session), in the
        official node order. For tests and inspection, not for the hot path."""
        full = getattr(self, name).to_dense()
        n_max = int(self.n_nodes.max())
        out = torch.zeros(self.batch_size, n_max, n_max, dtype=full.dtype, device=full.device)
        for b in range(self.batch_size):
            o, k = int(self.node_offset[b]), int(self.n_nodes[b])
            out[b, :k, :k] = full[o:o + k, o:o + k]
        return out


def _unique_edges(src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor,
                  n: int, compact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each distinct (src, dst) once, with its weight; invalid or repeated pairs get weight 0
    (and are dropped when ``compact``). Inputs are flat [E]."""
    key = torch.where(valid, src * n + dst, torch.full_like(src, n * n))
    key, order = key.sort()
    first = torch.ones_like(valid)
    first[1:] = key[1:] != key[:-1]
    keep = first & (key < n * n)
    w = torch.where(keep, weight[order], torch.zeros_like(weight))
    key = torch.where(keep, key, torch.zeros_like(key))
    if compact:
        key, w = key[keep], w[keep]
    return key // n, key % n, w


def _normalised(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor, n: int
                ) -> tuple[SparseMatrix, SparseMatrix]:
    """A_in (row v: predecessors / in-degree(v)) and A_out (row u: successors / out-degree(u))."""
    out_degree = w.new_zeros(n).index_add_(0, src, w)
    in_degree = w.new_zeros(n).index_add_(0, dst, w)
    out_degree = torch.where(out_degree > 0, out_degree, torch.ones_like(out_degree))
    in_degree = torch.where(in_degree > 0, in_degree, torch.ones_like(in_degree))
    A_in = SparseMatrix(rows=dst, cols=src, vals=w / in_degree[dst], n=n)
    A_out = SparseMatrix(rows=src, cols=dst, vals=w / out_degree[src], n=n)
    return A_in, A_out


def build_session_graph(items: torch.Tensor, lengths: torch.Tensor, ngc_w: torch.Tensor | None = None,
                        full_connections: bool = False, static_shapes: bool = False) -> SessionGraph:
    """The batch's session graphs from right-padded ``items [B, L]`` and ``lengths [B]`` (>= 1).

    ``ngc_w [B, L]`` (NGC variant): ``ngc_w[b, i]`` weighs the transition ``items[b, i-1] -> items[b, i]``.
    """
    B = items.shape[0]
    if not static_shapes:  # trim the padding columns no session uses
        width, shortest = int(lengths.max()), int(lengths.min())
        if shortest < 1 or width > items.shape[1]:
            raise InputError(f"batch of {B} prefixes has lengths in [{shortest}, {width}]; each must be "
                             f"1..{items.shape[1]} (the items width)")
        items = items[:, :width]
        ngc_w = None if ngc_w is None else ngc_w[:, :width]
    L = items.shape[1]
    device = items.device
    pos = torch.arange(L, device=device)
    click_mask = pos.unsqueeze(0) < lengths.unsqueeze(1)                  # [B, L]

    # Nodes: sort each session's clicks (padding last), a node starts where the item changes.
    sentinel = torch.iinfo(items.dtype).max
    sorted_items, order = torch.where(click_mask, items, sentinel).sort(dim=1)
    first = click_mask.clone()                                            # sorted real clicks lead
    first[:, 1:] &= sorted_items[:, 1:] != sorted_items[:, :-1]
    n_nodes = first.sum(1)
    node_offset = n_nodes.cumsum(0) - n_nodes
    local = first.cumsum(1) - 1                                           # node of each sorted click
    alias = torch.empty_like(local).scatter_(1, order, local) + node_offset.unsqueeze(1)  # [B, L]
    M = B * L if static_shapes else int(n_nodes.sum())
    node_slot = torch.where(first, local + node_offset.unsqueeze(1), M).flatten()
    node_items = items.new_zeros(M + 1).scatter_(
        0, node_slot, torch.where(first, sorted_items, 0).flatten())[:M]

    # Clicks (the official alias_inputs), packed; padding slots kept with weight 0 when static.
    session_of = torch.arange(B, device=device).unsqueeze(1).expand(B, L)
    if static_shapes:
        click_node, click_session = alias.flatten(), session_of.flatten()
        click_weight = click_mask.flatten().float()
    else:
        click_node, click_session = alias[click_mask], session_of[click_mask]
        click_weight = None
    last_node = alias.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)

    # A_s = [A_in ; A_out] from the consecutive clicks (repeated transitions once).
    if ngc_w is None:
        weight = torch.ones(B, L - 1, device=device)
    else:
        weight = ngc_w[:, 1:].float()
    src, dst, w = _unique_edges(alias[:, :-1].flatten(), alias[:, 1:].flatten(),
                                click_mask[:, 1:].flatten(), weight.flatten(), M, not static_shapes)
    A_in, A_out = _normalised(src, dst, w, M)

    graph = SessionGraph(node_items=node_items, n_nodes=n_nodes, node_offset=node_offset,
                         click_node=click_node, click_session=click_session, click_weight=click_weight,
                         last_node=last_node, lengths=lengths, A_in=A_in, A_out=A_out)
    if full_connections:  # every click linked to every later click of its session
        i, j = torch.triu_indices(L, L, offset=1, device=device)
        src, dst, w = _unique_edges(alias[:, i].flatten(), alias[:, j].flatten(),
                                    click_mask[:, j].flatten(), torch.ones(B * i.shape[0], device=device),
                                    M, not static_shapes)
        graph.A_fc_in, graph.A_fc_out = _normalised(src, dst, w, M)
    return graph
