#!/usr/bin/env bash
# What scraping /metrics costs the broker, two ways:
#  1. CPU per scrape: the broker's CPU time (utime+stime from /proc) over N back-to-back
#     scrapes, with TENANTS tenants (per-tenant families grow with tenants); at one scrape a
#     second that is the share of one core it takes.
#  2. Throughput A/B: QoS 0 fan-in (4 publishers, 64 B) with and without a scraper hitting
#     /metrics every second, ROUNDS rounds interleaved on one broker build; medians.
#   [N=2000] [TENANTS=100] [ROUNDS=5] bash loadtest/scrape-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
ensure_cmd curl curl
N=${N:-2000}
TENANTS=${TENANTS:-100}
ROUNDS=${ROUNDS:-5}
cargo build --release --locked -q -p messs -p messs-load
LOAD=./target/release/messs-load
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

start() { # mqtt-port admin-port
  MESSS_ADMIN_PASSWORD='scrape-cost-Operator-1' RUST_LOG=warn ./target/release/messs serve --listen "tcp://127.0.0.1:$1" \
    --admin-listen "127.0.0.1:$2" --data-dir "$work/data" >"$work/messs.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "scrape-cost: broker did not start" >&2; cat "$work/messs.log" >&2; exit 1
}

# --- 1. CPU per scrape ---
mport=$(free_port); aport=$(free_port)
start "$mport" "$aport"
# Tenants for the per-tenant families (registry tenants: their series exist without clients).
key=$(python3 interop/admin_session.py "http://127.0.0.1:$aport" admin 'scrape-cost-Operator-1')
for i in $(seq 1 "$TENANTS"); do
  curl -sf "http://127.0.0.1:$aport/api/v1/tenants" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' -d "{\"id\":\"t$i\"}" >/dev/null
done
series=$(curl -s "http://127.0.0.1:$aport/metrics" | grep -vc '^#')
bytes=$(curl -s "http://127.0.0.1:$aport/metrics" | wc -c)
before=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
for _ in $(seq 1 "$N"); do curl -s -o /dev/null "http://127.0.0.1:$aport/metrics"; done
after=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
python3 - "$before" "$after" "$hz" "$N" "$series" "$bytes" "$t0" "$t1" <<'PY'
import sys
b, a, hz, n, series, size, t0, t1 = sys.argv[1:]
cpu_s = (int(a) - int(b)) / int(hz)
per = cpu_s / int(n) * 1e6
print(f"scrape-cost: {series} series, {size} bytes per scrape; {n} scrapes in {float(t1)-float(t0):.1f} s: "
      f"{per:.0f} µs of broker CPU each -> {per / 1e6 * 100:.4f}% of one core at one scrape a second")
PY
kill "$pid"; wait "$pid" 2>/dev/null || true
rm -rf "$work/data"

# --- 2. Throughput with and without a 1 Hz scraper ---
mport=$(free_port); aport=$(free_port)
start "$mport" "$aport"
pids+=("$pid")
run() { # label
  local scraper=""
  if [ "$1" = scraped ]; then
    (while :; do curl -s -o /dev/null "http://127.0.0.1:$aport/metrics"; sleep 1; done) &
    scraper=$!
  fi
  local out
  out=$($LOAD bench --topology fan-in --publishers 4 --qos 0 --payload 64 --count 2000000 \
    --duration 15s --port "$mport" --protocol 4 --broker-pid "$pid" --client-prefix "sc-$1" --json)
  [ -n "$scraper" ] && { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
  echo "$1 $(echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["outcome"]["delivered_per_s"], r.get("broker_cpu_us_per_delivered"))')"
}
results="$work/ab"
for _ in $(seq "$ROUNDS"); do
  run plain | tee -a "$results"
  run scraped | tee -a "$results"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(label, i): return statistics.median(float(r[i]) for r in rows if r[0] == label)
p, s = med("plain", 1), med("scraped", 1)
pc, sc = med("plain", 2), med("scraped", 2)
print(f"scrape-cost: QoS 0 fan-in medians of {len(rows)//2}: {p:,.0f} msg/s plain, {s:,.0f} scraped "
      f"({s/p:.3f}x); broker CPU {pc:.3f} vs {sc:.3f} µs/msg ({sc/pc:.3f}x)")
PY
