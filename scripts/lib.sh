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
# ensure_cmd COMMAND DEBIAN-PACKAGE: installs the package when the command is missing.
ensure_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: '$1' is missing and apt-get is not available; install the package that provides '$1' ($2 on Debian)." >&2
    exit 1
  fi
  echo "installing $2 (for '$1')"
  if [ -z "$_apt_updated" ]; then
    as_root apt-get update -qq
    _apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
