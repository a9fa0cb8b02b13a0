#!/usr/bin/env bash
# The security issue's benchmarks, in one run on loopback:
#  1. login flood: an established client's p99 publish latency alone, then while 1,000
#     clients keep logging in with wrong passwords (default lockout; then with the per-IP
#     lockout out of reach, as from a botnet of many addresses: every attempt costs argon2);
#  2. 10,000 known devices connecting (uncached: argon2 each), then reconnecting (cached
#     verification), from 256 loopback addresses as a fleet would (logins are counted per
#     source: one address gets as many checks at once as it has guesses left before a
#     lockout), beside Mosquitto accepting 10,000 anonymous connections;
#  3. TLS: connect rate and RSS per idle TLS connection, messs and Mosquitto (both TLS 1.3,
#     anonymous, same certificate), 5,000 connections each.
# Every run is bounded by a count and a duration. Prints a Markdown table; raw JSON lines in
# target/security-bench/.
#
#   loadtest/security-bench.sh           # ~12 minutes (10,000 first logins at ~27/s)
#   QUICK=1 loadtest/security-bench.sh   # smaller counts
#   ONLY=flood loadtest/security-bench.sh # the login flood alone (~2 minutes)
#   ONLY=storm loadtest/security-bench.sh # known devices and the reconnect storm (~5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
ensure_cmd openssl openssl
ensure_cmd mosquitto mosquitto
cargo build --release --locked -q -p messs -p messs-load
MESSS=${MESSS:-./target/release/messs}
LOAD=./target/release/messs-load
QUICK=${QUICK:-0}
ONLY=${ONLY:-}
scale() { if [ "$QUICK" = 1 ]; then echo $(( $1 / 10 )); else echo "$1"; fi; }
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

out=target/security-bench; mkdir -p "$out"
results="$out/$(date +%Y%m%d-%H%M%S).jsonl"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "${pid2:-}" ] && { kill "$pid2" 2>/dev/null || true; }; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" 2>/dev/null && return 0; sleep 0.05; done; echo "no broker on $1; logs:" >&2; cat "$work"/*.log >&2; exit 1; }
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }
record() { echo "{\"scenario\":\"$1\",\"broker\":\"$2\",\"result\":$3}" >>"$results"; }

# Certificates: a CA and a server certificate for localhost / 127.0.0.1 (P-256).
pki="$work/pki"; mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout "$pki/ca.key" \
  -out "$pki/ca.pem" -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/server.key" \
  -out "$pki/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$pki/ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -out "$pki/server.pem" -extfile "$pki/ext" 2>/dev/null

tcp=$(free_port); tls=$(free_port)
config() { # config EXTRA_AUTH_LINES
  cat >"$work/messs.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$tcp"
[[listener]]
bind = "127.0.0.1:$tls"
transport = "tls"
allow_anonymous = true
tenant = "bench"
[listener.tls]
cert_file = "$pki/server.pem"
key_file = "$pki/server.key"
[limits]
max_connections = 20000
[storage]
data_dir = "$work/data"
[auth]
$1
CONF
}
config ""
cfg=(--config "$work/messs.toml")
devices=$(scale 10000)
$MESSS tenant add bench "${cfg[@]}" >/dev/null
echo 'pair-password-1' | $MESSS device add --tenant bench --username pair --password-stdin "${cfg[@]}" >/dev/null
$MESSS acl add --tenant bench --allow --topic '#' "${cfg[@]}" >/dev/null
hash=$(echo 'device-password' | $MESSS device hash-password "${cfg[@]}")
python3 -c "import sys; [print(f'dev{i},{sys.argv[1]}') for i in range(int(sys.argv[2]))]" "$hash" "$devices" >"$work/devices.csv"
$MESSS device import --tenant bench --file "$work/devices.csv" "${cfg[@]}"

start_messs() { RUST_LOG=warn $MESSS serve --admin-listen off "${cfg[@]}" >"$work/messs.log" 2>&1 & pid=$!; wait_port "$tcp"; wait_port "$tls"; }

