"""The CUDA-graph training step, on CPU: its fixed-buffer step (what the graph replays) and its
capture bookkeeping. The capture itself runs in bench/gpu.sh on a GPU (docs/benchmarks.md)."""
from __future__ import annotations

import pytest
import torch

from srgnn.core.errors import ConfigError
from srgnn.cuda_graphs import GraphedTrainStep
from srgnn.data import Batch
from pipelines.train.job import build_model, train_job
from srgnn.train import TrainState, TrainStep, train_epoch
from test_train_distributed import RUN_DATE, markov_examples, small_config, write_shards

L = 6


def _batches(sizes: list[int], n_items: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        lengths = torch.randint(1, L + 1, (n,), generator=g)
        items = torch.randint(1, n_items + 1, (n, L), generator=g)
        items[torch.arange(L).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
        ngc_w = torch.rand(n, L, generator=g) * (items > 0)
        ngc_w[:, 0] = 0.0
        out.append(Batch(items=items, lengths=lengths, targets=torch.randint(1, n_items + 1, (n,), generator=g),
                         ngc_w=ngc_w))
    return out


def _model_and_adam(cfg, n_items: int):
    torch.manual_seed(0)
    model = build_model(cfg, n_items, L)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)


@pytest.mark.parametrize("variant", ["srgnn", "ngc", "fc"])
def test_fixed_buffer_step_trains_exactly_like_the_eager_job_step(tmp_path, variant):
    """Three steps, the last a short batch padded with zero-weight rows: same losses and the same
    parameters as the job's eager step on the packed (unpadded) graphs."""
    n_items, sizes = 20, [4, 4, 3]
    batches = _batches(sizes, n_items, seed=1)
    eager_cfg = small_config(tmp_path, variant=variant, batch_size=4, hidden_size=8)
    eager, eager_opt = _model_and_adam(eager_cfg, n_items)
    fixed_cfg = small_config(tmp_path, variant=variant, batch_size=4, hidden_size=8, cuda_graphs=True,
                             device="cuda")
    fixed, fixed_opt = _model_and_adam(fixed_cfg, n_items)
    assert fixed.cfg.static_shapes and not eager.cfg.static_shapes
    step = GraphedTrainStep(fixed, fixed_opt, 4, L, variant, torch.device("cpu"), use_graph=False)

    run = dict(schedule=sizes, my_examples=sum(sizes), local_batch=4)
    a = train_epoch(TrainStep(eager, eager_opt, kernel="eager"), iter(batches), TrainState(), **run)
    b = train_epoch(TrainStep(fixed, fixed_opt, graphed=step), iter(batches), TrainState(), **run)
    assert a["examples"] == b["examples"] == 11
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for (name, p), q in zip(eager.named_parameters(), fixed.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=name)
    # the padding rows are the one-click session [1] -> 1, at weight 0
    assert step.real.tolist() == [1.0, 1.0, 1.0, 0.0] and step.row_weight[3] == 0.0
    assert step.items[3].tolist() == [1] + [0] * (L - 1) and int(step.lengths[3]) == 1


def test_capture_bookkeeping_puts_parameters_and_fresh_optimiser_state_back(tmp_path):
    """Capture warms up with real Adam steps; restoring must leave the model and a fresh Adam as
    they were, so the first replayed step equals a fresh run's first step."""
    n_items = 20
    batches = _batches([4, 4], n_items, seed=2)
    cfg = small_config(tmp_path, batch_size=4, hidden_size=8, cuda_graphs=True, device="cuda")
    model, opt = _model_and_adam(cfg, n_items)
    ref, ref_opt = _model_and_adam(cfg, n_items)
    step = GraphedTrainStep(model, opt, 4, L, "srgnn", torch.device("cpu"), use_graph=False)
    before = [p.detach().clone() for p in model.parameters()]

    snapshot = step._snapshot()
    for batch in batches:           # what capture's warm-up does
        step.step(batch, 0.25)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    step._restore(snapshot)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert all(float(v.abs().sum()) == 0.0 for s in opt.state.values() for v in s.values() if torch.is_tensor(v))

    ref_step = GraphedTrainStep(ref, ref_opt, 4, L, "srgnn", torch.device("cpu"), use_graph=False)
    loss = step.step(batches[1], 0.25)
    ref_loss = ref_step.step(batches[1], 0.25)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_cuda_graphs_needs_one_cuda_process(tmp_path):
    with pytest.raises(ConfigError, match="--cuda-graphs"):
        small_config(tmp_path, cuda_graphs=True, device="cpu").validate()
    with pytest.raises(ConfigError, match="excludes --compile"):
        small_config(tmp_path, cuda_graphs=True, compile=True).validate()
    with pytest.raises(ValueError, match="static_shapes"):
        model, opt = _model_and_adam(small_config(tmp_path), 10)
        GraphedTrainStep(model, opt, 4, L, "srgnn", torch.device("cpu"), use_graph=False)
    if torch.cuda.is_available():
        return
    write_shards(tmp_path, RUN_DATE, {"train": (markov_examples(40, 1), 20), "valid": (markov_examples(20, 2), 20),
                                      "test": (markov_examples(20, 3), 20)})
    with pytest.raises(ConfigError, match="needs exactly one CUDA process; this run has 1 process"):
        train_job(small_config(tmp_path, cuda_graphs=True, device="auto"))


@pytest.mark.parametrize("variant,readout,amp", [("srgnn", "hybrid", None), ("ngc", "att", None),
                                                 ("fc", "avg", None), ("srgnn", "last", torch.bfloat16)])
def test_the_captured_step_reads_nothing_back_from_the_device(variant, readout, amp):
    """CUDA graph capture forbids host syncs (``.item()``, ``int(t)``, boolean-mask indexing, ...).
    Under FakeTensorMode tensors carry shapes but no data, so any such read raises: the step the
    graph captures (load, static-shape forward, loss, backward) runs there without one. Adam is
    swapped for SGD: capturable Adam runs on CUDA only and is PyTorch's own capture-safe kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from srgnn.model import SRGNN, ModelConfig

    cpu = torch.device("cpu")
    with FakeTensorMode():
        model = SRGNN(ModelConfig(n_items=30, hidden_size=8, max_len=L, variant=variant, readout=readout,
                                  static_shapes=True))
        step = GraphedTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, L, variant, cpu,
                                autocast_dtype=amp, use_graph=False)
        batch = Batch(items=torch.randint(1, 31, (3, L)), lengths=torch.tensor([1, 3, L]),
                      targets=torch.randint(1, 31, (3,)), ngc_w=torch.rand(3, L))
        loss = step.step(batch, 1 / 3)                   # a short batch: padding rows too
        assert loss.shape == () and model.embedding.weight.grad.shape == (31, 8)

    # the check has teeth: the packed (non-static) graphs read the longest session's length back
    with FakeTensorMode():
        packed = SRGNN(ModelConfig(n_items=30, hidden_size=8, max_len=L))
        with pytest.raises(Exception, match="aten._local_scalar_dense"):
            packed(torch.randint(1, 31, (4, L)), torch.tensor([1, 3, L, 2]))
