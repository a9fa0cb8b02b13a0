#!/usr/bin/env bash
# A/B: two messs builds on the same machine and moment, interleaved, on the saturating
# scenarios (QoS 0 fan-in, fan-out 1 -> 100, QoS 1 fan-in) and 10,000 idle connections. For a change whose cost is
# smaller than the run-to-run noise of a full compare run. FULL=1 adds the rest of
# compare.sh's scenarios (QoS 1 fan-in to a persistent session, latency at 1,000 and 20,000
# msg/s, a connect storm of 5,000), for an A/B of every scenario.
#   OLD=/path/to/old/messs [NEW=./target/release/messs] [ROUNDS=2] [FULL=1] bash loadtest/ab.sh
# Build the old one from a worktree, e.g.:
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/oldtarget cargo build --release -p messs)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OLD:?set OLD to the other messs binary}"
NEW=${NEW:-./target/release/messs}
ROUNDS=${ROUNDS:-2}
cargo build --release --locked -q -p messs-load
LOAD=./target/release/messs-load
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run() { # label binary messs-load-args...
  local label=$1 bin=$2; shift 2
  local admin=()  # builds from before the admin plane do not know the flag
  "$bin" serve --help | grep -q admin-listen && admin=(--admin-listen off)
  # A fresh data directory each run: a newer build may upgrade its schema, which an older
  # one then refuses to open.
  rm -rf "$data" && mkdir -p "$data"
  "$bin" serve "${admin[@]}" --listen "tcp://127.0.0.1:$port" --data-dir "$data" >/dev/null 2>&1 &
  local pid=$!
  sleep 0.5
  local out
  out=$(timeout 60 "$LOAD" "$@" --port "$port" --protocol 4 --broker-pid "$pid" 2>&1 || true)
  echo "$label $1 $(echo "$out" | grep -E "delivered|expected|broker|latency|connects/s" | tr -s ' ' | tr '\n' ' ')"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
  for side in old new; do
    bin=$OLD; [ "$side" = new ] && bin=$NEW
    run "$side" "$bin" bench --topology fan-in --publishers 4 --qos 0 --payload 64 --count 2000000 --duration 15s
    run "$side" "$bin" bench --topology fan-out --subscribers 100 --qos 0 --payload 64 --count 20000 --duration 15s
    run "$side" "$bin" bench --topology fan-in --publishers 4 --qos 1 --window 100 --payload 64 --count 1000000 --duration 15s
    run "$side" "$bin" conn --connections 10000 --concurrency 256 --hold 1s --duration 60s
    [ -n "${FULL:-}" ] || continue
    run "$side" "$bin" bench --topology fan-in --publishers 4 --qos 1 --window 100 --payload 64 --persistent --count 1000000 --duration 15s
    run "$side" "$bin" bench --topology pairs --publishers 1 --qos 0 --payload 64 --rate 1000 --count 10000 --duration 12s
    run "$side" "$bin" bench --topology pairs --publishers 1 --qos 0 --payload 64 --rate 20000 --count 200000 --duration 12s
    run "$side" "$bin" conn --connections 5000 --concurrency 256 --hold 0s --duration 60s
  done
done
