"""Stage 2's configuration: :class:`GraphConfig` (every option of jobs/build_graph.py)."""
from __future__ import annotations

import dataclasses

from srgnn.core.config import StageConfig, opt
from srgnn.core.contracts import TABLE_FORMATS
from srgnn.core.dates import check_run_date
from srgnn.core.errors import ConfigError


@dataclasses.dataclass
class GraphConfig(StageConfig):
    """Stage 2: build the global item graph (NGC weights) and the Petastorm training shards."""

    yaml_section = "build_graph"

    output: str = opt(None, required=True, help="OUT root: stage 1's tables are read from it, stage 2 writes there")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD (the stage-1 partition to read)")
    table_format: str = opt("parquet", choices=TABLE_FORMATS, help="format of the tables under OUT")
    valid_share: float = opt(0.1, help="share of training sessions held out as 'valid' (0 = paper parity)")
    max_len: int = opt(50, help="L: examples keep the last L clicks of the prefix")
    world_size: int = opt(8, help="the number of row groups of each split is a multiple of this")
    rows_per_row_group: int = opt(65536, help="target examples per row group (sets k when --row-groups-per-rank is 0)")
    row_groups_per_rank: int = opt(0, help="k: row groups per rank and split (0 = from --rows-per-row-group)")
    seed: int = opt(0, help="seed of the shard shuffle")
    self_loops: str = opt("keep", choices=["keep", "drop"], help="repeated clicks a->a as graph edges or not")
    shuffle_partitions: int = opt(0, help="spark.sql.shuffle.partitions for this job (0 = Spark's setting)")

    def validate(self) -> None:
        super().validate()
        if self.run_date is not None:
            check_run_date(self.run_date)
        if not 0.0 <= self.valid_share < 1.0:
            raise ConfigError(f"option --valid-share: {self.valid_share} is not in [0, 1)")
        for name, low in (("max_len", 1), ("world_size", 1), ("rows_per_row_group", 1),
                          ("row_groups_per_rank", 0), ("shuffle_partitions", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"option --{name.replace('_', '-')}: {getattr(self, name)} is below {low}")
