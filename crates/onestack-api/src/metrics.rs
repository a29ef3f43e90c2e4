//! `/metrics` for Prometheus, and the middleware that counts and times every API request.
//!
//! The counting layer goes outside `request_context` on each service's router, so what it sees
//! is the status the client gets (including the router's own 404/405/413). The endpoint itself
//! is served on a listener of its own (`api.metrics_port`), unauthenticated as scrape targets
//! are, and shows no tenant's ids or names.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use onestack_core::compute::ComputeService;
use onestack_core::metrics::{self, Counter, Exposition, Gauge, Histogram};
use std::sync::Arc;
use std::time::Instant;

static REQUESTS: Counter = Counter::new(
    "onestack_api_requests_total",
    "API requests answered, by service, method and status code.",
);

static DURATION: Histogram = Histogram::new(
    "onestack_api_request_duration_seconds",
    "Time to answer an API request (until the response head; a streamed body may take longer), \
     by service and status code.",
    metrics::LATENCY_BUCKETS,
);

static STORE_UP: Gauge = Gauge::new(
    "onestack_store_up",
    "1 when the state store answered this scrape's queries (else the cloud's gauges are absent).",
);

/// Counts and times each request under `service` (the state given to `from_fn_with_state`).
/// The agents' internal API shares the compute port; its long polls would swamp compute's
/// latencies, so it is counted as the service `internal`.
pub async fn track(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let service = if service == "compute" && req.uri().path().starts_with("/internal/") {
        "internal"
    } else {
        service
    };
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    REQUESTS.inc(&[
        ("service", service),
        ("method", method),
        ("status", &status),
    ]);
    DURATION.observe(
        &[("service", service), ("status", &status)],
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// `router` with its requests counted under `service` (for routers built outside this crate).
pub fn tracked(router: Router, service: &'static str) -> Router {
    router.layer(axum::middleware::from_fn_with_state(service, track))
}

/// The standard methods by name; any other (extension methods are legal HTTP) as one label
/// value, so a client cannot grow the series without bound.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// What the metrics endpoint reads at scrape time.
#[derive(Clone)]
pub struct MetricsState {
    pub compute: Arc<ComputeService>,
}

/// `GET /metrics`: this process's counters and histograms, then the cloud's gauges.
pub fn router(state: MetricsState) -> Router {
    onestack_core::compute::scheduler::declare_metrics();
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

async fn scrape(State(s): State<MetricsState>) -> Response {
    let mut cloud = Exposition::default();
    // The cloud's gauges are written only when every query answered.
    let store_up = match metrics::cloud::render(&s.compute, &mut cloud).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the cloud's state");
            false
        }
    };
    STORE_UP.set(&[], f64::from(u8::from(store_up)));
    let mut out = Exposition::default();
    metrics::global().render(&mut out);
    let mut text = out.into_string();
    text.push_str(&cloud.into_string());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
