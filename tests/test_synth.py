"""bench/synth.py: deterministic, exact click counts, the documented layouts, learnable transitions."""
from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np

from bench.synth import EVENT_TYPES, SynthConfig, generate_clicks, main, write_click_log


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = SynthConfig(n_clicks=5000, seed=7)
    a = write_click_log(tmp_path / "a.dat", "yoochoose", cfg)
    write_click_log(tmp_path / "b.dat", "yoochoose", cfg)
    write_click_log(tmp_path / "c.dat", "yoochoose", dataclasses.replace(cfg, seed=8))
    assert (tmp_path / "a.dat").read_bytes() == (tmp_path / "b.dat").read_bytes()
    assert (tmp_path / "a.dat").read_bytes() != (tmp_path / "c.dat").read_bytes()
    assert a["clicks"] == 5000


def test_yoochoose_layout_and_session_shape(tmp_path):
    summary = main(["--clicks", "20000", "--format", "yoochoose", "--out", str(tmp_path / "yc.dat"),
                    "--seed", "1", "--days", "5"])
    lines = (tmp_path / "yc.dat").read_text().splitlines()
    assert len(lines) == 20000 == summary["clicks"]
    pat = re.compile(r"^\d+,\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z,\d+,0$")
    assert all(pat.match(ln) for ln in lines)
    sessions = [ln.split(",")[0] for ln in lines]
    # grouped by session (contiguous blocks, ids increasing), timestamps within the days asked
    blocks = [s for i, s in enumerate(sessions) if i == 0 or s != sessions[i - 1]]
    assert len(blocks) == len(set(blocks)) == summary["sessions"]
    assert [int(b) for b in blocks] == sorted(int(b) for b in blocks)
    days = {ln.split(",")[1][:10] for ln in lines}
    assert min(days) == "2014-04-01" and max(days) <= "2014-04-06"
    lengths = np.array(list(Counter(sessions).values()))
    assert (lengths == 1).any() and lengths.max() >= 15 and 2.5 < lengths.mean() < 6  # skewed


def test_popularity_is_zipf_like_and_transitions_are_learnable():
    c = generate_clicks(SynthConfig(n_clicks=200_000, seed=0, n_items=2000))
    counts = np.sort(np.bincount(c["item_rank"], minlength=2000))[::-1]
    assert counts[0] > 20 * counts[999]                       # heavy head, long tail
    same = c["session_id"][1:] == c["session_id"][:-1]
    prev, nxt = c["item_id"][:-1][same], c["item_id"][1:][same]
    pairs = Counter(zip(prev.tolist(), nxt.tolist()))
    top_prev = Counter(prev.tolist()).most_common(50)
    # for popular items, the most frequent successor follows far more often than popularity alone
    share = [max(n for (p, _), n in pairs.items() if p == item) / total for item, total in top_prev]
    assert np.median(share) > 0.2


def test_events_layout(tmp_path):
    write_click_log(tmp_path / "ev.csv", "events", SynthConfig(n_clicks=3000, seed=2))
    lines = (tmp_path / "ev.csv").read_text().splitlines()
    assert lines[0] == "user_id,timestamp,item_id,event_type" and len(lines) == 3001
    rows = [ln.split(",") for ln in lines[1:]]
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)          # sorted by time
    assert {r[3] for r in rows} <= set(EVENT_TYPES) and len({r[0] for r in rows}) > 10


def test_events_table_has_a_partition_per_day_and_its_popularity_drifts(tmp_path):
    import pyarrow.dataset as ds

    from bench.synth import SynthConfig, write_events_table

    cfg = SynthConfig(seed=3, n_items=300, start="2024-01-01")
    summary = write_events_table(tmp_path / "events", cfg, clicks_per_day=2_000, days=14)
    again = write_events_table(tmp_path / "events2", cfg, clicks_per_day=2_000, days=14)
    assert summary["clicks"] == again["clicks"] == 28_000
    parts = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert parts == [f"event_date=2024-01-{d:02d}" for d in range(1, 15)]
    table = ds.dataset(tmp_path / "events", partitioning="hive").to_table().to_pandas()
    assert list(table.columns[:4]) == ["user_id", "timestamp", "item_id", "event_type"]
    assert (table["timestamp"].dt.strftime("%Y-%m-%d") == table["event_date"].astype(str)).all()
    first, last = (set(table[table["event_date"].astype(str) == d]["item_id"]) for d in ("2024-01-01", "2024-01-14"))
    assert len(last - first) > 10 and len(first - last) > 10   # items appear and fade
    assert ds.dataset(tmp_path / "events2").to_table().equals(ds.dataset(tmp_path / "events").to_table())
