#!/usr/bin/env bash
# Memory that follows churn: one client id connects and disconnects N times against
# `messs serve` (release, a fresh data directory, flapping bans off) and the broker's RSS
# is printed every STEP cycles, to show where it levels off. Bounded: N cycles.
#   [N=500000] [STEP=50000] [CLEAN=1] [BIN=./target/release/messs] [EXTRA='TOML lines'] bash loadtest/churn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
use_prebuilt_rocksdb
N=${N:-500000}
STEP=${STEP:-50000}
BIN=${BIN:-./target/release/messs}
[ "$BIN" = ./target/release/messs ] && cargo build --release --locked -q -p messs
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/messs.toml" <<TOML
[[listener]]
bind = "127.0.0.1:$port"
allow_anonymous = true
tenant = "default"
[flapping]
max_connects_per_client_id = 0
${EXTRA:-}
TOML
"$BIN" serve --admin-listen off --config "$work/messs.toml" --data-dir "$work/data" >"$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q listening "$work/log" 2>/dev/null && break; sleep 0.2; done
timeout 900 python3 loadtest/churn.py "$port" "$pid" "$N" "$STEP" ${CLEAN:+clean}
