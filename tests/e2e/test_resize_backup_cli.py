"""Resize (revert and confirm) and rotating backups of a running real guest, with the real CLI. The
guest itself reports its memory and disk size on the serial console."""
import json
import time

import pytest

from conftest import make_cloud
from test_compute_cli import demo, have_qemu, wait_console, wait_status
from test_volume_cli import console

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def guest_size(cloud, server):
    """(MemTotal in MiB, root disk in GiB) as the guest sees them."""
    out = console(cloud, server,
                  b"echo SIZE-$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)-$(($(cat /sys/block/vda/size)/2097152))-Z$((6*7))",
                  b"-Z42", timeout=60).decode(errors="replace")
    line = [x for x in out.replace("\r", "").split("\n") if x.startswith("SIZE-") and x.endswith("-Z42")]
    assert line, out[-500:]
    mem, disk = line[-1][len("SIZE-"):-len("-Z42")].split("-")
    return int(mem), int(disk)


def test_resize_revert_confirm_and_backup_rotation():
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "rs")
        wait_console(cloud, "rs", "onestack-tiny: ready", timeout=240)
        mem0, disk0 = guest_size(cloud, "rs")
        assert mem0 < 512 and disk0 == 1, (mem0, disk0)

        # Resize to m1.small: VERIFY_RESIZE, and the guest has the new memory and disk.
        demo(cloud, "server", "resize", "--flavor", "m1.small", "rs")
        s = wait_status(cloud, "rs", "VERIFY_RESIZE", timeout=240)
        assert s["flavor"].startswith("m1.small"), s["flavor"]
        wait_console(cloud, "rs", "onestack-tiny: ready", count=2, timeout=240)
        mem1, disk1 = guest_size(cloud, "rs")
        assert mem1 > 1500 and disk1 == 20, (mem1, disk1)

        # Revert: the old flavor, the old disk, the guest runs again with them.
        demo(cloud, "server", "resize", "revert", "rs")
        s = wait_status(cloud, "rs", "ACTIVE", timeout=240)
        assert s["flavor"].startswith("m1.tiny"), s["flavor"]
        wait_console(cloud, "rs", "onestack-tiny: ready", count=3, timeout=240)
        assert guest_size(cloud, "rs") == (mem0, disk0)

        # Resize again and confirm: ACTIVE with the new flavor, the old disk gone.
        demo(cloud, "server", "resize", "--flavor", "m1.small", "rs")
        wait_status(cloud, "rs", "VERIFY_RESIZE", timeout=240)
        demo(cloud, "server", "resize", "confirm", "rs")
        s = wait_status(cloud, "rs", "ACTIVE")
        assert s["flavor"].startswith("m1.small"), s["flavor"]
        inst_dir = cloud.data / "compute" / "instances" / s["id"]
        deadline = time.time() + 30
        while (inst_dir / "disk.resize-backup").exists():
            assert time.time() < deadline, "the old disk was not dropped after confirm"
            time.sleep(0.5)
        # Refusals: the same flavor, a smaller disk.
        r = demo(cloud, "server", "resize", "--flavor", "m1.small", "rs", check=False)
        assert r.returncode != 0 and "change flavor" in r.stderr, r.stderr
        r = demo(cloud, "server", "resize", "--flavor", "m1.tiny", "rs", check=False)
        assert r.returncode != 0 and "resize disk down" in r.stderr, r.stderr

        # A record on the running guest's disk (its last sector, past the partition): the
        # backups, taken while it runs, must carry it.
        out = console(cloud, "rs", b"echo SNAP-DATA-31 | dd of=/dev/vda bs=512 seek=$(($(cat /sys/block/vda/size)-1)) "
                      b"count=1 conv=sync 2>/dev/null && sync && echo W-$((6*7))", b"W-42")
        assert b"W-42" in out, out[-300:]
        # Backups with rotation 2: three taken, the two newest kept, each a real image.
        for n in range(3):
            demo(cloud, "server", "backup", "create", "--name", f"rs-daily-{n}", "--type", "daily",
                 "--rotate", "2", "--wait", "rs")
            wait_status(cloud, "rs", "ACTIVE", timeout=240)
        images = json.loads(demo(cloud, "image", "list", "--long", "-f", "json").stdout)
        names = sorted(i["Name"] for i in images if i["Name"].startswith("rs-daily-"))
        assert names == ["rs-daily-1", "rs-daily-2"], names
        b = json.loads(demo(cloud, "image", "show", "rs-daily-2", "-f", "json").stdout)
        assert b["status"] == "active" and b["properties"]["image_type"] == "backup", b
        assert b["properties"]["backup_type"] == "daily", b
        # A backup boots.
        demo(cloud, "server", "create", "--flavor", "m1.small", "--image", "rs-daily-2", "--wait", "from-backup")
        wait_console(cloud, "from-backup", "onestack-tiny: ready", timeout=240)
        out = console(cloud, "from-backup", b"dd if=/dev/vda bs=512 skip=$(($(cat /sys/block/vda/size)-1)) count=1 "
                      b"2>/dev/null | head -c 12; echo; echo R-$((6*7))", b"R-42")
        assert b"\nSNAP-DATA-31" in out.replace(b"\r", b""), out[-300:]
        demo(cloud, "server", "delete", "--wait", "rs", "from-backup")
