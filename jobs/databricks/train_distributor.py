"""Stage 3 on a Databricks GPU job cluster: pipelines.train.job.train_job in one process per GPU.

    spark_python_task: jobs/databricks/train_distributor.py --num-processes 4 --output OUT --run-date D [train options]

``pyspark.ml.torch.distributor.TorchDistributor`` (in the ML runtimes) starts ``--num-processes``
processes on the driver node (``local_mode=True``, a single-node GPU cluster) with the torchrun
environment (RANK, WORLD_SIZE, MASTER_ADDR, ...); each runs ``pipelines.train.launch.distributor_train``
(= ``train_job(cfg)``, nccl on CUDA), through ``pipelines.train.launch.run_with_torch_distributor``. Every other
option is stage 3's own (``pipelines.train.config.TrainJobConfig``, section ``train``).
Outside Databricks use ``torchrun --nproc_per_node=N jobs/train.py ...`` instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from srgnn.core.cli import run_job  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from pipelines.train.launch import TrainJobConfig, run_with_torch_distributor

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--num-processes", type=int, default=1,
                     help="training processes on this node (one per GPU)")
    pre.add_argument("--cpu", action="store_true",
                     help="train on CPU processes (gloo) even where there are GPUs (default: GPUs when "
                          "this machine has them, else CPU)")
    ns, rest = pre.parse_known_args(argv)
    cfg = TrainJobConfig.from_args(rest, prog="train_distributor.py")

    from pipelines.spark import get_spark

    get_spark("srgnn-train")  # TorchDistributor needs the active SparkSession
    import torch

    use_gpu = not ns.cpu and torch.cuda.is_available()
    result = run_with_torch_distributor(cfg, num_processes=ns.num_processes, use_gpu=use_gpu,
                                        local_mode=True)
    test = result["metrics"].get("test", {})
    print(f"exported {result['export_dir']} (best epoch {result['best_epoch']} of {result['epochs_run']}, "
          f"{result['world_size']} processes); test " +
          " ".join(f"{k} {test[k]:.4f}" for k in ("hr@20", "mrr@20", "ndcg@20") if k in test))


if __name__ == "__main__":
    run_job(lambda: main(sys.argv[1:]))
