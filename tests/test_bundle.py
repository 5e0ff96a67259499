"""The Databricks asset bundle, checked offline: databricks.yml + resources/*.yml load as jobs with the
databricks-bundles package (strict: an unknown field fails), every file they name exists, every option
they pass is a flag of that task's job (its command line), the table format reaches every stage, and
the tasks run in stage order."""
from __future__ import annotations

import copy
import functools
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["build_sessions", "build_graph", "train", "evaluate", "select", "recommend"]
VAR_RE = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")


def _merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_bundle() -> tuple[dict, dict[str, Path]]:
    """databricks.yml with its includes merged; and, per job, the file that defines it."""
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    job_files: dict[str, Path] = {}
    for pattern in bundle.get("include", []):
        files = sorted(glob.glob(str(ROOT / pattern)))
        assert files, f"include pattern {pattern!r} matches no file"
        for f in files:
            part = yaml.safe_load(Path(f).read_text())
            for name in part.get("resources", {}).get("jobs", {}):
                job_files[name] = Path(f)
            bundle = _merge(bundle, part)
    for name in bundle.get("resources", {}).get("jobs", {}):
        job_files.setdefault(name, ROOT / "databricks.yml")
    return bundle, job_files


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def _jobs_for_target(bundle: dict, target: str) -> dict:
    resources = bundle.get("resources", {})
    over = bundle["targets"][target].get("resources")
    return _merge(resources, over)["jobs"] if over else resources["jobs"]


def _topological(tasks: list[dict]) -> list[str]:
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in tasks}
    order, done = [], set()
    while len(order) < len(deps):
        ready = [k for k, ds in deps.items() if k not in done and all(d in done for d in ds)]
        assert ready, f"dependency cycle among {sorted(set(deps) - done)}"
        for k in ready:  # tasks in file order among those ready
            order.append(k)
            done.add(k)
    return order


def test_every_job_loads_with_databricks_bundles_for_every_target(bundle):
    from databricks.bundles.jobs import Job

    data, _ = bundle
    assert set(data["targets"]) == {"dev", "prod"}
    for target in data["targets"]:
        jobs = _jobs_for_target(data, target)
        assert "srgnn_nightly" in jobs
        for name, spec in jobs.items():
            job = Job.from_dict(spec)  # raises on any field the Jobs API does not know
            assert job.name == spec["name"]
            assert job.as_dict()["tasks"], f"{target}/{name}: no tasks"


def test_targets_variables_schedule_and_clusters(bundle):
    from databricks.bundles.jobs import Job

    data, _ = bundle
    dev, prod = data["targets"]["dev"], data["targets"]["prod"]
    assert dev.get("default") is True and dev["mode"] == "development"
    assert prod["mode"] == "production"
    declared = set(data["variables"])
    assert {"catalog", "schema", "input_path", "table_format"} <= declared
    assert data["variables"]["table_format"]["default"] == "delta"
    used = set(VAR_RE.findall(yaml.safe_dump(data)))
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"
    for target in ("dev", "prod"):
        assert set(data["targets"][target].get("variables", {})) <= declared
    assert dev["variables"]["schedule_pause_status"] == "PAUSED"
    assert prod["variables"]["schedule_pause_status"] == "UNPAUSED"

    job = Job.from_dict(data["resources"]["jobs"]["srgnn_nightly"])
    cron = job.schedule.quartz_cron_expression
    assert len(cron.split()) in (6, 7), f"not a quartz cron expression: {cron}"
    assert str(job.schedule.pause_status) == "${var.schedule_pause_status}"
    clusters = {c.job_cluster_key: c.new_cluster for c in job.job_clusters}
    by_task = {t.task_key: t for t in job.tasks}
    gpu = clusters[by_task["train"].job_cluster_key]
    gpu_version = str(gpu.spark_version)
    gpu_version = data["variables"][VAR_RE.fullmatch(gpu_version).group(1)]["default"] \
        if VAR_RE.fullmatch(gpu_version) else gpu_version
    assert "gpu-ml" in gpu_version, gpu_version
    for key in ("build_sessions", "build_graph", "recommend"):
        cpu = clusters[by_task[key].job_cluster_key]
        assert by_task[key].job_cluster_key != by_task["train"].job_cluster_key
        version = str(cpu.spark_version)
        version = data["variables"][VAR_RE.fullmatch(version).group(1)]["default"] \
            if VAR_RE.fullmatch(version) else version
        assert "gpu" not in version, version


