//! Security groups and their rules, and network quotas.

use super::fields::{self, Fields};
use super::model::*;
use super::*;

const RULE_FIELDS: &[&str] = &[
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "remote_address_group_id",
    "description",
    "project_id",
    "tenant_id",
];

impl NetworkService {
    /// The project's `default` group, created on first need with Neutron's four rules: all
    /// egress, and ingress from members of the group itself.
    pub(crate) async fn ensure_default_sg(
        &self,
        tx: &mut NetTx,
        project_id: &str,
    ) -> CoreResult<String> {
        let groups: Vec<Rec<SecurityGroup>> =
            Self::all_tx(tx, NetFilter::of(SECURITY_GROUP).project(project_id)).await?;
        if let Some(g) = groups.iter().find(|g| g.val.name == "default") {
            return Ok(g.val.id.clone());
        }
        let id = uuid::Uuid::new_v4().to_string();
        let g = SecurityGroup {
            id: id.clone(),
            name: "default".into(),
            description: "Default security group".into(),
            project_id: project_id.to_string(),
            stateful: true,
        };
        let mut row = new_row(SECURITY_GROUP, &id, project_id, None, None, "default", &g)?;
        row.unique_key = Some(format!("default-sg:{project_id}"));
        tx.insert(&row).await.map_err(store_err)?;
        for (direction, ethertype, remote) in [
            ("egress", "IPv4", None),
            ("egress", "IPv6", None),
            ("ingress", "IPv4", Some(id.clone())),
            ("ingress", "IPv6", Some(id.clone())),
        ] {
            let r = SecurityGroupRule {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: project_id.to_string(),
                security_group_id: id.clone(),
                direction: direction.into(),
                ethertype: ethertype.into(),
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote_ip_prefix: None,
                remote_group_id: remote,
                description: String::new(),
            };
            self.insert_rule(tx, &r).await?;
        }
        Ok(id)
    }

    async fn insert_rule(&self, tx: &mut NetTx, r: &SecurityGroupRule) -> CoreResult<()> {
        let row = new_row(
            SECURITY_GROUP_RULE,
            &r.id,
            &r.project_id,
            None,
            Some(&r.security_group_id),
            "",
            r,
        )?;
        tx.insert(&row).await.map_err(store_err)
    }

    /// A group name or id of `project_id` → its id (compute's `security_groups`).
    pub(crate) async fn resolve_group(
        &self,
        tx: &mut NetTx,
        project_id: &str,
        name_or_id: &str,
    ) -> CoreResult<String> {
        if name_or_id == "default" {
            return self.ensure_default_sg(tx, project_id).await;
        }
        let groups: Vec<Rec<SecurityGroup>> =
            Self::all_tx(tx, NetFilter::of(SECURITY_GROUP).project(project_id)).await?;
        let hits: Vec<&Rec<SecurityGroup>> = groups
            .iter()
            .filter(|g| g.val.id == name_or_id || g.val.name == name_or_id)
            .collect();
        match hits.as_slice() {
            [one] => Ok(one.val.id.clone()),
            [] => Err(typed(
                400,
                "SecurityGroupNotFound",
                format!("Security group {name_or_id} not found for project {project_id}."),
            )),
            _ => Err(typed(
                409,
                "DuplicateSecurityGroup",
                format!("Multiple security groups named {name_or_id}; use an id."),
            )),
        }
    }

    /// Every id must be a group the port's project may use.
    pub(crate) async fn check_groups(
        &self,
        tx: &mut NetTx,
        ctx: &AuthContext,
        project_id: &str,
        ids: &[String],
    ) -> CoreResult<()> {
        for id in ids {
            let g: Rec<SecurityGroup> = self.fetch(tx, SECURITY_GROUP, id).await?;
            if g.val.project_id != project_id && !ctx.is_admin() {
                return Err(not_found(SECURITY_GROUP, id));
            }
        }
        Ok(())
    }

