"""Deterministic synthetic click logs with a realistic shape (the generator the whole project uses).

Shape:
- item popularity follows a Zipf law (exponent ``zipf_a``) over ``n_items`` items;
- Markov-like transitions: every item has ``n_successors`` preferred next items (drawn once from
  the popularity law); a click follows one of its predecessor's successors with probability
  ``p_follow`` (weights 1/2, 1/4, ...), repeats the previous item with ``p_repeat``, otherwise
  draws a fresh item by popularity - so next-item prediction has something to learn;
- skewed session lengths: ceil(lognormal(mu, sigma)), capped at ``max_len`` (some length-1
  sessions, a long tail);
- session starts spread uniformly over ``n_days`` days from ``start``; clicks in a session are
  1 s + Exp(``mean_gap_s``) apart.

Everything comes from one ``numpy.random.default_rng(seed)``: the same arguments give the same
bytes. Writing is vectorised with pyarrow (10M clicks in seconds, not minutes).

Formats:
- ``yoochoose``: ``session_id,timestamp,item_id,category`` with no header, ISO-8601 UTC
  timestamps with milliseconds and ``Z`` (the RecSys'15 ``yoochoose-clicks.dat`` layout), rows
  grouped by session in session-start order;
- ``events``: CSV with header ``user_id,timestamp,item_id,event_type`` sorted by time; sessions
  belong to users (Zipf-distributed activity), event types view/cart/purchase.

Command line::

    python bench/synth.py --clicks 1000000 --format yoochoose --out bench/_data/yc_1m.dat --seed 0

Library::

    from bench.synth import SynthConfig, generate_clicks, write_click_log
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ("yoochoose", "events")
EVENT_TYPES = ("view", "cart", "purchase")
EVENT_TYPE_P = (0.80, 0.15, 0.05)
_CHUNK = 1_000_000


@dataclass(frozen=True)
class SynthConfig:
    n_clicks: int = 100_000
    seed: int = 0
    n_items: int | None = None       # default: clicks / 25, clipped to [500, 100_000]
    zipf_a: float = 1.1              # popularity exponent
    n_successors: int = 4            # preferred next items per item
    p_follow: float = 0.6            # probability a click follows a preferred successor
    p_repeat: float = 0.05           # probability a click repeats the previous item
    len_mu: float = 1.0              # session length = ceil(lognormal(len_mu, len_sigma))
    len_sigma: float = 0.7
    max_len: int = 200
    n_days: int = 30
    start: str = "2014-04-01"        # first day (UTC)
    mean_gap_s: float = 45.0         # mean seconds between clicks in a session
    sessions_per_user: float = 3.0   # events format: mean sessions per user

    def items(self) -> int:
        if self.n_items is not None:
            return int(self.n_items)
        return int(min(100_000, max(500, self.n_clicks // 25)))


def _zipf_cdf(n: int, a: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Ranks 0..n-1 drawn from the distribution with this CDF (inverse-CDF sampling)."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _session_lengths(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Skewed lengths whose sum is exactly n_clicks (the last session is cut to fit)."""
    mean = float(np.exp(cfg.len_mu + cfg.len_sigma ** 2 / 2)) + 0.5
    parts, total = [], 0
    while total < cfg.n_clicks:
        k = int((cfg.n_clicks - total) / mean * 1.1) + 16
        lens = np.ceil(rng.lognormal(cfg.len_mu, cfg.len_sigma, size=k)).astype(np.int64)
        lens = np.clip(lens, 1, cfg.max_len)
        parts.append(lens)
        total += int(lens.sum())
    lens = np.concatenate(parts)
    ends = np.cumsum(lens)
    n_sess = int(np.searchsorted(ends, cfg.n_clicks, side="left")) + 1
    lens = lens[:n_sess].copy()
    lens[-1] -= int(ends[n_sess - 1]) - cfg.n_clicks
    return lens


