#!/usr/bin/env bash
# The limits issue's benchmarks, on loopback, each bounded by a count and a duration:
#  1. the limiter on the uncapped fast path: QoS 0 fan-in (4 publishers, 1 subscriber)
#     with no limits, then with per-connection and per-tenant packet and byte rates set far
#     above what the run reaches (every packet charged, none held back); interleaved rounds;
#  2. a throttled publisher: one publisher sending as fast as it can against
#     messages_per_sec = 2000 (burst 200): the rate its subscriber sees; then a QoS 1
#     publisher/subscriber pair (2,000 msg/s) alone and beside 4 flooders of the same
#     tenant, without limits and with messages_per_sec = 5000: the pair's rate and p99;
#  3. a connection flood from one address against connects_per_sec_per_ip = 100: attempts
#     per second, how many were let in, and the broker's CPU per attempt;
#  4. a tenant's shared rate: tenant `capped` (messages_per_sec = 5000 for all its
#     connections) floods beside tenant `free`; what each delivers;
#  5. flapping: 30 clients each reconnecting one client id as fast as they can, beside a
#     QoS 1 publisher/subscriber pair (default [flapping]: banned after 30 connections a
#     minute); the pair's rate and p99 alone and beside them, and what the flappers got;
#  6. a banned network: 20,000 connection attempts from 127.0.0.0/8 while it is in
#     [bans]: attempts per second and the broker's CPU per attempt;
#  7. slow consumers: 30 subscribers to `#` that never read, beside the pair, with
#     queue_full = drop_new and = disconnect: the pair's rate and p99, the broker's RSS.
# Prints a Markdown table.
#
#   loadtest/limits-bench.sh                  # ~6 minutes
#   ROUNDS=1 COUNT=500000 loadtest/limits-bench.sh
#   ONLY="5 6 7" loadtest/limits-bench.sh    # some of the scenarios
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
cargo build --release --locked -q -p messs -p messs-load
MESSS=${MESSS:-./target/release/messs}
LOAD=./target/release/messs-load
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-1 2 3 4 5 6 7}
want() { [[ " $ONLY " == *" $1 "* ]]; }
COUNT=${COUNT:-2000000}
ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rows="$work/rows"
: >"$rows"

