"""The selection's options (:class:`SelectConfig`) and the table it writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from srgnn.core.config import StageConfig, opt
from srgnn.core.contracts import SELECT_METRIC, TABLE_FORMATS
from srgnn.core.errors import ConfigError

SELECTION_SCHEMA = ("candidate string, model_version string, metric string, value double, chosen boolean, "
                    "reason string")
PREVIOUS_NAME = "previous"   # the evaluation's name for the model published the night before


@dataclass
class SelectConfig(StageConfig):
    """Choose the model that scores tonight's sessions: this night's SR-GNN, the best baseline of this
    night's evaluation, or the model published the night before; never one that is worse on tonight's
    test examples than another candidate by more than the margin."""

    yaml_section: ClassVar[str] = "select"

    output: str = opt(None, required=True, help="OUT root (reads evaluation, models; writes model_selection)")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD")
    table_format: str = opt("parquet", choices=TABLE_FORMATS, help="format of the tables")
    metric: str = opt(SELECT_METRIC, help="the metric that decides (hr@K, mrr@K or ndcg@K of the evaluation)")
    margin: float = opt(0.01, help="absolute margin on the metric (0..1): a candidate more than this below the "
                                   "best is never published; within it, SR-GNN is preferred, then the previous model")
    history_nights: int = opt(14, help="nights in the history report (OUT/reports/run_date=D/history.md)")
    alert_drop: float = opt(0.2, help="alert when the published model's MRR@20 is this share below the median of "
                                      "the previous 7 nights")
    fail_on_alert: bool = opt(False, help="exit non-zero after publishing when the alert fires")

    def validate(self) -> None:
        super().validate()
        metric, _, k = self.metric.partition("@")
        if metric not in ("hr", "mrr", "ndcg") or not k.isdigit():
            raise ConfigError(f"option --metric: {self.metric!r} is not hr@K, mrr@K or ndcg@K")
        if not 0 <= self.margin <= 1:
            raise ConfigError(f"option --margin: {self.margin} is not in 0..1")
        if not 0 <= self.alert_drop <= 1:
            raise ConfigError(f"option --alert-drop: {self.alert_drop} is not in 0..1")