    pub async fn create_security_group(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_security_group")?;
        let f = Fields::new(
            body,
            &["name", "description", "project_id", "tenant_id", "stateful"],
        )?;
        let project_id = owner_for_create(ctx, &f)?;
        let name = f.string("name", 255)?.unwrap_or_default();
        if name == "default" {
            return Err(typed(
                409,
                "SecurityGroupDefaultAlreadyExists",
                "Default security group already exists.",
            ));
        }
        if f.boolean("stateful")? == Some(false) {
            return Err(fields::bad("Stateless security groups are not supported."));
        }
        let (f, project_id, name) = (&f, &project_id, &name);
        let id = self
            .write("create security group", |mut tx| async move {
                self.ensure_default_sg(&mut tx, project_id).await?;
                self.check_quota(&mut tx, SECURITY_GROUP, project_id, 1)
                    .await?;
                let id = uuid::Uuid::new_v4().to_string();
                let g = SecurityGroup {
                    id: id.clone(),
                    name: name.clone(),
                    description: f.string("description", 255)?.unwrap_or_default(),
                    project_id: project_id.clone(),
                    stateful: true,
                };
                tx.insert(&new_row(
                    SECURITY_GROUP,
                    &id,
                    project_id,
                    None,
                    None,
                    name,
                    &g,
                )?)
                .await
                .map_err(store_err)?;
                for ethertype in ["IPv4", "IPv6"] {
                    let r = SecurityGroupRule {
                        id: uuid::Uuid::new_v4().to_string(),
                        project_id: project_id.clone(),
                        security_group_id: id.clone(),
                        direction: "egress".into(),
                        ethertype: ethertype.into(),
                        protocol: None,
                        port_range_min: None,
                        port_range_max: None,
                        remote_ip_prefix: None,
                        remote_group_id: None,
                        description: String::new(),
                    };
                    self.insert_rule(&mut tx, &r).await?;
                }
                self.commit(tx).await?;
                Ok(id)
            })
            .await?;
        self.show_security_group(ctx, &id).await
    }

    async fn group_view(&self, g: &Rec<SecurityGroup>) -> CoreResult<Value> {
        let rules: Vec<Rec<SecurityGroupRule>> = self
            .all(NetFilter::of(SECURITY_GROUP_RULE).device(&g.val.id))
            .await?;
        Ok(security_group_view(g, &rules))
    }

    pub async fn show_security_group(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let g: Rec<SecurityGroup> = self.get_rec(SECURITY_GROUP, id).await?;
        if !owns(ctx, &g.val.project_id) {
            return Err(not_found(SECURITY_GROUP, id));
        }
        self.group_view(&g).await
    }

    pub async fn list_security_groups(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        if let Some(p) = ctx.project_id() {
            if ctx.is_member() {
                self.write("ensure default security group", |mut tx| async move {
                    self.ensure_default_sg(&mut tx, p).await?;
                    self.commit(tx).await?;
                    Ok(())
                })
                .await?;
            }
        }
        let groups: Vec<Rec<SecurityGroup>> = self.all(NetFilter::of(SECURITY_GROUP)).await?;
        let rules: Vec<Rec<SecurityGroupRule>> =
            self.all(NetFilter::of(SECURITY_GROUP_RULE)).await?;
        Ok(groups
            .iter()
            .filter(|g| owns(ctx, &g.val.project_id))
            .map(|g| {
                let mine: Vec<Rec<SecurityGroupRule>> = rules
                    .iter()
                    .filter(|r| r.val.security_group_id == g.val.id)
                    .cloned()
                    .collect();
                security_group_view(g, &mine)
            })
            .collect())
    }

