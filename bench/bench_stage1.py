"""Benchmark stage 1 (sessionize) on synthetic Yoochoose-format clicks with local Spark.

    .venv/bin/python bench/bench_stage1.py                          # 1M and 10M clicks, local[2]
    .venv/bin/python bench/bench_stage1.py --clicks 100000          # a quick check

For each size: writes ``bench/_data/yc_<n>.dat`` with bench/synth.py if absent (seed 0), then runs
``jobs/build_sessions.py`` as its own process (``--master``, default local[2]; a fresh JVM per size,
as a real run) and samples the RSS of the whole process tree (Python driver + JVM + Python
workers) every 0.2 s. Prints the machine (nproc, CPU model, load average), then per size:
wall time of the job process (JVM start included), the stage's own time (from its stats),
clicks/s on both, peak RSS, CPU seconds of the process tree (less sensitive to a shared machine
than wall time), and the stage's per-step wall and driver-JVM CPU seconds; last, the ratio of clicks/s at the
largest size to the smallest (target: within 20%), and the target 10M < 120 s.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from bench.synth import SynthConfig, write_click_log  # noqa: E402


def label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else (f"{n // 1000}k" if n % 1000 == 0 else str(n))


def ensure_data(n: int, data_dir: Path, seed: int) -> Path:
    path = data_dir / f"yc_{label(n)}_s{seed}.dat"
    if not path.exists():
        t = time.perf_counter()
        info = write_click_log(path, "yoochoose", dataclasses.replace(SynthConfig(), n_clicks=n, seed=seed))
        print(f"generated {path} ({info['clicks']} clicks, {info['sessions']} sessions, "
              f"{info['items']} items) in {time.perf_counter() - t:.1f} s", flush=True)
    return path


class PeakRSS:
    """Peak total RSS of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self.cpu: dict[int, float] = {}   # latest user+system CPU seconds per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_stage1(path: Path, out: Path, master: str, driver_memory: str, shuffle_partitions: int | None) -> dict:
    env = dict(os.environ, SRGNN_SPARK_MASTER=master, SRGNN_DRIVER_MEMORY=driver_memory,
               SRGNN_LOG_LEVEL="WARNING")
    cmd = [sys.executable, str(ROOT / "jobs" / "build_sessions.py"), "--input", str(path),
           "--format", "yoochoose", "--output", str(out), "--run-date", "2014-05-01"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRSS(proc.pid) as mem:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"stage 1 failed on {path} (exit {proc.returncode}):\n{stderr[-3000:]}")
    stats = json.loads(stdout)
    return {"wall_s": wall, "peak_rss_gib": mem.peak / 2 ** 30, "cpu_s": sum(mem.cpu.values()), "stats": stats}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clicks", default="1000000,10000000", help="comma-separated sizes")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(ROOT / "bench" / "_data"))
    p.add_argument("--out", default=str(ROOT / "bench" / "_out" / "stage1"))
    a = p.parse_args(argv)
    sizes = [int(float(x)) for x in a.clicks.split(",") if x]

    print(f"machine: nproc={os.cpu_count()} cpu={cpu_model()!r} "
          f"mem={psutil.virtual_memory().total / 2 ** 30:.1f} GiB load_avg={os.getloadavg()}", flush=True)
    print(f"spark master={a.master} driver_memory={a.driver_memory}", flush=True)
    results = {}
    for n in sizes:
        path = ensure_data(n, Path(a.data_dir), a.seed)
        r = run_stage1(path, Path(a.out) / label(n), a.master, a.driver_memory, None)
        st = r["stats"]
        stage_s = st["seconds"]
        results[n] = {"clicks_per_s_stage": n / stage_s, "clicks_per_s_wall": n / r["wall_s"]}
        print(f"clicks={n} wall_s={r['wall_s']:.1f} stage_s={stage_s:.1f} "
              f"clicks_per_s_wall={n / r['wall_s']:,.0f} clicks_per_s_stage={n / stage_s:,.0f} "
              f"peak_rss_gib={r['peak_rss_gib']:.2f} cpu_s={r['cpu_s']:.1f} "
              f"load_avg_after={os.getloadavg()[0]:.1f}", flush=True)
        print(f"  train_sessions={st['train_sessions']} test_sessions={st['test_sessions']} "
              f"n_items={st['n_items']} train_pairs={st['train_pairs']} quarantined={st['rows_quarantined']}",
              flush=True)
        print(f"  step_seconds={json.dumps(st['step_seconds'])}", flush=True)
        print(f"  step_driver_jvm_cpu_seconds={json.dumps(st['step_driver_jvm_cpu_seconds'])}", flush=True)
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        for kind in ("stage", "wall"):
            ratio = results[hi][f"clicks_per_s_{kind}"] / results[lo][f"clicks_per_s_{kind}"]
            print(f"scaling_{kind}: clicks/s at {label(hi)} / at {label(lo)} = {ratio:.2f} "
                  f"(target >= 0.80)", flush=True)


if __name__ == "__main__":
    main()
