"""The dashboard's volumes page over plain HTTP, against a real cloud: create a volume, see its
quota on the overview, attach it to an instance, and a detach the guest never acknowledges (the
instance boots a blank disk, so nothing in it answers the unplug request) ends as a readable error
next to the volume, which stays attached. Everything uses 198.18.0.0/15."""
import re
import time

from conftest import make_cloud
from test_compute_cli import demo
from test_dashboard_network import Web, cli_json, notice, read, table_notice


def test_volumes_page_create_attach_refused_detach_delete():
    with make_cloud() as cloud:
        cloud.up()
        web = Web(f"http://127.0.0.1:{cloud.dashboard_port}")
        ns = cloud.call_in_ns
        ns(lambda: web.sign_in("demo", read(cloud.data / "secrets" / "demo-password")))
        disk = cloud.root / "disk.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        demo(cloud, "image", "create", "--file", str(disk), "--disk-format", "raw", "blank")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "blank", "--wait", "vm")

        # Create: the API's answer next to the form; a bad size never reaches the API.
        status, path, page = ns(lambda: web.post("/project/volumes/create", {"name": "<i>v1</i>", "size": "1", "image": ""}))
        assert (status, path) == (200, "/project/volumes")
        assert notice(page, "create-volume") == ("ok", "Volume <i>v1</i> is being created."), notice(page, "create-volume")
        assert "&lt;i&gt;v1&lt;/i&gt;" in page and "<i>v1</i>" not in page
        status, path, page = ns(lambda: web.post("/project/volumes/create", {"name": "bad", "size": "lots", "image": ""}))
        kind, text = notice(page, "create-volume")
        assert kind == "error" and "whole number" in text, text
        assert [v["Name"] for v in cli_json(cloud, "volume", "list")] == ["<i>v1</i>"]
        deadline = time.time() + 60
        while cli_json(cloud, "volume", "list")[0]["Status"] != "available":
            assert time.time() < deadline
            time.sleep(0.5)
        vid = cli_json(cloud, "volume", "list")[0]["ID"]

        # The overview charts volumes against their quota.
        page = ns(lambda: web.get("/project/overview"))
        assert 'data-quota="Volumes"' in page and 'data-quota="Volume storage"' in page, page[-3000:]

        # Attach to the instance: hot-plugged, listed as attached on its device.
        page = ns(lambda: web.get("/project/volumes"))
        server = re.search(r'<select name="server"><option value="([^"]+)"', page).group(1)
        status, path, page = ns(lambda: web.post("/project/volumes/attach", {"volume": vid, "server": server}))
        # (The attach form is gone now that no volume is available; its notice stays.)
        assert '<p class="ok" role="status">Attaching as /dev/vdb.</p>' in page, page[-3000:]
        deadline = time.time() + 60
        while cli_json(cloud, "volume", "show", vid)["status"] != "in-use":
            assert time.time() < deadline
            time.sleep(0.5)
        page = ns(lambda: web.get("/project/volumes"))
        assert f'<a href="/project/instances/{server}">vm</a> on /dev/vdb' in page

        # Detach: nothing in the blank guest acknowledges it; after the agent's 20 s the volume
        # is in-use again, with the reason shown next to it.
        status, path, page = ns(lambda: web.post(f"/project/volumes/{vid}/detach", {}))
        assert table_notice(page) == ("ok", "Detaching.")
        assert cli_json(cloud, "volume", "show", vid)["status"] == "detaching"
        deadline = time.time() + 90
        while cli_json(cloud, "volume", "show", vid)["status"] != "in-use":
            assert time.time() < deadline
            time.sleep(1)
        # Cinder's volume has no field for it (the CLI shows none); the page shows the reason.
        page = ns(lambda: web.get("/project/volumes"))
        assert "the guest did not release the disk within 20 s" in page, page[-3000:]
        # An in-use volume cannot be deleted: Cinder's refusal, readable.
        status, path, page = ns(lambda: web.post(f"/project/volumes/{vid}/delete", {}))
        kind, text = table_notice(page)
        assert kind == "error" and "in-use" in text, text

        # Deleting the instance releases it; then the page deletes it.
        demo(cloud, "server", "delete", "--wait", "vm")
        deadline = time.time() + 60
        while cli_json(cloud, "volume", "show", vid)["status"] != "available":
            assert time.time() < deadline
            time.sleep(0.5)
        status, path, page = ns(lambda: web.post(f"/project/volumes/{vid}/delete", {}))
        assert table_notice(page) == ("ok", "Volume deleted.")
        # CSRF: a form without the session's token changes nothing.
        status, path, page = ns(lambda: web.post("/project/volumes/create", {"name": "forged", "size": "1"}, csrf=False))
        assert status == 403
        deadline = time.time() + 60
        while cli_json(cloud, "volume", "list"):
            assert time.time() < deadline
            time.sleep(0.5)
