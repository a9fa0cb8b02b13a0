#!/usr/bin/env bash
# Disk-full drill on a real file system: the messs binary with its data directory on a
# 96 MiB tmpfs and a 32 MiB free-space watermark (RocksDB needs 16 MiB free to resume after
# a full disk, so the watermark's lower half must hold at least that). Needs root (it
# mounts the tmpfs); .ci/run runs it.
#  1. A QoS 1 message for a persistent session is acknowledged.
#  2. The tmpfs is filled to the last byte: the same publish is refused with PUBACK 0x80;
#     anonymous connection churn still connects and writes nothing; the operator disables
#     a device through the admin API (written from the reserved margin).
#  3. The filler is deleted: publishes succeed again with no restart.
#  4. Churn within twice the watermark (48 MiB free) costs no disk and publishes still
#     succeed; churn alone below the watermark: the tmpfs is filled to 24 MiB free (below the
#     watermark, above its half) and churned for 5 s: it costs no disk, and the audit log
#     holds a summary (audit.withheld) instead of two records per connection.
#  5. A burst of 256 KiB messages 8 MiB above the watermark: free space never goes below
#     half of it (admitted writes count before the disk shows them).
#  6. With the watermark off, messages fill the disk under RocksDB itself (a background
#     error that stops all its writes); once space is freed RocksDB resumes by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
if [ "$(id -u)" != 0 ]; then
  echo "disk-full drill: needs root to mount a tmpfs" >&2
  exit 1
