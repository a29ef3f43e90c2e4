"""A local user of the host reads nothing of the cloud. The state store (with the token keys a
forged admin token needs), secrets, logs, image data, volumes and every guest's disk, config drive
and console log are root's alone; QEMU and dnsmasq, which run as users of their own, reach exactly
their files through their own groups. That holds in a data directory only root may enter (as
`mktemp -d` makes it), where guests must still get DHCP and their key: dnsmasq reads its host
lists from /run/onestack. `doctor` and `status` notice modes broken by hand, and `up` fixes them."""
import json
import os
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import helper_dir, make_cloud
from test_compute_cli import have_qemu

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# The system's Python: one under root's home (pyenv) is out of nobody's reach.
PYTHON = "/usr/bin/python3"

# Tries to read one byte of each path given on stdin (NUL-separated); prints those it could.
READER = """
import sys
for p in sys.stdin.read().split("\\0"):
    if not p:
        continue
    try:
        with open(p, "rb") as f:
            f.read(1)
        print(p)
    except OSError:
        pass
"""

# What a local user would do with the store: read the token keys to mint an admin token.
FORGER = """
import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
print(db.execute("SELECT count(*) FROM token_keys").fetchone()[0])
"""


def readable_by_nobody(paths):
    r = subprocess.run([*NOBODY, PYTHON, "-c", READER], input="\0".join(map(str, paths)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def forge(db):
    return subprocess.run([*NOBODY, PYTHON, "-c", FORGER, str(db)],
                          capture_output=True, text=True, timeout=60)


def regular_files(root):
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if stat.S_ISREG(p.lstat().st_mode):
                out.append(p)
    return out


def all_dirs(root):
    return [Path(root)] + [Path(d) / n for d, dirs, _ in os.walk(root) for n in dirs]


def gid_of(group):
    import grp
    return grp.getgrnam(group).gr_gid


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_nothing_of_the_cloud_is_readable_by_a_local_user():
    # A config drive on every server, so the demo server's is among the files checked.
    with make_cloud(default_image=True, demo=True, compute="force_config_drive = true\n") as cloud:
        # A data directory only root may enter, as `mktemp -d` gives: it used to leave dnsmasq
        # unable to read its host list, so the demo server got no address and `up` waited.
        os.mkdir(cloud.data, 0o700)
        assert stat.S_IMODE(cloud.data.stat().st_mode) == 0o700
        out = cloud.up().stdout
        m = re.search(r"Demo server:\s+(ssh .*)$", out, re.M)
        assert m, out
        assert "waiting for SSH on" in out and "DHCP" in out, out
        # It got its address (DHCP) and its key (metadata): SSH with the key works.
        cmd = shlex.split(m.group(1))
        r = subprocess.run(cloud.in_ns(*cmd, "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                                       "-o", "LogLevel=ERROR", "hostname"),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "demo", r
        # A volume, so its file is among those checked.
        vol = json.loads(cloud.os("volume", "create", "--size", "1", "v1", "-f", "json").stdout)["id"]
        wait_for(lambda: (cloud.data / "volumes" / f"volume-{vol}").exists(), 60, "the volume file")

        data = cloud.data
        qemu_gid = gid_of("onestack-qemu")
        files = regular_files(data)
        names = {str(p.relative_to(data)) for p in files}
        server = next(p.name for p in (data / "compute" / "instances").iterdir())
        for want in ["onestack.db", "onestack.db-wal", "onestack.db-shm", "onestack.toml",
                     "secrets/admin-password", "secrets/agent-token", "clouds.yaml", "openrc",
                     "demo-key", "logs/api.log", f"compute/instances/{server}/disk",
                     f"compute/instances/{server}/disk.config",
                     f"compute/instances/{server}/console.log", f"volumes/volume-{vol}"]:
            assert want in names, (want, sorted(names))
        assert any(n.startswith("images/") for n in names), names
        assert any(n.startswith("compute/images/") for n in names), names

        # Modes: nothing for others anywhere; group bits only for QEMU's group, only where its
        # VMs need them (passing through to their files, reading the cached image).
        qemu_dirs = {data, data / "compute", data / "compute" / "instances", data / "compute" / "images",
                     data / "compute" / "instances" / server, data / "volumes"}
        for p in all_dirs(data) + files:
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            assert mode & 0o007 == 0, f"{p} is {mode:04o}"
            if p in qemu_dirs:
                assert (mode, st.st_gid) == (0o710, qemu_gid), f"{p} is {mode:04o} gid {st.st_gid}"
            elif p.parent == data / "compute" / "images" and not p.name.endswith(".part"):
                assert (mode, st.st_gid) == (0o640, qemu_gid), f"{p} is {mode:04o} gid {st.st_gid}"
            else:
                assert mode & 0o070 == 0, f"{p} is {mode:04o}"

        # As a local user: nothing readable, and the token keys out of reach.
        assert readable_by_nobody(files) == []
        assert forge(data / "onestack.db").returncode != 0

        # Even with every directory opened for passing through (someone's chmod o+x), each file's
        # own mode keeps it: nothing readable still.
        for d in all_dirs(data):
            d.chmod(stat.S_IMODE(d.stat().st_mode) | 0o001)
        assert readable_by_nobody(files) == []
        assert forge(data / "onestack.db").returncode != 0

        # Modes broken on purpose, as older versions left them: the store world-readable. The
        # local user can now read it (so the check above is not vacuous) ...
        for f in ("onestack.db", "onestack.db-wal", "onestack.db-shm"):
            (data / f).chmod(0o644)
        (data / "secrets").chmod(0o755)
        assert str(data / "onestack.db") in readable_by_nobody(files)
        assert forge(data / "onestack.db").returncode == 0
        # ... which doctor and status report, with the fix ...
        r = cloud.onestack("doctor", check=False)
        assert r.returncode == 1, r.stdout
        assert f"{data / 'onestack.db'} (0644)" in r.stdout and "`onestack up`" in r.stdout, r.stdout
        st = cloud.onestack("status", check=False)
        assert st.returncode == 1 and "PROBLEM" in st.stdout and "onestack.db" in st.stdout, st.stdout
        # ... and `up` (on the running cloud) fixes. (Opening the store, as status just did,
        # already closed the store's files.)
        again = cloud.up().stdout
        assert "file modes set on" in again and str(data) in again, again
        assert stat.S_IMODE((data / "onestack.db").stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o710
        assert readable_by_nobody(regular_files(data)) == []
        assert forge(data / "onestack.db").returncode != 0
        r = cloud.onestack("doctor", check=False)
        assert r.returncode == 0, r.stdout
        assert "[ok  ] file modes" in r.stdout and "[ok  ] DHCP files" in r.stdout, r.stdout
        assert "already running" in again and cloud.up().stdout.count("file modes set") == 0

        # dnsmasq's host list: outside the data directory, readable by its user, not by others.
        helper = helper_dir(data)
        assert helper is not None
        hosts = list(helper.glob("dhcp/*/hosts"))
        assert hosts, list(helper.rglob("*"))
        as_dnsmasq = ["setpriv", "--reuid=onestack-dnsmasq", "--regid=onestack-dnsmasq", "--clear-groups"]
        r = subprocess.run([*as_dnsmasq, "cat", *map(str, hosts)], capture_output=True, text=True)
        assert r.returncode == 0 and ",198.18.10." in r.stdout, r
        assert readable_by_nobody(hosts) == []

        # A directory on dnsmasq's way closed by hand: the agent says so in its log when it next
        # writes the list (not a silent DHCP outage), doctor names it, `up` fixes it.
        helper.chmod(0o700)
        # A port a server would hold: it joins the host list, which the agent then writes.
        cloud.os("port", "create", "--network", "private", "--device-owner", "compute:nova", "p-extra")
        log = data / "logs" / "compute.log"
        wait_for(lambda: "runs as onestack-dnsmasq and cannot read" in log.read_text(), 60,
                 "the agent's error about dnsmasq's files")
        r = cloud.onestack("doctor", check=False)
        assert r.returncode == 1 and "[FAIL] DHCP files" in r.stdout, r.stdout
        assert "cannot read" in r.stdout and str(helper) in r.stdout, r.stdout
        cloud.up()
        assert stat.S_IMODE(helper.stat().st_mode) == 0o711
        r = cloud.onestack("doctor", check=False)
        assert r.returncode == 0 and "[ok  ] DHCP files" in r.stdout, r.stdout
