"""Two NICs (the original OneStack's public_interface / flat_interface): the public interface
becomes a port of the external network's bridge, so floating IPs answer on it to the outside
world (here: a namespace standing for the upstream network, 198.18.11.254 on the floating range);
the flat interface's address is the host's address for the other hosts. Bad interface settings
are refused before anything changes."""
import json
import subprocess
import time

import pytest

from conftest import make_cloud
from test_compute_cli import demo, have_qemu
from test_network_cli import add_floating_ip, wait_ssh

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

TWO_NICS = 'public_interface = "uplink0"\nflat_interface = "data0"\n'


def sh(*args):
    subprocess.run(list(args), check=True)


def banner_from(netns, ip, port=22, timeout=60):
    """The first bytes a TCP server at ip:port sends, seen from namespace `netns`."""
    code = ("import socket,sys\ns=socket.create_connection((sys.argv[1], 22), timeout=5)\n"
            "print(s.recv(7).decode())")
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        r = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", code, ip],
                           capture_output=True, text=True, timeout=30)
        out = r.stdout.strip() or r.stderr.strip()
        if r.returncode == 0:
            return out
        time.sleep(1)
    return out


def test_public_and_flat_interfaces(tmp_path):
    with make_cloud(default_image=True, network=TWO_NICS) as cloud:
        outside = f"{cloud.ns_prefix}outside"
        sh("ip", "netns", "add", outside)
        sh("ip", "-n", cloud.netns, "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0",
           "netns", outside)
        sh("ip", "-n", outside, "addr", "add", "198.18.11.254/24", "dev", "eth0")
        sh("ip", "-n", outside, "link", "set", "eth0", "up")
        # (No dummy driver on every kernel: a veth pair, one end unused, stands for the second NIC.)
        sh("ip", "-n", cloud.netns, "link", "add", "data0", "type", "veth", "peer", "name", "data0p")
        sh("ip", "-n", cloud.netns, "link", "set", "data0", "up")

        # The flat interface has no address yet: refused, naming the key, nothing started.
        r = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", check=False)
        assert r.returncode != 0 and "network.flat_interface" in r.stderr, r.stderr
        assert not (cloud.data / "onestack.db").exists()
        sh("ip", "-n", cloud.netns, "addr", "add", "198.18.20.1/24", "dev", "data0")
        # A public interface with an address of its own would lose it: refused too.
        sh("ip", "-n", cloud.netns, "addr", "add", "198.18.21.1/24", "dev", "uplink0")
        r = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", check=False)
        assert r.returncode != 0 and "must be a dedicated interface" in r.stderr, r.stderr
        sh("ip", "-n", cloud.netns, "addr", "flush", "dev", "uplink0")
        plan = cloud.onestack("up", "--config", str(cloud.config), "--dry-run").stdout
        assert 'public_interface "uplink0"' in plan and "for others 198.18.20.1" in plan, plan

        cloud.up()
        hv = json.loads(cloud.os("hypervisor", "list", "--long", "-f", "json").stdout)
        assert [h["Host IP"] for h in hv] == ["198.18.20.1"], hv
        public = json.loads(cloud.os("network", "show", "public", "-f", "json").stdout)
        bridge = "brq" + public["id"].replace("-", "")[:11]
        # The agent builds the host networking right after `up` returns.
        deadline = time.time() + 30
        link = ""
        while time.time() < deadline and f"master {bridge}" not in link:
            time.sleep(0.5)
            link = subprocess.run(["ip", "-n", cloud.netns, "-o", "link", "show", "uplink0"],
                                  capture_output=True, text=True).stdout
        assert f"master {bridge}" in link, link

        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
             "--key-name", "k1", "--wait", "vm")
        fip = add_floating_ip(cloud, "vm")
        assert wait_ssh(cloud, key, fip) == "vm"
        # From upstream, through the public interface only (the outside namespace has no other
        # way in): the guest's SSH server answers on its floating IP.
        assert banner_from(outside, fip) == "SSH-2.0", "floating IP not reachable on the public interface"

        # Uninstall releases the interface (it is the host's) and leaves it in place.
        cloud.onestack("uninstall", "--yes", "--purge")
        link = subprocess.run(["ip", "-n", cloud.netns, "-o", "link", "show", "uplink0"],
                              capture_output=True, text=True).stdout
        assert "uplink0" in link and "master" not in link, link
