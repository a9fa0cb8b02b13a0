#!/usr/bin/env bash
# What authentication and ACLs cost on the hot path: QoS 0 fan-in (4 publishers, 1
# wildcard subscriber) against messs in the try-out setup (anonymous, every topic allowed,
# no ACL check) and against messs with password logins and eight ACL rules, the matching
# allow rule last, so every publish walks all of them. Interleaved rounds, same binary.
#
#   loadtest/acl-cost.sh            # 3 rounds of 2,000,000 messages each way
#   ROUNDS=1 COUNT=200000 loadtest/acl-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
use_prebuilt_rocksdb
cargo build --release --locked -q -p messs -p messs-load
MESSS=./target/release/messs
LOAD=./target/release/messs-load
ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-2000000}
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/acl.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$port"
[storage]
data_dir = "$work/acl-data"
CONF
cfg=(--config "$work/acl.toml")
$MESSS tenant add bench "${cfg[@]}" >/dev/null
echo 'bench-password-1' | $MESSS device add --tenant bench --username load --password-stdin "${cfg[@]}" >/dev/null
for i in 1 2 3 4 5 6 7; do
  $MESSS acl add --tenant bench --deny --topic "secret/$i/#" "${cfg[@]}" >/dev/null
done
$MESSS acl add --tenant bench --allow --topic 'messs-load/#' "${cfg[@]}" >/dev/null

run() { # run NAME -- broker args... ; then load args
  local name=$1; shift
  RUST_LOG=warn $MESSS serve --admin-listen off "$@" >"$work/messs.log" 2>&1 & pid=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null && break
    sleep 0.05
  done
  local creds=()
  [ "$name" = acl ] && creds=(--username load@bench --password bench-password-1)
  $LOAD bench --port "$port" --topology fan-in --publishers 4 --qos 0 --payload 64 \
    --count "$COUNT" --duration 20s "${creds[@]}" --json 2>/dev/null |
    python3 -c "import json,sys; r=json.load(sys.stdin)['outcome']; print(f\"$name: {r['delivered_per_s']:.0f} msg/s delivered, lost {r['lost']}\")"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}
for round in $(seq 1 "$ROUNDS"); do
  run try-out --listen "tcp://127.0.0.1:$port" --data-dir "$work/tryout-data"
  run acl "${cfg[@]}"
done
