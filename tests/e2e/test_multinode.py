"""Two hosts, one cloud (addComputeNode.sh): a controller that is also a compute host, and a
second compute node joined with `onestack join` and the one-time token `up` printed. Each host is
its own network namespace with its own data directory; a veth pair is the wire between them
(198.18.20.0/24), and tenant traffic crosses it in VXLAN."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, make_cloud, helper_pids
from test_compute_cli import demo, have_qemu, serial_roundtrip, wait_console
from test_network_cli import add_floating_ip, fixed_ip, ssh, wait_ssh

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

CONTROLLER_IP = "198.18.20.1"
NODE_IP = "198.18.20.2"
DOWN_AFTER = 6


class Node:
    """The second host: a namespace named under the cloud's prefix (so the cloud's cleanup removes
    it too) and a data directory beside the controller's."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.netns = f"{cloud.ns_prefix}node2"
        self.data = Path(str(cloud.data) + "-node2")
        self.config = cloud.root / "node2.toml"
        virt = "kvm" if os.environ.get("ONESTACK_TEST_ACCEL") == "kvm" else "qemu"
        self.config.write_text(f'[compute]\nvirt_type = "{virt}"\nshutdown_timeout = 5\n')

    def run(self, *args, data=None, check=False, timeout=120):
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, BIN, *args, "--data-dir", str(data or self.data)],
            capture_output=True, text=True, timeout=timeout, check=check)

    def links(self):
        return subprocess.run(["ip", "-n", self.netns, "-o", "link", "show"],
                              capture_output=True, text=True).stdout

    def stop_everything(self):
        self.run("down", timeout=60)
        for pid in helper_pids(self.data):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def services(cloud):
    return {s["Host"]: s for s in json.loads(
        cloud.os("compute", "service", "list", "-f", "json").stdout) if s["Binary"] == "nova-compute"}


def wait_for(what, predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def host_of(cloud, server):
    server_id = demo(cloud, "server", "show", server, "-f", "value", "-c", "id").stdout.strip()
    return json.loads(cloud.os("server", "show", server_id, "-f", "json").stdout)["OS-EXT-SRV-ATTR:host"]


def test_two_hosts_one_tenant_network(tmp_path):
    compute = f'my_ip = "{CONTROLLER_IP}"\nservice_down_time = {DOWN_AFTER}\nforce_config_drive = false\n'
    with make_cloud(default_image=True, compute=compute, listen="0.0.0.0",
                    public_host=CONTROLLER_IP) as cloud:
        node = Node(cloud)
        subprocess.run(["ip", "netns", "add", node.netns], check=True)
        try:
            subprocess.run(["ip", "-n", node.netns, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "-n", cloud.netns, "link", "add", "wire", "type", "veth",
                            "peer", "name", "wire", "netns", node.netns], check=True)
            for ns, addr in [(cloud.netns, CONTROLLER_IP), (node.netns, NODE_IP)]:
                subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "wire"], check=True)
                subprocess.run(["ip", "-n", ns, "link", "set", "wire", "up"], check=True)
            run_scenario(cloud, node, tmp_path)
        finally:
            node.stop_everything()


