"""SR-GNN's training loss on the CPU as one native forward and one native backward (the trainer's
``kernel: fused``, and what ``kernel: auto``, the default, runs wherever it can: :func:`use_kernel`).

The same loss and gradients as :meth:`srgnn.model.SRGNN.forward` with targets (the tests hold the two
to 1e-6 for every variant, readout and step count), for float32 on the CPU. :mod:`srgnn.model` stays
the paper's reference; this is its engine on CPUs, where eager PyTorch spends most of a small
catalog's step on ~400 small calls and their autograd records rather than on arithmetic
(docs/benchmarks.md). The C++ source (``csrc/srgnn_fused_cpu.cpp``) is compiled on first
use with the C++ compiler and ninja (``torch.utils.cpp_extension``), ~35 s on 2 cores, and cached
under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) in a folder named by a hash of
the source, the compiler flags, torch's version and the interpreter's ABI (:func:`build_name`). Once
a folder holds a finished build, any checkout or virtualenv with the same source, torch and Python
imports it directly, with no compiler, ninja or rebuild. torch's own up-to-date check would rebuild
whenever the source path or torch's include path differs, such as a CI clone beside a working copy.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sysconfig
import time
import threading
from pathlib import Path
from types import ModuleType

import torch

from srgnn.core.errors import ConfigError, InputError
from srgnn.core.log import get_logger

log = get_logger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "srgnn_fused_cpu.cpp"
READOUT_CODES = {"hybrid": 0, "att": 1, "last": 2, "avg": 3}
_lock = threading.Lock()
_extension: ModuleType | None = None
_auto_off: str | None = None   # why kernel 'auto' fell back to eager in this process (no compiler, build failed)
BUILT_MARK = "srgnn_build_complete"   # written into a build folder once its module imported


def compiler_flags() -> list[str]:
    """-mavx2 -mfma where torch reports AVX2/AVX512 (so a build is per machine kind), else none."""
    avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return ["-O3", "-mavx2", "-mfma"] if avx2 else ["-O3"]


def build_name(source: bytes, flags: list[str]) -> str:
    """The module's and its build folder's name: a hash of what the build depends on (the source,
    the flags, torch's version, the interpreter's extension ABI), not of where the files lie."""
    key = hashlib.sha256()
    for part in (source, " ".join(flags).encode(), torch.__version__.encode(),
                 str(sysconfig.get_config_var("EXT_SUFFIX")).encode()):
        key.update(part + b"\0")
    return f"srgnn_fused_cpu_{key.hexdigest()[:16]}"


def build_folder(name: str) -> Path:
    """``$TORCH_EXTENSIONS_DIR/<name>`` (default root ``~/.cache/torch_extensions``)."""
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def _import_built(name: str, folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extension() -> ModuleType:
    """The compiled kernel: imported from its build folder when a finished build is there, else
    built (once per machine kind and source version, ~35 s) and then imported."""
    global _extension
    with _lock:
        if _extension is None:
            flags = compiler_flags()
            name = build_name(SOURCE.read_bytes(), flags)
            folder = build_folder(name)
            if (folder / BUILT_MARK).is_file():
                _extension = _import_built(name, folder)
                log.info("kernel 'fused': %s imported from %s", SOURCE.name, folder)
                return _extension
            from torch.utils.cpp_extension import load
            if shutil.which("ninja") is None:   # pip's ninja sits beside this interpreter, maybe not on PATH
                os.environ["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", "")
            if shutil.which(os.environ.get("CXX", "c++")) is None:
                raise ConfigError("kernel 'fused' compiles C++ on first use: no C++ compiler (c++ or $CXX) on "
                                  "PATH; install one (e.g. apt-get install g++) or use kernel 'eager'")
            log.info("kernel 'fused': building %s into %s (once per machine kind and source version, ~35 s)",
                     SOURCE.name, folder)
            start = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            _extension = load(name=name, sources=[str(SOURCE)], extra_cflags=flags, build_directory=str(folder))
            (folder / BUILT_MARK).write_text(f"{SOURCE.name} {' '.join(flags)} torch {torch.__version__}\n")
            log.info("kernel 'fused': %s ready in %.1fs", SOURCE.name, time.perf_counter() - start)
    return _extension


def use_kernel(kernel: str, model: torch.nn.Module, *, autocast: bool = False, compiled: bool = False) -> bool:
    """Whether training ``model`` takes its loss through this kernel, for the trainer's ``kernel``
    option: ``fused`` always, ``eager`` never, ``auto`` where it can run (a float32 CPU model with
    packed graphs, no autocast, not compiled, and the kernel built; if it cannot be built, ``auto``
    logs why once and stays eager)."""
    global _auto_off
    if kernel != "auto":
        return kernel == "fused"
    weight = model.embedding.weight
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or model.cfg.static_shapes
            or autocast or compiled or _auto_off is not None):
        return False
    if _extension is None:
        try:
            extension()
        except Exception as exc:   # no compiler, a failed build: eager PyTorch still trains
            _auto_off = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
            log.warning("kernel 'auto': the native CPU kernel is unavailable (%s); training with the eager "
                        "model instead (kernel 'eager' silences this)", _auto_off)
            return False
    return True


def parameter_slots(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's parameters in the kernel's slot order (empty tensors for unused readout slots).

    Kept on the model after the first call (nn.Module attribute look-ups cost ~60 us a step): the
    Parameter objects stay the same through ``.to()``, ``load_state_dict`` and DDP, which all
    change their data in place."""
    cached = model.__dict__.get("_fused_slots")
    if cached is not None and cached[0] is model.embedding.weight:
        return cached
    gnn, empty = model.gnn, torch.empty(0)

    def linear(name: str) -> list[torch.Tensor]:
        layer = getattr(model, name, None)
        if layer is None:
            return [empty, empty]
        return [layer.weight, layer.bias if layer.bias is not None else empty]

    slots = [model.embedding.weight, gnn.w_ih, gnn.w_hh, gnn.b_ih, gnn.b_hh,
             *linear("linear_one"), *linear("linear_two"), linear("linear_three")[0], *linear("linear_transform"),
             gnn.linear_edge_in.weight, gnn.linear_edge_in.bias, gnn.b_iah,
             gnn.linear_edge_out.weight, gnn.linear_edge_out.bias, gnn.b_oah]
    if model.cfg.variant == "fc":
        slots += [gnn.linear_edge_fc_in.weight, gnn.linear_edge_fc_in.bias, gnn.b_fc_in,
                  gnn.linear_edge_fc_out.weight, gnn.linear_edge_fc_out.bias, gnn.b_fc_out]
    model.__dict__["_fused_slots"] = slots
    return slots


