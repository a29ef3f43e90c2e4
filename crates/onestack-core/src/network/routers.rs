//! Routers (external gateway, interfaces) and floating IPs.

use super::fields::{self, Fields};
use super::ipam;
use super::model::*;
use super::*;

impl NetworkService {
    async fn visible_router(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        id: &str,
    ) -> CoreResult<Rec<Router>> {
        let r: Rec<Router> = self.fetch(tx, ROUTER, id).await?;
        if !owns(ctx, &r.val.project_id) {
            return Err(not_found(ROUTER, id));
        }
        Ok(r)
    }

    /// Creates the gateway port on `network_id` for a router.
    async fn set_gateway(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        router: &mut Router,
        info: Option<&Map<String, Value>>,
    ) -> CoreResult<()> {
        let Some(info) = info else {
            if let Some(gw) = router.gateway.take() {
                let fips: Vec<Rec<FloatingIp>> =
                    Self::all_tx(tx, NetFilter::of(FLOATINGIP)).await?;
                if fips
                    .iter()
                    .any(|f| f.val.router_id.as_deref() == Some(&router.id))
                {
                    return Err(typed(
                        409,
                        "RouterExternalGatewayInUseByFloatingIp",
                        format!("Gateway cannot be updated for router {}, since a gateway to external network {} is required by one or more floating IPs.", router.id, gw.network_id),
                    ));
                }
                self.delete_port_tx(tx, &gw.port_id).await?;
            }
            return Ok(());
        };
        let f = Fields::new(info, &["network_id", "enable_snat", "external_fixed_ips"])?;
        let network_id = f.string("network_id", 64)?.ok_or_else(|| {
            fields::bad("Invalid input for external_gateway_info. Reason: network_id is required.")
        })?;
        // Neutron's `create_router:external_gateway_info:enable_snat`: admin only, either value.
        let enable_snat = match f.boolean("enable_snat")? {
            Some(_) if !ctx.is_admin() => {
                return Err(forbidden("update_router:external_gateway_info:enable_snat"))
            }
            Some(v) => v,
            None => true,
        };
        if f.has("external_fixed_ips") && !ctx.is_admin() {
            return Err(forbidden(
                "create_router:external_gateway_info:external_fixed_ips",
            ));
        }
        let network: Rec<Network> = self.fetch(tx, NETWORK, &network_id).await?;
        if !network.val.external {
            return Err(typed(
                400,
                "BadRequest",
                format!("Bad router request: Network {network_id} is not an external network."),
            ));
        }
        if let Some(gw) = &router.gateway {
            if gw.network_id == network_id {
                router.gateway = Some(GatewayInfo {
                    enable_snat,
                    ..gw.clone()
                });
                return Ok(());
            }
            let old = gw.port_id.clone();
            self.delete_port_tx(tx, &old).await?;
        }
        // Gateway ports belong to no project (Neutron shows an empty tenant).
        let port_id = self
            .create_service_port(
                tx,
                ctx,
                "",
                &network_id,
                &router.id,
                OWNER_ROUTER_GATEWAY,
                f.raw("external_fixed_ips").cloned(),
            )
            .await?;
        router.gateway = Some(GatewayInfo {
            network_id,
            enable_snat,
            port_id,
        });
        Ok(())
    }

    pub async fn create_router(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_router")?;
        let f = Fields::new(
            body,
            &[
                "name",
                "description",
                "admin_state_up",
                "external_gateway_info",
                "project_id",
                "tenant_id",
                "distributed",
                "ha",
                "availability_zone_hints",
                "flavor_id",
            ],
        )?;
        let project_id = owner_for_create(ctx, &f)?;
        for k in ["distributed", "ha"] {
            if f.boolean(k)? == Some(true) {
                return Err(fields::bad(format!("'{k}' routers are not supported.")));
            }
        }
        let (f, project_id) = (&f, &project_id);
        let id = self
            .write("create router", |mut tx| async move {
                self.check_quota(&mut tx, ROUTER, project_id, 1).await?;
                let id = uuid::Uuid::new_v4().to_string();
                let mut r = Router {
                    id: id.clone(),
                    name: f.string("name", 255)?.unwrap_or_default(),
                    description: f.string("description", 255)?.unwrap_or_default(),
                    project_id: project_id.clone(),
                    admin_state_up: f.boolean("admin_state_up")?.unwrap_or(true),
                    gateway: None,
                };
                self.set_gateway(&mut tx, ctx, &mut r, f.object("external_gateway_info")?)
                    .await?;
                tx.insert(&new_row(ROUTER, &id, project_id, None, None, &r.name, &r)?)
                    .await
                    .map_err(store_err)?;
                self.commit(tx).await?;
                Ok(id)
            })
            .await?;
        self.show_router(ctx, &id).await
    }

