//! Admin views (admin role only). The dashboard checks the role to show a clear page; the APIs'
//! own policy refuses a non-admin token anyway.

use crate::api::{text, Svc};
use crate::html::{escape, page, table};
use crate::{error_page, html_response, Dash};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub fn routes() -> Router<Dash> {
    Router::new().route("/admin/hypervisors", get(hypervisors))
}

/// The signed-in admin, or the page to show instead (sign-in redirect or 403).
macro_rules! admin {
    ($d:expr, $headers:expr) => {{
        let ctx = match $d.signed_in(&$headers) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if !ctx.s.is_admin() {
            return html_response(
                StatusCode::FORBIDDEN,
                error_page(&ctx.s, "This page is for administrators only."),
            );
        }
        ctx
    }};
}

async fn hypervisors(State(d): State<Dash>, headers: HeaderMap) -> Response {
    let ctx = admin!(d, headers);
    let v = match d.get(&ctx.s, Svc::Compute, "/os-hypervisors/detail").await {
        Ok(v) => v,
        Err(f) => return html_response(f.status, error_page(&ctx.s, &f.message)),
    };
    let rows: Vec<Vec<String>> = v["hypervisors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let num = |k: &str| h[k].as_i64().unwrap_or(0);
            vec![
                escape(text(h, "hypervisor_hostname")),
                escape(text(h, "host_ip")),
                escape(text(h, "state")),
                format!("{} / {}", num("vcpus_used"), num("vcpus")),
                format!("{} / {} MB", num("memory_mb_used"), num("memory_mb")),
                num("running_vms").to_string(),
            ]
        })
        .collect();
    html_response(
        StatusCode::OK,
        page(
            "Hypervisors",
            Some(&ctx.s),
            &format!(
                "<h1>Hypervisors</h1>{}",
                table(
                    &["Host", "IP", "State", "vCPUs used", "RAM used", "Instances"],
                    &rows,
                    "No hypervisors."
                )
            ),
        ),
    )
    .into_response()
}
