"""Evaluate the exported SR-GNN model(s) of a run date against the baselines (POP, S-POP, item-kNN,
SR, V-SKNN) on the test examples; write the ``evaluation`` table and the report.

    spark-submit jobs/evaluate.py --output OUT --run-date YYYY-MM-DD [options]
    python jobs/evaluate.py --output OUT --run-date YYYY-MM-DD [options]

Writes OUT/evaluation/run_date=D/ and OUT/reports/run_date=D/{evaluation.md,evaluation.png,best_model.json}.
Options: see --help (or pipelines.evaluate.EvaluateConfig); --config FILE reads a YAML file
(section ``evaluate``), command-line flags win.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.evaluate import EvaluateConfig, evaluate  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


def main(argv=None) -> None:
    cfg = EvaluateConfig.from_args(argv, prog="evaluate.py")
    spark = get_spark("srgnn-evaluate", table_format=cfg.table_format)
    result = evaluate(spark, cfg)
    with open(result["report"]) as fh:
        print(fh.read(), flush=True)


if __name__ == "__main__":
    run_job(main)
