//! What one host must build (`proto::NetworkState`), computed from the records; and the lookup
//! the metadata service makes (which instance is asking, by network and source address).

use super::model::*;
use super::proto::{self, *};
use super::*;
use std::collections::{BTreeSet, HashMap};

/// Everything, read once.
struct Snapshot {
    networks: Vec<Network>,
    subnets: Vec<Subnet>,
    ports: Vec<Port>,
    routers: Vec<Router>,
    fips: Vec<FloatingIp>,
    groups: Vec<SecurityGroup>,
    rules: Vec<SecurityGroupRule>,
}

fn cidr_of(subnets: &[Subnet], subnet_id: &str) -> Option<(String, u8)> {
    let s = subnets.iter().find(|s| s.id == subnet_id)?;
    let net = ipam::parse_cidr(&s.cidr).ok()?;
    Some((s.cidr.clone(), net.prefix_len()))
}

fn host_subnet(s: &Subnet) -> HostSubnet {
    HostSubnet {
        id: s.id.clone(),
        cidr: s.cidr.clone(),
        gateway_ip: s.gateway_ip.clone(),
        enable_dhcp: s.enable_dhcp,
        dns_nameservers: s.dns_nameservers.clone(),
        host_routes: s
            .host_routes
            .iter()
            .map(|r| HostRoute {
                destination: r.destination.clone(),
                nexthop: r.nexthop.clone(),
            })
            .collect(),
    }
}

fn address(subnets: &[Subnet], f: &FixedIp) -> Option<String> {
    cidr_of(subnets, &f.subnet_id).map(|(_, len)| format!("{}/{len}", f.ip_address))
}

impl NetworkService {
    async fn snapshot(&self) -> CoreResult<Snapshot> {
        async fn vals<T: serde::de::DeserializeOwned>(
            s: &NetworkService,
            kind: &str,
        ) -> CoreResult<Vec<T>> {
            Ok(s.all::<T>(NetFilter::of(kind))
                .await?
                .into_iter()
                .map(|r| r.val)
                .collect())
        }
        Ok(Snapshot {
            networks: vals(self, NETWORK).await?,
            subnets: vals(self, SUBNET).await?,
            ports: vals(self, PORT).await?,
            routers: vals(self, ROUTER).await?,
            fips: vals(self, FLOATINGIP).await?,
            groups: vals(self, SECURITY_GROUP).await?,
            rules: vals(self, SECURITY_GROUP_RULE).await?,
        })
    }

