#!/usr/bin/env bash
# API throughput of one controller on SQLite and on PostgreSQL (a private server on loopback):
# reads, network creates and server creates with 8 clients (crates/onestack-api/tests/bench_api.rs),
# and on PostgreSQL with two controllers of one cloud (in one process) sharing the calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDATA=$(mktemp -d /tmp/onestack-bench-pg.XXXXXX)
chown postgres "$PGDATA"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast stop" >/dev/null 2>&1 || true; rm -rf "$PGDATA"' EXIT
su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $PGDATA -w -l $PGDATA/server.log -o '-k $PGDATA -c listen_addresses=127.0.0.1 -p $PGPORT' start" >/dev/null
run() {
  cargo test --release -q -p onestack-api --test bench_api -- --ignored --nocapture 2>&1 | grep '^BENCH'
}
SQLITE=$(run)
export ONESTACK_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
PG=$(ONESTACK_TEST_STORE=postgres run)
PG2=$(ONESTACK_TEST_STORE=postgres ONESTACK_BENCH_CONTROLLERS=2 run)
echo "$SQLITE"
echo "$PG"
echo "$PG2"
python3 - "$SQLITE" "$PG" "$PG2" <<'PY'
import sys
def parse(line):
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:]) if k != "backend"}
s, p, p2 = (parse(a) for a in sys.argv[1:4])
for k in s:
    print(f"{k}: SQLite {s[k]:.0f}; PostgreSQL {p[k]:.0f} ({p[k] / s[k]:.2f}x of SQLite); "
          f"PostgreSQL, 2 controllers {p2[k]:.0f} ({p2[k] / p[k]:.2f}x of one)")
PY
