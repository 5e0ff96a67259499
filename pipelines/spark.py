"""The one place that builds the SparkSession.

- Under spark-submit, Databricks or an existing session: reuse it (its master and resources win).
- Otherwise: embedded local Spark, ``local[*]`` by default, small shuffle-partition count, UI off,
  UTC session time zone, ``PYSPARK_PYTHON`` set to this interpreter (else pandas-UDF workers may
  start another Python that lacks pyarrow).
- Java 17+ is checked before the JVM starts; a missing or old Java is one clear line.
- ``table_format='delta'`` adds the Delta extensions; without the Delta jars on the classpath it
  stops with one clear line (the jars come only from Maven, see README).
- The project's own code goes to the executors with the session (:func:`ship_code`): a zip of the
  ``srgnn`` and ``pipelines`` packages (built once per source content) is added with
  ``addPyFile``, unless the packages come from an installed (non-editable) ``srgnn-pipeline``
  wheel, which a cluster installs on every node (Databricks ``libraries: whl``).
  ``SRGNN_SHIP_CODE=always|never`` overrides that choice. A ``.whl`` in ``--py-files`` is added as
  a ``.zip`` copy (PySpark puts only .zip/.egg/.jar on the executors' path). On a cluster master a
  probe task then imports the packages on the executors before any stage writes: code they cannot
  import is one clear line, not a Py4J traceback from the middle of a stage.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from srgnn.core.errors import ConfigError, EnvironmentProblem
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
    ship_code(spark)
    return spark


# =============================================================================================
# The project's code on the executors
# =============================================================================================
SHIP_ENV = "SRGNN_SHIP_CODE"          # auto (default) | always | never
CACHE_ENV = "SRGNN_CODE_CACHE"        # folder of the code zips (default $TMPDIR/srgnn-code)
DISTRIBUTION = "srgnn-pipeline"
PACKAGES = ("srgnn", "pipelines")
PACKAGE_DATA = {"srgnn": ("csrc/*.cpp",)}  # as pyproject.toml's [tool.setuptools.package-data]
PROBE_MODULES = ("srgnn.core.contracts", "pipelines")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)     # fixed entry times: the same sources give the same zip


def source_root() -> Path:
    """The folder that holds the ``srgnn`` and ``pipelines`` packages this process imported."""
    import pipelines
    import srgnn

    root = Path(srgnn.__file__).resolve().parents[1]
    if Path(pipelines.__file__).resolve().parents[1] != root:
        raise EnvironmentProblem(f"srgnn ({srgnn.__file__}) and pipelines ({pipelines.__file__}) come "
                                 "from different folders; run from one checkout or one installed wheel")
    return root


def installed_wheel() -> bool:
    """True when this process imports ``srgnn`` and ``pipelines`` from an installed ``srgnn-pipeline``
    wheel (not editable). Metadata found in the checkout itself (the ``*.egg-info`` an editable
    install leaves in the source folder) means the code runs from source."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    located = Path(str(dist.locate_file(""))).resolve()
    if located == source_root() and (source_root() / "pyproject.toml").exists():
        return False
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    if direct.get("dir_info", {}).get("editable"):
        return False
    names = {str(f).replace("\\", "/") for f in (dist.files or [])}
    return all(f"{pkg}/__init__.py" in names for pkg in PACKAGES)


def ship_mode() -> str:
    mode = os.environ.get(SHIP_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "always", "never"):
        raise ConfigError(f"{SHIP_ENV}={os.environ[SHIP_ENV]!r}: expected auto, always or never")
    return mode


