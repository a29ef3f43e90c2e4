//! Ports: fixed IPs, MACs, security groups, port security and allowed address pairs; and the calls
//! compute makes to give a server its NICs.

use super::fields::{self, Fields};
use super::ipam;
use super::model::*;
use super::*;
use std::collections::HashSet;

const PORT_FIELDS: &[&str] = &[
    "name",
    "description",
    "network_id",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "admin_state_up",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "project_id",
    "tenant_id",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
    "extra_dhcp_opts",
    "dns_name",
    "qos_policy_id",
    "propagate_uplink_status",
];

/// Who makes a port. Only ports compute or the network service made (or attached) are tied to
/// their device (`Port::bound_device`); a user's `device_id` is a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MadeBy {
    /// The port API.
    User,
    /// Compute, for a server (deleted with it).
    Compute,
    /// The network service: router gateways and interfaces, floating IP addresses.
    Service,
}

/// A requested fixed IP: a subnet, an address, or both.
struct IpRequest {
    subnet_id: Option<String>,
    ip_address: Option<String>,
}

fn parse_fixed_ips(f: &Fields, max_per_port: usize) -> CoreResult<Option<Vec<IpRequest>>> {
    let Some(items) = f.list("fixed_ips")? else {
        return Ok(None);
    };
    // Neutron's max_fixed_ips_per_port (ports of network devices are exempt).
    let trusted = f
        .string("device_owner", 255)?
        .is_some_and(|o| o.starts_with("network:"));
    if items.len() > max_per_port && !trusted {
        return Err(fields::bad(
            "Exceeded maximum amount of fixed ips per port.",
        ));
    }
    let mut out = Vec::new();
    for o in fields::objects("fixed_ips", items, &["subnet_id", "ip_address"])? {
        let req = IpRequest {
            subnet_id: o.string("subnet_id", 64)?,
            ip_address: o.string("ip_address", 64)?,
        };
        if let Some(ip) = &req.ip_address {
            ipam::parse_ip(ip)
                .map_err(|m| fields::bad(format!("Invalid input for fixed_ips. Reason: {m}.")))?;
        }
        if req.subnet_id.is_none() && req.ip_address.is_none() {
            return Err(fields::bad(
                "Invalid input for fixed_ips. Reason: an entry needs subnet_id or ip_address.",
            ));
        }
        out.push(req);
    }
    Ok(Some(out))
}

fn parse_pairs(f: &Fields, port_mac: &str) -> CoreResult<Option<Vec<AddressPair>>> {
    let Some(items) = f.list("allowed_address_pairs")? else {
        return Ok(None);
    };
    let mut out: Vec<AddressPair> = Vec::new();
    for o in fields::objects(
        "allowed_address_pairs",
        items,
        &["ip_address", "mac_address"],
    )? {
        let ip = o
            .string("ip_address", 64)?
            .ok_or_else(|| fields::bad("AllowedAddressPair must contain ip_address"))?;
        let ok = ipam::parse_ip(&ip).is_ok() || ip.parse::<ipnet::Ipv4Net>().is_ok();
        if !ok {
            return Err(fields::bad(format!(
                "Invalid input for allowed_address_pairs. Reason: '{ip}' is not a valid IP address or CIDR."
            )));
        }
        let mac = o
            .string("mac_address", 64)?
            .unwrap_or_else(|| port_mac.to_string())
            .to_lowercase();
        if !ipam::valid_mac(&mac) {
            return Err(fields::bad(format!("Invalid input for allowed_address_pairs. Reason: '{mac}' is not a valid MAC address.")));
        }
        let pair = AddressPair {
            ip_address: ip,
            mac_address: mac,
        };
        if out.contains(&pair) {
            return Err(fields::bad("Request contains duplicate address pair."));
        }
        out.push(pair);
    }
    Ok(Some(out))
}

