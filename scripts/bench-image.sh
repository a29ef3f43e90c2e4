#!/usr/bin/env bash
# Benchmark: image upload and download throughput (MB/s) of a 1 GiB image, with raw HTTP (curl)
# and with the real `openstack` CLI, against the 500 MB/s goal and against this disk's own
# sequential write speed (dd with fsync, the floor an upload that must be durable cannot beat).
# Bounded: one run of each. Starts its own cloud in a temporary data dir and stops it on exit.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
VENV="${ONESTACK_VENV:-/var/cache/onestack-ci/venv}"
GOAL=500
SIZE_MIB=${SIZE_MIB:-1024}

cargo build --release --quiet -p onestack
BIN="$CARGO_TARGET_DIR/release/onestack"
TMP=$(mktemp -d "${BENCH_DIR:-/var/tmp}/onestack-bench.XXXXXX")
cleanup() { "$BIN" down --data-dir "$TMP/data" >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
IPORT=$(free_port); GPORT=$(free_port)
printf '[api]\nlisten = "127.0.0.1"\nidentity_port = %s\nimage_port = %s\n[image]\ndefault_image = false\n' \
  "$IPORT" "$GPORT" > "$TMP/onestack.toml"
"$BIN" up --data-dir "$TMP/data" --config "$TMP/onestack.toml" --no-demo >/dev/null
export OS_CLIENT_CONFIG_FILE="$TMP/data/clouds.yaml"
OS="$VENV/bin/openstack --os-cloud onestack-admin"
G="http://127.0.0.1:$GPORT"

SRC="$TMP/src.img"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$SRC"
sync
mbps() { python3 -c "import sys; print(f'{$SIZE_MIB * 1048576 / 1e6 / float(sys.argv[1]):.0f}')" "$1"; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
now() { date +%s.%N; }

t0=$(now); dd if="$SRC" of="$TMP/dd.out" bs=1M conv=fsync status=none; t1=$(now)
DISK=$(mbps "$(secs "$t0" "$t1")"); rm -f "$TMP/dd.out"

TOKEN=$($OS token issue -f value -c id)
new_image() {
  curl -sS -X POST -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"name\": \"$1\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}" "$G/v2/images" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

ID=$(new_image http)
t0=$(now)
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$SRC" -H "X-Auth-Token: $TOKEN" \
  -H 'Content-Type: application/octet-stream' "$G/v2/images/$ID/file")
t1=$(now)
[ "$code" = 204 ] || { echo "upload answered $code" >&2; exit 1; }
HTTP_UP=$(mbps "$(secs "$t0" "$t1")")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now)
curl -sS -o /dev/null -H "X-Auth-Token: $TOKEN" "$G/v2/images/$ID/file"
t1=$(now)
HTTP_DOWN=$(mbps "$(secs "$t0" "$t1")")
curl -sS -X DELETE -H "X-Auth-Token: $TOKEN" "$G/v2/images/$ID"

t0=$(now)
$OS image create --file "$SRC" --disk-format raw --container-format bare cli >/dev/null
t1=$(now)
CLI_UP=$(mbps "$(secs "$t0" "$t1")")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now)
$OS image save --file "$TMP/cli.out" cli
t1=$(now)
CLI_DOWN=$(mbps "$(secs "$t0" "$t1")")
cmp -s "$SRC" "$TMP/cli.out" || { echo "downloaded image differs from the upload" >&2; exit 1; }

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
echo "image throughput, ${SIZE_MIB} MiB, $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); client on the same cores"
echo "disk sequential write (dd conv=fsync): $DISK MB/s"
printf '%-22s %6s MB/s  %5sx goal (%s MB/s)  %5sx disk\n' \
  "upload, raw HTTP" "$HTTP_UP" "$(ratio "$HTTP_UP" $GOAL)" $GOAL "$(ratio "$HTTP_UP" "$DISK")" \
  "download, raw HTTP" "$HTTP_DOWN" "$(ratio "$HTTP_DOWN" $GOAL)" $GOAL "$(ratio "$HTTP_DOWN" "$DISK")" \
  "upload, openstack CLI" "$CLI_UP" "$(ratio "$CLI_UP" $GOAL)" $GOAL "$(ratio "$CLI_UP" "$DISK")" \
  "download, openstack CLI" "$CLI_DOWN" "$(ratio "$CLI_DOWN" $GOAL)" $GOAL "$(ratio "$CLI_DOWN" "$DISK")"
