//! One dnsmasq per DHCP server, inside its namespace, answering only from a static host list
//! (Neutron's model: every port's address is fixed by the controller). The files and the command
//! line are pure functions of the checked [`Dhcp`]; the process is found again after an agent
//! restart through its pid file, and only a process whose command line names that pid file is
//! ever signalled.

use super::model::{Dhcp, Subnet};
use super::netns;
use super::validate::{IfName, Mac};
use crate::access::{self, Identity};
use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Neutron's default `dhcp_lease_duration`: long enough that a controller outage is invisible,
/// short enough that a changed option reaches guests within a day.
pub const LEASE_SECS: u32 = 86400;

/// The files of one server. dnsmasq opens its pid, lease and log files while still root, so
/// they stay in the agent's root-only state directory; the host and option lists it re-reads as
/// its own user (at start and on every SIGHUP) live apart, in `shared`, which that user reaches.
#[derive(Clone, Debug)]
pub struct Files {
    /// `<state dir>/dhcp/<network id>`: pid, leases, log (root only).
    pub dir: PathBuf,
    /// `<shared dir>/dhcp/<network id>`: hosts, opts (root's, readable by dnsmasq's group).
    pub shared: PathBuf,
}

impl Files {
    pub fn new(state_dir: &Path, shared_dir: &Path, d: &Dhcp) -> Self {
        Self {
            dir: state_dir.join("dhcp").join(d.network_id.as_str()),
            shared: shared_dir.join("dhcp").join(d.network_id.as_str()),
        }
    }
    pub fn hosts(&self) -> PathBuf {
        self.shared.join("hosts")
    }
    pub fn opts(&self) -> PathBuf {
        self.shared.join("opts")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pid")
    }
    pub fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
}

/// The subnets dnsmasq serves: DHCP enabled, with one of the server's addresses inside (dnsmasq
/// answers on a static range only where its interface has an address), and that address.
pub fn served(d: &Dhcp) -> Vec<(&Subnet, Ipv4Addr)> {
    d.subnets
        .iter()
        .filter(|s| s.enable_dhcp)
        .filter_map(|s| {
            d.addresses
                .iter()
                .find(|a| s.cidr.contains(&a.addr()))
                .map(|a| (s, a.addr()))
        })
        .collect()
}

/// `--dhcp-hostsfile`: `mac,hostname,ip` per host in a served subnet.
pub fn hosts_file(d: &Dhcp) -> String {
    let served = served(d);
    let mut out = String::new();
    for h in &d.hosts {
        if served.iter().any(|(s, _)| s.cidr.contains(&h.ip)) {
            let _ = writeln!(out, "{},{},{}", h.mac, h.hostname, h.ip);
        }
    }
    out
}

/// `--dhcp-optsfile`: per served subnet (tag `s<n>`), router, DNS, MTU and classless routes.
pub fn opts_file(d: &Dhcp) -> String {
    let mut out = String::new();
    for (i, (s, own)) in served(d).iter().enumerate() {
        let tag = format!("tag:s{i}");
        // An empty option suppresses dnsmasq's default of offering itself as router / DNS.
        match s.gateway {
            Some(gw) => {
                let _ = writeln!(out, "{tag},option:router,{gw}");
            }
            None => {
                let _ = writeln!(out, "{tag},option:router");
            }
        }
        let dns: Vec<String> = s.dns.iter().map(|a| a.to_string()).collect();
        if dns.is_empty() {
            let _ = writeln!(out, "{tag},option:dns-server");
        } else {
            let _ = writeln!(out, "{tag},option:dns-server,{}", dns.join(","));
        }
        let _ = writeln!(out, "{tag},option:mtu,{}", d.mtu);
        // A client that gets option 121 ignores option 3, so the default route goes in too.
        let mut routes = vec![format!("{}/32,{own}", netns_meta())];
        for (dest, hop) in &s.routes {
            routes.push(format!("{},{hop}", dest.trunc()));
        }
        let has_default = s.routes.iter().any(|(d, _)| d.prefix_len() == 0);
        if let (Some(gw), false) = (s.gateway, has_default) {
            routes.push(format!("0.0.0.0/0,{gw}"));
        }
        let routes = routes.join(",");
        let _ = writeln!(out, "{tag},option:classless-static-route,{routes}");
        // Option 249: the same, for Windows clients.
        let _ = writeln!(out, "{tag},249,{routes}");
    }
    out
}

