"""SR-GNN model: connection matrices vs the official code's, batched scores vs a per-session
reference written like the official utils.get_slice + model.py, and learnability on a Markov chain."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srgnn.core.errors import ConfigError
from srgnn.graph_batch import build_session_graph
from srgnn.model import READOUTS, SRGNN, ModelConfig

SESSION = [1, 2, 3, 2, 4]


# ---- connection matrices written out by hand -------------------------------------------------
# Nodes [1, 2, 3, 4] (np.unique). Edges 1->2, 2->3, 3->2, 2->4.
# Official: A = concat([u_A_in, u_A_out]).T = [A_in | A_out], n x 2n.
OFFICIAL_A_1_2_3_2_4 = torch.tensor([
    # A_in (row v: predecessors / in-degree)   | A_out (row u: successors / out-degree)
    [0.0, 0.0, 0.0, 0.0,                         0.0, 1.0, 0.0, 0.0],
    [0.5, 0.0, 0.5, 0.0,                         0.0, 0.0, 0.5, 0.5],
    [0.0, 1.0, 0.0, 0.0,                         0.0, 1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0,                         0.0, 0.0, 0.0, 0.0],
])

# NGC: ngc_w = [0, w(1->2)=0.5, w(2->3)=0.25, w(3->2)=1.0, w(2->4)=0.5]
# in-degree(2) = 0.5 + 1.0, out-degree(2) = 0.25 + 0.5
NGC_W = [0.0, 0.5, 0.25, 1.0, 0.5]
NGC_A_1_2_3_2_4 = torch.tensor([
    [0.0,     0.0, 0.0,     0.0,                 0.0, 1.0, 0.0,     0.0],
    [1.0 / 3, 0.0, 2.0 / 3, 0.0,                 0.0, 0.0, 1.0 / 3, 2.0 / 3],
    [0.0,     1.0, 0.0,     0.0,                 0.0, 1.0, 0.0,     0.0],
    [0.0,     1.0, 0.0,     0.0,                 0.0, 0.0, 0.0,     0.0],
])

# FC: every click to every later click: 1->{2,3,4}, 2->{2,3,4}, 3->{2,4}
FC_A_1_2_3_2_4 = torch.tensor([
    [0.0,     0.0,     0.0,     0.0,             0.0, 1 / 3, 1 / 3, 1 / 3],
    [1 / 3,   1 / 3,   1 / 3,   0.0,             0.0, 1 / 3, 1 / 3, 1 / 3],
    [0.5,     0.5,     0.0,     0.0,             0.0, 0.5,   0.0,   0.5],
    [1 / 3,   1 / 3,   1 / 3,   0.0,             0.0, 0.0,   0.0,   0.0],
])


def _side_by_side(g, a, b, session=0):
    return torch.cat([g.dense(a)[session], g.dense(b)[session]], dim=1)


@pytest.mark.parametrize("static", [False, True])
def test_connection_matrices_match_official_for_1_2_3_2_4(static):
    # a second, padded session in the batch must not change the first one's graph
    items = torch.tensor([SESSION + [0, 0], [7, 7, 8, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 3])
    g = build_session_graph(items, lengths, static_shapes=static)
    assert g.node_items[:4].tolist() == [1, 2, 3, 4]
    assert g.n_nodes.tolist() == [4, 2]
    torch.testing.assert_close(_side_by_side(g, "A_in", "A_out"), OFFICIAL_A_1_2_3_2_4)
    # alias_inputs: position -> node, as the official code (nodes of session 1 follow session 0's)
    real = g.click_weight > 0 if g.click_weight is not None else slice(None)
    assert g.click_node[real].tolist() == [0, 1, 2, 1, 3, 4, 4, 5]
    assert g.last_node.tolist() == [3, 5]
    # [7, 7, 8]: a self-loop 7->7 (official keeps it), then 7->8
    torch.testing.assert_close(g.dense("A_out")[1, :2, :2], torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    torch.testing.assert_close(g.dense("A_in")[1, :2, :2], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


@pytest.mark.parametrize("static", [False, True])
def test_ngc_connection_matrices(static):
    g = build_session_graph(torch.tensor([SESSION]), torch.tensor([5]),
                            ngc_w=torch.tensor([NGC_W]), static_shapes=static)
    torch.testing.assert_close(_side_by_side(g, "A_in", "A_out"), NGC_A_1_2_3_2_4)


@pytest.mark.parametrize("static", [False, True])
def test_fc_connection_matrices(static):
    g = build_session_graph(torch.tensor([SESSION + [0]]), torch.tensor([5]),
                            full_connections=True, static_shapes=static)
    torch.testing.assert_close(_side_by_side(g, "A_in", "A_out"), OFFICIAL_A_1_2_3_2_4)
    torch.testing.assert_close(_side_by_side(g, "A_fc_in", "A_fc_out"), FC_A_1_2_3_2_4)


# ---- per-session reference (the official code's steps, one session at a time) ----------------
def reference_scores(model: SRGNN, items: np.ndarray, lengths: np.ndarray, ngc_w: np.ndarray | None):
    """Scores [B, n_items] computed like the official get_slice + GNNCell + compute_scores, looping
    over sessions, padded to the batch's longest session with 0 (so node 0 appears, as there)."""
    cfg, p = model.cfg, dict(model.named_parameters())
    len_max = int(lengths.max())
    out = []
    for b in range(len(lengths)):
        u_input = items[b, :len_max]
        node = np.unique(u_input)
        n = len(node)

        def normalised(u_A):
            u_sum_in = np.sum(u_A, 0)
            u_sum_in[np.where(u_sum_in == 0)] = 1
            u_A_in = np.divide(u_A, u_sum_in)
            u_sum_out = np.sum(u_A, 1)
            u_sum_out[np.where(u_sum_out == 0)] = 1
            u_A_out = np.divide(u_A.transpose(), u_sum_out)
            return torch.tensor(np.concatenate([u_A_in, u_A_out]).transpose(), dtype=torch.float32)

        u_A = np.zeros((n, n))
        for i in np.arange(len(u_input) - 1):
            if u_input[i + 1] == 0:
                break
            u = np.where(node == u_input[i])[0][0]
            v = np.where(node == u_input[i + 1])[0][0]
            u_A[u][v] = 1 if cfg.variant != "ngc" else ngc_w[b, i + 1]
        A = normalised(u_A)
        if cfg.variant == "fc":
            u_F = np.zeros((n, n))
            for i in range(lengths[b]):
                for j in range(i + 1, lengths[b]):
                    u_F[np.where(node == u_input[i])[0][0], np.where(node == u_input[j])[0][0]] = 1
            A_fc = normalised(u_F)
        alias = torch.tensor([np.where(node == i)[0][0] for i in u_input])
        mask = torch.tensor([1.0] * int(lengths[b]) + [0.0] * (len_max - int(lengths[b])))

        hidden = p["embedding.weight"][torch.tensor(node)]
        for _ in range(cfg.step):
            lin = lambda name, x: x @ p[f"gnn.{name}.weight"].T + p[f"gnn.{name}.bias"]
            input_in = A[:, :n] @ lin("linear_edge_in", hidden) + p["gnn.b_iah"]
            input_out = A[:, n:2 * n] @ lin("linear_edge_out", hidden) + p["gnn.b_oah"]
            parts = [input_in, input_out]
            if cfg.variant == "fc":
                parts += [A_fc[:, :n] @ lin("linear_edge_fc_in", hidden) + p["gnn.b_fc_in"],
                          A_fc[:, n:] @ lin("linear_edge_fc_out", hidden) + p["gnn.b_fc_out"]]
            gi = torch.cat(parts, 1) @ p["gnn.w_ih"].T + p["gnn.b_ih"]
            gh = hidden @ p["gnn.w_hh"].T + p["gnn.b_hh"]
            i_r, i_i, i_n = gi.chunk(3, 1)
            h_r, h_i, h_n = gh.chunk(3, 1)
            resetgate, inputgate = torch.sigmoid(i_r + h_r), torch.sigmoid(i_i + h_i)
            newgate = torch.tanh(i_n + resetgate * h_n)
            hidden = newgate + inputgate * (hidden - newgate)
        seq_hidden = hidden[alias]
        ht = seq_hidden[int(mask.sum()) - 1]
        if cfg.readout == "last":
            a = ht
        elif cfg.readout == "avg":
            a = (seq_hidden * mask[:, None]).sum(0) / mask.sum()
        else:
            q1 = ht @ p["linear_one.weight"].T + p["linear_one.bias"]
            q2 = seq_hidden @ p["linear_two.weight"].T + p["linear_two.bias"]
            alpha = torch.sigmoid(q1 + q2) @ p["linear_three.weight"].T
            a = torch.sum(alpha * seq_hidden * mask[:, None], 0)
            if cfg.readout == "hybrid":
                a = torch.cat([a, ht]) @ p["linear_transform.weight"].T + p["linear_transform.bias"]
        out.append(a @ p["embedding.weight"][1:].T)
    return torch.stack(out)


