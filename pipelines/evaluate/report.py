"""The evaluation's report: the best model (``best_model.json``), ``evaluation.md`` and its chart."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipelines.evaluate.config import RANK_METRICS, REPORT_METRICS
from srgnn.core.fs import write_file_atomic


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
    write_file_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def summary_line(m: dict[str, float]) -> str:
    return " ".join(f"{k.upper()} {_pct(m.get(k))}%" for k in REPORT_METRICS if k in m)
