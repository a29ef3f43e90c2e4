"""`onestack reset` and `onestack uninstall --purge` leave nothing behind: no VM or dnsmasq
process, no namespace, bridge, TAP or nft table, no file (listed after each)."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, helper_pids, make_cloud, qemu_pids
from test_compute_cli import demo, have_qemu
from test_network_cli import add_floating_ip

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def links(cloud):
    return subprocess.run(cloud.in_ns("ip", "-o", "link"), capture_output=True, text=True).stdout


def nft_tables(cloud):
    return subprocess.run(cloud.in_ns("nft", "list", "tables"), capture_output=True, text=True).stdout


def namespaces(cloud):
    return sorted(p.name for p in Path("/run/netns").glob(f"{cloud.ns_prefix}*"))


def test_reset_then_uninstall_leave_nothing_behind():
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "vm1")
        add_floating_ip(cloud, "vm1")
        old_server = json.loads(demo(cloud, "server", "show", "vm1", "-f", "json").stdout)["id"]
        old_net = json.loads(demo(cloud, "network", "show", "private", "-f", "json").stdout)["id"]
        old_ns = namespaces(cloud)
        assert len(old_ns) == 2 and qemu_pids(cloud.data)
        old_password = (cloud.data / "secrets" / "admin-password").read_text()

        # Without --yes and no "yes" typed: nothing happens.
        refused = subprocess.run(cloud.in_ns(BIN, "reset", "--data-dir", str(cloud.data)),
                                 input="no\n", capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "nothing changed" in refused.stderr
        assert demo(cloud, "server", "list", "-f", "value", "-c", "ID").stdout.split() == [old_server]

        r = cloud.onestack("reset", "--yes", "--no-demo", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        assert "removed bridges, TAPs, namespaces" in out
        # A fresh cloud: new credentials, no servers, freshly bootstrapped networks.
        assert (cloud.data / "secrets" / "admin-password").read_text() != old_password
        assert demo(cloud, "server", "list", "-f", "value").stdout.strip() == ""
        new_net = json.loads(demo(cloud, "network", "show", "private", "-f", "json").stdout)["id"]
        assert new_net != old_net
        assert not (cloud.data / "compute" / "instances" / old_server).exists()
        assert not any(old_server in str(p) for p in qemu_pids(cloud.data))
        assert not set(old_ns) & set(namespaces(cloud))
        assert ("brq" + old_net.replace("-", "")[:11]) not in links(cloud)

        # Uninstall with --purge: nothing of it is left.
        cloud.onestack("uninstall", "--yes", "--purge")
        assert not cloud.data.exists()
        assert helper_pids(cloud.data) == []
        assert namespaces(cloud) == []
        assert "brq" not in links(cloud) and "tap" not in links(cloud)
        assert "onestack" not in nft_tables(cloud)
