"""Airflow DAG ``srgnn_nightly_databricks``: trigger the asset bundle's ``srgnn_nightly`` job.

For teams that schedule everything in Airflow but run the pipeline on Databricks: deploy the bundle
(``databricks bundle deploy -t prod``), leave its own schedule paused or not as you prefer, and
let this DAG start a run per logical date with ``run_date={{ ds }}`` (the job parameter every task
reads). ``DatabricksRunNowOperator`` finds the job by name and waits for the run to finish.

Settings (environment, read when the DAG is parsed): ``SRGNN_DATABRICKS_CONN`` (default
``databricks_default``), ``SRGNN_DATABRICKS_JOB_NAME`` (default ``srgnn_nightly``, the prod target's
name; a dev deployment is named ``[dev <user>] srgnn_nightly``). Works with Airflow 2.4+ and 3.x.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
from airflow.providers.databricks.operators.databricks import DatabricksRunNowOperator

with DAG(
    dag_id="srgnn_nightly_databricks",
    description="Run the srgnn_nightly Databricks job (asset bundle) for the logical date",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["srgnn", "databricks"],
) as dag:
    run_srgnn_nightly = DatabricksRunNowOperator(
        task_id="run_srgnn_nightly",
        databricks_conn_id=os.environ.get("SRGNN_DATABRICKS_CONN", "databricks_default"),
        job_name=os.environ.get("SRGNN_DATABRICKS_JOB_NAME", "srgnn_nightly"),
        job_parameters={"run_date": "{{ ds }}"},
        wait_for_termination=True,
        execution_timeout=timedelta(hours=8),
    )