/// Neutron's `ADMIN_OR_NET_OWNER`: what only a network's owner (or an admin) may do to ports on
/// it, even when the network is shared with others.
fn is_network_owner(ctx: &AuthContext, network: &Network) -> bool {
    owns(ctx, &network.project_id)
}

fn require_network_owner(ctx: &AuthContext, network: &Network, rule: &str) -> CoreResult<()> {
    if is_network_owner(ctx, network) {
        Ok(())
    } else {
        Err(forbidden(rule))
    }
}

/// The checks Neutron's policy makes on the attributes of a port a user creates or updates
/// (`create_port:<attribute>` / `update_port:<attribute>`): on a network shared with it, a
/// project may take an address from a subnet, nothing more.
fn check_port_attributes(
    ctx: &AuthContext,
    network: &Network,
    f: &Fields,
    action: &str,
) -> CoreResult<()> {
    if f.string("device_owner", 255)?
        .is_some_and(|o| o.starts_with("network:"))
    {
        require_network_owner(ctx, network, &format!("{action}:device_owner"))?;
    }
    for key in ["port_security_enabled", "allowed_address_pairs"] {
        if f.has(key) {
            require_network_owner(ctx, network, &format!("{action}:{key}"))?;
        }
    }
    check_fixed_ip_addresses(ctx, network, f, action)
}

/// Choosing an address (a gateway's, one outside the allocation pools, anyone's) is for the
/// network's owner; others may name only a subnet.
fn check_fixed_ip_addresses(
    ctx: &AuthContext,
    network: &Network,
    f: &Fields,
    action: &str,
) -> CoreResult<()> {
    let asks_address = f.list("fixed_ips")?.is_some_and(|items| {
        items
            .iter()
            .any(|i| i.get("ip_address").is_some_and(|v| !v.is_null()))
    });
    if asks_address {
        require_network_owner(ctx, network, &format!("{action}:fixed_ips:ip_address"))?;
    }
    Ok(())
}

impl NetworkService {
    pub(crate) fn can_see_port(ctx: &AuthContext, p: &Port, net: Option<&Network>) -> bool {
        owns(ctx, &p.project_id)
            || net.is_some_and(|n| ctx.project_id() == Some(n.project_id.as_str()))
    }

    /// A user may name as a port's device only what its project owns (Neutron's
    /// `DeviceIDNotOwnedByTenant`, there for router interfaces; here for servers too). Naming is
    /// all it does: only the service attaches (`Port::bound_device`).
    async fn check_device_owner(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        project_id: &str,
        device_owner: &str,
        device_id: &str,
    ) -> CoreResult<()> {
        if ctx.is_admin() || device_id.is_empty() {
            return Ok(());
        }
        let owner_project = if device_owner.starts_with("compute:") {
            match self.store.get_instance(device_id).await {
                Ok(i) if !i.deleted => Some(i.project_id),
                Ok(_) | Err(StoreError::NotFound) => None,
                Err(e) => return Err(internal(e)),
            }
        } else if device_owner.starts_with("network:") {
            match tx.get(device_id).await {
                Ok(row) => Some(row.project_id),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(internal(e)),
            }
        } else {
            None
        };
        match owner_project {
            Some(p) if p != project_id => Err(typed(
                403,
                "DeviceIDNotOwnedByTenant",
                format!("The following device_id {device_id} is not owned by your project or matches another project's device."),
            )),
            _ => Ok(()),
        }
    }

    pub async fn create_port(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_port")?;
        let f = Fields::new(body, PORT_FIELDS)?;
        let network_id = f.string("network_id", 64)?.ok_or_else(|| {
            fields::bad("Failed to parse request. Required attribute 'network_id' not specified")
        })?;
        let project_id = owner_for_create(ctx, &f)?;
        let (f, project_id, network_id) = (&f, &project_id, &network_id);
        let id = self
            .write("create port", |mut tx| async move {
                let id = self
                    .create_port_tx(&mut tx, ctx, project_id, network_id, f, MadeBy::User)
                    .await?;
                self.commit(tx).await?;
                Ok(id)
            })
            .await?;
        self.show_port(ctx, &id).await
    }

