"""Compute driven by the real `openstack` CLI: real QEMU guests booted from onestack-tiny."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import make_cloud, qemu_pids

HERE = Path(__file__).parent


def have_qemu():
    return os.geteuid() == 0 and subprocess.run(
        ["sh", "-c", "command -v qemu-system-x86_64 && command -v genisoimage"],
        capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def demo(c, *args, **kw):
    """As the demo user (a project member), unless `cloud=` says otherwise."""
    kw.setdefault("cloud", "onestack")
    return c.os(*args, **kw)


def show(cloud, server, who="onestack"):
    return json.loads(demo(cloud, "server", "show", server, "-f", "json", cloud=who).stdout)


def wait_status(cloud, server, want, timeout=120, who="onestack"):
    deadline = time.time() + timeout
    s = None
    while time.time() < deadline:
        s = show(cloud, server, who)
        if s["status"] == want and not s.get("OS-EXT-STS:task_state"):
            return s
        assert s["status"] != "ERROR", s
        time.sleep(0.5)
    raise AssertionError(f"{server} never reached {want}; last: {s and s['status']}")


def wait_console(cloud, server, text, count=1, timeout=180):
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        out = demo(cloud, "console", "log", "show", server).stdout
        if out.count(text) >= count:
            return out
        time.sleep(1)
    raise AssertionError(f"{text!r} x{count} not on the console of {server}:\n{out[-2000:]}")


def serial_roundtrip(cloud, url, command=b"echo $((6*7))XY", want=b"42XY", timeout=20):
    """Types a command on the serial console websocket and returns what came back."""
    import asyncio
    import websockets

    async def run():
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            await ws.send(b"\n" + command + b"\n")
            out = b""
            deadline = time.time() + timeout
            while want not in out and time.time() < deadline:
                try:
                    m = await asyncio.wait_for(ws.recv(), 2)
                except asyncio.TimeoutError:
                    await ws.send(b"\n" + command + b"\n")
                    continue
                out += m if isinstance(m, bytes) else m.encode()
            return out

    return cloud.call_in_ns(lambda: asyncio.run(run()))


def instance_dirs(cloud):
    d = cloud.data / "compute" / "instances"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_server_lifecycle_with_a_real_guest(tmp_path):
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kp = json.loads(demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "k1",
                                 "-f", "json").stdout)
        assert kp["name"] == "k1" and kp["fingerprint"].count(":") == 15

        srv = json.loads(demo(cloud, 
            "server", "create", "--image", "onestack-tiny", "--flavor", "m1.tiny",
            "--key-name", "k1", "--property", "role=e2e", "--config-drive", "True",
            "--wait", "vm1", "-f", "json").stdout)
        assert srv["status"] == "ACTIVE"
        sid = srv["id"]
        s = show(cloud, "vm1")
        assert s["OS-EXT-STS:power_state"] in ("Running", 1)
        assert s["key_name"] == "k1" and s["config_drive"] == "True"
        # The guest boots, reads its config drive (hostname, our key) and prints its banner.
        out = wait_console(cloud, "vm1", "onestack-tiny: ready")
        assert "=== onestack-tiny login banner ===" in out
        assert "instance data from config drive" in out
        assert "hostname vm1" in out
        assert "1 SSH key(s) installed" in out
        assert len(qemu_pids(cloud.data)) == 1
        # QEMU runs confined and unprivileged: its own user, seccomp sandbox.
        pid = qemu_pids(cloud.data)[0]
        status = Path(f"/proc/{pid}/status").read_text()
        uid = int(next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1])
        assert uid != 0
        assert next(l for l in status.splitlines() if l.startswith("Seccomp:")).split()[1] == "2"

        # The interactive serial console: a websocket URL with a signed, expiring token.
        url = json.loads(demo(cloud, "console", "url", "show", "--serial", "vm1", "-f", "json").stdout)["url"]
        assert url.startswith("ws://") and "token=" in url
        assert b"42XY" in serial_roundtrip(cloud, url)
        with pytest.raises(Exception) as refused:
            serial_roundtrip(cloud, url[:-2] + "xx", timeout=3)
        assert "401" in str(refused.value)

        # Every power action round-trips, on a real VM.
        demo(cloud, "server", "stop", "vm1")
        wait_status(cloud, "vm1", "SHUTOFF")
        assert qemu_pids(cloud.data) == []
        demo(cloud, "server", "start", "vm1")
        wait_status(cloud, "vm1", "ACTIVE")
        wait_console(cloud, "vm1", "onestack-tiny: ready", count=2)
        demo(cloud, "server", "pause", "vm1")
        wait_status(cloud, "vm1", "PAUSED")
        demo(cloud, "server", "unpause", "vm1")
        wait_status(cloud, "vm1", "ACTIVE")
        demo(cloud, "server", "suspend", "vm1")
        wait_status(cloud, "vm1", "SUSPENDED")
        assert qemu_pids(cloud.data) == []
        demo(cloud, "server", "resume", "vm1")
        wait_status(cloud, "vm1", "ACTIVE")
        demo(cloud, "server", "reboot", "--hard", "vm1")
        wait_status(cloud, "vm1", "ACTIVE")
        wait_console(cloud, "vm1", "onestack-tiny: ready", count=3)
        # Rebuild: the same server on a fresh disk from the image; it boots again.
        demo(cloud, "server", "rebuild", "--image", "onestack-tiny", "--wait", "vm1")
        wait_status(cloud, "vm1", "ACTIVE")
        wait_console(cloud, "vm1", "onestack-tiny: ready", count=4)
        assert show(cloud, "vm1")["id"] == sid
        # A conflicting action is refused with 409 while the state does not allow it.
        r = demo(cloud, "server", "unpause", "vm1", check=False)
        assert r.returncode != 0 and "409" in r.stderr

        # createImage, then boot a second server from the snapshot.
        demo(cloud, "server", "image", "create", "--name", "snap1", "--wait", "vm1")
        img = json.loads(demo(cloud, "image", "show", "snap1", "-f", "json").stdout)
        assert img["status"] == "active"
        assert img["properties"]["image_type"] == "snapshot"
        assert img["properties"]["instance_uuid"] == sid
        demo(cloud, "server", "create", "--image", "snap1", "--flavor", "m1.tiny", "--wait", "vm2")
        wait_console(cloud, "vm2", "onestack-tiny: ready")
        assert len(qemu_pids(cloud.data)) == 2

        # Delete leaves nothing: no process, no instance directory (disk, console log, sockets).
        demo(cloud, "server", "delete", "--wait", "vm1", "vm2")
        assert json.loads(demo(cloud, "server", "list", "-f", "json").stdout) == []
        deadline = time.time() + 30
        while (qemu_pids(cloud.data) or instance_dirs(cloud)) and time.time() < deadline:
            time.sleep(0.5)
        assert qemu_pids(cloud.data) == []
        assert instance_dirs(cloud) == []
        r = demo(cloud, "server", "show", sid, check=False)
        assert r.returncode != 0 and "No Server found" in r.stderr


def kill_service(cloud, name):
    pid = int((cloud.data / "run" / f"{name}.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            new = int((cloud.data / "run" / f"{name}.pid").read_text().strip())
            if new != pid and Path(f"/proc/{new}").exists():
                return new
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted")


def test_vms_survive_agent_and_controller_restarts():
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        demo(cloud, "server", "create", "--image", "onestack-tiny", "--flavor", "m1.tiny",
                 "--wait", "keep")
        pids = qemu_pids(cloud.data)
        assert len(pids) == 1
        for service in ("compute", "api"):
            kill_service(cloud, service)
            time.sleep(3)
            assert qemu_pids(cloud.data) == pids, f"the VM did not survive a {service} restart"
            deadline = time.time() + 60
            while True:
                r = demo(cloud, "server", "show", "keep", "-f", "json", check=False)
                if r.returncode == 0:
                    break
                assert time.time() < deadline, r.stderr
                time.sleep(0.5)
            assert json.loads(r.stdout)["status"] == "ACTIVE"
        # The re-adopted VM is still driven: pause and unpause reach the same QEMU.
        demo(cloud, "server", "pause", "keep")
        wait_status(cloud, "keep", "PAUSED")
        demo(cloud, "server", "unpause", "keep")
        wait_status(cloud, "keep", "ACTIVE")
        assert qemu_pids(cloud.data) == pids
        # A VM that dies behind our back is reported SHUTOFF, never a stale ACTIVE.
        os.kill(pids[0], signal.SIGKILL)
        wait_status(cloud, "keep", "SHUTOFF", timeout=30)
        demo(cloud, "server", "delete", "--wait", "keep")
        assert instance_dirs(cloud) == [] or not qemu_pids(cloud.data)


def test_bad_requests_are_refused_and_leak_nothing(tmp_path):
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        base = ["server", "create", "--image", "onestack-tiny", "--flavor", "m1.tiny"]

        def refused(args, code, who="onestack"):
            r = demo(cloud, *args, cloud=who, check=False)
            assert r.returncode != 0, r.stdout
            assert str(code) in r.stderr, r.stderr

        refused(["server", "create", "--image", "onestack-tiny", "--flavor", "m1.nope", "x"], "No Flavor found")
        refused(["server", "create", "--image", "no-such-image", "--flavor", "m1.tiny", "x"], "No Image found")
        # An unknown network: without a network service OSC fails before asking (the API's 400
        # is covered by crates/onestack-api/tests/compute.rs); either way nothing is created.
        r = demo(cloud, *base, "--nic", "net-id=5d9ef4ce-2d3c-4e0e-bd31-9b8ad2c5f9a1", "x", check=False)
        assert r.returncode != 0
        refused(base + ["--key-name", "nope", "x"], 400)
        # Another tenant's private image and keypair are invisible.
        raw = tmp_path / "private.raw"
        raw.write_bytes(os.urandom(1 << 20))
        demo(cloud, "image", "create", "--file", str(raw), "--disk-format", "raw", "--private",
                 "admins-only", cloud="onestack-admin")
        refused(["server", "create", "--image", "admins-only", "--flavor", "m1.tiny", "x"], "No Image found")
        admin_img = json.loads(demo(cloud, "image", "show", "admins-only", "-f", "json",
                                        cloud="onestack-admin").stdout)["id"]
        refused(["server", "create", "--image", admin_img, "--flavor", "m1.tiny", "x"], "No Image found")
        key = tmp_path / "k"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        demo(cloud, "keypair", "create", "--public-key", f"{key}.pub", "adminkey", cloud="onestack-admin")
        refused(base + ["--key-name", "adminkey", "x"], 400)
        # A flavor too small for the image.
        demo(cloud, "flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1", "tiny-disk",
                 cloud="onestack-admin")
        big = tmp_path / "big.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "3G"], check=True)
        demo(cloud, "image", "create", "--file", str(big), "--disk-format", "qcow2", "--public",
                 "three-gig", cloud="onestack-admin")
        r = demo(cloud, "server", "create", "--image", "three-gig", "--flavor", "tiny-disk", "x",
                     check=False)
        assert r.returncode != 0 and "too small" in r.stderr, r.stderr
        # Over quota (10 instances by default): refused with 403, nothing created.
        refused(base + ["--min", "11", "--max", "11", "x"], 403)
        # Non-admins cannot manage flavors.
        refused(["flavor", "create", "--ram", "64", "--disk", "1", "--vcpus", "1", "mine"], 403)
        assert json.loads(demo(cloud, "server", "list", "-f", "json").stdout) == []
        assert qemu_pids(cloud.data) == [] and instance_dirs(cloud) == []


def test_operator_views_with_the_cli():
    with make_cloud() as cloud:
        cloud.up()
        flavors = {f["Name"]: f for f in json.loads(demo(cloud, "flavor", "list", "-f", "json").stdout)}
        assert set(flavors) == {"m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"}
        assert flavors["m1.small"]["RAM"] == 2048 and flavors["m1.small"]["Disk"] == 20
        # The agent registered this host with its real figures.
        deadline = time.time() + 30
        while True:
            hyps = json.loads(cloud.os("hypervisor", "list", "--long", "-f", "json").stdout)
            if hyps or time.time() > deadline:
                break
            time.sleep(0.5)
        assert len(hyps) == 1 and hyps[0]["State"] == "up"
        assert hyps[0]["vCPUs"] == os.cpu_count()
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        assert abs(hyps[0]["Memory MB"] - mem_mb) <= 64
        # One hypervisor in detail, with its host's uptime and load from its agent (the CLI also
        # asks for host aggregates: there are none).
        hv = json.loads(cloud.os("hypervisor", "show", hyps[0]["Hypervisor Hostname"], "-f", "json").stdout)
        assert hv["state"] == "up" and hv["aggregates"] == [] and hv.get("load_average"), hv
        services = json.loads(cloud.os("compute", "service", "list", "-f", "json").stdout)
        assert [(s["Binary"], s["State"], s["Status"]) for s in services] == [("nova-compute", "up", "enabled")]
        zones = json.loads(demo(cloud, "availability", "zone", "list", "--compute", "-f", "json").stdout)
        assert zones == [{"Zone Name": "nova", "Zone Status": "available"}]
        # Block storage has its zone too (the CLI lists both by default).
        zones = json.loads(demo(cloud, "availability", "zone", "list", "--volume", "-f", "json").stdout)
        assert zones == [{"Zone Name": "nova", "Zone Status": "available"}]
        limits = {l["Name"]: l["Value"] for l in json.loads(
            demo(cloud, "limits", "show", "--absolute", "-f", "json").stdout)}
        assert limits["instances"] == 10 and limits["instances_used"] == 0
        usage = demo(cloud, "usage", "show", "-f", "json")
        assert usage.returncode == 0
        # Per-project quotas: the CLI reads and sets them; a create over the limit is refused
        # with Nova's message and makes nothing.
        cloud.os("quota", "set", "--instances", "1", "demo")
        shown = json.loads(cloud.os("quota", "show", "demo", "-f", "json").stdout)
        rows = shown if isinstance(shown, list) else [{"Resource": k, "Limit": v} for k, v in shown.items()]
        assert {"Resource": "instances", "Limit": 1} in [{"Resource": r.get("Resource"), "Limit": r.get("Limit")}
                                                         for r in rows], shown
        blank = cloud.root / "blank.raw"
        blank.write_bytes(b"\0" * (1 << 20))
        demo(cloud, "image", "create", "--file", str(blank), "--disk-format", "raw", "blank")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "blank", "--wait", "q1")
        r = demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "blank", "q2", check=False)
        assert r.returncode != 0 and "Quota exceeded for instances" in r.stderr, r.stderr
        assert [s["Name"] for s in json.loads(demo(cloud, "server", "list", "-f", "json").stdout)] == ["q1"]
        demo(cloud, "server", "delete", "--wait", "q1")
        r = demo(cloud, "hypervisor", "list", check=False)
        assert r.returncode != 0 and "403" in r.stderr
        # A private flavor, visible to the project it is shared with.
        cloud.os("flavor", "create", "--private", "--ram", "128", "--disk", "1", "--vcpus", "1", "--id", "p1", "private.small")
        assert "private.small" not in demo(cloud, "flavor", "list", "-f", "value", "-c", "Name").stdout
        demo_project = json.loads(cloud.os("project", "show", "demo", "-f", "json").stdout)["id"]
        cloud.os("flavor", "set", "--project", demo_project, "private.small")
        assert "private.small" in demo(cloud, "flavor", "list", "--all", "-f", "value", "-c", "Name").stdout
        cloud.os("flavor", "set", "--property", "hw:cpu_policy=shared", "private.small")
        shown = json.loads(cloud.os("flavor", "show", "private.small", "-f", "json").stdout)
        assert shown["properties"] == {"hw:cpu_policy": "shared"}
        cloud.os("flavor", "delete", "private.small")
        assert "private.small" not in cloud.os("flavor", "list", "--all", "-f", "value", "-c", "Name").stdout


def wait_clean(cloud, timeout=60):
    deadline = time.time() + timeout
    while (qemu_pids(cloud.data) or instance_dirs(cloud)) and time.time() < deadline:
        time.sleep(0.5)
    assert qemu_pids(cloud.data) == [], "a QEMU process leaked"
    assert instance_dirs(cloud) == [], "an instance directory leaked"


def test_delete_mid_boot_and_while_the_agent_is_down():
    with make_cloud(default_image=True, compute="service_down_time = 4\n") as cloud:
        cloud.up()
        # Mid-boot: delete right after create, while the agent is still preparing or starting it.
        demo(cloud, "server", "create", "--image", "onestack-tiny", "--flavor", "m1.tiny", "early")
        demo(cloud, "server", "delete", "--wait", "early")
        wait_clean(cloud)

        # The agent down (stopped, not heartbeating) when the delete comes: the record goes at
        # once, and the agent reaps the VM and its files when it is back.
        demo(cloud, "server", "create", "--image", "onestack-tiny", "--flavor", "m1.tiny", "--wait", "late")
        assert len(qemu_pids(cloud.data)) == 1
        agent = int((cloud.data / "run" / "compute.pid").read_text().strip())
        os.kill(agent, signal.SIGSTOP)
        try:
            deadline = time.time() + 30
            while True:
                svc = json.loads(cloud.os("compute", "service", "list", "-f", "json").stdout)
                if svc[0]["State"] == "down":
                    break
                assert time.time() < deadline, svc
                time.sleep(0.5)
            demo(cloud, "server", "delete", "--wait", "late")
            assert json.loads(demo(cloud, "server", "list", "-f", "json").stdout) == []
            assert len(qemu_pids(cloud.data)) == 1, "nothing can reap it while the agent is stopped"
        finally:
            os.kill(agent, signal.SIGCONT)
        wait_clean(cloud)
