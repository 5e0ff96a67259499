"""Launchers of stage 3 besides ``python jobs/train.py`` (one process) and ``torchrun
--nproc_per_node=N jobs/train.py`` (N processes): TorchDistributor on Databricks and N local gloo
processes (tests, notebooks). Every process calls :func:`pipelines.train.job.train_job`.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from typing import Any

from pipelines.train.config import TrainJobConfig
from pipelines.train.job import train_job


def distributor_train(config: dict[str, Any]) -> dict[str, Any]:
    """The function to hand to ``pyspark.ml.torch.distributor.TorchDistributor.run`` on Databricks.

    ``TorchDistributor(num_processes=N, local_mode=False, use_gpu=True).run(distributor_train,
    cfg.to_dict())`` starts N processes with torchrun's environment; each calls this, which calls
    :func:`train_job`. The return value (rank 0's) is a plain dict: export dir and metrics.
    """
    return train_job(TrainJobConfig.from_dict(config))


def run_with_torch_distributor(cfg: TrainJobConfig, num_processes: int, use_gpu: bool = True,
                               local_mode: bool = False) -> dict[str, Any]:
    """Run :func:`train_job` on a Spark cluster's workers (or the driver with ``local_mode``)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    return distributor.run(distributor_train, cfg.to_dict())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(rank: int, world: int, port: int, config: dict[str, Any], result_path: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)})
    result = train_job(TrainJobConfig.from_dict(config))
    if rank == 0:
        with open(result_path, "w") as fh:
            json.dump(result, fh, default=float)


def launch_local(cfg: TrainJobConfig, nprocs: int) -> dict[str, Any]:
    """Run :func:`train_job` in ``nprocs`` local processes (gloo on CPU); returns rank 0's result."""
    import torch.multiprocessing as mp

    fd, result_path = tempfile.mkstemp(prefix="srgnn-train-", suffix=".json")
    os.close(fd)
    try:
        mp.spawn(_spawn_entry, args=(nprocs, _free_port(), cfg.to_dict(), result_path), nprocs=nprocs,
                 join=True)
        with open(result_path) as fh:
            return json.load(fh)
    finally:
        os.unlink(result_path)