def _session_items(rng: np.random.Generator, lens: np.ndarray, cdf: np.ndarray, successors: np.ndarray,
                   succ_cdf: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Item ranks of every click of sessions with lengths ``lens``: fresh draws from ``cdf``,
    preferred successors, repeats."""
    n_sess, n = len(lens), int(lens.sum())
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(n, dtype=np.int64) - np.repeat(first, lens)   # position within the session
    # one position at a time over all sessions at once (the previous click is at index - 1).
    ranks = np.empty(n, dtype=np.int64)
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(int(pos.max()) + 2))
    for t in range(int(pos.max()) + 1):
        idx = order[bounds[t]:bounds[t + 1]]
        fresh = _draw(rng, cdf, len(idx))
        if t == 0:
            ranks[idx] = fresh
            continue
        prev = ranks[idx - 1]
        u = rng.random(len(idx))
        choice = np.minimum(np.searchsorted(succ_cdf, rng.random(len(idx)), side="right"),
                            cfg.n_successors - 1)
        follow = successors[prev, choice]
        ranks[idx] = np.where(u < cfg.p_repeat, prev,
                              np.where(u < cfg.p_repeat + cfg.p_follow, follow, fresh))

    return ranks


def generate_clicks(cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Click arrays (grouped by session, sessions in start-time order, clicks in time order):

    ``session_id`` int64 (1..S), ``user_id`` int64, ``timestamp_ms`` int64 (Unix ms, UTC),
    ``item_id`` int64 (original-looking ids), ``item_rank`` int64 (0 = most popular),
    ``event_type`` int8 (index into EVENT_TYPES).
    """
    if cfg.n_clicks < 1:
        raise ValueError("n_clicks must be >= 1")
    rng = np.random.default_rng(cfg.seed)
    n_items = cfg.items()
    cdf = _zipf_cdf(n_items, cfg.zipf_a)
    successors = _draw(rng, cdf, n_items * cfg.n_successors).reshape(n_items, cfg.n_successors)
    succ_w = 0.5 ** np.arange(1, cfg.n_successors + 1)
    succ_cdf = np.cumsum(succ_w) / succ_w.sum()
    # Original-looking item ids, unrelated to popularity rank.
    item_ids = 214_000_000 + rng.permutation(n_items).astype(np.int64) * 7

    lens = _session_lengths(rng, cfg)
    n_sess, n = len(lens), int(lens.sum())
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])           # index of each session's 1st click
    sess_of_click = np.repeat(np.arange(n_sess), lens)
    ranks = _session_items(rng, lens, cdf, successors, succ_cdf, cfg)

    # Times: session starts uniform over the days (sorted: session ids follow start time).
    t0_ms = int(np.datetime64(cfg.start, "ms").astype(np.int64))
    starts = np.sort(rng.integers(0, cfg.n_days * 86_400_000, size=n_sess)) + t0_ms
    gaps = (1000 + rng.exponential(cfg.mean_gap_s * 1000, size=n)).astype(np.int64)
    gaps[first] = 0
    csum = np.cumsum(gaps)
    ts = starts[sess_of_click] + csum - csum[first][sess_of_click]

    n_users = max(1, int(n_sess / cfg.sessions_per_user))
    user_of_session = 1 + _draw(rng, _zipf_cdf(n_users, 0.8), n_sess)
    ev_cdf = np.cumsum(EVENT_TYPE_P)
    ev = np.minimum(np.searchsorted(ev_cdf, rng.random(n), side="right"), len(EVENT_TYPES) - 1)
    return {
        "session_id": (sess_of_click + 1).astype(np.int64),
        "user_id": user_of_session[sess_of_click].astype(np.int64),
        "timestamp_ms": ts.astype(np.int64),
        "item_id": item_ids[ranks],
        "item_rank": ranks,
        "event_type": ev.astype(np.int8),
    }


_SOD = None  # "HH:MM:SS" for every second of a day, and ".mmm" for every millisecond


