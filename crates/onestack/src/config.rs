//! The configuration file (TOML). Unknown keys and bad values are errors that name the key.

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub database: DatabaseConfig,
    pub identity: IdentityConfig,
    pub image: ImageConfig,
    pub network: NetworkConfig,
    pub compute: ComputeConfig,
    pub security_compliance: SecurityComplianceConfig,
}

/// Keystone's `[security_compliance]` account lockout: wrong passwords in a row, then how long
/// the account refuses every password. On by default (Keystone's is off).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityComplianceConfig {
    /// 0 = no lockout.
    pub lockout_failure_attempts: u32,
    /// Seconds.
    pub lockout_duration: u64,
}

impl Default for SecurityComplianceConfig {
    fn default() -> Self {
        let l = onestack_core::identity::Lockout::default();
        SecurityComplianceConfig {
            lockout_failure_attempts: l.failure_attempts,
            lockout_duration: l.duration.as_secs(),
        }
    }
}

/// Compute: the hypervisor on this host and the scheduler's allocation ratios (Nova's names).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// `auto` (KVM only where it truly works), `kvm` or `qemu` (software emulation).
    pub virt_type: String,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    pub reserved_host_memory_mb: i64,
    /// Seconds a guest gets to shut down (stop, soft reboot) before it is powered off.
    pub shutdown_timeout: u64,
    /// Always attach a config drive.
    pub force_config_drive: bool,
    /// Port of the compute agent's own endpoint (console output).
    pub agent_port: u16,
    /// Seconds without a heartbeat after which a compute host is down (Nova's name).
    pub service_down_time: u64,
    /// The agent's host name; empty = the machine's host name.
    pub host: String,
    /// The user QEMU runs as: `auto` (a dedicated unprivileged user when the agent is root),
    /// `root`, or a user name.
    pub qemu_user: String,
    /// The controller's compute API this host's agent reports to (`http://host:8774`); empty =
    /// this host is the controller. Set by `onestack join`.
    pub controller_url: String,
    /// This host's address as other hosts reach it (agent endpoint, VXLAN tunnel endpoint);
    /// empty = `api.public_host` (Nova's `my_ip`).
    pub my_ip: String,
    /// Live migration's memory bandwidth cap in MiB/s, 0 for none (Nova's name).
    pub live_migration_bandwidth: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            virt_type: "auto".into(),
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            reserved_host_memory_mb: 512,
            shutdown_timeout: 60,
            force_config_drive: false,
            agent_port: 8775,
            service_down_time: 60,
            host: String::new(),
            qemu_user: "auto".into(),
            controller_url: String::new(),
            my_ip: String::new(),
            live_migration_bandwidth: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Largest image accepted, in bytes (Glance's `image_size_cap`).
    pub size_cap: u64,
    /// Register the built-in `onestack-tiny` guest image on `up`.
    pub default_image: bool,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            size_cap: onestack_core::image::DEFAULT_SIZE_CAP,
            default_image: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the API servers bind to.
    pub listen: IpAddr,
    /// Host name or address clients use to reach the APIs (written into the catalog);
    /// empty = the listen address, or 127.0.0.1 when listening on all addresses.
    pub public_host: String,
    pub identity_port: u16,
    pub compute_port: u16,
    pub image_port: u16,
    pub network_port: u16,
    pub volume_port: u16,
    /// The web dashboard.
    pub dashboard_port: u16,
    /// Prometheus' `/metrics` (unauthenticated); 0 = not served.
    pub metrics_port: u16,
    pub region: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: IpAddr::from([0, 0, 0, 0]),
            public_host: String::new(),
            identity_port: 5000,
            compute_port: 8774,
            image_port: 9292,
            network_port: 9696,
            volume_port: 8776,
            dashboard_port: 8080,
            metrics_port: 9198,
            region: "RegionOne".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:///path` or `postgresql://…`; empty = SQLite in the data directory.
    pub url: String,
    /// This controller joined a cloud another controller bootstrapped (`onestack join --role
    /// controller`): `up` starts its services and bootstraps nothing.
    pub joined: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Token lifetime in seconds.
    pub token_lifetime: u64,
    /// Admin password; empty = generated once and kept in the data directory.
    pub admin_password: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            token_lifetime: 3600,
            admin_password: String::new(),
        }
    }
}

