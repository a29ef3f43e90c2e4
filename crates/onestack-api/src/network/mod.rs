//! Neutron v2.0: routes, version discovery, extensions, and the list semantics every collection
//! shares (attribute filters, `fields`, `sort_key`/`sort_dir`, `limit`/`marker` with links).
//! Errors use `{"NeutronError": {"type", "message", "detail"}}`.

mod list;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, JsonBody};
use crate::routes::Listed;
use crate::AppState;
use axum::extract::{FromRef, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use onestack_core::network::NetworkService;
use onestack_core::policy::AuthContext;
use serde_json::{json, Map, Value};
use std::sync::Arc;

#[derive(Clone)]
pub struct NetworkApiState {
    pub app: AppState,
    pub net: Arc<NetworkService>,
    /// Public base URL, e.g. `http://198.18.0.1:9696`.
    pub base_url: Arc<str>,
}

impl FromRef<NetworkApiState> for AppState {
    fn from_ref(s: &NetworkApiState) -> AppState {
        s.app.clone()
    }
}

type St = State<NetworkApiState>;

/// `{"network": {…}}` → the inner object.
fn inner(singular: &str, body: Value) -> ApiResult<Map<String, Value>> {
    match body {
        Value::Object(mut o) => match o.remove(singular) {
            Some(Value::Object(m)) if o.is_empty() => Ok(m),
            Some(Value::Object(_)) => Err(ApiError::bad_request(format!(
                "Unrecognized attribute(s) '{}'",
                o.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            Some(_) => Err(ApiError::bad_request(format!(
                "Invalid input: '{singular}' must be an object."
            ))),
            None => Err(ApiError::bad_request("Resource body required")),
        },
        _ => Err(ApiError::bad_request("Body contains invalid data")),
    }
}

fn one(singular: &str, v: Value, raw: Option<&str>) -> Json<Value> {
    let v = list::project_fields(v, &list::fields_param(raw.unwrap_or_default()));
    Json(json!({ singular: v }))
}

fn created(singular: &str, v: Value) -> Response {
    (StatusCode::CREATED, Json(json!({ singular: v }))).into_response()
}

/// The five handlers of a plain collection.
macro_rules! collection {
    ($module:ident, $singular:literal, $plural:literal, $list:ident, $create:ident, $show:ident, $update:ident, $delete:ident) => {
        mod $module {
            use super::*;

            pub async fn list(State(s): St, Auth(ctx): Auth, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
                let items = s.net.$list(&ctx).await?;
                list::respond($plural, items, raw.as_deref().unwrap_or_default(), &s.base_url)
            }

            pub async fn create(State(s): St, Auth(ctx): Auth, JsonBody(body): JsonBody<Value>) -> ApiResult<Response> {
                if let Some(Value::Array(_)) = body.get($plural) {
                    return bulk(&s, &ctx, body).await;
                }
                let m = inner($singular, body)?;
                Ok(created($singular, s.net.$create(&ctx, &m).await?))
            }

            async fn bulk(s: &NetworkApiState, ctx: &AuthContext, body: Value) -> ApiResult<Response> {
                let Some(Value::Array(items)) = body.get($plural).cloned() else {
                    return Err(ApiError::bad_request("Resource body required"));
                };
                let mut out = Vec::new();
                for item in items {
                    let Value::Object(m) = item else {
                        return Err(ApiError::bad_request("Body contains invalid data"));
                    };
                    out.push(s.net.$create(ctx, &m).await?);
                }
                Ok((StatusCode::CREATED, Json(json!({ $plural: out }))).into_response())
            }

            pub async fn show(State(s): St, Auth(ctx): Auth, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
                Ok(one($singular, s.net.$show(&ctx, &id).await?, raw.as_deref()))
            }

            pub async fn update(State(s): St, Auth(ctx): Auth, Path(id): Path<String>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
                let m = inner($singular, body)?;
                Ok(Json(json!({ $singular: s.net.$update(&ctx, &id, &m).await? })))
            }

            pub async fn delete(State(s): St, Auth(ctx): Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
                s.net.$delete(&ctx, &id).await?;
                Ok(StatusCode::NO_CONTENT)
            }
        }
    };
}

collection!(
    networks,
    "network",
    "networks",
    list_networks,
    create_network,
    show_network,
    update_network,
    delete_network
);
collection!(
    subnets,
    "subnet",
    "subnets",
    list_subnets,
    create_subnet,
    show_subnet,
    update_subnet,
    delete_subnet
);
collection!(
    ports,
    "port",
    "ports",
    list_ports,
    create_port,
    show_port,
    update_port,
    delete_port
);
collection!(
    routers,
    "router",
    "routers",
    list_routers,
    create_router,
    show_router,
    update_router,
    delete_router
);
collection!(
    floatingips,
    "floatingip",
    "floatingips",
    list_floatingips,
    create_floatingip,
    show_floatingip,
    update_floatingip,
    delete_floatingip
);
collection!(
    security_groups,
    "security_group",
    "security_groups",
    list_security_groups,
    create_security_group,
    show_security_group,
    update_security_group,
    delete_security_group
);

mod rules {
    use super::*;

    pub async fn list(
        State(s): St,
        Auth(ctx): Auth,
        RawQuery(raw): RawQuery,
    ) -> ApiResult<Json<Value>> {
        let items = s.net.list_security_group_rules(&ctx).await?;
        list::respond(
            "security_group_rules",
            items,
            raw.as_deref().unwrap_or_default(),
            &s.base_url,
        )
    }

    pub async fn create(
        State(s): St,
        Auth(ctx): Auth,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Response> {
        if let Some(Value::Array(items)) = body.get("security_group_rules").cloned() {
            let mut out = Vec::new();
            for item in items {
                let Value::Object(m) = item else {
                    return Err(ApiError::bad_request("Body contains invalid data"));
                };
                out.push(s.net.create_security_group_rule(&ctx, &m).await?);
            }
            return Ok((
                StatusCode::CREATED,
                Json(json!({"security_group_rules": out})),
            )
                .into_response());
        }
        let m = inner("security_group_rule", body)?;
        Ok(created(
            "security_group_rule",
            s.net.create_security_group_rule(&ctx, &m).await?,
        ))
    }

    pub async fn show(
        State(s): St,
        Auth(ctx): Auth,
        Path(id): Path<String>,
        RawQuery(raw): RawQuery,
    ) -> ApiResult<Json<Value>> {
        Ok(one(
            "security_group_rule",
            s.net.show_security_group_rule(&ctx, &id).await?,
            raw.as_deref(),
        ))
    }

    pub async fn delete(
        State(s): St,
        Auth(ctx): Auth,
        Path(id): Path<String>,
    ) -> ApiResult<StatusCode> {
        s.net.delete_security_group_rule(&ctx, &id).await?;
        Ok(StatusCode::NO_CONTENT)
    }
}

async fn add_interface(
    State(s): St,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let Value::Object(m) = body else {
        return Err(ApiError::bad_request("Body contains invalid data"));
    };
    Ok(Json(s.net.add_router_interface(&ctx, &id, &m).await?))
}

async fn remove_interface(
    State(s): St,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let Value::Object(m) = body else {
        return Err(ApiError::bad_request("Body contains invalid data"));
    };
    Ok(Json(s.net.remove_router_interface(&ctx, &id, &m).await?))
}

// ---- quotas ---------------------------------------------------------------------------------

async fn quota_list(State(s): St, Auth(ctx): Auth) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"quotas": s.net.list_quotas(&ctx)?})))
}

