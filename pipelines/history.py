"""The history across nights: which model each night published, how the models scored, what the
night read; and the alert when the published model falls behind its recent nights.

Reads, for the last ``nights`` run dates up to ``run_date`` that have a ``model_selection`` partition:
``model_selection`` (the candidates and the chosen one), ``evaluation`` (HR@20 / MRR@20 of every
model, all lengths) and the stats JSON of stage 1 (clicks read, sessions, items, rows quarantined)
and stage 4 (share of the night's clicks on items the model does not know). Writes
``OUT/reports/run_date=D/history.md`` and ``history.png``.

Alert: the published model's MRR@20 tonight is more than ``alert_drop`` (a share, 0.2 = 20%) below
the median of the published MRR@20 of the previous 7 nights (at least 3 of them needed).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from pipelines.tables import TableStore
from srgnn.core import contracts as C
from srgnn.core import fs
from srgnn.core.layout import Layout
from srgnn.core.log import get_logger

log = get_logger(__name__)

MODEL_SELECTION = C.MODEL_SELECTION
ALERT_WINDOW = 7
ALERT_MIN_NIGHTS = 3


def run_dates(store: TableStore, spark, table: str, up_to: str, nights: int) -> list[str]:
    """The last ``nights`` run dates <= ``up_to`` with a partition of ``table``, oldest first."""
    if store.fmt == "parquet":
        names = fs.listdir(store.path(table))
        dates = [n.split("=", 1)[1] for n in names if n.startswith(f"{C.PARTITION_COLUMN}=")]
    else:
        if not fs.exists(store.path(table) + "/_delta_log"):
            return []
        rows = spark.read.format("delta").load(store.path(table)).select(C.PARTITION_COLUMN).distinct().collect()
        dates = [str(r[0]) for r in rows]
    return sorted(d for d in dates if d <= up_to)[-nights:]


def _stat(path: str, *keys: str) -> Any:
    if not fs.exists(path):
        return None
    value: Any = fs.read_json(path)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def night_record(spark, store: TableStore, run_date: str) -> dict[str, Any]:
    layout = Layout(store.root)
    selection = store.read(spark, MODEL_SELECTION, run_date).collect()
    chosen = [r for r in selection if r["chosen"]]
    evaluation = (store.read(spark, C.EVALUATION, run_date)
                  .where("length_bucket = 'all' AND k = 20").collect())
    models: dict[str, dict[str, float]] = {}
    for r in evaluation:
        models.setdefault(r["model"], {})[f"{r['metric']}@20"] = float(r["value"])
    published = chosen[0]["candidate"] if chosen else None
    stats1 = layout.stats(run_date, C.STATS_SESSIONS)
    sessions = _stat(stats1, "sessions") or {}
    return {
        "run_date": run_date,
        "published": published,
        "published_version": chosen[0]["model_version"] if chosen else None,
        "published_mrr@20": float(chosen[0]["value"]) if chosen and chosen[0]["metric"] == "mrr@20" else
        models.get(published or "", {}).get("mrr@20"),
        "models": models,
        "clicks": _stat(stats1, "rows_read"),
        "sessions": (sessions.get("train") or 0) + (sessions.get("test") or 0) if sessions else None,
        "items": _stat(stats1, "n_items"),
        "quarantined": _stat(stats1, "rows_quarantined"),
        "unknown_item_share": _stat(layout.stats(run_date, C.STATS_RECOMMEND), "unknown_item_click_share"),
    }


def alert_message(records: list[dict[str, Any]], alert_drop: float) -> str | None:
    """The alert for the last record, or None (see the module doc)."""
    if not records or records[-1]["published_mrr@20"] is None:
        return None
    tonight = records[-1]["published_mrr@20"]
    before = [r["published_mrr@20"] for r in records[:-1][-ALERT_WINDOW:] if r["published_mrr@20"] is not None]
    if len(before) < ALERT_MIN_NIGHTS:
        return None
    median = statistics.median(before)
    if tonight < median * (1.0 - alert_drop):
        return (f"published model {records[-1]['published']} has MRR@20 {tonight:.4f} on "
                f"{records[-1]['run_date']}, more than {alert_drop:.0%} below the median {median:.4f} "
                f"of the previous {len(before)} nights")
    return None


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render_history(records: list[dict[str, Any]], alert: str | None) -> str:
    models = sorted({m for r in records for m in r["models"]})
    lines = [f"# Nightly history up to {records[-1]['run_date']}" if records else "# Nightly history", ""]
    if alert:
        lines += [f"**ALERT**: {alert}", ""]
    lines += ["Per night: the published model, MRR@20 (%) of every model on that night's test examples, "
              "and what the night read.", ""]
    head = ["night", "published", *[f"{m} MRR@20" for m in models], "HR@20 published", "clicks", "sessions",
            "items", "item growth", "quarantined", "unknown-item clicks %"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    prev_items = None
    for r in records:
        pub = r["models"].get(r["published"] or "", {})
        growth = None if prev_items is None or r["items"] is None else r["items"] - prev_items
        prev_items = r["items"] if r["items"] is not None else prev_items
        cells = [r["run_date"], r["published"] or "-",
                 *[_fmt(r["models"].get(m, {}).get("mrr@20"), pct=True) for m in models],
                 _fmt(pub.get("hr@20"), pct=True), _fmt(r["clicks"]), _fmt(r["sessions"]), _fmt(r["items"]),
                 _fmt(growth), _fmt(r["quarantined"]), _fmt(r["unknown_item_share"], pct=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_chart(path: str, records: list[dict[str, Any]]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({m for r in records for m in r["models"]})
    x = list(range(len(records)))
    fig, ax = plt.subplots(figsize=(max(6, len(records) * 0.8), 4))
    for m in models:
        ax.plot(x, [100 * r["models"].get(m, {}).get("mrr@20", math.nan) for r in records], marker=".", label=m)
    ax.scatter(x, [100 * (r["published_mrr@20"] or math.nan) for r in records], s=120, facecolors="none",
               edgecolors="black", label="published")
    ax.set_xticks(x, [r["run_date"] for r in records], rotation=45, ha="right")
    ax.set_ylabel("MRR@20 (%)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fs.write_bytes_atomic(path, buf.getvalue())


def history_report(spark, store: TableStore, run_date: str, nights: int = 14,
                   alert_drop: float = 0.2) -> dict[str, Any]:
    """Write ``history.md`` / ``history.png`` for the nights up to ``run_date``; returns
    {"nights", "alert", "markdown", "chart"}."""
    dates = run_dates(store, spark, MODEL_SELECTION, run_date, nights)
    records = [night_record(spark, store, d) for d in dates]
    alert = alert_message(records, alert_drop) if records and records[-1]["run_date"] == run_date else None
    layout = Layout(store.root)
    md = layout.report(run_date, "history.md")
    png = layout.report(run_date, "history.png")
    fs.write_bytes_atomic(md, render_history(records, alert).encode())
    write_chart(png, records)
    if alert:
        log.warning("ALERT: %s", alert)
    log.info("history of %d nights written to %s", len(records), md)
    return {"nights": records, "alert": alert, "markdown": md, "chart": png}