# 1. Login flood. "elsewhere" sends the same attackers to a second broker on the same
# machine: what is left of the slowdown there is the machine's (two cores shared by the
# attackers, the pair and the broker), not the attacked broker's.
# "no-delay" answers refusals at once (auth.failure_delay_ms = 0): what the delay buys.
variants="lockout no-delay botnet elsewhere"
[ "$ONLY" = storm ] && variants=""
for variant in $variants; do
  case $variant in
    botnet) config "lockout_ip_threshold = 4000000000" ;;
    no-delay) config "failure_delay_ms = 0" ;;
    *) config "" ;;
  esac
  start_messs
  attack=()
  if [ "$variant" = elsewhere ]; then
    tcp2=$(free_port)
    printf '[[listener]]\nbind = "127.0.0.1:%s"\n[limits]\nmax_connections = 20000\n[storage]\ndata_dir = "%s"\n' \
      "$tcp2" "$work/data2" >"$work/messs2.toml"
    $MESSS tenant add bench --config "$work/messs2.toml" >/dev/null
    RUST_LOG=warn $MESSS serve --admin-listen off --config "$work/messs2.toml" >"$work/messs2.log" 2>&1 & pid2=$!
    wait_port "$tcp2"
    attack=(--attack-port "$tcp2")
  fi
  echo "security-bench: login flood ($variant)" >&2
  json=$($LOAD hostile --port "$tcp" --username pair@bench --password pair-password-1 \
    --attacks wrong-password --attackers $(scale 1000) --qos 1 --rate 1000 --count $(scale 10000) \
    --duration 30s --broker-pid "$pid" "${attack[@]}" --json 2>"$work/load.err") || { cat "$work/load.err" >&2; exit 1; }
  record "login-flood-$variant" messs "$json"
  stop
  if [ "$variant" = elsewhere ]; then kill "$pid2"; wait "$pid2" 2>/dev/null || true; fi
done
config ""

if [ "$ONLY" != flood ]; then
# 2. Known devices: first connection of each (argon2), then a reconnect of each (cached),
# the reconnect storm beside a bystander: a 1:1 QoS 1 pair at 2,000 msg/s for 4 s, the
# storm starting 0.5 s into it, so the pair's p99 is its worst 1% while the storm runs.
# The storm's connections are held 5 s, past the pair's run: all of them closing at once
# is measured on its own after it (a third pass, the pair started 2.5 s into a 4 s hold).
start_messs
for pass in first reconnect; do
  echo "security-bench: $devices known devices, $pass" >&2
  bystander=""
  if [ "$pass" = reconnect ]; then
    $LOAD bench --topology pairs --publishers 1 --qos 1 --payload 64 --rate 2000 --count 8000 \
      --duration 20s --port "$tcp" --username pair@bench --password pair-password-1 \
      --client-prefix bystander --json >"$work/bystander.json" 2>"$work/bystander.err" & bystander=$!
    sleep 0.5
  fi
  hold=0s
  [ "$pass" = reconnect ] && hold=5s
  json=$($LOAD conn --port "$tcp" --connections "$devices" --concurrency 64 --sources 256 --hold $hold \
    --username 'dev{i}@bench' --password device-password --duration 600s \
    --broker-pid "$pid" --json 2>"$work/load.err") || { cat "$work/load.err" >&2; exit 1; }
  record "known-devices-$pass" messs "$json"
  if [ -n "$bystander" ]; then
    wait "$bystander" || { cat "$work/bystander.err" >&2; exit 1; }
    record "storm-bystander" messs "$(cat "$work/bystander.json")"
  fi
done
echo "security-bench: $devices known devices closing at once" >&2
$LOAD conn --port "$tcp" --connections "$devices" --concurrency 64 --sources 256 --hold 4s \
  --username 'dev{i}@bench' --password device-password --duration 600s --json \
  >"$work/close.json" 2>"$work/load.err" & closing=$!
sleep 2.5
$LOAD bench --topology pairs --publishers 1 --qos 1 --payload 64 --rate 2000 --count 8000 \
  --duration 20s --port "$tcp" --username pair@bench --password pair-password-1 \
  --client-prefix bystander --json >"$work/bystander.json" 2>"$work/bystander.err" \
  || { cat "$work/bystander.err" >&2; exit 1; }
wait "$closing" || { cat "$work/load.err" >&2; exit 1; }
record "close-bystander" messs "$(cat "$work/bystander.json")"
stop
mport=$(free_port); mtls=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
user root
per_listener_settings false
allow_anonymous true
persistence false
max_connections -1
log_dest none
listener $mport 127.0.0.1
listener $mtls 127.0.0.1
cafile $pki/ca.pem
certfile $pki/server.pem
keyfile $pki/server.key
tls_version tlsv1.3
CONF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 & pid=$!
wait_port "$mport"
echo "security-bench: mosquitto anonymous connect storm" >&2
json=$($LOAD conn --port "$mport" --connections "$devices" --concurrency 256 --hold 0s \
  --duration 300s --broker-pid "$pid" --json 2>"$work/load.err") || { cat "$work/load.err" >&2; exit 1; }
