#!/usr/bin/env bash
# Benchmark: time for the agent's data plane to apply one new port (TAP in the bridge, nft chains
# and map/set elements) with a few and with ~100 ports present, and 100 new ports in one apply.
# The one-port transaction must stay the same size and time whatever the port count
# (incremental: no reload that scales with all ports). Runs inside network namespaces it makes
# and removes (198.18.0.0/15 only); needs root, nft, dnsmasq, busybox. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
for i in 1 2 3; do
  cargo test --release --quiet -p onestack-agent --test net_dataplane apply_time_per_port \
    -- --nocapture --test-threads=1 2>&1 | grep -E '^apply time' || true
done
