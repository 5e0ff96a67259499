#!/usr/bin/env bash
# Create/refresh the project virtualenv at .venv (other tools rely on .venv/bin/python and
# .venv/bin/spark-submit). `bootstrap.sh` installs the runtime; `bootstrap.sh dev` adds test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then
  echo "Java 17+ is missing: Spark needs it (e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME)" >&2
  exit 1
fi
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first: a pinned 2.13.0 takes the local CPU wheel; a bare `torch` would pull a CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
if [ "${1:-}" = dev ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
else
  .venv/bin/pip install -q --disable-pip-version-check -e .
fi
.venv/bin/pip check
