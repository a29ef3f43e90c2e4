//! Subnets, and the DHCP port each network with a DHCP-enabled subnet gets (Neutron's DHCP agent
//! creates it; here the subnet write does, in the same transaction).

use super::fields::{self, Fields};
use super::ipam;
use super::model::*;
use super::*;
use std::collections::HashSet;
use std::net::Ipv4Addr;

const SUBNET_FIELDS: &[&str] = &[
    "name",
    "description",
    "network_id",
    "ip_version",
    "cidr",
    "gateway_ip",
    "enable_dhcp",
    "allocation_pools",
    "dns_nameservers",
    "host_routes",
    "project_id",
    "tenant_id",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "subnetpool_id",
    "service_types",
    "segment_id",
    "use_default_subnetpool",
    "prefixlen",
    "dns_publish_fixed_ip",
];

fn parse_pools(f: &Fields) -> CoreResult<Option<Vec<AllocationPool>>> {
    let Some(items) = f.list("allocation_pools")? else {
        return Ok(None);
    };
    fields::objects("allocation_pools", items, &["start", "end"])?
        .iter()
        .map(|p| {
            Ok(AllocationPool {
                start: p.string("start", 64)?.ok_or_else(|| {
                    fields::bad("Invalid input for allocation_pools. Reason: missing start.")
                })?,
                end: p.string("end", 64)?.ok_or_else(|| {
                    fields::bad("Invalid input for allocation_pools. Reason: missing end.")
                })?,
            })
        })
        .collect::<CoreResult<Vec<_>>>()
        .map(Some)
}

fn parse_routes(f: &Fields, max: usize) -> CoreResult<Option<Vec<Route>>> {
    let Some(items) = f.list("host_routes")? else {
        return Ok(None);
    };
    if items.len() > max {
        return Err(fields::bad(format!(
            "Unable to complete operation for subnet. The number of host routes exceeds the limit {max}."
        )));
    }
    let mut out = Vec::new();
    for r in fields::objects("host_routes", items, &["destination", "nexthop"])? {
        let destination = r.string("destination", 64)?.unwrap_or_default();
        let nexthop = r.string("nexthop", 64)?.unwrap_or_default();
        let dest: ipnet::Ipv4Net = destination.parse().map_err(|_| {
            fields::bad(format!(
                "Invalid input for host_routes. Reason: '{destination}' is not a valid IPv4 CIDR."
            ))
        })?;
        ipam::parse_ip(&nexthop)
            .map_err(|m| fields::bad(format!("Invalid input for host_routes. Reason: {m}.")))?;
        out.push(Route {
            destination: dest.trunc().to_string(),
            nexthop,
        });
    }
    Ok(Some(out))
}

fn parse_dns(f: &Fields, max: usize) -> CoreResult<Option<Vec<String>>> {
    let Some(list) = f.string_list("dns_nameservers")? else {
        return Ok(None);
    };
    if list.len() > max {
        return Err(fields::bad(format!(
            "Unable to complete operation for subnet. The number of DNS nameservers exceeds the limit {max}."
        )));
    }
    let mut seen = HashSet::new();
    for d in &list {
        ipam::parse_ip(d)
            .map_err(|m| fields::bad(format!("Invalid input for dns_nameservers. Reason: {m}.")))?;
        if !seen.insert(d.clone()) {
            return Err(fields::bad(format!(
                "Invalid input for dns_nameservers. Reason: Duplicate nameserver '{d}'."
            )));
        }
    }
    Ok(Some(list))
}