    async fn router_view(&self, r: &Rec<Router>, ctx: &AuthContext) -> CoreResult<Value> {
        let gw_port: Option<Port> = match &r.val.gateway {
            Some(g) => self
                .get_rec::<Port>(PORT, &g.port_id)
                .await
                .ok()
                .map(|p| p.val),
            None => None,
        };
        Ok(router_view(r, gw_port.as_ref(), ctx))
    }

    pub async fn show_router(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let r: Rec<Router> = self.get_rec(ROUTER, id).await?;
        if !owns(ctx, &r.val.project_id) {
            return Err(not_found(ROUTER, id));
        }
        self.router_view(&r, ctx).await
    }

    pub async fn list_routers(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        let routers: Vec<Rec<Router>> = self.all(NetFilter::of(ROUTER)).await?;
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        Ok(routers
            .iter()
            .filter(|r| owns(ctx, &r.val.project_id))
            .map(|r| {
                let gw = r
                    .val
                    .gateway
                    .as_ref()
                    .and_then(|g| ports.iter().find(|p| p.val.id == g.port_id))
                    .map(|p| &p.val);
                router_view(r, gw, ctx)
            })
            .collect())
    }

    pub async fn update_router(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "update_router")?;
        let f = Fields::new(
            body,
            &[
                "name",
                "description",
                "admin_state_up",
                "external_gateway_info",
                "routes",
                "distributed",
                "ha",
            ],
        )?;
        if f.list("routes")?.is_some_and(|r| !r.is_empty()) {
            return Err(fields::bad("Extra routes are not supported."));
        }
        let f = &f;
        self.write("update router", |mut tx| async move {
            let mut r = self.visible_router(&mut tx, ctx, id).await?;
            if let Some(v) = f.string("name", 255)? {
                r.val.name = v;
            }
            if let Some(v) = f.string("description", 255)? {
                r.val.description = v;
            }
            if let Some(v) = f.boolean("admin_state_up")? {
                r.val.admin_state_up = v;
            }
            if f.has("external_gateway_info") {
                let info = f.object("external_gateway_info")?.filter(|m| !m.is_empty());
                self.set_gateway(&mut tx, ctx, &mut r.val, info).await?;
            }
            let row = updated_row(&r.row, &r.val, &r.val.name, None)?;
            tx.update(&row).await.map_err(store_err)?;
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.show_router(ctx, id).await
    }

    pub async fn delete_router(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_router")?;
        self.write("delete router", |mut tx| async move {
            let r = self.visible_router(&mut tx, ctx, id).await?;
            let ports: Vec<Rec<Port>> =
                Self::all_tx(&mut tx, NetFilter::of(PORT).device(id)).await?;
            if ports.iter().any(|p| p.val.is_router_interface(id)) {
                return Err(typed(
                    409,
                    "RouterInUse",
                    format!("Router {id} still has ports"),
                ));
            }
            let fips: Vec<Rec<FloatingIp>> =
                Self::all_tx(&mut tx, NetFilter::of(FLOATINGIP)).await?;
            if fips.iter().any(|f| f.val.router_id.as_deref() == Some(id)) {
                return Err(typed(
                    409,
                    "RouterInUse",
                    format!("Router {id} still has floating IPs"),
                ));
            }
            if let Some(gw) = &r.val.gateway {
                self.delete_port_tx(&mut tx, &gw.port_id).await?;
            }
            tx.delete(id).await.map_err(internal)?;
            self.commit(tx).await
        })
        .await
    }

    /// `PUT /routers/{id}/add_router_interface` with a subnet (the port takes the subnet's
    /// gateway address) or an unused port of the caller's.
    pub async fn add_router_interface(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "add_router_interface")?;
        let f = Fields::new(body, &["subnet_id", "port_id"])?;
        let (subnet_id, port_id) = (f.string("subnet_id", 64)?, f.string("port_id", 64)?);
        if subnet_id.is_some() == port_id.is_some() {
            return Err(typed(
                400,
                "BadRequest",
                "Bad router request: Either subnet_id or port_id must be specified.",
            ));
        }
        let (subnet_id, port_id) = (&subnet_id, &port_id);
        self.write("add router interface", |mut tx| async move {
            let router = self.visible_router(&mut tx, ctx, id).await?;
            let existing: Vec<Rec<Port>> =
                Self::all_tx(&mut tx, NetFilter::of(PORT).device(id)).await?;
            let attached: Vec<String> = existing
                .iter()
                .filter(|p| p.val.is_router_interface(id))
                .flat_map(|p| p.val.fixed_ips.iter().map(|f| f.subnet_id.clone()))
                .collect();
            let port = match (subnet_id, port_id) {
                (Some(sid), _) => {
                    let s: Rec<Subnet> = self.fetch(&mut tx, SUBNET, sid).await?;
                    let net: Rec<Network> = self.fetch(&mut tx, NETWORK, &s.val.network_id).await?;
                    if !Self::can_see_subnet(ctx, &s.val, Some(&net.val)) {
                        return Err(not_found(SUBNET, sid));
                    }
                    // The interface takes the subnet's gateway address: only its owner's router
                    // may (Neutron, LP#1757482).
                    if !owns(ctx, &s.val.project_id) {
                        return Err(typed(
                            400,
                            "BadRequest",
                            format!("Bad router request: Cannot add interface to router because subnet {sid} is not owned by project making the request."),
                        ));
                    }
                    let Some(gw) = s.val.gateway_ip.clone() else {
                        return Err(typed(
                            400,
                            "BadRequest",
                            format!("Bad router request: Subnet {sid} does not have a gateway IP."),
                        ));
                    };
                    self.check_interface_subnet(&mut tx, &attached, &s.val)
                        .await?;
                    let pid = self
                        .create_service_port(
                            &mut tx,
                            ctx,
                            &router.val.project_id,
                            &s.val.network_id,
                            id,
                            OWNER_ROUTER_INTERFACE,
                            Some(json!([{"subnet_id": sid, "ip_address": gw}])),
                        )
                        .await?;
                    self.fetch::<Port>(&mut tx, PORT, &pid).await?
                }
                (None, Some(pid)) => {
                    let mut p: Rec<Port> = self.fetch(&mut tx, PORT, pid).await?;
                    if !owns(ctx, &p.val.project_id) {
                        return Err(not_found(PORT, pid));
                    }
                    if !p.val.device_id.is_empty() {
                        return Err(typed(409, "PortInUse", format!("Unable to complete operation on port {pid} for network {}. Port already has an attached device {}.", p.val.network_id, p.val.device_id)));
                    }
                    if p.val.fixed_ips.is_empty() {
                        return Err(typed(
                            400,
                            "BadRequest",
                            "Bad router request: Router port must have at least one fixed IP.",
                        ));
                    }
                    for fip in &p.val.fixed_ips {
                        let s: Rec<Subnet> = self.fetch(&mut tx, SUBNET, &fip.subnet_id).await?;
                        self.check_interface_subnet(&mut tx, &attached, &s.val)
                            .await?;
                    }
                    p.val.device_id = id.to_string();
                    p.val.device_owner = OWNER_ROUTER_INTERFACE.into();
                    p.val.bound_device = Some(id.to_string());
                    p.val.security_groups.clear();
                    p.val.allowed_address_pairs.clear();
                    p.val.port_security_enabled = false;
                    let row = updated_row(&p.row, &p.val, &p.val.name, Some(id))?;
                    tx.update(&row).await.map_err(store_err)?;
                    p
                }
                (None, None) => return Err(fields::bad("subnet_id or port_id is required")),
            };
            self.commit(tx).await?;
            Ok(interface_info(id, &router.val.project_id, &port.val))
        })
        .await
    }

