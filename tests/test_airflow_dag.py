"""The Airflow DAGs import cleanly in a real Airflow (DagBag), in a separate virtualenv.

Airflow's providers need a newer pyarrow than Petastorm 0.12.1 allows, so Airflow cannot be installed
in .venv: ``jobs/airflow/setup_venv.sh`` creates ``.venv-airflow`` (apache-airflow 3.x + the Spark and
Databricks providers; about 90 s from PyPI the first time, reused afterwards). If it cannot be
created the test fails: it never skips.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SRGNN_AIRFLOW_VENV", ROOT / ".venv-airflow"))

pytestmark = pytest.mark.slow  # builds .venv-airflow and imports the DAGs there

# Runs inside the Airflow virtualenv: parse jobs/airflow with DagBag and describe what it found.
CHECK = r"""
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag          # Airflow 3
except ImportError:
    from airflow.models.dagbag import DagBag                  # Airflow 2
import airflow
try:
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
except TypeError:
    bag = DagBag(dag_folder=sys.argv[1])
out = {"airflow": airflow.__version__, "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
       "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for t in dag.tasks:
        fields = {f: getattr(t, f, None) for f in t.template_fields}
        rendered = t.render_template(fields, {"ds": "2016-06-01"})
        tasks[t.task_id] = {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                            "fields": {k: v for k, v in rendered.items()
                                       if isinstance(v, (str, list, dict, int, type(None)))}}
    sched = getattr(dag, "schedule", None) or getattr(dag, "schedule_interval", None)
    out["dags"][dag_id] = {"schedule": str(sched), "catchup": dag.catchup, "tasks": tasks}
print("@@RESULT@@" + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    setup = subprocess.run(["bash", str(ROOT / "jobs" / "airflow" / "setup_venv.sh"), str(VENV)],
                           capture_output=True, text=True, timeout=1200)
    assert setup.returncode == 0, ("could not create the Airflow virtualenv "
                                   f"{VENV}:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "True", "SRGNN_HOME": str(ROOT)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(VENV / "bin" / "python"), "-c", CHECK, str(ROOT / "jobs" / "airflow")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    return json.loads(line[len("@@RESULT@@"):])


def test_dags_import_without_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert set(dagbag["dags"]) == {"srgnn_nightly", "srgnn_nightly_databricks"}
    assert dagbag["airflow"].split(".")[0] in ("2", "3")


def test_nightly_dag_tasks_dependencies_and_operators(dagbag):
    dag = dagbag["dags"]["srgnn_nightly"]
    tasks = dag["tasks"]
    assert dag["schedule"] == "@daily" and dag["catchup"] is False
    assert set(tasks) == {"build_sessions", "build_graph", "train", "evaluate", "select", "recommend"}
    assert {k: v["upstream"] for k, v in tasks.items()} == {
        "build_sessions": [], "build_graph": ["build_sessions"], "train": ["build_graph"],
        "evaluate": ["train"], "select": ["evaluate"], "recommend": ["select"]}
    for spark_task in ("build_sessions", "build_graph", "evaluate", "select", "recommend"):
        t = tasks[spark_task]
        assert t["type"] == "SparkSubmitOperator"
        app = Path(t["fields"]["application"])
        assert app.is_file(), f"{app} does not exist"
        assert app.name == {"select": "select_model.py"}.get(spark_task, f"{spark_task}.py")
        args = t["fields"]["application_args"]
        assert args[args.index("--run-date") + 1] == "2016-06-01"  # {{ ds }} rendered
        assert "--output" in args
    assert tasks["train"]["type"] == "BashOperator"
    cmd = tasks["train"]["fields"]["bash_command"]
    assert "torchrun" in cmd and "jobs/train.py" in cmd and "--run-date 2016-06-01" in cmd


def test_databricks_variant_triggers_the_bundle_job(dagbag):
    import yaml

    dag = dagbag["dags"]["srgnn_nightly_databricks"]
    (task,) = dag["tasks"].values()
    assert task["type"] == "DatabricksRunNowOperator"
    # newer providers template job_name / job_parameters themselves; older ones fold them into json
    fields = {**(task["fields"].get("json") or {}), **{k: v for k, v in task["fields"].items() if v is not None}}
    assert fields["job_parameters"] == {"run_date": "2016-06-01"}
    bundle_jobs = yaml.safe_load((ROOT / "resources" / "srgnn_nightly.yml").read_text())["resources"]["jobs"]
    assert fields["job_name"] in {j["name"] for j in bundle_jobs.values()}
    params = {p["name"] for j in bundle_jobs.values() for p in j.get("parameters", [])}
    assert "run_date" in params


@functools.lru_cache(maxsize=None)
def job_flags(job: Path) -> frozenset[str]:
    """The flags a job's command line takes (what its ``--help`` lists)."""
    proc = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = frozenset(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", proc.stdout))
    assert {"output", "run-date"} <= flags, f"{job}: --help lists {sorted(flags)}"
    return flags


def test_every_flag_a_task_passes_is_a_flag_of_its_job_and_the_table_format_reaches_every_stage(dagbag):
    tasks = dagbag["dags"]["srgnn_nightly"]["tasks"]
    for name, task in tasks.items():
        if task["type"] == "SparkSubmitOperator":
            job, args = Path(task["fields"]["application"]), task["fields"]["application_args"]
        else:  # the torchrun command line
            words = shlex.split(task["fields"]["bash_command"])
            at = next(i for i, w in enumerate(words) if w.endswith("jobs/train.py"))
            job, args = ROOT / "jobs" / "train.py", words[at + 1:]
        passed = {a[2:] for a in args if a.startswith("--")}
        accepted = job_flags(job)
        assert passed <= accepted, f"{name}: {sorted(passed - accepted)} are not flags of {job.name}"
        assert "table-format" in accepted and "--table-format" in args, f"{name} does not pass --table-format"
        assert args[args.index("--table-format") + 1] == "parquet", name  # SRGNN_TABLE_FORMAT's default
