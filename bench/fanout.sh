#!/usr/bin/env bash
# Server CPU per delivery: one channel, SUBSCRIBERS subscribers, a publisher at
# RATE publications per second through the server API, PAYLOAD-byte data.
# herald runs with THREADS shards pinned to CPU 0, the load generator on CPU 1.
#   bench/fanout.sh [SUBSCRIBERS] [RATE] [PAYLOAD] [SECONDS] [THREADS]
# With DEPTH=N the publisher runs closed loop instead (RATE ignored): N
# requests in flight on one keep-alive connection, publishes per second and
# server CPU per publish reported.
set -euo pipefail
cd "$(dirname "$0")/.."
subscribers="${1:-10000}"
rate="${2:-50}"
payload="${3:-32}"
seconds="${4:-10}"
threads="${5:-1}"
cargo build --release --quiet -p herald -p herald-bench
out="$(mktemp)"
key="bench-api-key-0123456789"
pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi
"${pin_server[@]}" ./target/release/herald serve --dev --listen 127.0.0.1:0 --threads "$threads" \
  --api-key "$key" --max-connections 100000 >"$out" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.05; done
addr="$(sed -n 's/^herald listening on //p' "$out")"
[ -n "$addr" ] || { echo "herald did not start" >&2; exit 1; }
[ -n "${PERF_OUT:-}" ] && { perf record -F 999 -g -p "$pid" -o "$PERF_OUT" -- sleep "${PERF_SECONDS:-6}" >/dev/null 2>&1 & }
"${pin_load[@]}" ./target/release/herald-load fanout --url "ws://$addr/ws" --api-key "$key" --pid "$pid" \
  --subscribers "$subscribers" --rate "$rate" --payload "$payload" --seconds "$seconds" ${DEPTH:+--depth "$DEPTH"}