record "anonymous-connects" mosquitto "$json"

if [ "$ONLY" != storm ]; then
# 3. TLS: connect rate and idle RSS, Mosquitto (still running) then messs.
conns=$(scale 5000)
echo "security-bench: mosquitto TLS $conns idle" >&2
json=$($LOAD conn --port "$mtls" --transport tls --tls-ca "$pki/ca.pem" --connections "$conns" \
  --concurrency 256 --hold 1s --duration 120s --broker-pid "$pid" --json 2>"$work/load.err") || { cat "$work/load.err" >&2; exit 1; }
record "tls-idle" mosquitto "$json"
stop
start_messs
echo "security-bench: messs TLS $conns idle" >&2
json=$($LOAD conn --port "$tls" --transport tls --tls-ca "$pki/ca.pem" --connections "$conns" \
  --concurrency 256 --hold 1s --duration 120s --broker-pid "$pid" --json 2>"$work/load.err") || { cat "$work/load.err" >&2; exit 1; }
record "tls-idle" messs "$json"
fi
stop
fi

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def get(s, b):
    return next(r["result"] for r in rows if r["scenario"] == s and r["broker"] == b)
def conn(s, b):
    r = get(s, b)
    o = r["outcome"]
    o["rss_mib"] = ((r.get("broker_during") or {}).get("rss_bytes") or 0) / 2**20
    return o, r.get("broker_rss_bytes_per_connection"), r.get("broker_cpu_us_per_connection")
print("| scenario | figure |")
print("|---|---|")
for v in ("lockout", "no-delay", "botnet", "elsewhere"):
    if not any(r["scenario"] == f"login-flood-{v}" for r in rows):
        continue
    r = get(f"login-flood-{v}", "messs")["outcome"]
    q, a = r["baseline"]["latency_us"]["p99"], r["attacked"]["latency_us"]["p99"]
    att = r["attackers"]
    peak = (r.get("broker_rss_peak") or 0) / 2**20
    print(f"| login flood ({v}) | pair p99 {q} us quiet, {a} us attacked ({a/q:.2f}x); "
          f"{att['connections']} attacker logins, {att['refused_or_closed']} refused; "
          f"pair rate ratio {r['rate_ratio']:.2f}; broker RSS peak {peak:.0f} MiB |")
if not any(r["scenario"] == "anonymous-connects" for r in rows):
    sys.exit(0)
for p in ("first", "reconnect"):
    r, _, cpu = conn(f"known-devices-{p}", "messs")
    print(f"| known devices, {p} | {r['connected']}/{r['attempted']} at {r['connects_per_s']:.0f} connects/s, "
          f"CONNACK p99 {r['connack_latency_us']['p99']} us, broker CPU {cpu or 0:.0f} us per connection, "
          f"RSS {r['rss_mib']:.0f} MiB |")
r, _, cpu = conn("anonymous-connects", "mosquitto")
print(f"| Mosquitto anonymous | {r['connected']}/{r['attempted']} at {r['connects_per_s']:.0f} connects/s, "
      f"CONNACK p99 {r['connack_latency_us']['p99']} us, broker CPU {cpu or 0:.0f} us per connection |")
if any(r["scenario"] == "storm-bystander" for r in rows):
    r = get("storm-bystander", "messs")["outcome"]
    lat = r["latency_us"]
    print(f"| bystander pair during the reconnect storm | p50 {lat['p50']} us, p99 {lat['p99']} us, "
          f"p99.9 {lat['p999']} us, max {lat['max']} us; lost {r.get('lost', 0)} |")
if any(r["scenario"] == "close-bystander" for r in rows):
    r = get("close-bystander", "messs")["outcome"]
    lat = r["latency_us"]
    print(f"| bystander pair while the devices close at once | p50 {lat['p50']} us, p99 {lat['p99']} us, "
          f"p99.9 {lat['p999']} us, max {lat['max']} us; lost {r.get('lost', 0)} |")
if not any(r["scenario"] == "tls-idle" for r in rows):
    sys.exit(0)
for b in ("messs", "mosquitto"):
    r, per, cpu = conn("tls-idle", b)
    print(f"| TLS idle, {b} | {r['connected']}/{r['attempted']} at {r['connects_per_s']:.0f} connects/s; "
          f"RSS {per or 0:.0f} B and CPU {cpu or 0:.0f} us per connection |")
PY
echo "security-bench: results in $results" >&2
