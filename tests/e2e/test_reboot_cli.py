"""Reboot survival: every OneStack, dnsmasq and QEMU process of a cloud is killed with SIGKILL and
its host networking is wiped (a fresh network namespace, as after a boot), then the services are
started again as boot would. The cloud answers with its data intact, and the server that was
ACTIVE runs again with its networking (Nova's resume_guests_state_on_host_boot)."""
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import make_cloud, power_cut
from test_compute_cli import demo, have_qemu
from test_network_cli import add_floating_ip, wait_ssh

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def test_everything_killed_and_started_again(tmp_path):
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
             "--key-name", "k1", "--wait", "vm1")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "off1")
        demo(cloud, "server", "stop", "off1")
        fip = add_floating_ip(cloud, "vm1")
        assert wait_ssh(cloud, key, fip) == "vm1"
        before = {what: json.loads(demo(cloud, *what.split(), "list", "-f", "json").stdout)
                  for what in ("server", "image", "network", "floating ip", "keypair")}
        deadline = time.time() + 60
        while json.loads(demo(cloud, "server", "show", "off1", "-f", "json").stdout)["status"] != "SHUTOFF":
            assert time.time() < deadline
            time.sleep(0.5)

        # Power cut: SIGKILL every process of this cloud, VMs and dnsmasq included...
        victims = power_cut(cloud.data, vms=True)
        assert len(victims) >= 4, victims
        # ...and a boot's empty network: no bridge, TAP, namespace or nft table survives.
        for ns in [p.name for p in Path("/run/netns").glob(f"{cloud.ns_prefix}*")]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", cloud.netns], check=True)
        subprocess.run(["ip", "netns", "add", cloud.netns], check=True)
        subprocess.run(cloud.in_ns("ip", "link", "set", "lo", "up"), check=True)

        # Boot: the services start again.
        t0 = time.time()
        cloud.up()
        after = {what: json.loads(demo(cloud, *what.split(), "list", "-f", "json").stdout)
                 for what in ("server", "image", "network", "floating ip", "keypair")}
        for what in before:
            key_of = (lambda r: r["ID"]) if what != "keypair" else (lambda r: r["Name"])
            assert sorted(map(key_of, after[what])) == sorted(map(key_of, before[what])), what
        # The running server runs again, with DHCP, its floating IP and SSH; the stopped one
        # stays stopped.
        assert wait_ssh(cloud, key, fip, timeout=180) == "vm1"
        print(f"SSH answered {time.time() - t0:.1f}s after the services started again")
        vm1 = json.loads(demo(cloud, "server", "show", "vm1", "-f", "json").stdout)
        assert vm1["status"] == "ACTIVE" and vm1["OS-EXT-STS:power_state"] in ("Running", 1)
        off1 = json.loads(demo(cloud, "server", "show", "off1", "-f", "json").stdout)
        assert off1["status"] == "SHUTOFF"