fn netns_meta() -> &'static str {
    onestack_core::network::proto::METADATA_IP
}

/// dnsmasq's arguments (without argv[0]).
pub fn args(d: &Dhcp, f: &Files, user: &Identity) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let path_arg = |flag: &str, p: PathBuf| {
        let mut s = OsString::from(flag);
        s.push(p.as_os_str());
        s
    };
    let fixed = [
        path_arg("--pid-file=", f.pid()),
        path_arg("--dhcp-hostsfile=", f.hosts()),
        path_arg("--dhcp-optsfile=", f.opts()),
        path_arg("--dhcp-leasefile=", f.leases()),
        path_arg("--log-facility=", f.log()),
    ];
    a.push("--conf-file=/dev/null".into());
    a.push("--no-hosts".into());
    a.push("--no-resolv".into());
    // No DNS service: only DHCP.
    a.push("--port=0".into());
    a.push("--bind-interfaces".into());
    a.push(format!("--interface={}", d.ns_device).into());
    a.push("--except-interface=lo".into());
    // Answer renewals of leases it has forgotten (lost lease file) instead of ignoring them.
    a.push("--dhcp-authoritative".into());
    a.push("--dhcp-lease-max=65536".into());
    // Named, not dnsmasq's built-in default (nobody, group dip): the files are given to it.
    a.push(format!("--user={}", user.name).into());
    if let Some(group) = &user.group {
        a.push(format!("--group={group}").into());
    }
    a.extend(fixed);
    for (i, (s, _)) in served(d).iter().enumerate() {
        a.push(
            format!(
                "--dhcp-range=set:s{i},{},static,{},{LEASE_SECS}s",
                s.cidr.network(),
                s.cidr.netmask()
            )
            .into(),
        );
    }
    a
}

/// Writes the hosts and options files where dnsmasq's user can read them and nobody else can
/// (root's, group `user`'s primary group, 0640, in directories only that group may pass), then
/// checks that this user can in fact reach them: a dnsmasq that cannot read its host list still
/// starts, and answers no one, so this is said here instead, as an error.
pub fn write_files(d: &Dhcp, f: &Files, user: &Identity) -> Result<()> {
    onestack_core::fsutil::create_private_dir(&f.dir)
        .with_context(|| format!("creating {}", f.dir.display()))?;
    // Where older versions kept them (a directory dnsmasq may not be able to pass).
    for old in ["hosts", "opts"] {
        let _ = std::fs::remove_file(f.dir.join(old));
    }
    let gid = (!user.is_root()).then_some(user.gid);
    let dhcp_dir = f.shared.parent().unwrap_or(&f.shared);
    if let Some(root) = dhcp_dir.parent().filter(|r| !r.exists()) {
        // The shared directory itself lets anyone pass (not list); what is inside is guarded.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .with_context(|| format!("creating {}", root.display()))?;
    }
    for dir in [dhcp_dir, f.shared.as_path()] {
        onestack_core::fsutil::create_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        access::set_group_mode(dir, gid, 0o710)
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    write_atomic(&f.hosts(), &hosts_file(d), gid)?;
    write_atomic(&f.opts(), &opts_file(d), gid)?;
    for file in [f.hosts(), f.opts()] {
        if let Some(blocked) = access::check(&file, user, access::READ) {
            let msg = format!(
                "dnsmasq for network {} runs as {} and cannot read {}: {blocked}; guests on \
                 that network would get no address (run `onestack doctor`)",
                d.network_id,
                user.name,
                file.display()
            );
            tracing::error!("{msg}");
            bail!(msg);
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, text: &str, gid: Option<u32>) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    access::set_group_mode(&tmp, gid, if gid.is_some() { 0o640 } else { 0o600 })
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The pid in the pid file, if that process is alive and is dnsmasq serving this pid file.
pub fn running(f: &Files) -> Option<(i32, Vec<OsString>)> {
    let pid: i32 = std::fs::read_to_string(f.pid()).ok()?.trim().parse().ok()?;
    let argv = cmdline(pid)?;
    let is_dnsmasq = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.as_bytes() == b"dnsmasq");
    let mut want = OsString::from("--pid-file=");
    want.push(f.pid().as_os_str());
    if is_dnsmasq && argv.contains(&want) {
        Some((pid, argv[1..].to_vec()))
    } else {
        None
    }
}

fn cmdline(pid: i32) -> Option<Vec<OsString>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // a zombie
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
            .collect(),
    )
}

