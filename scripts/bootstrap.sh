#!/usr/bin/env bash
# Create/refresh the project virtualenv at .venv (other tools rely on .venv/bin/python and
# .venv/bin/spark-submit). `bootstrap.sh` installs the runtime; `bootstrap.sh dev` adds test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then
  echo "Java 17+ is missing: Spark needs it (e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME)" >&2
  exit 1
fi
if ! command -v "${CXX:-c++}" >/dev/null; then
  echo "warning: no C++ compiler (c++ or \$CXX): --kernel fused (srgnn/fused_cpu.py) and its tests need one" >&2
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
# pyspark's pip-installed .venv/bin/spark-submit finds SPARK_HOME and the driver's Python through the
# first `python3` on PATH, so it fails (or runs the wrong Python) unless the venv is activated.
# Other tools call .venv/bin/spark-submit directly: make it a wrapper that pins both to this venv.
venv_bin="$PWD/.venv/bin"
spark_home=$("$venv_bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
cat > "$venv_bin/spark-submit" <<WRAPPER
#!/usr/bin/env bash
# Written by scripts/bootstrap.sh: spark-submit with this venv's pyspark and Python.
export SPARK_HOME="\${SPARK_HOME:-$spark_home}"
export PYSPARK_PYTHON="\${PYSPARK_PYTHON:-$venv_bin/python}"
export PYSPARK_DRIVER_PYTHON="\${PYSPARK_DRIVER_PYTHON:-$venv_bin/python}"
exec "$spark_home/bin/spark-submit" "\$@"
WRAPPER
chmod +x "$venv_bin/spark-submit"