class FusedLoss(torch.autograd.Function):
    """mean_b CE(SR-GNN(items_b), target_b) with the kernel's hand-written backward."""

    @staticmethod
    def forward(ctx, items, lengths, ngc_w, targets, options, *params):
        step, fc, readout = options
        params = list(params)
        out = extension().forward(items, lengths, ngc_w, targets, params, step, fc, readout)
        # Kept as plain references (not save_for_backward: unpacking 20 saved variables costs more
        # than the check it buys); the kernel's own state is ours alone.
        ctx.options, ctx.saved, ctx.inputs = options, out[1:], (lengths, targets, params)
        ctx.versions = [p._version for p in params]
        return out[0]

    @staticmethod
    def backward(ctx, grad):
        lengths, targets, params = ctx.inputs
        if [p._version for p in params] != ctx.versions:
            raise RuntimeError("kernel 'fused': a parameter was modified in place between the forward and the "
                               "backward (e.g. an optimiser step before loss.backward())")
        step, fc, readout = ctx.options
        grads = extension().backward(grad.contiguous(), ctx.saved, lengths, targets, params, step, fc, readout)
        ctx.saved = ctx.inputs = None   # one backward per forward
        return (None, None, None, None, None,
                *(g if p.numel() else None for g, p in zip(grads, params)))


class KernelLoss(torch.nn.Module):
    """``model``'s mean training loss through the kernel, as a module: what DDP wraps when the
    kernel trains a data-parallel model (its gradient hooks fire through autograd)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, ngc_w: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        return fused_loss(self.model, items, lengths, ngc_w, targets)


def _kernel_inputs(model: torch.nn.Module, items: torch.Tensor, lengths: torch.Tensor,
                   ngc_w: torch.Tensor | None, targets: torch.Tensor) -> tuple:
    """(items, lengths, ngc_w, targets, options) as the kernel takes them, after the checks."""
    cfg = model.cfg
    weight = model.embedding.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ConfigError(f"kernel 'fused' runs float32 on the CPU (the model is {weight.dtype} on "
                          f"{weight.device}); use kernel 'eager' there")
    if items.dim() != 2 or lengths.shape != (items.shape[0],) or targets.shape != (items.shape[0],):
        raise InputError(f"batch shapes: items {tuple(items.shape)}, lengths {tuple(lengths.shape)}, "
                         f"targets {tuple(targets.shape)} (expected [B, L], [B], [B])")
    if cfg.variant == "ngc":
        if ngc_w is None:
            raise ConfigError("model variant 'ngc' needs the ngc_w edge weights (shards' ngc_w column)")
        ngc = ngc_w.to(torch.float32).contiguous()
    else:
        ngc = torch.empty(0)
    options = (cfg.step, cfg.variant == "fc", READOUT_CODES[cfg.readout])
    return (items.to(torch.int64).contiguous(), lengths.to(torch.int64).contiguous(), ngc,
            targets.to(torch.int64).contiguous(), options)


def fused_loss(model: torch.nn.Module, items: torch.Tensor, lengths: torch.Tensor, ngc_w: torch.Tensor | None,
               targets: torch.Tensor) -> torch.Tensor:
    """The model's mean training loss on one batch, through the native kernel (autograd-tracked)."""
    return FusedLoss.apply(*_kernel_inputs(model, items, lengths, ngc_w, targets), *parameter_slots(model))


def loss_and_grads(model: torch.nn.Module, items: torch.Tensor, lengths: torch.Tensor,
                   ngc_w: torch.Tensor | None, targets: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(scale * fused_loss(...)).backward()`` without autograd: the mean loss (detached), with
    ``scale`` times its gradient added to each parameter's ``.grad``. For a model that is not
    wrapped (no DDP: its all-reduce hooks only fire through autograd); the trainers use it for one
    process, where the autograd round trip costs ~0.3-0.5 ms of a ~4 ms step at 1,000 items."""
    items, lengths, ngc, targets, (step, fc, readout) = _kernel_inputs(model, items, lengths, ngc_w, targets)
    params = parameter_slots(model)
    ext = extension()
    with torch.no_grad():
        out = ext.forward(items, lengths, ngc, targets, params, step, fc, readout)
        grads = ext.backward(torch.tensor(float(scale)), out[1:], lengths, targets, params, step, fc, readout)
        for p, g in zip(params, grads):
            if p.numel() and p.requires_grad:
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
    return out[0]
