"""Print the recommendations of one session, with the original item ids.

    python jobs/show_recommendations.py --output OUT --run-date YYYY-MM-DD --session-id SID
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.recommend import ShowRecommendationsConfig, session_recommendations  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


def main(argv=None) -> None:
    cfg = ShowRecommendationsConfig.from_args(argv, prog="show_recommendations.py")
    spark = get_spark("srgnn-show-recommendations", table_format=cfg.table_format)
    rows = session_recommendations(spark, cfg)
    print(f"session {cfg.session_id} (run_date {cfg.run_date}, model {rows['model_version'].iloc[0]}, "
          f"source {rows['source'].iloc[0]})")
    print(rows[["rank", "item_id", "score"]].to_string(index=False))


if __name__ == "__main__":
    run_job(main)
