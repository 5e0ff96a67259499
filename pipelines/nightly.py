"""The whole nightly pipeline in one process: stage 1 -> 2 -> 3 -> evaluate -> 4.

One SparkSession (local Spark by default) serves the Spark stages; training runs as a single CPU
(or single GPU) process in between. This is the README's first command::

    .venv/bin/python jobs/nightly.py            # bundled sample -> out/sample, run date 2016-06-01

The stage options come from ONE YAML file (``--config``, default ``conf/sample.yaml``) with a
section per stage (``build_sessions``, ``build_graph``, ``train``, ``evaluate``, ``recommend``) and
an optional ``nightly`` section for this config. The nightly options (``--input``, ``--format``,
``--output``, ``--run-date``, ``--table-format``) win over the same options in any section, so
every stage reads and writes the same tables. At the end it prints where every table and the model
are, the test metrics, and the recommendations of a few sessions.

On Databricks or Airflow the same stages run as separate tasks (databricks.yml, jobs/airflow/).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from pathlib import Path
from typing import Any, Sequence


from srgnn.core.config import StageConfig, load_yaml_mapping, opt
from srgnn.core.errors import ConfigError
from srgnn.core.log import get_logger
from pipelines.tables import TableStore
from srgnn.core.contracts import TABLE_FORMATS as FORMATS
from srgnn.core import contracts as C
from srgnn.core.dates import check_run_date
from srgnn.core.fs import exists, read_json

log = get_logger(__name__)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_INPUT = REPO / "data" / "sample" / "diginetica" / "sample_train-item-views.csv"
SAMPLE_CONFIG = REPO / "conf" / "sample.yaml"

# Stage name (= YAML section = task key) -> (module, config class, entry point), in run order.
STAGES: dict[str, tuple[str, str, str]] = {
    "build_sessions": ("pipelines.sessions", "SessionsConfig", "build_sessions"),
    "build_graph": ("pipelines.graph", "GraphConfig", "build_graph"),
    "train": ("pipelines.train.job", "TrainJobConfig", "train_job"),
    "evaluate": ("pipelines.evaluate", "EvaluateConfig", "evaluate"),
    "select": ("pipelines.select", "SelectConfig", "select_model"),
    "recommend": ("pipelines.recommend", "RecommendConfig", "recommend"),
}
SPARK_STAGES = {"build_sessions", "build_graph", "evaluate", "select", "recommend"}
AFTER_EVALUATION = {"evaluate", "select"}   # skipped with --no-evaluate
TABLES = list(C.TABLES)


@dataclasses.dataclass
class NightlyConfig(StageConfig):
    """Run the whole nightly pipeline (stages 1 -> 4) in one process on local Spark and CPU torch."""

    yaml_section = "nightly"

    input: str = opt(str(SAMPLE_INPUT), "raw click logs for stage 1 (default: the bundled Diginetica sample)")
    format: str = opt("diginetica", "input format", choices=("diginetica", "yoochoose", "events"))
    output: str = opt("out/sample", "table root OUT: every table, the shards and the model go under it")
    run_date: str = opt("2016-06-01", "run date YYYY-MM-DD (one partition of every table)")
    input_format: str | None = opt(None, "events: stage 1's --input-format (default: the YAML's or csv)",
                                   choices=("csv", "json", "parquet", "delta", "table"))
    window_days: int | None = opt(None, "events from parquet/delta/table: stage 1's --window-days "
                                        "(default: the YAML's or 30)")
    date_col: str | None = opt(None, "events from parquet/delta/table: stage 1's --date-col "
                                      "(the partition date column)")
    table_format: str = opt("parquet", "table format", choices=FORMATS)
    stage_config: str = opt(str(SAMPLE_CONFIG), "YAML with a section per stage; --config FILE sets it "
                            "(and reads this config's own options from its 'nightly' section)")
    start_at: str = opt("build_sessions", "first stage to run (the earlier ones' tables must exist)",
                        choices=tuple(STAGES))
    evaluate: bool = opt(True, "run the evaluation (SR-GNN against the baselines) and the model selection "
                               "after training (without it, stage 4 scores with this night's SR-GNN)")
    warm_start: bool = opt(True, "start training from the SR-GNN published on the latest earlier night, where "
                                 "one exists (its item rows carried over by item id; new items start fresh)")
    warm_epochs: int = opt(0, "maximum epochs of a warm-started night (0: the train section's epochs)")
    fail_on_alert: bool = opt(False, "exit non-zero after publishing when the published model's MRR@20 fell "
                                     "below the median of the previous nights (see the select section)")
    spark_master: str = opt("", "Spark master (default local[*], or the one spark-submit gives)")
    shuffle_partitions: int = opt(0, "spark.sql.shuffle.partitions of a local session (0 = get_spark's default)")
    show_sessions: int = opt(3, "print the recommendations of this many sessions at the end")
    show_items: int = opt(5, "recommended items printed per session")

    def validate(self) -> None:
        super().validate()
        if self.run_date:
            check_run_date(self.run_date)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "NightlyConfig":
        """This config's options are the file's ``nightly`` section (the other sections are the stages')."""
        return cls.from_dict(read_stage_sections(path)["nightly"], source=f"{path} [nightly]")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, *, prog: str | None = None,
                  description: str | None = None) -> "NightlyConfig":
        """As StageConfig.from_args; ``--config FILE`` (default conf/sample.yaml) is also the stage
        options file: its ``nightly`` section sets this config, the other sections the stages'."""
        argv = list(sys.argv[1:] if argv is None else argv)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        pre.add_argument("--stage-config")
        known, _ = pre.parse_known_args(argv)
        path = known.config or known.stage_config or str(SAMPLE_CONFIG)
        if not known.config:
            argv = ["--config", path, *argv]
        cfg = super().from_args(argv, prog=prog, description=description)
        return cfg.replace(stage_config=known.stage_config or path)