def run_scenario(cloud, node, tmp_path):
    up = cloud.up()
    m = re.search(r"onestack join --controller (\S+) --token (\S+)", up.stdout)
    assert m, f"up printed no join command:\n{up.stdout}"
    controller_url, token = m.group(1), m.group(2)
    assert controller_url == f"http://{CONTROLLER_IP}:{cloud.compute_port}"

    # A wrong token is refused and leaves nothing behind.
    bad_dir = Path(str(cloud.data) + "-bad")
    r = node.run("join", "--controller", controller_url, "--token", "x" * 32, "--host", "node2",
                 data=bad_dir)
    assert r.returncode != 0 and "join token is unknown, expired or already used" in r.stderr, r.stderr
    assert not (bad_dir / "onestack.toml").exists()

    r = node.run("join", "--controller", controller_url, "--token", token, "--host", "node2",
                 "--config", str(node.config))
    assert r.returncode == 0, f"join failed:\n{r.stdout}\n{r.stderr}"
    assert "compute host node2 is up" in r.stdout, r.stdout
    # The token was for one join only (a third "host" in the same namespace: its own agent port).
    other = cloud.root / "node3.toml"
    other.write_text("[compute]\nagent_port = 18775\n")
    r = node.run("join", "--controller", controller_url, "--token", token, "--host", "node3",
                 "--config", str(other), data=bad_dir)
    assert r.returncode != 0 and "already used" in r.stderr, r.stderr

    hosts = services(cloud)
    assert set(hosts) >= {"node2"} and len(hosts) == 2, hosts
    assert all(s["State"] == "up" and s["Status"] == "enabled" for s in hosts.values()), hosts
    controller_host = next(h for h in hosts if h != "node2")
    hypervisors = json.loads(cloud.os("hypervisor", "list", "--long", "-f", "json").stdout)
    node2 = next(h for h in hypervisors if h["Hypervisor Hostname"] == "node2")
    assert node2["Host IP"] == NODE_IP and node2["State"] == "up", node2
    status = node.run("status")
    assert status.returncode == 0 and "this host (node2) is up" in status.stdout, status.stdout
    status = cloud.onestack("status", check=False)
    assert re.search(r"compute host\s+node2\s+198\.18\.20\.2\s+up", status.stdout), status.stdout

    # Tenant networks are VXLAN segments now that there are two hosts.
    private = json.loads(cloud.os("network", "show", "private", "-f", "json").stdout)
    assert private["provider:network_type"] == "vxlan" and private["mtu"] == 1450, private
    vni = private["provider:segmentation_id"]

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1")
    # The scheduler spreads: two servers land on the two hosts.
    for name in ["vm-a", "vm-b"]:
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
             "--key-name", "k1", "--wait", name)
    placed = {host_of(cloud, "vm-a"), host_of(cloud, "vm-b")}
    assert placed == {controller_host, "node2"}, placed
    on_node = "vm-a" if host_of(cloud, "vm-a") == "node2" else "vm-b"
    on_ctrl = "vm-b" if on_node == "vm-a" else "vm-a"
    # The node's VM runs there: its QEMU names the node's data directory.
    assert any(b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes()
               for p in helper_pids(node.data)), "no QEMU on node2"
    tunnel = subprocess.run(["ip", "-d", "-n", node.netns, "link", "show", f"vxlan-{vni}"],
                            capture_output=True, text=True).stdout
    assert f"vxlan id {vni}" in tunnel and f"local {NODE_IP}" in tunnel, tunnel

    # Both reachable by floating IP (NAT on the controller's router; the node's guest got its
    # address by DHCP across the tunnel), and they reach each other on the tenant network.
    node_ip, ctrl_ip = fixed_ip(cloud, on_node), fixed_ip(cloud, on_ctrl)
    fip_node, fip_ctrl = add_floating_ip(cloud, on_node), add_floating_ip(cloud, on_ctrl)
    assert wait_ssh(cloud, key, fip_node) == on_node
    assert wait_ssh(cloud, key, fip_ctrl) == on_ctrl
    # (The guest user is not root, so TCP to the other guest's SSH server rather than ping.)
    for src, dst in [(fip_ctrl, node_ip), (fip_node, ctrl_ip)]:
        r = ssh(cloud, key, src, f"timeout 5 nc {dst} 22 </dev/null | head -c 7")
        assert r.stdout.startswith("SSH-2.0"), f"{src} cannot reach {dst} across hosts: {r.stdout} {r.stderr}"

    # The node's guest's console log and interactive serial console come from the node's agent
    # (the controller calls it with the node's own credential and signs its console tokens).
    wait_console(cloud, on_node, "onestack-tiny: ready")
    url = json.loads(demo(cloud, "console", "url", "show", "--serial", on_node, "-f", "json").stdout)["url"]
    assert url.startswith(f"ws://{NODE_IP}:"), url
    assert b"42XY" in serial_roundtrip(cloud, url)

    # And ICMP, guest to guest, as root from user-data: a third server pings both (one of them is
    # on the other host, wherever it lands); its console comes through its host's agent.
    ud = tmp_path / "ping.sh"
    ud.write_text(f"#!/bin/sh\nfor ip in {node_ip} {ctrl_ip}; do\n"
                  "  ping -c 3 -W 2 $ip >/dev/null 2>&1 && echo PING-OK-$ip || echo PING-FAILED-$ip\n"
                  "done\n")
    demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
         "--user-data", str(ud), "--wait", "vm-p")
    out = wait_console(cloud, "vm-p", "onestack-tiny: ready", timeout=240)
    assert f"PING-OK-{node_ip}" in out and f"PING-OK-{ctrl_ip}" in out, out[-1500:]
    demo(cloud, "server", "delete", "--wait", "vm-p")

    # The node's agent stops: the host is reported down and new servers avoid it.
    node.run("down", check=True)
    wait_for("node2 reported down", lambda: services(cloud)["node2"]["State"] == "down",
             timeout=DOWN_AFTER + 20)
    status = cloud.onestack("status", check=False)
    assert status.returncode != 0 and re.search(r"node2\s+198\.18\.20\.2\s+DOWN", status.stdout), status.stdout
    for name in ["vm-c", "vm-d"]:
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", name)
        assert host_of(cloud, name) == controller_host
    # Its guest ran on without the agent.
    assert ssh(cloud, key, fip_node, "hostname").stdout.strip() == on_node

    # Started again (what boot does on the node): back up.
    r = node.run("up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert services(cloud)["node2"]["State"] == "up"

    # Leaving is refused while the node holds a server, and the node stays in service.
    r = node.run("leave", "--yes")
    assert r.returncode != 0 and "hosting instances" in r.stderr, r.stdout + r.stderr
    assert services(cloud)["node2"]["State"] == "up"
    demo(cloud, "server", "delete", "--wait", on_node)
    r = node.run("leave", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node2" not in services(cloud)
    assert not node.data.exists()
    assert helper_pids(node.data) == [], "processes of the node outlived leave"
    links = node.links()
    assert not re.search(r"vxlan-|brq|tap", links), links
    tables = subprocess.run(["ip", "netns", "exec", node.netns, "nft", "list", "tables"],
                            capture_output=True, text=True).stdout
    assert "onestack" not in tables, tables
    # The controller drops its tunnel to the departed node; its own guests carry on.
    wait_for("the controller's tunnel removed", lambda: f"vxlan-{vni}" not in subprocess.run(
        ["ip", "-n", cloud.netns, "-o", "link", "show"], capture_output=True, text=True).stdout, timeout=30)
    assert ssh(cloud, key, fip_ctrl, "hostname").stdout.strip() == on_ctrl