def cache_dir() -> Path:
    folder = Path(os.environ.get(CACHE_ENV) or
                  os.path.join(os.environ.get("TMPDIR", "/tmp"), "srgnn-code"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def code_files(root: Path) -> list[tuple[str, Path]]:
    """(name in the zip, file) of every module and package-data file of the two packages, sorted."""
    files: list[tuple[str, Path]] = []
    for pkg in PACKAGES:
        base = root / pkg
        for pattern in ("**/*.py", *PACKAGE_DATA.get(pkg, ())):
            for f in base.glob(pattern):
                if f.is_file() and "__pycache__" not in f.parts:
                    files.append((f.relative_to(root).as_posix(), f))
    return sorted(set(files))


def _write_zip_atomic(target: Path, entries: list[tuple[str, bytes]]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def code_zip(root: Path | None = None) -> Path:
    """``srgnn_code-<hash>.zip`` of the packages under ``root``: built once per source content."""
    root = root or source_root()
    entries = [(name, path.read_bytes()) for name, path in code_files(root)]
    digest = hashlib.sha256()
    for name, data in entries:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    target = cache_dir() / f"srgnn_code-{digest.hexdigest()[:16]}.zip"
    if not target.is_file():
        _write_zip_atomic(target, entries)
    return target


def wheel_as_zip(wheel: str) -> Path:
    """A ``.zip`` copy of a wheel (a wheel is a zip): ``<wheel name>-<hash>.zip`` in the cache."""
    data = Path(wheel).read_bytes()
    stem = Path(wheel).name[:-len(".whl")]
    target = cache_dir() / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}.zip"
    if not target.is_file():
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def _local_py_file(sc, path: str) -> str | None:
    """A local copy of a ``spark.submit.pyFiles`` entry (PySpark copies them to SparkFiles' root)."""
    from pyspark import SparkFiles

    local = path[len("file:"):] if path.startswith("file:") else path
    if "://" not in local and os.path.isfile(local):
        return local
    copied = os.path.join(SparkFiles.getRootDirectory(), os.path.basename(path))
    return copied if os.path.isfile(copied) else None


def _add_pythonpath(folder: str) -> None:
    """Processes this driver starts (TorchDistributor's torchrun, local Python workers) import it too."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *parts])


def _probe_function():
    # Defined inside a function so that cloudpickle ships it by value: unpickling it on an executor
    # must not need the packages it checks for.
    names = PROBE_MODULES

    def probe(_):
        import importlib
        import socket

        try:
            modules = [importlib.import_module(m) for m in names]
            return (socket.gethostname(), "", modules[0].__file__)
        except BaseException as exc:  # reported by the driver as one line
            return (socket.gethostname(), f"{type(exc).__name__}: {exc}", "")

    return probe


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    found = re.findall(r"^\s*(\w+(?:Error|Exception)\b:.*)$", text, flags=re.M)
    line = found[-1] if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    return line.strip()[:400]


def probe_executors(sc, hint: str) -> list[str]:
    """Import the packages on the executors (one small task per core); EnvironmentProblem if not."""
    tasks = max(2, int(sc.defaultParallelism))
    sc.setJobDescription("srgnn: the executors import the pipeline's code")
    try:
        results = sc.parallelize(range(tasks), tasks).map(_probe_function()).collect()
    except Exception as exc:  # the executors' Python did not start, or the task could not run
        raise EnvironmentProblem(f"the Spark executors could not run a Python task ({_one_line(exc)}); "
                                 f"{hint}") from None
    finally:
        sc.setJobDescription(None)
    failed = [(host, err) for host, err, _ in results if err]
    if failed:
        host, err = failed[0]
        err = " ".join(err.split())  # one line
        raise EnvironmentProblem(f"the Spark executors cannot import the pipeline's code ({err} on {host}, "
                                 f"{len(failed)} of {len(results)} probe tasks); {hint}")
    return sorted({where for _, _, where in results})


def ship_code(spark) -> None:
    """Make the project's code importable on the executors of ``spark`` (module docstring); once
    per SparkContext."""
    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect: no SparkContext; the cluster's libraries provide the code
        log.info("no SparkContext (Spark Connect): the code is not shipped")
        return
    if getattr(sc, "_srgnn_code_shipped", False):
        return
    mode = ship_mode()
    for path in filter(None, (sc.getConf().get("spark.submit.pyFiles", "") or "").split(",")):
        if path.lower().endswith(".whl"):
            local = _local_py_file(sc, path)
            if local is None:
                raise EnvironmentProblem(f"--py-files {path}: the wheel is not readable on the driver")
            copy = wheel_as_zip(local)
            sc.addPyFile(str(copy))
            log.info("wheel %s added to the executors' path as %s", path, copy.name)
    ship = mode == "always" or (mode == "auto" and not installed_wheel())
    if ship:
        root = source_root()
        archive = code_zip(root)
        sc.addPyFile(str(archive))
        _add_pythonpath(str(root))
        log.info("shipped the code of %s to the executors as %s", root, archive.name)
        hint = (f"the code goes to them as {archive.name}; check that their Python "
                "(spark.pyspark.python / PYSPARK_PYTHON) has the pipeline's dependencies")
    else:
        why = f"{SHIP_ENV}=never" if mode == "never" else f"the {DISTRIBUTION} wheel is installed"
        hint = (f"the code is not shipped ({why}): install the {DISTRIBUTION} wheel on every node, pass "
                f"it with --py-files, or set {SHIP_ENV}=always")
    sc._srgnn_code_shipped = True
    if not str(sc.master).startswith("local"):
        where = probe_executors(sc, hint)
        log.info("the executors import the code from %s", ", ".join(where))