config() { # config NAME EXTRA_TOML [LIMITS_LINES]: a try-out-like broker (anonymous, tenant default)
  cat >"$work/$1.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$port"
allow_anonymous = true
tenant = "default"
[acl]
tenant_without_rules = "allow"
[limits]
max_connections = 30000
${3:-}
[storage]
data_dir = "$work/data-$1"
$2
CONF
}
start() { # start NAME
  RUST_LOG=warn $MESSS serve --admin-listen off --config "$work/$1.toml" >"$work/messs.log" 2>&1 & pid=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null && return 0
    sleep 0.05
  done
  cat "$work/messs.log" >&2; exit 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
json_field() { python3 -c "import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# The pair beside hostile clients (2, 5, 7): QoS 1 at 2,000 msg/s, 10,000 messages a phase.
hostile() { # hostile NAME ATTACK [ATTACKERS]
  start "$1"
  $LOAD hostile --port "$port" --attacks "$2" --attackers "${3:-30}" --qos 1 --rate 2000 \
    --count 10000 --duration 30s --broker-pid "$pid" --json 2>/dev/null >"$work/hostile-$1.json"
  echo "hostile-$1 $work/hostile-$1.json" >>"$rows"
  stop
}

# 1. The limiter's cost when nothing is held back.
if want 1; then
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
    before=$(cpu_ticks "$pid")
    out=$($LOAD bench --port "$port" --topology fan-in --publishers 4 --qos 0 --payload 64 \
      --count "$COUNT" --duration 20s --json 2>/dev/null)
    after=$(cpu_ticks "$pid")
    rate=$(echo "$out" | json_field "r['outcome']['delivered_per_s']")
    received=$(echo "$out" | json_field "r['outcome']['received']")
    echo "limiter-$name $rate $received $((after - before))" >>"$rows"
    echo "limits-bench: fan-in, limiter $name, round $round: $rate msg/s" >&2
    stop
  done
done
fi

# 2. A throttled publisher.
if want 2; then
config throttled "[rate_limits]
messages_per_sec = 2000
messages_burst = 200
disconnect_multiple = 0"
start throttled
rate=$($LOAD bench --port "$port" --topology fan-in --publishers 1 --qos 0 --payload 64 \
  --count 30000 --duration 10s --json 2>/dev/null | json_field "r['outcome']['delivered_per_s']")
echo "throttled $rate" >>"$rows"
stop
# The pair beside 4 flooders of the same tenant, without limits and held at 5,000/s each.
config flood-free ""
hostile flood-free flood 4
config flood-held "[rate_limits]
messages_per_sec = 5000
messages_burst = 500
disconnect_multiple = 0"
hostile flood-held flood 4
fi

# 3. A connection flood from one address.
if want 3; then
config flood "[rate_limits]
connects_per_sec_per_ip = 100
connects_burst_per_ip = 100"
start flood
before=$(cpu_ticks "$pid")
out=$($LOAD conn --port "$port" --connections 20000 --concurrency 256 --hold 0s --duration 60s --json 2>/dev/null)
after=$(cpu_ticks "$pid")
echo "flood $(echo "$out" | json_field "r['outcome']['attempted']") $(echo "$out" | json_field "r['outcome']['connected']") $(echo "$out" | json_field "r['outcome']['elapsed_s']") $((after - before))" >>"$rows"
stop
fi

# 4. One tenant's shared rate beside another tenant (passwords: a shared listener).
if want 4; then
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
RUST_LOG=warn $MESSS serve --admin-listen off "${tcfg[@]}" >"$work/messs.log" 2>&1 & pid=$!
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
fi


# 5. Flapping client ids (the default [flapping] section).
if want 5; then
  config flapping ""
  hostile flapping flapping
fi

# 6. A banned network.
if want 6; then
config banned "[bans]
addresses = [\"127.0.0.0/8\"]"
start banned
before=$(cpu_ticks "$pid")
out=$($LOAD conn --port "$port" --connections 20000 --concurrency 256 --hold 0s --duration 60s --json 2>/dev/null || true)
after=$(cpu_ticks "$pid")
echo "banned $(echo "$out" | json_field "r['outcome']['attempted']") $(echo "$out" | json_field "r['outcome']['connected']") $(echo "$out" | json_field "r['outcome']['elapsed_s']") $((after - before))" >>"$rows"
stop
fi

# 7. Slow consumers, under each policy for a full queue.
if want 7; then
  for policy in drop_new disconnect; do
    config "slow-$policy" "" "queue_full = \"$policy\""
    hostile "slow-$policy" never-read
  done
fi

python3 - "$rows" "$(getconf CLK_TCK)" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
tck = int(sys.argv[2])
def vals(k): return [float(r[1]) for r in rows if r[0] == k]
off, on = vals("limiter-off"), vals("limiter-on")
keys = {r[0] for r in rows}
print("| scenario | figure |")
print("|---|---|")
if off and on:
  print(f"| QoS 0 fan-in, no limits | {statistics.median(off):,.0f} msg/s (median of {len(off)}: {', '.join(f'{v:,.0f}' for v in off)}) |")
  print(f"| QoS 0 fan-in, connection and tenant rates on, never reached | {statistics.median(on):,.0f} msg/s ({', '.join(f'{v:,.0f}' for v in on)}): {statistics.median(on)/statistics.median(off):.3f}x |")
  def cpu_ns(k): return [int(r[3]) / tck * 1e9 / int(r[2]) for r in rows if r[0] == k]
  c_off, c_on = cpu_ns("limiter-off"), cpu_ns("limiter-on")
  print(f"| broker CPU per delivered message, no limits / rates on | {statistics.median(c_off):,.0f} ns / {statistics.median(c_on):,.0f} ns (medians; {', '.join(f'{v:,.0f}' for v in c_off)} / {', '.join(f'{v:,.0f}' for v in c_on)}): {statistics.median(c_on)/statistics.median(c_off):.3f}x |")
if "throttled" in keys:
  print(f"| one publisher at full speed, limit 2,000/s | {vals('throttled')[0]:,.0f} msg/s delivered |")
if "flood" in keys:
  f = next(r for r in rows if r[0] == "flood")
  att, conn, secs, ticks = int(f[1]), int(f[2]), float(f[3]), int(f[4])
  cpu_us = ticks / tck * 1e6
  print(f"| 20,000 connections from one address, limit 100/s | {att/secs:,.0f} attempts/s, {conn} let in ({conn/secs:.0f}/s), broker CPU {cpu_us/att:.0f} µs per attempt |")
if "tenant-capped" in keys:
  print(f"| tenant capped at 5,000 msg/s beside an uncapped one | capped {vals('tenant-capped')[0]:,.0f} msg/s, free {vals('tenant-free')[0]:,.0f} msg/s (same run) |")
import json
def hostile(name):
    path = next(r[1] for r in rows if r[0] == f"hostile-{name}")
    h = json.load(open(path))["outcome"]
    b, a, k = h["baseline"], h["attacked"], h["attackers"]
    mib = lambda v: f"{v / 2**20:,.0f} MiB" if v else "?"
    pair = (f"pair {b['delivered_per_s']:,.0f} -> {a['delivered_per_s']:,.0f} msg/s "
            f"({h['rate_ratio']:.2f}x), p99 {b['latency_us']['p99']/1000:.1f} -> "
            f"{a['latency_us']['p99']/1000:.1f} ms, lost {a['lost']}")
    return pair, k, f"RSS {mib(h['broker_rss_before'])} before, peak {mib(h['broker_rss_peak'])}"
for name, what in (("flood-free", "no limits"), ("flood-held", "flooders held at 5,000/s each")):
  if f"hostile-{name}" in keys:
    pair, k, rss = hostile(name)
    print(f"| QoS 1 pair at 2,000 msg/s beside 4 flooders of its tenant, {what} | {pair}; flooders sent {k['packets']:,} messages |")
if "hostile-flapping" in keys:
  pair, k, rss = hostile("flapping")
  print(f"| 30 clients reconnecting one id each, default [flapping] | {pair}; flappers: {k['connections'] - k['refused_or_closed']:,} connections let in, {k['refused_or_closed']:,} refused |")
if "banned" in keys:
  f = next(r for r in rows if r[0] == "banned")
  att, conn, secs, ticks = int(f[1]), int(f[2]), float(f[3]), int(f[4])
  print(f"| 20,000 connections from a banned network | {att/secs:,.0f} attempts/s, {conn} let in, broker CPU {ticks / tck * 1e6 / max(att, 1):.0f} µs per attempt |")
for policy in ("drop_new", "disconnect"):
  if f"hostile-slow-{policy}" in keys:
    pair, k, rss = hostile(f"slow-{policy}")
    print(f"| 30 subscribers to # that never read, queue_full = {policy} | {pair}; {rss} |")
PY
