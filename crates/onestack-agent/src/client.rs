//! The agent's side of the internal API: a typed client for the controller.

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use onestack_core::compute::proto;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub const TOKEN_HEADER: &str = "x-onestack-agent-token";

/// The controllers' internal API. With several controllers (their compute URLs, comma
/// separated, plus those the controllers name in their heartbeat answers) a call that cannot
/// connect goes to the next one, which then serves the calls after it too.
#[derive(Clone)]
pub struct Controller {
    bases: Arc<RwLock<Vec<String>>>,
    current: Arc<AtomicUsize>,
    token: String,
    http: reqwest::Client,
}

fn internal_base(url: &str) -> String {
    format!("{}/internal/v1", url.trim().trim_end_matches('/'))
}

impl Controller {
    /// `urls`: the controllers' compute URLs, e.g. `http://198.18.0.1:8774`, comma separated.
    pub fn new(urls: &str, token: &str) -> Controller {
        let bases: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(internal_base)
            .collect();
        Controller {
            bases: Arc::new(RwLock::new(bases)),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    fn bases(&self) -> Vec<String> {
        self.bases.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds controllers this agent did not know (another controller joined the cloud); the
    /// configured ones keep their place and the current one stays current.
    pub fn learn(&self, urls: &[String]) {
        let mut bases = self.bases.write().unwrap_or_else(|e| e.into_inner());
        for u in urls {
            let b = internal_base(u);
            if !u.trim().is_empty() && !bases.contains(&b) {
                tracing::info!(controller = %u, "learned of another controller");
                bases.push(b);
            }
        }
    }

    /// Every controller this agent knows, by compute URL.
    pub fn urls(&self) -> Vec<String> {
        self.bases()
            .iter()
            .map(|b| b.trim_end_matches("/internal/v1").to_string())
            .collect()
    }

    /// The controller calls go to now.
    pub fn current_url(&self) -> String {
        let bases = self.bases();
        let i = self.current.load(Ordering::Relaxed) % bases.len().max(1);
        bases
            .get(i)
            .map_or("", |b| b.trim_end_matches("/internal/v1"))
            .to_string()
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let bases = self.bases();
        let i = self.current.load(Ordering::Relaxed) % bases.len().max(1);
        let base = bases.get(i).map_or("", String::as_str);
        self.http
            .request(method, format!("{base}{path}"))
            .header(TOKEN_HEADER, &self.token)
    }

    /// Sends `rb`; when its controller cannot be reached, the same request to the next one (a
    /// request that never connected was never received). Streamed bodies are not repeated.
    async fn send(&self, rb: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        let mut req = rb.build()?;
        let bases = self.bases();
        for _ in 1..bases.len() {
            let Some(again) = req.try_clone() else { break };
            let url = req.url().to_string();
            match self.http.execute(req).await {
                Err(e) if e.is_connect() => {
                    let Some(from) = bases.iter().position(|b| url.starts_with(b.as_str())) else {
                        return Err(e);
                    };
                    let to = (from + 1) % bases.len();
                    let _ = self.current.compare_exchange(
                        from,
                        to,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(
                        from = %bases[from], to = %bases[to], error = %e,
                        "controller unreachable; trying the next"
                    );
                    req = again;
                    let moved = url.replacen(&bases[from], &bases[to], 1);
                    if let Ok(u) = moved.parse() {
                        *req.url_mut() = u;
                    }
                }
                other => return other,
            }
        }
        self.http.execute(req).await
    }

    async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("{what}: controller answered {status}: {body}")
        }
    }

    pub async fn register(&self, r: &proto::RegisterHost) -> Result<proto::Registered> {
        let resp = self
            .send(
                self.req(reqwest::Method::POST, "/hosts")
                    .json(r)
                    .timeout(Duration::from_secs(15)),
            )
            .await
            .context("register")?;
        Ok(Self::check(resp, "register").await?.json().await?)
    }

    pub async fn heartbeat(&self, host: &str) -> Result<()> {
        let resp = self
            .send(
                self.req(reqwest::Method::POST, &format!("/hosts/{host}/heartbeat"))
                    .timeout(Duration::from_secs(10)),
            )
            .await
            .context("heartbeat")?;
        let resp = Self::check(resp, "heartbeat").await?;
        // The answer names every live controller: calls fail over to those too.
        if let Ok(beat) = resp.json::<proto::HeartbeatAnswer>().await {
            self.learn(&beat.controllers);
        }
        Ok(())
    }

    /// Long-polls the desired state once the generation passes `after`.
    pub async fn desired(
        &self,
        host: &str,
        after: i64,
        wait: Duration,
    ) -> Result<proto::DesiredState> {
        let resp = self
            .send(
                self.req(
                    reqwest::Method::GET,
                    &format!(
                        "/hosts/{host}/desired?after={after}&wait={}",
                        wait.as_secs()
                    ),
                )
                .timeout(wait + Duration::from_secs(15)),
            )
            .await
            .context("desired state")?;
        Ok(Self::check(resp, "desired state").await?.json().await?)
    }

    /// Long-polls the host's desired networking once its generation passes `after`.
    pub async fn network_state(
        &self,
        host: &str,
        after: i64,
        wait: Duration,
        network_node: bool,
    ) -> Result<onestack_core::network::proto::NetworkState> {
        let resp = self
            .send(
                self.req(
                    reqwest::Method::GET,
                    &format!(
                        "/hosts/{host}/network?after={after}&wait={}&network_node={}",
                        wait.as_secs(),
                        u8::from(network_node)
                    ),
                )
                .timeout(wait + Duration::from_secs(15)),
            )
            .await
            .context("network state")?;
        Ok(Self::check(resp, "network state").await?.json().await?)
    }

    /// What the server at `ip` on `network_id` may know of itself; None when no server has it.
    pub async fn metadata(&self, network_id: &str, ip: &str) -> Result<Option<proto::ConfigDrive>> {
        let resp = self
            .send(
                self.req(
                    reqwest::Method::GET,
                    &format!("/metadata/{network_id}/{ip}"),
                )
                .timeout(Duration::from_secs(10)),
            )
            .await
            .context("metadata")?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(Self::check(resp, "metadata").await?.json().await?))
    }

    pub async fn report(&self, host: &str, id: &str, r: &proto::Report) -> Result<()> {
        let resp = self
            .send(
                self.req(
                    reqwest::Method::POST,
                    &format!("/hosts/{host}/instances/{id}/report"),
                )
                .json(r)
                .timeout(Duration::from_secs(15)),
            )
            .await
            .context("report")?;
        Self::check(resp, "report").await?;
        Ok(())
    }

    /// Reports this host's step of a live migration.
    pub async fn report_migration(
        &self,
        host: &str,
        id: &str,
        r: &proto::MigrationReport,
    ) -> Result<()> {
        let resp = self
            .send(
                self.req(
                    reqwest::Method::POST,
                    &format!("/hosts/{host}/instances/{id}/migration"),
                )
                .json(r)
                .timeout(Duration::from_secs(15)),
            )
            .await
            .context("migration report")?;
        Self::check(resp, "migration report").await?;
        Ok(())
    }

    /// Reports a volume plugged (`attach`) or unplugged (`detach`), or why not.
    pub async fn report_volume(
        &self,
        host: &str,
        id: &str,
        volume: &str,
        r: &proto::VolumeReport,
    ) -> Result<()> {
        let resp = self
            .send(
                self.req(
                    reqwest::Method::POST,
                    &format!("/hosts/{host}/instances/{id}/volumes/{volume}"),
                )
                .json(r)
                .timeout(Duration::from_secs(15)),
            )
            .await
            .context("volume report")?;
        Self::check(resp, "volume report").await?;
        Ok(())
    }

    /// Streams a file another host's agent serves (a URL with its own token) into `dest`.
    pub async fn fetch(&self, url: &str, dest: &Path) -> Result<()> {
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .context("fetching from the other host")?;
        if !resp.status().is_success() {
            anyhow::bail!("the other host answered {}", resp.status());
        }
        let mut f = create_private(dest).await?;
        while let Some(chunk) = resp.chunk().await? {
            tokio::io::AsyncWriteExt::write_all(&mut f, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut f).await?;
        f.sync_all().await?;
        Ok(())
    }

    /// Streams an image's data into `dest`.
    pub async fn download_image(&self, id: &str, dest: &Path) -> Result<()> {
        let resp = self
            .send(self.req(reqwest::Method::GET, &format!("/images/{id}/file")))
            .await
            .context("image download")?;
        let resp = Self::check(resp, "image download").await?;
        let mut f = create_private(dest)
            .await
            .with_context(|| format!("cannot create {}", dest.display()))?;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.try_next().await.context("image download")? {
            f.write_all(&chunk).await?;
        }
        f.sync_all().await?;
        Ok(())
    }

    pub async fn upload_snapshot(&self, image_id: &str, file: &Path) -> Result<()> {
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let resp = self
            .send(
                self.req(reqwest::Method::PUT, &format!("/images/{image_id}/file"))
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body),
            )
            .await
            .context("snapshot upload")?;
        Self::check(resp, "snapshot upload").await?;
        Ok(())
    }
}

/// A new (or emptied) file only root can read: guests' disks and images are tenants' data.
async fn create_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A controller that answers heartbeats, counting them.
    async fn live() -> (String, Arc<AtomicU64>) {
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/internal/v1/hosts/{host}/heartbeat",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, hits)
    }

