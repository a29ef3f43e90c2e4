"""The dashboard's network pages over plain HTTP (a browser's requests, made by `requests` inside
the cloud's namespace): networks and subnets, routers and their interfaces, floating IPs, security
groups and rules. Every change is a CSRF-protected form whose outcome, the API's own message when
it refuses, shows next to that form; the cloud's state is checked with the real CLI.
Everything uses 198.18.0.0/15."""
import html
import json
import re
import time

import requests

from conftest import make_cloud
from test_compute_cli import demo


def read(path):  # noqa: D103
    return open(path).read().strip()


class Web:
    """A signed-in browser: GETs pages, posts forms with the session's CSRF token."""

    def __init__(self, base):
        self.base = base
        self.http = requests.Session()
        self.csrf = None

    def sign_in(self, user, password):
        r = self.http.get(self.base + "/login")
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', r.text).group(1)
        r = self.http.post(self.base + "/login", allow_redirects=False,
                           data={"username": user, "password": password, "csrf": token, "project": ""})
        assert r.status_code == 303, r.text[-500:]
        # Every page's forms carry the session's token.
        page = self.get("/project/networks")
        self.csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)

    def get(self, path):
        r = self.http.get(self.base + path)
        assert r.status_code == 200, (path, r.status_code, r.text[-500:])
        return r.text

    def post(self, path, data, csrf=True):
        """Posts a form and follows the redirect back: (status, final path, page)."""
        data = dict(data, csrf=self.csrf) if csrf else dict(data)
        r = self.http.post(self.base + path, data=data)
        return r.status_code, r.url[len(self.base):], r.text


def notice(page, form_id):
    """The notice shown right before form `form_id`: ("ok"|"error", text), or None."""
    m = re.search(r'<p class="(ok|error)" role="(?:status|alert)">([^<]*)</p>'
                  r'<form method="post" action="[^"]*" id="' + re.escape(form_id) + '"', page)
    return (m.group(1), html.unescape(m.group(2))) if m else None


def table_notice(page):
    """The first notice on the page (the one over a table of rows with buttons)."""
    m = re.search(r'<p class="(ok|error)" role="(?:status|alert)">([^<]*)</p>', page)
    return (m.group(1), html.unescape(m.group(2))) if m else None


def action(page, pattern):
    """The first form action on the page matching `pattern` (ids come from the page)."""
    m = re.search(r'action="(' + pattern + ')"', page)
    assert m, pattern
    return html.unescape(m.group(1))


def cli_json(cloud, *args):
    return json.loads(demo(cloud, *args, "-f", "json").stdout)