# ---- stage configs from the shared YAML ---------------------------------------------------------
def read_stage_sections(path: str | Path) -> dict[str, dict[str, Any]]:
    """The per-stage sections of the options YAML (unknown sections are an error)."""
    path = Path(path)
    data = load_yaml_mapping(path, "section: options")
    known = set(STAGES) | {"nightly"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {unknown}; known: {sorted(known)}")
    for name, section in data.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"config file {path}: section '{name}' must be a mapping of option: value")
    return {name: dict(data.get(name) or {}) for name in known}


def stage_class(stage: str):
    module, cls_name, _ = STAGES[stage]
    return getattr(importlib.import_module(module), cls_name)


def stage_function(stage: str):
    module, _, fn = STAGES[stage]
    return getattr(importlib.import_module(module), fn)


def stage_configs(cfg: NightlyConfig, stages: Sequence[str] | None = None) -> dict[str, StageConfig]:
    """Each stage's typed config (all stages, or ``stages``): its YAML section, then the nightly
    options that every stage shares."""
    sections = read_stage_sections(cfg.stage_config)
    shared = {"output": cfg.output, "run_date": cfg.run_date, "table_format": cfg.table_format}
    window = {k: getattr(cfg, k) for k in ("input_format", "window_days", "date_col") if getattr(cfg, k) is not None}
    per_stage = {"build_sessions": {"input": cfg.input, "format": cfg.format, **window}}
    if cfg.fail_on_alert:
        per_stage["select"] = {"fail_on_alert": True}
    out: dict[str, StageConfig] = {}
    for stage in (STAGES if stages is None else stages):
        cls = stage_class(stage)
        base = cls.from_dict(sections[stage], source=f"{cfg.stage_config} [{stage}]")
        fields = cls.field_types()
        changes = {k: v for k, v in {**shared, **per_stage.get(stage, {})}.items() if k in fields}
        stage_cfg = base.replace(**changes)
        stage_cfg.validate_required()
        out[stage] = stage_cfg
    return out


