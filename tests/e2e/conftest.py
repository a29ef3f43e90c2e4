"""End-to-end fixtures: a real `onestack up` in a temporary data dir, driven by the real CLI."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BIN = os.environ.get("ONESTACK_BIN", "onestack")
OPENSTACK = os.environ.get("OPENSTACK_CLI", "openstack")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of(data_dir):
    """Pids our cloud wrote, so a failing test can still stop exactly what it started."""
    out = []
    run = Path(data_dir) / "run"
    for f in run.glob("*.pid") if run.exists() else []:
        try:
            out.append(int(f.read_text().strip()))
        except ValueError:
            pass
    return out


class Cloud:
    def __init__(self, root, default_image=False, image_size_cap=None, compute="", demo=False,
                 listen="127.0.0.1", public_host=None, network=""):
        self.root = Path(root)
        # The whole cloud runs inside a network namespace of its own (bridges, taps, rules and
        # the namespaces its agent makes stay out of the host's); commands reach it through
        # `ip netns exec`.
        self.port = free_port()
        self.netns = f"onestack-t{self.port}"
        self.ns_prefix = f"t{self.port}-"
        self.data = self.root / "data"
        # With demo=True, `up` ends by booting the demo server (as `onestack up` does by default).
        self.demo = demo
        self.image_port = free_port()
        self.compute_port = free_port()
        self.agent_port = free_port()
        self.network_port = free_port()
        self.dashboard_port = free_port()
        self.volume_port = free_port()
        self.metrics_port = free_port()
        self.config = self.root / "onestack.toml"
        image = f"[image]\ndefault_image = {'true' if default_image else 'false'}\n"
        if image_size_cap is not None:
            image += f"size_cap = {image_size_cap}\n"
        accel = os.environ.get("ONESTACK_TEST_ACCEL", "tcg")
        virt = "kvm" if accel == "kvm" else "qemu"
        self.config.write_text(
            f'[api]\nlisten = "{listen}"\nidentity_port = {self.port}\nimage_port = {self.image_port}\n'
            + (f'public_host = "{public_host}"\n' if public_host else '') +
            f'compute_port = {self.compute_port}\nnetwork_port = {self.network_port}\n'
            f'dashboard_port = {self.dashboard_port}\nvolume_port = {self.volume_port}\n'
            f'metrics_port = {self.metrics_port}\n'
            '[identity]\ntoken_lifetime = 3600\n' + image
            # Test clouds use 198.18.0.0/15 only, and namespaces named for this cloud.
            + f'[network]\nfixed_range = "198.18.10.0/24"\nfloating_range = "198.18.11.0/24"\n'
            f'namespace_prefix = "{self.ns_prefix}"\n' + network
            + f'[compute]\nagent_port = {self.agent_port}\nvirt_type = "{virt}"\nshutdown_timeout = 5\n'
            + compute
        )

    def in_ns(self, *cmd):
        """A command line that runs `cmd` inside the cloud's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def call_in_ns(self, fn):
        """Runs `fn()` on a thread that entered the cloud's namespace (sockets it opens reach the
        cloud's loopback); returns its result or raises its exception."""
        import ctypes
        import threading
        box = {}

        def target():
            try:
                fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def onestack(self, *args, check=True):
        return subprocess.run(
            self.in_ns(BIN, *args, "--data-dir", str(self.data)),
            capture_output=True, text=True, timeout=120, check=check,
        )

    def up(self):
        extra = [] if self.demo else ["--no-demo"]
        return self.onestack("up", "--config", str(self.config), *extra)

    def os(self, *args, cloud="onestack-admin", check=True, extra_env=None):
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(self.data / "clouds.yaml"))
        env.update(extra_env or {})
        r = subprocess.run(
            self.in_ns(OPENSTACK, "--os-cloud", cloud, *args),
            capture_output=True, text=True, timeout=120, env=env,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r


@pytest.fixture
def cloud():
    with make_cloud() as c:
        yield c


class make_cloud:
    """A cloud in a fresh temporary directory, stopped and removed on exit."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __enter__(self):
        self.root = tempfile.mkdtemp(prefix="onestack-e2e-")
        # Traversable (not readable) by others, so QEMU can run as its own unprivileged user.
        os.chmod(self.root, 0o711)
        self.cloud = Cloud(self.root, **self.kwargs)
        subprocess.run(["ip", "netns", "add", self.cloud.netns], check=True)
        subprocess.run(self.cloud.in_ns("ip", "link", "set", "lo", "up"), check=True)
        return self.cloud

    def __exit__(self, *exc):
        stop_cloud(self.cloud, self.root)


def qemu_pids(data_dir):
    """Live QEMU processes of this cloud's instances (VMs outlive `onestack down` by design)."""
    out = []
    for f in (Path(data_dir) / "compute" / "instances").glob("*/qemu.pid"):
        try:
            pid = int(f.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ValueError, OSError):
            continue
        if f.parent.name.encode() in cmdline:
            out.append(pid)
    return out


def helper_pids(data_dir):
    """Other processes of this cloud (dnsmasq per network, which outlives the agent by design):
    every process whose command line names this cloud's data directory."""
    out = []
    marker = str(data_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            pass
    return out


def power_cut(data_dir, vms=False):
    """SIGKILLs every OneStack process of this data dir (and its QEMU guests when `vms`), as a
    power cut would, and waits until they are gone. Returns the pids."""
    victims = set(pids_of(data_dir) + helper_pids(data_dir) + (qemu_pids(data_dir) if vms else []))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while any(Path(f"/proc/{p}").exists() for p in victims) and time.time() < deadline:
        time.sleep(0.1)
    return victims


def stop_cloud(c, root):
    subprocess.run(c.in_ns(BIN, "down", "--data-dir", str(c.data)), capture_output=True, timeout=60)
    for pid in set(pids_of(c.data) + qemu_pids(c.data) + helper_pids(c.data)):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    # The cloud's namespace, and the DHCP/router namespaces its agent made.
    netns_dir = Path("/run/netns")
    names = [p.name for p in netns_dir.glob(f"{c.ns_prefix}*")] if netns_dir.exists() else []
    for name in names + [c.netns]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    helper = helper_dir(c.data)
    if helper:
        shutil.rmtree(helper, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def helper_dir(data_dir):
    """The cloud's directory under /run/onestack (dnsmasq's host lists), found by the data-dir
    file the agent writes there."""
    for marker in Path("/run/onestack").glob("*/data-dir"):
        try:
            if marker.read_text() == str(data_dir):
                return marker.parent
        except OSError:
            pass
    return None
