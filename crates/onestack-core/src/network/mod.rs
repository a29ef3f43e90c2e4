//! Networking: Neutron's model (networks, subnets, ports, routers, floating IPs, security groups),
//! its policy and IP allocation, and what each host must build of it (`proto`).
//!
//! Every write runs in one serialized store transaction (`NetTx`), so checks such as "this address
//! is free" or "no port uses this network" hold when the write commits. Writes go through
//! `NetworkService::write`, which runs a write again, whole, when its transaction failed
//! transiently.

pub mod bootstrap;
pub mod fields;
pub mod hoststate;
pub mod ipam;
pub mod model;
mod orphans;
pub mod ports;
pub mod proto;
pub mod routers;
pub mod secgroups;
pub mod subnets;

use crate::policy::{forbidden, AuthContext};
use crate::{CoreError, CoreResult};
use model::*;
use onestack_store::{NetFilter, NetResource, NetTx, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// MTU of the physical network between hosts (Neutron's `global_physnet_mtu`): external
    /// networks get it, tenant networks (VXLAN between hosts) 50 bytes less.
    pub mtu: u32,
    /// Prepended to `qdhcp-…`/`qrouter-…` namespace names (tests use a unique one).
    pub namespace_prefix: String,
    /// Neutron's caps on what one port or subnet may hold (its defaults: 5, 20, 5).
    pub max_fixed_ips_per_port: usize,
    pub max_subnet_host_routes: usize,
    pub max_dns_nameservers: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mtu: 1500,
            namespace_prefix: String::new(),
            max_fixed_ips_per_port: 5,
            max_subnet_host_routes: 20,
            max_dns_nameservers: 5,
        }
    }
}

/// Bytes a VXLAN encapsulation adds (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

impl NetworkConfig {
    /// Largest MTU a network of this kind can carry between hosts.
    pub fn max_mtu(&self, external: bool) -> u32 {
        if external {
            self.mtu
        } else {
            self.mtu.saturating_sub(VXLAN_OVERHEAD)
        }
    }
}

pub struct NetworkService {
    store: Store,
    cfg: NetworkConfig,
    /// Wakes long-polling agents after a write on this controller.
    changed: tokio::sync::Notify,
}

/// Kinds as stored.
pub const NETWORK: &str = "network";
pub const SUBNET: &str = "subnet";
pub const PORT: &str = "port";
pub const ROUTER: &str = "router";
pub const FLOATINGIP: &str = "floatingip";
pub const SECURITY_GROUP: &str = "security_group";
pub const SECURITY_GROUP_RULE: &str = "security_group_rule";
pub const QUOTA: &str = "quota";

pub(crate) fn typed(status: u16, kind: &'static str, message: impl Into<String>) -> CoreError {
    CoreError::Typed {
        status,
        kind,
        message: message.into(),
    }
}

pub(crate) fn not_found(kind: &str, id: &str) -> CoreError {
    match kind {
        NETWORK => typed(
            404,
            "NetworkNotFound",
            format!("Network {id} could not be found."),
        ),
        SUBNET => typed(
            404,
            "SubnetNotFound",
            format!("Subnet {id} could not be found."),
        ),
        PORT => typed(
            404,
            "PortNotFound",
            format!("Port {id} could not be found."),
        ),
        ROUTER => typed(
            404,
            "RouterNotFound",
            format!("Router {id} could not be found."),
        ),
        FLOATINGIP => typed(
            404,
            "FloatingIPNotFound",
            format!("Floating IP {id} could not be found"),
        ),
        SECURITY_GROUP => typed(
            404,
            "SecurityGroupNotFound",
            format!("Security group {id} does not exist"),
        ),
        SECURITY_GROUP_RULE => typed(
            404,
            "SecurityGroupRuleNotFound",
            format!("Security group rule {id} does not exist"),
        ),
        _ => typed(404, "HTTPNotFound", "The resource could not be found."),
    }
}

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(e.to_string())
}

fn store_err(e: StoreError) -> CoreError {
    match e {
        StoreError::Conflict(m) => typed(409, "HTTPConflict", format!("Conflict: {m}")),
        other => internal(other),
    }
}

/// A decoded record with its row (revision, timestamps).
#[derive(Clone, Debug)]
pub struct Rec<T> {
    pub row: NetResource,
    pub val: T,
}

