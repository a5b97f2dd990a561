#!/usr/bin/env bash
# The vLLM check: vLLM's CPU build in its own venv (outside the repo, ~3.5 GB, installed once, ~1-4 min),
# the bundled SmolLM2 converted for it (~20-40 s, once), then tests/test_vllm_engine.py against live
# servers it starts and stops (~30-70 s each to start, ~4 GB RSS while up).
# VLLM_VENV: where the venv lives (default: the Sampling Lab cache folder). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${SAMPLING_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sampling-lab}
VLLM_VENV=${VLLM_VENV:-$CACHE/vllm-venv}
PY=${PY:-.venv/bin/python}
if ! "$VLLM_VENV/bin/python" -c "import vllm, gguf, accelerate" 2>/dev/null; then
  echo "installing vLLM's CPU build into $VLLM_VENV"
  python3 -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install -q -r requirements-vllm.txt
  "$VLLM_VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
fi
export SAMPLING_LAB_VLLM_PYTHON="$VLLM_VENV/bin/python"
export SAMPLING_LAB_REQUIRE_VLLM=1   # here a missing vLLM is a failure, not a skip
exec "$PY" -m pytest -q -s tests/test_vllm_engine.py "$@"
