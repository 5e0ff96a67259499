"""The whole nightly pipeline locally, in one command (stage 1 -> 2 -> 3 -> evaluate -> 4).

    .venv/bin/python jobs/nightly.py                       # the bundled sample -> out/sample, 2016-06-01
    .venv/bin/python jobs/nightly.py --input clicks.csv --format yoochoose --output out/mine \\
        --run-date 2024-05-01 --config conf/prod.yaml     # your data, your options
    .venv/bin/spark-submit jobs/nightly.py ...             # the same under spark-submit

See pipelines.nightly.NightlyConfig (--help) for every option.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.nightly import NightlyConfig, run_nightly  # noqa: E402


def main() -> None:
    cfg = NightlyConfig.from_args(sys.argv[1:], prog="nightly.py")
    run_nightly(cfg)


if __name__ == "__main__":
    run_job(main)