pub(crate) fn decode<T: DeserializeOwned>(row: NetResource) -> CoreResult<Rec<T>> {
    let val = serde_json::from_str(&row.body).map_err(internal)?;
    Ok(Rec { row, val })
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn new_row<T: Serialize>(
    kind: &str,
    id: &str,
    project_id: &str,
    network_id: Option<&str>,
    device_id: Option<&str>,
    name: &str,
    val: &T,
) -> CoreResult<NetResource> {
    let t = now();
    Ok(NetResource {
        id: id.to_string(),
        kind: kind.to_string(),
        project_id: project_id.to_string(),
        network_id: network_id.map(str::to_string),
        device_id: device_id.map(str::to_string),
        name: name.to_string(),
        unique_key: None,
        seq: None,
        body: serde_json::to_string(val).map_err(internal)?,
        revision: 1,
        created_at: t.clone(),
        updated_at: t,
    })
}

/// The row for an updated value: body replaced, revision bumped.
pub(crate) fn updated_row<T: Serialize>(
    row: &NetResource,
    val: &T,
    name: &str,
    device_id: Option<&str>,
) -> CoreResult<NetResource> {
    let mut r = row.clone();
    r.body = serde_json::to_string(val).map_err(internal)?;
    r.name = name.to_string();
    r.device_id = device_id.map(str::to_string);
    r.revision += 1;
    r.updated_at = now();
    Ok(r)
}

/// Standard attributes every resource shows.
pub(crate) fn standard(row: &NetResource, mut body: Value) -> Value {
    if let Some(o) = body.as_object_mut() {
        o.insert("tenant_id".into(), json!(row.project_id));
        o.insert("revision_number".into(), json!(row.revision));
        o.insert("created_at".into(), json!(row.created_at));
        o.insert("updated_at".into(), json!(row.updated_at));
        o.insert("tags".into(), json!([]));
    }
    body
}

/// Who may write: `member` (or admin) on the project; a `reader` only reads.
pub(crate) fn require_writer(ctx: &AuthContext, action: &str) -> CoreResult<()> {
    ctx.require_member(action)
}

pub(crate) fn ctx_project(ctx: &AuthContext) -> CoreResult<String> {
    ctx.project_id()
        .map(str::to_string)
        .ok_or_else(|| CoreError::Forbidden("A project-scoped token is required.".into()))
}

/// The project a new resource belongs to: the caller's, or (admin only) the one asked for.
pub(crate) fn owner_for_create(ctx: &AuthContext, f: &fields::Fields) -> CoreResult<String> {
    let asked = match (f.string("project_id", 255)?, f.string("tenant_id", 255)?) {
        (Some(p), Some(t)) if p != t => {
            return Err(fields::bad("'project_id' and 'tenant_id' do not match"))
        }
        (p, t) => p.or(t),
    };
    let mine = ctx_project(ctx)?;
    match asked {
        Some(p) if p != mine => {
            if ctx.is_admin() {
                Ok(p)
            } else {
                Err(typed(
                    403,
                    "HTTPForbidden",
                    "Specifying 'project_id' or 'tenant_id' other than the authenticated project in request requires admin privileges",
                ))
            }
        }
        _ => Ok(mine),
    }
}

pub(crate) fn owns(ctx: &AuthContext, project_id: &str) -> bool {
    ctx.is_admin() || ctx.project_id() == Some(project_id)
}

impl NetworkService {
    pub fn new(store: Store, cfg: NetworkConfig) -> Self {
        NetworkService {
            store,
            cfg,
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    pub(crate) async fn tx(&self) -> CoreResult<NetTx> {
        self.store.net_tx().await.map_err(internal)
    }

    /// Commits and wakes the agents.
    pub(crate) async fn commit(&self, tx: NetTx) -> CoreResult<()> {
        tx.commit().await.map_err(store_err)?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Runs one network write: `f` gets a new transaction and commits it (`self.commit`). When
    /// the transaction failed transiently (a deadlock, a busy database) nothing of it committed,
    /// and the whole write runs again on a new one (`Store::net_write`), so `f` reads and
    /// checks everything afresh. `f` must do nothing that outlives a rolled-back attempt.
    pub(crate) async fn write<T, F, Fut>(&self, what: &str, f: F) -> CoreResult<T>
    where
        F: FnMut(NetTx) -> Fut,
        Fut: std::future::Future<Output = CoreResult<T>>,
    {
        self.store.net_write(what, f).await
    }

    pub(crate) async fn fetch<T: DeserializeOwned>(
        &self,
        tx: &mut NetTx,
        kind: &str,
        id: &str,
    ) -> CoreResult<Rec<T>> {
        match tx.get(id).await {
            Ok(row) if row.kind == kind => decode(row),
            Ok(_) | Err(StoreError::NotFound) => Err(not_found(kind, id)),
            Err(e) => Err(internal(e)),
        }
    }

    pub(crate) async fn get_rec<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> CoreResult<Rec<T>> {
        match self.store.net_get(id).await {
            Ok(row) if row.kind == kind => decode(row),
            Ok(_) | Err(StoreError::NotFound) => Err(not_found(kind, id)),
            Err(e) => Err(internal(e)),
        }
    }

    pub(crate) async fn all<T: DeserializeOwned>(
        &self,
        filter: NetFilter<'_>,
    ) -> CoreResult<Vec<Rec<T>>> {
        let rows = self.store.net_list(&filter).await.map_err(internal)?;
        rows.into_iter().map(decode).collect()
    }

    pub(crate) async fn all_tx<T: DeserializeOwned>(
        tx: &mut NetTx,
        filter: NetFilter<'_>,
    ) -> CoreResult<Vec<Rec<T>>> {
        let rows = tx.list(&filter).await.map_err(internal)?;
        rows.into_iter().map(decode).collect()
    }

    /// Waits until the network generation passes `after` or `timeout` elapses.
    pub async fn wait_change(&self, after: i64, timeout: std::time::Duration) -> CoreResult<i64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let g = self.store.net_generation().await.map_err(internal)?;
            if g > after {
                return Ok(g);
            }
            // Another controller may write too: poll the generation at least every second.
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(std::time::Duration::from_secs(1));
            if step.is_zero() {
                return Ok(g);
            }
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    // ---- networks -------------------------------------------------------------------------

    /// Nova's `network:attach_external_network` (admin): a server goes straight onto an
    /// external network only for an admin, unless that network is also shared. An unknown
    /// network passes here (the port allocation reports it).
    pub async fn check_server_network(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        if ctx.is_admin() {
            return Ok(());
        }
        match self.get_rec::<Network>(NETWORK, id).await {
            Ok(n) if n.val.external && !n.val.shared => Err(typed(
                403,
                "ExternalNetworkAttachForbidden",
                format!("It is not allowed to create an interface on external network {id}"),
            )),
            Ok(_) => Ok(()),
            Err(CoreError::Typed { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn can_see_network(ctx: &AuthContext, n: &Network) -> bool {
        owns(ctx, &n.project_id) || n.shared || n.external
    }

    pub(crate) async fn visible_network(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        id: &str,
    ) -> CoreResult<Rec<Network>> {
        let n: Rec<Network> = self.fetch(tx, NETWORK, id).await?;
        if Self::can_see_network(ctx, &n.val) {
            Ok(n)
        } else {
            Err(not_found(NETWORK, id))
        }
    }

    async fn check_quota(
        &self,
        tx: &mut NetTx,
        kind: &'static str,
        project_id: &str,
        adding: i64,
    ) -> CoreResult<()> {
        let limit = self.quota_limit(tx, project_id, kind).await?;
        if limit < 0 {
            return Ok(());
        }
        let used = tx
            .list(&NetFilter::of(kind).project(project_id))
            .await
            .map_err(internal)?
            .len() as i64;
        if used + adding > limit {
            return Err(typed(
                409,
                "OverQuota",
                format!("Quota exceeded for resources: ['{kind}']."),
            ));
        }
        Ok(())
    }

    pub async fn create_network(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_network")?;
        let f = fields::Fields::new(
            body,
            &[
                "name",
                "description",
                "admin_state_up",
                "shared",
                "router:external",
                "mtu",
                "port_security_enabled",
                "project_id",
                "tenant_id",
                "availability_zone_hints",
                "provider:network_type",
                "provider:physical_network",
                "provider:segmentation_id",
                "dns_domain",
                "qos_policy_id",
                "is_default",
            ],
        )?;
        let project_id = owner_for_create(ctx, &f)?;
        let shared = f.boolean("shared")?.unwrap_or(false);
        let external = f.boolean("router:external")?.unwrap_or(false);
        if (shared || external) && !ctx.is_admin() {
            return Err(forbidden(if shared {
                "create_network:shared"
            } else {
                "create_network:router:external"
            }));
        }
        for k in [
            "provider:network_type",
            "provider:physical_network",
            "provider:segmentation_id",
        ] {
            if f.has(k) && !ctx.is_admin() {
                return Err(forbidden(&format!("create_network:{k}")));
            }
        }
        // `create_network:is_default` (admin) is checked when set to other than its default.
        if f.boolean("is_default")? == Some(true) && !ctx.is_admin() {
            return Err(forbidden("create_network:is_default"));
        }
        // Tenant networks are VXLAN segments (VNI allocated here), external ones flat.
        if let Some(t) = f.string("provider:network_type", 64)? {
            let expected = if external { "flat" } else { "vxlan" };
            if t != expected && t != "local" {
                return Err(fields::bad(format!(
                    "Invalid input for operation: network_type value '{t}' not supported \
                     (OneStack networks are {expected} when router:external is {external})."
                )));
            }
        }
        if f.has("provider:segmentation_id") {
            return Err(fields::bad(
                "Invalid input for operation: provider:segmentation_id is allocated by OneStack \
                 and cannot be chosen.",
            ));
        }
        let max_mtu = self.cfg.max_mtu(external);
        let mtu = f
            .integer("mtu", 68, 9000)?
            .map(|m| m as u32)
            .unwrap_or(max_mtu);
        if mtu > max_mtu {
            return Err(fields::bad(format!(
                "Invalid input for operation: Requested MTU is too big, maximum is {max_mtu}."
            )));
        }
        let (f, project_id) = (&f, &project_id);
        let id = self
            .write("create network", |mut tx| async move {
                self.check_quota(&mut tx, NETWORK, project_id, 1).await?;
                let seq = tx.next_seq(NETWORK).await.map_err(internal)?;
                let id = uuid::Uuid::new_v4().to_string();
                let n = Network {
                    id: id.clone(),
                    name: f.string("name", 255)?.unwrap_or_default(),
                    description: f.string("description", 255)?.unwrap_or_default(),
                    project_id: project_id.clone(),
                    admin_state_up: f.boolean("admin_state_up")?.unwrap_or(true),
                    shared,
                    external,
                    mtu,
                    port_security_enabled: f.boolean("port_security_enabled")?.unwrap_or(true),
                    zone: (seq % 65_000) as u16 + 1,
                };
                let mut row = new_row(NETWORK, &id, project_id, Some(&id), None, &n.name, &n)?;
                row.seq = Some(seq);
                tx.insert(&row).await.map_err(store_err)?;
                self.commit(tx).await?;
                Ok(id)
            })
            .await?;
        self.show_network(ctx, &id).await
    }

    pub(crate) async fn render_network(
        &self,
        n: &Rec<Network>,
        ctx: &AuthContext,
    ) -> CoreResult<Value> {
        let subnets = self
            .store
            .net_list(&NetFilter::of(SUBNET).network(&n.val.id))
            .await
            .map_err(internal)?;
        Ok(network_view(
            n,
            subnets.iter().map(|s| s.id.clone()).collect(),
            ctx,
        ))
    }

    pub async fn show_network(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let n: Rec<Network> = self.get_rec(NETWORK, id).await?;
        if !Self::can_see_network(ctx, &n.val) {
            return Err(not_found(NETWORK, id));
        }
        self.render_network(&n, ctx).await
    }

    pub async fn list_networks(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        let nets: Vec<Rec<Network>> = self.all(NetFilter::of(NETWORK)).await?;
        let subnets = self
            .store
            .net_list(&NetFilter::of(SUBNET))
            .await
            .map_err(internal)?;
        Ok(nets
            .iter()
            .filter(|n| Self::can_see_network(ctx, &n.val))
            .map(|n| {
                let ids = subnets
                    .iter()
                    .filter(|s| s.network_id.as_deref() == Some(&n.val.id))
                    .map(|s| s.id.clone())
                    .collect();
                network_view(n, ids, ctx)
            })
            .collect())
    }

    pub async fn update_network(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "update_network")?;
        let f = fields::Fields::new(
            body,
            &[
                "name",
                "description",
                "admin_state_up",
                "shared",
                "router:external",
                "mtu",
                "port_security_enabled",
                "availability_zone_hints",
                "dns_domain",
                "qos_policy_id",
                "is_default",
            ],
        )?;
        let f = &f;
        self.write("update network", |mut tx| async move {
            let mut n = self.visible_network(&mut tx, ctx, id).await?;
            if !owns(ctx, &n.val.project_id) {
                return Err(forbidden("update_network"));
            }
            // `update_network:is_default` (admin) is checked whenever the body names it.
            if f.has("is_default") && !ctx.is_admin() {
                return Err(forbidden("update_network:is_default"));
            }
            if let Some(v) = f.string("name", 255)? {
                n.val.name = v;
            }
            if let Some(v) = f.string("description", 255)? {
                n.val.description = v;
            }
            if let Some(v) = f.boolean("admin_state_up")? {
                n.val.admin_state_up = v;
            }
            if let Some(v) = f.boolean("port_security_enabled")? {
                n.val.port_security_enabled = v;
            }
            if let Some(v) = f.integer("mtu", 68, 9000)? {
                let max_mtu = self.cfg.max_mtu(n.val.external);
                if v as u32 > max_mtu {
                    return Err(fields::bad(format!(
                        "Invalid input for operation: Requested MTU is too big, maximum is {max_mtu}."
                    )));
                }
                n.val.mtu = v as u32;
            }
            for (key, slot) in [
                ("shared", &mut n.val.shared),
                ("router:external", &mut n.val.external),
            ] {
                if let Some(v) = f.boolean(key)? {
                    if v != *slot && !ctx.is_admin() {
                        return Err(forbidden(&format!("update_network:{key}")));
                    }
                    *slot = v;
                }
            }
            let row = updated_row(&n.row, &n.val, &n.val.name, None)?;
            tx.update(&row).await.map_err(store_err)?;
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.show_network(ctx, id).await
    }

    pub async fn delete_network(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_network")?;
        self.write("delete network", |mut tx| async move {
            let n = self.visible_network(&mut tx, ctx, id).await?;
            if !owns(ctx, &n.val.project_id) {
                return Err(forbidden("delete_network"));
            }
            let ports: Vec<Rec<Port>> = Self::all_tx(&mut tx, NetFilter::of(PORT).network(id)).await?;
            if ports.iter().any(|p| !p.val.is_dhcp_server()) {
                return Err(typed(
                    409,
                    "NetworkInUse",
                    format!(
                        "Unable to complete operation on network {id}. There are one or more ports still in use on the network."
                    ),
                ));
            }
            for p in &ports {
                tx.delete(&p.val.id).await.map_err(internal)?;
            }
            let subnets = tx
                .list(&NetFilter::of(SUBNET).network(id))
                .await
                .map_err(internal)?;
            for s in subnets {
                tx.delete(&s.id).await.map_err(internal)?;
            }
            tx.delete(id).await.map_err(internal)?;
            self.commit(tx).await
        })
        .await
    }
}

pub(crate) fn network_view(n: &Rec<Network>, subnets: Vec<String>, ctx: &AuthContext) -> Value {
    let v = &n.val;
    let mut body = json!({
        "id": v.id,
        "name": v.name,
        "description": v.description,
        "project_id": v.project_id,
        "admin_state_up": v.admin_state_up,
        "status": "ACTIVE",
        "subnets": subnets,
        "shared": v.shared,
        "router:external": v.external,
        "mtu": v.mtu,
        "port_security_enabled": v.port_security_enabled,
        "availability_zone_hints": [],
        "availability_zones": ["nova"],
        "ipv4_address_scope": null,
        "ipv6_address_scope": null,
        "l2_adjacency": true,
        "is_default": false,
    });
    if ctx.is_admin() {
        if let Some(o) = body.as_object_mut() {
            if v.external {
                o.insert("provider:network_type".into(), json!("flat"));
                o.insert("provider:physical_network".into(), json!("public"));
                o.insert("provider:segmentation_id".into(), json!(null));
            } else {
                o.insert("provider:network_type".into(), json!("vxlan"));
                o.insert("provider:physical_network".into(), json!(null));
                o.insert("provider:segmentation_id".into(), json!(v.vni()));
            }
        }
    }
    standard(&n.row, body)
}
