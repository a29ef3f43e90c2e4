//! The agent's side of the internal API: a typed client for the controller.

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use onestack_core::compute::proto;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub const TOKEN_HEADER: &str = "x-onestack-agent-token";

#[derive(Clone)]
pub struct Controller {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Controller {
    /// `base`: the controller's compute URL, e.g. `http://198.18.0.1:8774`.
    pub fn new(base: &str, token: &str) -> Controller {
        Controller {
            base: format!("{}/internal/v1", base.trim_end_matches('/')),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
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
            .req(reqwest::Method::POST, "/hosts")
            .json(r)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .context("register")?;
        Ok(Self::check(resp, "register").await?.json().await?)
    }

    pub async fn heartbeat(&self, host: &str) -> Result<()> {
        let resp = self
            .req(reqwest::Method::POST, &format!("/hosts/{host}/heartbeat"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .context("heartbeat")?;
        Self::check(resp, "heartbeat").await?;
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
            .req(
                reqwest::Method::GET,
                &format!(
                    "/hosts/{host}/desired?after={after}&wait={}",
                    wait.as_secs()
                ),
            )
            .timeout(wait + Duration::from_secs(15))
            .send()
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
            .req(
                reqwest::Method::GET,
                &format!(
                    "/hosts/{host}/network?after={after}&wait={}&network_node={}",
                    wait.as_secs(),
                    u8::from(network_node)
                ),
            )
            .timeout(wait + Duration::from_secs(15))
            .send()
            .await
            .context("network state")?;
        Ok(Self::check(resp, "network state").await?.json().await?)
    }

    /// What the server at `ip` on `network_id` may know of itself; None when no server has it.
    pub async fn metadata(&self, network_id: &str, ip: &str) -> Result<Option<proto::ConfigDrive>> {
        let resp = self
            .req(
                reqwest::Method::GET,
                &format!("/metadata/{network_id}/{ip}"),
            )
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .context("metadata")?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(Self::check(resp, "metadata").await?.json().await?))
    }

    pub async fn report(&self, host: &str, id: &str, r: &proto::Report) -> Result<()> {
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("/hosts/{host}/instances/{id}/report"),
            )
            .json(r)
            .timeout(Duration::from_secs(15))
            .send()
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
            .req(
                reqwest::Method::POST,
                &format!("/hosts/{host}/instances/{id}/migration"),
            )
            .json(r)
            .timeout(Duration::from_secs(15))
            .send()
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
            .req(
                reqwest::Method::POST,
                &format!("/hosts/{host}/instances/{id}/volumes/{volume}"),
            )
            .json(r)
            .timeout(Duration::from_secs(15))
            .send()
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
        let mut f = tokio::fs::File::create(dest).await?;
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
            .req(reqwest::Method::GET, &format!("/images/{id}/file"))
            .send()
            .await
            .context("image download")?;
        let resp = Self::check(resp, "image download").await?;
        let mut f = tokio::fs::File::create(dest)
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
            .req(reqwest::Method::PUT, &format!("/images/{image_id}/file"))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .context("snapshot upload")?;
        Self::check(resp, "snapshot upload").await?;
        Ok(())
    }
}