    /// The shared body of port creation (API, compute, routers).
    pub(crate) async fn create_port_tx(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        project_id: &str,
        network_id: &str,
        f: &Fields<'_>,
        made_by: MadeBy,
    ) -> CoreResult<String> {
        let network = self.visible_network(tx, ctx, network_id).await?;
        // Others' networks only when shared; external networks hold only router and floating ports.
        if !ctx.is_admin() && network.val.project_id != project_id && !network.val.shared {
            return Err(typed(
                403,
                "HTTPForbidden",
                format!("Tenant {project_id} not allowed to create port on this network"),
            ));
        }
        self.check_quota(tx, PORT, project_id, 1).await?;
        if f.has("binding:host_id") && !ctx.is_admin() {
            return Err(forbidden("create_port:binding:host_id"));
        }
        let device_id = f.string("device_id", 255)?.unwrap_or_default();
        let device_owner = f.string("device_owner", 255)?.unwrap_or_default();
        match made_by {
            MadeBy::User => {
                check_port_attributes(ctx, &network.val, f, "create_port")?;
                self.check_device_owner(tx, ctx, project_id, &device_owner, &device_id)
                    .await?;
            }
            // Nova asks Neutron with the user's token: an address is the network owner's to give.
            MadeBy::Compute => check_fixed_ip_addresses(ctx, &network.val, f, "create_port")?,
            MadeBy::Service => {}
        }
        let id = uuid::Uuid::new_v4().to_string();
        let mac = match f.string("mac_address", 64)? {
            Some(m) => {
                let m = m.to_lowercase();
                if !ipam::valid_mac(&m) {
                    return Err(fields::bad(format!(
                        "Invalid input for mac_address. Reason: '{m}' is not a valid MAC address."
                    )));
                }
                require_network_owner(ctx, &network.val, "create_port:mac_address")?;
                m
            }
            None => ipam::random_mac(),
        };
        let ports: Vec<Rec<Port>> =
            Self::all_tx(tx, NetFilter::of(PORT).network(network_id)).await?;
        if ports.iter().any(|p| p.val.mac_address == mac) {
            return Err(typed(
                409,
                "MacAddressInUse",
                format!("Unable to complete operation for network {network_id}. The mac address {mac} is in use."),
            ));
        }
        let requests = parse_fixed_ips(f, self.cfg.max_fixed_ips_per_port)?;
        let fixed_ips = self
            .allocate_fixed_ips(tx, &network.val, &id, requests)
            .await?;
        let port_security = f
            .boolean("port_security_enabled")?
            .unwrap_or(network.val.port_security_enabled);
        let pairs = parse_pairs(f, &mac)?.unwrap_or_default();
        let security_groups = match f.string_list("security_groups")? {
            Some(list) => list,
            None if port_security => vec![self.ensure_default_sg(tx, project_id).await?],
            None => Vec::new(),
        };
        if !port_security && (!security_groups.is_empty() || !pairs.is_empty()) {
            return Err(typed(
                409,
                "PortSecurityAndIPRequiredForSecurityGroups",
                "Port security must be enabled and port must have an IP address in order to use security groups or allowed address pairs.",
            ));
        }
        self.check_groups(tx, ctx, project_id, &security_groups)
            .await?;
        let bound_device = match made_by {
            MadeBy::User => String::new(),
            MadeBy::Compute | MadeBy::Service => device_id.clone(),
        };
        let p = Port {
            id: id.clone(),
            name: f.string("name", 255)?.unwrap_or_default(),
            description: f.string("description", 255)?.unwrap_or_default(),
            project_id: project_id.to_string(),
            network_id: network_id.to_string(),
            mac_address: mac,
            fixed_ips,
            device_id: device_id.clone(),
            device_owner,
            admin_state_up: f.boolean("admin_state_up")?.unwrap_or(true),
            security_groups,
            port_security_enabled: port_security,
            allowed_address_pairs: pairs,
            host: f.string("binding:host_id", 255)?.unwrap_or_default(),
            compute_owned: made_by == MadeBy::Compute,
            migrating_to: String::new(),
            bound_device: Some(bound_device),
        };
        let row = new_row(
            PORT,
            &id,
            project_id,
            Some(network_id),
            Some(&device_id),
            &p.name,
            &p,
        )?;
        tx.insert(&row).await.map_err(store_err)?;
        Ok(id)
    }

