//! The data directory: where every file OneStack keeps lives, and the client files it writes.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/onestack";

/// Parent of every cloud's [`DataDir::helper_dir`].
pub const HELPER_ROOT: &str = "/run/onestack";

/// First line of every clouds.yaml OneStack writes (so it knows which files it may replace).
pub const CLOUDS_MARKER: &str = "# Written by onestack up.";

#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Result<DataDir> {
        let root: PathBuf = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(DataDir { root })
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("onestack.toml")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("onestack.db")
    }
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }
    pub fn fernet_keys(&self) -> PathBuf {
        self.secrets().join("fernet-keys")
    }
    /// Image data files, one per active image, named by image id.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// Volume data (the controller's host is the storage host): `volume-<id>`, `snapshot-<id>`.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn pid_file(&self, service: &str) -> PathBuf {
        self.run().join(format!("{service}.pid"))
    }
    pub fn log_file(&self, service: &str) -> PathBuf {
        self.logs().join(format!("{service}.log"))
    }

    /// Where the files the unprivileged helpers read by name live, outside the data directory so
    /// they need not pass through it (it may sit where only root can go):
    /// `/run/onestack/<hash of the data dir>` (dnsmasq's host lists; see perms.rs).
    pub fn helper_dir(&self) -> PathBuf {
        let h = Sha256::digest(self.root.as_os_str().as_encoded_bytes());
        Path::new(HELPER_ROOT).join(&hex::encode(h)[..12])
    }

    /// Creates the directory tree, root's alone (see perms.rs for who else gets in where).
    pub fn create(&self) -> Result<()> {
        for d in [&self.root, &self.logs(), &self.run(), &self.secrets()] {
            onestack_core::fsutil::create_private_dir(d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        let s = self.secrets();
        fs::set_permissions(&s, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// Reads a secret, generating and storing a random one (0600) the first time.
    pub fn secret(&self, name: &str) -> Result<String> {
        let path = self.secrets().join(name);
        if let Ok(v) = fs::read_to_string(&path) {
            let v = v.trim().to_string();
            if !v.is_empty() {
                return Ok(v);
            }
        }
        let v = random_password();
        write_private(&path, &v)?;
        Ok(v)
    }
}

/// 20 random alphanumeric characters (~119 bits).
pub fn random_password() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 20)
}

/// Writes a file readable by its owner only, atomically; unchanged content is not rewritten.
/// Returns whether it changed anything.
pub fn write_private(path: &Path, content: &str) -> Result<bool> {
    onestack_core::fsutil::write_private(path, content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub struct Login<'a> {
    pub cloud: &'a str,
    pub user: &'a str,
    pub project: &'a str,
    pub password: &'a str,
}

/// `clouds.yaml` for the openstack CLI and SDK. Values are quoted as YAML strings.
pub fn clouds_yaml(auth_url: &str, region: &str, logins: &[&Login]) -> String {
    let mut out = String::new();
    for (i, l) in logins.iter().enumerate() {
        let entry = clouds_yaml_entry(
            auth_url,
            region,
            l.cloud,
            l.user,
            l.project,
            Some(l.password),
        );
        // Header lines once.
        out.push_str(if i == 0 {
            &entry
        } else {
            entry.split_once("clouds:\n").map_or("", |x| x.1)
        });
    }
    out
}

/// A clouds.yaml holding one cloud; without a password the CLI asks for it.
pub fn clouds_yaml_entry(
    auth_url: &str,
    region: &str,
    cloud: &str,
    user: &str,
    project: &str,
    password: Option<&str>,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let password = password
        .map(|p| format!("      password: {}\n", q(p)))
        .unwrap_or_default();
    format!(
        "{CLOUDS_MARKER}\nclouds:\n  {}:\n    auth:\n      auth_url: {}\n      username: {}\n{password}      project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {}\n    interface: public\n    identity_api_version: 3\n",
        q(cloud), q(auth_url), q(user), q(project), q(region)
    )
}

/// An openrc file for `source`. Values are single-quoted for the shell.
pub fn openrc(auth_url: &str, region: &str, l: &Login) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    format!(
        "# Written by onestack up. Usage: source this file, then run openstack commands.\n\
         export OS_AUTH_URL={}\nexport OS_IDENTITY_API_VERSION=3\nexport OS_USERNAME={}\n\
         export OS_PASSWORD={}\nexport OS_PROJECT_NAME={}\nexport OS_USER_DOMAIN_NAME=Default\n\
         export OS_PROJECT_DOMAIN_NAME=Default\nexport OS_REGION_NAME={}\nexport OS_INTERFACE=public\n",
        q(auth_url), q(l.user), q(l.password), q(l.project), q(region)
    )
}

/// An openrc that asks for the password when sourced (as Horizon's does) instead of holding it.
pub fn openrc_prompting(auth_url: &str, region: &str, user: &str, project: &str) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    format!(
        "# Written by onestack openrc. Usage: source this file, then run openstack commands.\n\
         export OS_AUTH_URL={}\nexport OS_IDENTITY_API_VERSION=3\nexport OS_USERNAME={}\n\
         export OS_PROJECT_NAME={}\nexport OS_USER_DOMAIN_NAME=Default\n\
         export OS_PROJECT_DOMAIN_NAME=Default\nexport OS_REGION_NAME={}\nexport OS_INTERFACE=public\n\
         printf 'Password for %s in project %s: ' \"$OS_USERNAME\" \"$OS_PROJECT_NAME\"\n\
         read -sr OS_PASSWORD\necho\nexport OS_PASSWORD\n",
        q(auth_url), q(user), q(project), q(region)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_files_quote_values() {
        let l = Login {
            cloud: "onestack",
            user: "demo",
            project: "demo",
            password: "a'b\"c",
        };
        let y = clouds_yaml("http://h:5000/v3", "RegionOne", &[&l]);
        assert!(y.contains("password: \"a'b\\\"c\""), "{y}");
        let l = Login {
            cloud: "x",
            user: "demo",
            project: "demo",
            password: "a'b",
        };
        let rc = openrc("http://h:5000/v3", "RegionOne", &l);
        assert!(rc.contains("export OS_PASSWORD='a'\\''b'"), "{rc}");
        let rc = openrc_prompting("http://h:5000/v3", "RegionOne", "o'x", "p");
        assert!(rc.contains("export OS_USERNAME='o'\\''x'"), "{rc}");
        assert!(
            rc.contains("read -sr OS_PASSWORD") && !rc.contains("OS_PASSWORD='"),
            "{rc}"
        );
        let y = clouds_yaml_entry("http://h:5000/v3", "R", "c", "u: x", "p", None);
        assert!(
            y.contains("username: \"u: x\"") && !y.contains("password"),
            "{y}"
        );
    }

    #[test]
    fn secrets_are_private_and_stable() {
        let d = tempfile::tempdir().expect("tmp");
        let dd = DataDir::new(d.path()).expect("dd");
        dd.create().expect("create");
        let a = dd.secret("x").expect("secret");
        assert_eq!(a.len(), 20);
        assert_eq!(dd.secret("x").expect("again"), a);
        let mode = fs::metadata(dd.secrets().join("x"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
