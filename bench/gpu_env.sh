# Source this on the GPU machine (the `device` tool's call runs in the checkout root) to get babeltune's
# environment there: the machine has torch/transformers/peft but lacks pydantic, langcodes, gguf, liger, unsloth
# (see ../shared/gpu/README.md) and has no network.
#
# Once per warm machine, the payload (built here by `bench/gpu_payload.sh`) arrives in 60 MB parts, one call each:
#   mkdir -p /tmp/x && cp .xfer/a0/* /tmp/x/          (carry [".xfer/a0"]; then a1, a2 (with b4); b0..b3 for Gemma)
# then every call:  source bench/gpu_env.sh           (carry [".btwhl"] and whatever the bench needs)
# It joins and checks the parts, unpacks Unsloth + the wheels into /tmp/site, installs this checkout's babeltune
# wheel (.btwhl/, built by gpu_payload.sh) into /tmp/bt, and converts the two built-in GGUF models once into
# $BABELTUNE_CACHE, so `--model smollm2-135m` / `gemma-3-270m` resolve as on a set-up machine, and into
# /tmp/models/<name> (the `--models-dir` of the bench scripts).
set -e
export BABELTUNE_CACHE=/tmp/btcache HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/payload
for p in a b; do   # a: wheels + Unsloth + SmolLM2 (required); b: Gemma-3 (optional)
  if [ ! -f /tmp/payload/.$p.done ] && ls /tmp/x/$p.part.* >/dev/null 2>&1; then
    cat /tmp/x/$p.part.* > /tmp/$p.tar
    (cd /tmp && grep " $p.tar\$" "$OLDPWD/bench/gpu_payload.sha256" | sha256sum -c -)
    tar xf /tmp/$p.tar -C /tmp/payload && rm -f /tmp/$p.tar && touch /tmp/payload/.$p.done
  fi
done
if [ ! -d /tmp/site/unsloth ]; then
  tar xzf /tmp/payload/unsloth-site.tgz -C /tmp
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/payload/whl/*.whl
fi
rm -rf /tmp/bt && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bt .btwhl/babeltune-*.whl
export PYTHONPATH=/tmp/bt:/tmp/site
for pair in smollm2-135m:smollm2 gemma-3-270m:gemma; do
  name=${pair%%:*}; file=/tmp/payload/${pair##*:}.gguf
  if [ ! -e /tmp/models/$name ] && [ -f "$file" ]; then
    python3 -m babeltune.cli models pull "$file" --dir "$BABELTUNE_CACHE/models/$name-fp32" >/dev/null
    mkdir -p /tmp/models && ln -s "$BABELTUNE_CACHE/models/$name-fp32" /tmp/models/$name
  fi
done
set +e
