"""Live migration between two compute hosts (each its own network namespace, joined by a veth
pair, 198.18.20.0/24), with no shared storage: the disk is mirrored, memory migrated, and the
guest answers ping throughout but for a short pause. A migration whose target dies mid-way rolls
back: the guest keeps running on its source."""
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import OPENSTACK, helper_pids, make_cloud
from test_compute_cli import demo, have_qemu, wait_console, wait_status
from test_volume_cli import console
from test_multinode import CONTROLLER_IP, NODE_IP, Node, host_of, services, wait_for
from test_network_cli import add_floating_ip, ssh, wait_ssh

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

# Slow enough that a migration of a guest with dirty memory takes seconds (the kill test needs
# a window), fast enough for an idle guest.
BANDWIDTH_MIB = 20


class Pinger:
    """`ping` the guest every 0.1 s from the controller's namespace, in the background."""

    def __init__(self, cloud, ip):
        self.proc = subprocess.Popen(cloud.in_ns("ping", "-i", "0.1", "-W", "1", "-c", "3000", ip),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self):
        """(sent, received, longest gap in seconds between answers)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        # Answers only: "From … icmp_seq=N Destination Host Unreachable" is no answer.
        seqs = sorted(int(line.split("icmp_seq=")[1].split()[0]) for line in out.splitlines()
                      if "icmp_seq=" in line and " bytes from " in line)
        self.output = out
        import re
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        gap = max((b - a for a, b in zip(seqs, seqs[1:])), default=0) * 0.1
        return sent, got, gap


def qemu_pids_under(data):
    return [p for p in helper_pids(data) if b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes()]


def migrate(cloud, server, wait=True, host=None, who="onestack-admin"):
    """Live-migrates through openstacksdk, the library under the CLI. `openstack server migrate
    --live-migration` itself cannot be used at compute 2.1: python-openstackclient 10.5 passes
    `disk_overcommit=` to the SDK's `live_migrate_server`, whose parameter is `disk_over_commit`
    (a client bug on microversions below 2.25), and wants 2.30 for `--host`."""
    sid = demo(cloud, "server", "show", server, "-f", "value", "-c", "id").stdout.strip()
    script = (
        "import sys, openstack\n"
        f"c = openstack.connect(cloud={who!r})\n"
        f"c.compute.live_migrate_server({sid!r}, host={host!r}, force={host is not None}, block_migration=True)\n"
    )
    if wait:
        script += (
            f"s = c.compute.wait_for_server(c.compute.get_server({sid!r}), status='ACTIVE', wait=600,"
            " interval=1)\n"
        )
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(cloud.data / "clouds.yaml"))
    return subprocess.run(cloud.in_ns(str(Path(OPENSTACK).parent / "python"), "-c", script),
                          capture_output=True, text=True, timeout=900, env=env)


@contextlib.contextmanager
def two_hosts():
    """A controller (also a compute host) and a joined compute node, each in its own namespace,
    a veth pair between them: (cloud, node, controller's host name)."""
    compute = (f'my_ip = "{CONTROLLER_IP}"\nservice_down_time = 6\nforce_config_drive = false\n'
               f'live_migration_bandwidth = {BANDWIDTH_MIB}\n')
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
            up = cloud.up()
            m = re.search(r"onestack join --controller (\S+) --token (\S+)", up.stdout)
            r = node.run("join", "--controller", m.group(1), "--token", m.group(2), "--host", "node2",
                         "--config", str(node.config))
            assert r.returncode == 0, r.stdout + r.stderr
            controller_host = next(h for h in services(cloud) if h != "node2")
            yield cloud, node, controller_host
        finally:
            node.stop_everything()


def test_live_migration_keeps_the_guest_answering_and_rolls_back_when_the_target_dies(tmp_path):
    with two_hosts() as (cloud, node, controller_host):
        scenario(cloud, node, controller_host, tmp_path)


def scenario(cloud, node, controller_host, tmp_path):
    """Live migration there and back, the second time with the target killed mid-way."""

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1")
    demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
         "--key-name", "k1", "--wait", "mig")
    fip = add_floating_ip(cloud, "mig")
    assert wait_ssh(cloud, key, fip) == "mig"
    start = host_of(cloud, "mig")
    other = "node2" if start == controller_host else controller_host
    data_of = {controller_host: cloud.data, "node2": node.data}
    # A file in the guest's memory (its root file system is RAM) travels with it.
    assert ssh(cloud, key, fip, "echo migrated-memory > /tmp/marker && cat /tmp/marker").stdout.strip() == "migrated-memory"

    # Not for members; not to the host it is on.
    r = migrate(cloud, "mig", wait=False, who="onestack")
    assert r.returncode != 0 and "403" in r.stderr, r.stderr
    sid = demo(cloud, "server", "show", "mig", "-f", "value", "-c", "id").stdout.strip()
    r = migrate(cloud, "mig", wait=False, host=start)
    assert r.returncode != 0 and "can't be the same" in r.stderr, r.stderr

    # Live migration while pinging: the guest answers throughout but for a short pause.
    pinger = Pinger(cloud, fip)
    time.sleep(2)
    r = migrate(cloud, "mig")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for("the migration to end", lambda: json.loads(cloud.os("server", "show", sid, "-f", "json").stdout)["status"] == "ACTIVE", timeout=180)
    time.sleep(3)
    sent, got, gap = pinger.stop()
    assert host_of(cloud, "mig") == other
    assert sent > 30 and sent - got <= 20 and gap < 3.0, (sent, got, gap, pinger.output[-3000:])
    (cloud.root / "migration-pings.json").write_text(json.dumps({"sent": sent, "received": got, "max_gap_s": gap}))
    assert ssh(cloud, key, fip, "cat /tmp/marker").stdout.strip() == "migrated-memory"
    # One VM, on the new host; the old host kept nothing.
    wait_for("the source VM to go", lambda: not qemu_pids_under(data_of[start]), timeout=30)
    assert len(qemu_pids_under(data_of[other])) == 1
    assert not (data_of[start] / "compute" / "instances" / sid).exists()

    # Back, with the target killed mid-way: the guest keeps running where it was.
    assert ssh(cloud, key, fip, "dd if=/dev/urandom of=/tmp/fill bs=1M count=120 2>/dev/null; echo filled").stdout.strip() == "filled"
    before = set(qemu_pids_under(data_of[start]))
    r = migrate(cloud, "mig", wait=False)
    assert r.returncode == 0, r.stdout + r.stderr
    target_pid = wait_for("the target's QEMU", lambda: (set(qemu_pids_under(data_of[start])) - before) or None, timeout=120)
    # Let memory start flowing, then kill the target.
    time.sleep(2)
    for pid in target_pid:
        os.kill(pid, signal.SIGKILL)
    wait_for("the migration to give up", lambda: json.loads(cloud.os("server", "show", sid, "-f", "json").stdout)["status"] == "ACTIVE", timeout=180)
    assert host_of(cloud, "mig") == other
    assert ssh(cloud, key, fip, "cat /tmp/marker").stdout.strip() == "migrated-memory"
    wait_for("the target's leftovers to go",
             lambda: not (data_of[start] / "compute" / "instances" / sid).exists(), timeout=60)
    demo(cloud, "server", "delete", "--wait", "mig")


