//! Project network views: networks and subnets, routers, floating IPs, security groups and rules.

use crate::Dash;
use axum::Router;

pub fn routes() -> Router<Dash> {
    Router::new()
}
