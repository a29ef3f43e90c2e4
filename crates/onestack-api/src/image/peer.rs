//! The HTTP side of image replication (`onestack_core::image::replicate`): a copy request to a
//! peer controller's internal API, authenticated with the controllers' shared secret.

use crate::compute::AGENT_TOKEN_HEADER;
use futures_util::TryStreamExt;
use onestack_core::image::replicate::{PeerFetch, PeerFuture, PeerReply};
use std::sync::Arc;
use std::time::Duration;

/// Asks peers over HTTP. No overall timeout (an image may take long to send); a peer that
/// cannot be reached in 5 s, or stops sending for 60 s, fails the copy.
pub struct HttpPeers {
    http: reqwest::Client,
}

impl HttpPeers {
    pub fn new() -> Arc<HttpPeers> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Arc::new(HttpPeers { http })
    }
}

impl PeerFetch for HttpPeers {
    fn get(&self, url: String, secret: String) -> PeerFuture {
        let req = self.http.get(url).header(AGENT_TOKEN_HEADER, secret);
        Box::pin(async move {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if resp.status() != reqwest::StatusCode::OK {
                return Ok(PeerReply::Status(resp.status().as_u16()));
            }
            Ok(PeerReply::Data(Box::pin(
                resp.bytes_stream().map_err(|e| e.to_string()),
            )))
        })
    }
}