    /// The desired networking of `host`. The network node also runs DHCP, metadata and routers
    /// for every network.
    pub async fn host_state(&self, host: &str, network_node: bool) -> CoreResult<NetworkState> {
        let generation = self.store.net_generation().await.map_err(internal)?;
        let s = self.snapshot().await?;
        let prefix = &self.cfg.namespace_prefix;
        let vm_ports: Vec<&Port> = s
            .ports
            .iter()
            .filter(|p| {
                p.is_server_nic(&p.device_id)
                    && !host.is_empty()
                    && (p.host == host || p.migrating_to == host)
            })
            .collect();
        let mut net_ids: BTreeSet<&str> = vm_ports.iter().map(|p| p.network_id.as_str()).collect();
        if network_node {
            net_ids.extend(s.networks.iter().map(|n| n.id.as_str()));
        }
        let tunnel_ends = self.tunnel_ends(host).await?;
        let networks: Vec<HostNetwork> = s
            .networks
            .iter()
            .filter(|n| net_ids.contains(n.id.as_str()))
            .map(|n| {
                let subnets: Vec<HostSubnet> = s
                    .subnets
                    .iter()
                    .filter(|x| x.network_id == n.id)
                    .map(host_subnet)
                    .collect();
                // The host joins an external network at its first subnet's gateway address.
                let host_address = if n.external && network_node {
                    s.subnets
                        .iter()
                        .find(|x| x.network_id == n.id && x.gateway_ip.is_some())
                        .and_then(|x| {
                            let len = ipam::parse_cidr(&x.cidr).ok()?.prefix_len();
                            Some(format!("{}/{len}", x.gateway_ip.as_deref()?))
                        })
                } else {
                    None
                };
                HostNetwork {
                    id: n.id.clone(),
                    bridge: proto::bridge_name(&n.id),
                    mtu: n.mtu,
                    external: n.external,
                    zone: n.zone,
                    host_address,
                    subnets,
                    tunnel: match (&tunnel_ends, n.external) {
                        (Some((local, peers)), false) => Some(Tunnel {
                            device: proto::vxlan_device(n.vni()),
                            vni: n.vni(),
                            local_ip: local.clone(),
                            peers: peers.clone(),
                        }),
                        _ => None,
                    },
                }
            })
            .collect();

        let host_port = |p: &Port, kind: PortKind| HostPort {
            id: p.id.clone(),
            network_id: p.network_id.clone(),
            kind,
            device: proto::tap_name(&p.id),
            mac: p.mac_address.clone(),
            ips: p.ipv4s().map(str::to_string).collect(),
            admin_state_up: p.admin_state_up,
            port_security: p.port_security_enabled,
            security_groups: p.security_groups.clone(),
            allowed_address_pairs: p
                .allowed_address_pairs
                .iter()
                .map(|a| proto::AddressPair {
                    ip_address: a.ip_address.clone(),
                    mac_address: a.mac_address.clone(),
                })
                .collect(),
        };
        let mut ports: Vec<HostPort> = vm_ports
            .iter()
            .map(|p| host_port(p, PortKind::Vm))
            .collect();

        // Groups used here, plus the groups their rules name as remote.
        let mut group_ids: BTreeSet<String> = vm_ports
            .iter()
            .flat_map(|p| p.security_groups.iter().cloned())
            .collect();
        let remote: Vec<String> = s
            .rules
            .iter()
            .filter(|r| group_ids.contains(&r.security_group_id))
            .filter_map(|r| r.remote_group_id.clone())
            .collect();
        group_ids.extend(remote);
        let mut members: HashMap<&str, Vec<String>> = HashMap::new();
        for p in s.ports.iter().filter(|p| p.port_security_enabled) {
            for g in &p.security_groups {
                members
                    .entry(g.as_str())
                    .or_default()
                    .extend(p.ipv4s().map(str::to_string));
            }
        }
        let security_groups = s
            .groups
            .iter()
            .filter(|g| group_ids.contains(&g.id))
            .map(|g| HostSecurityGroup {
                id: g.id.clone(),
                member_ips: members.get(g.id.as_str()).cloned().unwrap_or_default(),
                rules: s
                    .rules
                    .iter()
                    .filter(|r| r.security_group_id == g.id)
                    .map(|r| HostRule {
                        id: r.id.clone(),
                        direction: if r.direction == "ingress" {
                            Direction::Ingress
                        } else {
                            Direction::Egress
                        },
                        ethertype: r.ethertype.clone(),
                        protocol: protocol_number(r.protocol.as_deref()),
                        port_range_min: r.port_range_min,
                        port_range_max: r.port_range_max,
                        remote_ip_prefix: r.remote_ip_prefix.clone(),
                        remote_group_id: r.remote_group_id.clone(),
                    })
                    .collect(),
            })
            .collect();

        let mut dhcp = Vec::new();
        let mut routers = Vec::new();
        if network_node {
            for p in s.ports.iter().filter(|p| p.is_dhcp_server()) {
                let Some(n) = s.networks.iter().find(|n| n.id == p.network_id) else {
                    continue;
                };
                ports.push(host_port(p, PortKind::Dhcp));
                let dhcp_subnets: Vec<&Subnet> = s
                    .subnets
                    .iter()
                    .filter(|x| x.network_id == n.id && x.enable_dhcp)
                    .collect();
                let hosts = s
                    .ports
                    .iter()
                    .filter(|vp| vp.network_id == n.id && vp.device_owner.starts_with("compute:"))
                    .flat_map(|vp| {
                        vp.fixed_ips
                            .iter()
                            .filter(|f| dhcp_subnets.iter().any(|d| d.id == f.subnet_id))
                            .map(|f| DhcpHost {
                                mac: vp.mac_address.clone(),
                                ip: f.ip_address.clone(),
                                hostname: format!("host-{}", f.ip_address.replace('.', "-")),
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                dhcp.push(DhcpServer {
                    network_id: n.id.clone(),
                    namespace: format!("{prefix}qdhcp-{}", n.id),
                    port_id: p.id.clone(),
                    device: proto::tap_name(&p.id),
                    mac: p.mac_address.clone(),
                    addresses: p
                        .fixed_ips
                        .iter()
                        .filter_map(|f| address(&s.subnets, f))
                        .collect(),
                    mtu: n.mtu,
                    subnets: dhcp_subnets.into_iter().map(host_subnet).collect(),
                    hosts,
                });
            }
            for r in &s.routers {
                let gateway = r.gateway.as_ref().and_then(|g| {
                    let p = s.ports.iter().find(|p| p.id == g.port_id)?;
                    let f = p.fixed_ips.first()?;
                    let default_gateway = s
                        .subnets
                        .iter()
                        .find(|x| x.id == f.subnet_id)
                        .and_then(|x| x.gateway_ip.clone());
                    Some(RouterGateway {
                        port_id: p.id.clone(),
                        network_id: p.network_id.clone(),
                        host_device: proto::tap_name(&p.id),
                        device: proto::router_gateway_device(&p.id),
                        mac: p.mac_address.clone(),
                        address: address(&s.subnets, f)?,
                        default_gateway,
                        enable_snat: g.enable_snat,
                    })
                });
                if let Some(g) = r
                    .gateway
                    .as_ref()
                    .and_then(|g| s.ports.iter().find(|p| p.id == g.port_id))
                {
                    ports.push(host_port(g, PortKind::Router));
                }
                let mut interfaces = Vec::new();
                for p in s.ports.iter().filter(|p| p.is_router_interface(&r.id)) {
                    ports.push(host_port(p, PortKind::Router));
                    let mtu = s
                        .networks
                        .iter()
                        .find(|n| n.id == p.network_id)
                        .map(|n| n.mtu)
                        .unwrap_or(self.cfg.mtu);
                    for f in &p.fixed_ips {
                        if let Some(addr) = address(&s.subnets, f) {
                            interfaces.push(RouterInterface {
                                port_id: p.id.clone(),
                                network_id: p.network_id.clone(),
                                host_device: proto::tap_name(&p.id),
                                device: proto::router_interface_device(&p.id),
                                mac: p.mac_address.clone(),
                                address: addr,
                                mtu,
                            });
                        }
                    }
                }
                let floating_ips = s
                    .fips
                    .iter()
                    .filter(|f| f.router_id.as_deref() == Some(&r.id))
                    .filter_map(|f| {
                        Some(FloatingNat {
                            floating_ip: f.floating_ip_address.clone(),
                            fixed_ip: f.fixed_ip_address.clone()?,
                        })
                    })
                    .collect();
                routers.push(HostRouter {
                    id: r.id.clone(),
                    namespace: format!("{prefix}qrouter-{}", r.id),
                    gateway,
                    interfaces,
                    floating_ips,
                });
            }
        }
        Ok(NetworkState {
            generation,
            networks,
            ports,
            security_groups,
            dhcp,
            routers,
        })
    }

    /// This host's tunnel address and its peers', from the compute host records; None while it
    /// has no peer (a single host needs no tunnel) or no address others can reach.
    async fn tunnel_ends(&self, host: &str) -> CoreResult<Option<(String, Vec<String>)>> {
        let hosts = self.store.list_hosts().await.map_err(internal)?;
        let usable = |ip: &str| {
            ip.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| !a.is_loopback() && !a.is_unspecified())
        };
        let Some(me) = hosts.iter().find(|h| h.host == host && usable(&h.host_ip)) else {
            return Ok(None);
        };
        let peers: BTreeSet<String> = hosts
            .iter()
            .filter(|h| h.host != host && usable(&h.host_ip) && h.host_ip != me.host_ip)
            .map(|h| h.host_ip.clone())
            .collect();
        if peers.is_empty() {
            return Ok(None);
        }
        Ok(Some((me.host_ip.clone(), peers.into_iter().collect())))
    }

    /// Wakes the agents after the set of hosts changed (their tunnels follow it).
    pub async fn hosts_changed(&self) -> CoreResult<()> {
        self.write("hosts changed", |tx| async move { self.commit(tx).await })
            .await
    }

    /// The server behind a metadata request: the NIC compute attached to a server on
    /// `network_id` holding `source_ip` (anti-spoofing guarantees a guest can send only from its
    /// own addresses; a port a user merely labelled with a server's id is no server's).
    pub async fn port_by_address(
        &self,
        network_id: &str,
        source_ip: &str,
    ) -> CoreResult<Option<Port>> {
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT).network(network_id)).await?;
        Ok(ports
            .into_iter()
            .map(|p| p.val)
            .find(|p| p.is_server_nic(&p.device_id) && p.ipv4s().any(|ip| ip == source_ip)))
    }

    /// Public IPv4 (a floating IP) of a port, for the EC2 `public-ipv4` key.
    pub async fn floating_ip_of(&self, port_id: &str) -> CoreResult<Option<String>> {
        let fips: Vec<Rec<FloatingIp>> = self.all(NetFilter::of(FLOATINGIP)).await?;
        Ok(fips
            .into_iter()
            .find(|f| f.val.port_id.as_deref() == Some(port_id))
            .map(|f| f.val.floating_ip_address))
    }

    /// The subnets of a network (network_data.json, DNS servers).
    pub async fn subnets_of(&self, network_id: &str) -> CoreResult<Vec<Subnet>> {
        Ok(self
            .all::<Subnet>(NetFilter::of(SUBNET).network(network_id))
            .await?
            .into_iter()
            .map(|r| r.val)
            .collect())
    }

    pub async fn network(&self, id: &str) -> CoreResult<Network> {
        Ok(self.get_rec::<Network>(NETWORK, id).await?.val)
    }
}
