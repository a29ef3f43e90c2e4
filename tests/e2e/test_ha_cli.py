"""Two controllers of one cloud on one PostgreSQL server (the HAStack): the first brought up with
`onestack up --database postgresql://…`, the second with `onestack join --role controller` and a
token the first minted. Each host is its own network namespace (198.18.21.0/24 on a veth pair);
PostgreSQL runs on the first host's address.

Under a steady, bounded load of reads, network creates and server creates sent to both
controllers, the leader is SIGKILLed (supervisor and API; its compute agent and guests run on).
The other controller takes the lease within seconds; afterwards every acknowledged create exists
exactly once, nothing exists twice, every server is placed, and host allocations, quota usage
and IP addresses add up exactly. The killed controller then comes back as a follower."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, OPENSTACK, helper_pids, make_cloud, pids_of, power_cut, qemu_pids
from test_compute_cli import demo, have_qemu
from test_postgres_cli import PGBINS, PgServer

pytestmark = [
    pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage"),
    pytest.mark.skipif(not PGBINS, reason="needs the PostgreSQL server (the test script installs it)"),
]

A_IP = "198.18.21.1"
B_IP = "198.18.21.2"
LOAD = Path(__file__).with_name("ha_load.py")


class SecondController:
    """The second controller's host: its namespace (under the cloud's prefix, so the cloud's
    cleanup removes it too), data directory and configuration (the same ports as the first's,
    in its own namespace)."""

    def __init__(self, cloud, compute_extra=""):
        self.cloud = cloud
        self.netns = f"{cloud.ns_prefix}ctl2"
        # Not under a name starting with the first controller's data dir: power_cut(cloud.data)
        # finds processes by that path.
        self.data = cloud.root / "ctl2"
        self.config = cloud.root / "ctl2.toml"
        text = cloud.config.read_text()
        api = text.split("[identity]")[0]
        api = re.sub(r'public_host = "[^"]*"\n', f'public_host = "{B_IP}"\n', api)
        virt = "kvm" if os.environ.get("ONESTACK_TEST_ACCEL") == "kvm" else "qemu"
        self.config.write_text(
            api + '[network]\nfixed_range = "198.18.10.0/24"\nfloating_range = "198.18.11.0/24"\n'
            f'[compute]\nagent_port = {cloud.agent_port}\nvirt_type = "{virt}"\nshutdown_timeout = 5\n'
            f'my_ip = "{B_IP}"\nservice_down_time = 6\n' + compute_extra)

    def run(self, *args, check=False, timeout=120):
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, BIN, *args, "--data-dir", str(self.data)],
            capture_output=True, text=True, timeout=timeout, check=check)

    def os(self, *args, cloud="onestack-admin"):
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(self.data / "clouds.yaml"))
        r = subprocess.run(["ip", "netns", "exec", self.netns, OPENSTACK, "--os-cloud", cloud, *args],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, f"openstack {' '.join(args)} via the second controller:\n{r.stderr}"
        return r

    def stop_everything(self):
        self.run("down", timeout=60)
        for pid in set(pids_of(self.data) + qemu_pids(self.data) + helper_pids(self.data)):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def leader_line(status_out, name):
    return re.search(rf"controller\s+{re.escape(name)}\s+\S+\s+up\s+leader", status_out)


def wait_for(what, predicate, timeout=60, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class ha_cloud:
    """The first controller's cloud and namespace, the second's namespace joined by a veth pair,
    and PostgreSQL on the first host's address; everything stopped and removed on exit."""

    def __init__(self, compute_extra=""):
        # More [compute] settings for both hosts.
        self.compute_extra = compute_extra

    def __enter__(self):
        compute = f'my_ip = "{A_IP}"\nservice_down_time = 6\nforce_config_drive = false\n'
        self.made = make_cloud(compute=compute + self.compute_extra, listen="0.0.0.0",
                               public_host=A_IP)
        cloud = self.made.__enter__()
        self.b = b = SecondController(cloud, self.compute_extra)
        self.pg = None
        try:
            subprocess.run(["ip", "netns", "add", b.netns], check=True)
            subprocess.run(["ip", "-n", b.netns, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "-n", cloud.netns, "link", "add", "wire", "type", "veth",
                            "peer", "name", "wire", "netns", b.netns], check=True)
            for ns, addr in [(cloud.netns, A_IP), (b.netns, B_IP)]:
                subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "wire"], check=True)
                subprocess.run(["ip", "-n", ns, "link", "set", "wire", "up"], check=True)
            self.pg = PgServer(cloud.netns, listen=f"127.0.0.1,{A_IP}", trust_from="198.18.21.0/24")
            self.pg.__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return cloud, b, self.pg

    def __exit__(self, *exc):
        # The server is stopped inside the first host's namespace, before that goes.
        try:
            self.b.stop_everything()
        finally:
            try:
                if self.pg:
                    self.pg.__exit__(*exc)
            finally:
                self.made.__exit__(*exc)


