"""The network API through the real `openstack` CLI (no guests): what `up` bootstraps, the
everyday network/subnet/port/router/floating IP/security group/quota commands, and that deleting
networks and routers takes their bridges and namespaces with them."""
import json
import subprocess
import time
from pathlib import Path

from conftest import make_cloud


def j(cloud, *args, who="onestack"):
    return json.loads(cloud.os(*args, "-f", "json", cloud=who).stdout)


def links(cloud):
    return subprocess.run(cloud.in_ns("ip", "-o", "link"), capture_output=True, text=True).stdout


def namespaces(cloud):
    d = Path("/run/netns")
    return sorted(p.name for p in d.glob(f"{cloud.ns_prefix}*")) if d.exists() else []


def eventually(check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def test_network_commands_and_cleanup():
    with make_cloud() as cloud:
        cloud.up()
        # What up made: public (external), private + subnet for demo, router1, open default group.
        nets = {n["Name"]: n for n in j(cloud, "network", "list", "--long")}
        assert set(nets) == {"public", "private"}
        assert nets["public"]["Router Type"] in (True, "External")
        sub = j(cloud, "subnet", "show", "private-subnet")
        assert sub["cidr"] == "198.18.10.0/24" and sub["gateway_ip"] == "198.18.10.1" and sub["enable_dhcp"]
        router = j(cloud, "router", "show", "router1")
        assert router["external_gateway_info"]["network_id"] == nets["public"]["ID"]
        rules = j(cloud, "security", "group", "rule", "list", "default", "--long")
        assert any(r["IP Protocol"] == "tcp" and r["Port Range"] == "22:22" for r in rules)
        assert any(r["IP Protocol"] == "icmp" for r in rules)
        # Bootstrap runs once: after `down` and `up` again, nothing is duplicated.
        cloud.onestack("down")
        out = cloud.up().stdout
        assert "network bootstrap: everything already in place" in out, out
        assert len(j(cloud, "network", "list")) == 2 and len(j(cloud, "router", "list")) == 1
        # The data plane of the network node: a bridge per network, DHCP and router namespaces.
        assert eventually(lambda: len(namespaces(cloud)) == 2), namespaces(cloud)
        assert links(cloud).count("brq") >= 2

        ext = {e["Alias"] for e in j(cloud, "extension", "list", "--network")}
        assert {"router", "security-group", "external-net", "quotas"} <= ext

        # Everyday commands.
        net = j(cloud, "network", "create", "blue")
        s = j(cloud, "subnet", "create", "--network", "blue", "--subnet-range", "198.18.30.0/24",
              "--allocation-pool", "start=198.18.30.100,end=198.18.30.110", "--dns-nameserver", "198.18.0.53",
              "--host-route", "destination=198.18.40.0/24,gateway=198.18.30.254", "blue-subnet")
        assert s["allocation_pools"] == [{"start": "198.18.30.100", "end": "198.18.30.110"}]
        cloud.os("subnet", "set", "--dns-nameserver", "198.18.0.54", "blue-subnet", cloud="onestack")
        assert sorted(j(cloud, "subnet", "show", "blue-subnet")["dns_nameservers"]) == ["198.18.0.53", "198.18.0.54"]
        p = j(cloud, "port", "create", "--network", "blue", "--fixed-ip", "subnet=blue-subnet,ip-address=198.18.30.105",
              "--allowed-address", "ip-address=198.18.30.200", "p1")
        assert p["fixed_ips"][0]["ip_address"] == "198.18.30.105"
        bad = cloud.os("port", "create", "--network", "blue", "--fixed-ip", "ip-address=198.18.30.105", "p2",
                       cloud="onestack", check=False)
        assert bad.returncode != 0 and "already allocated" in bad.stderr
        cloud.os("port", "set", "--no-security-group", "--no-allowed-address", "--disable-port-security", "p1",
                 cloud="onestack")
        p = j(cloud, "port", "show", "p1")
        assert p["port_security_enabled"] is False and p["security_group_ids"] == []
        cloud.os("router", "create", "r2", cloud="onestack")
        cloud.os("router", "set", "--external-gateway", "public", "r2", cloud="onestack")
        cloud.os("router", "add", "subnet", "r2", "blue-subnet", cloud="onestack")
        fip = j(cloud, "floating", "ip", "create", "public")
        cloud.os("floating", "ip", "set", "--port", "p1", fip["floating_ip_address"], cloud="onestack")
        assert j(cloud, "floating", "ip", "show", fip["id"])["fixed_ip_address"] == "198.18.30.105"
        busy = cloud.os("network", "delete", "blue", cloud="onestack", check=False)
        assert busy.returncode != 0
        assert eventually(lambda: len(namespaces(cloud)) == 4), namespaces(cloud)

        # Quotas: shown, set by the admin, enforced.
        demo_project = net["project_id"]
        q = {r["Resource"]: r["Limit"] for r in j(cloud, "quota", "show", "--network", demo_project,
                                                  who="onestack-admin")}
        assert q["networks"] == 100 and q["ports"] == 500 and q["floating_ips"] == 50
        cloud.os("quota", "set", "--networks", "2", demo_project, cloud="onestack-admin")
        over = cloud.os("network", "create", "green", cloud="onestack", check=False)
        assert over.returncode != 0 and "Quota exceeded" in over.stderr

        # Taking it all apart removes the bridge and both namespaces of the new network/router.
        cloud.os("floating", "ip", "delete", fip["id"], cloud="onestack")
        cloud.os("router", "remove", "subnet", "r2", "blue-subnet", cloud="onestack")
        cloud.os("router", "delete", "r2", cloud="onestack")
        cloud.os("port", "delete", "p1", cloud="onestack")
        cloud.os("network", "delete", "blue", cloud="onestack")
        bridge = "brq" + net["id"].replace("-", "")[:11]
        assert eventually(lambda: bridge not in links(cloud)), links(cloud)
        assert eventually(lambda: len(namespaces(cloud)) == 2), namespaces(cloud)
        assert not any(net["id"] in n for n in namespaces(cloud))
