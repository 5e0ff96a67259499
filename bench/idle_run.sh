#!/usr/bin/env bash
# Run the CPU benchmarks one after another on an otherwise idle machine and keep their logs.
#
#   bash bench/idle_run.sh                 # training (1k, 40k items; default kernel and eager), scoring (100k x 40k)
#   bash bench/idle_run.sh stage1 stage2   # add stage 1 (1M + 10M clicks) and stages 1+2 (10M)
#
# Each command runs under /usr/bin/time -v and under the shared lock /tmp/srgnn-bench.lock (so two
# benchmark runs never overlap), with the 1-minute load average printed before and after. Logs go
# to bench/_out/idle_<name>.log (git-ignored); the summary lines are printed at the end. Figures
# taken while the load average before a run is above ~1 are not idle-machine figures.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/_out
mkdir -p "$OUT"

run() {
  local name="$1"; shift
  local log="$OUT/idle_$name.log"
  echo "== $name: $* (load before: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%H:%M:%S) UTC)"
  flock /tmp/srgnn-bench.lock /usr/bin/time -v "$@" >"$log" 2>&1
  echo "   rc=$? load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -E "train_pairs_per_s=|sessions_per_s=|ceiling|products alone|scorer alone|^run [0-9]|Elapsed \(wall|Maximum resident" "$log" | sed 's/^/   /'
}

run train_1k $PY bench/train_throughput.py --items 1000 --pairs 50000 --batch-size 100 --device cpu --threads 2 --products-floor
run train_1k_eager $PY bench/train_throughput.py --items 1000 --pairs 50000 --batch-size 100 --device cpu --threads 2 --products-floor --kernel eager
run train_40k $PY bench/train_throughput.py --items 40000 --pairs 20000 --batch-size 100 --device cpu --threads 2
run train_40k_eager $PY bench/train_throughput.py --items 40000 --pairs 20000 --batch-size 100 --device cpu --threads 2 --kernel eager
run recommend $PY bench/bench_recommend.py --sessions 100000 --items 40000
for extra in "$@"; do
  case "$extra" in
    stage1) run stage1 $PY bench/bench_stage1.py ;;
    stage2) run stage2 $PY bench/bench_stage2.py --clicks 10000000 ;;
    *) echo "unknown extra benchmark: $extra (stage1 | stage2)"; exit 2 ;;
  esac
done
