#!/usr/bin/env bash
# Start-up with a large store: SESSIONS persistent sessions (default 100,000), each
# subscribed to one topic, and QUEUED messages for them (default 1,000,000: QUEUED/SESSIONS
# QoS 1 messages fanned out to every session), all made through MQTT by messs-load against
# the release broker at `wal`; then the broker is stopped and started again on the same
# directory, and the time until it listens (RocksDB open + every session restored) and its
# RSS are reported. Bounded: every step has a count and a time limit.
#
#   loadtest/startup.sh                 # SESSIONS=100000 QUEUED=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
cargo build --release --locked -q -p messs -p messs-load
LOAD=./target/release/messs-load
SESSIONS=${SESSIONS:-100000}
QUEUED=${QUEUED:-1000000}
ROUND=5000   # subscribers per messs-load run (file descriptors)
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/messs.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$port"
allow_anonymous = true
tenant = "default"
[acl]
tenant_without_rules = "allow"
[limits]
max_sessions = $((SESSIONS + 1000))
[storage]
data_dir = "$work/data"
CONF
start_broker() {
  ./target/release/messs serve --admin-listen off --config "$work/messs.toml" >"$work/messs.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 6000); do
    grep -q "listening" "$work/messs.log" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$work/messs.log"; return 1; }
    sleep 0.01
  done
  echo "startup: the broker did not listen within 60 s"; return 1
}
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status"; }
start_broker
made=0
while [ "$made" -lt "$SESSIONS" ]; do
  n=$((SESSIONS - made < ROUND ? SESSIONS - made : ROUND))
  $LOAD sub --port "$port" --protocol 4 --qos 1 --persistent --subscribers "$n" \
    --topic 'start/{i}' --count 0 --duration 60s --client-prefix "start-$made" >/dev/null
  made=$((made + n))
done
echo "startup: $made persistent sessions subscribed; broker RSS $(rss) MiB"
per=$((QUEUED / SESSIONS))
t0=$(date +%s.%N)
$LOAD pub --port "$port" --protocol 4 --qos 1 --window 1 --payload 64 --publishers 1 \
  --topic 'start/x' --count "$per" --duration 600s --client-prefix start-pub >/dev/null
t1=$(date +%s.%N)
echo "startup: $per messages fanned out to every session: $((per * SESSIONS)) queued in $(python3 -c "print(f'{$t1-$t0:.1f}')") s; broker RSS $(rss) MiB"
kill "$pid"; wait "$pid" 2>/dev/null || true
echo "startup: data directory $(du -sm "$work/data" | cut -f1) MiB"
t0=$(date +%s.%N)
start_broker
t1=$(date +%s.%N)
restored=$(grep "store opened" "$work/messs.log" | grep -o "sessions=[0-9]*\|queued_messages=[0-9]*" | tr '\n' ' ' || true)

echo "startup: restart to listening in $(python3 -c "print(f'{$t1-$t0:.2f}')") s (${restored% }); broker RSS $(rss) MiB"
