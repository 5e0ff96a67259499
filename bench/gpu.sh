#!/usr/bin/env bash
# Stage 3 on one GPU: first the issue's bench/train_throughput.py with the whole step as one CUDA
# graph (--cuda-graphs, bf16; 100,000 pairs), then bench_train_ddp.py's gpu mode: pairs/s and epoch
# time for every variant, CUDA graphs vs eager, fp32 / bf16 autocast, torch.compile, and the whole
# job (Petastorm -> GPU) on a Diginetica-sized synthetic set (719,000 training pairs, 43,000 items,
# L = 50, batch 100, d = 100). Pass --budget-s S to bound the second part.
#
#   bench/gpu.sh                              # on the GPU box (CUDA)
#   bench/gpu.sh --device cpu --pairs 20000   # dry run of the same script on a CPU machine
#
# The GPU box has no network. It has python3 with torch, pyarrow, pandas, yaml, safetensors, tqdm
# but no Petastorm; Petastorm 0.12.1 needs pyarrow 14 (and so numpy 1.26). Carry those wheels
# (downloaded here with pip into .whl/, see docs/training.md) and this script installs them into
# an overlay folder put first on PYTHONPATH. Without them, or if that environment does not
# import, the step-loop figures are still measured (batches read with pyarrow) and the whole-job
# run is skipped, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
PAIRS=719000
ITEMS=43000
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --items) ITEMS="$2"; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
WHEELS="${WHEELS:-.whl}"
DATA="${DATA:-${TMPDIR:-/tmp}/srgnn-gpu-bench}"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ "$DEVICE" = cpu ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi

echo "== machine"
echo "nproc=$(nproc) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi

if ! "$PY" -c "import petastorm" >/dev/null 2>&1; then
  if ls "$WHEELS"/petastorm-*.whl >/dev/null 2>&1; then
    echo "== installing Petastorm + pyarrow 14 + numpy 1.26 from $WHEELS into an overlay (PYTHONPATH)"
    OVERLAY="${TMPDIR:-/tmp}/srgnn-gpu-overlay"
    if "$PY" -m pip install -q --no-index --no-deps --target "$OVERLAY" --find-links "$WHEELS" \
         petastorm pyarrow==14.0.2 numpy==1.26.4 dill diskcache future pyzmq \
       && PYTHONPATH="$OVERLAY" "$PY" -c "import numpy, pyarrow, pandas, torch, petastorm; from petastorm import make_batch_reader; print('overlay ok: numpy', numpy.__version__, 'pyarrow', pyarrow.__version__, 'pandas', pandas.__version__, 'torch', torch.__version__)"; then
      export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
    else
      echo "!! the carried wheels do not import here: the whole-job run will be skipped"
    fi
  else
    echo "!! no Petastorm and no wheels in $WHEELS: the whole-job run will be skipped"
  fi
fi
"$PY" -c "import torch, yaml, safetensors, tqdm, pyarrow; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "$DEVICE" = cuda ]; then
  # the issue's benchmark command first (short: 100,000 pairs; it prints the 719k-epoch equivalent)
  echo "== bench/train_throughput.py, the whole step as one CUDA graph, bf16"
  "$PY" bench/train_throughput.py --items "$ITEMS" --pairs 100000 --eval-pairs 20000 --batch-size 100 \
    --device cuda --cuda-graphs --amp bf16 || echo "!! train_throughput --cuda-graphs failed (rc=$?)"
fi
echo "== benchmark (data under $DATA)"
if [ "$DEVICE" = cpu ]; then
  # dry run: a short step loop per variant; the whole job still runs one full epoch
  EXTRA=(--step-batches 20 --hidden 32 "${EXTRA[@]}")
fi
exec "$PY" bench/bench_train_ddp.py --mode gpu --device "$DEVICE" --pairs "$PAIRS" --items "$ITEMS" \
  --data "$DATA" "${EXTRA[@]}"
