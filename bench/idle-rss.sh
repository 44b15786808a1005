#!/usr/bin/env bash
# RSS per idle WebSocket connection: starts a release herald, holds idle
# connections in steps with herald-load, prints JSON lines and a summary.
#   bench/idle-rss.sh [PATH] [STEPS] [THREADS] [ws|wss]
#   e.g.  bench/idle-rss.sh /echo 0,2500,5000,7500,10000 2
#         bench/idle-rss.sh /echo 0,2500,5000,7500,10000 2 wss   # over TLS
# With wss, herald serves a throwaway certificate (target/bench/idle-tls/,
# made with openssl) on its TLS listener, and herald-load trusts it.
set -euo pipefail
cd "$(dirname "$0")/.."
path="${1:-/echo}"
steps="${2:-0,2500,5000,7500,10000}"
threads="${3:-2}"
scheme="${4:-ws}"
cargo build --release --quiet -p herald -p herald-bench
tls_args=()
if [ "$scheme" = wss ]; then
  dir=target/bench/idle-tls
  mkdir -p "$dir"
  # A CA, and a certificate it signs for localhost and 127.0.0.1.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=herald bench CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$dir/key.pem" -out "$dir/request.pem" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/request.pem" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/cert.pem" 2>/dev/null
  tls_args=(--listen-tls 127.0.0.1:0 --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
fi
out="$(mktemp)"
./target/release/herald serve --dev --listen 127.0.0.1:0 --threads "$threads" "${tls_args[@]}" >"$out" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.05; done
addr="$(sed -n 's/^herald listening on //p' "$out")"
[ -n "$addr" ] || { echo "herald did not start" >&2; exit 1; }
if [ "$scheme" = wss ]; then
  for _ in $(seq 100); do grep -q 'listening for TLS on' "$out" && break; sleep 0.05; done
  tls_addr="$(sed -n 's/^herald listening for TLS on //p' "$out")"
  exec_args=(--ca "$dir/ca.pem" idle --url "wss://$tls_addr$path")
else
  exec_args=(idle --url "ws://$addr$path")
fi
./target/release/herald-load "${exec_args[@]}" --pid "$pid" --steps "$steps"
