#!/usr/bin/env bash
# GPU check of the LLM track: about 5 minutes on one CUDA GPU, no network.
#
#   benchmarks/gpu_check.sh                  # on the GPU machine, from the repository root
#   benchmarks/gpu_check.sh --device cpu --tiny   # dry run of the same code on CPU at toy size
#
# Uses the machine's own python and PyTorch (PYTHON=... to choose). Packages it lacks
# (transformers, accelerate, tokenizers, trl, datasets, ...) are installed from wheels brought
# along in ./wheels (pip download them elsewhere: see docs/llm.md), never from the network; the
# project itself goes on the path without touching its dependencies (pip --no-deps).
# What it runs and prints: benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --find-links wheels \
        transformers accelerate tokenizers trl datasets pandas matplotlib tqdm \
        2>&1 | grep -v "already satisfied" || true
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 330 "$PY" benchmarks/gpu_check.py "$@"
