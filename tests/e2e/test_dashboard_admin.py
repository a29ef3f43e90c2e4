"""The dashboard's admin pages over plain HTTP (`requests` inside the cloud's namespace):
hypervisors and compute services, projects, users and role assignments, flavors, every project's
instances and usage per project, as the admin; and a member refused every admin page and form."""
import datetime
import json
import re

import requests

from conftest import make_cloud
from test_compute_cli import demo, wait_status

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def read(path):  # noqa: D103
    return open(path).read().strip()


def option(text, form, select, label):
    """The value of the <option> labelled `label` in <select name=`select`> of form id `form`."""
    m = re.search(r'id="' + form + r'".*?<select name="' + select + r'">(.*?)</select>', text, re.S)
    assert m, f"no select {select!r} in form {form!r}"
    m = re.search(r'<option value="([^"]+)"(?: selected)?>' + re.escape(label) + "</option>", m.group(1))
    assert m, f"no option {label!r} in {select!r}"
    return m.group(1)


def test_admin_pages_forms_and_member_refusal():
    with make_cloud() as cloud:
        cloud.up()
        disk = cloud.root / "disk.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        demo(cloud, "image", "create", "--file", str(disk), "--disk-format", "raw", "img")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "img", "dash-vm")
        wait_status(cloud, "dash-vm", "ACTIVE", timeout=180)
        base = f"http://127.0.0.1:{cloud.dashboard_port}"
        admin_pw = read(cloud.data / "secrets" / "admin-password")
        demo_pw = read(cloud.data / "secrets" / "demo-password")
        user_pw = "Dash-pw-1234!"
        today = datetime.datetime.now(datetime.timezone.utc).date()

        def login(user, password, project):
            s = requests.Session()
            csrf = CSRF.search(s.get(base + "/login").text).group(1)
            r = s.post(base + "/login", data={"username": user, "password": password, "csrf": csrf,
                                              "project": project}, allow_redirects=False)
            return s, r

        def scenario():
            out = {}
            admin, r = login("admin", admin_pw, "admin")
            assert r.status_code == 303, r.text
            get = lambda path: admin.get(base + path)  # noqa: E731
            csrf = CSRF.search(get("/admin/hypervisors").text).group(1)

            def post(path, **data):
                return admin.post(base + path, data={"csrf": csrf, **data})

            r = get("/admin/hypervisors")
            out["hv"] = (r.status_code, r.text)

            # Projects: create, list; deleting one's own project is refused; another one goes.
            out["project_created"] = post("/admin/projects/create", name="p-dash",
                                          description="made <here>").text
            post("/admin/projects/create", name="p-gone")
            page = get("/admin/projects").text
            rows = re.findall(r"<tr>(.*?)</tr>", page)
            gone_row = next(row for row in rows if ">p-gone<" in row)
            admin_row = next(row for row in rows if ">admin<" in row)
            gone_id = re.search(r'/admin/projects/([^"/]+)/delete', gone_row).group(1)
            own_id = re.search(r'/admin/projects/([^"/]+)/delete', admin_row).group(1)
            out["own_delete"] = post(f"/admin/projects/{own_id}/delete").text
            out["gone_delete"] = post(f"/admin/projects/{gone_id}/delete").text

            # Users: create with the member role on p-dash; it can sign in there.
            page = get("/admin/users").text
            pid = option(page, "assign-role", "project", "p-dash")
            member, admin_role = (option(page, "assign-role", "role", r)
                                  for r in ["member", "admin"])
            out["member_default"] = f'<option value="{member}" selected>member</option>' in page
            r = post("/admin/users/create", name="u-dash", password=user_pw, email="u@example.test",
                     project=pid, role=member)
            out["user_created"] = r.text
            uid = option(r.text, "assign-role", "user", "u-dash")
            user, r = login("u-dash", user_pw, "p-dash")
            out["user_login"] = (r.status_code, r.headers.get("location"))
            out["user_overview"] = user.get(base + "/project/overview").text
            out["assigned"] = post("/admin/users/assign", user=uid, project=pid, role=admin_role).text
            out["revoked"] = post("/admin/users/revoke", user=uid, project=pid, role=admin_role).text

            # Flavors: a non-number is refused before any API call; a valid private one is listed.
            out["flavor_bad"] = post("/admin/flavors/create", name="f-bad", vcpus="two", ram="256",
                                     disk="1", public="1").text
            out["flavor_created"] = post("/admin/flavors/create", name="f-dash", vcpus="2", ram="256",
                                         disk="1").text
            row = next(row for row in re.findall(r"<tr>(.*?)</tr>", out["flavor_created"]) if ">f-dash<" in row)
            out["flavor_row"] = row
            fid = re.search(r'/admin/flavors/([^"/]+)/delete', row).group(1)
            out["flavor_deleted"] = post(f"/admin/flavors/{fid}/delete").text

            # Every project's instances, with project names.
            out["instances"] = get("/admin/instances").text

            # Usage: a valid period, then a date that is not one.
            r = get(f"/admin/usage?start={today - datetime.timedelta(days=1)}&end={today}")
            out["usage"] = (r.status_code, r.text)
            r = get("/admin/usage")
            out["usage_default"] = (r.status_code, r.text)
            r = get("/admin/usage?start=2026-13-45&end=2026-01-01")
            out["usage_bad"] = (r.status_code, r.text)

            # A member: every admin page and form is refused, and nothing is created.
            member_s, r = login("demo", demo_pw, "demo")
            assert r.status_code == 303, r.text
            overview = member_s.get(base + "/project/overview").text
            out["member_overview"] = overview
            mcsrf = CSRF.search(overview).group(1)
            out["member_get"] = {
                p: (lambda r: (r.status_code, "administrators only" in r.text))(member_s.get(base + p))
                for p in ["/admin/hypervisors", "/admin/instances", "/admin/projects", "/admin/users",
                          "/admin/flavors", "/admin/usage"]}
            out["member_post"] = {
                p: (lambda r: (r.status_code, "administrators only" in r.text))(
                    member_s.post(base + p, data={"csrf": mcsrf, **data}, allow_redirects=False))
                for p, data in [
                    ("/admin/projects/create", {"name": "p-evil"}),
                    ("/admin/flavors/create", {"name": "f-evil", "vcpus": "1", "ram": "64", "disk": "1"}),
                    ("/admin/users/create", {"name": "u-evil", "password": "x", "project": pid,
                                             "role": admin_role}),
                    ("/admin/users/assign", {"user": uid, "project": pid, "role": admin_role}),
                ]}

            # Last, the admin deletes the demo server from the all-instances page.
            srv = re.search(r'/admin/instances/([^"/]+)/delete', out["instances"]).group(1)
            out["instance_deleted"] = post(f"/admin/instances/{srv}/delete").text
            return out

        out = cloud.call_in_ns(scenario)

        status, text = out["hv"]
        assert status == 200 and "<h2>Compute services</h2>" in text, text[-1500:]
        services = text.split("<h2>Compute services</h2>", 1)[1]
        assert "<td>nova-compute</td>" in services and "<td>enabled</td>" in services
        assert "<td>up</td>" in services, services

        assert "Project p-dash created." in out["project_created"]
        assert ">p-dash<" in out["project_created"] and "made &lt;here&gt;" in out["project_created"]
        assert "the project you are working in" in out["own_delete"]
        assert "Project deleted." in out["gone_delete"] and ">p-gone<" not in out["gone_delete"]

        assert out["member_default"]
        text = out["user_created"]
        assert "User u-dash created" in text, text[-2000:]
        assert ">u-dash<" in text and "u@example.test" in text and "member on p-dash" in text
        assert user_pw not in text  # a password is never echoed back
        assert out["user_login"] == (303, "/project/overview"), out["user_login"]
        assert '<span class="who">u-dash</span>' in out["user_overview"]
        assert " selected>p-dash</option>" in out["user_overview"]
        assert "Role assigned." in out["assigned"] and "admin on p-dash" in out["assigned"]
        assert "Role revoked." in out["revoked"] and "admin on p-dash" not in out["revoked"]
        assert "member on p-dash" in out["revoked"]

        assert "vCPUs must be a whole number, not &quot;two&quot;." in out["flavor_bad"], out["flavor_bad"][-2000:]
        assert ">f-bad<" not in out["flavor_bad"]
        assert "Flavor f-dash created." in out["flavor_created"]
        # Private flavors are listed too (is_public=None).
        assert re.search(r"<td>2</td><td>256</td><td>1</td><td>no</td>", out["flavor_row"]), out["flavor_row"]
        assert "Flavor deleted." in out["flavor_deleted"] and ">f-dash<" not in out["flavor_deleted"]

        row = next(row for row in re.findall(r"<tr>(.*?)</tr>", out["instances"]) if ">dash-vm<" in row)
        assert "<td>demo</td>" in row and "ACTIVE" in row and "198.18.10." in row, row

        status, text = out["usage"]
        assert status == 200 and 'id="usage"' in text
        row = next(row for row in re.findall(r"<tr>(.*?)</tr>", text) if ">demo<" in row)
        cells = re.findall(r"<td>([^<]*)</td>", row)
        assert cells[0] == "1" and all(re.fullmatch(r"\d+\.\d\d", c) for c in cells[1:]), cells
        # Over time: a chart per project and per host, whose bars add up to the table's figures
        # (the server still runs, so the later figure may be a little larger).
        vcpu_table = float(cells[1])
        demo_pid = json.loads(cloud.os("project", "show", "demo", "-f", "json").stdout)["id"]
        host = json.loads(cloud.os("hypervisor", "list", "-f", "json").stdout)[0]["Hypervisor Hostname"]

        def chart_total(page, key, label):
            section = re.search(r'<section class="usage-group" data-key="' + re.escape(key)
                                + r'">(.*?)</section>', page, re.S)
            assert section, f"no usage charts for {key}"
            m = re.search(r'data-usage="' + re.escape(label) + r'" data-total="([0-9.]+)"',
                          section.group(1))
            assert m, f"no {label} chart for {key}"
            bars = [float(v) for v in re.findall(r'data-value="([0-9.]+)"', section.group(1))]
            assert bars, section.group(1)[:500]
            return float(m.group(1))

        project_vcpu = chart_total(text, demo_pid, "vCPU-hours")
        assert 0 < project_vcpu and abs(project_vcpu - vcpu_table) < 0.02, (project_vcpu, vcpu_table)
        host_vcpu = chart_total(text, host, "vCPU-hours")
        assert abs(host_vcpu - project_vcpu) < 0.02, (host_vcpu, project_vcpu)
        assert chart_total(out["member_overview"], demo_pid, "Instance-hours") > 0
        assert "Usage over time" in out["member_overview"]
        status, text = out["usage_default"]
        assert status == 200 and f'value="{today - datetime.timedelta(days=29)}"' in text
        assert f'value="{today}"' in text and ">demo<" in text
        status, text = out["usage_bad"]
        assert status == 400 and 'id="usage"' in text and "role=\"alert\"" in text, text[-1500:]
        assert "&quot;2026-13-45&quot; is not a date" in text and 'value="2026-13-45"' in text

        for path, got in {**out["member_get"], **out["member_post"]}.items():
            assert got == (403, True), (path, got)
        projects = json.loads(cloud.os("project", "list", "-f", "json").stdout)
        names = {p["Name"] for p in projects}
        assert "p-dash" in names and "p-evil" not in names and "p-gone" not in names, names
        users = {u["Name"] for u in json.loads(cloud.os("user", "list", "-f", "json").stdout)}
        assert "u-dash" in users and "u-evil" not in users
        flavors = {f["Name"] for f in json.loads(cloud.os("flavor", "list", "--all", "-f", "json").stdout)}
        assert not flavors & {"f-bad", "f-dash", "f-evil"}, flavors
        grants = json.loads(cloud.os("role", "assignment", "list", "--user", "u-dash", "--names",
                                     "-f", "json").stdout)
        assert [g["Role"] for g in grants] == ["member"], grants

        assert "Deleting the instance." in out["instance_deleted"]
