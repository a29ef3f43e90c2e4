"""The dashboard over plain HTTP (a browser's requests, made by `requests` inside the cloud's
namespace): sign-in with CSRF protection, sessions in HttpOnly SameSite cookies, pages through the
same APIs and policy as the CLI, user strings escaped, admin pages refused to members, sign-out
revoking the session."""
import re

import requests

from conftest import make_cloud
from test_compute_cli import demo as demo_cli


def read(path):  # noqa: D103
    return open(path).read().strip()


def test_sign_in_pages_policy_escaping_and_sign_out():
    with make_cloud() as cloud:
        cloud.up()

        def demo(*args):
            return demo_cli(cloud, *args)

        base = f"http://127.0.0.1:{cloud.dashboard_port}"
        demo_pw = read(cloud.data / "secrets" / "demo-password")
        admin_pw = read(cloud.data / "secrets" / "admin-password")
        # A demo-project server whose name is markup (the API allows any name).
        xss = '<script>alert("x")</script><img src=x onerror=alert(1)>'
        disk = cloud.root / "disk.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        demo("image", "create", "--file", str(disk), "--disk-format", "raw", "img")
        demo("server", "create", "--flavor", "m1.tiny", "--image", "img", xss)
        admin_project = cloud.os("project", "show", "admin", "-f", "value", "-c", "id").stdout.strip()
        demo_project = cloud.os("project", "show", "demo", "-f", "value", "-c", "id").stdout.strip()

        def scenario():
            out = {}
            anon = requests.Session()
            r = anon.get(base + "/project/instances", allow_redirects=False)
            out["anon"] = (r.status_code, r.headers.get("location"))
            r = anon.get(base + "/login")
            out["login_headers"] = dict(r.headers)
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', r.text).group(1)
            # Without the form token, or with another one: refused.
            r = requests.post(base + "/login", data={"username": "demo", "password": demo_pw, "csrf": csrf},
                              allow_redirects=False)
            out["no_cookie"] = r.status_code
            r = anon.post(base + "/login", data={"username": "demo", "password": "wrong", "csrf": csrf},
                          allow_redirects=False)
            out["wrong_pw"] = (r.status_code, "Wrong user name" in r.text, "onestack_session" in r.headers.get("set-cookie", ""))
            demo = requests.Session()
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', demo.get(base + "/login").text).group(1)
            r = demo.post(base + "/login", data={"username": "demo", "password": demo_pw, "csrf": csrf, "project": ""},
                          allow_redirects=False)
            out["login"] = (r.status_code, r.headers.get("location"), r.headers.get("set-cookie", ""))
            r = demo.get(base + "/project/instances")
            out["instances"] = (r.status_code, r.text)
            r = demo.get(base + "/admin/hypervisors")
            out["demo_admin"] = (r.status_code, r.text)
            page_csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', out["instances"][1]).group(1)
            # Switching project and back: each switch's new token works (revoking the token it
            # replaces must not end it). demo now also works in the admin project.
            cloud.os("role", "add", "--user", "demo", "--project", "admin", "member")
            out["switches"] = []
            for project in (admin_project, demo_project, admin_project):
                r = demo.post(base + "/switch", data={"csrf": page_csrf, "project": project},
                              allow_redirects=False)
                page = demo.get(base + "/project/instances")
                selected = re.search(r'<option value="([0-9a-f]+)" selected>', page.text)
                out["switches"].append((r.status_code, page.status_code, selected and selected.group(1)))
            r = demo.post(base + "/logout", data={"csrf": "0" * 64}, allow_redirects=False)
            out["logout_forged"] = r.status_code
            r = demo.post(base + "/logout", data={"csrf": page_csrf}, allow_redirects=False)
            out["logout"] = (r.status_code, r.headers.get("location"))
            r = demo.get(base + "/project/instances", allow_redirects=False)
            out["after_logout"] = (r.status_code, r.headers.get("location"))
            admin = requests.Session()
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', admin.get(base + "/login").text).group(1)
            admin.post(base + "/login", data={"username": "admin", "password": admin_pw, "csrf": csrf,
                                              "project": "admin"})
            r = admin.get(base + "/admin/hypervisors")
            out["admin_hv"] = (r.status_code, r.text)
            forged = requests.get(base + "/project/instances", cookies={"onestack_session": "f" * 64},
                                  allow_redirects=False)
            out["forged"] = forged.status_code
            return out

        out = cloud.call_in_ns(scenario)
        assert out["anon"] == (303, "/login"), out["anon"]
        h = {k.lower(): v for k, v in out["login_headers"].items()}
        assert "frame-ancestors 'none'" in h["content-security-policy"] and h["x-frame-options"] == "DENY"
        assert "HttpOnly" in h["set-cookie"] and "SameSite=Strict" in h["set-cookie"]
        assert out["no_cookie"] == 403
        assert out["wrong_pw"] == (401, True, False), out["wrong_pw"]
        status, location, cookie = out["login"]
        assert (status, location) == (303, "/project/overview"), out["login"]
        assert "onestack_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        status, text = out["instances"]
        assert status == 200 and '<span class="who">demo</span>' in text and " selected>demo</option>" in text
        # The name is shown as text, never as markup.
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
        assert "<script>" not in text and "<img" not in text
        assert out["demo_admin"][0] == 403 and "administrators only" in out["demo_admin"][1]
        assert out["switches"] == [(303, 200, admin_project), (303, 200, demo_project), (303, 200, admin_project)], \
            out["switches"]
        assert out["logout_forged"] == 403
        assert out["logout"] == (303, "/login")
        assert out["after_logout"] == (303, "/login")
        status, text = out["admin_hv"]
        assert status == 200 and "<td>up</td>" in text, text[-800:]
        assert out["forged"] == 303
