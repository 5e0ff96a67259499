"""Stage 4: top-k recommendations per session, scored inside Spark.

    spark-submit jobs/recommend.py --output OUT --run-date YYYY-MM-DD [options]
    python jobs/recommend.py --output OUT --run-date YYYY-MM-DD [options]

Options: see --help (or pipelines.recommend.RecommendConfig); --config FILE reads a YAML file
(section ``recommend``), command-line flags win.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.recommend import RecommendConfig, recommend  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


def main(argv=None) -> None:
    cfg = RecommendConfig.from_args(argv, prog="recommend.py")
    spark = get_spark("srgnn-recommend", table_format=cfg.table_format)
    stats = recommend(spark, cfg)
    print(json.dumps(stats, indent=2, sort_keys=True))


if __name__ == "__main__":
    run_job(main)
