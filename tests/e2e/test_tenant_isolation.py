"""Tenant isolation from inside a guest: a server of project B tries to reach project A's server,
A's metadata and the host's ports other than the public APIs, and fails; what a cloud offers every
guest (its own metadata, the public APIs, a ping of its gateway) still works. Real guests, the real
CLI, the cloud in its own network namespace on 198.18.0.0/15."""
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import OPENSTACK, make_cloud
from test_compute_cli import demo, have_qemu

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

HOST = "198.18.11.1"  # the host's address on the external network (its first subnet's gateway)


def as_b(cloud, *args):
    """The openstack CLI as project B's member."""
    r = subprocess.run(
        cloud.in_ns(OPENSTACK, *args,
                    "--os-auth-url", f"http://127.0.0.1:{cloud.port}/v3", "--os-identity-api-version", "3",
                    "--os-username", "tenant-b", "--os-password", "b-password", "--os-project-name", "tenant-b",
                    "--os-user-domain-name", "Default", "--os-project-domain-name", "Default"),
        capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        raise AssertionError(f"openstack {' '.join(args)} as tenant-b failed:\n{r.stderr}")
    return r


def probe_script(cloud, a_fixed, a_id):
    """User data for B's guest: each probe prints one line the test reads on the console."""
    open_port = cloud.compute_port
    closed = {"metrics": cloud.metrics_port, "agent": cloud.agent_port, "dashboard": cloud.dashboard_port}
    lines = ["#!/bin/sh",
             f"ping -c 2 -W 2 {a_fixed} >/dev/null 2>&1 && echo PROBE-A-GUEST reached || echo PROBE-A-GUEST refused",
             "timeout 5 wget -q -O /tmp/md http://169.254.169.254/openstack/latest/meta_data.json "
             "&& echo PROBE-MD $(grep -o '\"uuid\":\"[^\"]*\"' /tmp/md)",
             f"grep -q {a_id} /tmp/md && echo PROBE-A-METADATA leaked || echo PROBE-A-METADATA refused",
             f"ping -c 2 -W 2 {HOST} >/dev/null 2>&1 && echo PROBE-HOST-PING ok || echo PROBE-HOST-PING lost",
             f"timeout 5 wget -q -O - http://{HOST}:{open_port}/ >/dev/null 2>&1 "
             "&& echo PROBE-PUBLIC-API ok || echo PROBE-PUBLIC-API unreachable",
             # The internal API shares the compute port: a guest finds none (404), where a host
             # without credentials would be refused (401).
             f"timeout 5 wget -q -O /dev/null http://{HOST}:{open_port}/internal/v1/hosts/x 2>/tmp/internal; "
             "echo PROBE-INTERNAL $(grep -o 'HTTP/1.1 [0-9]*' /tmp/internal)"]
    for name, port in closed.items():
        lines.append(f"timeout 5 nc {HOST} {port} </dev/null >/dev/null 2>&1 "
                     f"&& echo PROBE-{name.upper()} reached || echo PROBE-{name.upper()} refused")
    lines.append("echo PROBE-DONE")
    return "\n".join(lines) + "\n"


def test_a_guest_reaches_neither_another_project_nor_the_hosts_private_ports(tmp_path):
    # Every listener on all addresses, so only the host firewall stands between guests and them.
    with make_cloud(default_image=True, listen="0.0.0.0", compute="force_config_drive = false\n") as cloud:
        cloud.up()
        # Project A (demo): a server on its private network.
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "vm-a")
        a = json.loads(demo(cloud, "server", "show", "vm-a", "-f", "json").stdout)
        a_fixed = a["addresses"]["private"][0]

        # Project B: its own network, router and server.
        cloud.os("project", "create", "tenant-b")
        cloud.os("user", "create", "--password", "b-password", "--project", "tenant-b", "tenant-b")
        cloud.os("role", "add", "--user", "tenant-b", "--project", "tenant-b", "member")
        as_b(cloud, "network", "create", "b-net")
        as_b(cloud, "subnet", "create", "--network", "b-net", "--subnet-range", "198.18.12.0/24", "b-sub")
        as_b(cloud, "router", "create", "b-router")
        as_b(cloud, "router", "set", "--external-gateway", "public", "b-router")
        as_b(cloud, "router", "add", "subnet", "b-router", "b-sub")
        ud = tmp_path / "probe.sh"
        ud.write_text(probe_script(cloud, a_fixed, a["id"]))
        as_b(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--network", "b-net",
             "--user-data", str(ud), "--wait", "vm-b")
        b = json.loads(as_b(cloud, "server", "show", "vm-b", "-f", "json").stdout)

        deadline, out = time.time() + 300, ""
        while "PROBE-DONE" not in out and time.time() < deadline:
            out = cloud.os("console", "log", "show", b["id"]).stdout
            time.sleep(2)
        assert "PROBE-DONE" in out, out[-3000:]
        probes = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()
                  if line.startswith("PROBE-")}
        # What every guest may do.
        assert probes.get("PROBE-MD") == f'"uuid":"{b["id"]}"', out
        assert probes.get("PROBE-HOST-PING") == "ok", out
        assert probes.get("PROBE-PUBLIC-API") == "ok", out
        # What it may not.
        assert probes.get("PROBE-A-GUEST") == "refused", out
        assert probes.get("PROBE-A-METADATA") == "refused", out
        assert probes.get("PROBE-INTERNAL") == "HTTP/1.1 404", out
        for name in ("METRICS", "AGENT", "DASHBOARD"):
            assert probes.get(f"PROBE-{name}") == "refused", out
        # From the host itself those ports answer (the guard is for guests only).
        def status(url):
            try:
                return urllib.request.urlopen(url, timeout=5).status
            except urllib.error.HTTPError as e:
                return e.code
        for port in (cloud.metrics_port, cloud.dashboard_port):
            assert cloud.call_in_ns(lambda: status(f"http://{HOST}:{port}/")) < 500, port
        assert cloud.call_in_ns(lambda: status(f"http://{HOST}:{cloud.compute_port}/internal/v1/hosts/x")) == 401
