"""Stage 2: the global item-transition graph (NGC weights) and the training shards Petastorm reads.

    spark-submit jobs/build_graph.py --output OUT --run-date YYYY-MM-DD [options]
    python jobs/build_graph.py --output OUT --run-date YYYY-MM-DD [options]

Options (see --help or pipelines.graph.GraphConfig): --valid-share (0.1), --max-len (50),
--world-size (8), --rows-per-row-group, --row-groups-per-rank, --seed, --self-loops,
--table-format, --shuffle-partitions; --config FILE reads a YAML file (section ``build_graph``),
command-line flags win.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgnn.core.cli import run_job  # noqa: E402
from pipelines.graph import GraphConfig, build_graph  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


def main(argv=None) -> None:
    cfg = GraphConfig.from_args(argv, prog="build_graph.py")
    spark = get_spark("srgnn-build-graph", table_format=cfg.table_format,
                      shuffle_partitions=cfg.shuffle_partitions or None)
    manifest = build_graph(spark, cfg)
    summary = {k: v for k, v in manifest.items() if k != "splits"}
    summary["splits"] = {s: {k: v for k, v in info.items() if k != "row_group_rows"}
                         for s, info in manifest["splits"].items()}
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    run_job(main)
