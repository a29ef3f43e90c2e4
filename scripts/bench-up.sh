#!/usr/bin/env bash
# Benchmark: wall time of `onestack up` on a host that already has the packages and the cached
# default image — cold start of a fresh data dir to "API answers, image registered, network
# ready" (--no-demo) — and of `up` with the demo server to "SSH answers". Each run in a network
# namespace and temporary data dir of its own (198.18.0.0/15), removed afterwards; 3 runs each.
# Usage: scripts/bench-up.sh (root; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
export ONESTACK_IMAGE_CACHE="${ONESTACK_IMAGE_CACHE:-/var/cache/onestack-ci/images}"
cargo build --release --quiet -p onestack
BIN="$CARGO_TARGET_DIR/release/onestack"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one_run() { # $1 = extra up flags
  local tmp ns prefix port t0 t1
  tmp=$(mktemp -d /var/tmp/onestack-bench-up.XXXXXX); chmod 711 "$tmp"
  port=$(free_port); ns="osbench-$port"; prefix="b$port-"
  cat > "$tmp/onestack.toml" <<TOML
[api]
listen = "127.0.0.1"
identity_port = $port
image_port = $(free_port)
compute_port = $(free_port)
network_port = $(free_port)
[compute]
agent_port = $(free_port)
virt_type = "qemu"
[network]
fixed_range = "198.18.10.0/24"
floating_range = "198.18.11.0/24"
namespace_prefix = "$prefix"
TOML
  ip netns add "$ns"; ip netns exec "$ns" ip link set lo up
  t0=$(date +%s.%N)
  ip netns exec "$ns" "$BIN" up --data-dir "$tmp/data" --config "$tmp/onestack.toml" $1 > "$tmp/up.log" 2>&1 \
    || { cat "$tmp/up.log"; }
  t1=$(date +%s.%N)
  python3 -c "import sys; print(f'up {sys.argv[3] or \"(with demo)\"}: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$t0" "$t1" "${1:-}"
  ip netns exec "$ns" "$BIN" uninstall --yes --purge --data-dir "$tmp/data" >/dev/null 2>&1 || true
  for p in /proc/[0-9]*; do grep -qa "$tmp" "$p/cmdline" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null || true; done
  for n in $(ls /run/netns 2>/dev/null | grep "^$prefix" || true); do ip netns del "$n" 2>/dev/null || true; done
  ip netns del "$ns"; rm -rf "$tmp"
}
# `onestack join`: a controller (up --no-demo) in one namespace, a second host in another, a veth
# between them (198.18.20.0/24); the time from `join` to "the controller reports the host up".
join_run() {
  local tmp ns node prefix port t0 t1 out
  tmp=$(mktemp -d /var/tmp/onestack-bench-join.XXXXXX); chmod 711 "$tmp"
  port=$(free_port); ns="osbench-$port"; prefix="j$port-"; node="${prefix}node"
  local compute_port; compute_port=$(free_port)
  cat > "$tmp/onestack.toml" <<TOML
[api]
listen = "0.0.0.0"
public_host = "198.18.20.1"
identity_port = $port
image_port = $(free_port)
compute_port = $compute_port
network_port = $(free_port)
[image]
default_image = false
[compute]
agent_port = $(free_port)
virt_type = "qemu"
my_ip = "198.18.20.1"
[network]
fixed_range = "198.18.10.0/24"
floating_range = "198.18.11.0/24"
namespace_prefix = "$prefix"
TOML
  printf '[compute]\nvirt_type = "qemu"\n' > "$tmp/node.toml"
  ip netns add "$ns"; ip netns exec "$ns" ip link set lo up
  ip netns add "$node"; ip netns exec "$node" ip link set lo up
  ip -n "$ns" link add wire type veth peer name wire netns "$node"
  ip -n "$ns" addr add 198.18.20.1/24 dev wire; ip -n "$ns" link set wire up
  ip -n "$node" addr add 198.18.20.2/24 dev wire; ip -n "$node" link set wire up
  out=$(ip netns exec "$ns" "$BIN" up --no-demo --data-dir "$tmp/data" --config "$tmp/onestack.toml")
  local cmd; cmd=$(grep -o 'onestack join --controller [^ ]* --token [^ ]*' <<<"$out")
  t0=$(date +%s.%N)
  ip netns exec "$node" "$BIN" ${cmd#onestack } --host node2 --config "$tmp/node.toml" --data-dir "$tmp/node" > "$tmp/join.log" 2>&1 \
    || cat "$tmp/join.log"
  t1=$(date +%s.%N)
  python3 -c "import sys; print(f'join to host up: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$t0" "$t1"
  ip netns exec "$node" "$BIN" leave --yes --data-dir "$tmp/node" >/dev/null 2>&1 || true
  ip netns exec "$ns" "$BIN" uninstall --yes --purge --data-dir "$tmp/data" >/dev/null 2>&1 || true
  for p in /proc/[0-9]*; do grep -qa "$tmp" "$p/cmdline" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null || true; done
  for n in $(ls /run/netns 2>/dev/null | grep "^$prefix" || true); do ip netns del "$n" 2>/dev/null || true; done
  ip netns del "$ns"; rm -rf "$tmp"
}
for i in 1 2 3; do join_run; done
for i in 1 2 3; do one_run --no-demo; done
for i in 1 2 3; do one_run ""; done
