#!/usr/bin/env bash
# Benchmarks of issue 8: volume create from a 1 GiB image, snapshot of a running server (each
# beside a plain `qemu-img convert` of the same data on this machine, the floor), and live
# migration between two hosts in their own network namespaces (QEMU's downtime, the longest gap
# in a 10 Hz ping, pings lost). Release build; runs tests/e2e/bench_block.py, which makes and
# removes its own clouds, namespaces and VMs (198.18.0.0/15 only). BENCH_RUNS (default 3) runs.
# Usage (root): scripts/bench-block.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
CACHE=/var/cache/onestack-ci
cargo build --release --quiet -p onestack
export ONESTACK_BIN="$CARGO_TARGET_DIR/release/onestack"
export OPENSTACK_CLI="$CACHE/venv/bin/openstack"
export ONESTACK_IMAGE_CACHE="$CACHE/images"
"$CACHE/venv/bin/python" -m pytest -q -s -p no:cacheprovider tests/e2e/bench_block.py 2>&1 | grep -E 'BENCH|passed|failed'
