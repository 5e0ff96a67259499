"""MLflow tracking of stage 3 (rank 0 only): parameters, per-epoch metrics, the exported model."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from srgnn.core import fs
from srgnn.core.log import get_logger

log = get_logger(__name__)


def mlflow_name(metric: str) -> str:
    """MLflow-safe metric name: ``valid_hr@20_len<=5`` -> ``valid_hr_20_len_le5``."""
    return metric.replace("@", "_").replace("<=", "_le").replace(">", "_gt")


class Tracker:
    """Thin MLflow wrapper: off when the URI is 'none'; file store under OUT by default."""

    def __init__(self, uri: str, experiment: str, default_root: str, enabled: bool):
        self.run_id = ""
        self.mlflow = None
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or f"file:{default_root}"
        if not enabled or uri.lower() == "none":
            return
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store only behind this switch; it is the contract's local default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow
        self.mlflow = mlflow
        self.uri = uri
        # mlflow.set_tracking_uri / set_experiment also export MLFLOW_TRACKING_URI and
        # MLFLOW_EXPERIMENT_ID to os.environ: put them back when the run ends, or the next
        # train_job in this process (a notebook, the nightly run, a test) would log to this OUT.
        self._saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
        mlflow.set_tracking_uri(uri)
        self.experiment = experiment

    def start(self, run_id: str, run_name: str, params: dict[str, Any]) -> str:
        if self.mlflow is None:
            return ""
        mlflow = self.mlflow
        mlflow.set_experiment(self.experiment)
        if run_id:
            mlflow.start_run(run_id=run_id)
        else:
            mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        self.run_id = mlflow.active_run().info.run_id
        log.info("MLflow run %s at %s", self.run_id, self.uri)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.mlflow is not None:
            clean = {mlflow_name(k): float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and math.isfinite(float(v))}
            self.mlflow.log_metrics(clean, step=step)

    def finish(self, export_dir: str | None, tags: dict[str, str]) -> None:
        if self.mlflow is None:
            return
        if export_dir:
            if fs.is_local(export_dir):
                self.mlflow.log_artifacts(fs.local_path(export_dir), artifact_path="model")
            else:  # MLflow uploads from a local folder
                with tempfile.TemporaryDirectory(prefix="srgnn-mlflow-") as tmp:
                    self.mlflow.log_artifacts(fs.fetch_dir(export_dir, tmp), artifact_path="model")
        self.mlflow.set_tags(tags)
        self.mlflow.end_run()
        self._restore_environment()

    def fail(self) -> None:
        if self.mlflow is not None:
            if self.mlflow.active_run() is not None:
                self.mlflow.end_run(status="FAILED")
            self._restore_environment()

    def _restore_environment(self) -> None:
        saved = self._saved_env
        self.mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None unsets it
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
