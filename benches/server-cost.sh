#!/usr/bin/env bash
# Server time per script call while relock-benches runs a scenario: samples INFO commandstats of
# the benchmark's own redis-server every 0.3 s and prints, for each interval of the permit
# rounds with more than 500 script calls, the calls and the server's µs per call (usec ÷ calls
# of cmdstat_evalsha between two samples). Run from the repository root, after
# `cargo build --release -p relock-benches`:
#
#   bash benches/server-cost.sh [BINARY] [relock-benches arguments]
#
# (default: target/release/relock-benches --only handoff --quick). Used for BENCHMARKS.md,
# "Released holds: 8 kept, not 32". Needs redis-cli.
set -euo pipefail
binary=${1:-target/release/relock-benches}
shift || true
args=("$@")
if [ ${#args[@]} -eq 0 ]; then args=(--only handoff --quick); fi
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
"$binary" "${args[@]}" >"$out" 2>"$err" &
bench=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*redis-server on port \([0-9]*\).*/\1/p' "$err" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "the benchmark printed no port" >&2; exit 1; }
previous=""
while kill -0 "$bench" 2>/dev/null; do
    phase=$(tail -1 "$err" | tr -d '\0')
    sample=$(redis-cli -p "$port" info commandstats 2>/dev/null | tr -d '\r' |
        sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
    if [ -n "$sample" ] && [ -n "$previous" ] && [[ "$phase" == permit* ]]; then
        read -r calls usec <<<"$sample"
        read -r calls0 usec0 <<<"$previous"
        if [ $((calls - calls0)) -gt 500 ]; then
            echo "$phase: $((calls - calls0)) calls, $(((usec - usec0) / (calls - calls0))) µs per call"
        fi
    fi
    previous=$sample
    sleep 0.3
done
grep -E "^(relock Locker::connect|\| relock Locker::connect)" "$out" | tail -1
