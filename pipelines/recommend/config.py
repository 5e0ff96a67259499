"""Stage 4's options: :class:`RecommendConfig` (the stage) and :class:`ShowRecommendationsConfig`."""
from __future__ import annotations

import dataclasses

from srgnn.baselines import BASELINES, BaselineParams
from srgnn.core.config import StageConfig, opt
from srgnn.core.contracts import RECOMMENDATIONS
from srgnn.core.errors import ConfigError
from srgnn.core.layout import Layout

TABLE = RECOMMENDATIONS
SOURCE_MODEL = "model"
SOURCE_POPULAR = "popular"
SOURCE_FORMATS = ("parquet", "delta", "orc", "json", "table")
MODEL_COLUMN = "model"            # the candidate that scored the row: srgnn, previous, vsknn, ...
AUTO = "auto"
SRGNN = "srgnn"                   # tonight's export, OUT/models/run_date=D
PREVIOUS = "previous"             # the SR-GNN export published on an earlier night
MODEL_NAMES = (AUTO, SRGNN, PREVIOUS, *BASELINES)


@dataclasses.dataclass
class RecommendConfig(StageConfig):
    """Stage 4: top-k recommendations for the run date's sessions, written to table recommendations."""

    yaml_section = "recommend"

    output: str = opt(None, "table root OUT (reads item_vocab/sessions, writes recommendations)",
                      required=True)
    run_date: str = opt(None, "run date YYYY-MM-DD", required=True)
    table_format: str = opt("parquet", "table format", choices=("parquet", "delta"))
    model_name: str = opt(AUTO, "the model that scores: 'auto' (the chosen candidate of table "
                                "model_selection for the run date, else srgnn), 'srgnn' (tonight's "
                                "export), 'previous' (the SR-GNN published on an earlier night) or a "
                                "baseline", choices=MODEL_NAMES)
    model_dir: str = opt("", "exported model folder (default OUT/models/run_date=D; for 'previous': "
                             "the export the earlier selections published)")
    sessions: str = opt("", "sessions to score: a path or table name with a session id and ordered "
                            "item ids (default: stage 1's sessions table of the run date)")
    sessions_format: str = opt("parquet", "format of --sessions ('table' = a catalog table name)",
                               choices=SOURCE_FORMATS)
    split: str = opt("test", "keep only this split of a source with a 'split' column "
                             "(the test split stands in for today's sessions on the sample)",
                     choices=("test", "train", "all"))
    session_id_col: str = opt("session_id", "session id column of --sessions")
    items_col: str = opt("item_ids", "column of --sessions holding the item ids in click order")
    k: int = opt(20, "recommendations per session")
    batch_size: int = opt(128, "sessions per model call inside a Python worker (CPU: small keeps the "
                                 "batch x n_items scores in cache; raise it on a GPU)")
    exclude_seen: bool = opt(False, "never recommend an item already in the session "
                                    "(off, as in the paper's evaluation)")
    max_len: int = opt(0, "clicks fed to the model, the last ones (0 = the model's max_len)")
    device: str = opt("auto", "'auto' (a GPU when the executor has one), 'cpu', 'cuda', 'cuda:N'")
    torch_threads: int = opt(0, "torch threads per Python worker (0 = cores / concurrent tasks "
                                "locally, spark.task.cpus on a cluster)")
    partitions: int = opt(0, "scoring partitions (0 = Spark's default parallelism)")
    check_manifest: bool = opt(True, "check the model's manifest hash against the run date's shards")
    # the baselines' fit: keep these equal to the evaluation's (jobs/evaluate.py) options
    knn_neighbours: int = opt(BaselineParams.knn_neighbours, "item-kNN: neighbours kept per item (>= k)")
    knn_lambda: float = opt(BaselineParams.knn_lambda, "item-kNN: shrinkage added to the cosine denominator")
    knn_alpha: float = opt(BaselineParams.knn_alpha, "item-kNN: supp(i)^alpha * supp(j)^(1-alpha)")
    sr_rules: int = opt(BaselineParams.sr_rules, "SR: rules kept per item (>= k)")
    vsknn_k: int = opt(BaselineParams.vsknn_k, "V-SKNN: neighbour sessions that vote")
    vsknn_sample: int = opt(BaselineParams.vsknn_sample, "V-SKNN: most recent candidate sessions considered")
    vsknn_score_decay: str = opt(BaselineParams.vsknn_score_decay, "V-SKNN: 'div' or 'same'",
                                 choices=("div", "same"))

    def validate(self) -> None:
        super().validate()
        for name in ("k", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"option --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_len", "torch_threads", "partitions"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"option --{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.device and not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"option --device: {self.device!r} is not auto, cpu, cuda or cuda:N")

    def baseline_params(self) -> BaselineParams:
        return BaselineParams(knn_neighbours=self.knn_neighbours, knn_lambda=self.knn_lambda,
                              knn_alpha=self.knn_alpha, sr_rules=self.sr_rules, vsknn_k=self.vsknn_k,
                              vsknn_sample=self.vsknn_sample, vsknn_score_decay=self.vsknn_score_decay)

    def resolved_model_dir(self) -> str:
        if self.model_dir:
            return self.model_dir
        return Layout(self.output).model(self.run_date)


@dataclasses.dataclass
class ShowRecommendationsConfig(StageConfig):
    """Print the recommendations of one session (rank, item id, score, source, model version)."""

    yaml_section = "show_recommendations"

    output: str = opt(None, "table root OUT", required=True)
    run_date: str = opt(None, "run date YYYY-MM-DD", required=True)
    session_id: str = opt(None, "the session to show", required=True)
    table_format: str = opt("parquet", "table format", choices=("parquet", "delta"))