impl NetworkService {
    pub async fn create_subnet(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_subnet")?;
        let f = Fields::new(body, SUBNET_FIELDS)?;
        let network_id = f.string("network_id", 64)?.ok_or_else(|| {
            fields::bad("Failed to parse request. Required attribute 'network_id' not specified")
        })?;
        match f.integer("ip_version", 4, 6)? {
            Some(4) | None => {}
            Some(6) => {
                return Err(fields::bad(
                    "Invalid input for operation: IPv6 subnets are not supported by this cloud.",
                ))
            }
            Some(v) => {
                return Err(fields::bad(format!(
                    "Invalid input for ip_version. Reason: {v} is not in [4, 6]."
                )))
            }
        }
        if f.raw("subnetpool_id").is_some_and(|v| !v.is_null())
            || f.boolean("use_default_subnetpool")? == Some(true)
        {
            return Err(fields::bad("Subnet pools are not supported; give a cidr."));
        }
        let cidr_s = f.string("cidr", 64)?.ok_or_else(|| {
            fields::bad(
                "Bad subnets request: a cidr must be specified in the absence of a subnet pool.",
            )
        })?;
        let net = ipam::parse_cidr(&cidr_s).map_err(fields::bad)?;
        ipam::check_tenant_cidr(net).map_err(fields::bad)?;
        let gateway = match f.nullable_string("gateway_ip", 64)? {
            None => Some(ipam::default_gateway(net)),
            Some(None) => None,
            Some(Some(g)) => {
                let ip = ipam::parse_ip(&g).map_err(fields::bad)?;
                if !ipam::is_host_address(net, ip) {
                    return Err(fields::bad(format!(
                        "Invalid input for operation: Gateway IP {g} is not a host address of subnet {net}."
                    )));
                }
                Some(ip)
            }
        };
        let pools = match parse_pools(&f)? {
            Some(p) => ipam::validate_pools(net, gateway, &p).map_err(fields::bad)?,
            None => ipam::default_pools(net, gateway),
        };
        let (f, network_id, pools) = (&f, &network_id, &pools);
        let id = self.write("create subnet", |mut tx| async move {
            let network = self.visible_network(&mut tx, ctx, network_id).await?;
            if !owns(ctx, &network.val.project_id) {
                return Err(forbidden("create_subnet"));
            }
            let project_id = owner_for_create(ctx, f)?;
            self.check_quota(&mut tx, SUBNET, &project_id, 1).await?;
            let siblings: Vec<Rec<Subnet>> =
                Self::all_tx(&mut tx, NetFilter::of(SUBNET).network(network_id)).await?;
            for s in &siblings {
                if let Ok(other) = ipam::parse_cidr(&s.val.cidr) {
                    if ipam::overlaps(net, other) {
                        return Err(fields::bad(format!(
                            "Invalid input for operation: Requested subnet with cidr: {net} for network: {network_id} overlaps with another subnet."
                        )));
                    }
                }
            }
            let id = uuid::Uuid::new_v4().to_string();
            let s = Subnet {
                id: id.clone(),
                name: f.string("name", 255)?.unwrap_or_default(),
                description: f.string("description", 255)?.unwrap_or_default(),
                project_id: project_id.clone(),
                network_id: network_id.clone(),
                ip_version: 4,
                cidr: net.to_string(),
                gateway_ip: gateway.map(|g| g.to_string()),
                enable_dhcp: f.boolean("enable_dhcp")?.unwrap_or(true),
                allocation_pools: pools.clone(),
                dns_nameservers: parse_dns(f, self.cfg.max_dns_nameservers)?.unwrap_or_default(),
                host_routes: parse_routes(f, self.cfg.max_subnet_host_routes)?.unwrap_or_default(),
            };
            tx.insert(&new_row(
                SUBNET,
                &id,
                &project_id,
                Some(network_id),
                None,
                &s.name,
                &s,
            )?)
            .await
            .map_err(store_err)?;
            self.sync_dhcp_port(&mut tx, &network.val).await?;
            self.commit(tx).await?;
            Ok(id)
        })
        .await?;
        self.show_subnet(ctx, &id).await
    }

    pub(crate) fn can_see_subnet(ctx: &AuthContext, s: &Subnet, net: Option<&Network>) -> bool {
        owns(ctx, &s.project_id) || net.is_some_and(|n| Self::can_see_network(ctx, n))
    }

    pub async fn show_subnet(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let s: Rec<Subnet> = self.get_rec(SUBNET, id).await?;
        let n: Option<Rec<Network>> = self.get_rec(NETWORK, &s.val.network_id).await.ok();
        if !Self::can_see_subnet(ctx, &s.val, n.as_ref().map(|n| &n.val)) {
            return Err(not_found(SUBNET, id));
        }
        Ok(subnet_view(&s))
    }

    pub async fn list_subnets(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        let nets: Vec<Rec<Network>> = self.all(NetFilter::of(NETWORK)).await?;
        let subnets: Vec<Rec<Subnet>> = self.all(NetFilter::of(SUBNET)).await?;
        Ok(subnets
            .iter()
            .filter(|s| {
                let n = nets.iter().find(|n| n.val.id == s.val.network_id);
                Self::can_see_subnet(ctx, &s.val, n.map(|n| &n.val))
            })
            .map(subnet_view)
            .collect())
    }

