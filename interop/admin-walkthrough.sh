#!/usr/bin/env bash
# The README's operator walkthrough, run as written (ephemeral ports instead of 1883/8080):
# log in with MFA, add a tenant, a device and an ACL rule, watch the device connect, publish
# to it, kick it, read the audit log. Fails if any step's answer differs from the README's.
# Needs curl, jq, oathtool and mosquitto-clients (installed on Debian when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd curl curl
ensure_cmd jq jq
ensure_cmd oathtool oathtool
ensure_cmd mosquitto_sub mosquitto-clients
use_prebuilt_rocksdb
cargo build -q --bin messs
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "walkthrough: FAIL: $*" >&2; tail -n 20 "$work/messs.log" >&2; exit 1; }

printf '[[listener]]\nbind = "127.0.0.1:0"\n[admin]\nbind = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n' "$work" >"$work/messs.toml"
MESSS_ADMIN_PASSWORD='choose-a-long-one-42' ./target/debug/messs serve --config "$work/messs.toml" >"$work/messs.log" 2>&1 &
pids+=($!)
port=$(broker_port "$work/messs.log")
admin=$(admin_addr "$work/messs.log")
[ -n "$port" ] && [ -n "$admin" ] || fail "broker did not start"

# --- as in the README ---
api=http://$admin/api/v1
json='content-type: application/json'
tok=$(curl -s $api/auth/login -H "$json" \
  -d '{"username":"admin","password":"choose-a-long-one-42"}' | jq -r .access_token)
secret=$(curl -s -X POST $api/auth/totp/enrol -H "authorization: Bearer $tok" | jq -r .secret)
codes=$(curl -s $api/auth/totp/confirm -H "authorization: Bearer $tok" -H "$json" \
  -d "{\"code\":\"$(oathtool --totp -b "$secret")\"}" | jq -r '.recovery_codes | length')
[ "$codes" = 10 ] || fail "TOTP enrolment gave $codes recovery codes"
tok=$(curl -s $api/auth/login -H "$json" -d "{\"username\":\"admin\",\"password\":\"choose-a-long-one-42\",\"totp\":\"$(oathtool --totp -b -N '+30 seconds' "$secret")\"}" | jq -r .access_token)
auth="authorization: Bearer $tok"
[ "$(curl -s $api/auth/me -H "$auth" | jq -r .role)" = superadmin ] || fail "MFA login"
curl -sf $api/tenants -H "$auth" -H "$json" -d '{"id":"acme"}' >/dev/null || fail "add tenant"
curl -sf $api/tenants/acme/devices -H "$auth" -H "$json" \
  -d '{"username":"sensor1","password":"sensor1-secret-pw"}' >/dev/null || fail "add device"
curl -sf $api/tenants/acme/acl -H "$auth" -H "$json" \
  -d '{"allow":true,"action":"both","filter":"plant/#"}' >/dev/null || fail "add rule"
mosquitto_sub -h 127.0.0.1 -p "$port" -i sensor1 -u sensor1@acme -P sensor1-secret-pw \
  -t 'plant/#' -v -C 1 >"$work/sub.out" &
pids+=($!)
for _ in $(seq 1 50); do
  [ "$(curl -s $api/tenants/acme/clients -H "$auth" | jq -r '.items[0].client_id')" = sensor1 ] && break
  sleep 0.1
done
curl -s $api/tenants/acme/clients -H "$auth" | jq -e '.items[0] | .username == "sensor1" and .protocol == "3.1.1"' >/dev/null \
  || fail "the device is not listed as connected"
[ "$(curl -s $api/tenants/acme/publish -H "$auth" -H "$json" -d '{"topic":"plant/boiler","payload":"on"}' | jq -r .matched)" = 1 ] \
  || fail "publish"
for _ in $(seq 1 50); do [ -s "$work/sub.out" ] && break; sleep 0.1; done
[ "$(cat "$work/sub.out")" = "plant/boiler on" ] || fail "the device got '$(cat "$work/sub.out")'"
mosquitto_sub -h 127.0.0.1 -p "$port" -i sensor1 -u sensor1@acme -P sensor1-secret-pw -t 'plant/#' >/dev/null &
pids+=($!)
sleep 0.5
[ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE $api/tenants/acme/clients/sensor1 -H "$auth")" = 204 ] || fail "kick"
curl -s "$api/audit?limit=1000" -H "$auth" \
  | jq -r '.items[] | "\(.seq) \(.actor) \(.action) \(.detail)"' >"$work/audit"
for want in "admin admin.login" "admin tenant.add" "admin device.add" "broker client.connect sensor1@acme" "broker client.kick"; do
  grep -q "$want" "$work/audit" || fail "audit log lacks '$want'"
done
[ "$(curl -s $api/audit/verify -H "$auth" | jq -r .intact)" = true ] || fail "audit chain"
echo "walkthrough: ok"
