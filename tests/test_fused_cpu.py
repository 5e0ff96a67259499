"""The native CPU kernel (the trainer's ``kernel: fused``, srgnn.fused_cpu) against the eager model, and LeanAdam.

The kernel is compiled once per machine (~35 s on 2 cores, cached under ~/.cache/torch_extensions).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srgnn.core.errors import ConfigError
from srgnn import fused_cpu
from srgnn.model import READOUTS, SRGNN, VARIANTS, ModelConfig
from srgnn.optim import LeanAdam, make_optimizer
from srgnn.train import TrainStep
from srgnn.data import Batch

N_ITEMS, L = 12, 6


def batch(seed: int, variant: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Sessions with repeated items and repeated transitions, lengths 1..L, NGC weights that depend
    on the transition only (as the global graph's do)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 2, 6, 5, 3, 6, 4])
    items = torch.randint(1, 5, (len(lengths), L), generator=g)
    items[torch.arange(L)[None] >= lengths[:, None]] = 0
    ngc = None
    if variant == "ngc":
        weight = torch.rand(N_ITEMS + 1, N_ITEMS + 1, generator=g) + 0.1
        ngc = torch.zeros(len(lengths), L)
        ngc[:, 1:] = weight[items[:, :-1], items[:, 1:]] * (items[:, 1:] > 0)
    targets = torch.randint(1, N_ITEMS + 1, (len(lengths),), generator=g)
    return items, lengths, ngc, targets


@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_loss_and_gradients_equal_the_eager_models(variant, readout, step):
    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, step=step, variant=variant, readout=readout,
                              max_len=L))
    items, lengths, ngc, targets = batch(step, variant)
    eager = model(items, lengths, ngc, targets)
    eager.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    fused = fused_cpu.KernelLoss(model)(items, lengths, ngc, targets)
    fused.backward()
    assert fused.item() == pytest.approx(eager.item(), abs=1e-6)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, want[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_without_autograd_equal_autograd_backward(variant):
    """fused_cpu.loss_and_grads (the single-process trainers' path) = scale * loss.backward() through
    FusedLoss, and it adds to gradients already there, as backward() does."""
    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, variant=variant, max_len=L))
    items, lengths, ngc, targets = batch(5, variant)
    (fused_cpu.fused_loss(model, items, lengths, ngc, targets) * 2.5).backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = fused_cpu.loss_and_grads(model, items, lengths, ngc, targets, scale=2.5)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(fused_cpu.fused_loss(model, items, lengths, ngc, targets).item(), abs=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], atol=0, rtol=0, msg=name)
    fused_cpu.loss_and_grads(model, items, lengths, ngc, targets, scale=2.5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * want[name], atol=1e-7, rtol=1e-6, msg=name)


def test_fused_training_follows_eager_training():
    """Twenty Adam steps on a 200-item catalog (items 1..50 clicked) whose next item is the last one + 1: the two engines
    end at the same weights (to float32 rounding), and the loss goes down."""
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(10):
        lengths = torch.randint(1, 11, (32,), generator=g)
        items = torch.randint(1, 51, (32, 10), generator=g)
        items[torch.arange(10)[None] >= lengths[:, None]] = 0
        last = items.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
        batches.append(Batch(items, lengths, last % 200 + 1))
    runs = {}
    for kernel in ("eager", "fused"):
        torch.manual_seed(1)
        model = SRGNN(ModelConfig(n_items=200, hidden_size=16, max_len=10))
        opt = make_optimizer(model.parameters(), lr=3e-2, l2=1e-5)
        step = TrainStep(model, opt, kernel=kernel)
        assert step.engine == kernel
        losses = [float(step(b, 1 / len(b))) / len(b) for b in batches + batches]
        runs[kernel] = (model.state_dict(), losses)
    (w_eager, l_eager), (w_fused, l_fused) = runs["eager"], runs["fused"]
    assert l_fused == pytest.approx(l_eager, abs=1e-4)
    assert l_fused[-1] < l_fused[0] - 0.5
    for name in w_eager:
        torch.testing.assert_close(w_fused[name], w_eager[name], atol=1e-4, rtol=1e-4, msg=name)


def test_fused_kernel_refuses_what_it_cannot_run():
    items, lengths, _, targets = batch(0, "srgnn")
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=L)).double()
    with pytest.raises(ConfigError, match="float32 on the CPU"):
        fused_cpu.fused_loss(model, items, lengths, None, targets)
    model = model.float()
    with pytest.raises(ConfigError, match="ngc_w"):
        fused_cpu.fused_loss(SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=L, variant="ngc")),
                             items, lengths, None, targets)
    bad = lengths.clone()
    bad[3] = 0
    with pytest.raises(RuntimeError, match="session 3 has length 0; each must be 1..6"):
        fused_cpu.fused_loss(model, items, bad, None, targets)
    with pytest.raises(RuntimeError, match="target 13 of row 0 is outside 1..12"):
        fused_cpu.fused_loss(model, items, lengths, None, torch.full_like(targets, N_ITEMS + 1))
    # the model itself never takes the kernel: with targets it is the eager loss, also in float64
    assert model.double()(items, lengths, None, targets).dtype == torch.float64


def test_auto_takes_the_kernel_where_it_can_run():
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=L))
    assert fused_cpu.use_kernel("auto", model) and fused_cpu.use_kernel("fused", model)
    assert not fused_cpu.use_kernel("eager", model)
    assert not fused_cpu.use_kernel("auto", model, autocast=True)
    assert not fused_cpu.use_kernel("auto", model, compiled=True)
    assert not fused_cpu.use_kernel("auto", SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=L,
                                                              static_shapes=True)))
    assert not fused_cpu.use_kernel("auto", SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=L)).double())
    opt = make_optimizer(model.parameters(), lr=1e-3, l2=1e-5)
    assert TrainStep(model, opt).engine == "fused"
    assert TrainStep(model, opt, kernel="eager").engine == "eager"
    items, lengths, _, targets = batch(0, "srgnn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(items, lengths, None, targets).isfinite()          # the eager model under autocast


@pytest.mark.slow
def test_the_build_is_named_by_what_it_depends_on_and_reused_without_a_compiler(tmp_path):
    """Built once, the kernel's folder is found from any checkout with the same source: a process
    from another copy of the source, with no compiler or ninja on PATH, imports it as it is."""
    module = fused_cpu.extension()
    flags = fused_cpu.compiler_flags()
    source = fused_cpu.SOURCE.read_bytes()
    name = fused_cpu.build_name(source, flags)
    folder = fused_cpu.build_folder(name)
    assert Path(module.__file__).parent == folder and (folder / fused_cpu.BUILT_MARK).is_file()
    assert fused_cpu.build_name(source, flags) == name                  # the same inputs, the same name
    assert fused_cpu.build_name(source + b" ", flags) != name           # another source, another build
    assert fused_cpu.build_name(source, [*flags, "-DX"]) != name        # other flags, another build
    copy = tmp_path / "checkout"
    (copy / "srgnn" / "csrc").mkdir(parents=True)
    (copy / "srgnn" / "csrc" / fused_cpu.SOURCE.name).write_bytes(source)
    root = Path(fused_cpu.__file__).resolve().parents[1]
    script = (f"import sys; sys.path.insert(0, {str(root)!r}); from pathlib import Path; "
              "from srgnn import fused_cpu; "
              f"fused_cpu.SOURCE = Path({str(copy / 'srgnn' / 'csrc' / fused_cpu.SOURCE.name)!r}); "
              "print(fused_cpu.extension().__file__)")
    env = {**os.environ, "PATH": str(tmp_path / "empty")}               # no c++, no ninja
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip().splitlines()[-1]).parent == folder


def test_lean_adam_is_adam():
    """Bit for bit the update of torch.optim.Adam(fused=True), across a learning-rate change, and the
    general path when a parameter has no gradient."""
    torch.manual_seed(0)
    a = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    ref = torch.optim.Adam(a, lr=1e-2, weight_decay=1e-5, fused=True)
    lean = LeanAdam(b, lr=1e-2, weight_decay=1e-5)
    for i in range(6):
        grads = [torch.randn_like(t) for t in a]
        if i == 4:
            grads[1] = None
        for params in (a, b):
            for t, grad in zip(params, grads):
                t.grad = None if grad is None else grad.clone()
        ref.step()
        lean.step()
        if i == 2:
            for group in ref.param_groups + lean.param_groups:
                group["lr"] = 1e-3
        for x, y in zip(a, b):
            assert torch.equal(x, y), i
    assert torch.equal(lean.state_dict()["state"][0]["step"], ref.state_dict()["state"][0]["step"])
    assert lean.state_dict()["state"][1]["step"] == 5

    # a checkpoint round trip (torch.save, weights_only load) carries on with the same updates
    buffer = io.BytesIO()
    torch.save(lean.state_dict(), buffer)
    buffer.seek(0)
    resumed = LeanAdam(b, lr=1e-3, weight_decay=1e-5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(2):
        grads = [torch.randn_like(t) for t in a]
        for params in (a, b):
            for t, grad in zip(params, grads):
                t.grad = grad.clone()
        ref.step()
        resumed.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert [int(s["step"]) for s in resumed.state.values()] == [8, 7]