    /// A router joins each subnet once, and its subnets must not overlap.
    async fn check_interface_subnet(
        &self,
        tx: &mut NetTx,
        attached: &[String],
        s: &Subnet,
    ) -> CoreResult<()> {
        let cidr = ipam::parse_cidr(&s.cidr).map_err(internal)?;
        for other in attached {
            if other == &s.id {
                return Err(typed(
                    400,
                    "BadRequest",
                    format!(
                        "Bad router request: Router already has a port on subnet {}.",
                        s.id
                    ),
                ));
            }
            let o: Rec<Subnet> = self.fetch(tx, SUBNET, other).await?;
            if ipam::parse_cidr(&o.val.cidr).is_ok_and(|n| ipam::overlaps(n, cidr)) {
                return Err(typed(400, "BadRequest", format!("Bad router request: Cidr {} of subnet {} overlaps with cidr {} of subnet {other}.", s.cidr, s.id, o.val.cidr)));
            }
        }
        Ok(())
    }

    pub async fn remove_router_interface(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "remove_router_interface")?;
        let f = Fields::new(body, &["subnet_id", "port_id"])?;
        let (subnet_id, port_id) = (f.string("subnet_id", 64)?, f.string("port_id", 64)?);
        let (subnet_id, port_id) = (&subnet_id, &port_id);
        self.write("remove router interface", |mut tx| async move {
            let router = self.visible_router(&mut tx, ctx, id).await?;
            let ports: Vec<Rec<Port>> = Self::all_tx(&mut tx, NetFilter::of(PORT).device(id)).await?;
            let port = ports
                .into_iter()
                .filter(|p| p.val.is_router_interface(id))
                .find(|p| {
                    port_id.as_deref().is_some_and(|pid| pid == p.val.id)
                        || subnet_id
                            .as_deref()
                            .is_some_and(|sid| p.val.fixed_ips.iter().any(|f| f.subnet_id == sid))
                })
                .ok_or_else(|| match (&port_id, &subnet_id) {
                    (Some(pid), _) => typed(
                        404,
                        "RouterInterfaceNotFound",
                        format!("Router {id} does not have an interface with id {pid}"),
                    ),
                    (None, Some(sid)) => typed(
                        404,
                        "RouterInterfaceNotFoundForSubnet",
                        format!("Router {id} has no interface on subnet {sid}"),
                    ),
                    (None, None) => fields::bad(
                        "Bad router request: Either subnet_id or port_id must be specified.",
                    ),
                })?;
            let fips: Vec<Rec<FloatingIp>> = Self::all_tx(&mut tx, NetFilter::of(FLOATINGIP)).await?;
            let subnets: Vec<&str> = port
                .val
                .fixed_ips
                .iter()
                .map(|f| f.subnet_id.as_str())
                .collect();
            for fip in fips
                .iter()
                .filter(|f| f.val.router_id.as_deref() == Some(id))
            {
                if let Some(pid) = &fip.val.port_id {
                    let target: Rec<Port> = self.fetch(&mut tx, PORT, pid).await?;
                    if target
                        .val
                        .fixed_ips
                        .iter()
                        .any(|f| subnets.contains(&f.subnet_id.as_str()))
                    {
                        return Err(typed(409, "RouterInterfaceInUseByFloatingIP", format!("Router interface for subnet {} on router {id} cannot be deleted, as it is required by one or more floating IPs.", subnets.join(","))));
                    }
                }
            }
            tx.delete(&port.val.id).await.map_err(internal)?;
            self.commit(tx).await?;
            Ok(interface_info(id, &router.val.project_id, &port.val))
        })
        .await
    }

    // ---- floating IPs -----------------------------------------------------------------------

    /// The router that joins `fixed_ip`'s subnet to the external network, if any.
    async fn router_for(
        &self,
        tx: &mut NetTx,
        external_net: &str,
        port: &Port,
        fixed_ip: &str,
    ) -> CoreResult<String> {
        let subnet_id = port
            .fixed_ips
            .iter()
            .find(|f| f.ip_address == fixed_ip)
            .map(|f| f.subnet_id.clone())
            .ok_or_else(|| {
                fields::bad(format!(
                    "Port {} does not have fixed ip {fixed_ip}",
                    port.id
                ))
            })?;
        let routers: Vec<Rec<Router>> = Self::all_tx(tx, NetFilter::of(ROUTER)).await?;
        let ports: Vec<Rec<Port>> =
            Self::all_tx(tx, NetFilter::of(PORT).network(&port.network_id)).await?;
        for r in routers.iter().filter(|r| {
            r.val
                .gateway
                .as_ref()
                .is_some_and(|g| g.network_id == external_net)
        }) {
            if ports.iter().any(|p| {
                p.val.is_router_interface(&r.val.id)
                    && p.val.fixed_ips.iter().any(|f| f.subnet_id == subnet_id)
            }) {
                return Ok(r.val.id.clone());
            }
        }
        Err(typed(
            404,
            "ExternalGatewayForFloatingIPNotFound",
            format!("External network {external_net} is not reachable from subnet {subnet_id}.  Therefore, cannot associate Port {} with a Floating IP.", port.id),
        ))
    }

    async fn associate(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        fip: &mut FloatingIp,
        port_id: Option<&str>,
        fixed: Option<String>,
    ) -> CoreResult<()> {
        let Some(port_id) = port_id else {
            fip.port_id = None;
            fip.fixed_ip_address = None;
            fip.router_id = None;
            return Ok(());
        };
        let port: Rec<Port> = self.fetch(tx, PORT, port_id).await?;
        if !owns(ctx, &port.val.project_id) {
            return Err(not_found(PORT, port_id));
        }
        let fixed = match fixed {
            Some(ip) => ip,
            None => port.val.ipv4s().next().map(str::to_string).ok_or_else(|| {
                fields::bad(format!(
                    "Bad floatingip request: Port {port_id} does not have any IPv4 address."
                ))
            })?,
        };
        let router_id = self
            .router_for(tx, &fip.floating_network_id, &port.val, &fixed)
            .await?;
        let others: Vec<Rec<FloatingIp>> = Self::all_tx(tx, NetFilter::of(FLOATINGIP)).await?;
        if let Some(o) = others.iter().find(|o| {
            o.val.id != fip.id
                && o.val.port_id.as_deref() == Some(port_id)
                && o.val.fixed_ip_address.as_deref() == Some(&fixed)
        }) {
            return Err(typed(
                409,
                "FloatingIPPortAlreadyAssociated",
                format!("Cannot associate floating IP {} ({}) with port {port_id} using fixed IP {fixed}, as that fixed IP already has a floating IP on external network {}.", fip.floating_ip_address, fip.id, o.val.floating_network_id),
            ));
        }
        fip.port_id = Some(port_id.to_string());
        fip.fixed_ip_address = Some(fixed);
        fip.router_id = Some(router_id);
        Ok(())
    }

    pub async fn create_floatingip(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_floatingip")?;
        let f = Fields::new(
            body,
            &[
                "floating_network_id",
                "floating_ip_address",
                "port_id",
                "fixed_ip_address",
                "subnet_id",
                "description",
                "project_id",
                "tenant_id",
                "dns_name",
                "dns_domain",
                "qos_policy_id",
            ],
        )?;
        let project_id = owner_for_create(ctx, &f)?;
        let network_id = f.string("floating_network_id", 64)?.ok_or_else(|| {
            fields::bad(
                "Failed to parse request. Required attribute 'floating_network_id' not specified",
            )
        })?;
        if f.has("floating_ip_address") && !ctx.is_admin() {
            return Err(forbidden("create_floatingip:floating_ip_address"));
        }
        let (f, project_id, network_id) = (&f, &project_id, &network_id);
        let id = self.write("create floating IP", |mut tx| async move {
            let network: Rec<Network> = self.fetch(&mut tx, NETWORK, network_id).await?;
            if !network.val.external {
                return Err(typed(
                    400,
                    "BadRequest",
                    format!(
                        "Bad floatingip request: Network {network_id} is not a valid external network."
                    ),
                ));
            }
            self.check_quota(&mut tx, FLOATINGIP, project_id, 1)
                .await?;
            let id = uuid::Uuid::new_v4().to_string();
            let fixed_ips = match (
                f.string("floating_ip_address", 64)?,
                f.string("subnet_id", 64)?,
            ) {
                (Some(ip), Some(sid)) => Some(json!([{"ip_address": ip, "subnet_id": sid}])),
                (Some(ip), None) => Some(json!([{"ip_address": ip}])),
                (None, Some(sid)) => Some(json!([{"subnet_id": sid}])),
                (None, None) => None,
            };
            let fport_id = self
                .create_service_port(
                    &mut tx,
                    ctx,
                    "",
                    network_id,
                    &id,
                    OWNER_FLOATINGIP,
                    fixed_ips,
                )
                .await?;
            let fport: Rec<Port> = self.fetch(&mut tx, PORT, &fport_id).await?;
            let address = fport
                .val
                .ipv4s()
                .next()
                .map(str::to_string)
                .ok_or_else(|| internal("floating port without address"))?;
            let mut fip = FloatingIp {
                id: id.clone(),
                description: f.string("description", 255)?.unwrap_or_default(),
                project_id: project_id.clone(),
                floating_network_id: network_id.clone(),
                floating_ip_address: address,
                floating_port_id: fport_id,
                port_id: None,
                fixed_ip_address: None,
                router_id: None,
            };
            let port_id = f.nullable_string("port_id", 64)?.flatten();
            self.associate(
                &mut tx,
                ctx,
                &mut fip,
                port_id.as_deref(),
                f.string("fixed_ip_address", 64)?,
            )
            .await?;
            tx.insert(&new_row(
                FLOATINGIP,
                &id,
                project_id,
                Some(network_id),
                fip.port_id.as_deref(),
                "",
                &fip,
            )?)
            .await
            .map_err(store_err)?;
            self.commit(tx).await?;
            Ok(id)
        })
        .await?;
        self.show_floatingip(ctx, &id).await
    }

    pub async fn show_floatingip(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let f: Rec<FloatingIp> = self.get_rec(FLOATINGIP, id).await?;
        if !owns(ctx, &f.val.project_id) {
            return Err(not_found(FLOATINGIP, id));
        }
        let port = match &f.val.port_id {
            Some(p) => self.get_rec::<Port>(PORT, p).await.ok().map(|p| p.val),
            None => None,
        };
        Ok(floatingip_view(&f, port.as_ref()))
    }

    pub async fn list_floatingips(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        let fips: Vec<Rec<FloatingIp>> = self.all(NetFilter::of(FLOATINGIP)).await?;
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        Ok(fips
            .iter()
            .filter(|f| owns(ctx, &f.val.project_id))
            .map(|f| {
                let port = f
                    .val
                    .port_id
                    .as_ref()
                    .and_then(|pid| ports.iter().find(|p| &p.val.id == pid))
                    .map(|p| &p.val);
                floatingip_view(f, port)
            })
            .collect())
    }

    pub async fn update_floatingip(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "update_floatingip")?;
        let f = Fields::new(
            body,
            &[
                "port_id",
                "fixed_ip_address",
                "description",
                "qos_policy_id",
            ],
        )?;
        let f = &f;
        self.write("update floating IP", |mut tx| async move {
            let mut fip: Rec<FloatingIp> = self.fetch(&mut tx, FLOATINGIP, id).await?;
            if !owns(ctx, &fip.val.project_id) {
                return Err(not_found(FLOATINGIP, id));
            }
            if let Some(d) = f.string("description", 255)? {
                fip.val.description = d;
            }
            if f.has("port_id") {
                let port_id = f.nullable_string("port_id", 64)?.flatten();
                self.associate(
                    &mut tx,
                    ctx,
                    &mut fip.val,
                    port_id.as_deref(),
                    f.string("fixed_ip_address", 64)?,
                )
                .await?;
            }
            let row = updated_row(&fip.row, &fip.val, "", fip.val.port_id.as_deref())?;
            tx.update(&row).await.map_err(store_err)?;
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.show_floatingip(ctx, id).await
    }

    pub async fn delete_floatingip(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_floatingip")?;
        self.write("delete floating IP", |mut tx| async move {
            let fip: Rec<FloatingIp> = self.fetch(&mut tx, FLOATINGIP, id).await?;
            if !owns(ctx, &fip.val.project_id) {
                return Err(not_found(FLOATINGIP, id));
            }
            self.delete_port_tx(&mut tx, &fip.val.floating_port_id)
                .await?;
            tx.delete(id).await.map_err(internal)?;
            self.commit(tx).await
        })
        .await
    }
}

