//! Keystone v3: routes, version discovery and the JSON shapes the real clients read.

mod assignments;
mod catalog;
mod projects;
mod render;
mod roles;
mod tokens;
mod users;

use crate::error::{ApiError, ApiResult};
use crate::routes::Listed;
use crate::AppState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The path templates this API serves (the role table checks that each has an entry).
pub fn route_paths() -> Vec<String> {
    routes().paths()
}

fn routes() -> Listed<AppState> {
    Listed::new()
        .route("/", get(versions))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .route("/healthcheck", get(|| async { "OK" }))
        .route(
            "/v3/auth/tokens",
            post(tokens::issue)
                .get(tokens::validate)
                .delete(tokens::revoke),
        )
        .route("/v3/auth/projects", get(tokens::auth_projects))
        .route("/v3/auth/domains", get(tokens::auth_domains))
        .route("/v3/auth/catalog", get(tokens::auth_catalog))
        .route(
            "/v3/domains",
            get(projects::list_domains).post(projects::create_domain),
        )
        .route(
            "/v3/domains/{id}",
            get(projects::get_domain)
                .patch(projects::update_domain)
                .delete(projects::delete_domain),
        )
        .route("/v3/projects", get(projects::list).post(projects::create))
        .route(
            "/v3/projects/{id}",
            get(projects::get)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route("/v3/users", get(users::list).post(users::create))
        .route(
            "/v3/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/v3/users/{id}/password", post(users::change_password))
        .route("/v3/users/{id}/projects", get(users::projects))
        .route("/v3/roles", get(roles::list).post(roles::create))
        .route(
            "/v3/roles/{id}",
            get(roles::get).patch(roles::update).delete(roles::delete),
        )
        .route("/v3/roles/{id}/implies", get(roles::list_implied))
        .route(
            "/v3/roles/{prior}/implies/{implied}",
            put(roles::add_implied)
                .get(roles::get_implied)
                .head(roles::check_implied)
                .delete(roles::remove_implied),
        )
        .route("/v3/role_inferences", get(roles::inferences))
        .route("/v3/role_assignments", get(assignments::list))
        .route(
            "/v3/projects/{target}/users/{user}/roles",
            get(assignments::list_project_grants),
        )
        .route(
            "/v3/projects/{target}/users/{user}/roles/{role}",
            put(assignments::grant_project)
                .head(assignments::check_project)
                .get(assignments::check_project)
                .delete(assignments::revoke_project),
        )
        .route(
            "/v3/domains/{target}/users/{user}/roles",
            get(assignments::list_domain_grants),
        )
        .route(
            "/v3/domains/{target}/users/{user}/roles/{role}",
            put(assignments::grant_domain)
                .head(assignments::check_domain)
                .get(assignments::check_domain)
                .delete(assignments::revoke_domain),
        )
        .route(
            "/v3/regions",
            get(catalog::list_regions).post(catalog::create_region),
        )
        .route(
            "/v3/regions/{id}",
            get(catalog::get_region)
                .patch(catalog::update_region)
                .delete(catalog::delete_region),
        )
        .route(
            "/v3/services",
            get(catalog::list_services).post(catalog::create_service),
        )
        .route(
            "/v3/services/{id}",
            get(catalog::get_service)
                .patch(catalog::update_service)
                .delete(catalog::delete_service),
        )
        .route(
            "/v3/endpoints",
            get(catalog::list_endpoints).post(catalog::create_endpoint),
        )
        .route(
            "/v3/endpoints/{id}",
            get(catalog::get_endpoint)
                .patch(catalog::update_endpoint)
                .delete(catalog::delete_endpoint),
        )
}

pub fn router(state: AppState) -> Router {
    routes()
        .into_router()
        .fallback(|| async { ApiError::not_found("The resource could not be found.") })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), crate::error::ErrorFlavor::Keystone),
            crate::middleware::request_context,
        ))
        .layer(axum::middleware::from_fn_with_state(
            "identity",
            crate::metrics::track,
        ))
        .with_state(state)
}

fn version_doc(state: &AppState) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{}/v3/", state.identity_url)}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

/// `GET /`: 300 Multiple Choices with a Location, as Keystone answers.
async fn versions(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let body = json!({"versions": {"values": [version_doc(&state)]}});
    (
        StatusCode::MULTIPLE_CHOICES,
        [(header::LOCATION, format!("{}/v3/", state.identity_url))],
        Json(body),
    )
        .into_response()
}

async fn version(axum::extract::State(state): axum::extract::State<AppState>) -> Json<Value> {
    Json(json!({"version": version_doc(&state)}))
}

/// Parses Keystone's boolean query values (`enabled=false`, `effective`, `include_names=True`).
/// A key present with an empty value means true.
fn query_flag(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<bool>> {
    match q.get(key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v.is_empty() || v == "true" || v == "1" || v == "yes" => Ok(Some(true)),
        Some(v) if v == "false" || v == "0" || v == "no" => Ok(Some(false)),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid value for query parameter '{key}': '{v}' is not a boolean."
        ))),
    }
}

/// A list body: `{"<key>": [...], "links": {"self": …, "previous": null, "next": null}}`.
fn list_body(state: &AppState, key: &str, path: &str, items: Vec<Value>) -> Json<Value> {
    Json(json!({
        key: items,
        "links": {"self": format!("{}/v3/{}", state.identity_url, path), "previous": null, "next": null},
    }))
}
