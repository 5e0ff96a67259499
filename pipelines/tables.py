"""The one place for table I/O.

Tables live under a root (``OUT``) and are partitioned by ``run_date``:

- ``parquet`` (local default): the table is the folder ``OUT/<table>/``, one partition folder
  ``OUT/<table>/run_date=<date>/`` per run. A write goes to a hidden staging folder
  (``_staging-...``; Spark skips names starting with ``_``) and is swapped in by renames, so a
  reader sees the old partition or the new one, never a half-written one; other dates are untouched.
- ``delta`` (Databricks, or wherever the Delta jars are on the classpath): one Delta table per
  name at ``OUT/<table>``, written with ``replaceWhere run_date = <date>`` (atomic by the Delta log).

Rerunning a job for the same run date therefore replaces that date's rows and never duplicates them.
Side files (stats, manifests) go through :mod:`srgnn.core.fs` (temp file + rename).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from srgnn.core.commit import RunCommit
from srgnn.core.contracts import PARTITION_COLUMN, TABLE_FORMATS
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.fs import STAGING_PREFIX, TRASH_PREFIX, token
from srgnn.core.layout import Layout
from srgnn.core.log import get_logger

log = get_logger(__name__)


def hadoop_fs(spark, path: str):
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark._jsc.hadoopConfiguration()), hpath


def path_exists(spark, path: str) -> bool:
    fs, hpath = hadoop_fs(spark, path)
    return bool(fs.exists(hpath))


def atomic_write_dir(spark, final_path: str, write: Callable[[str], None]) -> str:
    """Run ``write(staging_path)`` then swap the staging folder in place of ``final_path``.

    The staging folder is a sibling named ``_staging-<token>`` (no ``=``), so readers of the parent
    never take it for a partition.
    """
    parent = final_path.rstrip("/").rsplit("/", 1)[0]
    tok = token()
    staging = f"{parent}/{STAGING_PREFIX}{tok}"
    trash = f"{parent}/{TRASH_PREFIX}{tok}"
    fs, final_h = hadoop_fs(spark, final_path)
    jvm = spark._jvm
    staging_h, trash_h = jvm.org.apache.hadoop.fs.Path(staging), jvm.org.apache.hadoop.fs.Path(trash)
    try:
        write(staging)
    except BaseException:
        fs.delete(staging_h, True)  # a failed write leaves no staging litter
        raise
    had_old = fs.exists(final_h)
    if had_old and not fs.rename(final_h, trash_h):
        raise OSError(f"could not move {final_path} aside")
    if not fs.rename(staging_h, final_h):
        if had_old:
            fs.rename(trash_h, final_h)
        raise OSError(f"could not move {staging} to {final_path}")
    if had_old:
        fs.delete(trash_h, True)
    return final_path


@dataclass(frozen=True)
class TableStore:
    root: str
    fmt: str = "parquet"

    def __post_init__(self) -> None:
        if self.fmt not in TABLE_FORMATS:
            raise ConfigError(f"table format {self.fmt!r} is not one of {list(TABLE_FORMATS)}")
        object.__setattr__(self, "root", self.layout.root)

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    def path(self, table: str) -> str:
        return self.layout.table(table)

    def partition_path(self, table: str, run_date: str) -> str:
        return self.layout.partition(table, run_date)

    def write(self, df, table: str, run_date: str, commit: RunCommit | None = None) -> str:
        """Replace the ``run_date`` partition of ``table`` with ``df`` (atomically for readers).

        With ``commit`` (parquet), the partition is written to staging now and published with the
        run's other outputs when the commit publishes; Delta writes are atomic per table by the
        Delta log and happen now.
        """
        from pyspark.sql import functions as F

        spark = df.sparkSession
        if PARTITION_COLUMN in df.columns:
            df = df.drop(PARTITION_COLUMN)
        if self.fmt == "parquet":
            target = self.partition_path(table, run_date)
            if commit is not None:
                commit.add(target, lambda p: df.write.mode("overwrite").parquet(p))
            else:
                atomic_write_dir(spark, target, lambda p: df.write.mode("overwrite").parquet(p))
        else:
            target = self.path(table)
            (df.withColumn(PARTITION_COLUMN, F.lit(run_date).cast("date"))
               .write.format("delta").mode("overwrite")
               .option("replaceWhere", f"{PARTITION_COLUMN} = '{run_date}'")
               .partitionBy(PARTITION_COLUMN).save(target))
        log.info("wrote table %s for run_date=%s (%s) at %s", table, run_date, self.fmt, target)
        return target

    def exists(self, spark, table: str, run_date: str) -> bool:
        if self.fmt == "parquet":
            return path_exists(spark, self.partition_path(table, run_date))
        if not path_exists(spark, self.path(table) + "/_delta_log"):
            return False
        return self._read_delta(spark, table, run_date).limit(1).count() > 0

    def _read_delta(self, spark, table: str, run_date: str):
        from pyspark.sql import functions as F
        return (spark.read.format("delta").load(self.path(table))
                .where(F.col(PARTITION_COLUMN) == F.lit(run_date).cast("date")))

    def read(self, spark, table: str, run_date: str):
        """The ``run_date`` partition of ``table`` (with its ``run_date`` column)."""
        if not self.exists(spark, table, run_date):
            raise InputError(f"table '{table}' has no partition run_date={run_date} under {self.root} "
                             f"(format {self.fmt}); run the stage that writes it first")
        if self.fmt == "parquet":
            return (spark.read.option("basePath", self.path(table))
                    .parquet(self.partition_path(table, run_date)))
        return self._read_delta(spark, table, run_date)


# ---- Spark's errors that describe the environment or the input, not a bug ---------------------
_SPARK_EXPECTED = (
    ("No space left on device", "no space left on the device"),
    ("Permission denied", "permission denied"),
    ("ParentNotDirectoryException", "a file is where a folder belongs"),
    ("Parent path is not a directory", "a file is where a folder belongs"),
    ("is not a directory", "a file is where a folder belongs"),
    ("Not a directory", "a file is where a folder belongs"),
    ("is not a Parquet file", "unreadable Parquet"),
    ("Could not read footer", "unreadable Parquet"),
    ("FAILED_READ_FILE", "unreadable input file"),
    ("PATH_NOT_FOUND", "path not found"),
)


def spark_failure_line(exc: BaseException) -> str | None:
    """One line for a Spark/Py4J error caused by the environment or an unreadable file."""
    text = str(exc)
    name = type(exc).__name__
    if not any(k in name for k in ("Py4J", "Captured", "Analysis", "Spark", "Illegal", "Arrow")):
        return None
    for key, what in _SPARK_EXPECTED:
        if key in text:
            detail = next((ln.strip() for ln in text.splitlines() if key in ln), key)
            return f"{what}: {detail[:400]}"
    return None


def _register() -> None:
    from srgnn.core.cli import register_translator

    register_translator(spark_failure_line)


_register()
