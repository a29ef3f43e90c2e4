//! Client credentials (addClient.sh): `onestack openrc` and `onestack clouds-yaml` print what the
//! `openstack` CLI needs for a user and project; `onestack client-setup` installs that CLI into a
//! virtualenv. Passwords OneStack generated (admin, demo) are filled in; any other user's is
//! asked for when the file is sourced (as Horizon's openrc does), never stored.

use crate::config::Config;
use crate::paths::{self, DataDir, Login};
use crate::{ops, serve};
use anyhow::{bail, Context, Result};
use onestack_core::identity::DEFAULT_DOMAIN_ID;
use std::path::Path;

/// Who the credentials are for.
pub struct Target<'a> {
    pub user: &'a str,
    pub project: Option<&'a str>,
}

/// The user, project and the password when OneStack knows it. Checks that both exist and that
/// the user holds a role on the project (else the CLI would fail later with a vaguer 401).
async fn resolve(dd: &DataDir, cfg: &Config, t: &Target<'_>) -> Result<(String, Option<String>)> {
    let project = match (t.project, t.user) {
        (Some(p), _) => p.to_string(),
        (None, u @ ("admin" | "demo")) => u.to_string(),
        (None, u) => bail!("--project is needed for user {u:?}"),
    };
    let store = onestack_store::Store::open(&serve::database_url(cfg, dd))
        .await
        .context("cannot open the state store (run `onestack up` first)")?;
    let checked: Result<()> = async {
        let user = store
            .find_user(DEFAULT_DOMAIN_ID, t.user)
            .await
            .map_err(|_| anyhow::anyhow!("no user {:?} in the Default domain", t.user))?;
        store
            .find_project(DEFAULT_DOMAIN_ID, &project)
            .await
            .map_err(|_| anyhow::anyhow!("no project {project:?} in the Default domain"))?;
        let member_of = store.list_user_projects(&user.id).await?;
        if !member_of.iter().any(|p| p.name == project) {
            bail!(
                "user {:?} has no role on project {project:?} (grant one with `openstack role \
                 add --user {} --project {project} member`)",
                t.user,
                t.user
            );
        }
        Ok(())
    }
    .await;
    store.pool().close().await;
    checked?;
    let password = match t.user {
        "admin" if cfg.identity.admin_password.is_empty() => {
            Some(read_secret(dd, "admin-password")?)
        }
        "admin" => Some(cfg.identity.admin_password.clone()),
        "demo" => Some(read_secret(dd, "demo-password")?),
        _ => None,
    };
    Ok((project, password))
}

fn read_secret(dd: &DataDir, name: &str) -> Result<String> {
    Ok(std::fs::read_to_string(dd.secrets().join(name))
        .with_context(|| format!("no {name} in {}", dd.root.display()))?
        .trim()
        .to_string())
}

/// `onestack openrc`: for `source <(onestack openrc …)`.
pub async fn openrc(dd: DataDir, t: Target<'_>) -> Result<()> {
    let cfg = ops::load_config(&dd, None)?;
    let (project, password) = resolve(&dd, &cfg, &t).await?;
    let auth_url = cfg.identity_url() + "/v3";
    let text = match password {
        Some(pw) => paths::openrc(
            &auth_url,
            &cfg.api.region,
            &Login {
                cloud: "",
                user: t.user,
                project: &project,
                password: &pw,
            },
        ),
        None => paths::openrc_prompting(&auth_url, &cfg.api.region, t.user, &project),
    };
    print!("{text}");
    Ok(())
}

/// `onestack clouds-yaml`: a clouds.yaml with one cloud (named `--cloud`, default
/// `onestack-<user>-<project>`); without a known password the CLI asks for it.
pub async fn clouds_yaml(dd: DataDir, t: Target<'_>, cloud: Option<&str>) -> Result<()> {
    let cfg = ops::load_config(&dd, None)?;
    let (project, password) = resolve(&dd, &cfg, &t).await?;
    let name = cloud
        .map(str::to_string)
        .unwrap_or_else(|| format!("onestack-{}-{project}", t.user));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("--cloud {name:?}: letters, digits, '-', '_' and '.' only");
    }
    let auth_url = cfg.identity_url() + "/v3";
    print!(
        "{}",
        paths::clouds_yaml_entry(
            &auth_url,
            &cfg.api.region,
            &name,
            t.user,
            &project,
            password.as_deref()
        )
    );
    Ok(())
}

/// `onestack client-setup`: python-openstackclient in a virtualenv (`python3 -m venv`, then pip),
/// and how to use it with this cloud.
pub fn client_setup(dd: DataDir, venv: &Path, yes: bool) -> Result<()> {
    crate::teardown::confirm(
        &format!(
            "This installs python-openstackclient from the package index into {}.",
            venv.display()
        ),
        yes,
    )?;
    let run = |prog: &Path, args: &[&str]| -> Result<()> {
        let status = std::process::Command::new(prog)
            .args(args)
            .status()
            .with_context(|| format!("cannot run {}", prog.display()))?;
        if !status.success() {
            bail!("{} {} failed ({status})", prog.display(), args.join(" "));
        }
        Ok(())
    };
    if !venv.join("bin").join("python").exists() {
        let venv_arg = venv.to_string_lossy();
        run(Path::new("python3"), &["-m", "venv", &venv_arg])
            .context("creating the virtualenv (on Debian/Ubuntu: apt-get install python3-venv)")?;
    }
    run(
        &venv.join("bin").join("pip"),
        &["install", "--quiet", "python-openstackclient"],
    )?;
    let cli = venv.join("bin").join("openstack");
    run(&cli, &["--version"])?;
    println!();
    println!("The openstack CLI is in {}.", cli.display());
    println!(
        "  Try: OS_CLIENT_CONFIG_FILE={}/clouds.yaml {} --os-cloud onestack server list",
        dd.root.display(),
        cli.display()
    );
    Ok(())
}
