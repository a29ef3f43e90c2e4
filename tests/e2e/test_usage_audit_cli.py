"""Usage metering and the audit log, with the real CLI and a real guest.

A scripted timeline — create, resize (confirmed), stop, every OneStack process killed and started
again, delete — leaves one usage event per change in the store, each stamped inside the step that
caused it and none for the restart. `openstack usage show|list` and the API give the figures worked
out here from those events, interval by interval at each interval's size, and the same figures
after the restart. Every mutating call is in `onestack audit`, under the request id the caller got,
and that id is in the API's log lines for the request."""
import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from conftest import make_cloud, power_cut
from test_compute_cli import demo, have_qemu, wait_status

pytestmark = pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage")

HOUR_US = 3_600_000_000


def now_us():
    return time.time_ns() // 1000


def events_of(cloud, server):
    db = sqlite3.connect(f"file:{cloud.data / 'onestack.db'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT event, at_us, vcpus, memory_mb, disk_gb, vm_state FROM usage_events "
            "WHERE instance_id = ? ORDER BY seq", (server,)).fetchall()
    finally:
        db.close()


def token(cloud):
    return json.loads(demo(cloud, "token", "issue", "-f", "json").stdout)["id"]


def test_usage_follows_a_timeline_and_every_change_is_audited():
    with make_cloud(default_image=True) as cloud:
        cloud.up()
        cloud.os("flavor", "create", "--vcpus", "1", "--ram", "256", "--disk", "1", "u.small")
        cloud.os("flavor", "create", "--vcpus", "2", "--ram", "1024", "--disk", "2", "u.big")
        windows = {}

        t = now_us()
        demo(cloud, "server", "create", "--flavor", "u.small", "--image", "onestack-tiny", "--wait", "u1")
        windows["create"] = (t, now_us())
        sid = json.loads(demo(cloud, "server", "show", "u1", "-f", "json").stdout)["id"]
        time.sleep(2)
        t = now_us()
        demo(cloud, "server", "resize", "--flavor", "u.big", "--wait", "u1")
        wait_status(cloud, "u1", "VERIFY_RESIZE", timeout=180)
        windows["resize"] = (t, now_us())
        time.sleep(2)
        t = now_us()
        demo(cloud, "server", "resize", "confirm", "u1")
        wait_status(cloud, "u1", "ACTIVE", timeout=120)
        windows["confirm"] = (t, now_us())
        time.sleep(2)
        t = now_us()
        demo(cloud, "server", "stop", "u1")
        wait_status(cloud, "u1", "SHUTOFF", timeout=120)
        windows["stop"] = (t, now_us())

        # Every OneStack process killed, then started again (as after a power cut).
        t = now_us()
        power_cut(cloud.data)
        cloud.up()
        wait_status(cloud, "u1", "SHUTOFF", timeout=60)
        time.sleep(3)  # the agent has reconciled the stopped server by now
        windows["restart"] = (t, now_us())

        t = now_us()
        demo(cloud, "server", "delete", "--wait", "u1")
        windows["delete"] = (t, now_us())

        # The record: one event per change, inside its step; nothing from the restart.
        ev = events_of(cloud, sid)
        kinds = [e[0] for e in ev]
        assert kinds == ["create", "resize", "state", "state", "stop", "delete"], ev
        steps = ["create", "resize", "resize", "confirm", "stop", "delete"]
        for e, step in zip(ev, steps):
            lo, hi = windows[step]
            assert lo <= e[1] <= hi, (e, step, windows[step])
        assert [e[2:5] for e in ev] == [(1, 256, 1)] + [(2, 1024, 2)] * 5, ev
        r0, r1 = windows["restart"]
        assert not [e for e in ev if r0 <= e[1] <= r1], ev

        # By hand: u.small from create to resize, u.big from resize to delete.
        small = (ev[1][1] - ev[0][1]) / HOUR_US
        big = (ev[5][1] - ev[1][1]) / HOUR_US
        want = {
            "total_hours": small + big,
            "total_vcpus_usage": 1 * small + 2 * big,
            "total_memory_mb_usage": 256 * small + 1024 * big,
            "total_local_gb_usage": 1 * small + 2 * big,
        }
        today = datetime.now(timezone.utc).date()
        start, end = today - timedelta(days=1), today + timedelta(days=1)
        demo_pid = json.loads(cloud.os("project", "show", "demo", "-f", "json").stdout)["id"]
        demo_token = token(cloud)
        base = f"http://127.0.0.1:{cloud.compute_port}/v2.1"

        def api_figures():
            def get():
                r = requests.get(f"{base}/os-simple-tenant-usage/{demo_pid}",
                                 params={"start": f"{start}T00:00:00", "end": f"{end}T00:00:00"},
                                 headers={"X-Auth-Token": demo_token}, timeout=30)
                r.raise_for_status()
                return r.json()["tenant_usage"]
            return cloud.call_in_ns(get)

        got = api_figures()
        for k, v in want.items():
            assert abs(got[k] - v) <= 1e-9 * max(v, 1), (k, got[k], v)
        su = got["server_usages"][0]
        assert su["instance_id"] == sid and su["state"] == "terminated" and su["flavor"] == "u.big", su

        # The CLI shows the same figures (its JSON output keeps them whole).
        def count(servers):
            return len(servers) if isinstance(servers, list) else int(servers)

        shown = json.loads(demo(cloud, "usage", "show", "--start", str(start), "--end", str(end),
                                "-f", "json").stdout)
        assert count(shown["Servers"]) == 1, shown
        for col, k in [("CPU Hours", "total_vcpus_usage"), ("RAM MB-Hours", "total_memory_mb_usage"),
                       ("Disk GB-Hours", "total_local_gb_usage")]:
            assert abs(float(shown[col]) - want[k]) <= 1e-9 * max(want[k], 1), (col, shown[col], want[k])
        listed = json.loads(cloud.os("usage", "list", "--start", str(start), "--end", str(end),
                                     "-f", "json").stdout)
        row = next(r for r in listed if r["Project"] in (demo_pid, "demo"))
        assert count(row["Servers"]) == 1, row
        assert abs(float(row["RAM MB-Hours"]) - want["total_memory_mb_usage"]) <= 1e-9 * want["total_memory_mb_usage"], row

        # Exact across another restart of the services: nothing is sampled.
        power_cut(cloud.data)
        cloud.up()
        again = api_figures()
        assert again["total_memory_mb_usage"] == got["total_memory_mb_usage"], (again, got)

        # The audit log has each change the demo user made, with its target and result.
        out = cloud.onestack("audit", "--user", "demo", "--json", "--limit", "0").stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        mine = [r for r in records if r["target"] == sid]
        assert any(r["action"] == "resize" and r["status"] == 202 for r in mine), mine
        assert any(r["action"] == "confirmResize" and r["status"] == 204 for r in mine), mine
        assert any(r["action"] == "os-stop" and r["status"] == 202 for r in mine), mine
        assert any(r["method"] == "DELETE" and r["status"] == 204 for r in mine), mine
        assert all(r["user_name"] == "demo" and r["project_id"] == demo_pid for r in mine), mine
        creates = [r for r in records if r["method"] == "POST" and r["route"] == "/v2.1/servers"]
        assert [r["target"] for r in creates] == [sid] and creates[0]["status"] == 202, creates

        # One refused call: its request id is in its answer, in the audit log and in the API's
        # log lines for that request.
        def refused():
            r = requests.post(f"{base}/flavors", headers={"X-Auth-Token": demo_token},
                              json={"flavor": {"name": "nope", "vcpus": 1, "ram": 64, "disk": 1}},
                              timeout=30)
            return r.status_code, r.headers.get("X-Openstack-Request-Id", "")
        status, rid = cloud.call_in_ns(refused)
        assert status == 403 and rid.startswith("req-"), (status, rid)
        rec = json.loads(cloud.onestack("audit", "--request-id", rid, "--json").stdout)
        assert (rec["status"], rec["user_name"], rec["route"]) == (403, "demo", "/v2.1/flavors"), rec
        failed = cloud.onestack("audit", "--failed", "--since", "1h").stdout
        assert rid in failed
        logs = "".join(p.read_text(errors="replace") for p in (cloud.data / "logs").glob("api*"))
        lines = [line for line in logs.splitlines() if rid in line]
        assert lines and any("handled" in line for line in lines), lines
        bad = cloud.onestack("audit", "--since", "bogus", check=False)
        assert bad.returncode != 0 and "--since bogus" in bad.stderr, bad.stderr
