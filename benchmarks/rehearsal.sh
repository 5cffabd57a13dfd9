#!/usr/bin/env bash
# Dress rehearsal at real scale (issue 9): the whole DAG through `dvc repro` on the GPUs of this host,
# with real architectures at real sizes (random weights, real tokenizers), then one more source.
#
#   bash benchmarks/rehearsal.sh [WORKSPACE] [OUT]
#
# Needs: this repository's Python dependencies (pip install -e '.[deepspeed]'), GPUs, and the
# rehearsal tokenizers in .rehearsal/tokenizers (python -m benchmarks.rehearsal_tokenizers, which
# needs the realvocab extra; the GPU machine may get them carried). Nothing is downloaded.
# LONG=1 also needs .rehearsal/long.jsonl (python -m benchmarks.rehearsal_data, realvocab extra).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WS=${1:-/tmp/fusecli-rehearsal}
OUT=${2:-$WS/rehearsal-out}
TOKENIZERS=${REHEARSAL_TOKENIZERS:-$REPO/.rehearsal/tokenizers}
PY=${PYTHON:-python3}

rm -rf "$WS" && mkdir -p "$WS/.bin" "$OUT"
# The workspace: the repository's files (no outputs, caches or environments), in a fresh git repo.
if [ -d "$REPO/.git" ]; then
  (cd "$REPO" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -C "$WS" -xf -
else  # a copy without git history (e.g. the GPU machine's): everything but what .gitignore names
  tar -C "$REPO" -cf - --exclude=./.venv --exclude=./.rehearsal --exclude=./.whl --exclude=./models \
      --exclude=./scratch --exclude='__pycache__' . | tar -C "$WS" -xf -
fi
# Commands dvc.yaml and this script call, for environments that installed nothing on PATH.
for tool in python dvc fusecli; do
  if ! command -v "$tool" >/dev/null; then
    case $tool in
      python) ln -s "$(command -v "$PY")" "$WS/.bin/python" ;;
      dvc) printf '#!/bin/sh\nexec %s -m dvc "$@"\n' "$PY" >"$WS/.bin/dvc" ;;
      fusecli) printf '#!/bin/sh\nexec %s -m fusecli.cli "$@"\n' "$PY" >"$WS/.bin/fusecli" ;;
    esac
  fi
done
chmod +x "$WS"/.bin/* 2>/dev/null || true
export PATH="$WS/.bin:$PATH" PYTHONPATH="$WS${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$WS"
git init -q && echo "/.bin/" >>.git/info/exclude
git add -A && git -c user.email=r@r -c user.name=rehearsal commit -qm "rehearsal workspace"
# SMOKE=1: tiny models on the CPU, the demo's parameters (checks the script and the product, not speed).
if [ "${SMOKE:-0}" = 1 ]; then TINY=--tiny PROFILES=benchmarks/rehearsal.smoke.yaml; else
  TINY="" PROFILES="params.gpu.yaml benchmarks/rehearsal.params.yaml"
fi
# LONG=1: dialogues of 512-2,048 tokens instead of the demo's (python -m benchmarks.rehearsal_data, here).
if [ "${LONG:-0}" = 1 ]; then
  cp "$REPO/.rehearsal/long.jsonl" rehearsal-long.jsonl
  PROFILES="$PROFILES benchmarks/rehearsal.long.yaml"
fi
if [ "${SMOKE:-0}" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
fi

step() { echo; echo "=== $* ($(date +%T))"; }
step "models: real architectures, random weights"
$PY -m benchmarks.rehearsal_models --tokenizers "$TOKENIZERS" --out models $TINY 2>&1 | tee "$OUT/models.txt"

step "pin the pivot and two sources; GPU profile"
for slug in $($PY -c "import yaml; print(' '.join(yaml.safe_load(open('models.lock'))['sources']))"); do
  fusecli remove-source "$slug"  # the demo's sources
done
fusecli set-pivot models/qwen2-tekken
fusecli add-source models/llama-spm
fusecli add-source models/mistral-gpt2
for profile in $PROFILES; do fusecli profile "$profile"; done
fusecli list
git add -A && git -c user.email=r@r -c user.name=rehearsal commit -qm "rehearsal: pinned models"

step "full run: dvc repro report"
dvc repro report 2>&1 | $PY -m benchmarks.rehearsal_report tee "$OUT/full.json" | tee "$OUT/full.log"

step "add one more source; only its stages, merge, evaluate and report may run"
fusecli add-source models/llama-tekken
dvc repro report 2>&1 | $PY -m benchmarks.rehearsal_report tee "$OUT/incremental.json" | tee "$OUT/incremental.log"

step "no-op"
dvc repro report 2>&1 | $PY -m benchmarks.rehearsal_report tee "$OUT/noop.json" >/dev/null
$PY -m benchmarks.rehearsal_report summary --workspace "$WS" --runs "$OUT/full.json" "$OUT/incremental.json" \
    "$OUT/noop.json" | tee "$OUT/summary.md"
cp eval/metrics.json "$OUT/metrics.json"
cp reports/index.md "$OUT/report.md"