def test_cold_migration_moves_the_disk_and_reverts_or_confirms():
    with two_hosts() as (cloud, node, controller_host):
        data_of = {controller_host: cloud.data, "node2": node.data}
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "cold")
        wait_console(cloud, "cold", "onestack-tiny: ready", timeout=240)
        sid = demo(cloud, "server", "show", "cold", "-f", "value", "-c", "id").stdout.strip()
        start = host_of(cloud, "cold")
        other = "node2" if start == controller_host else controller_host
        # A record on the disk itself (past the partition, in the last sector): it must travel.
        out = console(cloud, "cold", b"echo COLD-DATA-77 | dd of=/dev/vda bs=512 seek=$(($(cat /sys/block/vda/size)-1)) "
                      b"count=1 conv=sync 2>/dev/null && sync && echo W-$((6*7))", b"W-42")
        assert b"W-42" in out
        read_back = (b"dd if=/dev/vda bs=512 skip=$(($(cat /sys/block/vda/size)-1)) count=1 2>/dev/null | "
                     b"head -c 12; echo; echo R-$((6*7))")

        # Members may not migrate.
        r = demo(cloud, "server", "migrate", "cold", check=False)
        assert r.returncode != 0 and "403" in r.stderr, r.stderr
        # Migrate: off here, the disk to the other host, on there; VERIFY_RESIZE.
        r = cloud.os("server", "migrate", "--wait", sid, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        s = wait_status(cloud, sid, "VERIFY_RESIZE", timeout=240, who="onestack-admin")
        assert host_of(cloud, "cold") == other
        wait_console(cloud, "cold", "onestack-tiny: ready", timeout=240)
        out = console(cloud, "cold", read_back, b"R-42")
        assert b"\nCOLD-DATA-77" in out.replace(b"\r", b""), out[-400:]
        # The source still has its copy (for a revert), not running.
        assert (data_of[start] / "compute" / "instances" / sid / "disk").exists()
        assert not qemu_pids_under(data_of[start])

        # Revert: back on the source, running again, the target's copy gone.
        cloud.os("server", "resize", "revert", sid)
        wait_status(cloud, sid, "ACTIVE", timeout=240, who="onestack-admin")
        assert host_of(cloud, "cold") == start
        wait_for("the target's copy to go", lambda: not (data_of[other] / "compute" / "instances" / sid).exists(), timeout=60)
        wait_console(cloud, "cold", "onestack-tiny: ready", count=2, timeout=240)
        out = console(cloud, "cold", read_back, b"R-42")
        assert b"\nCOLD-DATA-77" in out.replace(b"\r", b""), out[-400:]

        # Migrate and confirm: on the other host for good, the source's copy gone.
        r = cloud.os("server", "migrate", "--wait", sid, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_status(cloud, sid, "VERIFY_RESIZE", timeout=240, who="onestack-admin")
        cloud.os("server", "resize", "confirm", sid)
        wait_status(cloud, sid, "ACTIVE", timeout=60, who="onestack-admin")
        assert host_of(cloud, "cold") == other
        wait_for("the source's copy to go", lambda: not (data_of[start] / "compute" / "instances" / sid).exists(), timeout=60)
        wait_console(cloud, "cold", "onestack-tiny: ready", timeout=240)
        demo(cloud, "server", "delete", "--wait", "cold")
