#!/usr/bin/env bash
# Offline queues cost disk, not memory: queues 1,000,000 QoS 1 messages (64-byte payloads)
# for 10 offline persistent sessions (100,000 each), reports messs's RSS before and after
# and the data directory's size, then lets one session reconnect and drain its 100,000
# messages (time, loss). Bounded: every step has a count and a time limit.
#
#   loadtest/offline-rss.sh            # DURABILITY=wal by default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
ensure_cmd mosquitto_sub mosquitto-clients
cargo build --release --locked -q -p messs -p messs-load
LOAD=./target/release/messs-load
SESSIONS=10
PER_SESSION=${PER_SESSION:-100000}
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
[storage]
data_dir = "$work/data"
durability = "${DURABILITY:-wal}"
max_stored_messages_per_session = $PER_SESSION
CONF
./target/release/messs serve --admin-listen off --config "$work/messs.toml" >"$work/messs.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null && break
  sleep 0.05
done
rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status"; }
for i in $(seq 0 $((SESSIONS - 1))); do
  # Subscribe with a persistent session, then leave: the session stays, offline.
  mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv311 -c -i "rss-sub-$i" -q 1 -t "off/$i" -W 1 >/dev/null 2>&1 || true
done
echo "offline-rss: $SESSIONS offline sessions; broker RSS $(rss) MiB"
start=$(date +%s.%N)
$LOAD pub --port "$port" --protocol 4 --qos 1 --window 100 --payload 64 \
  --publishers "$SESSIONS" --topic 'off/{i}' --count $((SESSIONS * PER_SESSION)) \
  --duration 600s --client-prefix rss-pub --broker-pid "$pid" >"$work/pub.txt"
end=$(date +%s.%N)
grep -E "sent|acked|rate|msg/s" "$work/pub.txt" | head -5 || cat "$work/pub.txt"
echo "offline-rss: $((SESSIONS * PER_SESSION)) messages queued in $(python3 -c "print(round($end-$start,1))") s; broker RSS $(rss) MiB; data directory $(du -sm "$work/data" | cut -f1) MiB"
grep -o 'queued_on_disk[^,]*' "$work/messs.log" | tail -1 || true
start=$(date +%s.%N)
$LOAD sub --port "$port" --protocol 4 --qos 1 --subscribers 1 --persistent \
  --topic 'off/{i}' --count "$PER_SESSION" --duration 300s --client-prefix rss --broker-pid "$pid" >"$work/sub.txt"
end=$(date +%s.%N)
grep -E "received|lost|dup|rate|msg/s" "$work/sub.txt" | head -6 || cat "$work/sub.txt"
echo "offline-rss: one session drained $PER_SESSION in $(python3 -c "print(round($end-$start,1))") s; broker RSS $(rss) MiB"
