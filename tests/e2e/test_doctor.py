"""`onestack doctor` names the usual causes of a broken cloud: here a port some other program
holds; and passes a healthy cloud."""
import socket

from conftest import BIN, make_cloud


def test_doctor_finds_a_taken_port_and_passes_a_healthy_cloud():
    with make_cloud() as cloud:
        squatter = cloud.call_in_ns(lambda: _listen(cloud.port))
        try:
            r = cloud.onestack("doctor", "--config", str(cloud.config), check=False)
            assert r.returncode == 1, r.stdout
            assert f"{cloud.port} is in use by another program" in r.stdout
            assert "Broken" in r.stdout
            # `up` refuses too, naming the port, before anything runs.
            up = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", check=False)
            assert up.returncode != 0 and str(cloud.port) in up.stderr
        finally:
            squatter.close()
        cloud.up()
        r = cloud.onestack("doctor", check=False)
        assert r.returncode == 0, r.stdout
        assert "running and answering" in r.stdout
        for tool in ("nft", "dnsmasq", "qemu-system-x86_64"):
            assert f"[ok  ] {tool}" in r.stdout


def _listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_up_refuses_a_full_disk_before_changing_anything(tmp_path):
    """A data directory on a (nearly) full file system: `up` says so and writes nothing."""
    import subprocess
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True)
    try:
        with make_cloud() as cloud:
            r = subprocess.run(cloud.in_ns(BIN, "up", "--no-demo", "--config", str(cloud.config),
                                           "--data-dir", str(mnt / "data")),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "the disk is (nearly) full" in r.stderr, r.stderr
            assert list(mnt.iterdir()) == [], list(mnt.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
