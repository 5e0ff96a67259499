"""Evaluation: the exported SR-GNN model(s) of a run date and every baseline on the same test examples.

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
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from pipelines.baselines import BASELINES, BaselineParams, FittedBaselines, check_sessions, fit_baselines, training_sessions
from srgnn.core.config import StageConfig, opt
from srgnn.core.errors import ConfigError, InputError
from srgnn.core.log import get_logger
from pipelines.tables import TableStore, path_exists
from srgnn.core.fs import local_path, write_json_atomic
from srgnn.core.layout import normalize_root

log = get_logger(__name__)

RANK_METRICS = ("hr", "mrr", "ndcg")
BUCKETS = {"all": "", "<=5": "_len<=5", ">5": "_len>5"}
REPORT_METRICS = ("hr@20", "mrr@20", "ndcg@20")
EVALUATION_SCHEMA = "model string, metric string, k int, value double, length_bucket string"


@dataclass
class EvaluateConfig(StageConfig):
    """Evaluate SR-GNN against POP, S-POP, item-kNN, SR and V-SKNN on the test examples of a run date."""

    yaml_section: ClassVar[str] = "evaluate"

    output: str = opt(None, required=True, help="OUT root (reads shards, sessions, item_graph, models)")
    run_date: str = opt(None, required=True, help="run date YYYY-MM-DD")
    table_format: str = opt("parquet", choices=("parquet", "delta"), help="format of the tables")
    baselines: list[str] = opt(list(BASELINES), help=f"baselines to evaluate (of {', '.join(BASELINES)})")
    model_dirs: list[str] = opt([], help="more SR-GNN exports to evaluate, as DIR or NAME=DIR "
                                         "(OUT/models/run_date=D and its sub-folders are always looked at)")
    require_model: bool = opt(False, help="fail when no exported SR-GNN model is found (else: baselines only)")
    ks: list[int] = opt([10, 20], help="cut-offs K")
    batch_size: int = opt(500, help="test examples per scoring batch")
    device: str = opt("cpu", choices=("cpu", "cuda", "auto"), help="device for SR-GNN scoring")
    select_metric: str = opt("mrr@20", help="metric that names the best model in best_model.json")
    knn_neighbours: int = opt(100, help="item-kNN: neighbours kept per item (>= max K)")
    knn_lambda: float = opt(0.0, help="item-kNN: shrinkage added to the cosine denominator (0: plain cosine)")
    knn_alpha: float = opt(0.5, help="item-kNN: supp(i)^alpha * supp(j)^(1-alpha) (0.5: cosine)")
    sr_rules: int = opt(100, help="SR: rules kept per item (>= max K)")
    vsknn_k: int = opt(100, help="V-SKNN: neighbour sessions that vote (k)")
    vsknn_sample: int = opt(500, help="V-SKNN: most recent candidate sessions considered (m)")
    vsknn_score_decay: str = opt("div", choices=("div", "same"),
                                 help="V-SKNN: weight a neighbour's vote by 1/step of its latest shared click (div) or not")
    chart: bool = opt(True, help="write evaluation.png (matplotlib, Agg)")
    progress: bool = opt(True, help="tqdm bars over the scoring batches")

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.baselines or []) - set(BASELINES))
        if unknown:
            raise ConfigError(f"option --baselines: unknown {unknown}; known: {list(BASELINES)}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("option --ks: needs at least one cut-off >= 1")
        if self.batch_size < 1:
            raise ConfigError("option --batch-size: must be >= 1")
        metric, _, k = self.select_metric.partition("@")
        if metric not in RANK_METRICS or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"option --select-metric: {self.select_metric!r} must be one of "
                              f"{[f'{m}@{k}' for m in RANK_METRICS for k in self.ks]}")
        self.baseline_params().check(max(self.ks))

    def baseline_params(self) -> BaselineParams:
        return BaselineParams(knn_neighbours=self.knn_neighbours, knn_lambda=self.knn_lambda,
                              knn_alpha=self.knn_alpha, sr_rules=self.sr_rules, vsknn_k=self.vsknn_k,
                              vsknn_sample=self.vsknn_sample, vsknn_score_decay=self.vsknn_score_decay)

    @property
    def root(self) -> str:
        return normalize_root(self.output)

    @property
    def shards_dir(self) -> str:
        return f"{self.root}/shards/run_date={self.run_date}"

    @property
    def models_dir(self) -> str:
        return f"{self.root}/models/run_date={self.run_date}"

    @property
    def report_dir(self) -> str:
        return f"{self.root}/reports/run_date={self.run_date}"


# ---- test examples ----------------------------------------------------------------------------
@dataclass
class TestExamples:
    items: np.ndarray      # int64 [N, L], right-padded
    lengths: np.ndarray    # int64 [N]
    targets: np.ndarray    # int64 [N], 1..n_items
    ngc_w: np.ndarray      # float32 [N, L]

    def __len__(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int):
        from srgnn.data import batches_from_arrays
        return batches_from_arrays(self.items, self.lengths, self.targets, self.ngc_w, batch_size=batch_size)


def load_test_examples(cfg: EvaluateConfig, manifest: dict[str, Any]) -> TestExamples:
    from srgnn.reader import read_split

    got = read_split(cfg.shards_dir, "test", columns=("items", "length", "target", "ngc_w"))
    ex = TestExamples(items=np.asarray(got["items"], dtype=np.int64),
                      lengths=np.asarray(got["length"], dtype=np.int64),
                      targets=np.asarray(got["target"], dtype=np.int64),
                      ngc_w=np.asarray(got["ngc_w"], dtype=np.float32))
    where = f"{cfg.shards_dir}/test"
    if len(ex) == 0:
        raise InputError(f"no test examples in {where}: nothing to evaluate (stage 1's test split is empty)")
    expected = manifest.get("splits", {}).get("test", {}).get("examples")
    if expected is not None and int(expected) != len(ex):
        raise InputError(f"{where}: {len(ex)} test examples, the manifest says {expected}")
    n_items = int(manifest["n_items"])
    bad = (ex.targets < 1) | (ex.targets > n_items) | (ex.lengths < 1)
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} example(s) with a target outside 1..{n_items} or an "
                         f"empty prefix")
    return ex


# ---- models -----------------------------------------------------------------------------------
def _is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "model.safetensors"))


def _default_name(path: str) -> str:
    from srgnn.core.fs import read_json

    variant = read_json(os.path.join(path, "config.json")).get("model", {}).get("variant", "srgnn")
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


def check_model_matches(name: str, config: dict[str, Any], manifest: dict[str, Any], path: str) -> None:
    if int(config.get("n_items", -1)) != int(manifest["n_items"]):
        raise InputError(f"model '{name}' at {path} has n_items={config.get('n_items')}, the test shards "
                         f"{manifest['n_items']}: it was trained on another vocabulary")
    trained_on = config.get("manifest_hash")
    if trained_on and manifest.get("content_hash") and trained_on != manifest["content_hash"]:
        raise InputError(f"model '{name}' at {path} was trained on shards with hash {trained_on}, the "
                         f"shards of {manifest.get('run_date')} have {manifest['content_hash']}")


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("option --device cuda: no CUDA device is available")
    return torch.device(requested)


# ---- scoring ----------------------------------------------------------------------------------
def evaluate_scores(score_batch: Callable[[Any], torch.Tensor], examples: TestExamples, n_items: int,
                    ks: Iterable[int], batch_size: int, popularity: torch.Tensor | None = None,
                    desc: str = "eval", progress: bool = False) -> dict[str, float]:
    """Metrics (fractions, srgnn.metrics keys) of ``score_batch(Batch) -> [B, n_items]`` over the examples."""
    from srgnn.metrics import MetricAccumulator

    acc = MetricAccumulator(n_items, tuple(ks), popularity)
    total = math.ceil(len(examples) / batch_size)
    with torch.no_grad():
        for batch in tqdm(examples.batches(batch_size), total=total, desc=desc, disable=not progress, leave=False):
            scores = score_batch(batch)
            acc.update(scores.to("cpu"), batch.targets, batch.lengths)
    return acc.finalize()


def model_score_fn(model: torch.nn.Module, device: torch.device) -> Callable[[Any], torch.Tensor]:
    def score(batch):
        b = batch.to(device)
        return model(b.items, b.lengths, b.ngc_w).float()
    return score


def baseline_score_fn(scorer) -> Callable[[Any], torch.Tensor]:
    return lambda batch: scorer.score(batch.items, batch.lengths)


# ---- the evaluation table -----------------------------------------------------------------------
def evaluation_rows(metrics: dict[str, dict[str, float]], ks: Iterable[int]) -> list[tuple]:
    """(model, metric, k, value, length_bucket) rows; empty length buckets (NaN) are left out."""
    rows = []
    for model, m in metrics.items():
        for k in ks:
            for metric in RANK_METRICS:
                for bucket, suffix in BUCKETS.items():
                    value = m.get(f"{metric}@{k}{suffix}")
                    if value is not None and not math.isnan(value):
                        rows.append((model, metric, int(k), float(value), bucket))
            for metric in ("coverage", "pop"):
                value = m.get(f"{metric}@{k}")
                if value is not None and not math.isnan(value):
                    rows.append((model, metric, int(k), float(value), "all"))
    return rows


def evaluation_frame(spark, metrics: dict[str, dict[str, float]], ks: Iterable[int]):
    return spark.createDataFrame(evaluation_rows(metrics, ks), EVALUATION_SCHEMA)


# ---- best model -------------------------------------------------------------------------------
def best_model(metrics: dict[str, dict[str, float]], kinds: dict[str, str], select_metric: str,
               run_date: str) -> dict[str, Any]:
    """Which model is best by ``select_metric`` (ties: a baseline wins, being cheaper), and whether
    the best SR-GNN export beats the best baseline."""
    def best_of(kind: str) -> str | None:
        names = [n for n in metrics if kinds[n] == kind]          # ties: the first listed wins
        return max(names, key=lambda n: (metrics[n][select_metric], -names.index(n))) if names else None

    baseline, model = best_of("baseline"), best_of("srgnn")
    candidates = [n for n in (baseline, model) if n is not None]
    best = max(candidates, key=lambda n: (metrics[n][select_metric], kinds[n] == "baseline"))
    beats = None if model is None or baseline is None else metrics[model][select_metric] > metrics[baseline][select_metric]
    return {
        "run_date": run_date,
        "select_metric": select_metric,
        "best_model": best,
        "best_kind": kinds[best],
        "best_value": metrics[best][select_metric],
        "best_baseline": baseline,
        "best_baseline_value": None if baseline is None else metrics[baseline][select_metric],
        "best_srgnn": model,
        "best_srgnn_value": None if model is None else metrics[model][select_metric],
        "srgnn_beats_baselines": beats,
        "models": {n: {"kind": kinds[n], **{m: metrics[n].get(m) for m in REPORT_METRICS}} for n in metrics},
    }


# ---- report -----------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def render_report(run_date: str, metrics: dict[str, dict[str, float]], kinds: dict[str, str],
                  best: dict[str, Any], timings: dict[str, dict[str, float]], info: dict[str, Any],
                  chart_name: str | None) -> str:
    """The Markdown report (models sorted by the selection metric)."""
    sel = best["select_metric"]
    order = sorted(metrics, key=lambda n: -metrics[n][sel])
    m0 = metrics[order[0]]
    lines = [f"# SR-GNN against the baselines, run date {run_date}", ""]
    lines.append(f"{int(m0['examples']):,} test examples ({int(m0['examples_len<=5']):,} with a prefix of "
                 f"<= 5 clicks, {int(m0['examples_len>5']):,} longer) from `{info['test_dir']}`; "
                 f"{info['n_items']:,} items. Baselines fitted on {info['train_sessions']:,} training sessions "
                 f"({info['train_clicks']:,} clicks). Metrics in %, ties ranked by srgnn.metrics' rule.")
    lines += ["", "| model | kind | HR@20 | MRR@20 | NDCG@20 |", "|---|---|---:|---:|---:|"]
    for n in order:
        lines.append(f"| {n} | {kinds[n]} | " + " | ".join(_pct(metrics[n].get(m)) for m in REPORT_METRICS) + " |")
    lines.append("")
    lines.append(f"Best by {sel.upper()}: **{best['best_model']}** ({_pct(best['best_value'])}%).")
    if best["srgnn_beats_baselines"] is None:
        if best["best_srgnn"] is None:
            lines.append("No exported SR-GNN model was found for this run date: baselines only.")
    elif best["srgnn_beats_baselines"]:
        lines.append(f"SR-GNN ({best['best_srgnn']}) beats the best baseline ({best['best_baseline']}, "
                     f"{_pct(best['best_baseline_value'])}%) by {100 * (best['best_srgnn_value'] - best['best_baseline_value']):.2f} points.")
    else:
        lines.append(f"SR-GNN ({best['best_srgnn']}, {_pct(best['best_srgnn_value'])}%) does NOT beat the best "
                     f"baseline ({best['best_baseline']}, {_pct(best['best_baseline_value'])}%).")
    if chart_name:
        lines += ["", f"![HR@20, MRR@20 and NDCG@20 per model]({chart_name})"]
    lines += ["", "## By prefix length (paper's Table 3)", "",
              "| model | HR@20 <=5 | HR@20 >5 | MRR@20 <=5 | MRR@20 >5 |", "|---|---:|---:|---:|---:|"]
    for n in order:
        m = metrics[n]
        lines.append(f"| {n} | {_pct(m.get('hr@20_len<=5'))} | {_pct(m.get('hr@20_len>5'))} | "
                     f"{_pct(m.get('mrr@20_len<=5'))} | {_pct(m.get('mrr@20_len>5'))} |")
    other_ks = sorted({int(key.split("@")[1]) for key in m0 if key.startswith("hr@") and "_" not in key} - {20})
    for k in other_ks:
        lines += ["", f"## At K = {k}", "", f"| model | HR@{k} | MRR@{k} | NDCG@{k} |", "|---|---:|---:|---:|"]
        for n in order:
            lines.append(f"| {n} | " + " | ".join(_pct(metrics[n].get(f"{m}@{k}")) for m in RANK_METRICS) + " |")
    lines += ["", "## Diversity and cost", "",
              "| model | coverage@20 | fit (s) | scoring (s) |", "|---|---:|---:|---:|"]
    for n in order:
        t = timings.get(n, {})
        fit = "trained by stage 3" if kinds[n] == "srgnn" else f"{t.get('fit_s', float('nan')):.1f}"
        lines.append(f"| {n} | {_pct(metrics[n].get('coverage@20'))} | {fit} | {t.get('score_s', float('nan')):.1f} |")
    lines += ["", "Baseline parameters: " + ", ".join(f"{k}={v}" for k, v in info["params"].items()) + ".",
              "See docs/baselines.md for the methods and their tie-breaking.", ""]
    return "\n".join(lines)


def write_chart(path: str, metrics: dict[str, dict[str, float]], order: list[str], run_date: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(order) + 2), 4.0))
    width = 0.8 / len(REPORT_METRICS)
    x = np.arange(len(order))
    for i, m in enumerate(REPORT_METRICS):
        ax.bar(x + (i - 1) * width, [100 * metrics[n][m] for n in order], width, label=m.upper())
    ax.set_xticks(x, order, rotation=20)
    ax.set_ylabel("%")
    ax.set_title(f"Test metrics, run date {run_date}")
    ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# ---- the stage --------------------------------------------------------------------------------
def evaluate(spark, cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate the SR-GNN export(s) of ``cfg.run_date`` and the baselines; write the table and report."""
    from srgnn.reader import load_manifest_at

    cfg.validate_required()
    store = TableStore(cfg.output, cfg.table_format)
    manifest = load_manifest_at(local_path(cfg.shards_dir))
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

    # ---- fit the baselines (Spark) -----------------------------------------------------------
    sessions = store.read(spark, "sessions", cfg.run_date)
    check_sessions(sessions)
    train_dir = f"{cfg.shards_dir}/train"
    if not path_exists(spark, train_dir):
        raise InputError(f"train shards not found: {train_dir} (run jobs/build_graph.py for this run date first)")
    train_ids = spark.read.parquet(train_dir).select("session_id")
    item_graph = store.read(spark, "item_graph", cfg.run_date) if "sr" in cfg.baselines else None
    fitted: FittedBaselines = fit_baselines(training_sessions(sessions, train_ids), item_graph, n_items,
                                            cfg.baseline_params(), names=cfg.baselines)
    popularity = torch.from_numpy(fitted.clicks / max(fitted.clicks.sum(), 1))

    metrics: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    timings: dict[str, dict[str, float]] = {}
    device = pick_device(cfg.device)
    for name, path in models.items():
        from srgnn.export import load_model
        model, config = load_model(path, device)
        check_model_matches(name, config, manifest, path)
        t = time.perf_counter()
        metrics[name] = evaluate_scores(model_score_fn(model, device), examples, n_items, cfg.ks, cfg.batch_size,
                                        popularity, desc=name, progress=cfg.progress)
        timings[name] = {"score_s": time.perf_counter() - t}
        kinds[name] = "srgnn"
        log.info("evaluate %s: %s (%s) %s", cfg.run_date, name, path, _summary(metrics[name]))
    for name in cfg.baselines:
        scorer = fitted.scorers[name]
        t = time.perf_counter()
        metrics[name] = evaluate_scores(baseline_score_fn(scorer), examples, n_items, cfg.ks, cfg.batch_size,
                                        popularity, desc=name, progress=cfg.progress)
        timings[name] = {"fit_s": fitted.fit_seconds[name], "score_s": time.perf_counter() - t}
        kinds[name] = "baseline"
        log.info("evaluate %s: %s %s", cfg.run_date, name, _summary(metrics[name]))
    if not metrics:
        raise ConfigError("nothing to evaluate: no model found and --baselines is empty")

    # ---- write ---------------------------------------------------------------------------------
    table = store.write(evaluation_frame(spark, metrics, cfg.ks), "evaluation", cfg.run_date)
    best = best_model(metrics, kinds, cfg.select_metric, cfg.run_date)
    best["model_dirs"] = models
    report_dir = local_path(cfg.report_dir)
    os.makedirs(report_dir, exist_ok=True)
    order = sorted(metrics, key=lambda n: -metrics[n][cfg.select_metric])
    chart = None
    if cfg.chart and all(k in metrics[order[0]] for k in REPORT_METRICS):
        chart = "evaluation.png"
        write_chart(os.path.join(report_dir, chart), metrics, order, cfg.run_date)
    info = {"test_dir": f"{cfg.shards_dir}/test", "n_items": n_items, **fitted.stats,
            "params": dataclasses.asdict(cfg.baseline_params())}
    report = os.path.join(report_dir, "evaluation.md")
    _write_text_atomic(report, render_report(cfg.run_date, metrics, kinds, best, timings, info, chart))
    best_json = write_json_atomic(os.path.join(report_dir, "best_model.json"), best)
    log.info("evaluate %s: wrote table evaluation (%s), %s, %s; best by %s: %s", cfg.run_date, table, report,
             best_json, cfg.select_metric, best["best_model"])
    return {"run_date": cfg.run_date, "examples": len(examples), "metrics": metrics, "kinds": kinds,
            "best": best, "timings": timings, "table": table, "report": report, "best_model_json": best_json,
            "chart": None if chart is None else os.path.join(report_dir, chart)}


def _summary(m: dict[str, float]) -> str:
    return " ".join(f"{k.upper()} {_pct(m.get(k))}%" for k in REPORT_METRICS if k in m)
