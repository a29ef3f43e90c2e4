"""Networking end to end: real guests on the data plane `onestack up` builds (bridges, TAPs,
dnsmasq, nftables, a router namespace with NAT, the metadata service), driven by the real CLI.
The cloud runs in its own network namespace; everything uses 198.18.0.0/15."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import make_cloud
from test_compute_cli import demo, have_qemu, wait_console

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

# Servers learn about themselves from the metadata service here, not a config drive.
NO_CONFIG_DRIVE = "force_config_drive = false\n"


def ssh(cloud, key, ip, command, timeout=15):
    return subprocess.run(
        cloud.in_ns("ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", f"ConnectTimeout={timeout}", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                    f"onestack@{ip}", command),
        capture_output=True, text=True, timeout=timeout + 30)


def wait_ssh(cloud, key, ip, timeout=120):
    deadline = time.time() + timeout
    r = None
    while time.time() < deadline:
        r = ssh(cloud, key, ip, "hostname", timeout=5)
        if r.returncode == 0:
            return r.stdout.strip()
        time.sleep(1)
    raise AssertionError(f"no SSH to {ip}: {r and r.stderr}")


def ping(cloud, ip, count=2):
    return subprocess.run(cloud.in_ns("ping", "-c", str(count), "-W", "2", ip),
                          capture_output=True, text=True).returncode == 0


def fixed_ip(cloud, server):
    s = json.loads(demo(cloud, "server", "show", server, "-f", "json").stdout)
    return s["addresses"]["private"][0]


def add_floating_ip(cloud, server):
    fip = demo(cloud, "floating", "ip", "create", "public", "-f", "value", "-c", "floating_ip_address").stdout.strip()
    demo(cloud, "server", "add", "floating", "ip", server, fip)
    return fip


def test_guests_get_dhcp_metadata_ssh_and_security_groups(tmp_path):
    with make_cloud(default_image=True, compute=NO_CONFIG_DRIVE) as cloud:
        cloud.up()
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1")

        # Server B first, so A's user-data can name B's address.
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
             "--key-name", "k1", "--wait", "vm-b")
        b_ip = fixed_ip(cloud, "vm-b")
        # A's user-data (root, at boot): ping B; then pretend to be B (its address instead of
        # ours) and ask the metadata service; then take our address back.
        script = f"""#!/bin/sh
