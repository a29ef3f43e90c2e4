"""Block storage driven by the real `openstack` CLI with real QEMU guests: a volume written in one
guest, detached, attached to another and read back; boot from volume; snapshots, extend, quotas
and refusals. The guests' shell is the serial console (root), so no network is needed for I/O."""
import json
import time

import pytest

from conftest import make_cloud
from test_compute_cli import demo, have_qemu, serial_roundtrip, wait_console, wait_status

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")


def volume(cloud, name, who="onestack"):
    return json.loads(demo(cloud, "volume", "show", name, "-f", "json", cloud=who).stdout)


def wait_volume(cloud, name, want, timeout=120):
    deadline = time.time() + timeout
    v = None
    while time.time() < deadline:
        v = volume(cloud, name)
        if v["status"] == want:
            return v
        assert not v["status"].startswith("error"), v
        time.sleep(0.5)
    raise AssertionError(f"volume {name} never reached {want}; last: {v and v['status']}")


def console(cloud, server, command, want, timeout=30):
    url = json.loads(demo(cloud, "console", "url", "show", "--serial", server, "-f", "json").stdout)["url"]
    return serial_roundtrip(cloud, url, command=command, want=want, timeout=timeout)


def test_volumes_attach_detach_move_data_and_boot_from_volume():
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        # The catalog names block storage; the CLI finds it.
        catalog = cloud.os("catalog", "list", "-f", "json").stdout
        assert "block-storage" in catalog and "volumev3" in catalog
        types = json.loads(demo(cloud, "volume", "type", "list", "-f", "json").stdout)
        assert [t["Name"] for t in types] == ["__DEFAULT__"]

        demo(cloud, "volume", "create", "--size", "1", "data1")
        v = wait_volume(cloud, "data1", "available")
        assert v["size"] == 1 and v["bootable"] in (False, "false") and v["type"] == "__DEFAULT__"

        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "vm1")
        wait_console(cloud, "vm1", "onestack-tiny: ready", timeout=240)

        # Attach to a running guest: hot-plugged, the guest sees a new disk.
        demo(cloud, "server", "add", "volume", "vm1", "data1")
        v = wait_volume(cloud, "data1", "in-use")
        vm1 = json.loads(demo(cloud, "server", "show", "vm1", "-f", "json").stdout)
        assert v["attachments"][0]["server_id"] == vm1["id"], v
        assert v["attachments"][0]["device"] == "/dev/vdb", v
        assert [x["id"] for x in vm1["volumes_attached"]] == [v["id"]], vm1
        serial = v["id"][:20]
        out = console(cloud, "vm1", f"cat /sys/block/vdb/serial; echo SEEN-$(cat /sys/block/vdb/size)".encode(),
                      b"SEEN-2097152")
        assert serial.encode() in out, out[-500:]
        # Write a record straight to the disk, and read it back in the same guest.
        out = console(cloud, "vm1",
                      b"echo VOLDATA-4242 | dd of=/dev/vdb bs=512 count=1 conv=sync 2>/dev/null && sync && "
                      b"dd if=/dev/vdb bs=12 count=1 2>/dev/null; echo; echo WROTE-$((40+2))", b"WROTE-42")
        assert b"\nVOLDATA-4242" in out.replace(b"\r", b""), out[-500:]
        # In use: it cannot be deleted.
        r = demo(cloud, "volume", "delete", "data1", check=False)
        assert r.returncode != 0 and "in-use" in r.stderr, r.stderr

        # Detach: the guest lets go, the volume is available again.
        demo(cloud, "server", "remove", "volume", "vm1", "data1")
        wait_volume(cloud, "data1", "available")
        out = console(cloud, "vm1", b"test -e /sys/block/vdb && echo VDB-$((1+1)) || echo VDB-$((2+2))", b"VDB-4")
        assert b"VDB-2" not in out, out[-500:]

        # A second server reads what the first wrote.
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny", "--wait", "vm2")
        wait_console(cloud, "vm2", "onestack-tiny: ready", timeout=240)
        demo(cloud, "server", "add", "volume", "vm2", "data1")
        wait_volume(cloud, "data1", "in-use")
        out = console(cloud, "vm2", b"dd if=/dev/vdb bs=12 count=1 2>/dev/null; echo; echo READ-$((40+2))", b"READ-42")
        assert b"\nVOLDATA-4242" in out.replace(b"\r", b""), out[-500:]
        demo(cloud, "server", "remove", "volume", "vm2", "data1")
        wait_volume(cloud, "data1", "available")

        # Snapshot, a volume from it (same data, larger), extend.
        demo(cloud, "volume", "snapshot", "create", "--volume", "data1", "snap1")
        deadline = time.time() + 60
        while json.loads(demo(cloud, "volume", "snapshot", "show", "snap1", "-f", "json").stdout)["status"] != "available":
            assert time.time() < deadline
            time.sleep(0.5)
        demo(cloud, "volume", "create", "--snapshot", "snap1", "--size", "2", "copy1")
        assert wait_volume(cloud, "copy1", "available")["size"] == 2
        demo(cloud, "server", "add", "volume", "vm2", "copy1")
        wait_volume(cloud, "copy1", "in-use")
        out = console(cloud, "vm2", b"dd if=/dev/vdb bs=12 count=1 2>/dev/null; echo; echo COPY-$((40+2))", b"COPY-42")
        assert b"\nVOLDATA-4242" in out.replace(b"\r", b""), out[-500:]
        demo(cloud, "server", "remove", "volume", "vm2", "copy1")
        wait_volume(cloud, "copy1", "available")
        demo(cloud, "volume", "set", "--size", "3", "copy1")
        deadline = time.time() + 60
        while volume(cloud, "copy1")["size"] != 3:
            assert time.time() < deadline
            time.sleep(0.5)
        # Upload a volume to an image: an active image (raw, the CLI's default) with its data.
        demo(cloud, "image", "create", "--volume", "data1", "data1-image")
        deadline = time.time() + 120
        while json.loads(demo(cloud, "image", "show", "data1-image", "-f", "json").stdout)["status"] != "active":
            assert time.time() < deadline
            time.sleep(0.5)
        img = json.loads(demo(cloud, "image", "show", "data1-image", "-f", "json").stdout)
        assert img["disk_format"] == "raw" and img["size"] == 1 << 30, img
        with open(cloud.data / "images" / img["id"], "rb") as f:
            assert f.read(12) == b"VOLDATA-4242"
        wait_volume(cloud, "data1", "available")
        # A volume with a snapshot cannot be deleted; the snapshot first, then it can.
        r = demo(cloud, "volume", "delete", "data1", check=False)
        assert r.returncode != 0 and "snapshot" in r.stderr, r.stderr
        demo(cloud, "volume", "snapshot", "delete", "snap1")

        # Boot from volume: a volume made from the image is the server's disk.
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "onestack-tiny",
             "--boot-from-volume", "1", "--wait", "bfv")
        wait_status(cloud, "bfv", "ACTIVE")
        wait_console(cloud, "bfv", "onestack-tiny: ready", timeout=240)
        bfv = json.loads(demo(cloud, "server", "show", "bfv", "-f", "json").stdout)
        assert not bfv["image"] or "booted from volume" in str(bfv["image"]), bfv["image"]
        root_id = bfv["volumes_attached"][0]["id"]
        root = volume(cloud, root_id)
        assert root["status"] == "in-use" and root["bootable"] in (True, "true"), root
        assert root["attachments"][0]["device"] == "/dev/vda"
        # Its root volume cannot be detached.
        r = demo(cloud, "server", "remove", "volume", "bfv", root_id, check=False)
        assert r.returncode != 0, r.stdout
        # Deleting the server keeps the volume (not delete-on-termination), detached.
        demo(cloud, "server", "delete", "--wait", "bfv")
        wait_volume(cloud, root_id, "available")

        # Quotas: the project's limit is enforced, with Cinder's message, and nothing is made.
        cloud.os("quota", "set", "--volumes", "4", "demo")
        before = len(json.loads(demo(cloud, "volume", "list", "-f", "json").stdout))
        assert before == 3
        demo(cloud, "volume", "create", "--size", "1", "fourth")
        r = demo(cloud, "volume", "create", "--size", "1", "fifth", check=False)
        assert r.returncode != 0 and "VolumeLimitExceeded" in r.stderr, r.stderr
        names = [x["Name"] for x in json.loads(demo(cloud, "volume", "list", "-f", "json").stdout)]
        assert "fifth" not in names and len(names) == 4
        limits = json.loads(demo(cloud, "limits", "show", "--absolute", "-f", "json").stdout)
        # OSC names the volume limits its own way (e.g. "volumes" / "maxTotalVolumes").
        assert any(x["Value"] == 4 and "volumes" in x["Name"].lower() and "used" not in x["Name"].lower()
                   for x in limits), limits

        # Cleanup through the API leaves no volume file behind.
        demo(cloud, "server", "delete", "--wait", "vm1", "vm2")
        for name in ["data1", "copy1", "fourth", root_id]:
            demo(cloud, "volume", "delete", name)
        deadline = time.time() + 60
        while json.loads(demo(cloud, "volume", "list", "-f", "json").stdout):
            assert time.time() < deadline
            time.sleep(0.5)
        assert [p.name for p in (cloud.data / "volumes").iterdir()] == []
