"""PostgreSQL as the state store, with the real CLI and real guests: a new cloud brought up with
`onestack up --database postgresql://…` on an empty database, and an all-in-one SQLite cloud moved
with `onestack db migrate-from-sqlite` without losing anything. Each test runs its own PostgreSQL
server inside the cloud's network namespace (loopback only) and removes it afterwards."""
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port, make_cloud
from test_compute_cli import demo, have_qemu, wait_status

PGBINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
pytestmark = [
    pytest.mark.skipif(not have_qemu(), reason="needs root, qemu-system-x86_64 and genisoimage"),
    pytest.mark.skipif(not PGBINS, reason="needs the PostgreSQL server (the test script installs it)"),
]


class PgServer:
    """A private PostgreSQL server in network namespace `ns`, on `listen` (addresses of that
    namespace, comma separated; loopback by default):port."""

    def __init__(self, ns, listen="127.0.0.1", trust_from=None):
        self.ns = ns
        self.listen = listen
        # A network (CIDR, 198.18.0.0/15 only) whose hosts may connect without a password.
        self.trust_from = trust_from
        self.bin = PGBINS[-1] if PGBINS else Path("/nonexistent")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="onestack-pg-"))
        shutil.chown(self.dir, "postgres")

    def run(self, *cmd, check=True):
        return subprocess.run(["ip", "netns", "exec", self.ns, "runuser", "-u", "postgres", "--", *cmd],
                              capture_output=True, text=True, timeout=60, check=check)

    def __enter__(self):
        self.run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        if self.trust_from:
            with open(self.dir / "data" / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.trust_from} trust\n")
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"),
                 "-o", f"-c listen_addresses={self.listen} -p {self.port} -k {self.dir}", "start")
        return self

    def __exit__(self, *exc):
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def createdb(self, name, host="127.0.0.1"):
        """A new database; its URL as seen from `host`, one of the listen addresses."""
        self.run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), name)
        return f"postgresql://postgres@{host}:{self.port}/{name}"

    def query(self, db, sql):
        return self.run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-d", db,
                        "-Atc", sql).stdout.strip()


def boot_blank(cloud, name):
    """A server on a blank raw disk: QEMU runs it, no guest OS needed."""
    disk = cloud.root / "blank.raw"
    if not disk.exists():
        disk.write_bytes(b"\0" * (1 << 20))
        demo(cloud, "image", "create", "--file", str(disk), "--disk-format", "raw", "blank")
    demo(cloud, "server", "create", "--flavor", "m1.tiny", "--image", "blank", "--network", "private",
         "--wait", name)


def test_a_new_cloud_on_postgresql():
    with make_cloud() as cloud, PgServer(cloud.netns) as pg:
        url = pg.createdb("onestack")
        out = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", "--database", url).stdout
        assert "state store ready (Postgres)" in out, out
        assert not (cloud.data / "onestack.db").exists()
        assert f'url = "{url}"' in (cloud.data / "onestack.toml").read_text()
        boot_blank(cloud, "pg-vm")
        demo(cloud, "network", "create", "pg-net")
        assert pg.query("onestack", "SELECT count(*) FROM instances WHERE deleted = 0") == "1"
        assert pg.query("onestack", "SELECT count(*) FROM usage_events WHERE event = 'create'") == "1"
        # The operator's tools read the same store.
        audit = cloud.onestack("audit", "--user", "demo", "--json").stdout
        assert '"route":"/v2.1/servers"' in audit.replace(" ", ""), audit
        assert "overall         healthy" in cloud.onestack("status").stdout
        # A second `up` keeps its store; another URL is refused and changes nothing.
        other = pg.createdb("other")
        r = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", "--database", other, check=False)
        assert r.returncode != 0 and "new cloud only" in r.stderr, r.stderr
        assert f'url = "{url}"' in (cloud.data / "onestack.toml").read_text()
        cloud.up()
        assert json.loads(demo(cloud, "server", "show", "pg-vm", "-f", "json").stdout)["status"] == "ACTIVE"


def test_an_all_in_one_cloud_moves_to_postgresql():
    with make_cloud() as cloud, PgServer(cloud.netns) as pg:
        cloud.up()
        boot_blank(cloud, "vm1")
        demo(cloud, "keypair", "create", "k1")
        demo(cloud, "network", "create", "n1")
        demo(cloud, "volume", "create", "--size", "1", "v1")
        cloud.os("project", "create", "moved")
        before = {what: sorted(r["ID"] if "ID" in r else r["Name"]
                               for r in json.loads(demo(cloud, *what.split(), "list", "-f", "json").stdout))
                  for what in ("server", "image", "network", "keypair", "volume", "security group")}
        projects = sorted(p["Name"] for p in json.loads(cloud.os("project", "list", "-f", "json").stdout))
        url = pg.createdb("onestack")

        # Not while it runs: nothing may change during the move.
        r = cloud.onestack("db", "migrate-from-sqlite", "--to", url, check=False)
        assert r.returncode != 0 and "onestack down" in r.stderr, r.stderr
        cloud.onestack("down")
        # Never into a database that holds a cloud.
        busy = pg.createdb("busy")
        pg.query("busy", "CREATE TABLE projects (id TEXT); INSERT INTO projects VALUES ('x')")
        r = cloud.onestack("db", "migrate-from-sqlite", "--to", busy, check=False)
        assert r.returncode != 0, r.stdout
        out = cloud.onestack("db", "migrate-from-sqlite", "--to", url).stdout
        assert "Moved" in out and "tables" in out, out
        assert f'url = "{url}"' in (cloud.data / "onestack.toml").read_text()
        r = cloud.onestack("db", "migrate-from-sqlite", "--to", url, check=False)
        assert r.returncode != 0 and "already uses" in r.stderr, r.stderr

        cloud.up()
        after = {what: sorted(r["ID"] if "ID" in r else r["Name"]
                              for r in json.loads(demo(cloud, *what.split(), "list", "-f", "json").stdout))
                 for what in before}
        assert after == before
        assert sorted(p["Name"] for p in json.loads(cloud.os("project", "list", "-f", "json").stdout)) == projects
        wait_status(cloud, "vm1", "ACTIVE", timeout=120)
        assert pg.query("onestack", "SELECT count(*) FROM instances WHERE deleted = 0") == "1"
        # The moved cloud goes on working, on PostgreSQL: a new server, and the old one deleted.
        boot_blank(cloud, "vm2")
        assert pg.query("onestack", "SELECT count(*) FROM instances WHERE deleted = 0") == "2"
        demo(cloud, "server", "delete", "--wait", "vm1")
        names = [s["Name"] for s in json.loads(demo(cloud, "server", "list", "-f", "json").stdout)]
        assert names == ["vm2"], names
