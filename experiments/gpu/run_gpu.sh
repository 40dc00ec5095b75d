#!/usr/bin/env bash
# One command for the real-engine experiment (issue 8): build the random-weight model(s), run the sweep,
# write the report, pack the run. Works on the GPU machine (transformers + torch preinstalled) and, with
# experiments/gpu/cpu_smoke.yaml, on any CPU box that has the `transformers` extra.
#
#   bash experiments/gpu/run_gpu.sh [EXPERIMENT_YAML] [OUT_DIR]
#   defaults: experiments/gpu_h100.yaml, ${OUT:-results/gpu_h100-manual}
#
# Missing Python packages (fastapi, uvicorn, locust, ...) can be carried as wheels in .whl/ (see README.md
# beside this file); they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXP=${1:-experiments/gpu_h100.yaml}
DEST=${2:-${OUT:-results/gpu_h100-manual}}
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  export PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# every model path the experiment names under .models/llama-<shape> is built once (seeded, random weights)
for model in $(grep -oE '\.models/llama-[a-z0-9]+' "$EXP" | sort -u); do
  shape=${model#.models/llama-}
  if [ ! -f "$model/config.json" ]; then
    echo "building $model (shape $shape)"
    "$PY" -m system.engines.random_model --shape "$shape" --out "$model"
  fi
done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
mkdir -p "$DEST"
"$PY" -m system.cli experiment run "$EXP" --out "$DEST/run" --no-progress || echo "experiment exited with $?"
"$PY" -m system.cli report "$DEST/run"
tar czf "$DEST/run.tgz" -C "$DEST" run
echo "packed: $DEST/run.tgz"
