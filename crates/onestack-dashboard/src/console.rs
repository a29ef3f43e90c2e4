//! The interactive serial console in the page: the browser opens a websocket to the dashboard
//! (same origin, session cookie), the dashboard asks the compute API for the server's console URL
//! with the user's token and bridges the two. The console token never reaches the browser.

use crate::Dash;
use axum::Router;

pub fn routes() -> Router<Dash> {
    Router::new()
}
