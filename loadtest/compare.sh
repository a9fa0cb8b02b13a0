#!/usr/bin/env bash
# Runs the same load scenarios against messs, Mosquitto and rumqttd on loopback, interleaved
# (each scenario runs against every broker before the next scenario), each broker freshly
# started with equivalent limits, and prints a table with ratios.
#
#   loadtest/compare.sh              # full run (~5 minutes)
#   QUICK=1 loadtest/compare.sh      # smaller counts, for a smoke test
#   BROKERS="messs mosquitto" loadtest/compare.sh
#   CHECK=1 ...                      # fail if messs lost/duplicated QoS 1 messages (CI)
#
# Installs Mosquitto (Debian package) and rumqttd (cargo install) when missing. All traffic
# stays on 127.0.0.1; every run is bounded by a count and a duration.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. loadtest/brokers.sh
need_cargo
use_prebuilt_rocksdb

BROKERS=${BROKERS:-"messs mosquitto rumqttd"}
QUICK=${QUICK:-0}
OUT=${OUT:-target/compare}

if [[ " $BROKERS " == *" mosquitto "* ]]; then ensure_cmd mosquitto mosquitto; fi
if [[ " $BROKERS " == *" rumqttd "* ]] && ! command -v rumqttd >/dev/null 2>&1; then
  echo "installing rumqttd (cargo install; its lock file pins a 'metrics' release that no longer builds, so not --locked)"
  cargo install rumqttd --version 0.20.0 --quiet
fi
cargo build --release --locked -q -p messs -p messs-load
LOAD=./target/release/messs-load

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
stamp=$(date +%Y%m%d-%H%M%S)
results="$OUT/$stamp.jsonl"
work=$(mktemp -d)
cleanup() { [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

start_broker() { # name port
  local name=$1 port=$2
  case "$name" in
    messs)
      ./target/release/messs serve --admin-listen off --listen "tcp://127.0.0.1:$port" --data-dir "$work/messs-data" >"$work/messs.log" 2>&1 &
      ;;
    mosquitto)
      { echo "listener $port 127.0.0.1"; mosquitto_limits; } >"$work/mosquitto.conf"
      mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
      ;;
    rumqttd)
      cat >"$work/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 1024
    dynamic_filters = true
CONF
      rumqttd --config "$work/rumqttd.toml" -q >"$work/rumqttd.log" 2>&1 &
      ;;
  esac
  broker_pid=$!
  wait_tcp_port "$port" "$name"
}

# name|messs-load arguments (the port, pid and --json are added)
SCENARIOS=(
  "qos0-fan-in|bench --topology fan-in --publishers 4 --qos 0 --payload 64 --count $(scale 2000000) --duration 15s"
  "qos1-fan-in|bench --topology fan-in --publishers 4 --qos 1 --window 100 --payload 64 --count $(scale 1000000) --duration 15s"
  "qos1-fan-in-persistent|bench --topology fan-in --publishers 4 --qos 1 --window 100 --payload 64 --persistent --count $(scale 1000000) --duration 15s"
  "fan-out-100|bench --topology fan-out --subscribers 100 --qos 0 --payload 64 --count $(scale 20000) --duration 15s"
  "latency-1k|bench --topology pairs --publishers 1 --qos 0 --payload 64 --rate 1000 --count $(scale 10000) --duration 12s"
  "latency-20k|bench --topology pairs --publishers 1 --qos 0 --payload 64 --rate 20000 --count $(scale 200000) --duration 12s"
  "idle-10k|conn --connections $(scale 10000) --concurrency 256 --hold 1s --duration 60s"
  "connect-storm|conn --connections $(scale 5000) --concurrency 256 --hold 0s --duration 60s"
)

for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  for b in $BROKERS; do
    port=$(free_port)
    start_broker "$b" "$port"
    echo "compare: $name on $b" >&2
    # shellcheck disable=SC2086
    record_run "$results" "\"scenario\":\"$name\",\"broker\":\"$b\"" \
      $args --port "$port" --protocol 4 --client-prefix "cmp-$b"
    stop_broker
  done
done

python3 loadtest/compare_table.py "$results" ${CHECK:+--check} | tee "$OUT/$stamp.md"
echo "compare: results in $results and $OUT/$stamp.md" >&2
