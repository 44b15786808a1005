#!/usr/bin/env bash
# herald and the tokio-tungstenite reference, side by side: builds release
# binaries, then runs herald-bench (see --help). Results in target/bench/:
# results.jsonl, table.md, one SVG chart per workload.
#   bench/run.sh                                   # everything, 3 runs each
#   bench/run.sh --workloads echo,connect --runs 5
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p herald -p herald-bench
exec ./target/release/herald-bench "$@"
