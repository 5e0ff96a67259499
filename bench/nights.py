"""Consecutive nights on a drifting stream: which model each night publishes, how good it is, and what
the night costs.

    .venv/bin/python bench/nights.py --days 7 [--clicks-per-day 3000] [--window-days 7] [--out bench/_out/nights]
    .venv/bin/python bench/nights.py --days 7 --no-warm-start --out bench/_out/nights-cold   # from scratch

Writes a synthetic events table (bench/synth.py --format events-table: popularity drifts, items appear
and fade) with ``window_days`` days of history before the first night, then runs jobs/nightly.py's
pipeline for each night in turn (conf/stream.yaml) on the window of the events table that ends on that
night, and prints one line a night::

    night=2014-04-08 published=srgnn mrr20=0.2841 train_s=21.3 total_s=74.2 clicks=20784 items=812 alert=-

and a last summary line. Figures for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=7, help="nights to run")
    p.add_argument("--clicks-per-day", type=int, default=3000)
    p.add_argument("--window-days", type=int, default=7)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", default="2014-04-01", help="first day of the events (UTC)")
    p.add_argument("--out", default=str(ROOT / "bench" / "_out" / "nights"))
    p.add_argument("--config", default=str(ROOT / "conf" / "stream.yaml"))
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                   help="start each night from the SR-GNN published the night before (the nightly's default)")
    p.add_argument("--warm-epochs", type=int, default=0, help="epochs of a warm-started night (0: the config's)")
    a = p.parse_args(argv)

    from bench.synth import SynthConfig, write_events_table
    from pipelines.nightly import NightlyConfig, run_nightly
    from pipelines.spark import get_spark

    out = Path(a.out)
    events = out / "events"
    cfg = dataclasses.replace(SynthConfig(), seed=a.seed, n_items=a.items, start=a.start)
    write_events_table(events, cfg, clicks_per_day=a.clicks_per_day, days=a.window_days + a.days)
    first = dt.date.fromisoformat(a.start) + dt.timedelta(days=a.window_days)
    spark = get_spark("srgnn-nights", master="local[2]", shuffle_partitions=4)
    rows = []
    for n in range(a.days):
        night = str(first + dt.timedelta(days=n))
        ncfg = NightlyConfig.from_args(["--config", a.config, "--input", str(events), "--format", "events",
                                        "--input-format", "parquet", "--date-col", "event_date",
                                        "--window-days", str(a.window_days), "--output", str(out / "tables"),
                                        "--run-date", night, "--warm-epochs", str(a.warm_epochs),
                                        "--warm-start" if a.warm_start else "--no-warm-start"])
        t0 = time.time()
        result = run_nightly(ncfg, spark=spark)
        total = time.time() - t0
        sel = result["results"]["select"]
        stats1 = result["results"]["build_sessions"]
        row = {"night": night, "published": sel["published"], "mrr20": sel["value"],
               "train_s": result["summary"]["timings_s"]["train"], "total_s": round(total, 1),
               # the window's clicks: the stream's later days are read too, and quarantined as future
               "clicks": stats1["rows_read"] - stats1["quarantined_by_reason"].get("future_timestamp", 0),
               "items": stats1["n_items"], "alert": sel["alert"] or "-"}
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if k == "mrr20" else f"{k}={v}" for k, v in row.items()), flush=True)
    published = [r["published"] for r in rows]
    print(f"nights={len(rows)} srgnn_published={published.count('srgnn')} "
          f"mean_total_s={sum(r['total_s'] for r in rows) / len(rows):.1f} "
          f"mean_train_s={sum(r['train_s'] for r in rows) / len(rows):.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