def bring_up_two(cloud, b, pg, check_refusals=False):
    """`up --database` on the first host, `join --role controller` on the second; returns the
    first controller's name. `check_refusals`: first check a compute token makes no controller."""
    url = pg.createdb("onestack", host=A_IP)
    out = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", "--database", url).stdout
    assert "state store ready (Postgres)" in out, out
    first = wait_for("the first controller to lead", lambda: re.search(
        r"controller\s+(\S+)\s+\S+\s+up\s+leader", cloud.onestack("status").stdout))
    if check_refusals:
        token = cloud.onestack("join-token").stdout.strip().split("--token ")[1]
        r = b.run("join", "--role", "controller", "--controller",
                  f"http://{A_IP}:{cloud.compute_port}", "--token", token, "--host", "ctl2",
                  "--config", str(b.config))
        assert r.returncode != 0 and "another role" in r.stderr, r.stderr
        assert not (b.data / "onestack.toml").exists()
    cmd = cloud.onestack("join-token", "--role", "controller").stdout.strip()
    m = re.fullmatch(r"onestack join --role controller --controller (\S+) --token (\S+)", cmd)
    assert m, cmd
    r = b.run("join", "--role", "controller", "--controller", m.group(1), "--token", m.group(2),
              "--host", "ctl2", "--config", str(b.config), timeout=180)
    assert r.returncode == 0, f"join failed:\n{r.stdout}\n{r.stderr}"
    assert "compute host ctl2 is up" in r.stdout, r.stdout
    return first.group(1)


def test_two_controllers_survive_the_leader_being_killed_under_load(tmp_path):
    with ha_cloud() as (cloud, b, pg):
        scenario(cloud, b, pg, tmp_path)