    pub async fn update_security_group(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "update_security_group")?;
        let f = Fields::new(body, &["name", "description", "stateful"])?;
        let f = &f;
        self.write("update security group", |mut tx| async move {
            let mut g: Rec<SecurityGroup> = self.fetch(&mut tx, SECURITY_GROUP, id).await?;
            if !owns(ctx, &g.val.project_id) {
                return Err(not_found(SECURITY_GROUP, id));
            }
            if let Some(name) = f.string("name", 255)? {
                if g.val.name == "default" && name != "default" {
                    return Err(typed(
                        409,
                        "SecurityGroupCannotUpdateDefault",
                        "Updating default security group not allowed.",
                    ));
                }
                g.val.name = name;
            }
            if let Some(d) = f.string("description", 255)? {
                g.val.description = d;
            }
            let row = updated_row(&g.row, &g.val, &g.val.name, None)?;
            tx.update(&row).await.map_err(store_err)?;
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.show_security_group(ctx, id).await
    }

    pub async fn delete_security_group(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_security_group")?;
        self.write("delete security group", |mut tx| async move {
            let g: Rec<SecurityGroup> = self.fetch(&mut tx, SECURITY_GROUP, id).await?;
            if !owns(ctx, &g.val.project_id) {
                return Err(not_found(SECURITY_GROUP, id));
            }
            if g.val.name == "default" && !ctx.is_admin() {
                return Err(typed(
                    409,
                    "SecurityGroupCannotRemoveDefault",
                    "Removing default security group not allowed.",
                ));
            }
            let ports: Vec<Rec<Port>> = Self::all_tx(&mut tx, NetFilter::of(PORT)).await?;
            if ports
                .iter()
                .any(|p| p.val.security_groups.iter().any(|s| s == id))
            {
                return Err(typed(
                    409,
                    "SecurityGroupInUse",
                    format!("Security Group {id} in use."),
                ));
            }
            let rules = tx
                .list(&NetFilter::of(SECURITY_GROUP_RULE))
                .await
                .map_err(internal)?;
            for r in rules {
                let rule: Rec<SecurityGroupRule> = decode(r)?;
                if rule.val.security_group_id == id {
                    tx.delete(&rule.val.id).await.map_err(internal)?;
                } else if rule.val.remote_group_id.as_deref() == Some(id) {
                    return Err(typed(
                        409,
                        "SecurityGroupInUse",
                        format!("Security Group {id} in use."),
                    ));
                }
            }
            tx.delete(id).await.map_err(internal)?;
            self.commit(tx).await
        })
        .await
    }

    pub async fn create_security_group_rule(
        &self,
        ctx: &AuthContext,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        require_writer(ctx, "create_security_group_rule")?;
        let f = Fields::new(body, RULE_FIELDS)?;
        let sg_id = f.string("security_group_id", 64)?.ok_or_else(|| {
            fields::bad(
                "Failed to parse request. Required attribute 'security_group_id' not specified",
            )
        })?;
        let direction = f.string("direction", 16)?.unwrap_or_default();
        if direction != "ingress" && direction != "egress" {
            return Err(fields::bad(format!(
                "Invalid input for direction. Reason: '{direction}' is not in ['ingress', 'egress']."
            )));
        }
        let ethertype = f.string("ethertype", 8)?.unwrap_or_else(|| "IPv4".into());
        if ethertype != "IPv4" && ethertype != "IPv6" {
            return Err(fields::bad(format!(
                "Invalid input for ethertype. Reason: '{ethertype}' is not in ['IPv4', 'IPv6']."
            )));
        }
        let protocol = match f.raw("protocol") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) if s.is_empty() || s.eq_ignore_ascii_case("any") => None,
            Some(Value::String(s)) => Some(s.to_lowercase()),
            Some(v) => {
                return Err(fields::bad(format!(
                    "Security group rule protocol {v} not supported."
                )))
            }
        };
        let proto_num = protocol_number(protocol.as_deref());
        if protocol.is_some() && proto_num.is_none() {
            return Err(typed(
                400,
                "SecurityGroupRuleInvalidProtocol",
                format!(
                    "Security group rule protocol {} not supported.",
                    protocol.unwrap_or_default()
                ),
            ));
        }
        let min = f.integer("port_range_min", 0, 65535)?;
        let max = f.integer("port_range_max", 0, 65535)?;
        match proto_num {
            Some(6) | Some(17) | Some(132) | Some(33) => {
                if let (Some(a), Some(b)) = (min, max) {
                    if a > b || a == 0 {
                        return Err(typed(
                            400,
                            "SecurityGroupInvalidPortRange",
                            "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                        ));
                    }
                } else if min.is_some() != max.is_some() && max.is_some() {
                    return Err(typed(
                        400,
                        "SecurityGroupInvalidPortRange",
                        "port_range_min must be given with port_range_max",
                    ));
                }
            }
            Some(1) | Some(58) => {
                if min.is_some_and(|v| v > 255) {
                    return Err(typed(
                        400,
                        "SecurityGroupInvalidIcmpValue",
                        "Invalid value for ICMP type: must be 0..255",
                    ));
                }
                if max.is_some_and(|v| v > 255) {
                    return Err(typed(
                        400,
                        "SecurityGroupInvalidIcmpValue",
                        "Invalid value for ICMP code: must be 0..255",
                    ));
                }
                if max.is_some() && min.is_none() {
                    return Err(typed(400, "SecurityGroupMissingIcmpType", "ICMP code (port-range-max) is provided but ICMP type (port-range-min) is missing."));
                }
            }
            _ => {
                if min.is_some() || max.is_some() {
                    return Err(typed(
                        400,
                        "SecurityGroupInvalidPortRange",
                        "Port ranges need protocol tcp, udp, sctp, dccp, icmp or icmpv6.",
                    ));
                }
            }
        }
        // A single TCP/UDP port given as min only means that port.
        let max = if matches!(proto_num, Some(6) | Some(17) | Some(132) | Some(33)) && max.is_none()
        {
            min
        } else {
            max
        };
        let remote_ip_prefix = match f.nullable_string("remote_ip_prefix", 64)?.flatten() {
            None => None,
            Some(p) => {
                let net: ipnet::IpNet = p
                    .parse()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| fields::bad(format!("Invalid input for remote_ip_prefix. Reason: '{p}' is not a valid IP prefix.")))?;
                let v4 = matches!(net, ipnet::IpNet::V4(_));
                if v4 != (ethertype == "IPv4") {
                    return Err(typed(
                        400,
                        "SecurityGroupRuleParameterConflict",
                        format!("Conflicting value ethertype {ethertype} for CIDR {p}"),
                    ));
                }
                Some(net.trunc().to_string())
            }
        };
        let remote_group_id = f.nullable_string("remote_group_id", 64)?.flatten();
        if remote_ip_prefix.is_some() && remote_group_id.is_some() {
            return Err(typed(
                400,
                "SecurityGroupRemoteGroupAndRemoteIpPrefix",
                "Only remote_ip_prefix or remote_group_id may be provided.",
            ));
        }
        if f.raw("remote_address_group_id")
            .is_some_and(|v| !v.is_null())
        {
            return Err(fields::bad("Address groups are not supported."));
        }
        let (f, sg_id, direction, ethertype, protocol, remote_ip_prefix, remote_group_id) = (
            &f,
            &sg_id,
            &direction,
            &ethertype,
            &protocol,
            &remote_ip_prefix,
            &remote_group_id,
        );
        let rule_id = self
            .write("create security group rule", |mut tx| async move {
                let g: Rec<SecurityGroup> = self.fetch(&mut tx, SECURITY_GROUP, sg_id).await?;
                if !owns(ctx, &g.val.project_id) {
                    return Err(not_found(SECURITY_GROUP, sg_id));
                }
                if let Some(rg) = &remote_group_id {
                    let r: Rec<SecurityGroup> = self.fetch(&mut tx, SECURITY_GROUP, rg).await?;
                    if !owns(ctx, &r.val.project_id) {
                        return Err(not_found(SECURITY_GROUP, rg));
                    }
                }
                self.check_quota(&mut tx, SECURITY_GROUP_RULE, &g.val.project_id, 1)
                    .await?;
                let rule = SecurityGroupRule {
                    id: uuid::Uuid::new_v4().to_string(),
                    project_id: g.val.project_id.clone(),
                    security_group_id: sg_id.clone(),
                    direction: direction.clone(),
                    ethertype: ethertype.clone(),
                    protocol: protocol.clone(),
                    port_range_min: min.map(|v| v as u16),
                    port_range_max: max.map(|v| v as u16),
                    remote_ip_prefix: remote_ip_prefix.clone(),
                    remote_group_id: remote_group_id.clone(),
                    description: f.string("description", 255)?.unwrap_or_default(),
                };
                let existing: Vec<Rec<SecurityGroupRule>> =
                    Self::all_tx(&mut tx, NetFilter::of(SECURITY_GROUP_RULE).device(sg_id)).await?;
                if let Some(dup) = existing.iter().find(|r| r.val.same_as(&rule)) {
                    return Err(typed(
                        409,
                        "SecurityGroupRuleExists",
                        format!(
                            "Security group rule already exists. Rule id is {}.",
                            dup.val.id
                        ),
                    ));
                }
                self.insert_rule(&mut tx, &rule).await?;
                self.commit(tx).await?;
                Ok(rule.id)
            })
            .await?;
        self.show_security_group_rule(ctx, &rule_id).await
    }

