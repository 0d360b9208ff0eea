#!/usr/bin/env bash
# Run several bench processes side by side on one GPU and wait for all of them.
#   bash bench/parallel.sh OUT_DIR NAME "ARGS..." "ARGS..." ...
# Each ARGS string is passed to `python3 bench/NAME.py` (word-split) plus `--out OUT_DIR/NAME_<i>.json`;
# its log goes to OUT_DIR/NAME_<i>.log. Why: on 135M-270M models at the short steps that small corpora get, one
# process keeps the GPU busy ~25% of the time (launch-bound: bench/results/small_shapes.json), so independent
# cells run side by side finish sooner. Wall times measured this way include the other processes' share of the
# GPU; results record `concurrent_processes` so nobody reads them as single-run speeds.
set -u
out=$1; name=$2; shift 2
mkdir -p "$out"
i=0
for args in "$@"; do
  i=$((i + 1))
  BENCH_CONCURRENT_PROCESSES=$# python3 "bench/$name.py" $args --out "$out/${name}_$i.json" > "$out/${name}_$i.log" 2>&1 &
done
wait
for f in "$out/${name}"_*.log; do echo "== $f"; tail -4 "$f"; done
