"""Benchmark stages 1 + 2 on synthetic Yoochoose-format click logs: wall time and peak memory.

    .venv/bin/python bench/bench_stage2.py --clicks 1000000 10000000

For each size: writes the click log with bench/synth.py (once; kept under --workdir), runs
``jobs/build_sessions.py`` then ``jobs/build_graph.py`` as separate processes with local[2] Spark
(the JVM included), and reports per stage: wall seconds, peak resident memory of the whole process
tree (Python + JVM + Python workers, sampled every 0.2 s), its CPU seconds (user + system: less
sensitive to a loaded machine than wall time), and for stage 2 the examples written and
examples/s. Prints the machine (nproc, CPU model, load average) first: a loaded machine's figures
are not comparable with an idle one's.

The stage-2 output stays in ``--workdir/out_<clicks>`` (run date 2024-01-01) for
bench/read_throughput.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN_DATE = "2024-01-01"


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()
    return (f"nproc={os.cpu_count()} cpu='{model}' mem={mem:.0f}GiB "
            f"loadavg={load[0]:.1f},{load[1]:.1f},{load[2]:.1f}")


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS GiB of its process tree, CPU seconds of the tree
    (user + system, summed over the processes seen; less sensitive to a loaded machine), stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    peak = 0
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        cpu[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"{cmd[1]} failed with status {proc.returncode}")
    return wall, peak / 2**30, sum(cpu.values()), out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "_data" / "stage2"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--graph-args", default="", help="extra flags for jobs/build_graph.py")
    args = ap.parse_args(argv)

    print(f"machine: {machine()}", flush=True)
    env = {**os.environ, "SRGNN_SPARK_MASTER": args.master, "SRGNN_DRIVER_MEMORY": args.driver_memory,
           "SRGNN_LOG_LEVEL": "WARNING", "PYSPARK_PYTHON": sys.executable}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for clicks in args.clicks:
        log = work / f"yc_{clicks}.dat"
        if not log.exists():
            subprocess.run([sys.executable, "bench/synth.py", "--clicks", str(clicks), "--format", "yoochoose",
                            "--out", str(log), "--seed", str(args.seed)], check=True, cwd=ROOT)
        out = work / f"out_{clicks}"
        s1_wall, s1_peak, s1_cpu, s1_out = run_measured(
            [sys.executable, "jobs/build_sessions.py", "--input", str(log), "--format", "yoochoose",
             "--output", str(out), "--run-date", RUN_DATE], env)
        stats = json.loads(s1_out[s1_out.index("{"):])
        s2_wall, s2_peak, s2_cpu, s2_out = run_measured(
            [sys.executable, "jobs/build_graph.py", "--output", str(out), "--run-date", RUN_DATE,
             "--shuffle-partitions", str(args.shuffle_partitions), *args.graph_args.split()], env)
        manifest = json.loads(s2_out[s2_out.index("{"):])
        examples = sum(v["examples"] for v in manifest["splits"].values())
        row = {"clicks": clicks, "stage1_s": round(s1_wall, 1), "stage1_cpu_s": round(s1_cpu, 1),
               "stage1_peak_gib": round(s1_peak, 2), "stage2_s": round(s2_wall, 1), "stage2_cpu_s": round(s2_cpu, 1),
               "stage2_peak_gib": round(s2_peak, 2),
               "train_examples": manifest["splits"]["train"]["examples"], "all_examples": examples,
               "stage2_examples_per_s": round(examples / s2_wall), "train_row_groups":
               manifest["splits"]["train"]["row_groups"], "stage1_train_pairs": stats.get("train_pairs")}
        results.append(row)
        print(json.dumps(row), flush=True)
        print(f"  shards: {out}/shards/run_date={RUN_DATE}  (read: .venv/bin/python bench/read_throughput.py "
              f"--output {out} --run-date {RUN_DATE})", flush=True)
    print(f"machine: {machine()}  (load average again, after the runs)")
    print("| clicks | stage 1 s (CPU s) | stage 1 peak GiB | stage 2 s (CPU s) | stage 2 peak GiB | examples (train) "
          "| stage 2 examples/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['clicks']:,} | {r['stage1_s']} ({r['stage1_cpu_s']}) | {r['stage1_peak_gib']} | {r['stage2_s']} "
              f"({r['stage2_cpu_s']}) | {r['stage2_peak_gib']} "
              f"| {r['all_examples']:,} ({r['train_examples']:,}) | {r['stage2_examples_per_s']:,} |")
    return results


if __name__ == "__main__":
    main()