    pub async fn show_security_group_rule(&self, ctx: &AuthContext, id: &str) -> CoreResult<Value> {
        let r: Rec<SecurityGroupRule> = self.get_rec(SECURITY_GROUP_RULE, id).await?;
        if !owns(ctx, &r.val.project_id) {
            return Err(not_found(SECURITY_GROUP_RULE, id));
        }
        let default_ids = self.default_group_ids().await?;
        Ok(rule_view(
            &r,
            default_ids.contains(&r.val.security_group_id),
        ))
    }

    async fn default_group_ids(&self) -> CoreResult<Vec<String>> {
        let groups: Vec<Rec<SecurityGroup>> = self.all(NetFilter::of(SECURITY_GROUP)).await?;
        Ok(groups
            .into_iter()
            .filter(|g| g.val.name == "default")
            .map(|g| g.val.id)
            .collect())
    }

    pub async fn list_security_group_rules(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        let rules: Vec<Rec<SecurityGroupRule>> =
            self.all(NetFilter::of(SECURITY_GROUP_RULE)).await?;
        let default_ids = self.default_group_ids().await?;
        Ok(rules
            .iter()
            .filter(|r| owns(ctx, &r.val.project_id))
            .map(|r| rule_view(r, default_ids.contains(&r.val.security_group_id)))
            .collect())
    }