# ---- the run ------------------------------------------------------------------------------------
def run_nightly(cfg: NightlyConfig, spark=None) -> dict[str, Any]:
    """Run the stages in order and return what each returned plus a summary (also printed)."""
    from pipelines.spark import get_spark

    cfg.validate_required()
    order = list(STAGES)
    todo = order[order.index(cfg.start_at):]
    if not cfg.evaluate:
        todo = [s for s in todo if s not in AFTER_EVALUATION]
    configs = stage_configs(cfg, todo)  # all parsed before anything runs: a bad option fails fast
    if spark is None:
        spark = get_spark("srgnn-nightly", master=cfg.spark_master or None, table_format=cfg.table_format,
                          shuffle_partitions=cfg.shuffle_partitions or None)

    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    t_all = time.time()
    for i, stage in enumerate(todo, 1):
        if stage == "train" and cfg.warm_start:
            configs[stage] = warm_started(spark, cfg, configs[stage])
        log.info("nightly %s: stage %d/%d %s", cfg.run_date, i, len(todo), stage)
        t0 = time.time()
        fn = stage_function(stage)
        results[stage] = fn(spark, configs[stage]) if stage in SPARK_STAGES else fn(configs[stage])
        timings[stage] = round(time.time() - t0, 2)
        log.info("nightly %s: %s done in %.1f s", cfg.run_date, stage, timings[stage])
    timings["total"] = round(time.time() - t_all, 2)

    summary = summarize(spark, cfg, configs)
    summary["timings_s"] = timings
    print(format_summary(summary), flush=True)
    return {"results": results, "summary": summary}


def warm_started(spark, cfg: NightlyConfig, train_cfg: StageConfig) -> StageConfig:
    """The train config starting from the SR-GNN published on the latest earlier night, if any."""
    from pipelines.select.job import previous_model_dir

    if train_cfg.init_from:
        return train_cfg
    prev = previous_model_dir(TableStore(cfg.output, cfg.table_format), spark, cfg.run_date)
    if prev is None or not exists(f"{prev}/{C.CONFIG_FILE}"):
        return train_cfg
    log.info("nightly %s: warm start from %s (%s epochs at most)", cfg.run_date, prev,
             cfg.warm_epochs or train_cfg.epochs)
    return train_cfg.replace(init_from=prev, epochs=cfg.warm_epochs or train_cfg.epochs)


