"""The one place that builds the SparkSession.

- Under spark-submit, Databricks or an existing session: reuse it (its master and resources win).
- Otherwise: embedded local Spark, ``local[*]`` by default, small shuffle-partition count, UI off,
  UTC session time zone, ``PYSPARK_PYTHON`` set to this interpreter (else pandas-UDF workers may
  start another Python that lacks pyarrow).
- Java 17+ is checked before the JVM starts; a missing or old Java is one clear line.
- ``table_format='delta'`` adds the Delta extensions; without the Delta jars on the classpath it
  stops with one clear line (the jars come only from Maven, see README).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from srgnn.core.errors import EnvironmentProblem
from srgnn.core.log import get_logger

log = get_logger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def java_major_version() -> int | None:
    """Major version of the ``java`` that Spark will launch (JAVA_HOME first), or None if absent."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def check_java(minimum: int = 17) -> None:
    major = java_major_version()
    if major is None:
        raise EnvironmentProblem(
            f"Java {minimum}+ is required by Spark but no 'java' was found (set JAVA_HOME or install "
            f"openjdk-{minimum}-jre-headless)")
    if major < minimum:
        raise EnvironmentProblem(f"Java {minimum}+ is required by Spark; found Java {major}")


def _in_spark_submit() -> bool:
    # spark-submit (and Databricks) launch the JVM first and hand Python the gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def delta_available(spark) -> bool:
    try:
        loader = spark._jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass(DELTA_EXTENSION)
        return True
    except Exception:  # py4j wraps ClassNotFoundException
        return False


def require_delta(spark) -> None:
    if not delta_available(spark):
        raise EnvironmentProblem(
            "table format 'delta' needs the Delta Lake jars (io.delta:delta-spark_2.13:4.0.x) on "
            "Spark's classpath and they are not there; they come only from Maven. Use "
            "--table-format parquet locally, or pass the jars with --jars / spark.jars, or run on "
            "Databricks")


def get_spark(app_name: str = "srgnn", master: str | None = None,
              shuffle_partitions: int | None = None, table_format: str = "parquet",
              driver_memory: str | None = None, extra_conf: dict[str, str] | None = None):
    """Return the active SparkSession or build a local one (see module docstring)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None and not _in_spark_submit():
        check_java()
    if active is None:
        builder = SparkSession.builder.appName(app_name)
        local = not _in_spark_submit()
        conf: dict[str, str] = {
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.sources.partitionOverwriteMode": "dynamic",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.adaptive.enabled": "true",
        }
        if local:
            builder = builder.master(master or os.environ.get("SRGNN_SPARK_MASTER", "local[*]"))
            conf.update({
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "true",
                "spark.sql.shuffle.partitions": str(shuffle_partitions or 8),
                "spark.driver.memory": driver_memory or os.environ.get("SRGNN_DRIVER_MEMORY", "6g"),
                "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
                "spark.sql.warehouse.dir": os.path.join(os.environ.get("TMPDIR", "/tmp"), "srgnn-spark-warehouse"),
                "spark.driver.extraJavaOptions": "-Dderby.system.home=" + os.environ.get("TMPDIR", "/tmp"),
            })
        elif shuffle_partitions:
            conf["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
        if table_format == "delta":
            conf["spark.sql.extensions"] = DELTA_EXTENSION
            conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
        for k, v in {**conf, **(extra_conf or {})}.items():
            builder = builder.config(k, v)
        spark = builder.getOrCreate()
        if local:
            spark.sparkContext.setLogLevel("WARN")
        log.info("Spark %s started (master=%s)", spark.version, spark.sparkContext.master)
    else:
        spark = active
        if shuffle_partitions:
            spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
    if table_format == "delta":
        require_delta(spark)
    return spark
