//! The networks `onestack up` makes, as the original OneStack's FlatDHCP setup did in its day: an
//! external `public` network over the floating range, a `private` network for the demo project,
//! `router1` joining them, and ping and SSH allowed in by the demo project's `default` group.
//! Idempotent: what exists (by name) is left alone.

use super::*;
use crate::policy::AuthContext;

pub struct BootstrapNetworks<'a> {
    pub admin_project: &'a str,
    pub demo_project: Option<&'a str>,
    pub fixed_range: &'a str,
    pub floating_range: &'a str,
    pub dns_nameservers: &'a [String],
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn id_of(v: &Value) -> String {
    v.get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl NetworkService {
    async fn find_named(
        &self,
        ctx: &AuthContext,
        kind: &str,
        name: &str,
        project: &str,
    ) -> CoreResult<Option<Value>> {
        let all = match kind {
            NETWORK => self.list_networks(ctx).await?,
            SUBNET => self.list_subnets(ctx).await?,
            ROUTER => self.list_routers(ctx).await?,
            _ => Vec::new(),
        };
        Ok(all.into_iter().find(|v| {
            v.get("name").and_then(Value::as_str) == Some(name)
                && v.get("project_id").and_then(Value::as_str) == Some(project)
        }))
    }

    /// Creates what is missing; returns what it created.
    pub async fn bootstrap(&self, b: &BootstrapNetworks<'_>) -> CoreResult<Vec<String>> {
        let mut created = Vec::new();
        let admin = AuthContext::service(b.admin_project);
        let public = match self
            .find_named(&admin, NETWORK, "public", b.admin_project)
            .await?
        {
            Some(n) => id_of(&n),
            None => {
                let n = self
                    .create_network(
                        &admin,
                        &obj(json!({"name": "public", "router:external": true})),
                    )
                    .await?;
                created.push("network public".to_string());
                id_of(&n)
            }
        };
        if self
            .find_named(&admin, SUBNET, "public-subnet", b.admin_project)
            .await?
            .is_none()
        {
            self.create_subnet(
                &admin,
                &obj(json!({"name": "public-subnet", "network_id": public, "cidr": b.floating_range, "enable_dhcp": false})),
            )
            .await?;
            created.push(format!("subnet public-subnet ({})", b.floating_range));
        }
        let Some(demo) = b.demo_project else {
            return Ok(created);
        };
        let ctx = AuthContext::service(demo);
        let private = match self.find_named(&ctx, NETWORK, "private", demo).await? {
            Some(n) => id_of(&n),
            None => {
                let n = self
                    .create_network(&ctx, &obj(json!({"name": "private"})))
                    .await?;
                created.push("network private".to_string());
                id_of(&n)
            }
        };
        let subnet = match self
            .find_named(&ctx, SUBNET, "private-subnet", demo)
            .await?
        {
            Some(s) => id_of(&s),
            None => {
                let s = self
                    .create_subnet(
                        &ctx,
                        &obj(json!({"name": "private-subnet", "network_id": private, "cidr": b.fixed_range, "dns_nameservers": b.dns_nameservers})),
                    )
                    .await?;
                created.push(format!("subnet private-subnet ({})", b.fixed_range));
                id_of(&s)
            }
        };
        if self
            .find_named(&ctx, ROUTER, "router1", demo)
            .await?
            .is_none()
        {
            let r = self
                .create_router(
                    &ctx,
                    &obj(
                        json!({"name": "router1", "external_gateway_info": {"network_id": public}}),
                    ),
                )
                .await?;
            self.add_router_interface(&ctx, &id_of(&r), &obj(json!({"subnet_id": subnet})))
                .await?;
            created.push("router router1".to_string());
            // The original OneStack opened ping and SSH in the default group.
            let sg = self
                .write(
                    "default security group of the demo project",
                    |mut tx| async move {
                        let sg = self.ensure_default_sg(&mut tx, demo).await?;
                        self.commit(tx).await?;
                        Ok(sg)
                    },
                )
                .await?;
            for rule in [
                json!({"security_group_id": sg, "direction": "ingress", "protocol": "icmp", "remote_ip_prefix": "0.0.0.0/0"}),
                json!({"security_group_id": sg, "direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}),
            ] {
                match self.create_security_group_rule(&ctx, &obj(rule)).await {
                    Ok(_) | Err(CoreError::Typed { status: 409, .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            created.push("default group allows ping and SSH".to_string());
        }
        Ok(created)
    }
}