ping -c 3 -W 2 {b_ip} >/dev/null 2>&1 && echo PING-B-OK || echo PING-B-FAILED
ME=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}')
MDGW=$(ip route | awk '/^169.254.169.254/ {{print $3}}')
DEFGW=$(ip route | awk '/^default/ {{print $3}}')
timeout 5 wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json | grep -o '"uuid":"[^"]*"' | sed 's/^/MY-METADATA /'
ip addr del "$ME" dev eth0
ip addr add {b_ip}/24 dev eth0
ip route replace 169.254.169.254 via "$MDGW" dev eth0
if timeout 5 wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json >/tmp/stolen 2>/dev/null; then
  echo "SPOOFED-METADATA $(grep -o '"uuid":"[^"]*"' /tmp/stolen)"
else
  echo SPOOF-REFUSED
fi
ping -c 2 -W 2 "$DEFGW" >/dev/null 2>&1 && echo SPOOFED-PING-PASSED || echo SPOOFED-PING-DROPPED
ip addr del {b_ip}/24 dev eth0
ip addr add "$ME" dev eth0
ip route replace 169.254.169.254 via "$MDGW" dev eth0
ip route replace default via "$DEFGW" dev eth0
"""
        ud = tmp_path / "ud.sh"
        ud.write_text(script)
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--key-name", "k1",
             "--user-data", str(ud), "--wait", "vm-a")
        a_ip = fixed_ip(cloud, "vm-a")
        assert a_ip != b_ip and a_ip.startswith("198.18.10.") and b_ip.startswith("198.18.10.")
        a = json.loads(demo(cloud, "server", "show", "vm-a", "-f", "json").stdout)
        b = json.loads(demo(cloud, "server", "show", "vm-b", "-f", "json").stdout)

        # DHCP gave each its fixed address; the metadata service (no config drive) its identity.
        out = wait_console(cloud, "vm-a", "onestack-tiny: ready", timeout=240)
        assert "instance data from metadata service" in out
        assert f"eth0 {a_ip}/24" in out
        assert "PING-B-OK" in out
        assert f'MY-METADATA "uuid":"{a["id"]}"' in out
        # Pretending to be B gets nothing: the forged source never leaves A's port.
        assert "SPOOF-REFUSED" in out and "SPOOFED-METADATA" not in out
        assert "SPOOFED-PING-DROPPED" in out
        assert b["id"] not in out
        out_b = wait_console(cloud, "vm-b", "onestack-tiny: ready", timeout=240)
        assert f"eth0 {b_ip}/24" in out_b

        # A floating IP makes A reachable from the external side (this host's namespace); SSH
        # with the injected key works, and user-data ran.
        fip = add_floating_ip(cloud, "vm-a")
        assert fip.startswith("198.18.11.")
        assert wait_ssh(cloud, key, fip) == "vm-a"
        assert ping(cloud, fip)
        # A reaches B's SSH server across the network (the default group admits its members),
        # and the metadata service tells A its floating IP.
        r = ssh(cloud, key, fip, f"timeout 5 nc {b_ip} 22 </dev/null | head -c 7; echo; "
                                 "wget -q -O - http://169.254.169.254/latest/meta-data/public-ipv4")
        assert "SSH-2.0" in r.stdout and fip in r.stdout, r

        # A killed agent comes back (supervisor) and rebuilds the data plane from the database
        # without disturbing the running guest: its floating IP answers throughout.
        pid_file = cloud.data / "run" / "compute.pid"
        old_pid = int(pid_file.read_text())
        os.kill(old_pid, signal.SIGKILL)
        # Ping through the restart and the full re-apply that follows it.
        lost, restarted, deadline = 0, False, time.time() + 15
        while time.time() < deadline:
            if not ping(cloud, fip, count=1):
                lost += 1
            try:
                restarted = restarted or int(pid_file.read_text()) != old_pid
            except (OSError, ValueError):
                pass
        assert restarted, "the supervisor did not restart the agent"
        assert lost == 0, f"{lost} pings lost while the agent restarted"
        assert ssh(cloud, key, fip, "hostname").stdout.strip() == "vm-a"

        # A group without SSH: ping passes, SSH does not; adding the rule lets it in (applied
        # to the running port, no reboot).
        demo(cloud, "security", "group", "create", "nossh")
        demo(cloud, "security", "group", "rule", "create", "--protocol", "icmp", "nossh")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--key-name", "k1",
             "--security-group", "nossh", "--wait", "vm-c")
        c_fip = add_floating_ip(cloud, "vm-c")
        wait_console(cloud, "vm-c", "onestack-tiny: ready", timeout=240)
        deadline = time.time() + 30
        while not ping(cloud, c_fip) and time.time() < deadline:
            time.sleep(1)
        assert ping(cloud, c_fip)
        blocked = ssh(cloud, key, c_fip, "true", timeout=5)
        assert blocked.returncode != 0
        demo(cloud, "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22", "nossh")
        assert wait_ssh(cloud, key, c_fip, timeout=60) == "vm-c"
        # Groups change on a running server through compute too (Nova's add/removeSecurityGroup).
        demo(cloud, "server", "add", "security", "group", "vm-c", "default")
        demo(cloud, "server", "remove", "security", "group", "vm-c", "nossh")
        c = json.loads(demo(cloud, "server", "show", "vm-c", "-f", "json").stdout)
        assert [g["name"] for g in c["security_groups"]] == ["default"]
        c_port = json.loads(demo(cloud, "port", "list", "--server", "vm-c", "-f", "json", "--long").stdout)[0]
        default_id = demo(cloud, "security", "group", "show", "default", "-f", "value", "-c", "id").stdout.strip()
        assert c_port["Security Groups"] == [default_id]

        # Deleting servers takes their ports, addresses and taps with them.
        demo(cloud, "server", "delete", "--wait", "vm-a", "vm-b", "vm-c")
        ports = json.loads(demo(cloud, "port", "list", "--device-owner", "compute:nova", "-f", "json").stdout)
        assert ports == []
        fips = json.loads(demo(cloud, "floating", "ip", "list", "-f", "json").stdout)
        assert all(f["Port"] is None for f in fips)
        deadline = time.time() + 30
        while time.time() < deadline:
            links = subprocess.run(cloud.in_ns("ip", "-o", "link"), capture_output=True, text=True).stdout
            vm_taps = [line for line in links.splitlines() if "tap" in line and "@" not in line]
            if not vm_taps:
                break
            time.sleep(1)
        assert not vm_taps, vm_taps