impl NetworkService {
    /// A port the service makes for a router gateway or interface or a floating IP: no port
    /// security, owned by `device_id`, created with admin rights on the caller's behalf.
    #[allow(clippy::too_many_arguments)]
    async fn create_service_port(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        project_id: &str,
        network_id: &str,
        device_id: &str,
        owner: &str,
        fixed_ips: Option<Value>,
    ) -> CoreResult<String> {
        let mut body = Map::new();
        body.insert("device_id".into(), json!(device_id));
        body.insert("device_owner".into(), json!(owner));
        body.insert("port_security_enabled".into(), json!(false));
        if let Some(ips) = fixed_ips {
            body.insert("fixed_ips".into(), ips);
        }
        let f = Fields::new(
            &body,
            &[
                "device_id",
                "device_owner",
                "port_security_enabled",
                "fixed_ips",
            ],
        )?;
        self.create_port_tx(
            tx,
            &service_ctx(ctx),
            project_id,
            network_id,
            &f,
            super::ports::MadeBy::Service,
        )
        .await
    }
}

/// The caller with admin rights, for ports the service makes on the caller's behalf (router
/// gateway and interface ports, floating IP ports).
fn service_ctx(ctx: &AuthContext) -> AuthContext {
    let mut c = ctx.clone();
    if !c.is_admin() {
        c.roles.push(crate::policy::RoleRef {
            id: String::new(),
            name: "admin".into(),
        });
    }
    c
}

