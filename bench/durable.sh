#!/usr/bin/env bash
# Durable history against history in RAM, interleaved in one run: publishes
# per second and publish latency (closed loop, no subscribers) at depth 1,
# depth 16 on one connection, and 16 publishers at depth 1 each; then the
# fan-out of 1,000 subscribers at 100 publications/s, open loop over 16
# publishing connections.
# Each through bench/fanout.sh, with DURABILITY unset (RAM only), fsync and
# page_cache.
#   bench/durable.sh [ROUNDS] [SECONDS]
# One JSON report per run and the scripts' summary lines go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
seconds="${2:-5}"
cargo build --release --quiet -p herald -p herald-bench
for round in $(seq "$rounds"); do
  for mode in ram fsync page_cache; do
    durability=""
    [ "$mode" = ram ] || durability="$mode"
    for shape in "1 1" "16 1" "1 16"; do
      read -r depth publishers <<<"$shape"
      echo "== round $round, $mode, depth $depth, $publishers publishers"
      DURABILITY="$durability" DEPTH="$depth" PUBLISHERS="$publishers" \
        bench/fanout.sh 0 1 32 "$seconds" 2>&1
    done
  done
  for mode in ram fsync page_cache; do
    durability=""
    [ "$mode" = ram ] || durability="$mode"
    echo "== round $round, $mode, fan-out 1000 x 100, 16 publishing connections"
    DURABILITY="$durability" PUBLISHERS=16 bench/fanout.sh 1000 100 32 "$seconds" 2>&1
  done
done
