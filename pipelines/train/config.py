"""Stage 3's options (``jobs/train.py``, the nightly's ``train`` section): one flat dataclass whose
field names and defaults are the command line's contract."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError
from srgnn.core.fs import local_path
from srgnn.core.layout import Layout
from srgnn.train import TrainConfig


@dataclass
class TrainJobConfig(StageConfig):
    """Stage 3: train SR-GNN on the shards of one run date (1 process, torchrun or TorchDistributor)."""

    yaml_section: ClassVar[str] = "train"

    output: str = opt(None, required=True, help="OUT root (reads OUT/shards/run_date=D, writes models, checkpoints)")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD of the shards to train on")
    table_format: str = opt("parquet", choices=("parquet", "delta"), help="format of stage 1's tables (item_vocab)")
    # ---- model (the paper's options) -----------------------------------------------------
    variant: str = opt("srgnn", choices=("srgnn", "ngc", "fc"), help="SR-GNN, SR-GNN-NGC or SR-GNN-FC")
    readout: str = opt("hybrid", choices=("hybrid", "att", "last", "avg"), help="session readout")
    hidden_size: int = opt(100, help="embedding / hidden size d")
    step: int = opt(1, help="gated graph propagation steps")
    static_shapes: bool = opt(False, help="model shapes depend on [B, L] only (for --compile / CUDA graphs)")
    kernel: str = opt("auto", choices=("auto", "eager", "fused"),
                      help="training loss: eager (srgnn.model, autograd) | fused (srgnn.fused_cpu: one native "
                           "forward and backward; float32 on CPU, compiled on first use; ~2x faster at 1,000 items) | "
                           "auto (fused where it can run: CPU, no --bf16/--compile/--static-shapes; else eager)")
    # ---- optimisation (defaults of the official code) ------------------------------------
    epochs: int = opt(30, help="maximum number of epochs")
    batch_size: int = opt(100, help="GLOBAL batch size; each of the W ranks takes batch_size / W")
    eval_batch_size: int = opt(500, help="per-rank batch size for evaluation")
    lr: float = opt(1e-3, help="Adam learning rate")
    lr_dc: float = opt(0.1, help="learning-rate decay factor")
    lr_dc_step: int = opt(3, help="decay the learning rate every this many epochs")
    l2: float = opt(1e-5, help="Adam weight decay")
    patience: int = opt(10, help="stop after this many epochs without a better validation MRR@20")
    seed: int = opt(2019, help="seed of model init, data order (with the epoch) and everything else")
    shuffle: bool = opt(True, help="reshuffle the row-group order every epoch from (seed, epoch)")
    # ---- checkpoints / warm start ---------------------------------------------------------
    resume: bool = opt(False, help="continue from the latest checkpoint of this run date (fresh start if none)")
    checkpoint_every_steps: int = opt(0, help="also checkpoint every N optimiser steps (0: epoch ends only)")
    keep_checkpoints: int = opt(2, help="keep this many newest checkpoints (0: all)")
    init_from: str | None = opt(None, help="warm start from a previous export (MODEL_DIR)")
    verify_manifest: bool = opt(True, help="recompute the shards' content hash and compare with the manifest")
    # ---- runtime --------------------------------------------------------------------------
    device: str = opt("auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    bf16: bool = opt(False, help="bf16 autocast for forward passes (CUDA only)")
    compile: bool = opt(False, help="torch.compile the model")
    cuda_graphs: bool = opt(False, help="capture the whole training step (forward, backward, Adam) as one CUDA graph "
                                        "and replay it (one CUDA process; implies --static-shapes)")
    deterministic: bool = opt(True, help="torch.use_deterministic_algorithms (warn-only on CUDA)")
    num_threads: int = opt(0, help="torch intra-op threads per process (0: torch's default)")
    reader_workers: int = opt(1, help="Petastorm reader threads per rank (1 keeps the order deterministic)")
    eval_test: bool = opt(True, help="also evaluate the test split every epoch (reported, never used to select)")
    progress: bool = opt(True, help="tqdm bar per epoch on rank 0")
    # ---- tracking -------------------------------------------------------------------------
    mlflow_tracking_uri: str = opt("", help="MLflow tracking URI; '' = $MLFLOW_TRACKING_URI or file:OUT/mlruns "
                                            "(file:./mlruns for an object-store OUT); 'none' = off")
    mlflow_experiment: str = opt("srgnn", help="MLflow experiment name (an absolute path on Databricks)")

    def validate(self) -> None:
        super().validate()
        for name in ("epochs", "batch_size", "eval_batch_size", "hidden_size", "step", "lr_dc_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option --{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"option --patience: must be >= 1, got {self.patience}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 0:
            raise ConfigError("option --checkpoint-every-steps: must be >= 0")
        if self.kernel == "fused" and (self.device == "cuda" or self.bf16 or self.compile or self.cuda_graphs
                                       or self.static_shapes):
            raise ConfigError("option --kernel fused: float32 on the CPU only; it excludes --device cuda, --bf16, "
                              "--compile, --cuda-graphs and --static-shapes")
        if self.cuda_graphs and (self.compile or self.device == "cpu"):
            raise ConfigError("option --cuda-graphs: needs a CUDA device and excludes --compile (got "
                              f"--device {self.device}{' --compile' if self.compile else ''})")

    # ---- paths under OUT (srgnn.core.layout) ------------------------------------------------
    @property
    def layout(self) -> Layout:
        return Layout(local_path(self.output))

    @property
    def root(self) -> str:
        return self.layout.root

    @property
    def shards_dir(self) -> str:
        return self.layout.shards(self.run_date)

    @property
    def checkpoint_dir(self) -> str:
        return self.layout.checkpoints(self.run_date)

    @property
    def model_dir(self) -> str:
        return self.layout.model(self.run_date)

    # ---- what the parts of the job take ----------------------------------------------------------
    def model_options(self) -> dict[str, Any]:
        """The model's options (and the loss engine, which a resumed checkpoint must share)."""
        return {"variant": self.variant, "readout": self.readout, "hidden_size": self.hidden_size,
                "step": self.step, "static_shapes": self.static_shapes or self.cuda_graphs, "kernel": self.kernel}

    def loop_config(self) -> TrainConfig:
        """The training loop's options (srgnn.train.TrainConfig): the fields both share."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.to_dict().items() if k in names})
