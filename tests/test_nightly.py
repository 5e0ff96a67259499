"""The nightly pipeline: its configuration, and ONE end-to-end run of the README's first command on the
bundled sample (in a temporary folder, few epochs) plus a rerun for the same run date."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from srgnn.core.errors import ConfigError
from pipelines.nightly import (REFERENCE_END, REFERENCE_START, STAGES, NightlyConfig, config_reference,
                               stage_configs)

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = "2016-06-01"
TABLES = ["sessions", "item_vocab", "quarantine", "item_graph", "evaluation", "model_selection",
          "recommendations"]


# ---- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", ["conf/sample.yaml", "conf/prod.yaml"])
def test_every_section_of_the_bundled_yaml_loads_into_its_stage_config(conf, tmp_path):
    cfg = NightlyConfig.from_args(["--config", str(ROOT / conf), "--output", str(tmp_path),
                                   "--run-date", "2020-01-02"])
    assert cfg.stage_config == str(ROOT / conf)
    configs = stage_configs(cfg)
    assert list(configs) == list(STAGES)
    sections = yaml.safe_load((ROOT / conf).read_text())
    for stage, stage_cfg in configs.items():
        assert stage_cfg.output == str(tmp_path) and stage_cfg.run_date == "2020-01-02"
        for key, value in (sections.get(stage) or {}).items():  # the file's options arrive
            assert getattr(stage_cfg, key) == value, (conf, stage, key)
    assert configs["build_sessions"].input == cfg.input


def test_nightly_defaults_and_precedence(tmp_path):
    default = NightlyConfig.from_args([])
    assert (default.output, default.run_date, default.table_format) == ("out/sample", RUN_DATE, "parquet")
    assert Path(default.input).is_file() and Path(default.stage_config).name == "sample.yaml"
    y = tmp_path / "c.yaml"
    y.write_text("nightly:\n  run_date: '2020-02-02'\n  show_sessions: 7\ntrain:\n  epochs: 2\n")
    cfg = NightlyConfig.from_args(["--config", str(y), "--show-sessions", "1", "--format", "yoochoose"])
    assert (cfg.run_date, cfg.show_sessions, cfg.format, cfg.stage_config) == ("2020-02-02", 1, "yoochoose", str(y))
    assert stage_configs(cfg)["train"].epochs == 2
    assert stage_configs(cfg)["build_sessions"].format == "yoochoose"


def test_bad_options_are_one_clear_line(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("trian:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown section\(s\) \['trian'\]"):
        stage_configs(NightlyConfig().replace(stage_config=str(y)))
    y.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml \[train\]: unknown option\(s\) \['epochz'\]"):
        stage_configs(NightlyConfig().replace(stage_config=str(y)))
    with pytest.raises(ConfigError, match="not a date"):
        NightlyConfig.from_args(["--run-date", "2016-13-45"])
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "nightly.py"), "--config", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: config file not found: {tmp_path / 'nope.yaml'}"


def test_readme_configuration_reference_is_generated_from_the_dataclasses():
    ref = config_reference()
    for stage in ["nightly", *STAGES]:
        assert f"#### `{stage}`" in ref
    assert "| `--epochs` / `epochs` |" in ref and "| `--table-format` / `table_format` |" in ref
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(REFERENCE_START), readme.index(REFERENCE_END) + len(REFERENCE_END)
    assert readme[start:end] == ref, "run: .venv/bin/python scripts/config_reference.py --write"


# ---- end to end ---------------------------------------------------------------------------------
def _run_nightly(out: Path, conf: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SRGNN_DRIVER_MEMORY": "2g"}
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "nightly.py"), "--config", str(conf),
                           "--output", str(out), "--run-date", RUN_DATE],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def _tables(spark, root: Path) -> dict:
    from pipelines.tables import TableStore

    store = TableStore(str(root))
    return {t: store.read(spark, t, RUN_DATE).drop("run_date") for t in TABLES}


@pytest.fixture(scope="module")
def nightly_twice(spark, tmp_path_factory):
    """The one local command on the sample (2 epochs, 2 baselines to keep it short), run twice for
    the same run date. The first run's outputs are copied aside before the rerun, to compare."""
    tmp = tmp_path_factory.mktemp("nightly")
    sample = yaml.safe_load((ROOT / "conf" / "sample.yaml").read_text())
    sample["train"] = {**sample.get("train", {}), "epochs": 2, "progress": False}
    sample["evaluate"] = {**(sample.get("evaluate") or {}), "baselines": ["pop", "sr"], "progress": False}
    conf = tmp / "sample_fast.yaml"
    conf.write_text(yaml.safe_dump(sample))
    out, first_copy = tmp / "out", tmp / "first"
    first = _run_nightly(out, conf)
    for t in [*TABLES, "shards", "models"]:
        shutil.copytree(out / t, first_copy / t)
    second = _run_nightly(out, conf)
    return {"out": out, "first": first, "second": second, "first_tables": _tables(spark, first_copy),
            "first_copy": first_copy}