/// Names follow the original OneStack script's FlatDHCP settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Tenant (private) network range.
    pub fixed_range: String,
    /// Floating IP range on the external network.
    pub floating_range: String,
    /// Two NICs: the dedicated interface (no addresses) joined to the external network's bridge
    /// on the network node, so floating IPs answer on it; empty = single NIC (floating IPs are
    /// reached through the host, which holds the external gateway address).
    pub public_interface: String,
    /// Two NICs: the interface carrying tenant traffic (VXLAN) between hosts; its address is this
    /// host's `my_ip` unless that is set. Empty = single NIC.
    pub flat_interface: String,
    /// MTU of new networks.
    pub mtu: u32,
    /// DNS servers handed to guests of the bootstrap `private` subnet.
    pub dns_nameservers: Vec<String>,
    /// This host's agent runs DHCP, metadata and routers for every network.
    pub network_node: bool,
    /// Prepended to the `qdhcp-…` and `qrouter-…` namespace names (tests use a unique one).
    pub namespace_prefix: String,
    /// Neutron's caps: fixed IPs on one port, host routes and DNS servers on one subnet.
    pub max_fixed_ips_per_port: usize,
    pub max_subnet_host_routes: usize,
    pub max_dns_nameservers: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            fixed_range: "10.0.0.0/24".into(),
            floating_range: "172.24.4.0/24".into(),
            public_interface: String::new(),
            flat_interface: String::new(),
            mtu: 1500,
            dns_nameservers: Vec::new(),
            network_node: true,
            namespace_prefix: String::new(),
            max_fixed_ips_per_port: 5,
            max_subnet_host_routes: 20,
            max_dns_nameservers: 5,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let lt = self.identity.token_lifetime;
        if !(60..=7 * 24 * 3600).contains(&lt) {
            bail!("identity.token_lifetime = {lt}: must be between 60 and 604800 seconds");
        }
        for (key, v) in [
            ("network.fixed_range", &self.network.fixed_range),
            ("network.floating_range", &self.network.floating_range),
        ] {
            let net: Ipv4Net = v.parse().with_context(|| {
                format!("{key} = {v:?}: not an IPv4 CIDR such as 198.18.0.0/24")
            })?;
            if net.prefix_len() > 29 {
                bail!("{key} = {v:?}: the range is too small (at most /29)");
            }
        }
        // Guests on the private network must never see floating addresses as their own.
        if let (Ok(fixed), Ok(floating)) = (
            self.network.fixed_range.parse::<Ipv4Net>(),
            self.network.floating_range.parse::<Ipv4Net>(),
        ) {
            if fixed.contains(&floating.network()) || floating.contains(&fixed.network()) {
                bail!(
                    "network.fixed_range = {:?} overlaps network.floating_range = {:?}",
                    self.network.fixed_range,
                    self.network.floating_range
                );
            }
        }
        if !(576..=9000).contains(&self.network.mtu) {
            bail!(
                "network.mtu = {}: must be between 576 and 9000",
                self.network.mtu
            );
        }
        for d in &self.network.dns_nameservers {
            if d.parse::<std::net::Ipv4Addr>().is_err() {
                bail!("network.dns_nameservers: {d:?} is not an IPv4 address");
            }
        }
        let sc = &self.security_compliance;
        if sc.lockout_failure_attempts > 1000 {
            bail!(
                "security_compliance.lockout_failure_attempts = {}: at most 1000 (0 turns lockout off)",
                sc.lockout_failure_attempts
            );
        }
        if sc.lockout_failure_attempts > 0 && !(1..=7 * 24 * 3600).contains(&sc.lockout_duration) {
            bail!(
                "security_compliance.lockout_duration = {}: between 1 and 604800 seconds",
                sc.lockout_duration
            );
        }
        for (key, v) in [
            (
                "network.max_fixed_ips_per_port",
                self.network.max_fixed_ips_per_port,
            ),
            (
                "network.max_subnet_host_routes",
                self.network.max_subnet_host_routes,
            ),
            (
                "network.max_dns_nameservers",
                self.network.max_dns_nameservers,
            ),
        ] {
            if !(1..=1000).contains(&v) {
                bail!("{key} = {v}: must be between 1 and 1000");
            }
        }
        if self.network.dns_nameservers.len() > self.network.max_dns_nameservers {
            bail!(
                "network.dns_nameservers: {} servers, more than network.max_dns_nameservers = {}",
                self.network.dns_nameservers.len(),
                self.network.max_dns_nameservers
            );
        }
        if !self
            .network
            .namespace_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || self.network.namespace_prefix.len() > 32
        {
            bail!(
                "network.namespace_prefix = {:?}: letters, digits and '-' only (at most 32)",
                self.network.namespace_prefix
            );
        }
        let ports = [
            ("api.identity_port", self.api.identity_port),
            ("api.compute_port", self.api.compute_port),
            ("api.image_port", self.api.image_port),
            ("api.network_port", self.api.network_port),
            ("api.volume_port", self.api.volume_port),
            ("api.dashboard_port", self.api.dashboard_port),
            ("api.metrics_port", self.api.metrics_port),
        ];
        for (i, (k, p)) in ports.iter().enumerate() {
            // Metrics may be switched off; every API needs its port.
            if *p == 0 && *k == "api.metrics_port" {
                continue;
            }
            if *p == 0 {
                bail!("{k} = 0: a fixed port is required");
            }
            if let Some((k2, _)) = ports[..i].iter().find(|(_, q)| q == p) {
                bail!("{k} = {p}: the same port as {k2}");
            }
        }
        if !self.compute.my_ip.is_empty()
            && self.compute.my_ip.parse::<std::net::Ipv4Addr>().is_err()
        {
            bail!(
                "compute.my_ip = {:?}: not an IPv4 address",
                self.compute.my_ip
            );
        }
        if self.is_compute_node() {
            // One URL, or several controllers' separated by commas.
            for u in self.controller_urls() {
                let rest = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    bail!(
                        "compute.controller_url = {:?}: want http://host:port (several: \
                         comma separated)",
                        self.compute.controller_url
                    );
                }
            }
        }
        if !["auto", "kvm", "qemu"].contains(&self.compute.virt_type.as_str()) {
            bail!(
                "compute.virt_type = {:?}: use auto, kvm or qemu",
                self.compute.virt_type
            );
        }
        for (k, r) in [
            (
                "compute.cpu_allocation_ratio",
                self.compute.cpu_allocation_ratio,
            ),
            (
                "compute.ram_allocation_ratio",
                self.compute.ram_allocation_ratio,
            ),
            (
                "compute.disk_allocation_ratio",
                self.compute.disk_allocation_ratio,
            ),
        ] {
            if !(r > 0.0 && r <= 64.0) {
                bail!("{k} = {r}: must be above 0 and at most 64");
            }
        }
        if !(3..=3600).contains(&self.compute.service_down_time) {
            bail!(
                "compute.service_down_time = {}: must be between 3 and 3600 seconds",
                self.compute.service_down_time
            );
        }
        if self.compute.agent_port == 0 {
            bail!("compute.agent_port = 0: a fixed port is required");
        }
        if self.image.size_cap == 0 {
            bail!("image.size_cap = 0: must be a positive number of bytes");
        }
        if self.api.region.trim().is_empty() {
            bail!("api.region must not be empty");
        }
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            bail!("database.url = {url:?}: use sqlite:///path or postgresql://…");
        }
        Ok(())
    }

    /// Host written into catalog URLs and client files.
    pub fn public_host(&self) -> String {
        if !self.api.public_host.is_empty() {
            return self.api.public_host.clone();
        }
        match self.api.listen {
            // Other hosts (compute nodes, clients) must reach the catalog's URLs: the address of
            // the interface the default route leaves by, else loopback.
            IpAddr::V4(a) if a.is_unspecified() => {
                crate::hostnet::primary_ipv4().map_or_else(|| "127.0.0.1".into(), |a| a.to_string())
            }
            IpAddr::V6(a) if a.is_unspecified() => "127.0.0.1".into(),
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        }
    }

    pub fn dashboard_url(&self) -> String {
        format!("http://{}:{}", self.public_host(), self.api.dashboard_port)
    }

    pub fn image_url(&self) -> String {
        format!("http://{}:{}", self.public_host(), self.api.image_port)
    }

    pub fn volume_url(&self) -> String {
        format!("http://{}:{}", self.public_host(), self.api.volume_port)
    }

    pub fn network_url(&self) -> String {
        format!("http://{}:{}", self.public_host(), self.api.network_port)
    }

    /// A compute-only host (joined to a controller elsewhere).
    pub fn is_compute_node(&self) -> bool {
        !self.compute.controller_url.is_empty()
    }

    /// Each controller's compute API a node was given, in order (empty on a controller).
    pub fn controller_urls(&self) -> Vec<String> {
        self.compute
            .controller_url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The compute API the agent reports to: the controller's (several comma separated), or
    /// this host's own.
    pub fn controller_url(&self) -> String {
        if self.is_compute_node() {
            self.compute
                .controller_url
                .trim_end_matches('/')
                .to_string()
        } else {
            self.compute_url()
        }
    }

    /// This host's address for other hosts: `compute.my_ip`, else the tenant-traffic interface's
    /// (two NICs), else the public host.
    pub fn my_ip(&self) -> String {
        if !self.compute.my_ip.is_empty() {
            return self.compute.my_ip.clone();
        }
        if !self.network.flat_interface.is_empty() {
            if let Some(a) = crate::hostnet::interface_ipv4(&self.network.flat_interface) {
                return a.to_string();
            }
        }
        self.public_host()
    }

    pub fn compute_url(&self) -> String {
        format!("http://{}:{}", self.public_host(), self.api.compute_port)
    }

    pub fn identity_url(&self) -> String {
        format!("http://{}:{}", self.public_host(), self.api.identity_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("").expect("empty config");
        assert_eq!(c.api.identity_port, 5000);
        // Listening everywhere, the catalog names the default-route address (loopback without).
        let expected = crate::hostnet::primary_ipv4()
            .map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string());
        assert_eq!(c.identity_url(), format!("http://{expected}:5000"));
        let local = Config::parse("[api]\nlisten = \"127.0.0.1\"\n").expect("config");
        assert_eq!(local.identity_url(), "http://127.0.0.1:5000");
        assert_eq!(c.api.metrics_port, 9198);
        let off = Config::parse("[api]\nmetrics_port = 0\n").expect("metrics off");
        assert_eq!(off.api.metrics_port, 0);
        // Lockout is on unless turned off; Neutron's caps are its defaults.
        assert_eq!(c.security_compliance.lockout_failure_attempts, 10);
        assert_eq!(c.security_compliance.lockout_duration, 600);
        let off = Config::parse("[security_compliance]\nlockout_failure_attempts = 0\n")
            .expect("lockout off");
        assert_eq!(off.security_compliance.lockout_failure_attempts, 0);
        assert_eq!(
            (
                c.network.max_fixed_ips_per_port,
                c.network.max_subnet_host_routes,
                c.network.max_dns_nameservers
            ),
            (5, 20, 5)
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[api]\nlisten_port = 1\n").expect_err("unknown key");
        assert!(format!("{e:#}").contains("listen_port"), "{e:#}");
        let e = Config::parse("[bogus]\n").expect_err("unknown table");
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[identity]\ntoken_lifetime = 5\n", "token_lifetime"),
            ("[network]\nfixed_range = \"nonsense\"\n", "fixed_range"),
            (
                "[network]\nfloating_range = \"198.18.0.0/30\"\n",
                "floating_range",
            ),
            ("[api]\nidentity_port = 8774\n", "identity_port"),
            ("[api]\nmetrics_port = 8080\n", "api.metrics_port"),
            ("[api]\nlisten = \"not-an-ip\"\n", "listen"),
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            ("[api]\nidentity_port = \"x\"\n", "identity_port"),
            (
                "[security_compliance]\nlockout_duration = 0\n",
                "lockout_duration",
            ),
            (
                "[security_compliance]\nlockout_failure_attempts = 5000\n",
                "lockout_failure_attempts",
            ),
            ("[network]\nmax_fixed_ips_per_port = 0\n", "max_fixed_ips_per_port"),
            (
                "[network]\nmax_dns_nameservers = 1\ndns_nameservers = [\"198.18.0.1\", \"198.18.0.2\"]\n",
                "max_dns_nameservers",
            ),
        ] {
            let e = Config::parse(text).expect_err(text);
            assert!(format!("{e:#}").contains(key), "{text}: {e:#}");
        }
    }

    #[test]
    fn a_node_may_name_several_controllers() {
        let c = Config::parse(
            "[compute]\ncontroller_url = \"http://198.18.0.1:8774/, http://198.18.0.2:8774\"\n",
        )
        .expect("two controllers");
        assert_eq!(
            c.controller_urls(),
            ["http://198.18.0.1:8774", "http://198.18.0.2:8774"]
        );
        assert!(c.is_compute_node());
        let e = Config::parse("[compute]\ncontroller_url = \"http://a:1,ftp://b\"\n")
            .expect_err("a bad second URL");
        assert!(format!("{e:#}").contains("controller_url"), "{e:#}");
    }

    #[test]
    fn overlapping_ranges_and_bad_network_values_are_refused() {
        for (toml, key) in [
            ("[network]\nfixed_range = \"198.18.10.0/24\"\nfloating_range = \"198.18.10.128/25\"\n", "overlaps network.floating_range"),
            ("[network]\nmtu = 100\n", "network.mtu"),
            ("[network]\ndns_nameservers = [\"x\"]\n", "network.dns_nameservers"),
            ("[network]\nnamespace_prefix = \"a b\"\n", "network.namespace_prefix"),
        ] {
            let err = format!("{:#}", Config::parse(toml).expect_err(toml));
            assert!(err.contains(key), "{toml}: {err}");
        }
        assert!(Config::parse(
            "[network]\nfixed_range = \"198.18.10.0/24\"\nfloating_range = \"198.18.11.0/24\"\n"
        )
        .is_ok());
    }
}
