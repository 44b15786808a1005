#!/usr/bin/env bash
# Server CPU per delivery: one channel, SUBSCRIBERS subscribers, a publisher at
# RATE publications per second through the server API, PAYLOAD-byte data.
# herald runs with THREADS shards pinned to CPU 0, the load generator on CPU 1.
#   bench/fanout.sh [SUBSCRIBERS] [RATE] [PAYLOAD] [SECONDS] [THREADS]
# With DEPTH=N the publisher runs closed loop instead (RATE ignored): N
# requests in flight on one keep-alive connection, publishes per second and
# server CPU per publish reported.
# With ENGINE=redis herald runs on the Redis engine, with a redis-server of
# its own on the load generator's CPU; its CPU seconds are printed at the end.
# With PUBLISHERS=N (and DEPTH) N publishers run closed loop, each on its own
# connection. With DURABILITY=fsync or page_cache herald keeps history in a
# fresh data_dir (removed afterwards); the bytes it took on disk and the
# publications it held are printed at the end. HERALD_ARGS adds flags.
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
engine_args=()
redis_pid=""
store_dir=""
if [ -n "${DURABILITY:-}" ]; then
  mkdir -p target/bench-store
  store_dir="$(mktemp -d target/bench-store/run.XXXXXX)/data"
  engine_args+=(--data-dir "$store_dir" --durability "$DURABILITY")
fi
# shellcheck disable=SC2206
engine_args+=(${HERALD_ARGS:-})
if [ "${ENGINE:-memory}" = redis ]; then
  redis_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "${pin_load[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  redis_pid=$!
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  engine_args+=(--engine redis --redis-url "redis://127.0.0.1:$redis_port")
fi
"${pin_server[@]}" ./target/release/herald serve --dev --listen 127.0.0.1:0 --threads "$threads" \
  --api-key "$key" --max-connections 100000 "${engine_args[@]}" >"$out" 2>/dev/null &
pid=$!
trap 'kill "$pid" $redis_pid 2>/dev/null; wait "$pid" $redis_pid 2>/dev/null; rm -f "$out"; [ -n "$store_dir" ] && rm -rf "$(dirname "$store_dir")"' EXIT
redis_cpu() { [ -n "$redis_pid" ] && awk '{print ($14 + $15) / 100}' "/proc/$redis_pid/stat"; }
redis_before="$(redis_cpu || true)"
for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.05; done
addr="$(sed -n 's/^herald listening on //p' "$out")"
[ -n "$addr" ] || { echo "herald did not start" >&2; exit 1; }
[ -n "${PERF_OUT:-}" ] && { perf record -F 999 -g -p "$pid" -o "$PERF_OUT" -- sleep "${PERF_SECONDS:-6}" >/dev/null 2>&1 & }
"${pin_load[@]}" ./target/release/herald-load fanout --url "ws://$addr/ws" --api-key "$key" --pid "$pid" \
  --subscribers "$subscribers" --rate "$rate" --payload "$payload" --seconds "$seconds" ${DEPTH:+--depth "$DEPTH"} \
  ${PUBLISHERS:+--publishers "$PUBLISHERS"}
if [ -n "$store_dir" ]; then
  stored="$(curl -s "http://$addr/metrics" | sed -n 's/^herald_store_publications //p')"
  commits="$(curl -s "http://$addr/metrics" | sed -n 's/^herald_store_commits_total //p')"
  bytes="$(du -s -B1 "$store_dir" | cut -f1)"
  echo "store: $stored publications held, $commits commits, $bytes bytes on disk ($(du -sh "$store_dir" | cut -f1))" >&2
fi
if [ -n "$redis_pid" ]; then
  awk -v now="$(redis_cpu)" -v then="$redis_before" 'BEGIN { printf "redis-server CPU seconds over the whole run: %.2f\n", now - then }' >&2
fi
