//! `onestack demo` (the original setup_test.sh): as the demo user, a keypair (private key kept
//! 0600 in the data dir), a server from the default image on the demo network with a floating IP,
//! a wait until SSH answers, and the exact `ssh` command. Idempotent: an existing demo server is
//! reused. Talks to the running cloud over its public APIs, as any client would.

use crate::config::Config;
use crate::paths::DataDir;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SERVER: &str = "demo";
const KEYPAIR: &str = "demo-key";

struct Api {
    http: reqwest::Client,
    token: String,
    compute: String,
    network: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method, url)
            .header("x-auth-token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{url}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn first_id(list: &Value, key: &str) -> Option<String> {
    list[key].as_array()?.first()?["id"]
        .as_str()
        .map(str::to_string)
}

pub fn private_key_path(dd: &DataDir) -> PathBuf {
    dd.root.join("demo-key")
}

/// Boots (or finds) the demo server and returns the `ssh` command that reaches it.
pub async fn run(dd: &DataDir, cfg: &Config, t0: Instant) -> Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let password = dd.secret("demo-password")?;
    let auth = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "demo", "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": "demo", "domain": {"id": "default"}}}}});
    let resp = http
        .post(format!("{}/v3/auth/tokens", cfg.identity_url()))
        .json(&auth)
        .send()
        .await
        .context("cannot reach the identity API")?;
    if !resp.status().is_success() {
        bail!("the demo user cannot log in: {}", resp.status());
    }
    let token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .context("no token in the identity answer")?
        .to_string();
    let api = Api {
        http,
        token,
        compute: format!("{}/v2.1", cfg.compute_url()),
        network: format!("{}/v2.0", cfg.network_url()),
    };
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // Keypair: generated once; its private key is kept, readable by root only.
    let key_path = private_key_path(dd);
    let have_key = api
        .call(
            get.clone(),
            &format!("{}/os-keypairs/{KEYPAIR}", api.compute),
            None,
        )
        .await
        .is_ok();
    if !have_key || !key_path.exists() {
        if have_key {
            api.call(
                reqwest::Method::DELETE,
                &format!("{}/os-keypairs/{KEYPAIR}", api.compute),
                None,
            )
            .await?;
        }
        let kp = api
            .call(
                post.clone(),
                &format!("{}/os-keypairs", api.compute),
                Some(json!({"keypair": {"name": KEYPAIR}})),
            )
            .await?;
        let private = kp["keypair"]["private_key"]
            .as_str()
            .context("no private key returned")?;
        crate::paths::write_private(&key_path, private)?;
        super::ops::step(
            t0,
            &format!(
                "demo keypair {KEYPAIR} (private key {})",
                key_path.display()
            ),
        );
    }

    // The server, on the demo project's network, from the default image.
    let servers = api
        .call(
            get.clone(),
            &format!("{}/servers?name=^{SERVER}$", api.compute),
            None,
        )
        .await?;
    let server_id = match first_id(&servers, "servers") {
        Some(id) => id,
        None => {
            let images = api
                .call(
                    get.clone(),
                    &format!(
                        "{}/v2/images?name={}",
                        cfg.image_url(),
                        onestack_image::IMAGE_NAME
                    ),
                    None,
                )
                .await?;
            let image = first_id(&images, "images").with_context(|| {
                format!(
                    "the default image {} is not registered",
                    onestack_image::IMAGE_NAME
                )
            })?;
            let nets = api
                .call(
                    get.clone(),
                    &format!("{}/networks?name=private", api.network),
                    None,
                )
                .await?;
            let net =
                first_id(&nets, "networks").context("the demo project has no `private` network")?;
            let s = api
                .call(
                    post.clone(),
                    &format!("{}/servers", api.compute),
                    Some(
                        json!({"server": {"name": SERVER, "imageRef": image, "flavorRef": "1",
                        "key_name": KEYPAIR, "networks": [{"uuid": net}]}}),
                    ),
                )
                .await?;
            let id = s["server"]["id"]
                .as_str()
                .context("no server id")?
                .to_string();
            super::ops::step(t0, &format!("demo server {SERVER} ({id}) created"));
            id
        }
    };
    super::ops::step(
        t0,
        &format!("waiting for {SERVER} to become ACTIVE (up to 300 s)"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = api
            .call(
                get.clone(),
                &format!("{}/servers/{server_id}", api.compute),
                None,
            )
            .await?;
        match s["server"]["status"].as_str() {
            Some("ACTIVE") => break,
            Some("ERROR") => bail!(
                "the demo server failed: {}",
                s["server"]["fault"]["message"]
            ),
            _ if Instant::now() > deadline => bail!("the demo server did not become ACTIVE"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    super::ops::step(t0, &format!("demo server {SERVER} is ACTIVE"));

    // A floating IP on its port (reused when it has one).
    let ports = api
        .call(
            get.clone(),
            &format!("{}/ports?device_id={server_id}", api.network),
            None,
        )
        .await?;
    let port = first_id(&ports, "ports").context("the demo server has no port")?;
    let fips = api
        .call(
            get.clone(),
            &format!("{}/floatingips?port_id={port}", api.network),
            None,
        )
        .await?;
    let address = match fips["floatingips"].as_array().and_then(|a| a.first()) {
        Some(f) => f["floating_ip_address"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        None => {
            let publics = api
                .call(
                    get.clone(),
                    &format!("{}/networks?router:external=True&name=public", api.network),
                    None,
                )
                .await?;
            let public = first_id(&publics, "networks").context("no external network `public`")?;
            let f = api
                .call(
                    post.clone(),
                    &format!("{}/floatingips", api.network),
                    Some(json!({"floatingip": {"floating_network_id": public, "port_id": port}})),
                )
                .await?;
            f["floatingip"]["floating_ip_address"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    if address.is_empty() {
        bail!("no floating IP for the demo server");
    }
    super::ops::step(t0, &format!("floating IP {address} on {SERVER}"));

    // SSH answers when the guest's server sends its banner; before that the guest must get its
    // address from DHCP and its key from the metadata service.
    super::ops::step(
        t0,
        &format!(
            "waiting for SSH on {address}: {SERVER} gets its address by DHCP and its key from \
             the metadata service (up to 300 s)"
        ),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut next_check = started;
    let mut told = false;
    loop {
        if ssh_banner(&address).await {
            break;
        }
        let now = Instant::now();
        if now >= next_check {
            // A DHCP server that cannot read its host list answers no one: say so now, not
            // after five minutes.
            next_check = now + Duration::from_secs(5);
            if let Some(c) = crate::perms::dnsmasq_check(dd)
                .filter(|c| c.severity == crate::perms::Severity::Fail)
            {
                bail!("{SERVER} cannot get an address: {}", c.detail);
            }
        }
        if !told && now > started + Duration::from_secs(60) {
            told = true;
            super::ops::step(
                t0,
                &format!(
                    "still no SSH on {address}; the guest's console: `openstack console log \
                     show {SERVER}`"
                ),
            );
        }
        if now > deadline {
            let console = console_tail(&api, &server_id).await;
            bail!("SSH on {address} did not answer within 300 s; the guest's console ends:\n{console}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    super::ops::step(t0, &format!("SSH answers on {address}"));
    Ok(format!(
        "ssh -i {} -o StrictHostKeyChecking=accept-new onestack@{address}",
        key_path.display()
    ))
}

/// The last lines of the guest's serial console, indented, for an error message.
async fn console_tail(api: &Api, server_id: &str) -> String {
    let out = api
        .call(
            reqwest::Method::POST,
            &format!("{}/servers/{server_id}/action", api.compute),
            Some(json!({"os-getConsoleOutput": {"length": 15}})),
        )
        .await;
    match out {
        Ok(v) => v["output"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("    (cannot read it: {e:#})"),
    }
}

async fn ssh_banner(address: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((address, 22)),
    )
    .await
    else {
        return false;
    };
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf.starts_with(b"SSH-")
    )
}
