# Source this on the GPU machine (the `device` tool's call runs in the checkout root) to get babeltune's
# environment there: the machine has torch/transformers/peft but lacks pydantic, langcodes, gguf, liger, unsloth
# (see ../shared/gpu/README.md) and has no network.
#
# Once per warm machine, the payload (built here by `bench/gpu_payload.sh`) arrives in 58 MB parts, one call each:
#   mkdir -p /tmp/x && cp .xfer/pN/* /tmp/x/          (carry [".xfer/pN"])
# then every call:  source bench/gpu_env.sh           (carry [".btwhl"] and whatever the bench needs)
# It joins and checks the parts, unpacks Unsloth + the wheels into /tmp/site, installs this checkout's babeltune
# wheel (.btwhl/, built by gpu_payload.sh) into /tmp/bt, and converts the two built-in GGUF models once into
# $BABELTUNE_CACHE, so `--model smollm2-135m` / `gemma-3-270m` resolve as on a set-up machine, and into
# /tmp/models/<name> (the `--models-dir` of the bench scripts).
set -e
export BABELTUNE_CACHE=/tmp/btcache HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if [ ! -f /tmp/payload/.done ]; then
  cat /tmp/x/payload.part.* > /tmp/payload.tar
  echo "$(cat bench/gpu_payload.sha256)  /tmp/payload.tar" | sha256sum -c -
  mkdir -p /tmp/payload && tar xf /tmp/payload.tar -C /tmp/payload && rm -f /tmp/payload.tar
  tar xzf /tmp/payload/unsloth-site.tgz -C /tmp
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/payload/whl/*.whl
  touch /tmp/payload/.done
fi
rm -rf /tmp/bt && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bt .btwhl/babeltune-*.whl
export PYTHONPATH=/tmp/bt:/tmp/site
for pair in smollm2-135m:smollm2 gemma-3-270m:gemma; do
  name=${pair%%:*}; file=/tmp/payload/${pair##*:}.gguf
  if [ ! -e /tmp/models/$name ]; then
    python3 -m babeltune.cli models pull "$file" --dir "$BABELTUNE_CACHE/models/$name-fp32" >/dev/null
    mkdir -p /tmp/models && ln -s "$BABELTUNE_CACHE/models/$name-fp32" /tmp/models/$name
  fi
done
set +e
