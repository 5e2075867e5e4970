#!/usr/bin/env bash
# Requests per second under wrk, with and without LockLayer, on distinct keys (a fresh order id
# per request, see pay.lua), in memory and against a private redis-server:
#
#   1. the axum_orders example (its payment handler sleeps 500 ms, so the rate is bounded by
#      connections / 0.5 s whatever the lock costs), with the layer and with RELOCK_LAYER=off;
#   2. relock-benches --serve: the same route with a trivial handler, without the layer and
#      with it, which shows what the layer itself costs.
#
#   benches/wrk/run.sh                 # -t2 -c32 -d10s
#   WRK_ARGS="-t2 -c64 -d5s" benches/wrk/run.sh
#
# Needs wrk (apt-get install wrk) and redis-server on PATH. Every process it starts is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
WRK_ARGS=${WRK_ARGS:-"-t2 -c32 -d10s"}
SCRIPT=benches/wrk/pay.lua
TARGET=${CARGO_TARGET_DIR:-target}

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p relock-examples --example axum_orders
cargo build --release -q -p relock-benches

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pids=()
redis_dir=$(mktemp -d)
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$redis_dir"
}
trap cleanup EXIT

wait_for_port() {
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$redis_dir" --logfile redis.log &
pids+=($!)
wait_for_port "$redis_port"

measure() { # name, port, baseline requests/s ("" for a baseline); sets $rate
    local out non2xx latency ratio
    out=$(wrk $WRK_ARGS -s "$SCRIPT" "http://127.0.0.1:$2")
    rate=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    latency=$(awk '/^    Latency/ {print $2}' <<<"$out")
    ratio=$(awk -v r="$rate" -v b="${3:-$rate}" 'BEGIN {printf "%.2f×", r / b}')
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$rate" "$ratio" "$latency" "${non2xx:-0}"
}

echo "wrk $WRK_ARGS -s $SCRIPT; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| server | requests/s | ÷ without the layer | mean latency | non-2xx |"
echo "|---|---:|---:|---:|---:|"
for backend in memory redis; do
    baseline=""
    for layer in off on; do
        port=$(free_port)
        env_vars=(PORT="$port" RELOCK_LAYER="$layer")
        [[ $backend == redis ]] && env_vars+=(REDIS_URL="redis://127.0.0.1:$redis_port")
        env "${env_vars[@]}" "$TARGET/release/examples/axum_orders" >/dev/null &
        pid=$!
        pids+=($pid)
        wait_for_port "$port"
        measure "axum_orders, $backend, layer $layer" "$port" "$baseline"
        baseline=$rate
        kill "$pid"
    done
done
baseline=""
for backend in none memory redis; do
    port=$(free_port)
    "$TARGET/release/relock-benches" --serve "$backend" --port "$port" --seconds 120 >/dev/null &
    pid=$!
    pids+=($pid)
    wait_for_port "$port"
    measure "trivial handler, $([[ $backend == none ]] && echo 'no layer' || echo "LockLayer, $backend")" "$port" "$baseline"
    if [[ -z $baseline ]]; then baseline=$rate; fi
    kill -INT "$pid"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
