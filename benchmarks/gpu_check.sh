#!/usr/bin/env bash
# bench_real_size.py on a CUDA machine within 8 minutes: the three real-size models at the GPU defaults (bf16,
# sdpa, batch 128, 30 timed steps after 10 warm-up steps, 8 DataLoader workers), then the captioner and the CLIP
# again with --torch-compile.
#
#     bash benchmarks/gpu_check.sh
#
# Results: real_size_default.json, real_size_compile.json, their logs and gpu_check.log in $OUT when it is set
# (the folder a lent device machine sends back), else in benchmarks/results/. The generated images and the image
# cache go to a temporary folder, shared by both runs and deleted at the end.
#
# Nothing is downloaded. The Python is the first that imports torch with CUDA and the packages nbutils needs:
# the repository's .venv, else the machine's python3 (the repository's nbutils comes first on PYTHONPATH either
# way). Without either and without a .venv, it tries to create .venv from requirements.lock, which needs the
# package index (and a CUDA build of torch 2.13.0 from it).
#
# For a dry run of this script on a machine without a GPU: GPU_CHECK_CPU=1 accepts a Python without CUDA, and
# GPU_CHECK_EXTRA_ARGS (e.g. "--tiny --steps 2") is added to both commands.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
RESULTS_DIR=${OUT:-benchmarks/results}
mkdir -p "$RESULTS_DIR"
exec > >(tee "$RESULTS_DIR/gpu_check.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

START_S=$SECONDS
echo "== $(date -u +%FT%TZ) gpu_check.sh in $PWD, budget ${BUDGET_S} s"
echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed or is not installed"

usable() {  # usable PYTHON: prints what it has; succeeds when torch sees a GPU and nbutils imports
  "$1" - <<'PY'
import os
import sys

import torch

cuda = torch.cuda.is_available()
print(f"  {sys.executable}: torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {cuda}")
import accelerate
import transformers

import nbutils.training.job  # pandas, tokenizers, PIL and the rest of what training imports

print(f"  transformers {transformers.__version__}, accelerate {accelerate.__version__}")
sys.exit(0 if cuda or os.environ.get("GPU_CHECK_CPU") else 1)
PY
}

echo "== choosing the Python"
PY=""
for candidate in .venv/bin/python python3; do
  if [ "$candidate" = python3 ] && ! command -v python3 >/dev/null; then continue; fi
  if [ "$candidate" != python3 ] && [ ! -x "$candidate" ]; then echo "  $candidate: absent"; continue; fi
  if usable "$candidate"; then PY=$candidate; break; fi
  echo "  $candidate: not usable (no CUDA torch, or a package nbutils needs is missing)"
done
if [ -z "$PY" ] && [ ! -e .venv ]; then
  echo "== no usable Python: creating .venv from requirements.lock (needs the package index)"
  if timeout 240 bash -c 'python3 -m venv .venv && .venv/bin/pip install -q --retries 1 --timeout 15 \
      -r requirements.lock && .venv/bin/pip install -q --no-deps -e .' && usable .venv/bin/python; then
    PY=.venv/bin/python
  fi
fi
if [ -z "$PY" ]; then
  echo "== no Python with a CUDA torch and nbutils' packages: nothing measured"
  exit 1
fi
echo "== using $PY"

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

run() {  # run NAME LIMIT_S ARGS...: one bench_real_size.py command under a time limit
  local name=$1 limit=$2
  shift 2
  if [ "$limit" -lt 60 ]; then
    echo "== $name: skipped, only ${limit} s left"
    return
  fi
  echo "== $name (limit ${limit} s): bench_real_size.py $*"
  timeout --signal=INT --kill-after=20 "$limit" "$PY" -m benchmarks.bench_real_size --work-dir "$WORK" \
    --out "$RESULTS_DIR/real_size_$name.json" "$@" ${GPU_CHECK_EXTRA_ARGS:-} 2>&1 | tee "$RESULTS_DIR/real_size_$name.log"
  echo "== $name: exit status ${PIPESTATUS[0]}, $((SECONDS - START_S)) s since the script started"
}

left() { echo $((BUDGET_S - (SECONDS - START_S))); }

# The default run gets what the compiled run does not need (compiling two models takes a few minutes).
run default $(($(left) - 220))
run compile $(($(left) - 15)) --models captioner clip --torch-compile
echo "== done in $((SECONDS - START_S)) s; files in $RESULTS_DIR:"
ls -l "$RESULTS_DIR"
