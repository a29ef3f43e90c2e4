#!/usr/bin/env bash
# Benchmark: token validation and token issue requests per second on loopback.
# Bounded: fixed concurrency, 10 s per run. Starts its own cloud in a temporary data dir and
# stops it (by its own `onestack down`) on exit, even on failure. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
TARGET_RPS=20000
DURATION=10s

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet -p onestack
BIN="$CARGO_TARGET_DIR/release/onestack"

TMP=$(mktemp -d)
cleanup() { "$BIN" down --data-dir "$TMP/data" >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[api]\nlisten = "127.0.0.1"\nidentity_port = %s\n' "$PORT" > "$TMP/onestack.toml"
"$BIN" up --data-dir "$TMP/data" --config "$TMP/onestack.toml" --no-demo >/dev/null
URL="http://127.0.0.1:$PORT/v3/auth/tokens"

auth_body() { # user project password-file
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
user, project, pwfile = sys.argv[1:]
pw = open(pwfile).read().strip()
print(json.dumps({"auth": {"identity": {"methods": ["password"], "password": {"user": {
    "name": user, "domain": {"name": "Default"}, "password": pw}}},
    "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}))
PY
}
token() { # body-file
  curl -sS -o /dev/null -D - -H 'Content-Type: application/json' --data-binary @"$1" "$URL" \
    | awk 'tolower($1)=="x-subject-token:" {print $2}' | tr -d '\r'
}
auth_body admin admin "$TMP/data/secrets/admin-password" > "$TMP/admin.json"
auth_body demo demo "$TMP/data/secrets/demo-password" > "$TMP/demo.json"
ADMIN=$(token "$TMP/admin.json"); DEMO=$(token "$TMP/demo.json")
[ -n "$ADMIN" ] && [ -n "$DEMO" ] || { echo "could not get tokens" >&2; exit 1; }

code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $ADMIN" -H "X-Subject-Token: $DEMO" "$URL")
[ "$code" = 200 ] || { echo "validation answered $code, not 200" >&2; exit 1; }

run() { # name, wrk args…
  local name=$1; shift
  local out; out=$(wrk --latency -d "$DURATION" "$@")
  local rps p50 p99 non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-28s %10s req/s   p50 %-9s p99 %-9s %s\n' "$name" "$rps" "$p50" "$p99" "${non2xx:+NON-2XX: $non2xx}"
  echo "$rps" > "$TMP/$name.rps"
}

echo "token benchmarks, $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), wrk on the same cores"
run validate -t1 -c32 -H "X-Auth-Token: $ADMIN" -H "X-Subject-Token: $DEMO" "$URL"
run validate-nocatalog -t1 -c32 -H "X-Auth-Token: $ADMIN" -H "X-Subject-Token: $DEMO" "$URL?nocatalog"
cat > "$TMP/issue.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$(cat "$TMP/demo.json")]]
LUA
run issue -t1 -c8 -s "$TMP/issue.lua" "$URL"
python3 - "$(cat "$TMP/validate.rps")" "$TARGET_RPS" <<'PY'
import sys
rps, target = float(sys.argv[1]), float(sys.argv[2])
print(f"validation: {rps:,.0f} req/s = {rps/target:.2f}x the {target:,.0f}/s goal")
PY
