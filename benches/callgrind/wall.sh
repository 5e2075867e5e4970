#!/bin/bash
# Wall-clock and server-CPU cost per acquire + release pair of drive.py's modes, on a plain
# (non-valgrind) redis-server, for throughput ratios. The machine may be shared: compare ratios
# of one run, not absolute numbers across runs.
#
#   benches/callgrind/wall.sh PAIRS DEPTH MODE...      (from the repository root)
#   e.g. benches/callgrind/wall.sh 50000 64 raw batch read-string read-hash read-hash-batch
#
# Starts a private redis-server on $PORT (default 7411), and for each MODE warms up with 2000
# pairs and drives PAIRS pairs (drive.py with TIMER=1), three times, keeping the fastest; prints
# µs per pair and each mode's ratio to the first MODE. Needs redis-server and python3.
set -euo pipefail
PAIRS=$1 DEPTH=$2
shift 2
PORT=${PORT:-7411}
redis-server --port "$PORT" --save '' --appendonly no --daemonize yes >/dev/null
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
DRIVE="$(dirname "$0")/drive.py"
for MODE in "$@"; do
    python3 "$DRIVE" "$PORT" "$MODE" 2000 "$DEPTH" "warm$MODE"
    for RUN in 1 2 3; do
        redis-cli -p "$PORT" flushall >/dev/null
        TIMER=1 python3 "$DRIVE" "$PORT" "$MODE" "$PAIRS" "$DEPTH" "run$RUN$MODE"
    done | awk -v pairs="$PAIRS" -v mode="$MODE" \
        '{wall = $6; cpu = $9} NR == 1 || wall < best {best = wall; bcpu = cpu}
         END {printf "%s %.2f %.2f\n", mode, best * 1e6 / pairs, bcpu * 1e6 / pairs}'
done | awk 'NR == 1 {w0 = $2; c0 = $3; first = $1}
    {printf "%-18s %8.2f us wall/pair (x%.2f of %s)   %8.2f us server cpu/pair (x%.2f)\n",
            $1, $2, $2 / w0, first, $3, $3 / c0}'