fn project_of(p: &str) -> &str {
    p.strip_suffix(".json").unwrap_or(p)
}

async fn quota_show(
    State(s): St,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"quota": s.net.quota(&ctx, project_of(&project), false).await?}),
    ))
}

async fn quota_details(
    State(s): St,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"quota": s.net.quota(&ctx, project_of(&project), true).await?}),
    ))
}

async fn quota_default(
    State(s): St,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"quota": s.net.default_quota(&ctx, project_of(&project))?}),
    ))
}

async fn quota_update(
    State(s): St,
    Auth(ctx): Auth,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let m = inner("quota", body)?;
    Ok(Json(
        json!({"quota": s.net.update_quota(&ctx, project_of(&project), &m).await?}),
    ))
}

async fn quota_delete(
    State(s): St,
    Auth(ctx): Auth,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    s.net.reset_quota(&ctx, project_of(&project)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- discovery ------------------------------------------------------------------------------

/// What `/v2.0/extensions` advertises: only what this service really does.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("security-group", "security-group", "The security groups extension."),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway."),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode", "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("port-security", "Port Security", "Provides port security"),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("quotas", "Quota management support", "Expose functions for quotas management per tenant"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
    ("security-groups-remote-address-group", "Remote address group id field for security group rules", "Add new field of remote address group id in security group rules"),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
];

fn extension(alias: &str, name: &str, description: &str) -> Value {
    json!({"alias": alias, "name": name, "description": description, "updated": "2013-01-20T00:00:00-00:00", "links": []})
}

async fn extensions(Auth(_ctx): Auth) -> Json<Value> {
    Json(
        json!({"extensions": EXTENSIONS.iter().map(|(a, n, d)| extension(a, n, d)).collect::<Vec<_>>()}),
    )
}

async fn extension_show(Auth(_ctx): Auth, Path(alias): Path<String>) -> ApiResult<Json<Value>> {
    EXTENSIONS
        .iter()
        .find(|(a, _, _)| *a == alias)
        .map(|(a, n, d)| Json(json!({"extension": extension(a, n, d)})))
        .ok_or_else(|| ApiError::not_found(format!("Extension with alias {alias} does not exist")))
}

async fn versions(State(s): St) -> Json<Value> {
    Json(
        json!({"versions": [{"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": format!("{}/v2.0/", s.base_url)}]}]}),
    )
}

