//! The network data plane for real: a private "host" namespace per test, "VM" namespaces plugged
//! in by veth pairs whose host ends carry the ports' device names, real nftables, dnsmasq and
//! router namespaces. Addresses are all in 198.18.0.0/15 (benchmarking range) and no packet
//! leaves the namespaces the test created. Everything it made is removed by a guard, even when an
//! assertion fails. Skips (saying why) unless root with nft, dnsmasq, ip and busybox.

use onestack_agent::net::{ApplyStats, HostNetworking, NetConfig};
use onestack_core::network::proto::{self, *};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    for prog in ["nft", "dnsmasq", "ip", "busybox"] {
        if find(prog).is_none() {
            return Some(format!("{prog} is not installed"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

static SEQ: AtomicU32 = AtomicU32::new(0);
/// The two tests take turns, so the benchmark's timings are not the other test's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything a test created; dropped last, also on panic.
/// The user the test's dnsmasq drops to.
fn dnsmasq_user() -> onestack_agent::access::Identity {
    onestack_agent::access::Identity::resolve("nobody").expect("user nobody")
}

struct Env {
    prefix: String,
    host: String,
    vms: Vec<String>,
    net: Option<HostNetworking>,
    state_dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let prefix = format!(
            "osnt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let host = format!("{prefix}-h");
        ok(&["ip", "netns", "add", &host]);
        ok(&["ip", "-n", &host, "link", "set", "lo", "up"]);
        let state_dir = tempfile::tempdir().expect("tempdir");
        // dnsmasq drops to `nobody` and re-reads its files from `shared/` on SIGHUP.
        std::fs::set_permissions(
            state_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let net = HostNetworking::new(NetConfig {
            host_netns: Some(host.clone()),
            state_dir: state_dir.path().to_path_buf(),
            shared_dir: state_dir.path().join("shared"),
            dnsmasq_user: dnsmasq_user(),
            tap_owner: None,
            dnsmasq: find("dnsmasq").expect("dnsmasq"),
            uplink: None,
            guest_open_ports: vec![GUEST_OPEN_PORT],
        });
        Env {
            prefix,
            host,
            vms: Vec::new(),
            net: Some(net),
            state_dir,
        }
    }

    fn net(&mut self) -> &mut HostNetworking {
        self.net.as_mut().expect("data plane")
    }

    /// A "VM": a namespace whose eth0 is the peer of host device `dev`.
    fn vm(&mut self, name: &str, dev: &str, mac: &str, addr: Option<&str>) -> String {
        let ns = format!("{}-{name}", self.prefix);
        ok(&["ip", "netns", "add", &ns]);
        self.vms.push(ns.clone());
        ok(&[
            "ip", "-n", &self.host, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ok(&["ip", "-n", &ns, "link", "set", "eth0", "address", mac]);
        ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        if let Some(a) = addr {
            ok(&["ip", "-n", &ns, "addr", "add", a, "dev", "eth0"]);
            ok(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                "198.18.1.1",
            ]);
        }
        ns
    }

    fn nft_list(&self, family: &str) -> String {
        let out = run(&[
            "ip", "netns", "exec", &self.host, "nft", "list", "table", family, "onestack",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut net) = self.net.take() {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(net.teardown_all()),
                Err(e) => eprintln!("cleanup: no runtime: {e}"),
            }
        }
        for ns in self.vms.iter().chain(std::iter::once(&self.host)) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = &self.state_dir;
    }
}

fn ping(ns: &str, target: &str, source: Option<&str>) -> bool {
    let mut args = vec![
        "ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1",
    ];
    if let Some(s) = source {
        args.extend(["-I", s]);
    }
    args.push(target);
    // A first packet may wait on ARP; a second try rules that out.
    run(&args).status.success() || run(&args).status.success()
}

/// The one host port the data plane tests open to guests (standing in for the public APIs).
const GUEST_OPEN_PORT: u16 = 18774;
/// A host port guests must not reach (standing in for metrics, the agent, the dashboard).
const HOST_ONLY_PORT: u16 = 19198;

/// Whether a TCP connection from `from` to `addr:port` reaches a listener in namespace `host`.
fn tcp_reaches(host: &str, from: &str, addr: &str, port: u16) -> bool {
    let port = port.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", host, "busybox", "nc", "-l", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("listener");
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("ip")
        .args([
            "netns", "exec", from, "busybox", "nc", "-w", "2", addr, &port,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // The listener ends once a connection came and went.
    let deadline = Instant::now() + Duration::from_secs(2);
    let reached = loop {
        if matches!(server.try_wait(), Ok(Some(_))) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    reached
}

fn icmp_in_echos(ns: &str) -> u64 {
    let snmp = ok(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let mut lines = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no Icmp lines in /proc/net/snmp");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .expect("InEchos");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("InEchos value")
}

fn egress_all(id: &str) -> HostRule {
    HostRule {
        id: format!("{id}-egress"),
        direction: Direction::Egress,
        ethertype: "IPv4".into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: None,
    }
}

/// Ingress from the members of group `group` (Neutron's default-group rule).
fn from_group(group: &str, ethertype: &str) -> HostRule {
    HostRule {
        id: format!("{group}-in-{ethertype}"),
        direction: Direction::Ingress,
        ethertype: ethertype.into(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: Some(group.into()),
    }
}

fn vm_port(id: &str, dev: &str, mac: &str, ip: &str, groups: &[&str]) -> HostPort {
    HostPort {
        id: id.into(),
        network_id: "tenant".into(),
        kind: PortKind::Vm,
        device: dev.into(),
        mac: mac.into(),
        ips: vec![ip.into()],
        admin_state_up: true,
        port_security: true,
        security_groups: groups.iter().map(|g| g.to_string()).collect(),
        allowed_address_pairs: vec![],
    }
}

fn trusted_port(id: &str, net: &str, kind: PortKind, dev: &str, mac: &str, ip: &str) -> HostPort {
    HostPort {
        id: id.into(),
        network_id: net.into(),
        kind,
        device: dev.into(),
        mac: mac.into(),
        ips: vec![ip.into()],
        admin_state_up: true,
        port_security: false,
        security_groups: vec![],
        allowed_address_pairs: vec![],
    }
}

const MAC1: &str = "fa:16:3e:00:00:11";
const MAC2: &str = "fa:16:3e:00:00:12";
const MAC3: &str = "fa:16:3e:00:00:13";

fn tenant_subnet() -> HostSubnet {
    HostSubnet {
        id: "tenant-v4".into(),
        cidr: "198.18.1.0/24".into(),
        gateway_ip: Some("198.18.1.1".into()),
        enable_dhcp: true,
        dns_nameservers: vec!["198.18.0.53".into()],
        host_routes: vec![HostRoute {
            destination: "198.18.200.0/24".into(),
            nexthop: "198.18.1.254".into(),
        }],
    }
}

/// The scenario's state: a tenant network with three VMs, DHCP and a router to an external
/// network on which the host has 198.18.64.1 and VM1 has floating IP 198.18.64.20.
fn scenario_state(prefix: &str) -> NetworkState {
    let dhcp_port = "dhcpport1";
    let qr_port = "qrport1";
    let qg_port = "qgport1";
    NetworkState {
        generation: 1,
        networks: vec![
            HostNetwork {
                id: "tenant".into(),
                bridge: "brqtenant".into(),
                mtu: 1450,
                external: false,
                zone: 1,
                host_address: None,
                subnets: vec![tenant_subnet()],
                tunnel: None,
            },
            HostNetwork {
                id: "ext".into(),
                bridge: "brqext".into(),
                mtu: 1500,
                external: true,
                zone: 2,
                host_address: Some("198.18.64.1/24".into()),
                subnets: vec![],
                tunnel: None,
            },
        ],
        ports: vec![
            vm_port("vm1port", "tapvm1", MAC1, "198.18.1.11", &["default"]),
            vm_port("vm2port", "tapvm2", MAC2, "198.18.1.12", &["default"]),
            vm_port("vm3port", "tapvm3", MAC3, "198.18.1.13", &["locked"]),
            trusted_port(
                dhcp_port,
                "tenant",
                PortKind::Dhcp,
                "tapdhcp",
                "fa:16:3e:00:00:02",
                "198.18.1.2",
            ),
            trusted_port(
                qr_port,
                "tenant",
                PortKind::Router,
                "tapqr",
                "fa:16:3e:00:00:01",
                "198.18.1.1",
            ),
            trusted_port(
                qg_port,
                "ext",
                PortKind::Router,
                "tapqg",
                "fa:16:3e:00:00:40",
                "198.18.64.10",
            ),
        ],
        security_groups: vec![
            HostSecurityGroup {
                id: "default".into(),
                member_ips: vec!["198.18.1.11".into(), "198.18.1.12".into()],
                rules: vec![
                    egress_all("default"),
                    from_group("default", "IPv4"),
                    from_group("default", "IPv6"),
                ],
            },
            HostSecurityGroup {
                id: "locked".into(),
                member_ips: vec!["198.18.1.13".into()],
                rules: vec![egress_all("locked")],
            },
        ],
        dhcp: vec![DhcpServer {
            network_id: "tenant".into(),
            namespace: format!("{prefix}-dhcp"),
            port_id: dhcp_port.into(),
            device: "tapdhcp".into(),
            mac: "fa:16:3e:00:00:02".into(),
            addresses: vec!["198.18.1.2/24".into()],
            mtu: 1450,
            subnets: vec![tenant_subnet()],
            hosts: [
                ("198.18.1.11", MAC1),
                ("198.18.1.12", MAC2),
                ("198.18.1.13", MAC3),
            ]
            .iter()
            .map(|(ip, mac)| DhcpHost {
                mac: (*mac).into(),
                ip: (*ip).into(),
                hostname: format!("host-{}", ip.replace('.', "-")),
            })
            .collect(),
        }],
        routers: vec![HostRouter {
            id: "router1".into(),
            namespace: format!("{prefix}-r"),
            gateway: Some(RouterGateway {
                port_id: qg_port.into(),
                network_id: "ext".into(),
                host_device: "tapqg".into(),
                device: proto::router_gateway_device(qg_port),
                mac: "fa:16:3e:00:00:40".into(),
                address: "198.18.64.10/24".into(),
                default_gateway: Some("198.18.64.1".into()),
                enable_snat: true,
            }),
            interfaces: vec![RouterInterface {
                port_id: qr_port.into(),
                network_id: "tenant".into(),
                host_device: "tapqr".into(),
                device: proto::router_interface_device(qr_port),
                mac: "fa:16:3e:00:00:01".into(),
                address: "198.18.1.1/24".into(),
                mtu: 1450,
            }],
            floating_ips: vec![FloatingNat {
                floating_ip: "198.18.64.20".into(),
                fixed_ip: "198.18.1.11".into(),
            }],
        }],
    }
}

fn applied(stats: &ApplyStats) {
    assert!(stats.errors.is_empty(), "apply errors: {:#?}", stats.errors);
    assert!(stats.rejected.is_empty(), "rejected: {:#?}", stats.rejected);
}

/// udhcpc in `ns`: returns the environment its script saw on `bound`.
fn dhcp_client(ns: &str, dir: &Path) -> String {
    let out = dir.join("udhcpc.env");
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > '{}'\nexit 0\n",
            out.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let script_arg = script.to_string_lossy().into_owned();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "udhcpc", "-f", "-q", "-n"])
        .args([
            "-i",
            "eth0",
            "-t",
            "5",
            "-T",
            "1",
            "-O",
            "staticroutes",
            "-O",
            "mtu",
        ])
        .args(["-s", &script_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("udhcpc");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            // Only the client this test started.
            let _ = child.kill();
            let _ = child.wait();
            panic!("udhcpc got no lease in 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(&out).unwrap_or_default()
}

fn env_var<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn dataplane() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the network data plane test: {why}");
        return;
    }
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut env = Env::new();
    let mut state = scenario_state(&env.prefix);
    let host = env.host.clone();
    let vm1 = env.vm("vm1", "tapvm1", MAC1, Some("198.18.1.11/24"));
    let vm2 = env.vm("vm2", "tapvm2", MAC2, Some("198.18.1.12/24"));
    let vm3 = env.vm("vm3", "tapvm3", MAC3, None);

    let stats = rt.block_on(env.net().apply(&state)).expect("first apply");
    applied(&stats);
    assert!(stats.full_rebuild);
    eprintln!("first apply: {stats:?}");

    // bridge netfilter: bridged IPv4 reaches the inet hooks with the bridge as interface.
    let ruleset = env.nft_list("inet");
    assert!(ruleset.contains("\"brqtenant\" : 1"), "{ruleset}");
    assert!(ruleset.contains("pi-tapvm1"), "{ruleset}");
    assert!(!ruleset.contains("tapdhcp"), "trusted ports get no chains");

    // DHCP: vm3 gets its fixed address, the gateway, MTU and the classless routes.
    let lease = dhcp_client(&vm3, env.state_dir.path());
    assert_eq!(env_var(&lease, "ip"), Some("198.18.1.13"), "{lease}");
    assert_eq!(env_var(&lease, "subnet"), Some("255.255.255.0"), "{lease}");
    assert_eq!(env_var(&lease, "mtu"), Some("1450"), "{lease}");
    let routes = env_var(&lease, "staticroutes").unwrap_or_default();
    assert!(routes.contains("169.254.169.254/32 198.18.1.2"), "{lease}");
    assert!(routes.contains("198.18.200.0/24 198.18.1.254"), "{lease}");
    assert!(routes.contains("0.0.0.0/0 198.18.1.1"), "{lease}");
    ok(&[
        "ip",
        "-n",
        &vm3,
        "addr",
        "add",
        "198.18.1.13/24",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        &vm3,
        "route",
        "add",
        "default",
        "via",
        "198.18.1.1",
    ]);

    // Same default group: VMs reach each other both ways.
    assert!(ping(&vm1, "198.18.1.12", None), "vm1 -> vm2");
    assert!(ping(&vm2, "198.18.1.11", None), "vm2 -> vm1");

    // vm3's group has no ingress rule: it cannot be pinged, but its own pings get answers
    // (the reply is an established connection).
    assert!(
        !ping(&vm1, "198.18.1.13", None),
        "vm1 -> vm3 must be dropped"
    );
    assert!(
        ping(&vm3, "198.18.1.2", None),
        "vm3 -> DHCP port (reply is stateful)"
    );

    // Adding an ICMP ingress rule is one small transaction touching only the group's chain.
    state.security_groups[1].rules.push(HostRule {
        id: "locked-icmp".into(),
        direction: Direction::Ingress,
        ethertype: "IPv4".into(),
        protocol: Some(1),
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: Some("0.0.0.0/0".into()),
        remote_group_id: None,
    });
    let stats = rt.block_on(env.net().apply(&state)).expect("rule apply");
    applied(&stats);
    assert!(!stats.full_rebuild);
    assert_eq!(stats.security_groups.changed, 1);
    assert!(stats.nft_lines <= 6, "{stats:?}");
    assert!(
        ping(&vm1, "198.18.1.13", None),
        "vm1 -> vm3 after the ICMP rule"
    );

    // Anti-spoofing: vm2 claims 198.18.1.99. With vm3's MAC known (no ARP from the spoofed
    // address), only the IPv4 source check can stop the echo requests before vm3 counts them.
    ok(&[
        "ip",
        "-n",
        &vm2,
        "addr",
        "add",
        "198.18.1.99/32",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        &vm2,
        "neigh",
        "replace",
        "198.18.1.13",
        "lladdr",
        MAC3,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let before = icmp_in_echos(&vm3);
    assert!(!ping(&vm2, "198.18.1.13", Some("198.18.1.99")));
    assert_eq!(icmp_in_echos(&vm3), before, "spoofed packets reached vm3");
    assert!(
        ping(&vm2, "198.18.1.13", Some("198.18.1.12")),
        "the real address passes"
    );
    assert!(icmp_in_echos(&vm3) > before);

    // Router: vm1 reaches the host's address on the external network through SNAT.
    assert!(
        ping(&vm1, "198.18.64.1", None),
        "vm1 -> external via the router"
    );
    assert!(
        ping(&vm3, "198.18.64.1", None),
        "vm3 -> external via the router"
    );
    // Through its router a guest reaches the host's public APIs, and nothing else of it; the
    // host's own traffic is not filtered.
    assert!(
        tcp_reaches(&host, &vm1, "198.18.64.1", GUEST_OPEN_PORT),
        "a guest reaches the public APIs"
    );
    assert!(
        !tcp_reaches(&host, &vm1, "198.18.64.1", HOST_ONLY_PORT),
        "a guest must not reach the host's other ports"
    );
    assert!(
        tcp_reaches(&host, &host, "198.18.64.1", HOST_ONLY_PORT),
        "the host itself reaches them"
    );

    // Floating IP: the host reaches vm1 at 198.18.64.20 once vm1 also has the group that allows
    // ICMP from anywhere (a membership change: the port's chains are refilled in place).
    state.ports[0].security_groups.push("locked".into());
    state.security_groups[1]
        .member_ips
        .push("198.18.1.11".into());
    let stats = rt
        .block_on(env.net().apply(&state))
        .expect("membership apply");
    applied(&stats);
    assert_eq!(stats.ports.changed, 1);
    assert!(
        ping(&host, "198.18.64.20", None),
        "host -> floating IP of vm1"
    );

    // A restarted agent (new instance, same state dir) converges without disturbing anything:
    // same dnsmasq process, connectivity intact.
    let pid_file = env.state_dir.path().join("dhcp/tenant/pid");
    let pid_before = std::fs::read_to_string(&pid_file).expect("pid file");
    let mut restarted = HostNetworking::new(NetConfig {
        host_netns: Some(host.clone()),
        state_dir: env.state_dir.path().to_path_buf(),
        shared_dir: env.state_dir.path().join("shared"),
        dnsmasq_user: dnsmasq_user(),
        tap_owner: None,
        dnsmasq: find("dnsmasq").expect("dnsmasq"),
        uplink: None,
        guest_open_ports: Vec::new(),
    });
    let stats = rt
        .block_on(restarted.apply(&state))
        .expect("apply after restart");
    applied(&stats);
    assert!(stats.full_rebuild);
    env.net = Some(restarted);
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file"),
        pid_before
    );
    assert!(ping(&vm1, "198.18.1.12", None), "vm1 -> vm2 after restart");
    assert!(
        ping(&host, "198.18.64.20", None),
        "floating IP after restart"
    );

    // Removing the floating IP: its NAT elements and address go, the host no longer reaches vm1.
    state.routers[0].floating_ips.clear();
    let stats = rt
        .block_on(env.net().apply(&state))
        .expect("floating IP removal");
    applied(&stats);
    assert_eq!(stats.routers.changed, 1);
    let router_ns = format!("{}-r", env.prefix);
    let nat = ok(&[
        "ip",
        "netns",
        "exec",
        &router_ns,
        "nft",
        "list",
        "table",
        "ip",
        "onestack-nat",
    ]);
    assert!(!nat.contains("198.18.64.20"), "{nat}");
    assert!(nat.contains("snat to 198.18.64.10"), "{nat}");
    assert!(
        !ping(&host, "198.18.64.20", None),
        "floating IP still answers"
    );
    assert!(ping(&vm1, "198.18.64.1", None), "SNAT still works");

    // Deleting a port removes its chains, map and set elements and its device, nothing else;
    // its DHCP lease is released.
    let leases = env.state_dir.path().join("dhcp/tenant/leases");
    assert!(std::fs::read_to_string(&leases)
        .unwrap_or_default()
        .contains(MAC3));
    state.ports.retain(|p| p.id != "vm3port");
    state.dhcp[0].hosts.retain(|h| h.mac != MAC3);
    for g in &mut state.security_groups {
        g.member_ips.retain(|ip| ip != "198.18.1.13");
    }
    let stats = rt.block_on(env.net().apply(&state)).expect("delete apply");
    applied(&stats);
    assert_eq!(stats.ports.removed, 1);
    assert!(!stats.full_rebuild);
    let inet = env.nft_list("inet");
    let bridge = env.nft_list("bridge");
    assert!(
        !inet.contains("tapvm3") && !inet.contains("198.18.1.13"),
        "{inet}"
    );
    assert!(!bridge.contains("tapvm3"), "{bridge}");
    assert!(inet.contains("pi-tapvm1") && bridge.contains("ps-tapvm1"));
    assert!(!run(&["ip", "-n", &host, "link", "show", "tapvm3"])
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&leases)
        .unwrap_or_default()
        .contains(MAC3)
    {
        assert!(
            Instant::now() < deadline,
            "lease of the deleted port not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ping(&vm1, "198.18.1.12", None), "others unaffected");

    // Teardown removes the namespaces (and dnsmasq) it created.
    let dnsmasq_pid: i32 = pid_before.trim().parse().expect("pid");
    rt.block_on(env.net().teardown_all());
    for ns in [format!("{}-dhcp", env.prefix), format!("{}-r", env.prefix)] {
        assert!(
            !Path::new("/run/netns").join(&ns).exists(),
            "{ns} left behind"
        );
    }
    assert!(
        !Path::new(&format!("/proc/{dnsmasq_pid}")).exists() || {
            std::thread::sleep(Duration::from_millis(500));
            !Path::new(&format!("/proc/{dnsmasq_pid}/cmdline")).exists()
                || std::fs::read(format!("/proc/{dnsmasq_pid}/cmdline"))
                    .map_or(true, |c| c.is_empty())
        }
    );
    assert!(env.nft_list("inet").is_empty());
}

/// How long applying one new port takes with 1 and with 101 ports present, and 100 at once. The
/// one-port transaction is the same size either way; the time must not grow with the port count.
#[test]
fn apply_time_per_port() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the apply benchmark: {why}");
        return;
    }
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut env = Env::new();
    if let Some(net) = env.net.take() {
        drop(net);
    }
    // TAPs owned by `nobody`, as for an unprivileged QEMU.
    env.net = Some(HostNetworking::new(NetConfig {
        host_netns: Some(env.host.clone()),
        state_dir: env.state_dir.path().to_path_buf(),
        shared_dir: env.state_dir.path().join("shared"),
        dnsmasq_user: dnsmasq_user(),
        tap_owner: Some(65534),
        dnsmasq: find("dnsmasq").expect("dnsmasq"),
        uplink: None,
        guest_open_ports: Vec::new(),
    }));
    let mut state = NetworkState {
        generation: 1,
        networks: vec![HostNetwork {
            id: "tenant".into(),
            bridge: "brqtenant".into(),
            mtu: 1500,
            external: false,
            zone: 1,
            host_address: None,
            subnets: vec![],
            tunnel: None,
        }],
        ports: vec![],
        security_groups: vec![HostSecurityGroup {
            id: "default".into(),
            member_ips: vec![],
            rules: vec![egress_all("default")],
        }],
        dhcp: vec![],
        routers: vec![],
    };
    let port = |i: usize| {
        // The data plane creates these as real persistent TAPs.
        vm_port(
            &format!("bench{i}"),
            &format!("tapbench{i}"),
            &format!("fa:16:3e:01:{:02x}:{:02x}", i / 256, i % 256),
            &format!("198.18.{}.{}", 10 + i / 250, 1 + i % 250),
            &["default"],
        )
    };
    let mut add = |state: &mut NetworkState, range: std::ops::Range<usize>| {
        for i in range {
            let p = port(i);
            state.security_groups[0].member_ips.push(p.ips[0].clone());
            state.ports.push(p);
        }
        let stats = rt.block_on(env.net().apply(state)).expect("apply");
        applied(&stats);
        stats
    };
    add(&mut state, 0..0);
    // Ports #1..#5 one at a time, then 100 at once, then #106..#110 one at a time.
    let early: Vec<ApplyStats> = (0..5).map(|i| add(&mut state, i..i + 1)).collect();
    let hundred = add(&mut state, 5..105);
    let later: Vec<ApplyStats> = (105..110).map(|i| add(&mut state, i..i + 1)).collect();
    let median = |v: &[ApplyStats]| {
        let mut t: Vec<Duration> = v.iter().map(|s| s.elapsed).collect();
        t.sort();
        t[t.len() / 2]
    };
    let (m_early, m_late) = (median(&early), median(&later));
    for (what, v) in [("early", &early), ("late", &later)] {
        let nft: Vec<Duration> = v.iter().map(|s| s.nft_elapsed).collect();
        let l2: Vec<Duration> = v.iter().map(|s| s.l2_elapsed).collect();
        let all: Vec<Duration> = v.iter().map(|s| s.elapsed).collect();
        println!("{what}: total {all:?}\n  nft {nft:?}\n  links {l2:?}");
    }
    println!(
        "apply time: 1 new port with 0-4 present {m_early:?} (median of {}; first {:?}), \
         100 new ports at once {:?}, 1 new port with 105-109 present {m_late:?} (median of {}); \
         nft lines per new port: {} vs {}",
        early.len(),
        early[0].elapsed,
        hundred.elapsed,
        later.len(),
        early[1].nft_lines,
        later[0].nft_lines
    );
    assert_eq!(early[1].nft_lines, later[0].nft_lines);

    // The self-check with 110 ports (real TAPs): finds nothing on a healthy host, and costs
    // what it costs every few seconds.
    let mut checks: Vec<Duration> = (0..5)
        .map(|_| {
            let stats = rt.block_on(env.net().heal()).expect("heal");
            assert!(stats.drift.is_empty(), "{:?}", stats.drift);
            assert_eq!(stats.nft_lines, 0);
            stats.check_elapsed
        })
        .collect();
    checks.sort();
    println!(
        "self-check with 110 ports: median {} ms (min {} ms, max {} ms)",
        checks[2].as_millis(),
        checks[0].as_millis(),
        checks[4].as_millis()
    );

    // The TAPs are real, persistent and owned by the configured user; deleting a port deletes its
    // TAP (through the tun ioctls).
    let host = env.host.clone();
    let link = ok(&["ip", "-d", "-n", &host, "link", "show", "tapbench0"]);
    assert!(
        link.contains("tap")
            && link.contains("persist on")
            && (link.contains("user 65534") || link.contains("user nobody")),
        "{link}"
    );
    assert!(link.contains("master brqtenant"), "{link}");
    state.ports.retain(|p| p.id != "bench0");
    state.security_groups[0]
        .member_ips
        .retain(|ip| ip != "198.18.10.1");
    let stats = rt.block_on(env.net().apply(&state)).expect("apply");
    applied(&stats);
    assert_eq!(stats.ports.removed, 1);
    assert!(!run(&["ip", "-n", &host, "link", "show", "tapbench0"])
        .status
        .success());
    assert!(
        m_late < m_early * 3 + Duration::from_millis(30),
        "one-port apply grew with the port count: {m_early:?} -> {m_late:?}"
    );
}

/// One host's view of a two-host tenant network: its VM and a VXLAN tunnel to the other host
/// (`peer` None: the other host is gone, so no tunnel).
fn tunnel_state(generation: i64, local: &str, peer: Option<&str>, vm: HostPort) -> NetworkState {
    NetworkState {
        generation,
        networks: vec![HostNetwork {
            id: "tenant".into(),
            bridge: "brqtenant".into(),
            mtu: 1450,
            external: false,
            zone: 7,
            host_address: None,
            subnets: vec![],
            tunnel: peer.map(|p| Tunnel {
                device: proto::vxlan_device(7007),
                vni: 7007,
                local_ip: local.into(),
                peers: vec![p.into()],
            }),
        }],
        ports: vec![vm],
        security_groups: vec![HostSecurityGroup {
            id: "default".into(),
            member_ips: vec!["198.18.1.11".into(), "198.18.1.12".into()],
            rules: vec![egress_all("default"), from_group("default", "IPv4")],
        }],
        dhcp: vec![],
        routers: vec![],
    }
}

/// Two hosts (namespaces joined by a veth "wire", 198.18.90.0/24), one VM each on the same
/// tenant network: the VXLAN tunnel carries their traffic, security groups still apply on both
/// ends, and dropping the peer removes the tunnel.
#[test]
fn vxlan_joins_hosts() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut a = Env::new();
    let mut b = Env::new();
    ok(&[
        "ip", "-n", &a.host, "link", "add", "wire", "type", "veth", "peer", "name", "wire",
        "netns", &b.host,
    ]);
    for (env, addr) in [(&a, "198.18.90.1/24"), (&b, "198.18.90.2/24")] {
        ok(&["ip", "-n", &env.host, "addr", "add", addr, "dev", "wire"]);
        ok(&["ip", "-n", &env.host, "link", "set", "wire", "up"]);
    }
    let vm1 = a.vm("vm1", "tapvm1", MAC1, Some("198.18.1.11/24"));
    let vm2 = b.vm("vm2", "tapvm2", MAC2, Some("198.18.1.12/24"));
    let port1 = vm_port("vm1port", "tapvm1", MAC1, "198.18.1.11", &["default"]);
    let port2 = vm_port("vm2port", "tapvm2", MAC2, "198.18.1.12", &["default"]);

    // Before the tunnel exists the two halves of the network are apart.
    let s = tunnel_state(1, "198.18.90.1", None, port1.clone());
    applied(&rt.block_on(a.net().apply(&s)).expect("apply a"));
    let s = tunnel_state(1, "198.18.90.2", None, port2.clone());
    applied(&rt.block_on(b.net().apply(&s)).expect("apply b"));
    assert!(
        !ping(&vm1, "198.18.1.12", None),
        "no tunnel yet, yet VM2 answered"
    );

    let s = tunnel_state(2, "198.18.90.1", Some("198.18.90.2"), port1.clone());
    applied(&rt.block_on(a.net().apply(&s)).expect("tunnel a"));
    let s = tunnel_state(2, "198.18.90.2", Some("198.18.90.1"), port2.clone());
    applied(&rt.block_on(b.net().apply(&s)).expect("tunnel b"));
    let link = ok(&["ip", "-d", "-n", &a.host, "link", "show", "vxlan-7007"]);
    assert!(link.contains("vxlan id 7007"), "{link}");
    assert!(link.contains("master brqtenant"), "{link}");
    assert!(link.contains("local 198.18.90.1"), "{link}");
    let fdb = ok(&["bridge", "-n", &a.host, "fdb", "show", "dev", "vxlan-7007"]);
    assert!(
        fdb.contains("00:00:00:00:00:00 dst 198.18.90.2"),
        "no flooding entry to the peer: {fdb}"
    );
    assert!(
        ping(&vm1, "198.18.1.12", None),
        "VM1 cannot reach VM2 over the tunnel"
    );
    assert!(
        ping(&vm2, "198.18.1.11", None),
        "VM2 cannot reach VM1 over the tunnel"
    );
    // Anti-spoofing still holds at the sender: VM2 cannot claim VM1's address across hosts.
    ok(&[
        "ip",
        "-n",
        &vm2,
        "addr",
        "add",
        "198.18.1.50/24",
        "dev",
        "eth0",
    ]);
    assert!(
        !ping(&vm2, "198.18.1.11", Some("198.18.1.50")),
        "a spoofed source crossed the tunnel"
    );

    // Applying the same state again (an agent restart) keeps one flooding entry.
    let s = tunnel_state(3, "198.18.90.1", Some("198.18.90.2"), port1.clone());
    let mut restarted = HostNetworking::new(NetConfig {
        host_netns: Some(a.host.clone()),
        state_dir: a.state_dir.path().to_path_buf(),
        shared_dir: a.state_dir.path().join("shared"),
        dnsmasq_user: dnsmasq_user(),
        tap_owner: None,
        dnsmasq: find("dnsmasq").expect("dnsmasq"),
        uplink: None,
        guest_open_ports: Vec::new(),
    });
    applied(&rt.block_on(restarted.apply(&s)).expect("restart apply"));
    let fdb = ok(&["bridge", "-n", &a.host, "fdb", "show", "dev", "vxlan-7007"]);
    assert_eq!(fdb.matches("00:00:00:00:00:00").count(), 1, "{fdb}");
    assert!(
        ping(&vm1, "198.18.1.12", None),
        "lost the tunnel on restart"
    );

    // The other host leaves: the tunnel goes, the bridge and VM stay.
    let s = tunnel_state(4, "198.18.90.1", None, port1);
    applied(&rt.block_on(restarted.apply(&s)).expect("leave apply"));
    let links = ok(&["ip", "-n", &a.host, "link", "show"]);
    assert!(!links.contains("vxlan-7007"), "{links}");
    assert!(links.contains("brqtenant"), "{links}");
    assert!(
        !ping(&vm1, "198.18.1.12", None),
        "VM2 still reachable without a tunnel"
    );
    drop(restarted);
}

// ---- drift: whatever happens to the host, the data plane comes back ----------------------------

/// Counts the warnings and errors logged on the test's thread (where `block_on` runs the data
/// plane), and prints them.
struct CountWarnings(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *e.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// One repair pass, as the agent's timer makes them: what it found drifted and what failed.
fn repair_pass(rt: &tokio::runtime::Runtime, env: &mut Env) -> (Vec<String>, Vec<String>) {
    let stats = rt.block_on(env.net().heal()).expect("repair pass");
    (stats.drift, stats.errors)
}

/// Repair passes every `every` until `done()` holds (at most `limit`); returns the time taken
/// and the passes made.
fn repair_until(
    rt: &tokio::runtime::Runtime,
    env: &mut Env,
    every: Duration,
    limit: Duration,
    mut done: impl FnMut(&Env) -> bool,
) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut passes = 0;
    loop {
        let (drift, errors) = repair_pass(rt, env);
        passes += 1;
        if !drift.is_empty() || !errors.is_empty() {
            eprintln!("pass {passes}: drift {drift:?} errors {errors:?}");
        }
        if done(env) {
            return (t0.elapsed(), passes);
        }
        assert!(
            t0.elapsed() < limit,
            "not repaired within {limit:?} ({passes} passes)"
        );
        std::thread::sleep(every);
    }
}

fn dnsmasq_pid(env: &Env) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(env.state_dir.path().join("dhcp/tenant/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (!cmdline.is_empty()).then_some(pid)
}

fn is_netns(name: &str) -> bool {
    // A live namespace mount shows as nsfs; the file a lost mount leaves is an empty regular file.
    let out = run(&["stat", "-f", "-c", "%T", &format!("/run/netns/{name}")]);
    String::from_utf8_lossy(&out.stdout).trim() == "nsfs"
}

fn link_of(host: &str, dev: &str) -> String {
    String::from_utf8_lossy(&run(&["ip", "-d", "-n", host, "link", "show", dev]).stdout)
        .into_owned()
}

/// The metadata listener answers in `vm`'s network (any HTTP answer: the test has no controller).
fn metadata_answers(vm: &str) -> bool {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        vm,
        "busybox",
        "timeout",
        "3",
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://169.254.169.254/openstack",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    out.status.success() || err.contains("server returned error")
}

const MAC4: &str = "fa:16:3e:00:00:14";

/// The data plane repairs what others broke (a namespace whose mount is gone, a killed dnsmasq,
/// deleted links, a flushed ruleset, reset sysctls) within a bounded time, without flooding the
/// log, and backs off on what it cannot repair.
#[test]
fn heals_host_drift() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the drift test: {why}");
        return;
    }
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let warnings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    use tracing_subscriber::layer::SubscriberExt;
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(CountWarnings(warnings.clone()))
            .with(tracing_subscriber::fmt::layer().with_test_writer()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut env = Env::new();
    let mut state = scenario_state(&env.prefix);
    // vm4's port is a real TAP the data plane makes (no VM on it).
    state.ports.push(vm_port(
        "vm4port",
        "tapvm4",
        MAC4,
        "198.18.1.14",
        &["default"],
    ));
    state.security_groups[0]
        .member_ips
        .push("198.18.1.14".into());
    let host = env.host.clone();
    let dhcp_ns = format!("{}-dhcp", env.prefix);
    let router_ns = format!("{}-r", env.prefix);
    let vm1 = env.vm("vm1", "tapvm1", MAC1, Some("198.18.1.11/24"));
    let _vm2 = env.vm("vm2", "tapvm2", MAC2, Some("198.18.1.12/24"));
    let vm3 = env.vm("vm3", "tapvm3", MAC3, Some("198.18.1.13/24"));
    ok(&[
        "ip",
        "-n",
        &vm3,
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        "198.18.1.2",
    ]);
    applied(&rt.block_on(env.net().apply(&state)).expect("first apply"));
    let ctl = std::sync::Arc::new(onestack_agent::client::Controller::new(
        "http://127.0.0.1:9",
        "token",
    ));
    let mut proxies = onestack_agent::metadata::MetadataProxies::new(ctl);
    assert!(rt.block_on(proxies.sync(&state.dhcp)));
    assert!(metadata_answers(&vm3), "no metadata listener at first");
    let first_dnsmasq = dnsmasq_pid(&env).expect("dnsmasq runs");
    assert!(ping(&vm1, "198.18.1.12", None), "vm1 -> vm2");
    assert!(
        !ping(&vm1, "198.18.1.13", None),
        "vm3's group lets no one in"
    );
    let every = Duration::from_millis(100);
    let limit = Duration::from_secs(10);
    let mut times: Vec<(&str, Duration)> = Vec::new();

    // 0. Nothing drifted: the self-check finds nothing and changes nothing (what it costs
    //    every few seconds on a healthy host).
    let mut checks: Vec<Duration> = (0..5)
        .map(|_| {
            let stats = rt.block_on(env.net().heal()).expect("clean heal");
            assert!(
                stats.drift.is_empty(),
                "drift on a clean host: {:?}",
                stats.drift
            );
            assert!(stats.errors.is_empty(), "{:?}", stats.errors);
            assert_eq!(stats.nft_lines, 0, "a clean heal touched nft");
            stats.check_elapsed
        })
        .collect();
    checks.sort();
    println!(
        "self-check of a clean host (3 VM ports + 1 TAP, DHCP, router): median {} ms",
        checks[2].as_millis()
    );
    assert_eq!(
        dnsmasq_pid(&env),
        Some(first_dnsmasq),
        "a clean heal restarted dnsmasq"
    );

    // 1. The DHCP namespace's mount is lost (an empty file stays under /run/netns, as a crash
    //    or a mount namespace that ended leaves it): recreated, with its dnsmasq and metadata
    //    listener, in a few passes and a few log lines, not a retry per millisecond.
    let pid = dnsmasq_pid(&env).expect("dnsmasq runs");
    ok(&["umount", &format!("/run/netns/{dhcp_ns}")]);
    assert!(!is_netns(&dhcp_ns));
    let before = warnings.load(Ordering::SeqCst);
    let (t, passes) = repair_until(&rt, &mut env, Duration::from_millis(10), limit, |e| {
        is_netns(&dhcp_ns) && dnsmasq_pid(e).is_some_and(|p| p != pid)
    });
    assert!(rt.block_on(proxies.sync(&state.dhcp)));
    let logged = warnings.load(Ordering::SeqCst) - before;
    eprintln!("lost namespace mount: repaired in {t:?} ({passes} passes, {logged} warnings)");
    assert!(logged <= 10, "{logged} warnings for one lost namespace");
    times.push(("namespace mount lost (DHCP)", t));
    let lease = dhcp_client(&vm3, env.state_dir.path());
    assert_eq!(env_var(&lease, "ip"), Some("198.18.1.13"), "{lease}");
    assert!(metadata_answers(&vm3), "metadata listener not back");

    // 2. dnsmasq is killed: started again, and a VM gets a lease.
    let pid = dnsmasq_pid(&env).expect("dnsmasq runs");
    ok(&["kill", "-9", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dnsmasq_pid(&env) == Some(pid) {
        assert!(Instant::now() < deadline, "dnsmasq did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (t, _) = repair_until(&rt, &mut env, every, limit, |e| dnsmasq_pid(e).is_some());
    times.push(("dnsmasq killed", t));
    let lease = dhcp_client(&vm3, env.state_dir.path());
    assert_eq!(env_var(&lease, "ip"), Some("198.18.1.13"), "{lease}");

    // 3. Links deleted by an admin: the bridge (every port falls out of it), a VM's TAP, the
    //    DHCP server's veth and the router's.
    ok(&["ip", "-n", &host, "link", "del", "brqtenant"]);
    let (t, _) = repair_until(&rt, &mut env, every, limit, |_| {
        link_of(&host, "tapvm1").contains("master brqtenant")
            && link_of(&host, "tapdhcp").contains("master brqtenant")
            && link_of(&host, "tapqr").contains("master brqtenant")
    });
    times.push(("bridge deleted", t));
    assert!(
        ping(&vm1, "198.18.1.12", None),
        "vm1 -> vm2 after the bridge came back"
    );
    ok(&["ip", "-n", &host, "link", "del", "tapvm4"]);
    let (t, _) = repair_until(&rt, &mut env, every, limit, |_| {
        let l = link_of(&host, "tapvm4");
        l.contains("tap") && l.contains("master brqtenant")
    });
    times.push(("VM TAP deleted", t));
    ok(&["ip", "-n", &host, "link", "del", "tapdhcp"]);
    ok(&["ip", "-n", &host, "link", "del", "tapqr"]);
    let (t, _) = repair_until(&rt, &mut env, every, limit, |_| {
        link_of(&host, "tapdhcp").contains("master brqtenant")
            && link_of(&host, "tapqr").contains("master brqtenant")
    });
    times.push(("DHCP and router veths deleted", t));
    let lease = dhcp_client(&vm3, env.state_dir.path());
    assert_eq!(env_var(&lease, "ip"), Some("198.18.1.13"), "{lease}");
    assert!(
        ping(&vm1, "198.18.64.1", None),
        "vm1 -> external after the router's veth"
    );
    assert!(
        metadata_answers(&vm3),
        "metadata after the DHCP veth came back"
    );

    // 4. `nft flush ruleset` on the host: security groups are enforced again.
    ok(&["ip", "netns", "exec", &host, "nft", "flush", "ruleset"]);
    assert!(env.nft_list("inet").is_empty());
    assert!(ping(&vm1, "198.18.1.13", None), "no rules, no filtering");
    let (t, _) = repair_until(&rt, &mut env, every, limit, |e| {
        e.nft_list("inet").contains("pi-tapvm3") && e.nft_list("bridge").contains("ps-tapvm1")
    });
    times.push(("nft flush ruleset", t));
    assert!(
        !ping(&vm1, "198.18.1.13", None),
        "vm3's group is enforced again"
    );
    assert!(
        ping(&vm1, "198.18.1.12", None),
        "vm1 -> vm2 with the rules back"
    );

    // 5. Sysctls reset: bridge netfilter on the host, forwarding in the router.
    let sysctl = |ns: &str, key: &str| {
        ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/proc/sys/{key}"),
        ])
        .trim()
        .to_owned()
    };
    let set = |ns: &str, key: &str, v: &str| {
        ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("echo {v} > /proc/sys/{key}"),
        ]);
    };
    set(&host, "net/bridge/bridge-nf-call-iptables", "0");
    set(&router_ns, "net/ipv4/ip_forward", "0");
    let (t, _) = repair_until(&rt, &mut env, every, limit, |_| {
        sysctl(&host, "net/bridge/bridge-nf-call-iptables") == "1"
            && sysctl(&router_ns, "net/ipv4/ip_forward") == "1"
    });
    times.push(("sysctls reset", t));
    assert!(
        !ping(&vm1, "198.18.1.13", None),
        "bridged traffic filtered again"
    );
    assert!(ping(&vm1, "198.18.64.1", None), "the router forwards again");

    // 6. The router's namespace deleted outright.
    ok(&["ip", "netns", "del", &router_ns]);
    let (t, _) = repair_until(&rt, &mut env, every, limit, |_| is_netns(&router_ns));
    times.push(("router namespace deleted", t));
    assert!(
        ping(&vm1, "198.18.64.1", None),
        "vm1 -> external through the new router"
    );

    // 7. What cannot be repaired is retried with a backoff, and logged once, not per attempt:
    //    a device that is not a bridge took the bridge's name. Passes every 10 ms for 3 s (what
    //    a loop without backoff would make) try the network at 0, 1 and 3 s.
    ok(&["ip", "-n", &host, "link", "del", "brqtenant"]);
    ok(&[
        "ip",
        "-n",
        &host,
        "link",
        "add",
        "brqtenant",
        "type",
        "veth",
        "peer",
        "name",
        "squatter",
    ]);
    let before = warnings.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let (mut passes, mut attempts) = (0, 0);
    while t0.elapsed() < Duration::from_secs(3) {
        let (_, errors) = repair_pass(&rt, &mut env);
        passes += 1;
        attempts += errors
            .iter()
            .filter(|e| e.starts_with("network:tenant:"))
            .count();
        std::thread::sleep(Duration::from_millis(10));
    }
    let logged = warnings.load(Ordering::SeqCst) - before;
    eprintln!("unrepairable: {passes} passes, {attempts} attempts, {logged} warnings");
    assert!(passes > 100, "{passes}");
    assert!((2..=3).contains(&attempts), "{attempts} attempts in 3 s");
    // One drift and one failure line per object (the network, 4 ports, DHCP, router), once.
    assert!(logged <= 14, "{logged} warnings");
    // The name is free again: the bridge is back within the backoff (4 s at this point).
    ok(&["ip", "-n", &host, "link", "del", "brqtenant"]);
    let (t, _) = repair_until(&rt, &mut env, every, limit, |_| {
        link_of(&host, "tapvm1").contains("master brqtenant")
    });
    eprintln!("bridge back {t:?} after the name was freed");
    assert!(
        ping(&vm1, "198.18.1.12", None),
        "vm1 -> vm2 once the bridge is back"
    );

    for (what, t) in &times {
        println!("drift repaired: {what}: {} ms", t.as_millis());
    }
    proxies.stop_all();
}
