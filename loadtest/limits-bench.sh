#!/usr/bin/env bash
# The limits issue's benchmarks, on loopback, each bounded by a count and a duration:
#  1. the limiter on the uncapped fast path: QoS 0 fan-in (4 publishers, 1 subscriber)
#     with no limits, then with per-connection and per-tenant packet and byte rates set far
#     above what the run reaches (every packet charged, none held back); interleaved rounds;
#  2. a throttled publisher: one publisher sending as fast as it can against
#     messages_per_sec = 2000 (burst 200): the rate its subscriber sees;
#  3. a connection flood from one address against connects_per_sec_per_ip = 100: attempts
#     per second, how many were let in, and the broker's CPU per attempt;
#  4. a tenant's shared rate: tenant `capped` (messages_per_sec = 5000 for all its
#     connections) floods beside tenant `free`; what each delivers.
# Prints a Markdown table.
#
#   loadtest/limits-bench.sh                  # ~4 minutes
#   ROUNDS=1 COUNT=500000 loadtest/limits-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
cargo build --release --locked -q -p messs -p messs-load
MESSS=${MESSS:-./target/release/messs}
LOAD=./target/release/messs-load
ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-2000000}
ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rows="$work/rows"
: >"$rows"

config() { # config NAME EXTRA_TOML: a try-out-like broker (anonymous, tenant default)
  cat >"$work/$1.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$port"
allow_anonymous = true
tenant = "default"
[acl]
tenant_without_rules = "allow"
[limits]
max_connections = 30000
[storage]
data_dir = "$work/data-$1"
$2
CONF
}
start() { # start NAME
  RUST_LOG=warn $MESSS serve --config "$work/$1.toml" >"$work/messs.log" 2>&1 & pid=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null && return 0
    sleep 0.05
  done
  cat "$work/messs.log" >&2; exit 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
json_field() { python3 -c "import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# 1. The limiter's cost when nothing is held back.
config off ""
config on "[rate_limits]
messages_per_sec = 100000000
bytes_per_sec = 100000000000
disconnect_multiple = 0
[tenant_limits]
messages_per_sec = 100000000
bytes_per_sec = 100000000000"
for round in $(seq 1 "$ROUNDS"); do
  for name in off on; do
    start "$name"
    rate=$($LOAD bench --port "$port" --topology fan-in --publishers 4 --qos 0 --payload 64 \
      --count "$COUNT" --duration 20s --json 2>/dev/null | json_field "r['outcome']['delivered_per_s']")
    echo "limiter-$name $rate" >>"$rows"
    echo "limits-bench: fan-in, limiter $name, round $round: $rate msg/s" >&2
    stop
  done
done

# 2. A throttled publisher.
config throttled "[rate_limits]
messages_per_sec = 2000
messages_burst = 200
disconnect_multiple = 0"
start throttled
rate=$($LOAD bench --port "$port" --topology fan-in --publishers 1 --qos 0 --payload 64 \
  --count 30000 --duration 10s --json 2>/dev/null | json_field "r['outcome']['delivered_per_s']")
echo "throttled $rate" >>"$rows"
stop

# 3. A connection flood from one address.
config flood "[rate_limits]
connects_per_sec_per_ip = 100
connects_burst_per_ip = 100"
start flood
before=$(cpu_ticks "$pid")
out=$($LOAD conn --port "$port" --connections 20000 --concurrency 256 --hold 0s --duration 60s --json 2>/dev/null)
after=$(cpu_ticks "$pid")
echo "flood $(echo "$out" | json_field "r['outcome']['attempted']") $(echo "$out" | json_field "r['outcome']['connected']") $(echo "$out" | json_field "r['outcome']['elapsed_s']") $((after - before))" >>"$rows"
stop

# 4. One tenant's shared rate beside another tenant (passwords: a shared listener).
cat >"$work/tenants.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$port"
[storage]
data_dir = "$work/data-tenants"
CONF
tcfg=(--config "$work/tenants.toml")
for t in capped free; do
  $MESSS tenant add "$t" "${tcfg[@]}" >/dev/null
  echo 'bench-password-1' | $MESSS device add --tenant "$t" --username load --password-stdin "${tcfg[@]}" >/dev/null
  $MESSS acl add --tenant "$t" --allow --topic '#' "${tcfg[@]}" >/dev/null
done
$MESSS tenant set-limit capped messages_per_sec 5000 "${tcfg[@]}" >/dev/null
RUST_LOG=warn $MESSS serve "${tcfg[@]}" >"$work/messs.log" 2>&1 & pid=$!
sleep 0.5
loads=()
for t in capped free; do
  $LOAD bench --port "$port" --topology fan-in --publishers 4 --qos 0 --payload 64 --count 500000 \
    --duration 10s --username "load@$t" --password bench-password-1 --client-prefix "$t" \
    --json 2>/dev/null >"$work/tenant-$t.json" &
  loads+=($!)
done
wait "${loads[@]}" || true
for t in capped free; do
  echo "tenant-$t $(json_field "r['outcome']['delivered_per_s']" <"$work/tenant-$t.json")" >>"$rows"
done
stop

python3 - "$rows" "$(getconf CLK_TCK)" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
tck = int(sys.argv[2])
def vals(k): return [float(r[1]) for r in rows if r[0] == k]
off, on = vals("limiter-off"), vals("limiter-on")
print("| scenario | figure |")
print("|---|---|")
print(f"| QoS 0 fan-in, no limits | {statistics.median(off):,.0f} msg/s (median of {len(off)}: {', '.join(f'{v:,.0f}' for v in off)}) |")
print(f"| QoS 0 fan-in, connection and tenant rates on, never reached | {statistics.median(on):,.0f} msg/s ({', '.join(f'{v:,.0f}' for v in on)}): {statistics.median(on)/statistics.median(off):.3f}x |")
print(f"| one publisher at full speed, limit 2,000/s | {vals('throttled')[0]:,.0f} msg/s delivered |")
f = next(r for r in rows if r[0] == "flood")
att, conn, secs, ticks = int(f[1]), int(f[2]), float(f[3]), int(f[4])
cpu_us = ticks / tck * 1e6
print(f"| 20,000 connections from one address, limit 100/s | {att/secs:,.0f} attempts/s, {conn} let in ({conn/secs:.0f}/s), broker CPU {cpu_us/att:.0f} µs per attempt |")
print(f"| tenant capped at 5,000 msg/s beside an uncapped one | capped {vals('tenant-capped')[0]:,.0f} msg/s, free {vals('tenant-free')[0]:,.0f} msg/s (same run) |")
PY
