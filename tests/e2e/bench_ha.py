"""Benchmark of issue 10: API and server-create throughput of one controller on SQLite, and of
one and two controllers on PostgreSQL, each controller a process of its own on its own "host"
(network namespace; the second reached over a veth pair), driven by 8 concurrent clients from the
first host. Reads are `GET /v2.1/flavors/detail`, network creates `POST /v2.0/networks`, server
creates `POST /v2.1/servers` (1 vCPU, 128 MB, a blank disk) (QEMU really starts each), timed to the
acknowledgement and to every server ACTIVE. Run by scripts/bench-ha.sh; not part of CI."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_cloud
from test_compute_cli import demo
from test_ha_cli import A_IP, B_IP, bring_up_two, ha_cloud

LOAD = Path(__file__).with_name("bench_load.py")
# Blank guests barely use their vCPU: room for every server of a run on a two-core host.
ROOMY = "cpu_allocation_ratio = 64.0\n"
COUNTS = {"read": int(os.environ.get("BENCH_READS", 2000)),
          "network": int(os.environ.get("BENCH_NETWORKS", 300)),
          "server": int(os.environ.get("BENCH_SERVERS", 24))}


def prepare(cloud):
    """Room for the load, a blank image, and the demo user's token and ids."""
    cloud.os("quota", "set", "--instances", "1000", "--cores", "2000", "--ram", "100000000",
             "--networks", "5000", "--ports", "5000", "demo")
    disk = cloud.root / "blank.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    image = json.loads(demo(cloud, "image", "create", "--file", str(disk), "--disk-format", "raw",
                            "blank", "-f", "json").stdout)["id"]
    return {"image": image,
            "network": json.loads(demo(cloud, "network", "show", "private", "-f", "json").stdout)["id"],
            # No disk of its own (the blank image's 1 MiB is its disk): host disk space does not
            # limit how many the benchmark makes.
            "flavor": json.loads(cloud.os("flavor", "create", "--ram", "128", "--disk", "0",
                                          "--vcpus", "1", "bench.tiny", "-f", "json").stdout)["id"],
            "token": demo(cloud, "token", "issue", "-f", "value", "-c", "id").stdout.strip(),
            "ports": {"compute": cloud.compute_port, "network": cloud.network_port}}


def load(cloud, tmp_path, base, controllers, mode, tag):
    cfg = dict(base, controllers=controllers, mode=mode, count=COUNTS.get(mode, 0), tag=tag,
               threads=8 if mode != "server" else 6)
    f = tmp_path / f"load-{tag}-{mode}.json"
    f.write_text(json.dumps(cfg))
    r = subprocess.run(cloud.in_ns(sys.executable, str(LOAD), str(f)), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out.get("errors", 0) == 0, out
    return out


def servers_run(cloud, tag, n, t0):
    """Seconds from `t0` until all `n` servers of `tag` are ACTIVE, then deletes them."""
    prefix = f"bench-vm-{tag}-"
    while True:
        listed = [s for s in json.loads(demo(cloud, "server", "list", "-f", "json").stdout)
                  if s["Name"].startswith(prefix)]
        failed = [s for s in listed if s["Status"] == "ERROR"]
        assert not failed, demo(cloud, "server", "show", failed[0]["ID"], "-f", "json").stdout
        if len(listed) == n and all(s["Status"] == "ACTIVE" for s in listed):
            done = time.time() - t0
            break
        assert time.time() - t0 < 600, listed
        time.sleep(0.5)
    demo(cloud, "server", "delete", "--wait", *[s["ID"] for s in listed])
    return done


def run_all(cloud, tmp_path, base, controllers, tag):
    out = {}
    for mode in ("read", "network", "server"):
        t0 = time.time()
        out[mode] = load(cloud, tmp_path, base, controllers, mode, tag)
        if mode == "network":
            # The next run counts and lists as many networks as this one did.
            deleted = load(cloud, tmp_path, base, controllers, "cleanup", tag)["deleted"]
            assert deleted == out["network"]["calls"], deleted
        if mode == "server":
            out["server"]["active_s"] = round(servers_run(cloud, tag, COUNTS["server"], t0), 2)
            out["server"]["active_per_second"] = round(COUNTS["server"] / out["server"]["active_s"], 2)
    return out


def report(name, res):
    for mode in ("read", "network", "server"):
        r = res[mode]
        extra = f" all ACTIVE in {r['active_s']} s ({r['active_per_second']}/s)" if mode == "server" else ""
        print(f"BENCH {name:<20} {mode:<8} {r['per_second']:>8}/s  p50 {r['p50_ms']} ms  "
              f"p95 {r['p95_ms']} ms{extra}")


def test_bench_controllers(tmp_path):
    results = {}
    with make_cloud(compute=ROOMY) as cloud:
        cloud.up()
        base = prepare(cloud)
        results["sqlite, 1"] = run_all(cloud, tmp_path, base, ["127.0.0.1"], "sqlite")
    with ha_cloud(ROOMY) as (cloud, b, pg):
        bring_up_two(cloud, b, pg)
        base = prepare(cloud)
        results["postgresql, 1"] = run_all(cloud, tmp_path, base, [A_IP], "pg1")
        results["postgresql, 2"] = run_all(cloud, tmp_path, base, [A_IP, B_IP], "pg2")
        # Transactions the store had to run again (deadlocks, serialization failures).
        retried = sum((d / "logs" / "api.log").read_text().count("transient database failure")
                      for d in (cloud.data, b.data))
        print(f"BENCH postgresql transactions retried: {retried}")
    for name, res in results.items():
        report(name, res)
    sq, p1, p2 = results["sqlite, 1"], results["postgresql, 1"], results["postgresql, 2"]
    for mode in ("read", "network", "server"):
        print(f"BENCH ratio {mode:<8} PG1/SQLite {p1[mode]['per_second'] / sq[mode]['per_second']:.2f}x  "
              f"PG2/PG1 {p2[mode]['per_second'] / p1[mode]['per_second']:.2f}x  "
              f"PG2/SQLite {p2[mode]['per_second'] / sq[mode]['per_second']:.2f}x")