def _ragged_batch(rng, n_items, batch, max_len):
    lengths = rng.integers(1, max_len + 1, size=batch)
    lengths[0], lengths[1] = 1, max_len                 # the extremes: one click, a full row
    items = np.zeros((batch, max_len), dtype=np.int64)
    ngc_w = np.zeros((batch, max_len), dtype=np.float32)
    for b, n in enumerate(lengths):
        seq = rng.integers(1, n_items + 1, size=n)
        if n >= 4:
            seq[3] = seq[1]                             # a repeat -> shared node, cycle
        if n >= 6:
            seq[4], seq[5] = seq[1], seq[2]             # a repeated transition (counts once)
        items[b, :n] = seq
        ngc_w[b, 1:n] = rng.uniform(0.05, 1.0, size=n - 1)
        ngc_w[b, 1:n][seq[1:] == seq[:-1]] = 0.3
    # a repeated transition has one global weight
    for b, n in enumerate(lengths):
        seen = {}
        for i in range(1, n):
            key = (items[b, i - 1], items[b, i])
            ngc_w[b, i] = seen.setdefault(key, ngc_w[b, i])
    return items, lengths, ngc_w


@pytest.mark.parametrize("variant,readout,step,static", [
    (variant, readout, 1 + (i + j) % 2, (i + j) % 2 == 1)     # every variant x readout, steps 1-2,
    for i, variant in enumerate(("srgnn", "ngc", "fc"))       # dynamic and static shapes mixed
    for j, readout in enumerate(READOUTS)
] + [("srgnn", "hybrid", 1, True), ("srgnn", "hybrid", 2, False)])
def test_batched_scores_equal_per_session_reference(variant, readout, step, static):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    n_items, max_len = 30, 8
    model = SRGNN(ModelConfig(n_items=n_items, hidden_size=16, step=step, variant=variant,
                              readout=readout, max_len=max_len, static_shapes=static))
    items, lengths, ngc_w = _ragged_batch(rng, n_items, batch=12, max_len=max_len)
    # pad the batch beyond the longest session: trimming / static slots must not matter
    items = np.pad(items, ((0, 0), (0, 3)))
    ngc_w = np.pad(ngc_w, ((0, 0), (0, 3)))
    with torch.no_grad():
        got = model(torch.from_numpy(items), torch.from_numpy(lengths), torch.from_numpy(ngc_w))
        want = reference_scores(model, items, lengths, ngc_w)
    assert got.shape == (12, n_items)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter_and_node_order_is_irrelevant():
    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=20, hidden_size=8, variant="fc"))
    items = torch.tensor([[3, 9, 3, 5, 0], [12, 1, 0, 0, 0]])
    lengths = torch.tensor([4, 2])
    logits = model(items, lengths)
    model.loss(logits, torch.tensor([4, 7])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # relabel items by a permutation that reverses the node order: scores follow the relabelling
    perm = torch.arange(21)
    perm[[3, 9, 5]] = torch.tensor([9, 5, 3])
    model2 = SRGNN(ModelConfig(n_items=20, hidden_size=8, variant="fc"))
    model2.load_state_dict(model.state_dict())
    with torch.no_grad():
        model2.embedding.weight[perm] = model.embedding.weight
        got = model2(perm[items] * (items > 0), lengths)
    torch.testing.assert_close(got[:, perm[1:] - 1], logits.detach(), atol=1e-5, rtol=1e-5)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="n_items"):
        SRGNN(ModelConfig())
    with pytest.raises(ConfigError, match="readout"):
        ModelConfig().replace(readout="max")
    model = SRGNN(ModelConfig(n_items=5, variant="ngc"))
    with pytest.raises(ConfigError, match="ngc_w"):
        model(torch.tensor([[1, 2]]), torch.tensor([2]))
    assert set(READOUTS) == {"hybrid", "att", "last", "avg"}


