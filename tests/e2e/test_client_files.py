"""Client credentials (addClient.sh): `onestack openrc` and `onestack clouds-yaml` for any user and
project, used by the real CLI; `onestack client-setup` installs that CLI into a virtualenv."""
import json
import os
import subprocess

from conftest import BIN, OPENSTACK, make_cloud


def cli_with_openrc(cloud, openrc, password, *args):
    """Sources `openrc` in bash (typing `password` when it asks) and runs the CLI."""
    script = f'source {openrc} <<< "$ONESTACK_TEST_PW" >/dev/null; exec {OPENSTACK} "$@"'
    return subprocess.run(cloud.in_ns("bash", "-c", script, "bash", *args), capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, ONESTACK_TEST_PW=password or ""))


def test_openrc_and_clouds_yaml_for_any_user(tmp_path):
    with make_cloud() as cloud:
        cloud.up()
        cloud.os("project", "create", "p1")
        cloud.os("user", "create", "--password", "alice-pw 'quoted'", "alice")
        cloud.os("user", "create", "--password", "bob-pw", "bob")
        cloud.os("role", "add", "--user", "alice", "--project", "p1", "member")

        # admin: the password is in the file.
        rc = tmp_path / "admin.rc"
        rc.write_text(cloud.onestack("openrc").stdout)
        r = cli_with_openrc(cloud, rc, None, "token", "issue", "-f", "json")
        assert r.returncode == 0, r.stderr
        # alice: asked for when sourced, never written.
        out = cloud.onestack("openrc", "--user", "alice", "--project", "p1").stdout
        assert "alice-pw" not in out and "read -sr OS_PASSWORD" in out, out
        rc = tmp_path / "alice.rc"
        rc.write_text(out)
        r = cli_with_openrc(cloud, rc, "alice-pw 'quoted'", "token", "issue", "-f", "json")
        assert r.returncode == 0, r.stderr
        project_id = json.loads(r.stdout)["project_id"]
        shown = json.loads(cloud.os("project", "show", "p1", "-f", "json").stdout)
        assert project_id == shown["id"]
        r = cli_with_openrc(cloud, rc, "wrong", "token", "issue")
        assert r.returncode != 0

        # clouds.yaml: demo's, complete; alice's without a password (given on the command line).
        demo_yaml = tmp_path / "demo.yaml"
        demo_yaml.write_text(cloud.onestack("clouds-yaml", "--user", "demo").stdout)
        r = subprocess.run(cloud.in_ns(OPENSTACK, "--os-cloud", "onestack-demo-demo", "token", "issue"),
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, OS_CLIENT_CONFIG_FILE=str(demo_yaml)))
        assert r.returncode == 0, r.stderr
        alice_yaml = tmp_path / "alice.yaml"
        text = cloud.onestack("clouds-yaml", "--user", "alice", "--project", "p1", "--cloud", "a1").stdout
        assert "password" not in text, text
        alice_yaml.write_text(text)
        r = subprocess.run(cloud.in_ns(OPENSTACK, "--os-cloud", "a1", "--os-password", "alice-pw 'quoted'",
                                       "token", "issue"),
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, OS_CLIENT_CONFIG_FILE=str(alice_yaml)))
        assert r.returncode == 0, r.stderr

        # Clear refusals: unknown user or project, no role, no project for a non-default user,
        # a cloud name that is not a plain word.
        for args, msg in [
            (["--user", "nobody", "--project", "p1"], 'no user "nobody"'),
            (["--user", "alice", "--project", "nope"], 'no project "nope"'),
            (["--user", "bob", "--project", "p1"], "has no role on project"),
            (["--user", "alice"], "--project is needed"),
        ]:
            r = cloud.onestack("openrc", *args, check=False)
            assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
        r = cloud.onestack("clouds-yaml", "--user", "demo", "--cloud", "x: y", check=False)
        assert r.returncode != 0 and "--cloud" in r.stderr, r.stderr


def test_client_setup_installs_the_cli(tmp_path):
    venv = tmp_path / "venv"
    r = subprocess.run([BIN, "client-setup", "--yes", "--venv", str(venv), "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    version = subprocess.run([str(venv / "bin" / "openstack"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "openstack" in (version.stdout + version.stderr)
    # A second run reuses the virtualenv.
    r = subprocess.run([BIN, "client-setup", "--yes", "--venv", str(venv), "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
