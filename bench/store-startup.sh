#!/usr/bin/env bash
# Start-up with a large durable-history store: fills a fresh data_dir with
# CHANNELS x PER_CHANNEL publications of PAYLOAD bytes (examples/fill_store.rs,
# the store's own write path), then starts herald on it RUNS times and
# reports the time to "herald listening", the store's own read-back time
# (from herald's log), the bytes on disk per stored publication, and
# herald's RSS once listening.
#   bench/store-startup.sh [CHANNELS] [PER_CHANNEL] [PAYLOAD] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
channels="${1:-1000}"
per_channel="${2:-1000}"
payload="${3:-100}"
runs="${4:-3}"
cargo build --release --quiet -p herald --bin herald --example fill_store
base="target/bench-store/startup"
rm -rf "$base" && mkdir -p "$base"
trap 'rm -rf "$base"' EXIT
printf '[namespaces.fill]\nhistory_size = %d\nhistory_ttl_secs = 86400\n' "$per_channel" >"$base/herald.toml"
./target/release/examples/fill_store "$base/data" "$channels" "$per_channel" "$payload"
stored=$((channels * per_channel))
bytes="$(du -s -B1 "$base/data" | cut -f1)"
echo "store: $stored publications, $bytes bytes on disk, $((bytes / stored)) bytes per publication ($(du -sh "$base/data" | cut -f1))"
for run in $(seq "$runs"); do
  log="$base/log"
  start="$(date +%s%N)"
  ./target/release/herald serve --dev --listen 127.0.0.1:0 --threads 2 --config "$base/herald.toml" \
    --data-dir "$base/data" >"$base/out" 2>"$log" &
  pid=$!
  until grep -q 'listening on' "$base/out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  end="$(date +%s%N)"
  rss="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
  kill -TERM "$pid"; wait "$pid" || true
  echo "run $run: listening after $(( (end - start) / 1000000 )) ms; $(grep -o '[0-9]* channels, [0-9]* publications read back in [0-9]* ms' "$log"); RSS ${rss} KiB"
done
bytes="$(du -s -B1 "$base/data" | cut -f1)"
echo "store after the runs: $bytes bytes on disk, $((bytes / stored)) bytes per publication"