def test_task_order_is_the_stage_order(bundle):
    data, _ = bundle
    tasks = data["resources"]["jobs"]["srgnn_nightly"]["tasks"]
    order = _topological(tasks)
    assert [k for k in order if k in STAGES] == STAGES
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in tasks}
    assert deps["build_sessions"] == []
    for prev, nxt in zip(STAGES, STAGES[1:]):
        assert deps[nxt] == [prev], f"{nxt} must depend on {prev}, got {deps[nxt]}"
    if "evaluate" in deps:
        assert deps["evaluate"] == ["train"]


def test_every_file_the_bundle_names_exists(bundle):
    data, job_files = bundle
    for name, path in data["artifacts"].items():
        folder = (ROOT / path["path"]).resolve()
        assert (folder / "pyproject.toml").is_file(), f"artifact {name}: no pyproject.toml in {folder}"
        assert "wheel" in path["build"]
    for job_name, job in data["resources"]["jobs"].items():
        base = job_files[job_name].parent
        for task in job["tasks"]:
            py = task["spark_python_task"]["python_file"]
            assert (base / py).resolve().is_file(), f"task {task['task_key']}: {py} does not exist"
            for lib in task.get("libraries", []):
                if "whl" in lib:  # built by the artifact into dist/
                    assert (base / lib["whl"]).resolve().parent == ROOT / "dist"
            for p in task["spark_python_task"].get("parameters", []):
                if p.startswith("${workspace.file_path}/"):
                    rel = p[len("${workspace.file_path}/"):]
                    assert (ROOT / rel).is_file(), f"task {task['task_key']}: {rel} does not exist"


@functools.lru_cache(maxsize=None)
def job_flags(job: Path) -> frozenset[str]:
    """The flags a job's command line takes: what its ``--help`` lists, plus the options of a
    pre-parser in its source (jobs/databricks/train_distributor.py's --num-processes, --cpu)."""
    proc = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", proc.stdout))
    flags |= set(re.findall(r"add_argument\(\s*[\"']--([a-z][a-z0-9-]*)", job.read_text()))
    assert {"output", "run-date"} <= flags, f"{job}: --help lists {sorted(flags)}"
    return frozenset(flags)


def test_every_flag_a_task_passes_is_a_flag_of_its_job_and_the_table_format_reaches_every_stage(bundle):
    data, job_files = bundle
    for job_name, job in data["resources"]["jobs"].items():
        base = job_files[job_name].parent
        for task in job["tasks"]:
            py = (base / task["spark_python_task"]["python_file"]).resolve()
            params = [str(p) for p in task["spark_python_task"]["parameters"]]
            passed = {p[2:] for p in params if p.startswith("--")}
            accepted = job_flags(py)
            assert passed <= accepted, f"{task['task_key']}: {sorted(passed - accepted)} are not flags of {py.name}"
            assert {"output", "run-date", "config"} <= passed, task["task_key"]
            # every stage reads or writes tables: each gets the bundle's table format
            assert "table-format" in accepted, py.name
            assert "--table-format" in params, f"{task['task_key']} does not pass --table-format"
            assert params[params.index("--table-format") + 1] == "${var.table_format}", task["task_key"]


def test_prod_options_leave_the_table_format_to_the_command_line():
    conf = yaml.safe_load((ROOT / "conf" / "prod.yaml").read_text())
    assert all("table_format" not in (section or {}) for section in conf.values())