/// Starts dnsmasq in `ns` (it daemonizes; its start-up errors come back as a failed exit) and
/// returns its pid.
pub async fn start(
    ns: PathBuf,
    dnsmasq: &Path,
    d: &Dhcp,
    f: &Files,
    user: &Identity,
) -> Result<i32> {
    let args = args(d, f, user);
    let _ = std::fs::remove_file(f.pid());
    // dnsmasq makes its lease and log files readable by its group; made here first, they stay
    // root's alone (it opens them while still root, and appends).
    for file in [f.leases(), f.log()] {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&file);
    }
    let out = netns::command(Some(ns), dnsmasq.to_path_buf(), args, None)
        .await
        .context("starting dnsmasq")?;
    if !out.status.success() {
        bail!(
            "dnsmasq for network {} failed to start ({}): {}",
            d.network_id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The daemon writes its pid file right after the parent exits.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some((pid, _)) = running(f) {
            for file in [f.pid(), f.leases(), f.log()] {
                let _ = access::set_group_mode(&file, None, 0o600);
            }
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            bail!("dnsmasq for network {} wrote no pid file", d.network_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes dnsmasq re-read its hosts and options files.
pub fn reload(f: &Files) -> Result<()> {
    let (pid, _) = running(f).context("dnsmasq is not running")?;
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGHUP).context("SIGHUP to dnsmasq")
}

/// Stops this server's dnsmasq, if running: SIGTERM, then SIGKILL after 3 s.
pub async fn stop(f: &Files) -> Result<()> {
    let Some((pid, _)) = running(f) else {
        return Ok(());
    };
    let target = Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while running(f).is_some() {
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(target, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A DHCPRELEASE for `ip` held by `mac`, from the server itself, so dnsmasq forgets the lease of
/// a deleted port at once (otherwise it refuses the address to a new port until the lease
/// expires). Like dnsmasq's own dhcp_release tool: sent to the server's address with the socket
/// bound to its interface, so dnsmasq sees it arrive there.
pub fn release_packet(mac: Mac, ip: Ipv4Addr, server: Ipv4Addr, xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[12..16].copy_from_slice(&ip.octets()); // ciaddr
    p[28..34].copy_from_slice(&mac.0); // chaddr
    p[236..240].copy_from_slice(&[99, 130, 83, 99]); // magic cookie
    p.extend_from_slice(&[53, 1, 7]); // DHCPRELEASE
    p.push(54); // server identifier
    p.push(4);
    p.extend_from_slice(&server.octets());
    p.push(255);
    p
}

/// Sends DHCPRELEASE for each `(mac, ip)` from inside the server's namespace.
pub async fn release(ns: PathBuf, d: &Dhcp, gone: Vec<(Mac, Ipv4Addr)>) -> Result<()> {
    let servers: Vec<(Ipv4Net, Ipv4Addr)> = served(d).iter().map(|(s, a)| (s.cidr, *a)).collect();
    let dev: IfName = d.ns_device.clone();
    netns::run_in(Some(ns), move || {
        let sock = UdpSocket::bind("0.0.0.0:0").context("DHCP release socket")?;
        let ifname = std::ffi::OsString::from(dev.as_str());
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::BindToDevice, &ifname)
            .with_context(|| format!("binding the release socket to {dev}"))?;
        for (i, (mac, ip)) in gone.iter().enumerate() {
            let Some((_, server)) = servers.iter().find(|(c, _)| c.contains(ip)) else {
                continue;
            };
            let pkt = release_packet(*mac, *ip, *server, 0x6f6e_0000 | i as u32);
            sock.send_to(&pkt, SocketAddrV4::new(*server, 67))
                .with_context(|| format!("sending DHCPRELEASE for {ip}"))?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::model::DhcpHost;
    use crate::net::validate::{HostName, Ident, NsName};

    fn server() -> Dhcp {
        Dhcp {
            network_id: Ident::parse("net1").expect("id"),
            namespace: NsName::parse("qdhcp-net1").expect("ns"),
            port_id: Ident::parse("p1").expect("id"),
            device: IfName::parse("tapdhcp").expect("dev"),
            ns_device: IfName::parse("ns-p1").expect("dev"),
            mac: Mac::parse("fa:16:3e:00:00:02").expect("mac"),
            addresses: vec!["198.18.1.2/24".parse().expect("addr")],
            mtu: 1450,
            subnets: vec![
                Subnet {
                    id: Ident::parse("s1").expect("id"),
                    cidr: "198.18.1.0/24".parse().expect("cidr"),
                    gateway: Some(Ipv4Addr::new(198, 18, 1, 1)),
                    enable_dhcp: true,
                    dns: vec![Ipv4Addr::new(198, 18, 0, 53)],
                    routes: vec![(
                        "198.18.200.0/24".parse().expect("cidr"),
                        Ipv4Addr::new(198, 18, 1, 254),
                    )],
                },
                Subnet {
                    id: Ident::parse("s2").expect("id"),
                    cidr: "198.18.2.0/24".parse().expect("cidr"),
                    gateway: None,
                    enable_dhcp: true,
                    dns: vec![],
                    routes: vec![],
                },
            ],
            hosts: vec![
                DhcpHost {
                    mac: Mac::parse("fa:16:3e:00:00:05").expect("mac"),
                    ip: Ipv4Addr::new(198, 18, 1, 5),
                    hostname: HostName::parse("host-198-18-1-5").expect("name"),
                },
                DhcpHost {
                    mac: Mac::parse("fa:16:3e:00:00:06").expect("mac"),
                    ip: Ipv4Addr::new(198, 18, 2, 6),
                    hostname: HostName::parse("other").expect("name"),
                },
            ],
            bridge: IfName::parse("brqnet1").expect("dev"),
        }
    }

    #[test]
    fn files() {
        let d = server();
        // s2 has no server address: not served, and its host is left out.
        assert_eq!(
            hosts_file(&d),
            "fa:16:3e:00:00:05,host-198-18-1-5,198.18.1.5\n"
        );
        assert_eq!(
            opts_file(&d),
            "tag:s0,option:router,198.18.1.1\n\
             tag:s0,option:dns-server,198.18.0.53\n\
             tag:s0,option:mtu,1450\n\
             tag:s0,option:classless-static-route,169.254.169.254/32,198.18.1.2,198.18.200.0/24,198.18.1.254,0.0.0.0/0,198.18.1.1\n\
             tag:s0,249,169.254.169.254/32,198.18.1.2,198.18.200.0/24,198.18.1.254,0.0.0.0/0,198.18.1.1\n"
        );
        let f = Files::new(Path::new("/var/lib/os"), Path::new("/run/os"), &d);
        let user = Identity {
            name: "onestack-dnsmasq".into(),
            group: Some("onestack-dnsmasq".into()),
            uid: 990,
            gid: 990,
            gids: vec![990],
        };
        let a: Vec<String> = args(&d, &f, &user)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(a.contains(&"--interface=ns-p1".to_owned()));
        assert!(a.contains(&"--pid-file=/var/lib/os/dhcp/net1/pid".to_owned()));
        assert!(a.contains(&"--dhcp-hostsfile=/run/os/dhcp/net1/hosts".to_owned()));
        assert!(a.contains(&"--dhcp-leasefile=/var/lib/os/dhcp/net1/leases".to_owned()));
        assert!(a.contains(&"--user=onestack-dnsmasq".to_owned()));
        assert!(a.contains(&"--group=onestack-dnsmasq".to_owned()));
        assert!(
            a.contains(&"--dhcp-range=set:s0,198.18.1.0,static,255.255.255.0,86400s".to_owned())
        );
        assert_eq!(
            a.iter().filter(|x| x.starts_with("--dhcp-range")).count(),
            1
        );
    }

    /// The host list is readable by dnsmasq's user through its group and by no one else, and a
    /// directory on the way that user cannot pass is an error, not a silent DHCP outage.
    #[test]
    fn files_are_for_dnsmasqs_user_alone() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to give files to another group");
            return;
        }
        let Ok(user) = Identity::resolve("nobody") else {
            eprintln!("skipped: no user nobody");
            return;
        };
        let d = server();
        let tmp = tempfile::tempdir().expect("tmp");
        // Like a data directory made by `mktemp -d`: only root may pass.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let state = tmp.path().join("state");
        let f = Files::new(&state, &tmp.path().join("run"), &d);
        let err = write_files(&d, &f, &user).expect_err("unreachable files");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("runs as nobody and cannot read")
                && msg.contains(&tmp.path().display().to_string())
                && msg.contains("cannot search"),
            "{msg}"
        );
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        write_files(&d, &f, &user).expect("reachable now");
        for file in [f.hosts(), f.opts()] {
            let m = std::fs::metadata(&file).expect("stat");
            assert_eq!(m.mode() & 0o777, 0o640, "{}", file.display());
            assert_eq!((m.uid(), m.gid()), (0, user.gid));
        }
        let m = std::fs::metadata(&f.shared).expect("stat");
        assert_eq!((m.mode() & 0o777, m.gid()), (0o710, user.gid));
        // The state directory (pid, leases, log) stays root's.
        let m = std::fs::metadata(&f.dir).expect("stat");
        assert_eq!(m.mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::read_to_string(f.hosts()).expect("hosts"),
            hosts_file(&d)
        );
    }

    #[test]
    fn no_gateway_means_no_router() {
        let mut d = server();
        d.subnets[0].gateway = None;
        d.subnets[0].dns.clear();
        let o = opts_file(&d);
        assert!(o.contains("tag:s0,option:router\n"));
        assert!(o.contains("tag:s0,option:dns-server\n"));
        assert!(!o.contains("0.0.0.0/0"));
    }

    #[test]
    fn release_packet_layout() {
        let p = release_packet(
            Mac::parse("fa:16:3e:00:00:05").expect("mac"),
            Ipv4Addr::new(198, 18, 1, 5),
            Ipv4Addr::new(198, 18, 1, 2),
            7,
        );
        assert_eq!(p.len(), 240 + 3 + 6 + 1);
        assert_eq!(&p[12..16], &[198, 18, 1, 5]);
        assert_eq!(&p[28..34], &[0xfa, 0x16, 0x3e, 0, 0, 5]);
        assert_eq!(&p[240..], &[53, 1, 7, 54, 4, 198, 18, 1, 2, 255]);
    }
}
