#!/usr/bin/env bash
# Interop check: the real messs binary on an ephemeral loopback port, driven by
# mosquitto_pub/mosquitto_sub and by paho-mqtt 2.x, at MQTT 3.1.1 and 5.0: first the
# try-out setup (anonymous on loopback), then device logins over TLS (tls-login.sh), then
# MQTT.js over WebSocket (websocket.sh).
# Installs mosquitto-clients (Debian) and paho-mqtt (PyPI) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_cmd mosquitto_sub mosquitto-clients
use_prebuilt_rocksdb
if ! python3 -c 'import paho.mqtt as p, sys; sys.exit(0 if int(p.__version__.split(".")[0]) >= 2 else 1)' 2>/dev/null; then
  echo "interop: installing paho-mqtt 2.x"
  python3 -m pip install -q 'paho-mqtt>=2,<3' || {
    echo "interop: could not install paho-mqtt with pip; install python3-pip or paho-mqtt 2.x" >&2; exit 1; }
fi

cargo build -q --bin messs
work=$(mktemp -d)
log="$work/messs.log"
RUST_LOG=info ./target/debug/messs serve --admin-listen off --listen tcp://127.0.0.1:0 --data-dir "$work/data" >"$log" 2>&1 &
broker=$!
cleanup() { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$(broker_port "$log")
[ -n "$port" ] || { echo "interop: broker did not start:"; cat "$log"; exit 1; }
echo "interop: messs on 127.0.0.1:$port"

fail() { echo "interop: FAIL: $*" >&2; echo "--- broker log ---" >&2; tail -n 30 "$log" >&2; exit 1; }

for v in mqttv311 mqttv5; do
  base="interop/mosquitto/$v/$$"
  # Publish/subscribe at each QoS.
  for q in 0 1 2; do
    out="$work/sub-$v-$q"
    mosquitto_sub -h 127.0.0.1 -p "$port" -V "$v" -q "$q" -t "$base/q$q" -C 1 -W 5 >"$out" &
    sub=$!
    sleep 0.3
    mosquitto_pub -h 127.0.0.1 -p "$port" -V "$v" -q "$q" -t "$base/q$q" -m "hello-$q"
    wait "$sub" || fail "$v QoS $q: subscriber got nothing"
    [ "$(cat "$out")" = "hello-$q" ] || fail "$v QoS $q: got '$(cat "$out")'"
  done
  # Retained: set, then a new subscriber receives it.
  mosquitto_pub -h 127.0.0.1 -p "$port" -V "$v" -q 1 -r -t "$base/ret" -m kept
  got=$(mosquitto_sub -h 127.0.0.1 -p "$port" -V "$v" -t "$base/ret" -C 1 -W 5) || fail "$v retained: nothing"
  [ "$got" = kept ] || fail "$v retained: got '$got'"
  # Delete by empty payload: a new subscriber gets nothing.
  mosquitto_pub -h 127.0.0.1 -p "$port" -V "$v" -q 1 -r -t "$base/ret" -n
  if mosquitto_sub -h 127.0.0.1 -p "$port" -V "$v" -t "$base/ret" -C 1 -W 1 >/dev/null 2>&1; then
    fail "$v retained: still there after delete"
  fi
  # Will: a subscriber with a will is killed; a watcher receives the will.
  out="$work/will-$v"
  mosquitto_sub -h 127.0.0.1 -p "$port" -V "$v" -q 1 -t "$base/will" -C 1 -W 5 >"$out" &
  watcher=$!
  mosquitto_sub -h 127.0.0.1 -p "$port" -V "$v" -t "$base/idle" \
    --will-topic "$base/will" --will-payload died --will-qos 1 >/dev/null &
  mortal=$!
  sleep 0.5
  kill -9 "$mortal"; wait "$mortal" 2>/dev/null || true
  wait "$watcher" || fail "$v will: not delivered"
  [ "$(cat "$out")" = died ] || fail "$v will: got '$(cat "$out")'"
  echo "interop: mosquitto clients $v: publish/subscribe QoS 0-2, retained set/delete, will: ok"
done

python3 interop/paho_check.py 127.0.0.1 "$port" || fail "paho-mqtt checks"

# Graceful shutdown on SIGTERM: a connected v5 client is told 0x8B, the broker exits 0.
mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv5 -t "interop/shutdown" >/dev/null 2>"$work/shutdown-sub" &
last=$!
sleep 0.3
kill -TERM "$broker"
status=0; wait "$broker" || status=$?
trap 'rm -rf "$work"' EXIT
[ "$status" = 0 ] || fail "broker exited with $status on SIGTERM"
grep -q "stopped" "$log" || fail "no clean stop in the log"
wait "$last" 2>/dev/null || true
echo "interop: graceful shutdown on SIGTERM: ok"

# Real device logins over TLS: passwords and client certificates (interop/tls-login.sh).
bash interop/tls-login.sh
# MQTT.js over WebSocket and WebSocket over TLS (interop/websocket.sh).
bash interop/websocket.sh
echo "interop: all checks passed"