    pub async fn delete_security_group_rule(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        require_writer(ctx, "delete_security_group_rule")?;
        self.write("delete security group rule", |mut tx| async move {
            let r: Rec<SecurityGroupRule> = self.fetch(&mut tx, SECURITY_GROUP_RULE, id).await?;
            if !owns(ctx, &r.val.project_id) {
                return Err(not_found(SECURITY_GROUP_RULE, id));
            }
            tx.delete(id).await.map_err(internal)?;
            self.commit(tx).await
        })
        .await
    }

    // ---- quotas -----------------------------------------------------------------------------

    pub(crate) async fn quota_limit(
        &self,
        tx: &mut NetTx,
        project_id: &str,
        kind: &str,
    ) -> CoreResult<i64> {
        let over: Option<Value> = match tx.get(&format!("quota-{project_id}")).await {
            Ok(row) => serde_json::from_str(&row.body).ok(),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(internal(e)),
        };
        let default = QUOTA_DEFAULTS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| *v)
            .unwrap_or(-1);
        Ok(over
            .and_then(|o| o.get(kind).and_then(Value::as_i64))
            .unwrap_or(default))
    }

    /// `{"network": 100, …}` for a project (`details`: `{"network": {"limit","used","reserved"}}`).
    pub async fn quota(
        &self,
        ctx: &AuthContext,
        project_id: &str,
        details: bool,
    ) -> CoreResult<Value> {
        if !owns(ctx, project_id) {
            return Err(forbidden("get_quota"));
        }
        let mut tx = self.tx().await?;
        let mut out = Map::new();
        for (kind, _) in QUOTA_DEFAULTS {
            let limit = self.quota_limit(&mut tx, project_id, kind).await?;
            if details {
                let used = tx
                    .list(&NetFilter::of(kind).project(project_id))
                    .await
                    .map_err(internal)?
                    .len();
                out.insert(
                    (*kind).into(),
                    json!({"limit": limit, "used": used, "reserved": 0}),
                );
            } else {
                out.insert((*kind).into(), json!(limit));
            }
        }
        drop(tx);
        Ok(Value::Object(out))
    }

    /// `GET /v2.0/quotas/{project}/default`: the caller's own project, or any for an admin
    /// (Neutron checks `get_quota` when the project is not the caller's).
    pub fn default_quota(&self, ctx: &AuthContext, project_id: &str) -> CoreResult<Value> {
        if !owns(ctx, project_id) {
            return Err(forbidden("get_quota"));
        }
        Ok(Self::quota_defaults())
    }

    /// `GET /v2.0/quotas` (admin, `get_quota`): the projects with limits of their own. Every
    /// project here uses the defaults until an admin sets one, so the list is empty.
    pub fn list_quotas(&self, ctx: &AuthContext) -> CoreResult<Vec<Value>> {
        ctx.require_admin("get_quota")?;
        Ok(Vec::new())
    }

    pub fn quota_defaults() -> Value {
        Value::Object(
            QUOTA_DEFAULTS
                .iter()
                .map(|(k, v)| ((*k).to_string(), json!(v)))
                .collect(),
        )
    }

    pub async fn update_quota(
        &self,
        ctx: &AuthContext,
        project_id: &str,
        body: &Map<String, Value>,
    ) -> CoreResult<Value> {
        ctx.require_admin("update_quota")?;
        let keys: Vec<&str> = QUOTA_DEFAULTS.iter().map(|(k, _)| *k).collect();
        // `check_limit` (refuse a limit below what is used) and `force` as OSC sends them.
        let mut allowed = keys.clone();
        allowed.extend(["check_limit", "force"]);
        let f = Fields::new(body, &allowed)?;
        let check_limit =
            f.boolean("check_limit")?.unwrap_or(false) && !f.boolean("force")?.unwrap_or(false);
        let (f, keys) = (&f, &keys);
        self.write("update quota", |mut tx| async move {
            let id = format!("quota-{project_id}");
            let existing = match tx.get(&id).await {
                Ok(row) => Some(row),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(internal(e)),
            };
            let mut limits: Map<String, Value> = existing
                .as_ref()
                .and_then(|r| serde_json::from_str(&r.body).ok())
                .unwrap_or_default();
            for k in keys {
                if let Some(v) = f.integer(k, -1, i64::from(i32::MAX))? {
                    if check_limit && v >= 0 {
                        let used = tx
                            .list(&NetFilter::of(k).project(project_id))
                            .await
                            .map_err(internal)?
                            .len() as i64;
                        if v < used {
                            return Err(typed(
                                400,
                                "InvalidQuotaValue",
                                format!("Change would make usage less than 0 for the following resources: {k}"),
                            ));
                        }
                    }
                    limits.insert((*k).into(), json!(v));
                }
            }
            let body = Value::Object(limits);
            match existing {
                Some(row) => {
                    let row = updated_row(&row, &body, "", None)?;
                    tx.update(&row).await.map_err(store_err)?;
                }
                None => {
                    let row = new_row(QUOTA, &id, project_id, None, None, "", &body)?;
                    tx.insert(&row).await.map_err(store_err)?;
                }
            }
            self.commit(tx).await?;
            Ok(())
        })
        .await?;
        self.quota(ctx, project_id, false).await
    }

    pub async fn reset_quota(&self, ctx: &AuthContext, project_id: &str) -> CoreResult<()> {
        ctx.require_admin("delete_quota")?;
        self.write("reset quota", |mut tx| async move {
            match tx.delete(&format!("quota-{project_id}")).await {
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(internal(e)),
            }
            self.commit(tx).await
        })
        .await
    }
}