    pub async fn update_subnet(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "update_subnet")?;
        let f = Fields::new(
            body,
            &[
                "name",
                "description",
                "gateway_ip",
                "enable_dhcp",
                "allocation_pools",
                "dns_nameservers",
                "host_routes",
                "service_types",
                "dns_publish_fixed_ip",
            ],
        )?;
        let f = &f;
        self.write("update subnet", |mut tx| async move {
            let mut s: Rec<Subnet> = self.fetch(&mut tx, SUBNET, id).await?;
            if !owns(ctx, &s.val.project_id) {
                return Err(not_found(SUBNET, id));
            }
            let net = ipam::parse_cidr(&s.val.cidr).map_err(internal)?;
            if let Some(v) = f.string("name", 255)? {
                s.val.name = v;
            }
            if let Some(v) = f.string("description", 255)? {
                s.val.description = v;
            }
            if let Some(v) = f.boolean("enable_dhcp")? {
                s.val.enable_dhcp = v;
            }
            if let Some(v) = parse_dns(f, self.cfg.max_dns_nameservers)? {
                s.val.dns_nameservers = v;
            }
            if let Some(v) = parse_routes(f, self.cfg.max_subnet_host_routes)? {
                s.val.host_routes = v;
            }
            if let Some(g) = f.nullable_string("gateway_ip", 64)? {
                let gw = match g {
                    None => None,
                    Some(g) => {
                        let ip = ipam::parse_ip(&g).map_err(fields::bad)?;
                        if !ipam::is_host_address(net, ip)
                            || ipam::in_pools(&s.val.allocation_pools, ip)
                        {
                            return Err(fields::bad(format!(
                                "Invalid input for operation: Gateway ip {g} conflicts with allocation pool or is outside the subnet."
                            )));
                        }
                        Some(ip)
                    }
                };
                s.val.gateway_ip = gw.map(|g| g.to_string());
            }
            if let Some(p) = parse_pools(f)? {
                let gw = s
                    .val
                    .gateway_ip
                    .as_deref()
                    .and_then(|g| g.parse::<Ipv4Addr>().ok());
                s.val.allocation_pools = ipam::validate_pools(net, gw, &p).map_err(fields::bad)?;
            }
            let row = updated_row(&s.row, &s.val, &s.val.name, None)?;
            tx.update(&row).await.map_err(store_err)?;
            let network: Rec<Network> = self.fetch(&mut tx, NETWORK, &s.val.network_id).await?;
            self.sync_dhcp_port(&mut tx, &network.val).await?;
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.show_subnet(ctx, id).await
    }

    pub async fn delete_subnet(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_subnet")?;
        self.write("delete subnet", |mut tx| async move {
            let s: Rec<Subnet> = self.fetch(&mut tx, SUBNET, id).await?;
            let network: Rec<Network> = self.fetch(&mut tx, NETWORK, &s.val.network_id).await?;
            if !owns(ctx, &s.val.project_id) {
                return Err(if Self::can_see_network(ctx, &network.val) {
                    forbidden("delete_subnet")
                } else {
                    not_found(SUBNET, id)
                });
            }
            let ports: Vec<Rec<Port>> =
                Self::all_tx(&mut tx, NetFilter::of(PORT).network(&s.val.network_id)).await?;
            if ports.iter().any(|p| {
                !p.val.is_dhcp_server() && p.val.fixed_ips.iter().any(|f| f.subnet_id == id)
            }) {
                return Err(typed(
                    409,
                    "SubnetInUse",
                    format!(
                        "Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."
                    ),
                ));
            }
            tx.delete(id).await.map_err(internal)?;
            self.sync_dhcp_port(&mut tx, &network.val).await?;
            self.commit(tx).await
        })
        .await
    }

    /// Keeps the network's DHCP port in step with its DHCP-enabled subnets: one address in each,
    /// created when the first appears, deleted with the last.
    pub(crate) async fn sync_dhcp_port(&self, tx: &mut NetTx, network: &Network) -> CoreResult<()> {
        let subnets: Vec<Rec<Subnet>> =
            Self::all_tx(tx, NetFilter::of(SUBNET).network(&network.id)).await?;
        let dhcp_subnets: Vec<&Subnet> = subnets
            .iter()
            .map(|s| &s.val)
            .filter(|s| s.enable_dhcp)
            .collect();
        let ports: Vec<Rec<Port>> =
            Self::all_tx(tx, NetFilter::of(PORT).network(&network.id)).await?;
        let existing = ports.into_iter().find(|p| p.val.is_dhcp_server());
        if dhcp_subnets.is_empty() {
            if let Some(p) = existing {
                tx.delete(&p.val.id).await.map_err(internal)?;
            }
            return Ok(());
        }
        let mut port = match existing {
            Some(p) => p,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let device_id = dhcp_device(&network.id);
                let p = Port {
                    id: id.clone(),
                    name: String::new(),
                    description: String::new(),
                    project_id: network.project_id.clone(),
                    network_id: network.id.clone(),
                    mac_address: ipam::random_mac(),
                    fixed_ips: Vec::new(),
                    device_id: device_id.clone(),
                    device_owner: OWNER_DHCP.into(),
                    admin_state_up: true,
                    security_groups: Vec::new(),
                    port_security_enabled: false,
                    allowed_address_pairs: Vec::new(),
                    host: String::new(),
                    compute_owned: false,
                    migrating_to: String::new(),
                    bound_device: Some(device_id.clone()),
                };
                let row = new_row(
                    PORT,
                    &id,
                    &network.project_id,
                    Some(&network.id),
                    Some(&device_id),
                    "",
                    &p,
                )?;
                tx.insert(&row).await.map_err(store_err)?;
                decode(row)?
            }
        };
        let wanted: HashSet<&str> = dhcp_subnets.iter().map(|s| s.id.as_str()).collect();
        let mut fixed: Vec<FixedIp> = port
            .val
            .fixed_ips
            .iter()
            .filter(|f| wanted.contains(f.subnet_id.as_str()))
            .cloned()
            .collect();
        tx.release_port(&port.val.id).await.map_err(internal)?;
        for f in &fixed {
            self.claim(tx, &network.id, &f.subnet_id, &f.ip_address, &port.val.id)
                .await?;
        }
        for s in &dhcp_subnets {
            if !fixed.iter().any(|f| f.subnet_id == s.id) {
                let ip = self.allocate_in(tx, &network.id, s, &port.val.id).await?;
                fixed.push(FixedIp {
                    subnet_id: s.id.clone(),
                    ip_address: ip,
                });
            }
        }
        if fixed != port.val.fixed_ips {
            port.val.fixed_ips = fixed;
            let row = updated_row(&port.row, &port.val, "", Some(&port.val.device_id))?;
            tx.update(&row).await.map_err(store_err)?;
        }
        Ok(())
    }

