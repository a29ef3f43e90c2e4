"""The image service driven by the real `openstack` CLI against a real `onestack up`."""
import hashlib
import json
import os

from conftest import make_cloud


def sha512(path):
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_qcow2(path, virtual_size):
    """A valid empty qcow2 made by qemu-img (every CI machine has qemu-utils)."""
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual_size)], check=True)


def test_image_lifecycle_with_the_cli(cloud, tmp_path):
    cloud.up()
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 123))

    img = json.loads(cloud.os(
        "image", "create", "--file", str(src), "--disk-format", "raw",
        "--container-format", "bare", "--property", "os_distro=e2e", "--tag", "first",
        "--min-ram", "32", "e2e-raw", "-f", "json").stdout)
    assert img["status"] == "active"
    assert img["size"] == src.stat().st_size
    assert img["checksum"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert img["virtual_size"] == src.stat().st_size

    shown = json.loads(cloud.os("image", "show", "e2e-raw", "-f", "json").stdout)
    assert shown["id"] == img["id"]
    assert shown["properties"]["os_hash_algo"] == "sha512"
    assert shown["properties"]["os_hash_value"] == sha512(src)
    assert shown["properties"]["os_distro"] == "e2e"

    cloud.os("image", "set", "--name", "e2e-renamed", "--property", "color=blue",
             "--tag", "second", "--public", img["id"])
    shown = json.loads(cloud.os("image", "show", img["id"], "-f", "json").stdout)
    assert shown["name"] == "e2e-renamed"
    assert shown["visibility"] == "public"
    assert shown["properties"]["color"] == "blue"
    assert sorted(shown["tags"]) == ["first", "second"]
    cloud.os("image", "unset", "--property", "color", "--tag", "first", img["id"])
    shown = json.loads(cloud.os("image", "show", img["id"], "-f", "json").stdout)
    assert "color" not in shown["properties"] and shown["tags"] == ["second"]

    # The demo project sees the public image and downloads exactly what was uploaded.
    out = tmp_path / "download.raw"
    cloud.os("image", "save", "--file", str(out), "e2e-renamed", cloud="onestack")
    assert sha512(out) == sha512(src)
    denied = cloud.os("image", "delete", "e2e-renamed", cloud="onestack", check=False)
    assert denied.returncode != 0 and "403" in denied.stderr

    # A real qcow2 from qemu-img: virtual size read from its header.
    q = tmp_path / "disk.qcow2"
    write_qcow2(q, 1 << 30)
    qimg = json.loads(cloud.os(
        "image", "create", "--file", str(q), "--disk-format", "qcow2",
        "--container-format", "bare", "--private", "e2e-qcow2", "-f", "json").stdout)
    assert qimg["virtual_size"] == 1 << 30 and qimg["status"] == "active"

    listed = json.loads(cloud.os("image", "list", "--long", "-f", "json").stdout)
    assert {i["Name"] for i in listed} == {"e2e-renamed", "e2e-qcow2"}
    private = json.loads(cloud.os("image", "list", "--private", "-f", "json").stdout)
    assert [i["Name"] for i in private] == ["e2e-qcow2"]
    demo_list = json.loads(cloud.os("image", "list", "-f", "json", cloud="onestack").stdout)
    assert [i["Name"] for i in demo_list] == ["e2e-renamed"]
    missing = cloud.os("image", "show", "e2e-qcow2", cloud="onestack", check=False)
    assert missing.returncode != 0

    cloud.os("image", "set", "--protected", "e2e-qcow2")
    refused = cloud.os("image", "delete", "e2e-qcow2", check=False)
    assert refused.returncode != 0 and "protected" in refused.stderr
    cloud.os("image", "set", "--unprotected", "e2e-qcow2")
    cloud.os("image", "delete", "e2e-qcow2", "e2e-renamed")
    assert json.loads(cloud.os("image", "list", "-f", "json").stdout) == []
    assert [p.name for p in (cloud.data / "images").iterdir()] == []


def test_upload_over_the_size_cap_is_refused_and_leaves_nothing(tmp_path):
    with make_cloud(image_size_cap=1024 * 1024) as cloud:
        cloud.up()
        big = tmp_path / "big.raw"
        big.write_bytes(os.urandom(2 * 1024 * 1024))
        r = cloud.os("image", "create", "--file", str(big), "--disk-format", "raw",
                     "--container-format", "bare", "too-big", check=False)
        assert r.returncode != 0 and "413" in r.stderr
        # The SDK deletes the image it created when the upload fails; nothing remains.
        assert json.loads(cloud.os("image", "list", "-f", "json").stdout) == []
        assert [p.name for p in (cloud.data / "images").iterdir()] == []
        assert cloud.onestack("status").returncode == 0


def test_up_registers_the_default_guest_image_once():
    with make_cloud(default_image=True) as cloud:
        out = cloud.up()
        assert "onestack-tiny" in out.stdout + out.stderr
        images = json.loads(cloud.os("image", "list", "--long", "-f", "json", cloud="onestack").stdout)
        tiny = [i for i in images if i["Name"] == "onestack-tiny"]
        assert len(tiny) == 1 and tiny[0]["Status"] == "active"
        shown = json.loads(cloud.os("image", "show", "onestack-tiny", "-f", "json").stdout)
        assert shown["visibility"] == "public" and shown["disk_format"] == "qcow2"
        assert shown["properties"]["os_admin_user"] == "onestack"
        assert 0 < shown["size"] < 64 << 20 and shown["virtual_size"] >= shown["size"]
        # Down and up again: the same image, not a second copy.
        cloud.onestack("down")
        cloud.up()
        images = json.loads(cloud.os("image", "list", "-f", "json").stdout)
        assert [i["ID"] for i in images if i["Name"] == "onestack-tiny"] == [shown["id"]]