pub(crate) fn rule_view(r: &Rec<SecurityGroupRule>, in_default: bool) -> Value {
    let v = &r.val;
    let normalized = v.remote_ip_prefix.clone().or_else(|| {
        if v.remote_group_id.is_none() {
            Some(if v.ethertype == "IPv4" {
                "0.0.0.0/0".into()
            } else {
                "::/0".into()
            })
        } else {
            None
        }
    });
    standard(
        &r.row,
        json!({
            "id": v.id,
            "project_id": v.project_id,
            "security_group_id": v.security_group_id,
            "direction": v.direction,
            "ethertype": v.ethertype,
            "protocol": v.protocol,
            "port_range_min": v.port_range_min,
            "port_range_max": v.port_range_max,
            "remote_ip_prefix": v.remote_ip_prefix,
            "normalized_cidr": normalized,
            "remote_group_id": v.remote_group_id,
            "remote_address_group_id": null,
            "description": v.description,
            "belongs_to_default_sg": in_default,
        }),
    )
}

pub(crate) fn security_group_view(
    g: &Rec<SecurityGroup>,
    rules: &[Rec<SecurityGroupRule>],
) -> Value {
    let in_default = g.val.name == "default";
    standard(
        &g.row,
        json!({
            "id": g.val.id,
            "name": g.val.name,
            "description": g.val.description,
            "project_id": g.val.project_id,
            "stateful": true,
            "shared": false,
            "security_group_rules": rules.iter().map(|r| rule_view(r, in_default)).collect::<Vec<_>>(),
        }),
    )
}

