#!/bin/bash
# Instructions a redis-server spends per acquire + release pair, counted with callgrind.
#
#   benches/callgrind/count.sh MODE PAIRS DEPTH      (from the repository root)
#   e.g. benches/callgrind/count.sh raw 20000 16; benches/callgrind/count.sh batch 20000 16
#
# Starts a private redis-server under callgrind, warms it up with 2000 pairs, zeroes the
# counters, drives PAIRS pairs (drive.py), dumps and divides. Needs valgrind and python3.
# KEEP=FILE in the environment keeps the callgrind output there, for callgrind_annotate FILE;
# CALLGRIND_OPTS adds options to valgrind's (e.g. --dump-instr=yes, per instruction).
set -euo pipefail
MODE=$1 PAIRS=$2 DEPTH=$3
PORT=${PORT:-7399}
OUT=$(mktemp -d)
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" ${CALLGRIND_OPTS:-} \
    redis-server --port "$PORT" --save '' --appendonly no >"$OUT/log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
DRIVE="$(dirname "$0")/drive.py"
python3 "$DRIVE" "$PORT" "$MODE" 2000 "$DEPTH" warm
callgrind_control -z "$SERVER" >/dev/null 2>&1
python3 "$DRIVE" "$PORT" "$MODE" "$PAIRS" "$DEPTH" run
callgrind_control -d "$SERVER" >/dev/null 2>&1
redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
wait "$SERVER" || true
if [ -n "${KEEP:-}" ]; then
    # The dump with the most instructions is the run's (the others: start-up, shutdown).
    cp "$(grep -H -E '^(summary|totals):' "$OUT"/cg.* | sort -t' ' -k2 -n | tail -1 | cut -d: -f1)" "$KEEP"
fi
TOTAL=$(cat "$OUT"/cg.* | awk '/^(summary|totals):/ {print $2}' | sort -n | tail -1)
echo "$MODE, depth $DEPTH: $((TOTAL / PAIRS)) instructions per pair"
