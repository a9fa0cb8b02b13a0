#!/usr/bin/env bash
# Disk-full drill on a real file system: the messs binary with its data directory on a
# 64 MiB tmpfs. A QoS 1 message for a persistent session is acknowledged; the tmpfs is then
# filled until it has no space left, and the same publish is refused with PUBACK 0x80 while
# the broker keeps running; the filler is deleted and the publish succeeds again, with no
# restart. Needs root (it mounts the tmpfs); .ci/run runs it.
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
mount -t tmpfs -o size=64m tmpfs "$fs"
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
min_free_disk_bytes = 8388608
CONF
use_prebuilt_rocksdb
cargo build -q --bin messs
RUST_LOG=info ./target/debug/messs serve --admin-listen off --config "$work/messs.toml" >"$work/messs.log" 2>&1 &
broker=$!
port=$(broker_port "$work/messs.log")
[ -n "$port" ] || { echo "disk-full drill: broker did not start"; cat "$work/messs.log"; exit 1; }
fail() { echo "disk-full drill: FAIL: $*" >&2; tail -n 20 "$work/messs.log" >&2; exit 1; }
python3 interop/disk_full.py "$port" setup || fail "setup"
python3 interop/disk_full.py "$port" publish-ok || fail "publish before the disk is full"
dd if=/dev/zero of="$fs/filler" bs=1M 2>/dev/null || true   # until ENOSPC
echo "disk-full drill: tmpfs full ($(df -h --output=avail "$fs" | tail -n1 | tr -d ' ') left)"
sleep 0.3
python3 interop/disk_full.py "$port" publish-refused || fail "publish on a full disk"
kill -0 "$broker" || fail "the broker died"
rm -f "$fs/filler"
sleep 0.3
python3 interop/disk_full.py "$port" publish-ok || fail "publish after space was freed"
grep -q "free disk space is below" "$work/messs.log" || fail "no log line about the full disk"
echo "disk-full drill: ok (refused while full, recovered without a restart)"