fn interface_info(router_id: &str, project_id: &str, p: &Port) -> Value {
    let subnets: Vec<&str> = p.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
    json!({
        "id": router_id,
        "subnet_id": subnets.first(),
        "subnet_ids": subnets,
        "port_id": p.id,
        "network_id": p.network_id,
        "project_id": project_id,
        "tenant_id": project_id,
    })
}

pub(crate) fn router_view(r: &Rec<Router>, gw_port: Option<&Port>, ctx: &AuthContext) -> Value {
    let v = &r.val;
    let gateway = v.gateway.as_ref().map(|g| {
        json!({
            "network_id": g.network_id,
            "enable_snat": g.enable_snat,
            "external_fixed_ips": gw_port.map(|p| p.fixed_ips.clone()).unwrap_or_default(),
        })
    });
    let mut body = json!({
        "id": v.id,
        "name": v.name,
        "description": v.description,
        "project_id": v.project_id,
        "admin_state_up": v.admin_state_up,
        "status": "ACTIVE",
        "external_gateway_info": gateway,
        "routes": [],
        "availability_zone_hints": [],
        "availability_zones": ["nova"],
        "flavor_id": null,
    });
    if ctx.is_admin() {
        if let Some(o) = body.as_object_mut() {
            o.insert("distributed".into(), json!(false));
            o.insert("ha".into(), json!(false));
        }
    }
    standard(&r.row, body)
}

pub(crate) fn floatingip_view(f: &Rec<FloatingIp>, port: Option<&Port>) -> Value {
    let v = &f.val;
    let details = port.map(|p| {
        json!({
            "name": p.name,
            "network_id": p.network_id,
            "mac_address": p.mac_address,
            "admin_state_up": p.admin_state_up,
            "status": if p.host.is_empty() { "DOWN" } else { "ACTIVE" },
            "device_id": p.device_id,
            "device_owner": p.device_owner,
        })
    });
    standard(
        &f.row,
        json!({
            "id": v.id,
            "description": v.description,
            "project_id": v.project_id,
            "floating_network_id": v.floating_network_id,
            "floating_ip_address": v.floating_ip_address,
            "fixed_ip_address": v.fixed_ip_address,
            "port_id": v.port_id,
            "router_id": v.router_id,
            "status": if v.port_id.is_some() { "ACTIVE" } else { "DOWN" },
            "port_details": details,
            "port_forwardings": [],
            "qos_policy_id": null,
        }),
    )
}