@pytest.mark.slow
def test_one_command_writes_every_table_and_the_model(nightly_twice, spark):
    out = nightly_twice["out"]
    for t in TABLES:
        assert (out / t / f"run_date={RUN_DATE}").is_dir(), f"table {t} missing"
        assert not list((out / t).glob("_staging-*")), f"staging folder left in {t}"
    for t in ("sessions", "item_vocab", "item_graph", "evaluation", "recommendations"):
        assert nightly_twice["first_tables"][t].count() > 0, f"table {t} is empty"
    model = out / "models" / f"run_date={RUN_DATE}"
    assert (model / "model.safetensors").stat().st_size > 0
    config = json.loads((model / "config.json").read_text())
    assert set(config["metrics"]["test"]) >= {"hr@20", "mrr@20"} and 0 <= config["metrics"]["test"]["hr@20"] <= 1
    for split in ("train", "valid", "test"):
        assert list((out / "shards" / f"run_date={RUN_DATE}" / split).glob("*.parquet")), split
    assert (out / "stats" / f"run_date={RUN_DATE}" / "build_sessions.json").is_file()
    assert (out / "reports" / f"run_date={RUN_DATE}" / "evaluation.md").is_file()
    assert list((out / "mlruns").iterdir())

    # the summary printed at the end names every table, the model, the test metrics and a few sessions
    stdout = nightly_twice["first"].stdout
    for t in TABLES:
        assert f"run_date={RUN_DATE}" in stdout and f"  {t} " in stdout, t
    assert str(model) in stdout
    assert "SR-GNN test metrics" in stdout and "HR@20" in stdout
    assert stdout.count("    -> ") == 3  # conf/sample.yaml: show_sessions 3


@pytest.mark.slow
def test_on_the_sample_a_baseline_that_beats_srgnn_is_published_and_scores(nightly_twice, spark):
    """SR-GNN's MRR@20 on the sample is far below SR's: the guard publishes SR, stage 4 scores with it."""
    first = nightly_twice["first_tables"]
    chosen = first["model_selection"].where("chosen").collect()
    assert [r["candidate"] for r in chosen] == ["sr"]
    srgnn = first["model_selection"].where("candidate = 'srgnn'").collect()[0]
    assert srgnn["value"] < chosen[0]["value"] - 0.01 and not srgnn["chosen"]
    models = {r["model"] for r in first["recommendations"].select("model").distinct().collect()}
    assert models == {"sr"}
    assert "PUBLISHED sr" in nightly_twice["first"].stdout


@pytest.mark.slow
def test_recommendations_cover_every_scored_session(nightly_twice, spark):
    from pyspark.sql import functions as F

    recs = nightly_twice["first_tables"]["recommendations"]
    sessions = nightly_twice["first_tables"]["sessions"]
    scored = {r.session_id for r in sessions.where(F.col("split") == "test").select("session_id").collect()}
    assert scored, "the sample has test sessions"
    per_session = recs.groupBy("session_id").agg(F.count("*").alias("n"), F.min("rank").alias("lo"),
                                                 F.max("rank").alias("hi"),
                                                 F.countDistinct("item_id").alias("items")).collect()
    assert {r.session_id for r in per_session} == scored
    assert all((r.n, r.lo, r.hi, r.items) == (20, 1, 20, 20) for r in per_session)
    vocab = {r.item_id for r in nightly_twice["first_tables"]["item_vocab"].select("item_id").collect()}
    assert {r.item_id for r in recs.select("item_id").distinct().collect()} <= vocab


@pytest.mark.slow
def test_rerun_for_the_same_run_date_leaves_the_same_tables(nightly_twice, spark):
    from chispa import assert_df_equality

    out = nightly_twice["out"]
    again = _tables(spark, out)
    for t in TABLES:
        before, after = nightly_twice["first_tables"][t], again[t]
        assert after.count() == before.count(), t
        assert_df_equality(before, after, ignore_row_order=True, ignore_nullable=True,
                           ignore_column_order=True)
        assert len(list((out / t).iterdir())) == 1, f"{t}: one partition, not two"

    # the shards hold the same examples (their files' names, hence the manifest's content hash, differ)
    first = nightly_twice["first_copy"]
    shards, shards_first = (root / "shards" / f"run_date={RUN_DATE}" for root in (out, first))
    manifest, manifest_first = (json.loads((d / "_manifest.json").read_text()) for d in (shards, shards_first))
    assert {k: v for k, v in manifest.items() if k != "content_hash"} == \
        {k: v for k, v in manifest_first.items() if k != "content_hash"}
    for split in ("train", "valid", "test"):
        assert_df_equality(spark.read.parquet(str(shards_first / split)),
                           spark.read.parquet(str(shards / split)), ignore_row_order=True, ignore_nullable=True)

    # and the same trained weights and metrics
    from safetensors.torch import load_file

    model, model_first = (root / "models" / f"run_date={RUN_DATE}" for root in (out, first))
    weights, weights_first = (load_file(str(d / "model.safetensors")) for d in (model, model_first))
    assert weights.keys() == weights_first.keys()
    assert all(torch.equal(weights[k], weights_first[k]) for k in weights)
    config, config_first = (json.loads((d / "config.json").read_text()) for d in (model, model_first))
    assert json.dumps(config["metrics"], sort_keys=True) == json.dumps(config_first["metrics"], sort_keys=True)
    assert config["model_version"] == config_first["model_version"]
