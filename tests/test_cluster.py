"""Clusters on the loopback interface (127.0.0.1), started and stopped here by process id.

- A Spark standalone master and two workers (``spark-class ...Master`` / ``...Worker``: the pip
  package has no start scripts) whose Python has the pipeline's dependencies but not the project: a
  bare virtualenv whose ``.pth`` names this venv's site-packages folder, so the editable install's
  finder (a ``.pth`` of its own, only read from a site folder) is not seen. Stages 1, 2 and 4 run
  on it with plain ``spark-submit --master spark://127.0.0.1:PORT`` and write what a local run writes.
- Stage 3 on two torchrun "nodes" (``--nnodes 2``, c10d rendezvous) trains to the same weights as
  one ``--nproc_per_node 2`` launch, bit for bit; the ranks read disjoint row groups; rank 0 alone
  writes. TorchDistributor (``local_mode``, no GPU) through jobs/databricks/train_distributor.py,
  run by the bare Python, trains to those weights too.

Slow (a few minutes on 2 cores): marked ``slow``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = "2016-06-01"
# Tiny training runs: 2 epochs of a 16-wide model on the sample's shards.
TRAIN_ARGS = ["--run-date", RUN_DATE, "--epochs", "2", "--hidden-size", "16", "--batch-size", "100",
              "--num-threads", "1", "--no-progress", "--no-eval-test", "--mlflow-tracking-uri", "none"]
OWN_ENV = ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SRGNN_SHIP_CODE", "SPARK_HOME",
           "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "RANK", "WORLD_SIZE", "LOCAL_RANK",
           "MASTER_ADDR", "MASTER_PORT")


SPARK_LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (TRACE|DEBUG|INFO|WARN) ")


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that would hand the project to a child."""
    env = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
    env.update({"SPARK_LOCAL_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "SRGNN_DRIVER_MEMORY": "1g"})
    env.update(extra)
    return env


class Processes:
    """Processes started by a test, stopped by their ids (TERM, then KILL after 20 s)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, **kw) -> subprocess.Popen:
        fh = open(log, "wb")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        fh.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def wait_for(predicate, what: str, timeout: float, procs: list[subprocess.Popen] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"{what}: a process ended early: {dead}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)


# ---- a Python with the dependencies and without the project -------------------------------------
@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # a path line adds the folder to sys.path without reading the .pth files in it (the editable finder)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cwd = venv.parent
    env = clean_env()
    ok = subprocess.run([str(python), "-c", "import pyspark, torch, petastorm, pyarrow"],
                        capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    for pkg in ("srgnn", "pipelines"):
        missing = subprocess.run([str(python), "-c", f"import {pkg}"], capture_output=True, text=True,
                                 env=env, cwd=cwd, timeout=300)
        assert missing.returncode == 1 and f"No module named '{pkg}'" in missing.stderr, missing.stderr
    return str(python)


# ---- Spark standalone ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standalone(tmp_path_factory, bare_python):
    """``spark://127.0.0.1:PORT`` with two workers of one core and 1 GiB each."""
    work = tmp_path_factory.mktemp("standalone")
    spark_class = str(spark_home() / "bin" / "spark-class")
    env = clean_env(SPARK_HOME=str(spark_home()), SPARK_DAEMON_MEMORY="256m", PYSPARK_PYTHON=bare_python)
    procs = Processes()
    try:
        port = free_port()
        master_log = work / "master.log"
        master = procs.start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                              "--port", str(port), "--webui-port", str(free_port())],
                             master_log, env=env, cwd=work)
        wait_for(lambda: "I have been elected leader" in master_log.read_text(errors="replace"),
                 "the master", 120, [master])
        url = f"spark://127.0.0.1:{port}"
        for i in (1, 2):
            (work / f"worker{i}").mkdir()
            procs.start([spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                         "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                         "--work-dir", str(work / f"worker{i}")], work / f"worker{i}.log", env=env, cwd=work)
        wait_for(lambda: master_log.read_text(errors="replace").count("Registering worker") >= 2,
                 "two workers", 120, procs.procs)
        yield {"url": url, "work": work}
    finally:
        procs.stop()


def spark_submit(cluster: dict, python: str, job: str, args: list[str], cwd: Path, py_files: str = "",
                 **env: str) -> subprocess.CompletedProcess:
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster["url"], "--deploy-mode", "client",
           "--driver-memory", "1g", "--conf", "spark.executor.memory=512m", "--conf", "spark.executor.cores=1",
           "--conf", "spark.cores.max=2", "--conf", "spark.ui.enabled=false",
           "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
           "--conf", "spark.sql.shuffle.partitions=4", "--conf", f"spark.pyspark.python={python}"]
    if py_files:
        cmd += ["--py-files", py_files]
    cmd += [str(ROOT / "jobs" / job), *args]
    full_env = clean_env(SPARK_HOME=str(spark_home()), PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python,
                         SRGNN_CODE_CACHE=str(cwd / "code-cache"), **env)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


def rows(spark, path: str | Path) -> list[tuple]:
    df = spark.read.parquet(str(path))
    return sorted(tuple(r) for r in df.select(sorted(df.columns)).collect())


def build_wheel(dest: Path) -> Path:
    """The project's wheel, built from a copy of its sources (the checkout is left alone)."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("srgnn", "pipelines"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(dest / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (dest / "dist").glob("srgnn_pipeline-*.whl")
    return wheel


def test_stages_1_2_4_on_a_standalone_cluster_write_what_a_local_run_writes(
        spark, sample_stage2, standalone, bare_python, tmp_path):
    from pipelines.recommend import RecommendConfig, recommend

    out = tmp_path / "out-cluster"
    local = Path(sample_stage2["output"])

    # stage 1: the code only from the project's wheel in --py-files (nothing shipped by get_spark)
    wheel = build_wheel(tmp_path / "wheel")
    proc = spark_submit(standalone, bare_python, "build_sessions.py",
                        ["--input", str(ROOT / "data/sample/diginetica/sample_train-item-views.csv"),
                         "--format", "diginetica", "--output", str(out), "--run-date", RUN_DATE],
                        tmp_path, py_files=str(wheel), SRGNN_SHIP_CODE="never")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "added to the executors' path as srgnn_pipeline-" in proc.stdout
    assert "shipped the code" not in proc.stdout
    for table in ("sessions", "item_vocab", "quarantine"):
        part = f"{table}/run_date={RUN_DATE}"
        assert rows(spark, out / part) == rows(spark, local / part), table

    # stage 2: the code shipped by get_spark as a zip of the packages
    proc = spark_submit(standalone, bare_python, "build_graph.py", ["--output", str(out), "--run-date", RUN_DATE],
                        tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # spark-submit hands the driver's stderr and stdout on to its stdout
    assert "shipped the code of" in proc.stdout and "srgnn_code-" in proc.stdout
    part = f"item_graph/run_date={RUN_DATE}"
    assert rows(spark, out / part) == rows(spark, local / part)
    for split in ("train", "valid", "test"):
        shard = f"shards/run_date={RUN_DATE}/{split}"
        assert rows(spark, out / shard) == rows(spark, local / shard), split
    manifest = json.loads((out / f"shards/run_date={RUN_DATE}/_manifest.json").read_text())
    expected = json.loads((local / f"shards/run_date={RUN_DATE}/_manifest.json").read_text())
    assert manifest["splits"] == expected["splits"] and manifest["n_items"] == expected["n_items"]

    # stage 3 (not Spark), then stage 4 on the cluster and locally from copies of the same folder
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), "--output", str(out), *TRAIN_ARGS],
                          capture_output=True, text=True, timeout=900, env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out_local = tmp_path / "out-local"
    shutil.copytree(out, out_local)
    proc = spark_submit(standalone, bare_python, "recommend.py", ["--output", str(out), "--run-date", RUN_DATE],
                        tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    recommend(spark, RecommendConfig(output=str(out_local), run_date=RUN_DATE))
    part = f"recommendations/run_date={RUN_DATE}"
    got, want = rows(spark, out / part), rows(spark, out_local / part)
    assert len(got) > 0 and got == want


def test_code_the_executors_cannot_import_is_one_line_and_writes_nothing(standalone, bare_python, tmp_path):
    broken = tmp_path / "srgnn_pipeline-0.1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip file")
    out = tmp_path / "out"
    proc = spark_submit(standalone, bare_python, "build_sessions.py",
                        ["--input", str(ROOT / "data/sample/diginetica/sample_train-item-views.csv"),
                         "--format", "diginetica", "--output", str(out), "--run-date", RUN_DATE],
                        tmp_path, py_files=str(broken), SRGNN_SHIP_CODE="never")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    # the driver's own lines (spark-submit hands them on to its stdout), without the JVM's log lines
    ours = [ln for ln in proc.stdout.strip().splitlines() if not SPARK_LOG_LINE.match(ln)]
    last = ours[-1]
    assert last.startswith("error: the Spark executors cannot import the pipeline's code "
                           "(ModuleNotFoundError: No module named 'srgnn'"), last
    assert "SRGNN_SHIP_CODE=always" in last
    assert "Traceback" not in proc.stdout + proc.stderr and "Py4JJavaError" not in proc.stdout + proc.stderr
    assert not out.exists()


# ---- stage 3: torchrun nodes and TorchDistributor ---------------------------------------------------
# Run in every training process: records the row groups Petastorm hands to each rank (observes only).
READ_LOG = '''
import json, os
try:
    from petastorm.reader import Reader
except Exception:
    Reader = None
if Reader is not None and os.environ.get("SRGNN_TEST_READS"):
    _partition = Reader._partition_row_groups

    def _logged(self, dataset, row_groups, shard_count, cur_shard, filtered, seed):
        picked = _partition(self, dataset, row_groups, shard_count, cur_shard, filtered, seed)
        line = {"rank": int(os.environ.get("RANK", "0")), "shard": cur_shard, "count": shard_count,
                "groups": [f"{os.path.basename(os.path.dirname(row_groups[i].path))}/"
                           f"{os.path.basename(row_groups[i].path)}#{row_groups[i].row_group}" for i in picked]}
        with open(os.path.join(os.environ["SRGNN_TEST_READS"], f"{os.getpid()}.jsonl"), "a") as fh:
            fh.write(json.dumps(line) + "\\n")
        return picked

    Reader._partition_row_groups = _logged
'''


def copy_stage2(src: str, dest: Path) -> Path:
    for part in (f"shards/run_date={RUN_DATE}", f"item_vocab/run_date={RUN_DATE}"):
        shutil.copytree(Path(src) / part, dest / part)
    return dest


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / f"models/run_date={RUN_DATE}/model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def torchrun(args: list[str], out: Path, log: Path, procs: Processes, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, str(ROOT / "jobs" / "train.py"),
           "--output", str(out), *TRAIN_ARGS]
    return procs.start(cmd, log, env=clean_env(**env), cwd=out)


@pytest.fixture(scope="module")
def two_process_reference(sample_stage2, tmp_path_factory) -> dict:
    """One torchrun launch of 2 processes (the reference weights)."""
    out = copy_stage2(sample_stage2["output"], tmp_path_factory.mktemp("ref"))
    procs = Processes()
    try:
        proc = torchrun(["--standalone", "--nproc_per_node", "2"], out, out / "torchrun.log", procs)
        proc.wait(timeout=900)
    finally:
        procs.stop()
    assert proc.returncode == 0, (out / "torchrun.log").read_text()[-4000:]
    return weights(out)


def test_two_torchrun_nodes_train_the_weights_of_one_node_with_two_processes(
        sample_stage2, two_process_reference, tmp_path):
    # Each node reads its own copy of stage 2's output, so what a node writes stays in its folder.
    nodes = [copy_stage2(sample_stage2["output"], tmp_path / f"node{i}") for i in (0, 1)]
    reads = tmp_path / "reads"
    reads.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(READ_LOG)
    port = free_port()
    procs = Processes()
    try:
        launched = [torchrun(["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "srgnn-test",
                              "--rdzv-conf", f"is_host={1 - i},join_timeout=300", "--local-addr", "127.0.0.1"],
                             node, node / "torchrun.log", procs, PYTHONPATH=str(hooks), SRGNN_TEST_READS=str(reads))
                    for i, node in enumerate(nodes)]
        for p in launched:
            p.wait(timeout=900)
    finally:
        procs.stop()
    for p, node in zip(launched, nodes):
        assert p.returncode == 0, (node / "torchrun.log").read_text()[-4000:]

    # rank 0 alone writes: one node folder holds the export, the checkpoints and nothing else is new
    written = [node for node in nodes if (node / "models").exists()]
    assert len(written) == 1
    (other,) = [node for node in nodes if node not in written]
    assert sorted(p.name for p in other.iterdir()) == ["item_vocab", "shards", "torchrun.log"]
    assert (written[0] / f"checkpoints/run_date={RUN_DATE}").is_dir()
    assert_same_weights(weights(written[0]), two_process_reference)

    # the ranks read disjoint row groups that together are the whole split, every epoch
    lines = [json.loads(ln) for f in sorted(reads.glob("*.jsonl")) for ln in f.read_text().splitlines()]
    assert {ln["rank"] for ln in lines} == {0, 1} and all(ln["count"] == 2 for ln in lines)
    assert all(ln["shard"] == ln["rank"] for ln in lines)
    by_rank: dict[int, list[list[str]]] = {0: [], 1: []}
    for ln in lines:
        by_rank[ln["rank"]].append(ln["groups"])
    assert len(by_rank[0]) == len(by_rank[1]) >= 2 * 1 + 1      # 2 epochs of train + valid
    splits = json.loads((nodes[0] / f"shards/run_date={RUN_DATE}/_manifest.json").read_text())["splits"]
    for g0, g1 in zip(by_rank[0], by_rank[1]):
        split = {g.split("/")[0] for g in g0 + g1}
        assert len(split) == 1
        assert not set(g0) & set(g1)
        assert len(g0) + len(g1) == splits[split.pop()]["row_groups"]


def test_torch_distributor_on_cpu_from_a_python_without_the_project(
        sample_stage2, two_process_reference, bare_python, tmp_path):
    out = copy_stage2(sample_stage2["output"], tmp_path / "out")
    cmd = [bare_python, str(ROOT / "jobs" / "databricks" / "train_distributor.py"), "--num-processes", "2",
           "--output", str(out), *TRAIN_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=clean_env(SRGNN_CODE_CACHE=str(tmp_path / "code-cache")))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "2 processes" in proc.stdout
    assert_same_weights(weights(out), two_process_reference)