    async fn allocate_fixed_ips(
        &self,
        tx: &mut NetTx,
        network: &Network,
        port_id: &str,
        requests: Option<Vec<IpRequest>>,
    ) -> CoreResult<Vec<FixedIp>> {
        let subnets: Vec<Rec<Subnet>> =
            Self::all_tx(tx, NetFilter::of(SUBNET).network(&network.id)).await?;
        let mut out = Vec::new();
        match requests {
            None => {
                // One address from the first subnet with room (Neutron's IPv4 behaviour).
                let mut last_err = None;
                for s in &subnets {
                    match self.allocate_in(tx, &network.id, &s.val, port_id).await {
                        Ok(ip) => {
                            out.push(FixedIp {
                                subnet_id: s.val.id.clone(),
                                ip_address: ip,
                            });
                            last_err = None;
                            break;
                        }
                        Err(e) => last_err = Some(e),
                    }
                }
                if let Some(e) = last_err {
                    return Err(e);
                }
            }
            Some(reqs) => {
                for r in reqs {
                    let subnet = match (&r.subnet_id, &r.ip_address) {
                        (Some(sid), _) => subnets.iter().find(|s| &s.val.id == sid).ok_or_else(|| {
                            fields::bad(format!(
                                "Invalid input for operation: Failed to create port on network {}, because fixed_ips included invalid subnet {sid}.",
                                network.id
                            ))
                        })?,
                        (None, Some(ip)) => {
                            let addr = ipam::parse_ip(ip).map_err(fields::bad)?;
                            subnets
                                .iter()
                                .find(|s| ipam::parse_cidr(&s.val.cidr).is_ok_and(|n| n.contains(&addr)))
                                .ok_or_else(|| {
                                    fields::bad(format!(
                                        "Invalid input for operation: IP address {ip} is not a valid IP for any subnet on network {}.",
                                        network.id
                                    ))
                                })?
                        }
                        (None, None) => continue,
                    };
                    let ip = match &r.ip_address {
                        Some(ip) => {
                            let addr = ipam::parse_ip(ip).map_err(fields::bad)?;
                            let net = ipam::parse_cidr(&subnet.val.cidr).map_err(internal)?;
                            if !ipam::is_host_address(net, addr) {
                                return Err(fields::bad(format!(
                                    "Invalid input for operation: IP address {ip} is not a valid IP for the specified subnet."
                                )));
                            }
                            self.claim(tx, &network.id, &subnet.val.id, &addr.to_string(), port_id)
                                .await?;
                            addr.to_string()
                        }
                        None => {
                            self.allocate_in(tx, &network.id, &subnet.val, port_id)
                                .await?
                        }
                    };
                    out.push(FixedIp {
                        subnet_id: subnet.val.id.clone(),
                        ip_address: ip,
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn show_port(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let p: Rec<Port> = self.get_rec(PORT, id).await?;
        let n: Option<Rec<Network>> = self.get_rec(NETWORK, &p.val.network_id).await.ok();
        if !Self::can_see_port(ctx, &p.val, n.as_ref().map(|n| &n.val)) {
            return Err(not_found(PORT, id));
        }
        Ok(port_view(&p, ctx))
    }

    pub async fn list_ports(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        let nets: Vec<Rec<Network>> = self.all(NetFilter::of(NETWORK)).await?;
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        Ok(ports
            .iter()
            .filter(|p| {
                let n = nets.iter().find(|n| n.val.id == p.val.network_id);
                Self::can_see_port(ctx, &p.val, n.map(|n| &n.val))
            })
            .map(|p| port_view(p, ctx))
            .collect())
    }

    pub async fn update_port(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "update_port")?;
        let f = Fields::new(body, PORT_FIELDS)?;
        for k in ["network_id", "project_id", "tenant_id"] {
            if f.has(k) {
                return Err(fields::bad(format!(
                    "Cannot update read-only attribute {k}"
                )));
            }
        }
        let f = &f;
        self.write("update port", |mut tx| async move {
            let mut p: Rec<Port> = self.fetch(&mut tx, PORT, id).await?;
            let net: Rec<Network> = self.fetch(&mut tx, NETWORK, &p.val.network_id).await?;
            if !Self::can_see_port(ctx, &p.val, Some(&net.val)) {
                return Err(not_found(PORT, id));
            }
            if f.has("binding:host_id") && !ctx.is_admin() {
                return Err(forbidden("update_port:binding:host_id"));
            }
            check_port_attributes(ctx, &net.val, f, "update_port")?;
            let new_device_id = f.string("device_id", 255)?;
            let new_device_owner = f.string("device_owner", 255)?;
            let moves = new_device_id.as_ref().is_some_and(|d| d != &p.val.device_id)
                || new_device_owner.as_ref().is_some_and(|o| o != &p.val.device_owner);
            if moves {
                // A router's leg, a DHCP server or a floating IP is changed through its own API.
                if p.val.is_attached() && p.val.device_owner.starts_with("network:") && !ctx.is_admin() {
                    return Err(forbidden("update_port:device_owner"));
                }
                let owner = new_device_owner.clone().unwrap_or_else(|| p.val.device_owner.clone());
                let device = new_device_id.clone().unwrap_or_else(|| p.val.device_id.clone());
                self.check_device_owner(&mut tx, ctx, &p.val.project_id, &owner, &device)
                    .await?;
                // What a user points elsewhere is no device's any more (nor deleted with one).
                p.val.bound_device = Some(String::new());
                p.val.compute_owned = false;
            }
            if let Some(v) = f.string("name", 255)? {
                p.val.name = v;
            }
            if let Some(v) = f.string("description", 255)? {
                p.val.description = v;
            }
            if let Some(v) = f.boolean("admin_state_up")? {
                p.val.admin_state_up = v;
            }
            if let Some(v) = new_device_id {
                p.val.device_id = v;
            }
            if let Some(v) = new_device_owner {
                p.val.device_owner = v;
            }
            if let Some(v) = f.string("binding:host_id", 255)? {
                p.val.host = v;
            }
            if let Some(m) = f.string("mac_address", 64)? {
                if m.to_lowercase() != p.val.mac_address {
                    return Err(typed(
                        409,
                        "PortBound",
                        "Cannot update the MAC address of a port.",
                    ));
                }
            }
            if let Some(reqs) = parse_fixed_ips(f, self.cfg.max_fixed_ips_per_port)? {
                tx.release_port(id).await.map_err(internal)?;
                p.val.fixed_ips = self
                    .allocate_fixed_ips(&mut tx, &net.val, id, Some(reqs))
                    .await?;
            }
            if let Some(v) = f.boolean("port_security_enabled")? {
                p.val.port_security_enabled = v;
            }
            if let Some(pairs) = parse_pairs(f, &p.val.mac_address)? {
                p.val.allowed_address_pairs = pairs;
            }
            if let Some(groups) = f.string_list("security_groups")? {
                self.check_groups(&mut tx, ctx, &p.val.project_id, &groups)
                    .await?;
                p.val.security_groups = groups;
            }
            if !p.val.port_security_enabled
                && (!p.val.security_groups.is_empty() || !p.val.allowed_address_pairs.is_empty())
            {
                return Err(typed(
                    409,
                    "PortSecurityPortHasSecurityGroup",
                    "Port has security group associated. Cannot disable port security or IP address until security group is removed",
                ));
            }
            let row = updated_row(&p.row, &p.val, &p.val.name, Some(&p.val.device_id))?;
            tx.update(&row).await.map_err(store_err)?;
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.show_port(ctx, id).await
    }

    pub async fn delete_port(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_port")?;
        self.write("delete port", |mut tx| async move {
            let p: Rec<Port> = self.fetch(&mut tx, PORT, id).await?;
            let net: Option<Rec<Network>> = self.fetch(&mut tx, NETWORK, &p.val.network_id).await.ok();
            if !Self::can_see_port(ctx, &p.val, net.as_ref().map(|n| &n.val)) {
                return Err(not_found(PORT, id));
            }
            // A port the service attached to a network device goes with that device; one a user
            // merely labelled so is the user's to delete.
            let attached = p.val.is_attached() || p.val.bound_device.is_none();
            if attached
                && [
                    OWNER_ROUTER_INTERFACE,
                    OWNER_ROUTER_GATEWAY,
                    OWNER_FLOATINGIP,
                    OWNER_DHCP,
                ]
                .contains(&p.val.device_owner.as_str())
                && !(ctx.is_admin() && p.val.device_owner == OWNER_DHCP)
            {
                return Err(typed(
                    409,
                    "ServicePortInUse",
                    format!(
                        "Port {id} cannot be deleted directly via the port API: has device owner {}.",
                        p.val.device_owner
                    ),
                ));
            }
            self.delete_port_tx(&mut tx, id).await?;
            self.commit(tx).await
        })
        .await
    }

    /// Deletes a port, disassociating any floating IP that pointed at it.
    pub(crate) async fn delete_port_tx(&self, tx: &mut NetTx, id: &str) -> CoreResult<()> {
        let fips: Vec<Rec<FloatingIp>> = Self::all_tx(tx, NetFilter::of(FLOATINGIP)).await?;
        for mut fip in fips
            .into_iter()
            .filter(|f| f.val.port_id.as_deref() == Some(id))
        {
            fip.val.port_id = None;
            fip.val.fixed_ip_address = None;
            fip.val.router_id = None;
            let row = updated_row(&fip.row, &fip.val, &fip.row.name, None)?;
            tx.update(&row).await.map_err(store_err)?;
        }
        match tx.delete(id).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    // ---- compute ----------------------------------------------------------------------------

    /// Networks a server gets when it asks for none (Nova 2.1): the project's own and shared,
    /// non-external networks. Nova uses the only one, refuses a choice among several.
    pub async fn default_networks(&self, ctx: &AuthContext) -> CoreResult<Vec<String>> {
        let nets: Vec<Rec<Network>> = self.all(NetFilter::of(NETWORK)).await?;
        let project = ctx.project_id().unwrap_or_default();
        Ok(nets
            .iter()
            .filter(|n| !n.val.external && (n.val.project_id == project || n.val.shared))
            .map(|n| n.val.id.clone())
            .collect())
    }

    /// Creates (or takes over) the ports of a new server: one per request, in order. `groups` are
    /// security group names or ids of the caller's project. All or nothing.
    pub async fn allocate_server_ports(
        &self,
        ctx: &AuthContext,
        server_id: &str,
        requests: &[(Option<String>, Option<String>, Option<String>)],
        groups: &[String],
    ) -> CoreResult<Vec<Port>> {
        let project_id = ctx_project(ctx)?;
        let project_id = &project_id;
        self.write("allocate server ports", |mut tx| async move {
            let mut group_ids = Vec::new();
            for g in groups {
                group_ids.push(self.resolve_group(&mut tx, project_id, g).await?);
            }
            let mut ids = Vec::new();
            for (network, port, fixed_ip) in requests {
                if let Some(port_id) = port {
                    let mut p: Rec<Port> =
                        self.fetch(&mut tx, PORT, port_id).await.map_err(|_| {
                            typed(
                                400,
                                "PortNotFound",
                                format!("Port {port_id} could not be found."),
                            )
                        })?;
                    if !owns(ctx, &p.val.project_id) {
                        return Err(typed(
                            400,
                            "PortNotFound",
                            format!("Port {port_id} could not be found."),
                        ));
                    }
                    if !p.val.device_id.is_empty() || !p.val.device_owner.is_empty() {
                        return Err(typed(
                            409,
                            "PortInUse",
                            format!("Port {port_id} is still in use."),
                        ));
                    }
                    p.val.device_id = server_id.to_string();
                    p.val.device_owner = OWNER_COMPUTE.into();
                    p.val.bound_device = Some(server_id.to_string());
                    let row = updated_row(&p.row, &p.val, &p.val.name, Some(server_id))?;
                    tx.update(&row).await.map_err(store_err)?;
                    ids.push(port_id.clone());
                    continue;
                }
                let Some(network_id) = network else {
                    return Err(fields::bad("A network or a port is required."));
                };
                let mut body = Map::new();
                body.insert("device_id".into(), json!(server_id));
                body.insert("device_owner".into(), json!(OWNER_COMPUTE));
                if let Some(ip) = fixed_ip {
                    body.insert("fixed_ips".into(), json!([{"ip_address": ip}]));
                }
                if !groups.is_empty() {
                    body.insert("security_groups".into(), json!(group_ids));
                }
                let f = Fields::new(&body, PORT_FIELDS)?;
                let id = self
                    .create_port_tx(&mut tx, ctx, project_id, network_id, &f, MadeBy::Compute)
                    .await
                    .map_err(|e| match e {
                        CoreError::Typed {
                            status: 404,
                            kind,
                            message,
                        } => typed(400, kind, message),
                        other => other,
                    })?;
                ids.push(id);
            }
            let mut out = Vec::new();
            for id in &ids {
                out.push(self.fetch::<Port>(&mut tx, PORT, id).await?.val);
            }
            self.commit(tx).await?;
            Ok(out)
        })
        .await
    }

    /// Binds a server's ports to the host it was placed on.
    /// Plugs a server's ports on a live migration's target too (`Some`), or no more (`None`).
    pub async fn set_migration_binding(
        &self,
        server_id: &str,
        target: Option<&str>,
    ) -> CoreResult<()> {
        self.write("set migration binding", |mut tx| async move {
            for mut p in Self::server_nics_tx(&mut tx, server_id).await? {
                p.val.migrating_to = target.unwrap_or_default().to_string();
                let row = updated_row(&p.row, &p.val, &p.val.name, Some(server_id))?;
                tx.update(&row).await.map_err(store_err)?;
            }
            self.commit(tx).await
        })
        .await
    }

    pub async fn bind_server_ports(&self, server_id: &str, host: &str) -> CoreResult<()> {
        self.write("bind server ports", |mut tx| async move {
            for mut p in Self::server_nics_tx(&mut tx, server_id).await? {
                p.val.migrating_to = String::new();
                p.val.host = host.to_string();
                let row = updated_row(&p.row, &p.val, &p.val.name, Some(server_id))?;
                tx.update(&row).await.map_err(store_err)?;
            }
            self.commit(tx).await
        })
        .await
    }

    /// A server's NICs (the ports compute attached to it), in creation order.
    pub async fn server_ports(&self, server_id: &str) -> CoreResult<Vec<Port>> {
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT).device(server_id)).await?;
        Ok(ports
            .into_iter()
            .map(|p| p.val)
            .filter(|p| p.is_server_nic(server_id))
            .collect())
    }

    /// A server's NICs, in a write.
    pub(crate) async fn server_nics_tx(
        tx: &mut NetTx,
        server_id: &str,
    ) -> CoreResult<Vec<Rec<Port>>> {
        let ports: Vec<Rec<Port>> = Self::all_tx(tx, NetFilter::of(PORT).device(server_id)).await?;
        Ok(ports
            .into_iter()
            .filter(|p| p.val.is_server_nic(server_id))
            .collect())
    }

    /// When a server is gone: deletes the ports compute made, frees the ones the user gave.
    pub async fn release_server_ports(&self, server_id: &str) -> CoreResult<()> {
        self.write("release server ports", |mut tx| async move {
            for mut p in Self::server_nics_tx(&mut tx, server_id).await? {
                if p.val.compute_owned {
                    self.delete_port_tx(&mut tx, &p.val.id).await?;
                } else {
                    p.val.device_id.clear();
                    p.val.device_owner.clear();
                    p.val.host.clear();
                    p.val.bound_device = Some(String::new());
                    let row = updated_row(&p.row, &p.val, &p.val.name, None)?;
                    tx.update(&row).await.map_err(store_err)?;
                }
            }
            self.commit(tx).await
        })
        .await
    }

    /// Nova's `addresses` for servers: network name → fixed and floating addresses.
    pub async fn server_addresses(&self, server_ids: &[&str]) -> CoreResult<Vec<(String, Value)>> {
        let wanted: HashSet<&str> = server_ids.iter().copied().collect();
        let nets: Vec<Rec<Network>> = self.all(NetFilter::of(NETWORK)).await?;
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        let fips: Vec<Rec<FloatingIp>> = self.all(NetFilter::of(FLOATINGIP)).await?;
        let mut out = Vec::new();
        for id in server_ids {
            let mut addrs = Map::new();
            for p in ports
                .iter()
                .filter(|p| p.val.is_server_nic(id) && wanted.contains(id))
            {
                let name = nets
                    .iter()
                    .find(|n| n.val.id == p.val.network_id)
                    .map(|n| {
                        if n.val.name.is_empty() {
                            n.val.id.clone()
                        } else {
                            n.val.name.clone()
                        }
                    })
                    .unwrap_or_else(|| p.val.network_id.clone());
                let entry = addrs.entry(name).or_insert_with(|| json!([]));
                if let Some(list) = entry.as_array_mut() {
                    for ip in p.val.ipv4s() {
                        list.push(json!({"version": 4, "addr": ip, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": p.val.mac_address}));
                        for f in fips.iter().filter(|f| {
                            f.val.port_id.as_deref() == Some(&p.val.id)
                                && f.val.fixed_ip_address.as_deref() == Some(ip)
                        }) {
                            list.push(json!({"version": 4, "addr": f.val.floating_ip_address, "OS-EXT-IPS:type": "floating", "OS-EXT-IPS-MAC:mac_addr": p.val.mac_address}));
                        }
                    }
                }
            }
            out.push((id.to_string(), Value::Object(addrs)));
        }
        Ok(out)
    }
}

pub(crate) fn port_view(p: &Rec<Port>, ctx: &AuthContext) -> Value {
    let v = &p.val;
    let status = if !v.admin_state_up {
        "DOWN"
    } else if v.device_owner.starts_with("network:") || !v.host.is_empty() {
        "ACTIVE"
    } else {
        "DOWN"
    };
    let mut body = json!({
        "id": v.id,
        "name": v.name,
        "description": v.description,
        "project_id": v.project_id,
        "network_id": v.network_id,
        "mac_address": v.mac_address,
        "fixed_ips": v.fixed_ips,
        "device_id": v.device_id,
        "device_owner": v.device_owner,
        "admin_state_up": v.admin_state_up,
        "status": status,
        "security_groups": v.security_groups,
        "port_security_enabled": v.port_security_enabled,
        "allowed_address_pairs": v.allowed_address_pairs,
        "extra_dhcp_opts": [],
        "binding:vnic_type": "normal",
    });
    if ctx.is_admin() {
        if let Some(o) = body.as_object_mut() {
            o.insert("binding:host_id".into(), json!(v.host));
            o.insert(
                "binding:vif_type".into(),
                json!(if v.host.is_empty() { "unbound" } else { "tap" }),
            );
            o.insert("binding:vif_details".into(), json!({}));
            o.insert("binding:profile".into(), json!({}));
        }
    }
    standard(&p.row, body)
}
