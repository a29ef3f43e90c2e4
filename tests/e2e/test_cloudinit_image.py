"""A real Debian image with the distribution's cloud-init (built by
tests/images/build-debian-cloudinit.sh, cached in $ONESTACK_IMAGE_CACHE) boots by firmware under
QEMU and configures itself from an OpenStack config drive: hostname, SSH key, network data and a
user-data script. QEMU's user network uses 198.18.7.0/24 with restrict=on: the guest reaches
nothing but QEMU's DHCP server and the SSH port forwarded from 127.0.0.1."""
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import cloudinit_image
from cloudinit_image import FINISHED, Guest, build, make_config_drive, missing_prerequisite
from conftest import free_port

pytestmark = pytest.mark.skipif(missing_prerequisite() is not None,
                                reason=missing_prerequisite() or "")

HOSTNAME = "ci-test-host"
MAC = "52:54:00:c1:00:01"


@pytest.fixture(scope="module")
def image():
    t0 = time.monotonic()
    path, log = build()
    print(f"\nimage {path} ({path.stat().st_size / 2**20:.1f} MiB) "
          f"ready in {time.monotonic() - t0:.1f}s\n{log}")
    return path


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="onestack-cloudinit-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_second_build_is_cached(image):
    t0 = time.monotonic()
    again, _ = build()
    elapsed = time.monotonic() - t0
    print(f"cached build: {elapsed:.2f}s")
    assert again == image
    assert elapsed < 5
    assert image.stat().st_size < 256 << 20
    link = cloudinit_image.CACHE / "debian-cloudinit.qcow2"
    assert link.resolve() == image.resolve()


def test_config_drive_hostname_key_network_and_user_data(image, tmp):
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci@onestack",
                    "-f", str(key)], check=True)
    pubkey = (tmp / "id_ed25519.pub").read_text().strip()
    token = secrets.token_hex(6)
    # The marker is computed by the guest's shell, so it cannot come from an echo of the script.
    user_data = (
        "#!/bin/sh\n"
        "{\n"
        "  echo \"CI-HOSTNAME=$(hostname)\"\n"
        "  sed 's/^/CI-AUTHORIZED-KEY: /' /home/debian/.ssh/authorized_keys\n"
        f"  echo \"CLOUDINIT-USERDATA-RAN-{token}-$((6 * 7))\"\n"
        "} > /dev/ttyS0 2>&1\n"
    )
    iso = make_config_drive(
        tmp,
        meta_data={"uuid": str(uuid.uuid4()), "name": "cloudinit-test", "hostname": HOSTNAME,
                   "availability_zone": "nova", "launch_index": 0, "project_id": "ci",
                   "public_keys": {"k": pubkey}, "meta": {}},
        user_data=user_data,
        network_data={
            "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": MAC, "mtu": 1500}],
            "networks": [{"id": "net0", "type": "ipv4_dhcp", "link": "tap0",
                          "network_id": str(uuid.uuid4())}],
            "services": []})
    port = free_port()
    # A 3 GiB root disk for the 1 GiB image, as a flavor gives: cloud-init grows partition and
    # file system.
    guest = Guest(image, tmp, config_drive=iso, mac=MAC, ssh_port=port, disk_size="3G")
    try:
        finished = guest.wait_for(rf"CLOUDINIT-USERDATA-RAN-{token}-42", FINISHED.pattern,
                                  timeout=600)
        log = guest.console()
        print(f"boot to cloud-init finished: {finished:.1f}s ({cloudinit_image.ACCEL})")
        assert "SYSLINUX" in log  # booted by firmware and its own boot loader
        assert "DataSourceConfigDrive" in FINISHED.search(log).group(1)
        assert f"CI-HOSTNAME={HOSTNAME}" in log
        assert f"CI-AUTHORIZED-KEY: {pubkey}" in log

        ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "debian@127.0.0.1"]
        remote = ("hostname; df -BM --output=size / | tail -1; ip -4 -o addr show scope global; "
                  "ls /etc/systemd/network; sudo -n cat /var/lib/cloud/data/result.json")
        out = None
        for _ in range(20):
            out = subprocess.run(ssh + [remote], capture_output=True, text=True, timeout=120)
            if out.returncode == 0:
                break
            time.sleep(3)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == HOSTNAME
        assert int(lines[1].strip().rstrip("M")) > 2500  # grown to the disk
        assert " inet 198.18.7." in out.stdout  # DHCP from QEMU on the NIC network_data named
        assert any(line.startswith("10-cloud-init-") for line in lines)  # rendered for networkd
        result = json.loads(out.stdout[out.stdout.index("{"):])["v1"]
        assert result["errors"] == [], result
        assert result["datasource"].startswith("DataSourceConfigDrive")
        # Password-less sudo for the default user works (it ran `sudo -n` above); a key the
        # config drive did not name is refused.
        other = tmp / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)
        denied = subprocess.run(ssh[:2] + [str(other)] + ssh[3:] + ["true"],
                                capture_output=True, text=True, timeout=120)
        assert denied.returncode != 0
    finally:
        guest.stop()