def test_networks_routers_floating_ips_and_security_groups():
    with make_cloud() as cloud:
        cloud.up()
        base = f"http://127.0.0.1:{cloud.dashboard_port}"
        web = Web(base)
        ns = cloud.call_in_ns
        ns(lambda: web.sign_in("demo", read(cloud.data / "secrets" / "demo-password")))

        # An instance to take a floating IP (on the demo project's own network, created by `up`).
        disk = cloud.root / "disk.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        demo(cloud, "image", "create", "--file", str(disk), "--disk-format", "raw", "img")
        demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "img", "fip-vm")

        # ---- networks and subnets ------------------------------------------------------------
        status, path, page = ns(lambda: web.post("/project/networks/create", {
            "name": "web-net", "subnet_name": "web-sub", "cidr": "198.18.40.0/24", "enable_dhcp": "on"}))
        assert (status, path) == (200, "/project/networks")
        assert notice(page, "create-network") == ("ok", "Network web-net created with subnet 198.18.40.0/24.")
        assert "web-sub 198.18.40.0/24" in page
        subnets = cli_json(cloud, "subnet", "list")
        assert [s["Subnet"] for s in subnets if s["Name"] == "web-sub"] == ["198.18.40.0/24"], subnets

        # A bad CIDR on the add-subnet form: the API's message next to the form, nothing made.
        net_id = next(n["ID"] for n in cli_json(cloud, "network", "list") if n["Name"] == "web-net")
        status, path, page = ns(lambda: web.post("/project/subnets/create", {
            "network_id": net_id, "name": "bad-sub", "cidr": "198.18.41.999/24", "enable_dhcp": "on"}))
        assert (status, path) == (200, "/project/networks")
        kind, text = notice(page, "create-subnet")
        assert kind == "error" and "'198.18.41.999/24' is not a valid IPv4 CIDR" in text, text
        assert not [s for s in cli_json(cloud, "subnet", "list") if s["Name"] == "bad-sub"]
        # The create-network form is all or nothing: a refused subnet leaves no network behind.
        status, path, page = ns(lambda: web.post("/project/networks/create", {
            "name": "half-net", "cidr": "198.18.42.0/33"}))
        kind, text = notice(page, "create-network")
        assert kind == "error" and text.startswith("Nothing was created:"), text
        assert "is not a valid IPv4 CIDR" in text, text
        assert "half-net" not in [n["Name"] for n in cli_json(cloud, "network", "list")]

        # ---- routers -------------------------------------------------------------------------
        page = ns(lambda: web.get("/project/routers"))
        public = re.search(r'<option value="([^"]+)" selected>public</option>', page)
        assert public, page[-2000:]
        status, path, page = ns(lambda: web.post("/project/routers/create", {
            "name": "web-router", "external_network": public.group(1)}))
        assert notice(page, "create-router") == ("ok", "Router web-router created.")
        router = next(r["ID"] for r in cli_json(cloud, "router", "list") if r["Name"] == "web-router")
        subnet = next(s["ID"] for s in cli_json(cloud, "subnet", "list") if s["Name"] == "web-sub")
        status, path, page = ns(lambda: web.post("/project/routers/add_interface", {
            "router": router, "subnet": subnet}))
        assert notice(page, "add-interface") == ("ok", "Interface added."), notice(page, "add-interface")
        row = re.search(r"<tr><td><span class=\"name\">web-router</span>.*?</tr>", page).group(0)
        assert "198.18.40.1 (web-sub 198.18.40.0/24)" in row, row
        assert re.search(r"public: 198\.18\.11\.\d+", row), row
        # Deleting it with an interface: Neutron's conflict is the notice; the router stays.
        status, path, page = ns(lambda: web.post(f"/project/routers/{router}/delete", {}))
        assert (status, path) == (200, "/project/routers")
        kind, text = table_notice(page)
        assert kind == "error" and f"Router {router} still has ports" in text, text
        assert "web-router" in [r["Name"] for r in cli_json(cloud, "router", "list")]
        # Remove the interface (the row's own button), then the delete goes through.
        remove = action(row, f"/project/routers/{router}/remove_interface")
        port = re.search(r'name="port_id" value="([^"]+)"', row).group(1)
        status, path, page = ns(lambda: web.post(remove, {"port_id": port}))
        assert table_notice(page) == ("ok", "Interface removed.")
        status, path, page = ns(lambda: web.post(f"/project/routers/{router}/delete", {}))
        assert table_notice(page) == ("ok", "Router deleted.")
        assert "web-router" not in [r["Name"] for r in cli_json(cloud, "router", "list")]

        # ---- floating IPs --------------------------------------------------------------------
        page = ns(lambda: web.get("/project/floating_ips"))
        public_id = re.search(r'<select name="network"><option value="([^"]+)"[^>]*>public</option>', page)
        assert public_id, page[-2000:]
        status, path, page = ns(lambda: web.post("/project/floating_ips/allocate", {"network": public_id.group(1)}))
        kind, text = notice(page, "allocate")
        assert kind == "ok", text
        address = re.search(r"Allocated floating IP (198\.18\.11\.\d+)\.", text).group(1)
        assert f'<span class="fip">{address}</span>' in page
        fips = cli_json(cloud, "floating", "ip", "list")
        assert [f["Floating IP Address"] for f in fips] == [address], fips
        fip_id = fips[0]["ID"]
        # Associate it with the instance's port (listed once Nova has made it).
        deadline = time.time() + 60
        while True:
            page = ns(lambda: web.get("/project/floating_ips"))
            m = re.search(r'<select name="port"><option value="([^"]+)"[^>]*>fip-vm: (198\.18\.10\.\d+)', page)
            if m or time.time() > deadline:
                break
            time.sleep(1)
        assert m, page[-2000:]
        status, path, page = ns(lambda: web.post("/project/floating_ips/associate", {
            "floating_ip": fip_id, "port": m.group(1)}))
        assert notice(page, "associate") == ("ok", f"Floating IP {address} associated."), notice(page, "associate")
        server = cli_json(cloud, "server", "show", "fip-vm")
        assert f'<a href="/project/instances/{server["id"]}">fip-vm</a>' in page
        assert f"<td>{m.group(2)}</td>" in page
        status, path, page = ns(lambda: web.post(f"/project/floating_ips/{fip_id}/disassociate", {}))
        assert table_notice(page) == ("ok", "Floating IP disassociated.")
        assert cli_json(cloud, "floating", "ip", "show", fip_id)["port_id"] is None
        status, path, page = ns(lambda: web.post(f"/project/floating_ips/{fip_id}/release", {}))
        assert table_notice(page) == ("ok", "Floating IP released.")
        assert address not in page
        assert cli_json(cloud, "floating", "ip", "list") == []

        # ---- security groups -----------------------------------------------------------------
        status, path, page = ns(lambda: web.post("/project/security_groups/create", {
            "name": "web-sg", "description": "<b>web</b> servers"}))
        assert notice(page, "create-group") == ("ok", "Security group web-sg created.")
        assert "&lt;b&gt;web&lt;/b&gt; servers" in page and "<b>web</b>" not in page
        group = next(g["ID"] for g in cli_json(cloud, "security", "group", "list") if g["Name"] == "web-sg")
        group_page = f"/project/security_groups/{group}"
        assert f'href="{group_page}">web-sg</a>' in page
        status, path, page = ns(lambda: web.post(group_page + "/rules", {
            "direction": "ingress", "protocol": "tcp", "port_min": "8080", "port_max": "",
            "remote_ip_prefix": "198.18.0.0/16", "remote_group_id": ""}))
        assert (status, path) == (200, group_page)
        assert notice(page, "add-rule") == ("ok", "Rule added: ingress tcp 8080."), notice(page, "add-rule")
        rules = re.search(r'<div id="rules">(.*?)</div>', page, re.S).group(1)
        assert re.search(r"<td>tcp</td><td>8080</td><td>198\.18\.0\.0/16</td>", rules), rules
        listed = cli_json(cloud, "security", "group", "rule", "list", group)
        tcp = [r for r in listed if r["IP Protocol"] == "tcp"]
        assert len(tcp) == 1 and tcp[0]["Port Range"] == "8080:8080" and tcp[0]["IP Range"] == "198.18.0.0/16", listed
        # A port that is no number: an error next to the form, the API never asked.
        status, path, page = ns(lambda: web.post(group_page + "/rules", {
            "direction": "ingress", "protocol": "tcp", "port_min": "abc", "port_max": "",
            "remote_ip_prefix": "", "remote_group_id": ""}))
        kind, text = notice(page, "add-rule")
        assert kind == "error" and "whole number" in text and "abc" in text, text
        assert len(cli_json(cloud, "security", "group", "rule", "list", group)) == len(listed)
        # Delete the rule with its row's button.
        delete = action(page, group_page + "/rules/" + tcp[0]["ID"] + "/delete")
        status, path, page = ns(lambda: web.post(delete, {}))
        assert table_notice(page) == ("ok", "Rule deleted.")
        assert not [r for r in cli_json(cloud, "security", "group", "rule", "list", group)
                    if r["IP Protocol"] == "tcp"]

        # ---- CSRF ----------------------------------------------------------------------------
        status, path, page = ns(lambda: web.post("/project/security_groups/create", {"name": "forged"},
                                                 csrf=False))
        assert status == 403
        status, path, page = ns(lambda: web.post(f"/project/networks/{net_id}/delete", {"csrf": "0" * 64},
                                                 csrf=False))
        assert status == 403
        assert "forged" not in [g["Name"] for g in cli_json(cloud, "security", "group", "list")]
        assert "web-net" in [n["Name"] for n in cli_json(cloud, "network", "list")]
