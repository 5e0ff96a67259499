"""Evaluation end to end: SR-GNN and every baseline on the sample and on a synthetic Markov set."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.evaluate import EvaluateConfig, evaluate
from pipelines.evaluate.report import best_model
from pipelines.evaluate.transforms import evaluation_rows
from srgnn.core.errors import ConfigError, InputError
from pipelines.tables import TableStore

ROOT = Path(__file__).resolve().parents[1]
ALL = ["srgnn", "pop", "spop", "itemknn", "sr", "vsknn"]


def copy_stage_outputs(src: str, dst: Path, run_date: str) -> str:
    """The stage 1/2 outputs a test reads, copied so the shared fixtures stay untouched."""
    for part in ("sessions", "item_graph", "item_vocab", "shards"):
        shutil.copytree(f"{src}/{part}/run_date={run_date}", dst / part / f"run_date={run_date}")
    return str(dst)


def train_tiny_srgnn(out: str, run_date: str, epochs: int, hidden: int = 32, seed: int = 0, lr: float = 5e-3) -> dict:
    """A small SR-GNN trained on the train shard (selected on valid) and exported like stage 3 does."""
    from srgnn.data import batches_from_arrays
    from srgnn.export import save_model
    from srgnn.model import ModelConfig, SRGNN
    from srgnn.reader import load_manifest, read_split
    from srgnn.train import TrainConfig, TrainData, train

    manifest = load_manifest(out, run_date)
    shards = f"{out}/shards/run_date={run_date}"
    tr, va = read_split(shards, "train"), read_split(shards, "valid")
    torch.manual_seed(seed)
    model = SRGNN(ModelConfig(n_items=manifest["n_items"], hidden_size=hidden, max_len=manifest["max_len"]))
    cfg = TrainConfig(epochs=epochs, batch_size=100, progress=False, lr=lr, lr_dc_step=100)

    def batches(split, shuffle, epoch=1):
        return batches_from_arrays(split["items"], split["length"], split["target"], split["ngc_w"],
                                   batch_size=100, shuffle=shuffle, seed=epoch - 1)

    train(model, cfg, TrainData(train=lambda epoch: batches(tr, True, epoch), valid=lambda: batches(va, False)))
    save_model(f"{out}/models/run_date={run_date}", model, {"manifest_hash": manifest["content_hash"]})
    return {"model": model, "manifest": manifest}


def report_table(report: str) -> dict[str, list[str]]:
    """model -> [HR@20, MRR@20, NDCG@20] cells of the report's main table."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1] in ("srgnn", "baseline"):
            rows[cells[0]] = cells[2:]
    return rows


# ---- the bundled sample --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_eval(spark, sample_stage2, tmp_path_factory):
    out = copy_stage_outputs(sample_stage2["output"], tmp_path_factory.mktemp("eval_sample"),
                             sample_stage2["run_date"])
    tiny = train_tiny_srgnn(out, sample_stage2["run_date"], epochs=2)
    cfg = EvaluateConfig(output=out, run_date=sample_stage2["run_date"], progress=False)
    return {"out": out, "cfg": cfg, "result": evaluate(spark, cfg), **tiny}


