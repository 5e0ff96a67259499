"""Model selection after the evaluation: write ``model_selection`` for the run date, then the history
report across nights and its alert.

Candidates, all scored by the evaluation on tonight's test examples: ``srgnn`` (this night's
export), ``previous`` (the SR-GNN published the night before, re-evaluated with its own item
vocabulary mapped to tonight's by item id), and the best baseline of tonight's evaluation. The
rule is :func:`srgnn.selection.choose`. Stage 4 then scores tonight's sessions with the chosen one.
"""
from __future__ import annotations

import os
from typing import Any

from pyspark.sql import functions as F

from pipelines.history import history_report
from pipelines.select.config import PREVIOUS_NAME, SELECTION_SCHEMA, SelectConfig
from srgnn.core.contracts import MODEL_SELECTION
from pipelines.tables import TableStore
from pipelines.train.tracking import Tracker
from srgnn.baselines import BASELINES
from srgnn.core import contracts as C
from srgnn.core import fs
from srgnn.core.commit import RunCommit, complete_pending
from srgnn.core.errors import InputError, PipelineError
from srgnn.core.log import get_logger
from srgnn.selection import SRGNN, Candidate, choose

log = get_logger(__name__)

STATS_SELECT = "select.json"


class AlertRaised(PipelineError):
    """The published model fell behind its recent nights and --fail-on-alert was given."""


def previous_published(store: TableStore, spark, run_date: str) -> dict[str, Any] | None:
    """The chosen row of the latest ``model_selection`` partition before ``run_date``, or None."""
    from pipelines.history import run_dates

    earlier = [d for d in run_dates(store, spark, MODEL_SELECTION, run_date, 10_000) if d < run_date]
    if not earlier:
        return None
    rows = store.read(spark, MODEL_SELECTION, earlier[-1]).where(F.col("chosen")).collect()
    return {"run_date": earlier[-1], **rows[0].asDict()} if rows else None


def previous_model_dir(store: TableStore, spark, run_date: str) -> str | None:
    """The export of the SR-GNN published the night before (None if a baseline was published)."""
    prev = previous_published(store, spark, run_date)
    if prev is None or prev["candidate"] not in (SRGNN, PREVIOUS_NAME):
        return None
    if prev["candidate"] == SRGNN:
        return store.layout.model(prev["run_date"])
    return previous_model_dir(store, spark, prev["run_date"])   # it re-published an older one


def _version(model_dir: str) -> str:
    return str(fs.read_json(f"{model_dir}/{C.CONFIG_FILE}").get("model_version", os.path.basename(model_dir)))


def candidates(spark, store: TableStore, cfg: SelectConfig) -> list[Candidate]:
    metric, k = cfg.metric.split("@")
    rows = (store.read(spark, C.EVALUATION, cfg.run_date)
            .where((F.col("length_bucket") == "all") & (F.col("metric") == metric) & (F.col("k") == int(k)))
            .select("model", "value").collect())
    values = {r["model"]: float(r["value"]) for r in rows}
    found: list[Candidate] = []
    if SRGNN in values:
        found.append(Candidate(SRGNN, _version(store.layout.model(cfg.run_date)), values[SRGNN]))
    if PREVIOUS_NAME in values:
        prev_dir = previous_model_dir(store, spark, cfg.run_date)
        found.append(Candidate(PREVIOUS_NAME, _version(prev_dir) if prev_dir else PREVIOUS_NAME,
                               values[PREVIOUS_NAME]))
    baselines = {m: v for m, v in values.items() if m in BASELINES}
    if baselines:
        best = max(sorted(baselines), key=lambda m: baselines[m])
        found.append(Candidate(best, f"{best}@{cfg.run_date}", baselines[best]))
    if not found:
        raise InputError(f"the evaluation of run date {cfg.run_date} under {store.root} has no {cfg.metric} "
                         f"(length bucket 'all') for any model; run jobs/evaluate.py first")
    return found


def select_model(spark, cfg: SelectConfig) -> dict[str, Any]:
    """Write ``model_selection`` for ``cfg.run_date`` and the history report; return the decision."""
    cfg.validate_required()
    store = TableStore(cfg.output, cfg.table_format)
    layout = store.layout
    complete_pending(layout, ["evaluate"], cfg.run_date)
    decisions = choose(candidates(spark, store, cfg), cfg.metric, cfg.margin)
    chosen = next(d for d in decisions if d.chosen)
    for d in decisions:
        log.info("%s %-9s %s %.4f %s", "PUBLISH" if d.chosen else "       ", d.candidate, d.metric, d.value, d.reason)
    table = spark.createDataFrame([(d.candidate, d.model_version, d.metric, d.value, d.chosen, d.reason)
                                   for d in decisions], SELECTION_SCHEMA)
    with RunCommit(layout, "select", cfg.run_date) as commit:
        store.write(table, MODEL_SELECTION, cfg.run_date, commit)
    history = history_report(spark, store, cfg.run_date, cfg.history_nights, cfg.alert_drop)
    stats = {"run_date": cfg.run_date, "metric": cfg.metric, "margin": cfg.margin, "published": chosen.candidate,
             "model_version": chosen.model_version, "value": chosen.value, "alert": history["alert"],
             "candidates": [d.__dict__ for d in decisions], "history": history["markdown"]}
    fs.write_json_atomic(layout.stats(cfg.run_date, STATS_SELECT), stats)
    tracker = Tracker("", "srgnn-selection", layout.mlruns(), enabled=fs.is_local(layout.root))
    tracker.start("", f"select-{cfg.run_date}", {"run_date": cfg.run_date, "metric": cfg.metric, "margin": cfg.margin})
    tracker.log_metrics({d.candidate: d.value for d in decisions}, step=0)
    tracker.finish(None, {"published": chosen.candidate, "model_version": chosen.model_version,
                          "alert": history["alert"] or ""})
    if history["alert"] and cfg.fail_on_alert:
        raise AlertRaised(f"published {chosen.candidate} for {cfg.run_date}, but: {history['alert']}")
    return stats
