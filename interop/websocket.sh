#!/usr/bin/env bash
# Interop over WebSocket: MQTT.js 5 (npm; the client browsers use) against messs's ws:// and
# wss:// listeners, at MQTT 3.1.1 and 5.0 (interop/mqttjs_check.mjs). The wss listener uses
# the self-signed certificate messs makes without --config; the client trusts exactly it.
# Installs Node.js/npm (Debian) and MQTT.js (into target/interop-node) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_cmd node nodejs
ensure_cmd npm npm
use_prebuilt_rocksdb
node_dir=target/interop-node
mqttjs=5.16.0
if [ "$(node -p "require('./$node_dir/node_modules/mqtt/package.json').version" 2>/dev/null)" != "$mqttjs" ]; then
  echo "interop: installing MQTT.js $mqttjs (npm) into $node_dir"
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "mqtt@$mqttjs" >/dev/null || {
    echo "interop: could not install MQTT.js from npm; check access to registry.npmjs.org" >&2; exit 1; }
fi
# ES modules resolve packages next to the script: run a copy beside node_modules.
cp interop/mqttjs_check.mjs "$node_dir/"

cargo build -q --bin messs
work=$(mktemp -d)
log="$work/messs.log"
RUST_LOG=info ./target/debug/messs serve --admin-listen off --data-dir "$work/data" \
  --listen ws://127.0.0.1:0 --listen wss://127.0.0.1:0 >"$log" 2>&1 &
broker=$!
cleanup() { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ws=$(broker_port "$log" ws)
wss=$(broker_port "$log" wss)
[ -n "$ws" ] && [ -n "$wss" ] || { echo "interop: broker did not start:"; cat "$log"; exit 1; }
grep -q 'self-signed certificate' "$log" || { echo "interop: no self-signed certificate logged"; exit 1; }
echo "interop: messs on ws://127.0.0.1:$ws/mqtt and wss://localhost:$wss/mqtt"
node "$node_dir/mqttjs_check.mjs" "$work/data/self-signed/cert.pem" \
  "ws://127.0.0.1:$ws/mqtt" "wss://localhost:$wss/mqtt" || {
  echo "--- broker log ---" >&2; tail -n 30 "$log" >&2; exit 1; }