    /// Claims a specific address.
    pub(crate) async fn claim(
        &self,
        tx: &mut NetTx,
        network_id: &str,
        subnet_id: &str,
        ip: &str,
        port_id: &str,
    ) -> CoreResult<()> {
        let a = onestack_store::IpAllocation {
            network_id: network_id.to_string(),
            ip_address: ip.to_string(),
            subnet_id: subnet_id.to_string(),
            port_id: port_id.to_string(),
        };
        match tx.allocate(&a).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(typed(
                409,
                "IpAddressAlreadyAllocated",
                format!("IP address {ip} already allocated in subnet {subnet_id}"),
            )),
            Err(e) => Err(internal(e)),
        }
    }

    /// Allocates the lowest free pool address of `subnet` for `port_id`.
    pub(crate) async fn allocate_in(
        &self,
        tx: &mut NetTx,
        network_id: &str,
        subnet: &Subnet,
        port_id: &str,
    ) -> CoreResult<String> {
        let used: HashSet<Ipv4Addr> = tx
            .allocations(Some(network_id))
            .await
            .map_err(internal)?
            .iter()
            .filter_map(|a| a.ip_address.parse().ok())
            .collect();
        let ip = ipam::pick_free(&subnet.allocation_pools, &used).ok_or_else(|| {
            typed(
                409,
                "IpAddressGenerationFailure",
                format!("No more IP addresses available on network {network_id}."),
            )
        })?;
        let ip = ip.to_string();
        self.claim(tx, network_id, &subnet.id, &ip, port_id).await?;
        Ok(ip)
    }
}

pub(crate) fn subnet_view(s: &Rec<Subnet>) -> Value {
    let v = &s.val;
    standard(
        &s.row,
        json!({
            "id": v.id,
            "name": v.name,
            "description": v.description,
            "project_id": v.project_id,
            "network_id": v.network_id,
            "ip_version": v.ip_version,
            "cidr": v.cidr,
            "gateway_ip": v.gateway_ip,
            "enable_dhcp": v.enable_dhcp,
            "allocation_pools": v.allocation_pools,
            "dns_nameservers": v.dns_nameservers,
            "host_routes": v.host_routes,
            "ipv6_ra_mode": null,
            "ipv6_address_mode": null,
            "subnetpool_id": null,
            "service_types": [],
            "segment_id": null,
            "dns_publish_fixed_ip": false,
        }),
    )
}