def summarize(spark, cfg: NightlyConfig, configs: dict[str, StageConfig]) -> dict[str, Any]:
    """Where every table and the model are, the test metrics, and a few sessions' recommendations."""
    from pyspark.sql import functions as F

    store = TableStore(cfg.output, cfg.table_format)
    tables: dict[str, dict[str, Any]] = {}
    for name in TABLES:
        if store.exists(spark, name, cfg.run_date):
            where = store.partition_path(name, cfg.run_date) if cfg.table_format == "parquet" \
                else f"{store.path(name)} (run_date = {cfg.run_date})"
            tables[name] = {"path": where, "rows": store.read(spark, name, cfg.run_date).count()}
    layout = store.layout
    shards = layout.shards(cfg.run_date)
    model_dir = layout.model(cfg.run_date)
    model_cfg = read_json(f"{model_dir}/{C.CONFIG_FILE}")
    stats_json = layout.stats(cfg.run_date, C.STATS_SESSIONS)
    report = layout.report(cfg.run_date, C.REPORT_EVALUATION)

    recs = store.read(spark, "recommendations", cfg.run_date)
    ids = [r.session_id for r in (recs.select("session_id").distinct()
                                  .orderBy("session_id").limit(cfg.show_sessions).collect())]
    sessions = store.read(spark, "sessions", cfg.run_date)
    clicks = {r.session_id: list(r.item_ids) for r in
              sessions.where(F.col("session_id").isin(ids)).select("session_id", "item_ids").collect()}
    shown = (recs.where(F.col("session_id").isin(ids) & (F.col("rank") <= cfg.show_items))
             .select("session_id", "rank", "item_id", "score", "source")
             .orderBy("session_id", "rank").collect())
    examples = [{"session_id": sid, "clicks": clicks.get(sid, []),
                 "recommended": [(r.item_id, float(r.score), r.source) for r in shown if r.session_id == sid]}
                for sid in ids]

    selection = []
    if store.exists(spark, C.MODEL_SELECTION, cfg.run_date):
        selection = [r.asDict() for r in store.read(spark, C.MODEL_SELECTION, cfg.run_date)
                     .drop("run_date").collect()]
    evaluation = []
    if "evaluation" in tables:
        ev = store.read(spark, "evaluation", cfg.run_date)
        evaluation = [r.asDict() for r in ev.where(
            (F.col("k") == 20) & F.col("metric").isin("hr", "mrr", "ndcg", "hr@20", "mrr@20", "ndcg@20")
            & (F.col("length_bucket").isNull() | F.col("length_bucket").isin("all", "")))
            .select("model", "metric", "value").orderBy("model", "metric").collect()]

    return {
        "run_date": cfg.run_date, "output": store.root, "table_format": cfg.table_format,
        "tables": tables, "shards": shards, "model_dir": model_dir,
        "model_version": model_cfg.get("model_version"),
        "stats": stats_json if exists(stats_json) else None,
        "report": report if exists(report) else None,
        "metrics": model_cfg.get("metrics", {}), "evaluation": evaluation, "selection": selection,
        "examples": examples,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"SR-GNN nightly run {s['run_date']}: tables ({s['table_format']}) under {s['output']}"]
    for name, t in s["tables"].items():
        lines.append(f"  {name:<16} {t['rows']:>9,} rows  {t['path']}")
    lines.append(f"  {'shards':<16} {'':>14}  {s['shards']}")
    lines.append(f"  {'model':<16} {'':>14}  {s['model_dir']} (version {s['model_version']})")
    if s["stats"]:
        lines.append(f"  {'stage 1 stats':<16} {'':>14}  {s['stats']}")
    if s["report"]:
        lines.append(f"  {'evaluation':<16} {'':>14}  {s['report']}")
    for split in ("valid", "test"):
        m = s["metrics"].get(split)
        if m:
            shown = "  ".join(f"{k.upper()} {100 * m[k]:.2f}%" for k in ("hr@20", "mrr@20", "ndcg@20")
                              if isinstance(m.get(k), (int, float)))
            lines.append(f"SR-GNN {split} metrics (best epoch on valid): {shown}")
    if s["evaluation"]:
        lines.append("evaluation at k=20 (all session lengths):")
        by_model: dict[str, dict[str, float]] = {}
        for r in s["evaluation"]:
            by_model.setdefault(r["model"], {})[r["metric"]] = r["value"]
        for model, ms in by_model.items():
            lines.append(f"  {model:<12} " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in sorted(ms.items())))
    if s.get("selection"):
        lines.append("model selection (published first):")
        for r in sorted(s["selection"], key=lambda r: not r["chosen"]):
            lines.append(f"  {'PUBLISHED' if r['chosen'] else '         '} {r['candidate']:<10} {r['metric']} "
                         f"{100 * r['value']:.2f}%  {r['reason']}")
    top = max((len(e["recommended"]) for e in s["examples"]), default=0)
    lines.append(f"recommendations of {len(s['examples'])} sessions (top {top}):")
    for e in s["examples"]:
        lines.append(f"  session {e['session_id']}: clicked {' '.join(e['clicks'])}")
        lines.append("    -> " + ", ".join(f"{item} ({score:.3f}{'' if src == 'model' else ', ' + src})"
                                          for item, score, src in e["recommended"]))
    if "timings_s" in s:
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["timings_s"].items()))
    return "\n".join(lines)


# ---- configuration reference (README) -----------------------------------------------------------
REFERENCE_START = "<!-- config-reference:start (generated by scripts/config_reference.py; do not edit) -->"
REFERENCE_END = "<!-- config-reference:end -->"


def config_reference() -> str:
    """Markdown tables of every stage config's options: flag, YAML key, default, help."""
    parts = [REFERENCE_START, ""]
    classes = [("nightly", NightlyConfig, "jobs/nightly.py")] + [
        (stage, stage_class(stage), f"jobs/{stage}.py") for stage in STAGES]
    for section, cls, job in classes:
        parts.append(f"#### `{section}`: `{cls.__module__}.{cls.__name__}` ({job})")
        parts.append("")
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        if doc and not doc.startswith(cls.__name__ + "("):
            parts += [doc, ""]
        parts.append("| option (`--flag` / YAML key) | default | help |")
        parts.append("|---|---|---|")
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = None
            if isinstance(default, str) and default.startswith(str(REPO)):
                default = default[len(str(REPO)) + 1:]
            shown = "required" if f.metadata.get("required") else f"`{default!r}`" if default not in (None, "") else ""
            helptext = str(f.metadata.get("help", "")).replace("|", "\\|").replace("\n", " ")
            choices = f.metadata.get("choices")
            if choices:
                helptext += f" (one of {', '.join(map(str, choices))})"
            parts.append(f"| `--{f.name.replace('_', '-')}` / `{f.name}` | {shown} | {helptext} |")
        parts.append("")
    parts.append(REFERENCE_END)
    return "\n".join(parts)