@pytest.mark.slow
def test_sample_report_lists_every_model_with_hr_mrr_ndcg(sample_eval):
    result = sample_eval["result"]
    assert result["examples"] == sample_eval["manifest"]["splits"]["test"]["examples"]
    report = Path(result["report"]).read_text()
    table = report_table(report)
    assert sorted(table) == sorted(ALL)
    for model, cells in table.items():
        m = result["metrics"][model]
        assert cells == [f"{100 * m[k]:.2f}" for k in ("hr@20", "mrr@20", "ndcg@20")]
    assert "![HR@20, MRR@20 and NDCG@20 per model](evaluation.png)" in report
    png = Path(result["chart"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.slow
def test_sample_evaluation_table(spark, sample_eval):
    cfg = sample_eval["cfg"]
    table = TableStore(cfg.output).read(spark, "evaluation", cfg.run_date).toPandas()
    assert list(table.columns) == ["model", "metric", "k", "value", "length_bucket", "run_date"]
    assert set(table["model"]) == set(ALL)
    assert set(table["length_bucket"]) == {"all", "<=5", ">5"}
    assert table["value"].between(0, 1).all()
    ranked = table[table["metric"].isin(["hr", "mrr", "ndcg"])]
    # every model x metric x k x bucket exactly once
    assert len(ranked) == len(ALL) * 3 * 2 * 3 == len(ranked.drop_duplicates(["model", "metric", "k", "length_bucket"]))
    got = table.set_index(["model", "metric", "k", "length_bucket"])["value"]
    for model in ALL:
        m = sample_eval["result"]["metrics"][model]
        assert got[(model, "mrr", 20, "all")] == m["mrr@20"]
        assert got[(model, "hr", 10, "<=5")] == m["hr@10_len<=5"]
        # hits at 10 are hits at 20; MRR@K <= HR@K
        assert got[(model, "hr", 10, "all")] <= got[(model, "hr", 20, "all")]
        assert got[(model, "mrr", 20, "all")] <= got[(model, "hr", 20, "all")]


@pytest.mark.slow
def test_srgnn_figures_equal_the_trainers_evaluation(sample_eval):
    from srgnn.reader import read_split
    from srgnn.data import batches_from_arrays
    from srgnn.train import evaluate as train_evaluate

    te = read_split(f"{sample_eval['out']}/shards/run_date={sample_eval['cfg'].run_date}", "test")
    ref = train_evaluate(sample_eval["model"], batches_from_arrays(te["items"], te["length"], te["target"],
                                                                   te["ngc_w"], batch_size=37))
    got = sample_eval["result"]["metrics"]["srgnn"]
    for key in ("hr@20", "mrr@20", "ndcg@20", "hr@10_len>5", "mrr@10_len<=5"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12)


@pytest.mark.slow
def test_pop_figures_equal_an_independent_count(spark, sample_eval):
    """POP's HR@20 recomputed with pandas from the sessions table and the test shard."""
    from srgnn.reader import read_split

    cfg = sample_eval["cfg"]
    sessions = TableStore(cfg.output).read(spark, "sessions", cfg.run_date).toPandas()
    te = read_split(f"{cfg.output}/shards/run_date={cfg.run_date}", "test")
    train_ids = set(read_split(f"{cfg.output}/shards/run_date={cfg.run_date}", "train",
                               columns=("session_id",))["session_id"])
    train = sessions[(sessions["split"] == "train") & sessions["session_id"].isin(train_ids)]
    clicks = pd.Series(np.concatenate(train["item_idx"].to_numpy())).value_counts()
    ranking = sorted(clicks.index, key=lambda i: (-clicks[i], i))
    n_items = sample_eval["manifest"]["n_items"]
    ranking += sorted(set(range(1, n_items + 1)) - set(ranking))
    position = {item: r + 1 for r, item in enumerate(ranking)}
    ranks = np.array([position[t] for t in te["target"]])
    m = sample_eval["result"]["metrics"]["pop"]
    assert m["hr@20"] == pytest.approx(np.mean(ranks <= 20), abs=1e-12)
    assert m["mrr@20"] == pytest.approx(np.mean(np.where(ranks <= 20, 1 / ranks, 0)), abs=1e-12)


@pytest.mark.slow
def test_best_model_json(sample_eval):
    result = sample_eval["result"]
    best = json.loads(Path(result["best_model_json"]).read_text())
    mrr = {n: m["mrr@20"] for n, m in result["metrics"].items()}
    assert best["best_value"] == max(mrr.values()) and mrr[best["best_model"]] == best["best_value"]
    baselines = {n: v for n, v in mrr.items() if n != "srgnn"}
    assert best["best_baseline_value"] == max(baselines.values())
    assert best["srgnn_beats_baselines"] == (mrr["srgnn"] > max(baselines.values()))
    assert best["models"]["srgnn"]["kind"] == "srgnn" and best["models"]["vsknn"]["kind"] == "baseline"
    assert best["model_dirs"] == {"srgnn": f"{sample_eval['out']}/models/run_date={sample_eval['cfg'].run_date}"}


def test_best_model_rule_prefers_the_baseline_on_a_tie():
    metrics = {"srgnn": {"mrr@20": 0.3}, "pop": {"mrr@20": 0.1}, "sr": {"mrr@20": 0.3}}
    kinds = {"srgnn": "srgnn", "pop": "baseline", "sr": "baseline"}
    best = best_model(metrics, kinds, "mrr@20", "2020-01-01")
    assert (best["best_model"], best["best_baseline"], best["srgnn_beats_baselines"]) == ("sr", "sr", False)
    only = best_model({"pop": {"mrr@20": 0.1}}, {"pop": "baseline"}, "mrr@20", "2020-01-01")
    assert only["best_model"] == "pop" and only["srgnn_beats_baselines"] is None


def test_evaluation_rows_leave_out_empty_buckets():
    m = {"hr@20": 0.5, "hr@20_len<=5": 0.5, "hr@20_len>5": float("nan"), "coverage@20": 0.1}
    rows = evaluation_rows({"pop": m}, [20])
    assert rows == [("pop", "hr", 20, 0.5, "all"), ("pop", "hr", 20, 0.5, "<=5"), ("pop", "coverage", 20, 0.1, "all")]


@pytest.mark.slow
def test_job_reruns_idempotently_and_errors_are_one_line(spark, sample_eval, tmp_path):
    cfg = sample_eval["cfg"]
    before = TableStore(cfg.output).read(spark, "evaluation", cfg.run_date).toPandas()
    env = {**os.environ, "SRGNN_SPARK_MASTER": "local[2]"}
    run = subprocess.run([sys.executable, str(ROOT / "jobs" / "evaluate.py"), "--output", cfg.output,
                          "--run-date", cfg.run_date, "--baselines", "pop,sr", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| sr | baseline |" in run.stdout
    after = TableStore(cfg.output).read(spark, "evaluation", cfg.run_date).toPandas()
    assert set(after["model"]) == {"srgnn", "pop", "sr"}          # the partition was replaced, not appended
    key = ["model", "metric", "k", "length_bucket"]
    merged = before.merge(after, on=key, suffixes=("_before", "_after"))
    assert len(merged) == len(after) and (merged["value_before"] == merged["value_after"]).all()

    # bad input: one line, exit 2 (in-process, through the same job entry point)
    import importlib.util
    from srgnn.core.cli import run_job

    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    missing = tmp_path / "nothing"
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: job.main(["--output", str(missing), "--run-date", cfg.run_date]))
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_clear_errors(spark, sample_eval, tmp_path):
    cfg = sample_eval["cfg"]
    with pytest.raises(InputError, match="shard manifest not found"):
        evaluate(spark, cfg.replace(output=str(tmp_path)))
    with pytest.raises(ConfigError, match="select-metric"):
        cfg.replace(select_metric="auc@20")
    with pytest.raises(ConfigError, match="knn_neighbours"):
        cfg.replace(knn_neighbours=5)
    with pytest.raises(ConfigError, match="--baselines"):
        cfg.replace(baselines=["pop", "gru4rec"])
    # a model trained on other shards is refused, naming both hashes
    other = tmp_path / "other"
    shutil.copytree(cfg.output, other, ignore=shutil.ignore_patterns("evaluation", "reports"))
    conf = other / "models" / f"run_date={cfg.run_date}" / "config.json"
    data = json.loads(conf.read_text())
    data["manifest_hash"] = "sha256:feed"
    conf.write_text(json.dumps(data))
    with pytest.raises(InputError, match="sha256:feed"):
        evaluate(spark, cfg.replace(output=str(other), baselines=["pop"]))


def test_damaged_models_and_shards_are_refused(spark, sample_eval, tmp_path, capsys):
    """Flipped bytes in model.safetensors: the job exits 2 with one line before fitting anything;
    flipped bytes in a shard: the shards no longer match their manifest."""
    import importlib.util

    from srgnn.core.cli import run_job

    cfg = sample_eval["cfg"]
    other = tmp_path / "other"
    shutil.copytree(cfg.output, other, ignore=shutil.ignore_patterns("evaluation", "reports"))
    weights = other / "models" / f"run_date={cfg.run_date}" / "model.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: job.main(["--output", str(other), "--run-date", cfg.run_date, "--no-progress"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model weights ") and "do not match config.json" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    weights.write_bytes(original)

    shard = sorted((other / "shards" / f"run_date={cfg.run_date}" / "test").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="do not match their manifest"):
        evaluate(spark, cfg.replace(output=str(other), baselines=["pop"]))


# ---- a synthetic Markov set: the ranking must make sense ----------------------------------------
@pytest.mark.slow
def test_synthetic_markov_ranks_sr_and_srgnn_above_pop(spark, tmp_path):
    from bench.synth import SynthConfig, write_click_log
    from pipelines.graph import GraphConfig, build_graph
    from pipelines.sessions import SessionsConfig, build_sessions

    run_date = "2014-05-01"
    clicks = tmp_path / "clicks.dat"
    # 500 items, flat-ish popularity (Zipf 0.8), clicks follow one of 4 successors 80% of the time:
    # POP reaches about 45% HR@20, direct-successor statistics about 85%
    write_click_log(clicks, "yoochoose", SynthConfig(n_clicks=20_000, n_items=500, zipf_a=0.8, p_follow=0.8,
                                                     n_days=10, seed=3))
    out = str(tmp_path / "out")
    build_sessions(spark, SessionsConfig(input=str(clicks), format="yoochoose", output=out, run_date=run_date,
                                         split_days=2))
    build_graph(spark, GraphConfig(output=out, run_date=run_date, world_size=2))
    train_tiny_srgnn(out, run_date, epochs=2, hidden=32)
    result = evaluate(spark, EvaluateConfig(output=out, run_date=run_date, progress=False, vsknn_sample=200))
    m = result["metrics"]
    assert sorted(report_table(Path(result["report"]).read_text())) == sorted(ALL)
    assert result["examples"] > 1000
    for better in ("sr", "srgnn"):
        for metric in ("hr@20", "mrr@20", "ndcg@20"):
            assert m[better][metric] > m["pop"][metric] + 0.05, (better, metric, m[better][metric], m["pop"][metric])
    assert m["sr"]["mrr@20"] > m["spop"]["mrr@20"]
    assert result["best"]["best_model"] in ("sr", "srgnn")
