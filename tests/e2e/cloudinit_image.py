"""The Debian image with the distribution's cloud-init (tests/images/build-debian-cloudinit.sh):
build or reuse it, make an OpenStack config drive, and boot it under QEMU by firmware from its
own disk. Shared by tests that need a real cloud-init guest."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "images" / "build-debian-cloudinit.sh"
CACHE = Path(os.environ.get("ONESTACK_IMAGE_CACHE", "/var/cache/onestack-ci/images"))
# This machine's nested KVM fails on real-mode boot code; TCG works everywhere.
ACCEL = os.environ.get("ONESTACK_TEST_ACCEL", "tcg")
FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .*Datasource (\S+)")
NEEDED_TOOLS = ("qemu-system-x86_64", "qemu-img", "genisoimage", "ssh-keygen", "debootstrap")


def missing_prerequisite():
    """Why this machine cannot build and boot the image, or None."""
    if os.geteuid() != 0:
        return "building the Debian image needs root (debootstrap, chroot)"
    for tool in NEEDED_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def build(cache=CACHE, timeout=1800):
    """Path of the cached image, building it first if this script version has none."""
    cache.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(BUILD_SCRIPT), str(cache)], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"image build failed:\n{out.stderr[-4000:]}"
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_file(), out.stdout
    return path, out.stderr


def make_config_drive(workdir, meta_data, user_data, network_data=None, vendor_data=None):
    """An ISO 9660 config drive labelled config-2, as Nova makes it."""
    root = Path(workdir) / "config-drive"
    latest = root / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "meta_data.json").write_text(json.dumps(meta_data))
    (latest / "user_data").write_text(user_data)
    (latest / "network_data.json").write_text(json.dumps(network_data or {}))
    (latest / "vendor_data.json").write_text(json.dumps(vendor_data or {}))
    iso = Path(workdir) / "config-drive.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-V", "config-2", "-J", "-R",
                    str(root)], check=True)
    return iso


class Guest:
    """One QEMU process booting a throwaway overlay of the image (firmware -> MBR -> SYSLINUX);
    the serial console goes to a file. Stopped by pid."""

    def __init__(self, image, workdir, config_drive=None, mac="52:54:00:c1:00:01",
                 net="198.18.7.0/24", ssh_port=None, smp=2, memory=1024, disk_size=None):
        workdir = Path(workdir)
        self.log = workdir / "serial.log"
        overlay = workdir / "overlay.qcow2"
        # disk_size (e.g. "3G"): a bigger disk than the image, as a flavor's root disk.
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", str(image), str(overlay), *([disk_size] if disk_size else [])],
                       check=True)
        nic = f"user,model=virtio-net-pci,mac={mac},net={net},restrict=on"
        if ssh_port:
            nic += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        cmd = ["qemu-system-x86_64", "-accel", ACCEL, "-smp", str(smp), "-m", str(memory),
               "-nodefaults", "-nographic", "-display", "none", "-monitor", "none",
               "-serial", f"file:{self.log}", "-drive", f"file={overlay},if=virtio",
               "-nic", nic]
        if config_drive:
            cmd += ["-drive", f"file={config_drive},media=cdrom,if=ide,readonly=on"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def console(self):
        try:
            return self.log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, *patterns, timeout=600, cloud_init_grace=90):
        """Waits until every regex matches the console; returns seconds since QEMU started.
        Gives up early when the login prompt came and cloud-init has not started
        cloud_init_grace seconds later (ds-identify found no datasource)."""
        deadline = time.monotonic() + timeout
        login_seen = None
        while True:
            text = self.console()
            if all(re.search(p, text) for p in patterns):
                return time.monotonic() - self.started
            if login_seen is None and re.search(r"\n\S+ login: ", text):
                login_seen = time.monotonic()
            if (login_seen is not None and "Cloud-init v." not in text
                    and time.monotonic() - login_seen > cloud_init_grace):
                raise AssertionError("login prompt but no cloud-init on the console after "
                                     f"{cloud_init_grace}s (no datasource found?):\n{text[-4000:]}")
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}): "
                                     f"{self.proc.stdout.read().decode(errors='replace')}\n"
                                     f"console:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                missing = [p for p in patterns if not re.search(p, text)]
                raise AssertionError(f"{missing} not on the console after {timeout}s:\n"
                                     f"{text[-4000:]}")
            time.sleep(1)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait(timeout=30)