/// `GET /v2.0`: behind Keystone authentication, as in Neutron (only `/` is anonymous).
async fn resources(State(s): St, Auth(_ctx): Auth) -> Json<Value> {
    let r = |name: &str, collection: &str| json!({"name": name, "collection": collection, "links": [{"rel": "self", "href": format!("{}/v2.0/{collection}", s.base_url)}]});
    Json(json!({"resources": [
        r("network", "networks"), r("subnet", "subnets"), r("port", "ports"),
        r("router", "routers"), r("floatingip", "floatingips"),
        r("security_group", "security-groups"), r("security_group_rule", "security-group-rules"),
        r("quota", "quotas"),
    ]}))
}

/// The path templates this API serves (the role table checks that each has an entry).
pub fn route_paths() -> Vec<String> {
    routes().paths()
}

fn routes() -> Listed<NetworkApiState> {
    Listed::new()
        .route("/", get(versions))
        .route("/v2.0", get(resources))
        .route("/v2.0/", get(resources))
        .route("/v2.0/extensions", get(extensions))
        .route("/v2.0/extensions/{alias}", get(extension_show))
        .route("/v2.0/networks", get(networks::list).post(networks::create))
        .route(
            "/v2.0/networks/{id}",
            get(networks::show)
                .put(networks::update)
                .delete(networks::delete),
        )
        .route("/v2.0/subnets", get(subnets::list).post(subnets::create))
        .route(
            "/v2.0/subnets/{id}",
            get(subnets::show)
                .put(subnets::update)
                .delete(subnets::delete),
        )
        .route("/v2.0/ports", get(ports::list).post(ports::create))
        .route(
            "/v2.0/ports/{id}",
            get(ports::show).put(ports::update).delete(ports::delete),
        )
        .route("/v2.0/routers", get(routers::list).post(routers::create))
        .route(
            "/v2.0/routers/{id}",
            get(routers::show)
                .put(routers::update)
                .delete(routers::delete),
        )
        .route(
            "/v2.0/routers/{id}/add_router_interface",
            put(add_interface),
        )
        .route(
            "/v2.0/routers/{id}/remove_router_interface",
            put(remove_interface),
        )
        .route(
            "/v2.0/floatingips",
            get(floatingips::list).post(floatingips::create),
        )
        .route(
            "/v2.0/floatingips/{id}",
            get(floatingips::show)
                .put(floatingips::update)
                .delete(floatingips::delete),
        )
        .route(
            "/v2.0/security-groups",
            get(security_groups::list).post(security_groups::create),
        )
        .route(
            "/v2.0/security-groups/{id}",
            get(security_groups::show)
                .put(security_groups::update)
                .delete(security_groups::delete),
        )
        .route(
            "/v2.0/security-group-rules",
            get(rules::list).post(rules::create),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(rules::show).delete(rules::delete),
        )
        .route("/v2.0/quotas", get(quota_list))
        .route(
            "/v2.0/quotas/{project}",
            get(quota_show).put(quota_update).delete(quota_delete),
        )
        .route("/v2.0/quotas/{project}/default", get(quota_default))
        .route("/v2.0/quotas/{project}/details.json", get(quota_details))
        .route("/v2.0/quotas/{project}/details", get(quota_details))
}

pub fn router(state: NetworkApiState) -> Router {
    routes()
        .into_router()
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .layer(axum::middleware::from_fn_with_state(
            (state.app.clone(), crate::error::ErrorFlavor::Neutron),
            crate::middleware::request_context,
        ))
        .layer(axum::middleware::from_fn_with_state(
            "network",
            crate::metrics::track,
        ))
        .with_state(state)
}
