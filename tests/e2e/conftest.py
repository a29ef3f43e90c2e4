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
    def __init__(self, root, default_image=False, image_size_cap=None, compute=""):
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.image_port = free_port()
        self.compute_port = free_port()
        self.agent_port = free_port()
        self.network_port = free_port()
        self.config = self.root / "onestack.toml"
        image = f"[image]\ndefault_image = {'true' if default_image else 'false'}\n"
        if image_size_cap is not None:
            image += f"size_cap = {image_size_cap}\n"
        accel = os.environ.get("ONESTACK_TEST_ACCEL", "tcg")
        virt = "kvm" if accel == "kvm" else "qemu"
        self.config.write_text(
            f'[api]\nlisten = "127.0.0.1"\nidentity_port = {self.port}\nimage_port = {self.image_port}\n'
            f'compute_port = {self.compute_port}\nnetwork_port = {self.network_port}\n'
            '[identity]\ntoken_lifetime = 3600\n' + image
            # Test clouds use 198.18.0.0/15 only, and namespaces named for this cloud.
            + f'[network]\nfixed_range = "198.18.10.0/24"\nfloating_range = "198.18.11.0/24"\n'
            f'namespace_prefix = "t{self.port}-"\n'
            + f'[compute]\nagent_port = {self.agent_port}\nvirt_type = "{virt}"\nshutdown_timeout = 5\n'
            + compute
        )

    def onestack(self, *args, check=True):
        return subprocess.run(
            [BIN, *args, "--data-dir", str(self.data)],
            capture_output=True, text=True, timeout=120, check=check,
        )

    def up(self):
        return self.onestack("up", "--config", str(self.config), "--no-demo")

    def os(self, *args, cloud="onestack-admin", check=True, extra_env=None):
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(self.data / "clouds.yaml"))
        env.update(extra_env or {})
        r = subprocess.run(
            [OPENSTACK, "--os-cloud", cloud, *args],
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


def stop_cloud(c, root):
    subprocess.run([BIN, "down", "--data-dir", str(c.data)], capture_output=True, timeout=60)
    for pid in pids_of(c.data) + qemu_pids(c.data):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    shutil.rmtree(root, ignore_errors=True)