def _iso(ts_ms: np.ndarray):
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` strings (UTC) by table look-ups (strftime is ~20x slower)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    global _SOD
    if _SOD is None:
        sec = np.arange(86_400)
        hms = [f"{h:02d}:{m:02d}:{s:02d}" for h, m, s in zip(sec // 3600, sec // 60 % 60, sec % 60)]
        _SOD = (pa.array(hms), pa.array([f".{i:03d}" for i in range(1000)]))
    sod, frac = _SOD
    day = ts_ms // 86_400_000
    d0 = int(day.min())
    days = pa.array(np.datetime_as_string(np.arange(d0, int(day.max()) + 1).astype("datetime64[D]")))
    ms = ts_ms - day * 86_400_000
    return pc.binary_join_element_wise(days.take(pa.array(day - d0)), "T", sod.take(pa.array(ms // 1000)),
                                       frac.take(pa.array(ms % 1000)), "Z", "")


def _write_lines(fh, columns: list, sep: str = ",") -> None:
    """Write rows ``col0,col1,...\\n`` from pyarrow string arrays with one buffer copy."""
    import pyarrow.compute as pc

    joined = pc.binary_join_element_wise(*columns, sep)
    lines = pc.binary_join_element_wise(joined, "\n", "")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    data = lines.buffers()[2]
    fh.write(memoryview(data)[int(offsets[0]):int(offsets[-1])])


def write_click_log(path: str | os.PathLike, fmt: str, cfg: SynthConfig) -> dict:
    """Generate clicks for ``cfg`` and write them in ``fmt``; returns a small summary dict."""
    import pyarrow as pa

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    clicks = generate_clicks(cfg)
    n = len(clicks["session_id"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ev_names = pa.array(EVENT_TYPES)
    order = np.argsort(clicks["timestamp_ms"], kind="stable") if fmt == "events" else None
    with open(tmp, "wb") as fh:
        if fmt == "events":
            fh.write(b"user_id,timestamp,item_id,event_type\n")
        for lo in range(0, n, _CHUNK):
            sl = slice(lo, min(n, lo + _CHUNK))
            rows = order[sl] if order is not None else sl
            ts = _iso(clicks["timestamp_ms"][rows])
            item = pa.array(clicks["item_id"][rows]).cast(pa.string())
            if fmt == "yoochoose":
                sess = pa.array(clicks["session_id"][rows]).cast(pa.string())
                cat = pa.array(np.zeros(len(ts), dtype=np.int64)).cast(pa.string())
                _write_lines(fh, [sess, ts, item, cat])
            else:
                user = pa.array(clicks["user_id"][rows]).cast(pa.string())
                ev = ev_names.take(pa.array(clicks["event_type"][rows]))
                _write_lines(fh, [user, ts, item, ev])
    os.replace(tmp, path)
    return {"path": str(path), "format": fmt, "clicks": n,
            "sessions": int(clicks["session_id"][-1]), "items": cfg.items(), "seed": cfg.seed,
            "bytes": path.stat().st_size}


# ---- a stream of nights: an events table partitioned by date, with drifting popularity -----------
def day_popularity(rng: np.random.Generator, cfg: SynthConfig, days: int, trends_per_week: float
                   ) -> np.ndarray:
    """``[days, n_items]`` CDFs: the Zipf weight of each item rank times its life cycle (items appear
    and fade: a birth day and a lifetime each, a third of the catalogue born during the stream), times
    short trends (``trends_per_week`` items a week boosted 20x for 3 days)."""
    n_items = cfg.items()
    base = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** cfg.zipf_a
    born_late = rng.random(n_items) < 1 / 3
    birth = np.where(born_late, rng.integers(0, max(days, 1), n_items), -rng.integers(0, 60, n_items))
    life = rng.integers(7, 90, n_items)
    day = np.arange(days)[:, None]
    age = day - birth[None, :]
    alive = (age >= 0) & (age < life[None, :])
    weights = base[None, :] * alive * np.exp(-np.maximum(age, 0) / life[None, :])
    n_trends = int(round(trends_per_week * days / 7))
    for item, start in zip(rng.integers(0, n_items, n_trends), rng.integers(0, max(days, 1), n_trends)):
        weights[start:start + 3, item] *= 20.0
    weights += 1e-12  # every day can draw every item, however rarely
    cdf = np.cumsum(weights, axis=1)
    return cdf / cdf[:, -1:]


def write_events_table(out: str | os.PathLike, cfg: SynthConfig, clicks_per_day: int, days: int,
                       trends_per_week: float = 3.0) -> dict:
    """An events table ``out/event_date=YYYY-MM-DD/part-0.parquet`` (columns ``user_id`` string,
    ``timestamp`` timestamp UTC, ``item_id`` string, ``event_type`` string) for ``days`` days from
    ``cfg.start``, ``clicks_per_day`` clicks a day drawn from that day's popularity (see
    :func:`day_popularity`); transitions between items stay fixed, so there is something to learn."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(cfg.seed)
    n_items = cfg.items()
    cdfs = day_popularity(rng, cfg, days, trends_per_week)
    successors = _draw(rng, _zipf_cdf(n_items, cfg.zipf_a), n_items * cfg.n_successors).reshape(n_items, -1)
    succ_w = 0.5 ** np.arange(1, cfg.n_successors + 1)
    succ_cdf = np.cumsum(succ_w) / succ_w.sum()
    item_ids = 214_000_000 + rng.permutation(n_items).astype(np.int64) * 7
    t0_ms = int(np.datetime64(cfg.start, "ms").astype(np.int64))
    out = Path(out)
    total, next_user = 0, 1
    for d in range(days):
        day_cfg = dataclasses.replace(cfg, n_clicks=clicks_per_day, n_days=1)
        lens = _session_lengths(rng, day_cfg)
        ranks = _session_items(rng, lens, cdfs[d], successors, succ_cdf, day_cfg)
        n_sess, n = len(lens), int(lens.sum())
        first = np.concatenate([[0], np.cumsum(lens)[:-1]])
        sess = np.repeat(np.arange(n_sess), lens)
        starts = np.sort(rng.integers(0, 86_400_000 - 3_600_000, size=n_sess)) + t0_ms + d * 86_400_000
        gaps = (1000 + rng.exponential(cfg.mean_gap_s * 1000, size=n)).astype(np.int64)
        gaps[first] = 0
        csum = np.cumsum(gaps)
        ts = np.minimum(starts[sess] + csum - csum[first][sess], t0_ms + (d + 1) * 86_400_000 - 1)
        users = next_user + np.arange(n_sess)  # one user a session: gaps never join two days' sessions
        next_user += n_sess
        ev = np.minimum(np.searchsorted(np.cumsum(EVENT_TYPE_P), rng.random(n), side="right"), 2)
        table = pa.table({"user_id": pa.array(users[sess]).cast(pa.string()),
                          "timestamp": pa.array(ts.astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
                          "item_id": pa.array(item_ids[ranks]).cast(pa.string()),
                          "event_type": pa.array(EVENT_TYPES).take(pa.array(ev))})
        date = str(np.datetime64(cfg.start, "D") + d)
        folder = out / f"event_date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet.tmp")
        os.replace(folder / "part-0.parquet.tmp", folder / "part-0.parquet")
        total += n
    return {"path": str(out), "format": "events-table", "days": days, "clicks": total,
            "items": n_items, "seed": cfg.seed}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Write a deterministic synthetic click log.")
    p.add_argument("--clicks", type=int, required=True,
                   help="number of clicks (rows) to write; clicks per day with --format events-table")
    p.add_argument("--format", choices=FORMATS + ("events-table",), default="yoochoose",
                   help="events-table: a folder of Parquet partitioned by event_date, drifting popularity")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", type=int, default=None, help="catalogue size (default clicks/25)")
    p.add_argument("--days", type=int, default=SynthConfig.n_days, help="days the sessions span")
    p.add_argument("--start", default=SynthConfig.start, help="first day, YYYY-MM-DD (UTC)")
    a = p.parse_args(argv)
    cfg = dataclasses.replace(SynthConfig(), n_clicks=a.clicks, seed=a.seed, n_items=a.items,
                              n_days=a.days, start=a.start)
    t = time.perf_counter()
    if a.format == "events-table":
        summary = write_events_table(a.out, cfg, clicks_per_day=a.clicks, days=a.days)
    else:
        summary = write_click_log(a.out, a.format, cfg)
    summary["seconds"] = round(time.perf_counter() - t, 2)
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
