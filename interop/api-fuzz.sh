#!/usr/bin/env bash
# The admin API against its own OpenAPI document: schemathesis (PyPI) generates requests for
# every documented operation, logged in with a superadmin API key, and fails on any 5xx, any
# status, content type, header or body the document does not describe, a schema-violating
# request that is accepted, and an operation that works without credentials. One check is
# left out: positive_data_acceptance (ST202, "a schema-valid request was rejected"), because
# the API validates more than a JSON schema can say (a tenant must exist, a ban must parse
# as an address, a role goes with a tenant) and answers those with 400 by design. The broker
# is the real messs binary on ephemeral loopback ports with a temporary data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "api-fuzz: installing schemathesis into $venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q 'schemathesis>=4,<5' || {
    echo "api-fuzz: could not install schemathesis from PyPI" >&2; exit 1; }
fi
use_prebuilt_rocksdb
cargo build -q --bin messs
work=$(mktemp -d)
log="$work/messs.log"
MESSS_ADMIN_PASSWORD='api-fuzz-Operator-9' RUST_LOG=info ./target/debug/messs serve \
  --listen tcp://127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$work/data" >"$log" 2>&1 &
broker=$!
cleanup() { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
admin=$(admin_addr "$log")
[ -n "$admin" ] || { echo "api-fuzz: the admin plane did not start:"; cat "$log"; exit 1; }
base="http://$admin"
key=$(python3 interop/admin_session.py "$base" admin 'api-fuzz-Operator-9')
echo "api-fuzz: admin plane at $base; running schemathesis"
"$venv/bin/schemathesis" --config-file interop/schemathesis.toml run "$base/api/v1/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "${EXAMPLES:-25}" \
  --seed 1 \
  ${SCHEMATHESIS_ARGS:-}
if ! kill -0 "$broker" 2>/dev/null; then
  echo "api-fuzz: the broker died under the run:" >&2; tail -n 40 "$log" >&2; exit 1
fi
echo "api-fuzz: ok"
