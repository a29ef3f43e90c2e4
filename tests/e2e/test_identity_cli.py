"""The real `openstack` CLI against a cloud started by `onestack up`."""
import json
import stat
import subprocess
import time

from conftest import OPENSTACK


def test_up_is_idempotent_and_status_down(cloud):
    r = cloud.up()
    assert "OneStack is up" in r.stdout
    assert "Identity API:" in r.stdout
    for f in ["clouds.yaml", "openrc", "openrc-demo", "secrets/admin-password", "secrets/demo-password"]:
        mode = (cloud.data / f).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, f
    assert (cloud.data / "onestack.db").exists()
    assert (cloud.data / "run/supervisor.pid").exists()
    before = {p: p.stat().st_mtime_ns for p in cloud.data.rglob("*") if p.is_file() and "logs" not in p.parts and p.suffix not in (".db", ".db-wal", ".db-shm")}
    r = cloud.up()
    assert "already running" in r.stdout and "nothing changed" in r.stdout
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after, "a second up must not rewrite files"

    s = cloud.onestack("status")
    assert "healthy" in s.stdout and s.returncode == 0

    d = cloud.onestack("down")
    assert "stopped" in d.stdout
    s = cloud.onestack("status", check=False)
    assert s.returncode != 0 and "stopped" in s.stdout
    # Data survives: up again, and the same admin password still works.
    cloud.up()
    assert cloud.os("token", "issue", "-f", "json").returncode == 0


def test_supervisor_restarts_a_killed_service(cloud):
    cloud.up()
    pid = int((cloud.data / "run/api.pid").read_text())
    subprocess.run(["kill", "-9", str(pid)], check=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            new = int((cloud.data / "run/api.pid").read_text())
        except (FileNotFoundError, ValueError):
            new = pid
        if new != pid and cloud.onestack("status", check=False).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the API was not restarted")
    assert cloud.os("token", "issue", "-f", "json").returncode == 0


def test_identity_with_the_openstack_cli(cloud):
    cloud.up()
    tok = json.loads(cloud.os("token", "issue", "-f", "json").stdout)
    assert tok["id"] and tok["project_id"] and tok["user_id"]

    demo_tok = json.loads(cloud.os("token", "issue", "-f", "json", cloud="onestack").stdout)
    assert demo_tok["project_id"] != tok["project_id"]

    cat = json.loads(cloud.os("catalog", "list", "-f", "json").stdout)
    assert any(s["Type"] == "identity" for s in cat)
    eps = json.loads(cloud.os("endpoint", "list", "-f", "json").stdout)
    assert {e["Interface"] for e in eps} == {"public", "internal", "admin"}
    services = json.loads(cloud.os("service", "list", "-f", "json").stdout)
    assert {s["Type"] for s in services} >= {"identity", "image"}
    assert json.loads(cloud.os("region", "list", "-f", "json").stdout)[0]["Region"] == "RegionOne"

    cloud.os("project", "create", "e2e-proj", "--description", "made by the e2e test")
    names = [p["Name"] for p in json.loads(cloud.os("project", "list", "-f", "json").stdout)]
    assert sorted(names) == ["admin", "demo", "e2e-proj"]
    dup = cloud.os("project", "create", "e2e-proj", check=False)
    assert dup.returncode != 0 and "409" in dup.stderr

    cloud.os("user", "create", "--password", "first-pw", "--project", "e2e-proj", "e2e-user")
    cloud.os("role", "add", "--user", "e2e-user", "--project", "e2e-proj", "member")
    ra = json.loads(cloud.os("role", "assignment", "list", "--names", "--user", "e2e-user", "-f", "json").stdout)
    assert [(a["Role"], a["User"], a["Project"]) for a in ra] == [("member", "e2e-user@Default", "e2e-proj@Default")]

    def login(pw):
        return subprocess.run(
            cloud.in_ns(OPENSTACK, "token", "issue", "-f", "json",
             "--os-auth-url", f"http://127.0.0.1:{cloud.port}/v3", "--os-identity-api-version", "3",
             "--os-username", "e2e-user", "--os-password", pw, "--os-project-name", "e2e-proj",
             "--os-user-domain-name", "Default", "--os-project-domain-name", "Default"),
            capture_output=True, text=True, timeout=60)

    assert login("first-pw").returncode == 0
    cloud.os("user", "set", "--password", "second-pw", "e2e-user")
    bad = login("first-pw")
    assert bad.returncode != 0 and "401" in bad.stderr
    assert login("second-pw").returncode == 0

    cloud.os("role", "remove", "--user", "e2e-user", "--project", "e2e-proj", "member")
    ra = json.loads(cloud.os("role", "assignment", "list", "--user", "e2e-user", "-f", "json").stdout)
    assert ra == []
    cloud.os("user", "delete", "e2e-user")
    cloud.os("project", "delete", "e2e-proj")
    names = [p["Name"] for p in json.loads(cloud.os("project", "list", "-f", "json").stdout)]
    assert sorted(names) == ["admin", "demo"]

    # The demo member cannot administer identity.
    denied = cloud.os("project", "create", "nope", cloud="onestack", check=False)
    assert denied.returncode != 0 and "403" in denied.stderr


def test_wrong_password_fails_cleanly(cloud):
    cloud.up()
    r = cloud.os("--os-password", "definitely-wrong", "token", "issue", check=False)
    assert r.returncode != 0
    assert "The request you have made requires authentication. (HTTP 401)" in r.stderr
    assert "Traceback" not in r.stderr



def test_foreground_runs_until_sigterm_with_a_wal_store(cloud):
    import signal
    import sqlite3
    from conftest import BIN
    proc = subprocess.Popen(
        cloud.in_ns(BIN, "up", "--foreground", "--no-demo", "--data-dir", str(cloud.data), "--config", str(cloud.config)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            r = cloud.os("token", "issue", "-f", "json", check=False)
            if r.returncode == 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("foreground cloud never answered")
        assert not (cloud.data / "run/supervisor.pid").exists(), "no supervisor in the foreground"
        mode = sqlite3.connect(cloud.data / "onestack.db").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_is_refused_with_the_key_named(cloud):
    cloud.config.write_text('[api]\nidentity_prot = 5000\n')
    r = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", check=False)
    assert r.returncode != 0
    assert "identity_prot" in r.stderr
    assert not (cloud.data / "run/supervisor.pid").exists()
    # Overlapping fixed and floating ranges: refused, naming both, before anything runs.
    cloud.config.write_text('[network]\nfixed_range = "198.18.10.0/24"\nfloating_range = "198.18.10.0/25"\n')
    r = cloud.onestack("up", "--config", str(cloud.config), "--no-demo", check=False)
    assert r.returncode != 0
    assert "network.fixed_range" in r.stderr and "network.floating_range" in r.stderr
    assert not (cloud.data / "run/supervisor.pid").exists()
    assert not (cloud.data / "onestack.db").exists()


def test_dry_run_changes_nothing(cloud):
    r = cloud.onestack("up", "--dry-run", "--config", str(cloud.config))
    assert "dry run: nothing is changed" in r.stdout
    assert f"identity {cloud.port}" in r.stdout and "demo server" in r.stdout
    assert "198.18.11.0/24" in r.stdout
    assert not cloud.data.exists()
