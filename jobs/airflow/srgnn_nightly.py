"""Airflow DAG ``srgnn_nightly``: the nightly pipeline for users without Databricks.

    build_sessions -> build_graph -> train -> evaluate -> select -> recommend

The Spark stages go through ``SparkSubmitOperator`` (connection ``spark_default``: a YARN,
Kubernetes or standalone master, or local), training is a ``torchrun`` step (``BashOperator``) on
the worker that has the GPUs. The run date is the logical date (``{{ ds }}``), so a backfill or a
rerun of a date rewrites that date's tables and nothing else (every stage is idempotent per run date).

Deployment (see README): the repository is checked out on the workers at ``SRGNN_HOME`` with its
``.venv`` (``bash scripts/bootstrap.sh``); this file is copied or linked into the DAGs folder.
Settings come from environment variables read when the DAG is parsed:

- ``SRGNN_HOME``: repository checkout on the workers (default: two folders above this file)
- ``SRGNN_OUTPUT``: table root (default ``$SRGNN_HOME/out/nightly``)
- ``SRGNN_INPUT`` / ``SRGNN_INPUT_FORMAT``: the raw click logs and their format
- ``SRGNN_CONFIG``: the options YAML (default ``$SRGNN_HOME/conf/prod.yaml``)
- ``SRGNN_TABLE_FORMAT``: ``parquet`` (default) or ``delta``
- ``SRGNN_EXECUTOR_PYTHON``: the executors' Python (default the checkout's ``.venv``): it needs
  the dependencies, not the project
- ``SRGNN_NPROC``: training processes (GPUs) on the training worker (default 1)
- ``SRGNN_PY_FILES``: optional wheel or zip of the packages for the executors (``--py-files``);
  without it every job ships the checkout's packages itself (docs/scaling.md)

Works with Airflow 2.4+ and 3.x.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
try:
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2 without the standard provider
    from airflow.operators.bash import BashOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

HOME = os.environ.get("SRGNN_HOME", str(Path(__file__).resolve().parents[2]))
OUTPUT = os.environ.get("SRGNN_OUTPUT", f"{HOME}/out/nightly")
INPUT = os.environ.get("SRGNN_INPUT", f"{HOME}/data/sample/diginetica/sample_train-item-views.csv")
INPUT_FORMAT = os.environ.get("SRGNN_INPUT_FORMAT", "diginetica")
CONFIG = os.environ.get("SRGNN_CONFIG", f"{HOME}/conf/prod.yaml")
TABLE_FORMAT = os.environ.get("SRGNN_TABLE_FORMAT", "parquet")
NPROC = int(os.environ.get("SRGNN_NPROC", "1"))
PY_FILES = os.environ.get("SRGNN_PY_FILES") or None
PYTHON = f"{HOME}/.venv/bin/python"
# the executors' Python: it needs the dependencies only (the jobs ship the project's code)
EXECUTOR_PYTHON = os.environ.get("SRGNN_EXECUTOR_PYTHON", PYTHON)

RUN_DATE = "{{ ds }}"  # the logical date: one partition of every table per day
COMMON = ["--config", CONFIG, "--output", OUTPUT, "--run-date", RUN_DATE]
SPARK_CONF = {
    # interpreters with the pinned dependencies (pyarrow 14.0.2 for petastorm)
    "spark.pyspark.python": EXECUTOR_PYTHON,
    "spark.pyspark.driver.python": PYTHON,
    "spark.sql.session.timeZone": "UTC",
}


def spark_stage(task_id: str, script: str, args: list[str]) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        application=f"{HOME}/jobs/{script}",
        application_args=args,
        conn_id="spark_default",
        name=f"srgnn-{task_id}-{RUN_DATE}",
        conf=SPARK_CONF,
        py_files=PY_FILES,
        env_vars={"PYSPARK_PYTHON": PYTHON},
    )


with DAG(
    dag_id="srgnn_nightly",
    description="SR-GNN session recommendations: sessions -> graph/shards -> train -> evaluate -> select -> recommend",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["srgnn", "recommendations"],
) as dag:
    build_sessions = spark_stage(
        "build_sessions", "build_sessions.py",
        ["--input", INPUT, "--format", INPUT_FORMAT, *COMMON, "--table-format", TABLE_FORMAT])
    build_graph = spark_stage(
        "build_graph", "build_graph.py", [*COMMON, "--table-format", TABLE_FORMAT])
    train = BashOperator(
        task_id="train",
        # torchrun: one process per GPU (nccl), or gloo processes on a CPU worker
        bash_command=(f"cd {HOME} && .venv/bin/torchrun --standalone --nproc_per_node={NPROC} "
                      f"jobs/train.py " + " ".join([*COMMON, "--table-format", TABLE_FORMAT])),
        env={"PATH": f"{HOME}/.venv/bin:/usr/bin:/bin"},
        append_env=True,
        execution_timeout=timedelta(hours=6),
    )
    recommend = spark_stage(
        "recommend", "recommend.py", [*COMMON, "--table-format", TABLE_FORMAT])
    evaluate = spark_stage(
        "evaluate", "evaluate.py", [*COMMON, "--table-format", TABLE_FORMAT])
    select = spark_stage(
        "select", "select_model.py", [*COMMON, "--table-format", TABLE_FORMAT])

    build_sessions >> build_graph >> train >> evaluate >> select >> recommend
