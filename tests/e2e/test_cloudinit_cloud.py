"""The distribution's cloud-init, in a real Debian guest booted by OneStack: once configured by the
metadata service (169.254.169.254 through the DHCP namespace) and once by a config drive. Both set
the hostname, install the key and run the user-data; SSH through a floating IP proves all three.
The cloud runs in its own network namespace with 198.18.0.0/15 addresses."""
import json
import re
import secrets
import subprocess
import time

import pytest

from cloudinit_image import build, missing_prerequisite
from conftest import make_cloud
from test_compute_cli import demo, have_qemu

pytestmark = pytest.mark.skipif(not have_qemu() or missing_prerequisite() is not None,
                                reason=missing_prerequisite() or "needs root and QEMU")

FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .*Datasource (\S+)")


def console(cloud, server):
    return demo(cloud, "console", "log", "show", server).stdout


def wait_finished(cloud, server, timeout=600):
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        out = console(cloud, server)
        m = FINISHED.search(out)
        if m:
            return m.group(1), out
        time.sleep(3)
    raise AssertionError(f"cloud-init never finished on {server}:\n{out[-3000:]}")


def ssh(cloud, key, ip, command, timeout=20):
    return subprocess.run(
        cloud.in_ns("ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", f"ConnectTimeout={timeout}", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                    f"debian@{ip}", command),
        capture_output=True, text=True, timeout=timeout + 30)


def test_cloud_init_from_the_metadata_service_and_the_config_drive(tmp_path):
    image, _ = build()
    with make_cloud() as cloud:
        cloud.up()
        cloud.os("flavor", "create", "--vcpus", "1", "--ram", "1024", "--disk", "2", "ci.small")
        demo(cloud, "image", "create", "--disk-format", "qcow2", "--file", str(image), "debian")
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1")
        markers = {}
        for name, extra in (("ci-md", []), ("ci-cd", ["--config-drive", "True"])):
            markers[name] = f"CLOUDINIT-USERDATA-{secrets.token_hex(4)}"
            ud = tmp_path / f"{name}.sh"
            ud.write_text(f"#!/bin/sh\necho {markers[name]} $(hostname) > /dev/ttyS0\n")
            demo(cloud, "server", "create", "--flavor", "ci.small", "--image", "debian", "--key-name", "k1",
                 "--user-data", str(ud), *extra, name)
        for name, want in (("ci-md", "DataSourceOpenStack"), ("ci-cd", "DataSourceConfigDrive")):
            source, out = wait_finished(cloud, name)
            assert source.startswith(want), (name, source)
            # The user-data ran, after the hostname was set from the instance's metadata.
            assert f"{markers[name]} {name}" in out, out[-3000:]
            fip = demo(cloud, "floating", "ip", "create", "public", "-f", "value",
                       "-c", "floating_ip_address").stdout.strip()
            demo(cloud, "server", "add", "floating", "ip", name, fip)
            deadline = time.time() + 120
            r = None
            while time.time() < deadline:
                r = ssh(cloud, key, fip, "hostname; cat ~/.ssh/authorized_keys; "
                                         "cloud-init status --format json")
                if r.returncode == 0:
                    break
                time.sleep(2)
            assert r is not None and r.returncode == 0, r
            lines = r.stdout.splitlines()
            assert lines[0] == name
            assert (tmp_path / "id_ed25519.pub").read_text().split()[1] in r.stdout
            status = json.loads(r.stdout[r.stdout.index("{"):])
            assert status["status"] == "done" and not status.get("errors"), status
        demo(cloud, "server", "delete", "--wait", "ci-md", "ci-cd")
