"""The default guest image, built from Debian packages and booted with QEMU directly (no OneStack
compute yet). QEMU's user network uses 198.18.5.0/24 with restrict=on: the guest reaches nothing
but its own DHCP server and the SSH port forwarded from 127.0.0.1."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, free_port

CACHE = os.environ.get("ONESTACK_IMAGE_CACHE", "/var/cache/onestack/images")
# This machine's nested KVM fails on real-mode boot code; TCG works everywhere.
ACCEL = os.environ.get("ONESTACK_TEST_ACCEL", "tcg")
BOOT_TIMEOUT = 180


@pytest.fixture(scope="module")
def image():
    out = subprocess.run([BIN, "image", "build-default", "--cache-dir", CACHE],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.exists() and path.stat().st_size < 64 << 20
    return path


class Guest:
    """One QEMU process booting a throwaway overlay of the image; killed by pid on exit."""

    def __init__(self, image, tmp, extra=(), ssh_port=None, net="user,id=n0,net=198.18.5.0/24,restrict=on",
                 link_down=False):
        self.log = tmp / "serial.log"
        overlay = tmp / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", str(image), str(overlay)], check=True)
        if ssh_port:
            net += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        # A human monitor on a socket (only the tests that change the NIC's link use it).
        self.monitor = tmp / "monitor.sock"
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", ACCEL, "-m", "256", "-nographic",
             "-display", "none", "-monitor", f"unix:{self.monitor},server=on,wait=off",
             "-serial", f"file:{self.log}",
             "-drive", f"file={overlay},if=virtio", "-netdev", net,
             "-device", "virtio-net-pci,netdev=n0", *(["-S"] if link_down else []), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if link_down:
            # Started paused: the cable is out before the firmware runs, then the guest boots.
            self.hmp("set_link n0 off")
            self.hmp("cont")

    def hmp(self, command):
        deadline = time.time() + 30
        while not self.monitor.exists():
            assert time.time() < deadline, "no QEMU monitor socket"
            time.sleep(0.1)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor))
            s.settimeout(10)
            # A prompt after the banner, and one after the command's answer (the echo of the
            # command carries terminal escapes, so prompts are counted, not the echo read).
            out = b""
            while b"(qemu)" not in out:
                out += s.recv(4096)
            s.sendall(command.encode() + b"\n")
            while out.count(b"(qemu)") < 2:
                out += s.recv(4096)
        return out.decode(errors="replace")

    def wait_for(self, text, timeout=BOOT_TIMEOUT):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited: {self.proc.stdout.read().decode()}")
            if text in self.console():
                return time.time()
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not on the console after {timeout}s:\n{self.console()[-3000:]}")

    def console(self):
        try:
            return self.log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="onestack-guest-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_builds_reproducibly_from_the_cache(image):
    t0 = time.time()
    again = subprocess.run([BIN, "image", "build-default", "--cache-dir", CACHE],
                           capture_output=True, text=True, timeout=300, check=True)
    assert Path(again.stdout.strip()) == image
    assert time.time() - t0 < 30  # cached: no rebuild


def test_boots_from_firmware_to_the_banner_with_dhcp(image, tmp):
    guest = Guest(image, tmp)
    try:
        t0 = time.time()
        guest.wait_for("onestack-tiny: ready")
        print(f"boot to banner: {time.time() - t0:.1f}s ({ACCEL})")
        log = guest.console()
        assert "SYSLINUX" in log  # booted by firmware and boot loader, like a cloud image
        assert "onestack-tiny login banner" in log
        assert "onestack-tiny: eth0 198.18.5." in log  # address from QEMU's DHCP server
    finally:
        guest.stop()


def make_config_drive(tmp, pubkey, user_data):
    root = tmp / "cd"
    latest = root / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "meta_data.json").write_text(json.dumps({
        "uuid": "6d3e9c1a-5b1e-4f3c-9a61-2f7c8e0d4b11", "name": "tiny-test",
        "hostname": "tiny-test.novalocal", "launch_index": 0,
        "public_keys": {"testkey": pubkey + "\n"},
        "keys": [{"name": "testkey", "type": "ssh", "data": pubkey}], "meta": {}}))
    (latest / "user_data").write_text(user_data)
    iso = tmp / "config.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-V", "config-2", "-r", "-J",
                    "-l", "-allow-lowercase", "-allow-multidot", str(root)], check=True)
    return iso


def test_config_drive_keys_user_data_and_ssh(image, tmp):
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pubkey = (tmp / "id_ed25519.pub").read_text().strip()
    iso = make_config_drive(tmp, pubkey, "#!/bin/sh\necho USER-DATA-RAN-$((6 * 7))\n")
    port = free_port()
    guest = Guest(image, tmp, ssh_port=port,
                  extra=["-drive", f"file={iso},media=cdrom,if=ide,readonly=on"])
    try:
        guest.wait_for("onestack-tiny: ready")
        log = guest.console()
        assert "instance data from config drive" in log
        assert "onestack-tiny: hostname tiny-test" in log
        assert "USER-DATA-RAN-42" in log  # the script ran (the shell did the arithmetic)
        assert "1 SSH key(s) installed" in log
        ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10", "onestack@127.0.0.1"]
        out = None
        for _ in range(30):
            out = subprocess.run(ssh + ["hostname; id -u; cat /var/log/user-data.log"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["tiny-test", "1000", "USER-DATA-RAN-42"]
        # Password logins are off: without the key, SSH is refused.
        other = tmp / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        denied = subprocess.run(ssh[:2] + [str(other)] + ssh[3:] + ["true"],
                                capture_output=True, text=True, timeout=60)
        assert denied.returncode != 0
    finally:
        guest.stop()


METADATA_SERVER = r"""
import os, sys
# One HTTP exchange on stdin/stdout (QEMU's guestfwd runs this per connection): the metadata
# service while the flag file exists, a closed connection (as if nothing listened) before.
root = sys.argv[1]
line = sys.stdin.buffer.readline().decode()
while sys.stdin.buffer.readline() not in (b"\r\n", b"\n", b""):
    pass
