#!/usr/bin/env bash
# Create (or reuse) the separate virtualenv that the Airflow DAG tests import the DAGs in.
# Airflow's providers want a newer pyarrow than Petastorm 0.12.1 allows (pyarrow 14.0.2), so
# Airflow cannot live in .venv. Usage: bash jobs/airflow/setup_venv.sh [VENV_DIR]  (default .venv-airflow)
# SRGNN_AIRFLOW_REQS overrides the requirements (e.g. 'apache-airflow==2.10.*' + the providers).
# The venv is cached: when VENV_DIR/.ready exists (written after a successful install whose
# requirements match), nothing is reinstalled.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-airflow}
PY=${PYTHON:-python3.11}
REQS=${SRGNN_AIRFLOW_REQS:-'apache-airflow==3.* apache-airflow-providers-apache-spark apache-airflow-providers-databricks'}
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.ready" ] && [ "$(cat "$VENV/.ready")" = "$REQS" ]; then
  echo "airflow venv ready (cached): $VENV"
  exit 0
fi
start=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q --disable-pip-version-check $REQS
"$VENV/bin/pip" check || true
echo "$REQS" > "$VENV/.ready"
echo "airflow venv created in $(( $(date +%s) - start ))s: $VENV ($("$VENV/bin/python" -c 'import airflow; print("airflow", airflow.__version__)'))"
