# Databricks notebook source
# MAGIC %md
# MAGIC # 02 - The model: training, metrics by session length, variants, recommendations
# MAGIC
# MAGIC For one run date: the training curves (per epoch, from the MLflow runs stage 3 logged),
# MAGIC HR@20 / MRR@20 by session length (the paper's Table 3 split: <= 5 clicks and longer) for
# MAGIC SR-GNN and the baselines of the `evaluation` table, SR-GNN / SR-GNN-NGC / SR-GNN-FC side by side
# MAGIC when runs of those variants exist, and the recommendations of a few sessions.
# MAGIC
# MAGIC Parameters (Databricks widgets, or environment variables when run as plain Python):
# MAGIC `output` (`SRGNN_OUTPUT`), `run_date` (`SRGNN_RUN_DATE`), `table_format` (`SRGNN_TABLE_FORMAT`),
# MAGIC `plots_dir` (`SRGNN_PLOTS_DIR`, default `OUT/reports/run_date=D/plots`), `mlflow_uri`
# MAGIC (`SRGNN_MLFLOW_URI`, default `file:OUT/mlruns` locally, the workspace on Databricks),
# MAGIC `mlflow_experiment` (`SRGNN_MLFLOW_EXPERIMENT`, default `srgnn`), `sessions` (`SRGNN_SESSIONS`,
# MAGIC how many sessions to show).
# MAGIC
# MAGIC Locally: `.venv/bin/python notebooks/02_model.py` after `.venv/bin/python jobs/nightly.py`.

# COMMAND ----------

import os
import sys
from pathlib import Path

try:
    REPO = Path(__file__).resolve().parents[1]
except NameError:  # a Databricks notebook has no __file__; the repo is its parent folder
    REPO = Path(os.getcwd()).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION" in os.environ

import matplotlib

if not ON_DATABRICKS:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def param(name: str, default: str) -> str:
    """A Databricks widget when dbutils exists, else the environment variable SRGNN_<NAME>."""
    try:
        dbutils.widgets.text(name, default)  # noqa: F821 (defined in Databricks notebooks)
        return dbutils.widgets.get(name) or default  # noqa: F821
    except NameError:
        return os.environ.get(f"SRGNN_{name.upper()}", default)


OUTPUT = param("output", str(REPO / "out" / "sample"))
RUN_DATE = param("run_date", "2016-06-01")
TABLE_FORMAT = param("table_format", "parquet")
PLOTS_DIR = param("plots_dir", "")
MLFLOW_URI = param("mlflow_uri", "")
MLFLOW_EXPERIMENT = param("mlflow_experiment", "srgnn")
N_SESSIONS = int(param("sessions", "5"))

# COMMAND ----------

from pyspark.sql import functions as F

from pipelines.spark import get_spark
from pipelines.tables import TableStore
from srgnn.core.fs import local_path, read_json

spark = get_spark("srgnn-notebook-model", table_format=TABLE_FORMAT)
store = TableStore(OUTPUT, TABLE_FORMAT)
plots = Path(local_path(PLOTS_DIR or f"{store.root}/reports/run_date={RUN_DATE}/plots"))
plots.mkdir(parents=True, exist_ok=True)
model_dir = f"{store.root}/models/run_date={RUN_DATE}"
model_config = read_json(f"{model_dir}/config.json")
print(f"model {model_dir}: version {model_config.get('model_version')}, "
      f"best epoch {model_config.get('best_epoch')} of {model_config.get('epochs_run')}")
written: list[Path] = []


def save(fig, name: str) -> None:
    path = plots / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    print(f"wrote {path}")


# COMMAND ----------

# MAGIC %md ## Training curves (MLflow)

# COMMAND ----------

if not MLFLOW_URI:
    MLFLOW_URI = "databricks" if ON_DATABRICKS else f"file:{store.root}/mlruns"
if MLFLOW_URI.startswith("file:"):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store opt-in
from mlflow.tracking import MlflowClient

client = MlflowClient(tracking_uri=MLFLOW_URI)
experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
runs = [] if experiment is None else client.search_runs(
    [experiment.experiment_id], filter_string=f"tags.run_date = '{RUN_DATE}' and attributes.status = 'FINISHED'",
    order_by=["attributes.start_time DESC"])
latest: dict[tuple[str, str], object] = {}
for run in runs:  # newest first: keep the latest run of each (variant, readout)
    latest.setdefault((run.data.params.get("variant", "srgnn"), run.data.params.get("readout", "hybrid")), run)
print(f"{len(runs)} finished MLflow runs for {RUN_DATE} in {MLFLOW_URI} ({MLFLOW_EXPERIMENT}); "
      f"latest per variant: {sorted(latest)}")

rows = []
for (variant, readout), run in latest.items():
    for metric in ("train_loss", "valid_hr_20", "valid_mrr_20", "test_hr_20", "test_mrr_20"):
        for m in client.get_metric_history(run.info.run_id, metric):
            rows.append({"variant": variant, "readout": readout, "epoch": m.step, "metric": metric, "value": m.value})
