"""`onestack up` as a user runs it: it ends by booting the demo server (keypair, server on the demo
network, floating IP) and prints the exact `ssh` command, which works; a second `up` and a
second `onestack demo` change nothing."""
import re
import shlex
import subprocess

import pytest

from conftest import make_cloud
from test_compute_cli import demo, have_qemu

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def test_up_ends_with_a_reachable_demo_server():
    with make_cloud(default_image=True, demo=True) as cloud:
        out = cloud.up().stdout
        m = re.search(r"Demo server:\s+(ssh .*)$", out, re.M)
        assert m, out
        cmd = shlex.split(m.group(1))
        key = cmd[cmd.index("-i") + 1]
        assert subprocess.run(["stat", "-c", "%a", key], capture_output=True, text=True).stdout.strip() == "600"
        assert cmd[-1].startswith("onestack@198.18.11.")
        r = subprocess.run(cloud.in_ns(*cmd, "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                                       "-o", "LogLevel=ERROR", "hostname"),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "demo", r
        # Again: nothing new.
        again = cloud.up().stdout
        assert "nothing changed" in again
        second = cloud.onestack("demo").stdout
        assert m.group(1) in second
        servers = demo(cloud, "server", "list", "-f", "value", "-c", "Name").stdout.split()
        assert servers == ["demo"]
