# Databricks notebook source
# MAGIC %md
# MAGIC # 01 - The data: what stage 1 made of the click logs
# MAGIC
# MAGIC Reads the tables of one run date (`sessions`, `item_vocab`, `quarantine` and stage 1's stats JSON)
# MAGIC and draws four plots: session lengths, the item popularity long tail, clicks per day, and what
# MAGIC stage 1 filtered and quarantined.
# MAGIC
# MAGIC Parameters (Databricks widgets, or environment variables when run as plain Python):
# MAGIC `output` (`SRGNN_OUTPUT`, the table root), `run_date` (`SRGNN_RUN_DATE`), `table_format`
# MAGIC (`SRGNN_TABLE_FORMAT`), `plots_dir` (`SRGNN_PLOTS_DIR`, default `OUT/reports/run_date=D/plots`).
# MAGIC
# MAGIC Locally: `.venv/bin/python notebooks/01_data.py` after `.venv/bin/python jobs/nightly.py`.

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

import matplotlib

if "DATABRICKS_RUNTIME_VERSION" not in os.environ:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt


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

# COMMAND ----------

from pyspark.sql import functions as F

from pipelines.spark import get_spark
from pipelines.tables import TableStore
from srgnn.core.fs import local_path, read_json

spark = get_spark("srgnn-notebook-data", table_format=TABLE_FORMAT)
store = TableStore(OUTPUT, TABLE_FORMAT)
plots = Path(local_path(PLOTS_DIR or f"{store.root}/reports/run_date={RUN_DATE}/plots"))
plots.mkdir(parents=True, exist_ok=True)

sessions = store.read(spark, "sessions", RUN_DATE)
vocab = store.read(spark, "item_vocab", RUN_DATE)
quarantine = store.read(spark, "quarantine", RUN_DATE)
stats = read_json(f"{store.root}/stats/run_date={RUN_DATE}/build_sessions.json")
written: list[Path] = []


def save(fig, name: str) -> None:
    path = plots / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    print(f"wrote {path}")


# COMMAND ----------

# MAGIC %md ## Session lengths (clicks per session, train and test)

# COMMAND ----------

lengths = (sessions.select("split", F.size("item_idx").alias("length"))
           .groupBy("split", "length").count().orderBy("split", "length").toPandas())
fig, ax = plt.subplots(figsize=(7, 4))
for split, part in lengths.groupby("split"):
    ax.bar(part["length"] + (0.2 if split == "test" else -0.2), part["count"], width=0.4, label=split)
ax.set_xlabel("clicks per session")
ax.set_ylabel("sessions")
ax.set_yscale("log")
ax.set_title(f"Session lengths, run date {RUN_DATE}")
ax.legend()
save(fig, "session_lengths.png")
print(lengths.groupby("split")["count"].sum().to_string())

# COMMAND ----------

# MAGIC %md ## Item popularity: the long tail (training clicks per item, by rank)

# COMMAND ----------

support = vocab.select("support").orderBy(F.col("support").desc()).toPandas()["support"].to_numpy()
fig, ax = plt.subplots(figsize=(7, 4))
ax.loglog(range(1, len(support) + 1), support, marker=".", linestyle="none")
ax.set_xlabel("item rank")
ax.set_ylabel("support (clicks)")
top = max(1, len(support) // 10)
share = support[:top].sum() / max(support.sum(), 1)
ax.set_title(f"{len(support):,} items; the top 10% hold {100 * share:.0f}% of the clicks")
save(fig, "item_popularity.png")

# COMMAND ----------

# MAGIC %md ## Clicks per day (kept clicks, by session date)

# COMMAND ----------

per_day = (sessions.select("session_date", "split", F.size("item_idx").alias("clicks"))
           .groupBy("session_date", "split").agg(F.sum("clicks").alias("clicks"))
           .orderBy("session_date").toPandas())
fig, ax = plt.subplots(figsize=(8, 4))
for split, part in per_day.groupby("split"):
    ax.bar(part["session_date"], part["clicks"], label=split)
ax.set_xlabel("session date")
ax.set_ylabel("clicks")
ax.set_title("Clicks per day")
ax.legend()
fig.autofmt_xdate()
save(fig, "clicks_per_day.png")

# COMMAND ----------

# MAGIC %md ## What stage 1 filtered and quarantined

# COMMAND ----------


# Rows: read = used + filtered (by step) + quarantined (stage 1 asserts it); sessions: after each filter.
rows = {"read": stats.get("rows_read", 0), "used": stats.get("rows_used", 0),
        **{f"filtered: {k}": v for k, v in (stats.get("filtered_by_step") or {}).items() if v},
        "quarantined": stats.get("rows_quarantined", 0)}
ORDER = ["read", "min_length_2", "min_item_support_5", "on_split_date", "train", "test_before_unknown_item_filter", "test"]
funnel = {k: v for k, v in sorted((stats.get("sessions") or {}).items(),
                                  key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER))
          if isinstance(v, (int, float))}
reasons = quarantine.groupBy("reason").count().orderBy(F.col("count").desc()).toPandas()

fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
ax1.barh(list(rows)[::-1], list(rows.values())[::-1],
         color=["tab:red" if k == "quarantined" else "tab:orange" if k.startswith("filtered") else "tab:blue"
                for k in rows][::-1])
ax1.set_xscale("symlog")
ax1.set_title(f"clicks (rows): {rows['read']:,} read, {rows['used']:,} used")
ax2.barh(list(funnel)[::-1], list(funnel.values())[::-1], color="tab:green")
ax2.set_xscale("log")
ax2.set_title("sessions after each step")
if len(reasons):
    ax3.barh(reasons["reason"][::-1], reasons["count"][::-1], color="tab:red")
    ax3.set_title(f"quarantined rows by reason ({int(reasons['count'].sum()):,})")
else:
    ax3.text(0.5, 0.5, "no row quarantined", ha="center", va="center")
    ax3.set_axis_off()
save(fig, "stage1_filtering.png")
for k, v in [*rows.items(), *(("sessions " + k, v) for k, v in funnel.items())]:
    print(f"{k:<40} {v:>12,}")
print(f"split date {stats.get('split_date')}: {stats.get('train_sessions')} train / {stats.get('test_sessions')} "
      f"test sessions, {stats.get('train_pairs')} / {stats.get('test_pairs')} prefix pairs, "
      f"{stats.get('n_items')} items")
print(reasons.to_string(index=False) if len(reasons) else "quarantine: empty")

# COMMAND ----------

print(f"{len(written)} plots in {plots}")