fi
work=$(mktemp -d)
fs="$work/fs"
mkdir -p "$fs"
mount -t tmpfs -o size=96m tmpfs "$fs"
broker=""
cleanup() {
  [ -n "$broker" ] && kill "$broker" 2>/dev/null; wait 2>/dev/null || true
  umount "$fs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/messs.toml" <<CONF
[[listener]]
bind = "127.0.0.1:0"
allow_anonymous = true
tenant = "default"
[acl]
tenant_without_rules = "allow"
[storage]
data_dir = "$fs/data"
min_free_disk_bytes = 33554432
[admin]
bind = "127.0.0.1:0"
CONF
use_prebuilt_rocksdb
cargo build -q --bin messs
MESSS_ADMIN_PASSWORD='drill-Operator-Pass-9' RUST_LOG=info ./target/debug/messs serve \
  --config "$work/messs.toml" >"$work/messs.log" 2>&1 &
broker=$!
port=$(broker_port "$work/messs.log")
[ -n "$port" ] || { echo "disk-full drill: broker did not start"; cat "$work/messs.log"; exit 1; }
admin=$(admin_addr "$work/messs.log")
fail() { echo "disk-full drill: FAIL: $*" >&2; tail -n 20 "$work/messs.log" >&2; exit 1; }
avail() { df -B1 --output=avail "$fs" | tail -n1 | tr -d ' '; }
key=$(python3 interop/admin_session.py "http://$admin" admin 'drill-Operator-Pass-9') || fail "admin login"
python3 interop/disk_full.py "$port" setup || fail "setup"
python3 interop/disk_full.py "$port" publish-ok || fail "publish before the disk is full"

dd if=/dev/zero of="$fs/filler" bs=1M 2>/dev/null || true   # until ENOSPC
echo "disk-full drill: tmpfs full ($(avail) bytes left)"
python3 interop/disk_full.py "$port" publish-refused || fail "publish on a full disk"
python3 interop/churn.py "$port" 3 || fail "connections refused on a full disk"
python3 - "http://$admin" "$key" <<'PY' || fail "disabling a device on a full disk"
import sys
sys.path.insert(0, "interop")
from admin_session import call
base, key = sys.argv[1:3]
path = "/api/v1/tenants/demo/devices/dev1"
status, body = call(base, "PATCH", path, key, {"enabled": False})
assert status == 200, (status, body)
status, device = call(base, "GET", path, key)
assert status == 200 and device["enabled"] is False, (status, device)
PY
echo "disk-full drill: full disk: publishes refused, churn connected, device disabled by the operator"
kill -0 "$broker" || fail "the broker died"

rm -f "$fs/filler"
for _ in $(seq 20); do   # RocksDB polls for free space every 5 s if it hit the full disk
  python3 interop/disk_full.py "$port" publish-ok >/dev/null 2>&1 && break
  sleep 0.5
done
python3 interop/disk_full.py "$port" publish-ok || fail "publish after space was freed"
grep -q "free disk space is below" "$work/messs.log" || fail "no log line about the full disk"

# Anonymous connection churn for 5 s with the tmpfs filled to $1 bytes free ($2 says
# where that is): it must cost no disk.
churn_costs_no_disk() {
  dd if=/dev/zero of="$fs/filler" bs=1M count=$(( ($(avail) - $1) / 1048576 )) 2>/dev/null
  local before after
  before=$(avail)
  python3 interop/churn.py "$port" 5 || fail "churn $2"
  sleep 0.5
  after=$(avail)
  echo "disk-full drill: churn $2: $before -> $after bytes free"
  [ $((before - after)) -lt $((1024 * 1024)) ] || fail "churn $2 took $((before - after)) bytes"
}

# Churn within twice the watermark (48 MiB free): it is summed up already, so it cannot
# bring the disk down to where messages are refused (the outside audit's finding).
churn_costs_no_disk $((48 * 1024 * 1024)) "within twice the watermark"
python3 interop/disk_full.py "$port" publish-ok || fail "a publish after churn within the margin"
rm -f "$fs/filler"

# Churn alone, below the watermark.
churn_costs_no_disk $((24 * 1024 * 1024)) "below the watermark"
grep -q "summed up in audit.withheld" "$work/messs.log" || fail "no log line about withheld audit records"
rm -f "$fs/filler"
kill -0 "$broker" || fail "the broker died"

# A burst of large messages from one client, 8 MiB above the watermark: what was admitted
# counts before the disk shows it, so free space never goes below the bookkeeping floor;
# once the queue is drained, the space comes back (the log is flushed away).
left=$((40 * 1024 * 1024))
dd if=/dev/zero of="$fs/filler" bs=1M count=$(( ($(avail) - left) / 1048576 )) 2>/dev/null
python3 interop/disk_full.py "$port" burst || fail "a burst of large messages"
sleep 1
low=$(avail)
echo "disk-full drill: after the burst $low bytes free (watermark 33554432)"
[ "$low" -ge $((16 * 1024 * 1024)) ] || fail "a burst took free space to $low, below half the watermark"
python3 interop/disk_full.py "$port" drain || fail "draining the queue"
rm -f "$fs/filler"
sleep 6   # the writer flushes the memtables every 5 s while space is low
python3 interop/disk_full.py "$port" publish-ok || fail "publish after the burst was drained"

# RocksDB's own full disk: with the watermark off, messages fill the file system until a
# write-ahead log append fails; RocksDB stops every write (a background error) and must
# resume by itself once space is back, with no restart.
kill "$broker"; wait "$broker" 2>/dev/null || true
sed -i 's/^min_free_disk_bytes = .*/min_free_disk_bytes = 0/' "$work/messs.toml"
RUST_LOG=info ./target/debug/messs serve --admin-listen off --config "$work/messs.toml" \
  >"$work/messs.log" 2>&1 &
broker=$!
port=$(broker_port "$work/messs.log")
[ -n "$port" ] || fail "the broker did not start again"
left=$((24 * 1024 * 1024))
dd if=/dev/zero of="$fs/filler" bs=1M count=$(( ($(avail) - left) / 1048576 )) 2>/dev/null
python3 interop/disk_full.py "$port" flood || fail "flooding to a full disk"
grep -q "storage write failed" "$work/messs.log" || fail "RocksDB never found the disk full"
rm -f "$fs/filler"
started=$(date +%s)
for _ in $(seq 30); do   # RocksDB looks for free space every 5 s
  python3 interop/disk_full.py "$port" publish-ok >/dev/null 2>&1 && break
  sleep 0.5
done
python3 interop/disk_full.py "$port" publish-ok || fail "RocksDB did not resume after space was freed"
echo "disk-full drill: RocksDB resumed by itself $(( $(date +%s) - started )) s after space was freed"
kill -0 "$broker" || fail "the broker died"
echo "disk-full drill: ok (refused while full, churn costs no disk below the watermark, the operator acted while full, recovered without a restart, RocksDB resumed after its own full disk)"
