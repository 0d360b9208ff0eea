#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default:
# advise -> train -> eval on the shipped Marathi sample with the built-in SmolLM2-135M, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 -m babeltune.cli demo "$@"