if not os.path.exists(os.path.join(root, "up")):
    sys.exit(0)
path = line.split()[1] if len(line.split()) > 1 else "/"
f = os.path.join(root, "md", path.lstrip("/"))
if os.path.isfile(f):
    body, status = open(f, "rb").read(), "200 OK"
else:
    body, status = b"not found", "404 Not Found"
sys.stdout.buffer.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: close\r\n\r\n".encode() + body)
sys.stdout.buffer.flush()
"""


def test_dhcp_and_metadata_that_come_late_are_still_used(image, tmp):
    """A guest that booted while neither DHCP nor the metadata service answered (its cable out,
    then the service away) gets its address, name and key once they are back, without a
    reboot: DHCP and the metadata service are retried in the background."""
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pubkey = (tmp / "id_ed25519.pub").read_text().strip()
    latest = tmp / "md" / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "meta_data.json").write_text(json.dumps({
        "uuid": "0b6c7f1e-1d7e-4a53-9e0e-5b0c1c2d3e4f", "name": "late-test",
        "hostname": "late-test.novalocal", "public_keys": {"k": pubkey + "\n"}}))
    server = tmp / "md.py"
    server.write_text(METADATA_SERVER)
    port = free_port()
    # A user network holding 169.254.169.254, where the metadata service answers through
    # guestfwd (an ordinary address of that network: the guest's DHCP router is .2).
    net = ("user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,"
           f"restrict=on,guestfwd=tcp:169.254.169.254:80-cmd:python3 {server} {tmp}")
    guest = Guest(image, tmp, ssh_port=port, net=net, link_down=True)
    try:
        guest.wait_for("onestack-tiny: ready")
        log = guest.console()
        assert "no config drive and no metadata service yet; retrying in the background" in log
        assert "0 SSH key(s) installed" in log
        assert "lease" not in log, log[-2000:]
        # The cable goes in: DHCP answers, the metadata service does not yet.
        t0 = time.time()
        guest.hmp("set_link n0 on")
        guest.wait_for("onestack-tiny: eth0 lease 169.254.169.15", timeout=60)
        print(f"late DHCP lease after {time.time() - t0:.1f}s")
        time.sleep(3)
        assert "instance data from" not in guest.console()
        # The metadata service comes back: name and key arrive.
        t0 = time.time()
        (tmp / "up").write_text("")
        guest.wait_for("1 SSH key(s) installed", timeout=90)
        print(f"late metadata after {time.time() - t0:.1f}s")
        log = guest.console()
        assert "instance data from metadata service (after" in log
        assert "onestack-tiny: hostname late-test" in log
        ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10", "onestack@127.0.0.1"]
        out = None
        for _ in range(30):
            out = subprocess.run(ssh + ["hostname"], capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "late-test"
    finally:
        guest.stop()
