#!/usr/bin/env bash
# Benchmark: server time of the dashboard's pages (the issue's goal: under 100 ms each). A cloud
# brought up with its demo server (release build, TCG guest) in a network namespace and temporary
# data dir of its own (198.18.0.0/15), removed afterwards; each page fetched 30 times by a signed-in
# browser-like client; the Server-Timing header (time in the dashboard, including its API calls)
# and the client's wall time are reported as median and 95th percentile, and as a ratio of the
# 100 ms budget. Usage: scripts/bench-dashboard.sh (root)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/onestack-ci/target}"
export ONESTACK_IMAGE_CACHE="${ONESTACK_IMAGE_CACHE:-/var/cache/onestack-ci/images}"
PY="${PYTHON:-/var/cache/onestack-ci/venv/bin/python}"
cargo build --release --quiet -p onestack
BIN="$CARGO_TARGET_DIR/release/onestack"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

tmp=$(mktemp -d /var/tmp/onestack-bench-dash.XXXXXX); chmod 711 "$tmp"
port=$(free_port); ns="osbench-$port"; prefix="d$port-"; dash=$(free_port)
cleanup() {
  ip netns exec "$ns" "$BIN" uninstall --yes --purge --data-dir "$tmp/data" >/dev/null 2>&1 || true
  for p in /proc/[0-9]*; do grep -qa "$tmp" "$p/cmdline" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null || true; done
  for n in $(ls /run/netns 2>/dev/null | grep "^$prefix" || true); do ip netns del "$n" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true; rm -rf "$tmp"
}
trap cleanup EXIT
cat > "$tmp/onestack.toml" <<TOML
[api]
listen = "127.0.0.1"
identity_port = $port
image_port = $(free_port)
compute_port = $(free_port)
network_port = $(free_port)
dashboard_port = $dash
[compute]
agent_port = $(free_port)
virt_type = "qemu"
[network]
fixed_range = "198.18.10.0/24"
floating_range = "198.18.11.0/24"
namespace_prefix = "$prefix"
TOML
ip netns add "$ns"; ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$BIN" up --data-dir "$tmp/data" --config "$tmp/onestack.toml" > "$tmp/up.log" 2>&1 \
  || { cat "$tmp/up.log"; exit 1; }
ip netns exec "$ns" "$PY" - "http://127.0.0.1:$dash" "$tmp/data/secrets" <<'PYEOF'
import re, statistics, sys, time
import requests

base, secrets = sys.argv[1], sys.argv[2]

def session(user, project):
    s = requests.Session()
    page = s.get(f"{base}/login").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    pw = open(f"{secrets}/{user}-password").read().strip()
    r = s.post(f"{base}/login", data={"csrf": csrf, "username": user, "password": pw, "project": project})
    r.raise_for_status()
    return s

def measure(s, path, n=30):
    server, wall = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = s.get(f"{base}{path}")
        wall.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code)
        server.append(float(re.search(r"dur=([0-9.]+)", r.headers["server-timing"]).group(1)))
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
    med, p95 = statistics.median(server), q(server, 0.95)
    print(f"{path:28s} server median {med:6.1f} ms  p95 {p95:6.1f} ms  ({p95 / 100:.2f}x of 100 ms)"
          f"   wall median {statistics.median(wall):6.1f} ms")

demo = session("demo", "")
server_id = re.search(r'href="/project/instances/([0-9a-f-]{36})"', demo.get(f"{base}/project/instances").text).group(1)
for p in ["/project/overview", "/project/instances", f"/project/instances/{server_id}",
          "/project/instances/launch", "/project/images", "/project/key_pairs", "/project/networks",
          "/project/routers", "/project/floating_ips", "/project/security_groups", "/project/volumes"]:
    measure(demo, p)
admin = session("admin", "admin")
for p in ["/admin/hypervisors", "/admin/instances", "/admin/projects", "/admin/users",
          "/admin/flavors", "/admin/usage"]:
    measure(admin, p)
PYEOF
