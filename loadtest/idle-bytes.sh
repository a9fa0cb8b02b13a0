#!/usr/bin/env bash
# The byte table of an idle connection: runs `messs serve` (release, embedded defaults, a
# fresh data directory) under heaptrack, holds N idle MQTT 3.1.1 connections (messs-load
# conn), stops the broker, and sums the heap at its peak by the code that allocated it
# (loadtest/idle_bytes.py). Bounded: N connections (default 10,000), held 8 s.
#   [N=10000] [TRANSPORT=tcp|tls|ws|wss|quic] [FLAME_OUT=file] bash loadtest/idle-bytes.sh
# (FLAME_OUT keeps the stacks; TLS uses the certificate messs makes for itself.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
use_prebuilt_rocksdb
ensure_cmd heaptrack heaptrack
N=${N:-10000}
TRANSPORT=${TRANSPORT:-tcp}
# heaptrack sees what goes through malloc: the default build (glibc's allocator), not one
# with the mimalloc feature.
cargo build --release --locked -q -p messs -p messs-load
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp ./target/release/messs "$work/messs"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
heaptrack -o "$work/heap" "$work/messs" serve --admin-listen off \
  --listen "$TRANSPORT://127.0.0.1:$port" --data-dir "$work/data" >"$work/log" 2>&1 &
for _ in $(seq 100); do grep -q listening "$work/log" 2>/dev/null && break; sleep 0.2; done
timeout 120 ./target/release/messs-load conn --connections "$N" --concurrency 256 --hold 8s \
  --duration 60s --port "$port" --protocol 4 --transport "$TRANSPORT" \
  --tls-ca "$work/data/self-signed/cert.pem" | head -1
pkill -INT -f "messs serve --admin-listen off --listen tcp://127.0.0.1:$port" || true
for _ in $(seq 100); do ls "$work"/heap*.zst >/dev/null 2>&1 && ! pgrep -f "heaptrack.*$work" >/dev/null && break; sleep 0.2; done
heaptrack_print -f "$work"/heap*.zst --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 --print-flamegraph "$work/flame" --flamegraph-cost-type peak >/dev/null
if [ -n "${FLAME_OUT:-}" ]; then cp "$work/flame" "$FLAME_OUT"; fi
python3 loadtest/idle_bytes.py "$work/flame" "$N"
