#!/usr/bin/env bash
# Per-transport figures: messs over tcp, tls, ws, wss and quic, and Mosquitto over tcp, tls,
# ws and wss (it has no QUIC), on loopback, each run against a freshly started broker with
# only that listener, interleaved (each scenario runs on every broker and transport before
# the next). Prints one Markdown table: throughput (QoS 0 and QoS 1 fan-in), p99 latency at
# 1,000 msg/s, connect rate and RSS per idle connection.
#
#   loadtest/transports.sh            # full run (~8 minutes)
#   QUICK=1 loadtest/transports.sh    # smaller counts, for a smoke test
#   TRANSPORTS="ws quic" BROKERS=messs loadtest/transports.sh
#   CHECK=1 ...                         # fail if messs lost/duplicated QoS 1 messages (CI)
#
# Both brokers use one self-signed certificate (made by messs, per run).
# Installs Mosquitto (Debian package) when missing. All traffic stays on 127.0.0.1; every
# run is bounded by a count and a duration.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. loadtest/brokers.sh
need_cargo
use_prebuilt_rocksdb

BROKERS=${BROKERS:-"messs mosquitto"}
TRANSPORTS=${TRANSPORTS:-"tcp tls ws wss quic"}
QUICK=${QUICK:-0}
OUT=${OUT:-target/transports}

if [[ " $BROKERS " == *" mosquitto "* ]]; then ensure_cmd mosquitto mosquitto; fi
cargo build --release --locked -q -p messs -p messs-load
LOAD=./target/release/messs-load

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
stamp=$(date +%Y%m%d-%H%M%S)
results="$OUT/$stamp.jsonl"
work=$(mktemp -d)
cleanup() { [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# One certificate for both brokers: the self-signed one messs makes (ECDSA P-256, for
# localhost and 127.0.0.1), made by a first messs start; later messs starts find it where
# they keep theirs.
./target/release/messs serve --admin-listen off --listen tls://127.0.0.1:0 \
  --data-dir "$work/pki-data" >"$work/pki.log" 2>&1 &
broker_pid=$!
[ -n "$(broker_port "$work/pki.log" tls)" ] || { echo "transports: messs did not start:" >&2; cat "$work/pki.log" >&2; exit 1; }
stop_broker
mkdir -p "$work/pki"
cp "$work/pki-data/self-signed/cert.pem" "$work/pki-data/self-signed/key.pem" "$work/pki/"

start_broker() { # name transport port
  local name=$1 transport=$2 port=$3
  case "$name" in
    messs)
      rm -rf "$work/messs-data"
      mkdir -p "$work/messs-data/self-signed"
      cp "$work/pki/cert.pem" "$work/pki/key.pem" "$work/messs-data/self-signed/"
      ./target/release/messs serve --admin-listen off --listen "$transport://127.0.0.1:$port" \
        --data-dir "$work/messs-data" >"$work/messs.log" 2>&1 &
      broker_pid=$!
      [ -n "$(log_wait "$work/messs.log" "s/.*\(listening\) (mqtt over $transport).*/\1/p")" ] ||
        { echo "transports: messs did not start:" >&2; cat "$work/messs.log" >&2; exit 1; }
      return 0
      ;;
    mosquitto)
      {
        case "$transport" in ws|wss)
          # Mosquitto 2.0.11 (Debian) will not start with websockets listeners alone, so
          # a plain one sits beside it, unused. Its websockets listener (libwebsockets)
          # ignores the bind address and listens on every interface while the run lasts.
          echo "listener $(free_port) 127.0.0.1"
          echo "listener $port 127.0.0.1"
          echo "protocol websockets" ;;
        *) echo "listener $port 127.0.0.1" ;;
        esac
        case "$transport" in tls|wss)
          echo "certfile $work/pki/cert.pem"
          echo "keyfile $work/pki/key.pem" ;;
        esac
        # Run as root, Mosquitto would switch to user mosquitto, who cannot read the key
        # in our private work directory (ignored when not run as root). Then the limits
        # equivalent to messs's defaults.
        echo "user $(id -un)"
        mosquitto_limits
      } >"$work/mosquitto.conf"
      mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
      broker_pid=$!
      wait_tcp_port "$port" mosquitto
      ;;
  esac
}

# name|messs-load arguments (transport, port, pid and --json are added)
SCENARIOS=(
  "qos0-fan-in|bench --topology fan-in --publishers 4 --qos 0 --payload 64 --count $(scale 1000000) --duration 15s"
  "qos1-fan-in|bench --topology fan-in --publishers 4 --qos 1 --window 100 --payload 64 --count $(scale 500000) --duration 15s"
  "latency-1k|bench --topology pairs --publishers 1 --qos 0 --payload 64 --rate 1000 --count $(scale 5000) --duration 12s"
  "connect-storm|conn --connections $(scale 3000) --concurrency 128 --hold 0s --duration 60s"
  "idle-5k|conn --connections $(scale 5000) --concurrency 128 --hold 1s --duration 90s"
)

for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  for t in $TRANSPORTS; do
    for b in $BROKERS; do
      if [ "$b" = mosquitto ] && [ "$t" = quic ]; then continue; fi
      port=$(free_port)
      start_broker "$b" "$t" "$port"
      echo "transports: $name over $t on $b" >&2
      # shellcheck disable=SC2086
      record_run "$results" "\"scenario\":\"$name\",\"broker\":\"$b\",\"transport\":\"$t\"" \
        $args --transport "$t" --tls-ca "$work/pki/cert.pem" --port "$port" --protocol 4 \
        --client-prefix "tr-$b"
      stop_broker
    done
  done
done

python3 loadtest/transports_table.py "$results" ${CHECK:+--check} | tee "$OUT/$stamp.md"
echo "transports: results in $results and $OUT/$stamp.md" >&2