impl NetworkService {
    /// Nova's addSecurityGroup/removeSecurityGroup: the group (name or id, of the server's
    /// project) joins or leaves every port of the server. Returns the group's name.
    pub async fn change_server_group(
        &self,
        server_id: &str,
        project_id: &str,
        group: &str,
        add: bool,
    ) -> CoreResult<String> {
        self.write("change server group", |mut tx| async move {
            let gid = self
                .resolve_group(&mut tx, project_id, group)
                .await
                .map_err(|e| match e {
                    CoreError::Typed { message, kind, .. } => typed(404, kind, message),
                    other => other,
                })?;
            let g: Rec<SecurityGroup> = self.fetch(&mut tx, SECURITY_GROUP, &gid).await?;
            let mut touched = false;
            for mut p in Self::server_nics_tx(&mut tx, server_id).await? {
                let has = p.val.security_groups.contains(&gid);
                if add && !has && p.val.port_security_enabled {
                    p.val.security_groups.push(gid.clone());
                } else if !add && has {
                    p.val.security_groups.retain(|x| x != &gid);
                } else {
                    continue;
                }
                touched = true;
                let row = updated_row(&p.row, &p.val, &p.val.name, Some(server_id))?;
                tx.update(&row).await.map_err(store_err)?;
            }
            if !add && !touched {
                return Err(typed(
                    404,
                    "SecurityGroupNotFound",
                    format!("Security group {group} not associated with the instance {server_id}"),
                ));
            }
            self.commit(tx).await?;
            Ok(g.val.name)
        })
        .await
    }
}

impl NetworkService {
    /// The names of groups given by name or id (Nova shows a server's groups by name).
    pub async fn group_names(
        &self,
        project_id: &str,
        groups: &[String],
    ) -> CoreResult<Vec<String>> {
        let all: Vec<Rec<SecurityGroup>> = self
            .all(NetFilter::of(SECURITY_GROUP).project(project_id))
            .await?;
        Ok(groups
            .iter()
            .map(|g| {
                all.iter()
                    .find(|x| &x.val.id == g)
                    .map_or_else(|| g.clone(), |x| x.val.name.clone())
            })
            .collect())
    }
}
