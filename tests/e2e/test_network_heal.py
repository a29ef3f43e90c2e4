"""The agent repairs host networking, whatever happened to it: a killed dnsmasq is started again
and a DHCP namespace whose mount was lost (an empty file under /run/netns) is made again, within
seconds and without flooding its log; a server booted afterwards gets its address and its
metadata. The cloud runs in its own network namespace; everything uses 198.18.0.0/15."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import make_cloud
from test_compute_cli import demo, have_qemu, wait_console
from test_network_cli import NO_CONFIG_DRIVE, fixed_ip

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def dnsmasq_pid(cloud):
    """The live dnsmasq of the cloud's one DHCP server, by its pid file."""
    for f in (cloud.data / "compute" / "network" / "dhcp").glob("*/pid"):
        try:
            pid = int(f.read_text().strip())
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"dnsmasq"):
                return pid
        except (OSError, ValueError):
            pass
    return None


def wait_for(what, check, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = check()
        if v:
            return v, time.time() - t0
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def in_agent(cloud, *cmd):
    """`cmd` in the agent's mount namespace: the cloud runs under `ip netns exec`, whose mounts
    (the agent's namespace mounts under /run/netns) do not propagate back to ours."""
    pid = (cloud.data / "run" / "compute.pid").read_text().strip()
    return subprocess.run(["nsenter", "-t", pid, "-m", *cmd], capture_output=True, text=True)


def is_netns(cloud, path):
    return in_agent(cloud, "stat", "-f", "-c", "%T", str(path)).stdout.strip() == "nsfs"


def link(cloud, dev):
    return subprocess.run(["ip", "-n", cloud.netns, "link", "show", dev],
                          capture_output=True, text=True).stdout


def vm_tap(cloud):
    """The one VM TAP of the cloud (DHCP and router ports are veths)."""
    out = subprocess.run(["ip", "-d", "-o", "-n", cloud.netns, "link", "show"],
                         capture_output=True, text=True, check=True).stdout
    taps = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if " tun type tap " in line]
    assert len(taps) == 1, out
    return taps[0]


def agent_log_lines(cloud):
    return sum(len(p.read_text(errors="replace").splitlines())
               for p in (cloud.data / "logs").glob("*.log"))


def test_dnsmasq_and_the_dhcp_namespace_come_back(tmp_path):
    with make_cloud(default_image=True, compute=NO_CONFIG_DRIVE) as cloud:
        cloud.up()
        pid, _ = wait_for("dnsmasq running", lambda: dnsmasq_pid(cloud), 60)

        # dnsmasq killed: started again by the agent's self-check.
        os.kill(pid, signal.SIGKILL)
        new, took = wait_for("dnsmasq started again", lambda: (dnsmasq_pid(cloud) or pid) != pid and dnsmasq_pid(cloud), 20)
        print(f"dnsmasq respawned in {took:.1f}s")

        # The DHCP namespace's mount is lost: the agent makes it again (and dnsmasq and the
        # metadata listener in it), logging a few lines, not one per attempt.
        ns = next(Path("/run/netns").glob(f"{cloud.ns_prefix}qdhcp-*"))
        before = agent_log_lines(cloud)
        assert is_netns(cloud, ns)
        r = in_agent(cloud, "umount", str(ns))
        assert r.returncode == 0, r.stderr
        assert ns.exists() and not is_netns(cloud, ns)
        _, took = wait_for("DHCP namespace made again",
                           lambda: is_netns(cloud, ns) and (dnsmasq_pid(cloud) or new) != new, 20)
        print(f"DHCP namespace made again in {took:.1f}s")
        time.sleep(10)
        logged = agent_log_lines(cloud) - before
        assert logged < 60, f"{logged} log lines for one lost namespace"

        # A server booted now gets its address by DHCP and its identity from the metadata
        # service (no config drive here).
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
             "--wait", "vm-h")
        ip = fixed_ip(cloud, "vm-h")
        out = wait_console(cloud, "vm-h", "onestack-tiny: ready", timeout=240)
        assert f"eth0 {ip}/24" in out, out[-2000:]
        assert "instance data from metadata service" in out, out[-2000:]

        # The server's TAP deleted under its running QEMU: made again and put back in its
        # bridge; QEMU's file still points at the deleted device, which the agent says (the
        # guest's NIC is cut off until a hard reboot, which it does not impose). A hard reboot
        # starts a new QEMU on the new TAP, and the guest is back on the network.
        tap = vm_tap(cloud)
        subprocess.run(["ip", "-n", cloud.netns, "link", "del", tap], check=True)
        _, took = wait_for("TAP made again", lambda: "master brq" in link(cloud, tap), 20)
        print(f"TAP made again in {took:.1f}s")
        wait_for("the agent tells the NIC is cut off",
                 lambda: any("deleted under its running VM" in p.read_text(errors="replace")
                             for p in (cloud.data / "logs").glob("*.log")), 30)
        demo(cloud, "server", "reboot", "--hard", "--wait", "vm-h")
        out = wait_console(cloud, "vm-h", "onestack-tiny: ready", count=2, timeout=240)
        assert out.count(f"eth0 {ip}/24") >= 2, out[-2000:]
        assert "LOWER_UP" in link(cloud, tap)
