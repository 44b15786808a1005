#!/usr/bin/env bash
# Soak: herald holds READERS subscribers of one channel that read everything
# and SLOW subscribers that never read (default 17,700 + 300 = 18,000
# connections) while a publisher sends RATE publications a second for
# SECONDS. Prints herald's RSS every 10 s, then herald-load's report
# (per-second deliveries, server CPU, latency, loss) and what became of the
# slow readers (each should be closed at max_outbound_bytes).
#   bench/soak.sh [SECONDS=600] [RATE=20] [READERS=17700] [SLOW=300]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}" rate="${2:-20}" readers="${3:-17700}" slow="${4:-300}"
cargo build --release --quiet -p herald -p herald-bench
out="$(mktemp)" rss_log="$(mktemp)"
key="soak-api-key-0123456789"
./target/release/herald serve --dev --listen 127.0.0.1:0 --threads 2 --api-key "$key" \
  --max-connections 100000 --max-outbound-bytes 256KiB --max-api-body-bytes 64KiB >"$out" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$out" "$rss_log"' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.05; done
addr="$(sed -n 's/^herald listening on //p' "$out")"
[ -n "$addr" ] || { echo "herald did not start" >&2; exit 1; }
# The slow readers hold their connections until their stdin closes.
exec 3> >(python3 bench/slow_readers.py "$addr" "$slow" bench >&2)
slow_pid=$!
( while kill -0 "$pid" 2>/dev/null; do
    echo "$(date +%s) $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") kB" >>"$rss_log"; sleep 10
  done ) &
sampler=$!
./target/release/herald-load fanout --url "ws://$addr/ws" --api-key "$key" --pid "$pid" \
  --subscribers "$readers" --rate "$rate" --payload 64 --seconds "$seconds" --warmup 10
kill "$sampler" 2>/dev/null || true
exec 3>&-
wait "$slow_pid" 2>/dev/null || true
echo "herald RSS over time (unix time, kB):" >&2
cat "$rss_log" >&2
