"""Stage 1: sessionize a click log exactly as the official SR-GNN preprocess.py does.

    spark-submit jobs/build_sessions.py --input PATH --format {diginetica,yoochoose,events} \
        --output OUT --run-date YYYY-MM-DD [options]
    python jobs/build_sessions.py ...   (same flags; embedded local Spark)

Options (see --help or pipelines.sessions.SessionsConfig): --min-item-support (5),
--min-session-length (2), --split-days (7 diginetica / 1 yoochoose, events), --inclusive-split,
--fraction (1/64, 1/4: recorded for stage 2), events: --gap-minutes (30), --event-types,
--user-col/--time-col/--item-col/--type-col, --input-format {csv,json,parquet,delta,table}
(``table``: --input is a catalog table name), --delimiter, --time-unit; parquet/delta/table:
--window-days (30: the events of the N days up to the run date; 0 = all), --date-col (the
partition date column the window filters on); --table-format {parquet,delta}; --allow-empty;
--config FILE reads a YAML file (section ``build_sessions``), command-line flags win.

Writes OUT/{sessions,item_vocab,quarantine}/run_date=D and OUT/stats/run_date=D/build_sessions.json,
and prints the stats. A bad path or columns, or an input that leaves no session: one line
``error: ...`` and exit status 2.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.sessions import SessionsConfig, build_sessions  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


def main(argv=None) -> None:
    cfg = SessionsConfig.from_args(argv, prog="build_sessions.py")
    reads_delta = cfg.format == "events" and cfg.input_format == "delta"
    spark = get_spark("srgnn-build-sessions", table_format="delta" if reads_delta else cfg.table_format)
    stats = build_sessions(spark, cfg)
    print(json.dumps(stats, indent=2, sort_keys=True), flush=True)


if __name__ == "__main__":
    run_job(main)
