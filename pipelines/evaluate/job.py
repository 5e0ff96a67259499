"""Evaluation (the job): the exported SR-GNN model(s) of a run date and every baseline on the same test examples.

Reads (for run date D under OUT):
- ``OUT/shards/run_date=D/test`` (+ manifest): the test examples ``items``/``length``/``target``
  (and ``ngc_w`` for SR-GNN-NGC) -- exactly what the trainer's test metrics use;
- ``sessions`` (stage 1) and the ``train`` shard's session ids: the baselines' training sessions;
  ``item_graph`` (stage 2): the sequential rules;
- ``OUT/models/run_date=D/`` (stage 3): the exported model, plus any sub-folder holding another
  export (e.g. ``models/run_date=D/ngc/``) and any ``--model-dirs``.

Every model is scored in batches into ``[B, n_items]`` matrices and ranked by ``srgnn.metrics``
(ties: score desc, then smaller item index), so SR-GNN and the baselines are measured by one code
path. Writes:
- the ``evaluation`` table (TableStore, partition run_date=D): ``model``, ``metric`` (hr | mrr |
  ndcg | coverage | pop), ``k``, ``value`` (a fraction), ``length_bucket`` ('all' | '<=5' | '>5',
  by prefix length as the paper's Table 3; coverage/pop only for 'all');
- ``OUT/reports/run_date=D/evaluation.md`` with ``evaluation.png`` (bar chart of HR@20, MRR@20,
  NDCG@20) and ``best_model.json`` (the best model by ``select_metric``, whether SR-GNN beats the
  best baseline, and that baseline's name, for a recommendation fallback).

The options are in :mod:`pipelines.evaluate.config`, the scoring in :mod:`pipelines.evaluate.scoring`,
the table in :mod:`pipelines.evaluate.transforms` and the report in :mod:`pipelines.evaluate.report`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pyarrow.parquet as pq
import torch

from pipelines.baselines import check_sessions, fit_baselines, training_sessions
from pipelines.evaluate.config import BEST_MODEL_FILE, CHART_FILE, REPORT_METRICS, EvaluateConfig
from pipelines.select.config import PREVIOUS_NAME
from pipelines.evaluate.report import best_model, render_report, summary_line, write_chart
from pipelines.evaluate.scoring import baseline_score_fn, evaluate_scores, load_test_examples, model_score_fn
from pipelines.evaluate.transforms import evaluation_frame, train_session_ids
from pipelines.tables import TableStore, path_exists
from srgnn.baselines import BASELINES, FittedBaselines
from srgnn.core.commit import RunCommit, complete_pending
from srgnn.core.contracts import (CONFIG_FILE, EVALUATION, ITEM_GRAPH, ITEM_VOCAB, REPORT_EVALUATION, SESSIONS,
                                  VOCAB_FILE, WEIGHTS_FILE)
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.fs import arrow_filesystem, exists, local_path, makedirs, read_json
from srgnn.core.layout import normalize_root
from srgnn.core.log import get_logger
from srgnn.integrity import check_finite_scores, check_model_matches_manifest, load_checked_model
from srgnn.reader import load_manifest_at, verify_manifest
from srgnn.device import pick_device
from srgnn.vocab_map import to_model_items, to_tonight_scores
from srgnn.warm_start import item_row_mapping

log = get_logger(__name__)


def _is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def _default_name(path: str) -> str:
    config = read_json(os.path.join(path, CONFIG_FILE))
    model = config.get("model") if isinstance(config, dict) else None
    variant = model.get("variant", "srgnn") if isinstance(model, dict) else "srgnn"
    return "srgnn" if variant == "srgnn" else f"srgnn-{variant}"


def find_models(cfg: EvaluateConfig) -> dict[str, str]:
    """Name -> folder of every SR-GNN export to evaluate: ``OUT/models/run_date=D`` itself
    ('srgnn', or 'srgnn-<variant>'), each sub-folder S holding an export ('srgnn-S', or S when it
    starts with 'srgnn'), and each ``--model-dirs`` entry (NAME=DIR, or DIR named by its variant)."""
    found: dict[str, str] = {}
    base = local_path(cfg.models_dir)
    if _is_export(base):
        found[_default_name(base)] = base
    if os.path.isdir(base):
        for sub in sorted(os.listdir(base)):
            path = os.path.join(base, sub)
            if not sub.startswith(("_", ".")) and _is_export(path):
                found.setdefault(sub if sub.startswith("srgnn") else f"srgnn-{sub}", path)
    for entry in cfg.model_dirs or []:
        name, sep, path = entry.partition("=")
        if not sep:
            name, path = "", entry
        path = local_path(normalize_root(path))
        if not _is_export(path):
            raise InputError(f"--model-dirs: {path} is not an exported model (no config.json + model.safetensors)")
        name = name or _default_name(path)
        if name in found and found[name] != path:
            raise ConfigError(f"--model-dirs: two models named '{name}' ({found[name]}, {path}); name them NAME=DIR")
        found[name] = path
    clash = sorted(set(found) & set(BASELINES))
    if clash:
        raise ConfigError(f"model name(s) {clash} clash with baseline names; name them NAME=DIR")
    return found


def previous_score_fn(spark, cfg: EvaluateConfig, store: TableStore, device, n_items: int
                      ) -> tuple[str, Any] | None:
    """(folder, batch -> scores over tonight's items) of the SR-GNN published on the latest earlier
    night, or None (none published, or its export has no item vocabulary to map by)."""
    from pipelines.select.job import previous_model_dir

    prev_dir = previous_model_dir(store, spark, cfg.run_date)
    if prev_dir is None or os.path.abspath(local_path(prev_dir)) == os.path.abspath(local_path(cfg.models_dir)):
        return None
    vocab_file = f"{prev_dir}/{VOCAB_FILE}"
    if not exists(vocab_file):
        log.warning("evaluate %s: the previous model %s has no %s: not evaluated", cfg.run_date, prev_dir, VOCAB_FILE)
        return None
    model, config = load_checked_model(prev_dir, device)
    arrow_fs, inner = arrow_filesystem(vocab_file)
    old_vocab = pq.read_table(inner, filesystem=arrow_fs, columns=["item_id", "item_idx"]).to_pandas()
    now_vocab = store.read(spark, ITEM_VOCAB, cfg.run_date).select("item_id", "item_idx").toPandas()
    mapping = item_row_mapping(n_items, int(config["n_items"]), now_vocab, old_vocab)
    log.info("evaluate %s: previous model %s knows %d of tonight's %d items", cfg.run_date, prev_dir,
             int((mapping[1:] > 0).sum()), n_items)

    def score(batch):
        b = batch.to(device)
        items, lengths, w = to_model_items(b.items, b.lengths, b.ngc_w, mapping)
        scores = to_tonight_scores(model(items, lengths, w).float(), mapping)
        check_finite_scores(scores, f"the previous model at {prev_dir}")
        return scores
    return prev_dir, score


def evaluate(spark, cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate the SR-GNN export(s) of ``cfg.run_date`` and the baselines; write the table and report."""
    cfg.validate_required()
    complete_pending(cfg.layout, ["build_graph"], cfg.run_date)
    # one writer per (OUT, run date); the table and the report files are published together
    with RunCommit(cfg.layout, "evaluate", cfg.run_date) as commit:
        return _evaluate(spark, cfg, commit)


def _evaluate(spark, cfg: EvaluateConfig, commit: RunCommit) -> dict[str, Any]:
    store = TableStore(cfg.output, cfg.table_format)
    manifest_path = local_path(cfg.layout.manifest(cfg.run_date))
    shards = local_path(cfg.shards_dir)
    manifest = verify_manifest(shards, manifest=load_manifest_at(shards))   # the bytes stage 2 wrote
    n_items = int(manifest["n_items"])
    examples = load_test_examples(cfg, manifest)
    log.info("evaluate %s: %d test examples, %d items, from %s/test", cfg.run_date, len(examples), n_items,
             cfg.shards_dir)

    models = find_models(cfg)
    if not models:
        if cfg.require_model:
            raise InputError(f"no exported SR-GNN model under {cfg.models_dir} (run jobs/train.py for "
                             f"this run date first)")
        log.warning("evaluate %s: no exported SR-GNN model under %s: evaluating the baselines only",
                    cfg.run_date, cfg.models_dir)

    device = pick_device(cfg.device)
    loaded = {}                      # every model checked before the baselines' fit
    for name, path in models.items():
        loaded[name] = load_checked_model(path, device)
        check_model_matches_manifest(loaded[name][1], manifest, path, manifest_path)

    # ---- fit the baselines (Spark) -----------------------------------------------------------
    sessions = store.read(spark, SESSIONS, cfg.run_date)
    check_sessions(sessions)
    train_dir = cfg.layout.shard_split(cfg.run_date, "train")
    if not path_exists(spark, train_dir):
        raise InputError(f"train shards not found: {train_dir} (run jobs/build_graph.py for this run date first)")
    train_ids = train_session_ids(spark.read.parquet(train_dir))
    needs_graph = "sr" in cfg.baselines and cfg.sr_steps == 1
    item_graph = store.read(spark, ITEM_GRAPH, cfg.run_date) if needs_graph else None
    fitted: FittedBaselines = fit_baselines(training_sessions(sessions, train_ids), item_graph, n_items,
                                            cfg.baseline_params(), names=cfg.baselines)
    popularity = torch.from_numpy(fitted.clicks / max(fitted.clicks.sum(), 1))

    metrics: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    timings: dict[str, dict[str, float]] = {}
    for name, path in models.items():
        score_fn = model_score_fn(loaded[name][0], device, f"model '{name}' at {path}")
        t = time.perf_counter()
        metrics[name] = evaluate_scores(score_fn, examples, n_items, cfg.ks, cfg.batch_size,
                                        popularity, desc=name, progress=cfg.progress)
        timings[name] = {"score_s": time.perf_counter() - t}
        kinds[name] = "srgnn"
        log.info("evaluate %s: %s (%s) %s", cfg.run_date, name, path, summary_line(metrics[name]))
    previous = previous_score_fn(spark, cfg, store, device, n_items) if cfg.previous_model else None
    if previous is not None:
        models[PREVIOUS_NAME] = previous[0]
        t = time.perf_counter()
        metrics[PREVIOUS_NAME] = evaluate_scores(previous[1], examples, n_items, cfg.ks, cfg.batch_size,
                                                 popularity, desc=PREVIOUS_NAME, progress=cfg.progress)
        timings[PREVIOUS_NAME] = {"score_s": time.perf_counter() - t}
        kinds[PREVIOUS_NAME] = "srgnn"
        log.info("evaluate %s: previous (%s) %s", cfg.run_date, previous[0], summary_line(metrics[PREVIOUS_NAME]))
    for name in cfg.baselines:
        scorer = fitted.scorers[name]
        t = time.perf_counter()
        metrics[name] = evaluate_scores(baseline_score_fn(scorer), examples, n_items, cfg.ks, cfg.batch_size,
                                        popularity, desc=name, progress=cfg.progress)
        timings[name] = {"fit_s": fitted.fit_seconds[name], "score_s": time.perf_counter() - t}
        kinds[name] = "baseline"
        log.info("evaluate %s: %s %s", cfg.run_date, name, summary_line(metrics[name]))
    if not metrics:
        raise ConfigError("nothing to evaluate: no model found and --baselines is empty")

    # ---- write ---------------------------------------------------------------------------------
    table = store.write(evaluation_frame(spark, metrics, cfg.ks), EVALUATION, cfg.run_date, commit)
    best = best_model(metrics, kinds, cfg.select_metric, cfg.run_date)
    best["model_dirs"] = models
    order = sorted(metrics, key=lambda n: -metrics[n][cfg.select_metric])
    chart = None
    if cfg.chart and all(k in metrics[order[0]] for k in REPORT_METRICS):
        chart = CHART_FILE
        makedirs(cfg.report_dir)
        write_chart(commit.staging_for(cfg.layout.report(cfg.run_date, chart), ".png"), metrics, order, cfg.run_date)
    info = {"test_dir": cfg.layout.shard_split(cfg.run_date, "test"), "n_items": n_items, **fitted.stats,
            "params": dataclasses.asdict(cfg.baseline_params())}
    report = local_path(cfg.layout.report(cfg.run_date, REPORT_EVALUATION))
    commit.add_bytes(report, render_report(cfg.run_date, metrics, kinds, best, timings, info, chart).encode())
    best_json = local_path(cfg.layout.report(cfg.run_date, BEST_MODEL_FILE))
    commit.add_json(best_json, best)
    log.info("evaluate %s: wrote table evaluation (%s), %s, %s; best by %s: %s", cfg.run_date, table, report,
             best_json, cfg.select_metric, best["best_model"])
    return {"run_date": cfg.run_date, "examples": len(examples), "metrics": metrics, "kinds": kinds,
            "best": best, "timings": timings, "table": table, "report": report, "best_model_json": best_json,
            "chart": None if chart is None else local_path(cfg.layout.report(cfg.run_date, chart))}