def scenario(cloud, b, pg, tmp_path):
    first_name = bring_up_two(cloud, b, pg, check_refusals=True)
    assert 'joined = true' in (b.data / "onestack.toml").read_text()

    # One leader, two controllers; the second's catalog names the second (its clients keep
    # working when the first goes), and both compute hosts are up.
    status = b.run("status").stdout
    assert leader_line(status, first_name) and re.search(r"controller\s+ctl2\s+\S+\s+up", status), status
    catalog = json.loads(b.os("catalog", "show", "compute", "-f", "json").stdout)
    assert f"http://{B_IP}:{cloud.compute_port}/v2.1" in str(catalog["endpoints"]), catalog
    catalog = json.loads(cloud.os("catalog", "show", "compute", "-f", "json").stdout)
    assert f"http://{A_IP}:{cloud.compute_port}/v2.1" in str(catalog["endpoints"]), catalog
    wait_for("both compute hosts up", lambda: all(
        s["State"] == "up" for s in json.loads(b.os("compute", "service", "list", "-f", "json").stdout))
        and len(json.loads(b.os("compute", "service", "list", "-f", "json").stdout)) == 2)

    # What the load needs: a blank image (no guest OS: QEMU runs it all the same), the demo
    # network, and a token (issued by one controller, good on both).
    disk = cloud.root / "blank.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    image = json.loads(demo(cloud, "image", "create", "--file", str(disk), "--disk-format", "raw",
                            "blank", "-f", "json").stdout)["id"]
    network = json.loads(demo(cloud, "network", "show", "private", "-f", "json").stdout)["id"]
    token = demo(cloud, "token", "issue", "-f", "value", "-c", "id").stdout.strip()
    flavor = json.loads(demo(cloud, "flavor", "show", "m1.tiny", "-f", "json").stdout)["id"]
    load_cfg = tmp_path / "load.json"
    load_cfg.write_text(json.dumps({
        "controllers": [A_IP, B_IP], "token": token, "image": image, "flavor": flavor,
        "network": network, "count": 60, "server_every": 8, "pace": 0.2, "max_seconds": 150,
        "ports": {"compute": cloud.compute_port, "network": cloud.network_port}}))
    load = subprocess.Popen(cloud.in_ns(sys.executable, str(LOAD), str(load_cfg)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)
        # Kill the leader: its supervisor first (it would restart the API), then the API.
        run = cloud.data / "run"
        victims = [int((run / f"{n}.pid").read_text()) for n in ("supervisor", "api")]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        wait_for("the second controller to take the lease",
                 lambda: leader_line(b.run("status").stdout, "ctl2"), timeout=30, every=0.2)
        takeover = time.time() - killed_at
        out, err = load.communicate(timeout=200)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, err
    result = json.loads(out)
    print(f"takeover {takeover:.2f} s; load: {len(result['creates'])} creates, "
          f"{result['reads']} reads, {result['failovers']} failovers")
    assert takeover < 10, f"the lease took {takeover:.1f} s to move"
    creates = result["creates"]
    acked = [c for c in creates if c["outcome"] == "acked"]
    assert result["failovers"] > 0, "the load never met the dead controller"
    assert any(c["controller"] == B_IP and c["at"] > killed_at for c in acked), creates
    # While both lived, nothing was refused or lost.
    assert not [c for c in creates if c["outcome"] == "refused"], creates

    # Every acknowledged create exists exactly once; nothing exists twice.
    servers = json.loads(b.os("server", "list", "--all-projects", "--long", "-f", "json").stdout)
    networks = json.loads(b.os("network", "list", "-f", "json").stdout)
    names = {"server": [s["Name"] for s in servers], "network": [n["Name"] for n in networks]}
    for kind in ("server", "network"):
        assert len(names[kind]) == len(set(names[kind])), f"a {kind} exists twice: {names[kind]}"
    for c in creates:
        n = names[c["kind"]].count(c["name"])
        if c["outcome"] == "acked":
            assert n == 1, f"acknowledged {c} exists {n} times"
        else:
            assert n <= 1, c
    ha_servers = [s for s in servers if s["Name"].startswith("ha-vm-")]
    assert len(ha_servers) >= 3, ha_servers

    # Every server is placed and running, including any whose create the dead controller
    # accepted but never placed (the new leader places it).
    def all_active():
        listed = json.loads(b.os("server", "list", "--all-projects", "--long", "-f", "json").stdout)
        assert not [s for s in listed if s["Status"] == "ERROR"], listed
        return listed if all(s["Status"] == "ACTIVE" and not s.get("Task State") for s in listed) else None
    servers = wait_for("every server ACTIVE", all_active, timeout=150, every=2)

    # Host allocations add up: each host's vCPUs used are its servers' (m1.tiny: 1 vCPU each).
    per_host = {}
    for s in servers:
        per_host[s["Host"]] = per_host.get(s["Host"], 0) + 1
    hyps = {h["Hypervisor Hostname"]: h for h in
            json.loads(b.os("hypervisor", "list", "--long", "-f", "json").stdout)}
    for host, h in hyps.items():
        assert h["vCPUs Used"] == per_host.get(host, 0), (host, h, per_host)
    assert set(per_host) <= set(hyps), (per_host, hyps)
    # Quota usage is the servers that exist.
    limits = {l["Name"]: l["Value"] for l in json.loads(
        b.os("limits", "show", "--absolute", "-f", "json", cloud="onestack").stdout)}
    assert limits["instances_used"] == len(servers), (limits, len(servers))
    assert limits["total_cores_used"] == len(servers), (limits, len(servers))

    # Addresses: one port per server, every address held once, no port bound to a server that
    # does not exist (a create cut between its port and its record is released by the leader).
    ids = {s["ID"] for s in servers}
    admin_token = b.os("token", "issue", "-f", "value", "-c", "id").stdout.strip()

    def ports_settled():
        fetch = ("import sys, urllib.request as u; r = u.Request(sys.argv[1], headers={'X-Auth-Token': "
                 "sys.argv[2]}); print(u.urlopen(r, timeout=20).read().decode())")
        r = subprocess.run(["ip", "netns", "exec", b.netns, sys.executable, "-c", fetch,
                            f"http://{B_IP}:{cloud.network_port}/v2.0/ports", admin_token],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        ports = json.loads(r.stdout)["ports"]
        bound = [p["device_id"] for p in ports if p["device_owner"].startswith("compute:")]
        return ports if sorted(bound) == sorted(ids) else None
    ports = wait_for("one port per server and none for servers that do not exist", ports_settled,
                     timeout=90, every=3)
    addresses = [(ip["subnet_id"], ip["ip_address"]) for p in ports for ip in p["fixed_ips"]]
    assert len(addresses) == len(set(addresses)), addresses

    # The agent of the dead controller's host kept reporting through the other controller.
    assert all(s["State"] == "up" for s in
               json.loads(b.os("compute", "service", "list", "-f", "json").stdout))

    # The killed controller comes back (what a reboot runs) as a follower.
    power_cut(cloud.data)
    cloud.up()
    status = cloud.onestack("status").stdout
    assert leader_line(status, "ctl2") and re.search(
        rf"controller\s+{re.escape(first_name)}\s+\S+\s+up\s*$", status, re.M), status
    assert demo(cloud, "server", "list", "-f", "value", "-c", "Name").stdout.count("ha-vm-") == len(ha_servers)