def test_official_initialisation_range():
    model = SRGNN(ModelConfig(n_items=50, hidden_size=100))
    bound = 1 / math.sqrt(100)
    for name, p in model.named_parameters():
        assert p.abs().max() <= bound, name
        assert p.abs().max() > 0.9 * bound, name  # uniform over the whole range, not zeros


def test_fused_training_loss_equals_logits_cross_entropy():
    torch.manual_seed(3)
    model = SRGNN(ModelConfig(n_items=40, hidden_size=12, readout="hybrid"))
    lengths = torch.tensor([1, 4, 7, 2, 5])
    items = torch.randint(1, 41, (5, 9)) * (torch.arange(9) < lengths[:, None])
    targets = torch.tensor([1, 40, 7, 7, 19])
    params = list(model.parameters())
    fused = model(items, lengths, targets=targets)
    fused_grads = torch.autograd.grad(fused, params)
    plain = model.loss(model(items, lengths), targets)
    plain_grads = torch.autograd.grad(plain, params)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)
    for name, a, b in zip([n for n, _ in model.named_parameters()], fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert float(fused_grads[0][0].abs().sum()) == 0.0  # the padding row gets no gradient here

    # through .backward() (AccumulateGrad), twice into existing .grad: the lookup's rows are added
    # into the score's dense gradient once per pass, and the passes add up
    model.zero_grad(set_to_none=True)
    for _ in range(2):
        model(items, lengths, targets=targets).backward()
    for (name, p), b in zip(model.named_parameters(), plain_grads):
        torch.testing.assert_close(p.grad, 2 * b, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("variant", ["srgnn", "fc"])
def test_packed_path_has_the_same_gradients_as_the_static_shapes_path(variant):
    """The default (packed, trimmed) graphs and static_shapes (B * L node slots, zero-weight
    padding) give the same loss and the same gradients."""
    torch.manual_seed(4)
    packed = SRGNN(ModelConfig(n_items=30, hidden_size=8, step=2, variant=variant))
    per_node = SRGNN(ModelConfig(n_items=30, hidden_size=8, step=2, variant=variant, static_shapes=True))
    per_node.load_state_dict(packed.state_dict())
    lengths = torch.tensor([3, 6, 1, 5, 6])
    items = torch.randint(1, 6, (5, 7)) * (torch.arange(7) < lengths[:, None])  # items repeat a lot
    targets = torch.tensor([2, 30, 5, 5, 11])
    for model in (packed, per_node):
        model(items, lengths, targets=targets).backward()
    assert packed.embedding.weight.grad.layout == torch.strided
    for (name, a), b in zip(packed.named_parameters(), per_node.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bad_lengths_are_named():
    from srgnn.core.errors import InputError
    with pytest.raises(InputError, match=r"lengths in \[0, 2\]"):
        build_session_graph(torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 0]))
    with pytest.raises(InputError, match="1..2"):
        build_session_graph(torch.tensor([[1, 2], [3, 0]]), torch.tensor([3, 1]))


def test_the_model_is_pure_its_forward_never_loads_the_native_kernel():
    """The loss engine is the trainer's choice: a fresh process that builds, trains (forward with
    targets, backward) and scores the model never imports srgnn.fused_cpu, so it never builds or
    loads the C++ kernel, and the model's options hold no training choice."""
    import dataclasses
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, torch\n"
            "from srgnn.model import SRGNN, ModelConfig\n"
            "m = SRGNN(ModelConfig(n_items=9, hidden_size=4, max_len=3))\n"
            "items = torch.tensor([[1, 2, 0], [3, 3, 4]]); lengths = torch.tensor([2, 3])\n"
            "m(items, lengths, targets=torch.tensor([5, 6])).backward()\n"
            "assert m(items, lengths).shape == (2, 9)\n"
            "print(sorted(k for k in sys.modules if k.startswith('srgnn')))\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)}, check=True).stdout
    assert "srgnn.model" in out and "srgnn.fused_cpu" not in out and "srgnn.train" not in out
    assert "kernel" not in {f.name for f in dataclasses.fields(ModelConfig)}
