#!/usr/bin/env bash
# Interop check of a real device login over TLS 1.3: certificates made with openssl (a
# server CA and server certificate, a tenant CA and a device certificate), the registry
# set up with the messs CLI, then mosquitto_pub/mosquitto_sub and paho-mqtt logging in
# with a password and with a client certificate, at MQTT 3.1.1 and 5.0, and refused with
# a wrong password. Installs openssl and mosquitto-clients when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_cmd openssl openssl
ensure_cmd mosquitto_sub mosquitto-clients
use_prebuilt_rocksdb
cargo build -q --bin messs
messs=./target/debug/messs

work=$(mktemp -d)
log="$work/messs.log"
broker=""
cleanup() { [ -n "$broker" ] && kill "$broker" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "interop: FAIL: $*" >&2; echo "--- broker log ---" >&2; tail -n 30 "$log" >&2 || true; exit 1; }

# --- certificates (P-256, valid two days) ---
pki="$work/pki"; mkdir -p "$pki"
ca() { # ca NAME CN
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$pki/$1.key" -out "$pki/$1.pem" -subj "/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
}
leaf() { # leaf NAME CN CA EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%b' "$4" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$3.pem" -CAkey "$pki/$3.key" \
    -CAcreateserial -days 2 -out "$pki/$1.pem" -extfile "$pki/$1.ext" 2>/dev/null
}
ca server-ca "messs interop server CA"
leaf server localhost server-ca "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
ca acme-ca "acme devices CA"
leaf meter meter-7 acme-ca "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
ca rogue-ca "a CA nobody trusts"
leaf rogue meter-7 rogue-ca "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"

# --- configuration and registry ---
cat >"$work/messs.toml" <<CONF
[[listener]]
bind = "127.0.0.1:0"
transport = "tls"
[listener.tls]
cert_file = "$pki/server.pem"
key_file = "$pki/server.key"
[storage]
data_dir = "$work/data"
CONF
cfg=(--config "$work/messs.toml")
$messs tenant add acme "${cfg[@]}" >/dev/null
echo 'sensor-password-1' | $messs device add --tenant acme --username sensor1 --password-stdin "${cfg[@]}" >/dev/null
$messs ca add --tenant acme --cert-file "$pki/acme-ca.pem" "${cfg[@]}" >/dev/null
# A certificate logs in as a device that exists (no password: its certificate is its credential).
$messs device add --tenant acme --username meter-7 "${cfg[@]}" >/dev/null
$messs acl add --tenant acme --allow --topic 'plant/#' "${cfg[@]}" >/dev/null
$messs acl add --tenant acme --allow --action publish --topic 'devices/%u/#' "${cfg[@]}" >/dev/null
# A tenant limit through the CLI (generous: the logins below stay well inside it).
$messs tenant set-limit acme max_connections 50 "${cfg[@]}" >/dev/null
$messs tenant list "${cfg[@]}" | grep -q 'max_connections=50' || fail "tenant limit not listed"
$messs tenant set-limit acme max_conections 5 "${cfg[@]}" >/dev/null 2>&1 && fail "a misspelt limit was taken"

RUST_LOG=info $messs serve --admin-listen off "${cfg[@]}" >"$log" 2>&1 &
broker=$!
port=$(broker_port "$log" tls)
[ -n "$port" ] || fail "broker did not start"
echo "interop: messs TLS listener on 127.0.0.1:$port"

tls=(-h 127.0.0.1 -p "$port" --cafile "$pki/server-ca.pem")
password=(-u sensor1@acme -P sensor-password-1)
cert=(--cert "$pki/meter.pem" --key "$pki/meter.key")
# Waits until the mosquitto_sub writing (with -d) to $1 has its SUBACK: a first password
# login runs argon2 at a low priority and can take seconds on a busy machine.
subscribed() {
  for _ in $(seq 1 200); do grep -qi 'received SUBACK' "$1" 2>/dev/null && return 0; sleep 0.05; done
  fail "subscriber not subscribed within 10 s: $(cat "$1")"
}
for v in mqttv311 mqttv5; do
  # A password subscriber gets what a certificate publisher sends, and the reverse.
  out="$work/sub-$v"
  stdbuf -oL mosquitto_sub -d "${tls[@]}" "${password[@]}" -V "$v" -q 1 -t "plant/$v" -C 1 -W 15 >"$out" &
  sub=$!
  subscribed "$out"
  mosquitto_pub "${tls[@]}" "${cert[@]}" -V "$v" -q 1 -t "plant/$v" -m "from-meter-7" \
    || fail "$v: certificate login refused"
  wait "$sub" || fail "$v: password subscriber got nothing"
  grep -qx from-meter-7 "$out" || fail "$v: got '$(cat "$out")'"
  out="$work/sub2-$v"
  stdbuf -oL mosquitto_sub -d "${tls[@]}" "${cert[@]}" -V "$v" -q 1 -t "plant/back/$v" -C 1 -W 15 >"$out" &
  sub=$!
  subscribed "$out"
  mosquitto_pub "${tls[@]}" "${password[@]}" -V "$v" -q 1 -t "plant/back/$v" -m "from-sensor1" \
    || fail "$v: password login refused"
  wait "$sub" || fail "$v: certificate subscriber got nothing"
  grep -qx from-sensor1 "$out" || fail "$v: got '$(cat "$out")'"
  # Refused: a wrong password, and a certificate from a CA no tenant trusts.
  if mosquitto_pub "${tls[@]}" -u sensor1@acme -P wrong-password -V "$v" -q 1 -t plant/x -m x 2>"$work/err"; then
    fail "$v: a wrong password was accepted"
  fi
  if mosquitto_pub "${tls[@]}" --cert "$pki/rogue.pem" --key "$pki/rogue.key" -V "$v" -q 1 -t plant/x -m x 2>/dev/null; then
    fail "$v: an untrusted client certificate was accepted"
  fi
  echo "interop: mosquitto clients $v over TLS: password login, client-certificate login, wrong password and untrusted CA refused: ok"
done

python3 interop/paho_tls.py 127.0.0.1 "$port" "$pki" || fail "paho-mqtt TLS checks"
echo "interop: TLS logins: all checks passed"
