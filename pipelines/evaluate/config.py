"""The evaluation's options (:class:`EvaluateConfig`) and the names of what it writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from srgnn.baselines import BASELINES, BaselineParams
from srgnn.core.config import StageConfig, opt
from srgnn.core.contracts import REPORT_KS, SELECT_METRIC
from srgnn.core.errors import ConfigError
from srgnn.core.layout import Layout, normalize_root

RANK_METRICS = ("hr", "mrr", "ndcg")
BUCKETS = {"all": "", "<=5": "_len<=5", ">5": "_len>5"}
REPORT_METRICS = ("hr@20", "mrr@20", "ndcg@20")
EVALUATION_SCHEMA = "model string, metric string, k int, value double, length_bucket string"
CHART_FILE = "evaluation.png"          # beside contracts.REPORT_EVALUATION in OUT/reports/run_date=D/
BEST_MODEL_FILE = "best_model.json"


@dataclass
class EvaluateConfig(StageConfig):
    """Evaluate SR-GNN against POP, S-POP, item-kNN, SR and V-SKNN on the test examples of a run date."""

    yaml_section: ClassVar[str] = "evaluate"

    output: str = opt(None, required=True, help="OUT root (reads shards, sessions, item_graph, models)")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD")
    table_format: str = opt("parquet", choices=("parquet", "delta"), help="format of the tables")
    baselines: list[str] = opt(list(BASELINES), help=f"baselines to evaluate (of {', '.join(BASELINES)})")
    model_dirs: list[str] = opt([], help="more SR-GNN exports to evaluate, as DIR or NAME=DIR "
                                         "(OUT/models/run_date=D and its sub-folders are always looked at)")
    previous_model: bool = opt(True, help="also evaluate the SR-GNN published on the latest earlier night (model "
                                          "'previous', its items mapped to tonight's by item id), for the selection")
    require_model: bool = opt(False, help="fail when no exported SR-GNN model is found (else: baselines only)")
    ks: list[int] = opt(list(REPORT_KS), help="cut-offs K")
    batch_size: int = opt(500, help="test examples per scoring batch")
    device: str = opt("cpu", choices=("cpu", "cuda", "auto"), help="device for SR-GNN scoring")
    select_metric: str = opt(SELECT_METRIC, help="metric that names the best model in best_model.json")
    knn_neighbours: int = opt(100, help="item-kNN: neighbours kept per item (>= max K)")
    knn_lambda: float = opt(0.0, help="item-kNN: shrinkage added to the cosine denominator (0: plain cosine)")
    knn_alpha: float = opt(0.5, help="item-kNN: supp(i)^alpha * supp(j)^(1-alpha) (0.5: cosine)")
    sr_rules: int = opt(100, help="SR: rules kept per item (>= max K)")
    sr_steps: int = opt(10, help="SR: a click makes rules to the next STEPS clicks, weighted 1/step "
                                 "(session-rec's default 10; 1: direct successors, from item_graph)")
    vsknn_k: int = opt(100, help="V-SKNN: neighbour sessions that vote (k)")
    vsknn_sample: int = opt(500, help="V-SKNN: most recent candidate sessions considered (m)")
    vsknn_score_decay: str = opt("div", choices=("div", "same"),
                                 help="V-SKNN: weight a neighbour's vote by 1/step of its latest shared click (div) or not")
    chart: bool = opt(True, help="write evaluation.png (matplotlib, Agg)")
    progress: bool = opt(True, help="tqdm bars over the scoring batches")

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.baselines or []) - set(BASELINES))
        if unknown:
            raise ConfigError(f"option --baselines: unknown {unknown}; known: {list(BASELINES)}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("option --ks: needs at least one cut-off >= 1")
        if self.batch_size < 1:
            raise ConfigError("option --batch-size: must be >= 1")
        metric, _, k = self.select_metric.partition("@")
        if metric not in RANK_METRICS or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"option --select-metric: {self.select_metric!r} must be one of "
                              f"{[f'{m}@{k}' for m in RANK_METRICS for k in self.ks]}")
        self.baseline_params().check(max(self.ks))

    def baseline_params(self) -> BaselineParams:
        return BaselineParams(knn_neighbours=self.knn_neighbours, knn_lambda=self.knn_lambda,
                              knn_alpha=self.knn_alpha, sr_rules=self.sr_rules, sr_steps=self.sr_steps,
                              vsknn_k=self.vsknn_k,
                              vsknn_sample=self.vsknn_sample, vsknn_score_decay=self.vsknn_score_decay)

    @property
    def root(self) -> str:
        return normalize_root(self.output)

    @property
    def layout(self) -> Layout:
        return Layout(self.output)

    @property
    def shards_dir(self) -> str:
        return self.layout.shards(self.run_date)

    @property
    def models_dir(self) -> str:
        return self.layout.model(self.run_date)

    @property
    def report_dir(self) -> str:
        return self.layout.reports(self.run_date)
