#!/usr/bin/env bash
# Runs every OneStack test, installing what the tests need first (a Python venv with the real
# openstack CLI). Safe to run again: installs are cached outside the work tree.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${ONESTACK_TEST_CACHE:-/var/cache/onestack-ci}"
mkdir -p "$CACHE" 2>/dev/null || CACHE="$PWD/.cache"
mkdir -p "$CACHE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"

step() { printf '\n==> %s\n' "$*"; }

step "Python venv with the openstack CLI (tests/e2e/requirements.txt)"
VENV="$CACHE/venv"
STAMP="$VENV/.requirements.sha256"
WANT=$(sha256sum tests/e2e/requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/openstack" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/e2e/requirements.txt
  echo "$WANT" > "$STAMP"
fi

step "Headless Chromium (Debian's) and Playwright for the dashboard's browser tests"
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
export ONESTACK_REQUIRE_BROWSER=1

step "PostgreSQL server for the PostgreSQL back end (private cluster on loopback)"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
PGDATA=$(mktemp -d /tmp/onestack-pg.XXXXXX)
chown postgres "$PGDATA"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
stop_pg() {
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast stop" >/dev/null 2>&1 || true
  rm -rf "$PGDATA"
}
trap stop_pg EXIT
su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $PGDATA -w -l $PGDATA/server.log -o '-k $PGDATA -c listen_addresses=127.0.0.1 -p $PGPORT' start" >/dev/null
export ONESTACK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"

step "QEMU, ISO and SSH tools for the guest image tests"
# Debian's qemu-system-x86 needs the matching qemu-utils (a newer backport blocks it).
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v genisoimage >/dev/null \
    || ! command -v ssh >/dev/null || ! command -v readelf >/dev/null; then
  apt-get update -qq
  QEMU_V=$(apt-cache madison qemu-system-x86 | awk -F'|' 'NR==1 {gsub(/ /, "", $2); print $2}')
  UTILS_V=$(apt-cache madison qemu-utils | awk -F'|' 'NR==1 {gsub(/ /, "", $2); print $2}')
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades --no-install-recommends \
    "qemu-system-x86=$QEMU_V" "qemu-utils=$UTILS_V" genisoimage openssh-client binutils >/dev/null
fi
# apt-get download (the image builder) needs package lists.
ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -qq
export ONESTACK_IMAGE_CACHE="$CACHE/images"

step "Networking tools for the data plane tests (nftables, dnsmasq, iproute2, ping)"
if ! command -v nft >/dev/null || ! command -v dnsmasq >/dev/null || ! command -v ping >/dev/null \
    || ! command -v ip >/dev/null || ! command -v busybox >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nftables dnsmasq-base iproute2 iputils-ping busybox debootstrap >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "unit and integration tests"
cargo test --workspace --quiet 2>&1 | tee "$CACHE/cargo-test.log"

step "the API suite again, on PostgreSQL (a fresh database per test)"
ONESTACK_TEST_STORE=postgres cargo test -p onestack-api --quiet 2>&1 | tee "$CACHE/cargo-test-pg.log"

step "end-to-end tests (real binary, real openstack CLI)"
cargo build --quiet -p onestack
export ONESTACK_BIN="$CARGO_TARGET_DIR/debug/onestack"
# The clouds of the e2e tests run in network namespaces with no route to the package mirror: the
# default guest image is built here, outside them, once (cached by its inputs).
"$ONESTACK_BIN" image build-default --cache-dir "$ONESTACK_IMAGE_CACHE"
export OPENSTACK_CLI="$VENV/bin/openstack"
"$VENV/bin/python" -m pytest -q tests/e2e
