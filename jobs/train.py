"""Stage 3: train SR-GNN on stage 2's shards and export the best model.

    python jobs/train.py --output OUT --run-date YYYY-MM-DD [--epochs N --variant ngc ...]
    torchrun --nproc_per_node=N jobs/train.py --output OUT --run-date YYYY-MM-DD ...

Options: ``--help``; defaults and meanings in pipelines/train/config.py (TrainJobConfig) and docs/training.md.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from srgnn.core.proc import die_with_parent, launched_by_torchrun  # noqa: E402
from pipelines.train.job import TrainJobConfig, train_job  # noqa: E402


def main() -> None:
    if launched_by_torchrun():
        die_with_parent()  # a kill of the launcher's process group stops every rank (docs/reliability.md)
    cfg = TrainJobConfig.from_args(sys.argv[1:], prog="train.py")
    train_job(cfg)


if __name__ == "__main__":
    run_job(main)
    if launched_by_torchrun():
        # Everything is written and closed by now. A rank leaves without the interpreter's teardown,
        # where a native thread pool still winding down (pyarrow's, gloo's) can abort the process
        # ("terminate called without an active exception"), which torchrun would report as a failed
        # run and answer by killing the other ranks.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
