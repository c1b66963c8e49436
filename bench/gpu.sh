#!/usr/bin/env bash
# The engine benchmarks on a CUDA GPU, for the day one is lent: cogql's engine and vLLM side by
# side (bench/engines.py: start-up, the sentiment query warm, tokens/s at 1, 4, 16 and 64
# streams), then `cogql serve-model --engine vllm` at 16 and 64 streams against `lmql
# serve-model` (bench/serve.py; LMQL's column only where its peer venv is installed). Prints
# ratios; every step has its own time limit so that the whole script ends within 8 minutes.
#
# Usage: bash bench/gpu.sh [MODEL]     (a model folder; default: the embedded SmolLM2)
#   PY=python3   the interpreter that has cogql (and vLLM's CUDA build: pip install 'cogql[vllm]')
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
MODEL=${1:-}
model_args=()
[ -n "$MODEL" ] && model_args=(--model "$MODEL")

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: torch sees no CUDA device here; run it on a GPU machine" >&2
  exit 2
fi
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
engines=cogql
if "$PY" -c 'import vllm' 2>/dev/null; then
  engines=cogql,vllm
else
  echo "gpu.sh: vLLM is not installed ($PY -m pip install 'cogql[vllm]'): cogql's engine only"
fi

status=0
echo "== bench/engines.py (engines: $engines)"
(cd bench && timeout 300 "$PY" engines.py --device cuda --engines "$engines" \
  --streams 1,4,16,64 --repeats 3 "${model_args[@]}") || { echo "engines.py failed ($?)"; status=1; }

if [[ $engines == *vllm* ]]; then
  echo "== bench/serve.py --engine vllm at 16 and 64 streams"
  (cd bench && timeout 170 "$PY" serve.py --device cuda --engine vllm --streams 16,64 \
    --repeats 2 "${model_args[@]}") || { echo "serve.py failed ($?)"; status=1; }
fi
exit $status
