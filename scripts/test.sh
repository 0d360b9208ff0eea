#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow real-model tests included.
# GPU tests skip themselves without CUDA. pytest exit code 5 ("no tests collected") counts as failure
# here on purpose: a suite that collects nothing has tested nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
python3 -m pytest -q -p no:cacheprovider --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