history = pd.DataFrame(rows, columns=["variant", "readout", "epoch", "metric", "value"])
curves = (history.pivot_table(index=["variant", "readout", "epoch"], columns="metric", values="value")
          .reset_index() if len(history) else pd.DataFrame(columns=["variant", "readout", "epoch"]))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for (variant, readout), part in curves.groupby(["variant", "readout"]):
    label = f"{variant}/{readout}"
    if "train_loss" in part:
        ax1.plot(part["epoch"], part["train_loss"], marker="o", label=label)
    for metric, style in (("valid_mrr_20", "-"), ("valid_hr_20", "--")):
        if metric in part:
            ax2.plot(part["epoch"], 100 * part[metric], style, marker="o", label=f"{label} {metric}")
ax1.set_xlabel("epoch")
ax1.set_ylabel("training loss")
ax1.set_title("training loss")
ax2.set_xlabel("epoch")
ax2.set_ylabel("%")
ax2.set_title("validation HR@20 / MRR@20")
for ax in (ax1, ax2):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no MLflow runs for this date", ha="center", va="center", transform=ax.transAxes)
save(fig, "training_curves.png")
print(curves.to_string(index=False))

# COMMAND ----------

# MAGIC %md ## Metrics by session length (test examples; <= 5 clicks vs longer)

# COMMAND ----------

by_length = []
test_metrics = model_config.get("metrics", {}).get("test", {})
if store.exists(spark, "evaluation", RUN_DATE):  # SR-GNN and every baseline, same test examples
    evaluation = store.read(spark, "evaluation", RUN_DATE).where(F.col("k") == 20).toPandas()
    for r in evaluation.itertuples():
        metric = str(r.metric).split("@")[0]
        if metric in ("hr", "mrr"):
            bucket = r.length_bucket if isinstance(r.length_bucket, str) and r.length_bucket else "all"
            by_length.append({"model": r.model, "metric": metric, "bucket": bucket, "value": r.value})
else:  # no evaluation run: the exported model's own test figures
    for bucket, suffix in (("all", ""), ("<=5", "_len<=5"), (">5", "_len>5")):
        for metric in ("hr", "mrr"):
            value = test_metrics.get(f"{metric}@20{suffix}")
            if value is not None:
                by_length.append({"model": "srgnn", "metric": metric, "bucket": bucket, "value": value})
by_length = pd.DataFrame(by_length, columns=["model", "metric", "bucket", "value"])
table3 = by_length.pivot_table(index="model", columns=["metric", "bucket"], values="value")
print((100 * table3).round(2).to_string())

buckets = sorted(set(by_length["bucket"]), key=lambda b: ["all", "<=5", ">5"].index(b) if b in ("all", "<=5", ">5") else 3)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, metric in zip(axes, ("hr", "mrr")):
    part = by_length[by_length["metric"] == metric].pivot_table(index="model", columns="bucket", values="value")
    part = part.reindex(columns=[b for b in buckets if b in part.columns])
    (100 * part).plot.bar(ax=ax, rot=30)
    ax.set_ylabel(f"{metric.upper()}@20 (%)")
    ax.set_title(f"{metric.upper()}@20 by session length")
save(fig, "metrics_by_length.png")

# COMMAND ----------

# MAGIC %md ## SR-GNN, SR-GNN-NGC and SR-GNN-FC side by side (the runs of this date that exist)

# COMMAND ----------

variants = pd.DataFrame(
    [{"run": f"{v}/{r}", **{m: run.data.metrics.get(f"best_test_{m}") for m in ("hr_20", "mrr_20", "ndcg_20")}}
     for (v, r), run in sorted(latest.items())],
    columns=["run", "hr_20", "mrr_20", "ndcg_20"])
if variants.empty:  # no MLflow store: the exported model's own figures
    variants = pd.DataFrame([{"run": f"{model_config.get('variant', 'srgnn')}/{model_config.get('readout', '')}",
                              **{m.replace("@", "_"): test_metrics.get(m) for m in ("hr@20", "mrr@20", "ndcg@20")}}])
fig, ax = plt.subplots(figsize=(7, 4))
(100 * variants.set_index("run").astype(float)).plot.bar(ax=ax, rot=0)
ax.set_ylabel("test metric at 20 (%)")
ax.set_title(f"SR-GNN variants trained for {RUN_DATE} (epoch selected on valid)")
save(fig, "variants.png")
print(variants.to_string(index=False))

# COMMAND ----------

# MAGIC %md ## Recommendations of a few sessions

# COMMAND ----------

recs = store.read(spark, "recommendations", RUN_DATE)
ids = [r.session_id for r in recs.select("session_id").distinct().orderBy("session_id").limit(N_SESSIONS).collect()]
clicks = (store.read(spark, "sessions", RUN_DATE).where(F.col("session_id").isin(ids))
          .select("session_id", F.concat_ws(" ", "item_ids").alias("clicked")))
top = (recs.where(F.col("session_id").isin(ids) & (F.col("rank") <= 5))
       .groupBy("session_id", "source")
       .agg(F.concat_ws(", ", F.transform(F.array_sort(F.collect_list(F.struct("rank", "item_id"))),
                                          lambda s: s["item_id"])).alias("top_5")))
examples = clicks.join(top, "session_id", "right").orderBy("session_id").toPandas()
with pd.option_context("display.max_colwidth", 120, "display.width", 200):
    print(examples.to_string(index=False))

# COMMAND ----------

print(f"{len(written)} plots in {plots}")
