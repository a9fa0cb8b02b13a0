#!/usr/bin/env bash
# Store once: 1,000 offline persistent sessions subscribed to one filter, then PUBLISHES
# (default 20) QoS 1 publishes of 64 KiB to it. Reports how much the data directory grew
# per publish (about one payload when each message is stored once, a thousand without),
# and a bystander QoS 1 pair's p99 alone and beside the fan-out. Bounded: every step has
# a count and a time limit.
#
#   loadtest/store-once.sh                  # DURABILITY=wal, PUBLISHES=20
#   MESSS=/path/to/older/messs loadtest/store-once.sh   # the same against another build
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
ensure_cmd mosquitto_pub mosquitto-clients
cargo build --release --locked -q -p messs -p messs-load
MESSS=${MESSS:-./target/release/messs}
LOAD=./target/release/messs-load
SESSIONS=${SESSIONS:-1000}
PUBLISHES=${PUBLISHES:-20}
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat >"$work/messs.toml" <<CONF
[[listener]]
bind = "127.0.0.1:0"
allow_anonymous = true
tenant = "default"
[acl]
tenant_without_rules = "allow"
[storage]
data_dir = "$work/data"
durability = "${DURABILITY:-wal}"
[limits]
max_session_bytes_total = 4294967296
CONF
"$MESSS" serve --admin-listen off --config "$work/messs.toml" >"$work/messs.log" 2>&1 &
pid=$!
port=$(broker_port "$work/messs.log")
[ -n "$port" ] || { echo "store-once: messs did not start:" >&2; cat "$work/messs.log" >&2; exit 1; }
# The sessions subscribe, then leave: they stay, offline, holding what is queued for them.
$LOAD sub --port "$port" --protocol 5 --qos 1 --subscribers "$SESSIONS" --persistent \
  --topic 'fan/#' --count 1 --duration 5s --client-prefix once >/dev/null 2>&1 || true
head -c 65536 /dev/urandom >"$work/payload"
# RocksDB's log and tables, after the writer has caught up: bytes on disk.
size() { sleep 1; du -sb "$work/data" | cut -f1; }
pair() {
  $LOAD bench --port "$port" --protocol 5 --qos 1 --topology pairs --publishers 1 --subscribers 1 \
    --rate 500 --count 2500 --payload 64 --duration 30s --topic 'pair/{i}' --client-prefix "pair-$1" --json
}
p99() { python3 -c 'import json,sys; print(json.load(sys.stdin)["outcome"]["latency_us"]["p99"])'; }
before=$(size)
alone=$(pair alone | p99)
pair beside >"$work/beside.json" &
bystander=$!
sleep 0.5
start=$(date +%s.%N)
for i in $(seq 1 "$PUBLISHES"); do
  mosquitto_pub -h 127.0.0.1 -p "$port" -V mqttv5 -q 1 -t "fan/$i" -f "$work/payload" -i "once-pub"
done
end=$(date +%s.%N)
wait "$bystander"
beside=$(p99 <"$work/beside.json")
after=$(size)
python3 - "$before" "$after" "$PUBLISHES" "$SESSIONS" "$start" "$end" "$alone" "$beside" <<'PY'
import sys
before, after, n, sessions = (int(x) for x in sys.argv[1:5])
start, end = float(sys.argv[5]), float(sys.argv[6])
grew = after - before
print(f"store-once: {n} publishes of 64 KiB to {sessions} offline persistent sessions in {end-start:.1f} s")
print(f"store-once: data directory grew {grew/1048576:.1f} MiB, {grew/n/1024:.0f} KiB per publish "
      f"({grew/n/65536:.1f} payloads)")
print(f"store-once: bystander QoS 1 p99 {sys.argv[7]} us alone, {sys.argv[8]} us beside the fan-out")
PY
grep -E "shared_messages" "$work/messs.log" | tail -1 || true
