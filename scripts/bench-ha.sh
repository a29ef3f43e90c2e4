#!/usr/bin/env bash
# Benchmark of issue 10: API and server-create throughput of one controller on SQLite and of one
# and two controllers on PostgreSQL, each controller its own process in its own network namespace
# (198.18.21.0/24 on a veth pair), 8 concurrent clients. Release build; runs
# tests/e2e/bench_ha.py, which makes and removes its clouds, namespaces, PostgreSQL server and VMs.
# Counts: BENCH_READS (2000), BENCH_NETWORKS (300), BENCH_SERVERS (24).
# Usage (root): scripts/bench-ha.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
CACHE=/var/cache/onestack-ci
cargo build --release --quiet -p onestack
export ONESTACK_BIN="$CARGO_TARGET_DIR/release/onestack"
export OPENSTACK_CLI="$CACHE/venv/bin/openstack"
export ONESTACK_IMAGE_CACHE="$CACHE/images"
"$CACHE/venv/bin/python" -m pytest -q -s -p no:cacheprovider tests/e2e/bench_ha.py 2>&1 | grep -E 'BENCH|passed|failed|Error|assert'