    /// An address nothing listens on.
    async fn dead() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        drop(l);
        url
    }

    #[tokio::test]
    async fn calls_go_to_the_next_controller_when_one_is_down() {
        let (up, hits) = live().await;
        let down = dead().await;
        let c = Controller::new(&format!("{down}, {up}"), "t");
        assert_eq!(c.current_url(), down);
        c.heartbeat("h").await.expect("through the second");
        assert_eq!(c.current_url(), up);
        // It stays there: the next call goes straight to it.
        c.heartbeat("h").await.expect("again");
        assert_eq!(hits.load(Ordering::Relaxed), 2);
        // The clones the agent's tasks hold follow.
        assert_eq!(c.clone().current_url(), up);
        // With none up, the call fails.
        let none = Controller::new(&dead().await, "t");
        assert!(none.heartbeat("h").await.is_err());
    }

    /// A controller whose heartbeat answer names `others`; aborting the task takes it down.
    async fn naming(others: Vec<String>) -> (String, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let app = axum::Router::new().route(
            "/internal/v1/hosts/{host}/heartbeat",
            axum::routing::post(move || {
                let others = others.clone();
                // No keep-alive: once aborted, nothing of this controller answers.
                async move {
                    (
                        [(axum::http::header::CONNECTION, "close")],
                        axum::Json(proto::HeartbeatAnswer {
                            controllers: others,
                        }),
                    )
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        (url, task)
    }

    #[tokio::test]
    async fn agents_learn_other_controllers_from_heartbeats_and_fail_over_to_them() {
        let (second, hits) = live().await;
        let (first, task) = naming(vec![second.clone()]).await;
        let c = Controller::new(&first, "t");
        assert_eq!(c.urls(), vec![first.clone()]);
        c.heartbeat("h").await.expect("first answers");
        assert_eq!(c.urls(), vec![first.clone(), second.clone()]);
        // Learning again adds nothing twice.
        c.learn(&[second.clone(), format!("{first}/")]);
        assert_eq!(c.urls().len(), 2);
        assert_eq!(hits.load(Ordering::Relaxed), 0);
        task.abort();
        let _ = task.await;
        c.heartbeat("h").await.expect("the learned one answers");
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.current_url(), second);
    }
}
