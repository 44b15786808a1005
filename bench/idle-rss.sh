#!/usr/bin/env bash
# RSS per idle WebSocket connection: starts a release herald, holds idle
# connections in steps with herald-load, prints JSON lines and a summary.
#   bench/idle-rss.sh [PATH] [STEPS] [THREADS]   e.g.  bench/idle-rss.sh /echo 0,2500,5000,7500,10000 2
set -euo pipefail
cd "$(dirname "$0")/.."
path="${1:-/echo}"
steps="${2:-0,2500,5000,7500,10000}"
threads="${3:-2}"
cargo build --release --quiet -p herald -p herald-bench
out="$(mktemp)"
./target/release/herald serve --dev --listen 127.0.0.1:0 --threads "$threads" >"$out" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.05; done
addr="$(sed -n 's/^herald listening on //p' "$out")"
[ -n "$addr" ] || { echo "herald did not start" >&2; exit 1; }
./target/release/herald-load idle --url "ws://$addr$path" --pid "$pid" --steps "$steps"
