"""Model selection: choose the model that scores tonight's sessions, write ``model_selection`` and the
history report across nights (with its alert).

    spark-submit jobs/select_model.py --output OUT --run-date YYYY-MM-DD [--margin 0.01] [--fail-on-alert]
    python jobs/select_model.py --output OUT --run-date YYYY-MM-DD ...

Reads OUT/evaluation/run_date=D (run jobs/evaluate.py first); writes OUT/model_selection/run_date=D/,
OUT/reports/run_date=D/{history.md,history.png} and OUT/stats/run_date=D/select.json. Options: see
--help (or pipelines.select.SelectConfig); --config FILE reads a YAML file (section ``select``).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.select import SelectConfig, select_model  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


def main(argv=None) -> None:
    cfg = SelectConfig.from_args(argv, prog="select_model.py")
    spark = get_spark("srgnn-select", table_format=cfg.table_format)
    print(json.dumps(select_model(spark, cfg), indent=2, sort_keys=True, default=str), flush=True)


if __name__ == "__main__":
    run_job(main)
