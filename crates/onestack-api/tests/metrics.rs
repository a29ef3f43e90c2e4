//! `/metrics` over HTTP: request counters and latency histograms move by exactly the requests
//! made, per service and status; scheduler decisions, servers by state and host capacity show
//! what the cloud holds. One test in this binary: the counters are the process's.

mod common;

use common::{ADMIN_PW, AGENT_TOKEN};
use onestack_api::compute::AGENT_TOKEN_HEADER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

struct Cloud {
    identity_url: String,
    image_url: String,
    url: String,
    metrics_url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Cloud {
    let cp = common::start().await;
    Cloud {
        identity_url: cp.identity,
        image_url: cp.image,
        url: cp.compute,
        metrics_url: cp.metrics,
        http: reqwest::Client::new(),
        _dir: cp.dir,
    }
}

/// Samples by name and label set, from exposition text checked for well-formedness on the way:
/// every sample's family was introduced by HELP and TYPE, and histograms are consistent.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name");
                assert!(helped.insert(name.to_string()), "HELP twice: {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type");
                assert!(helped.contains(name), "TYPE before HELP: {name}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').expect("value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(&name)
                .to_string();
            assert!(types.contains_key(&family), "no TYPE for {name}");
            assert!(
                samples.insert((name, labels), value).is_none(),
                "duplicate sample {line:?}"
            );
        }
        let s = Scrape { samples, types };
        s.check_histograms();
        s
    }

    fn check_histograms(&self) {
        for (name, _) in self.types.iter().filter(|(_, t)| *t == "histogram") {
            let bucket = format!("{name}_bucket");
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for ((n, labels), v) in &self.samples {
                if *n == bucket {
                    let mut rest = labels.clone();
                    let le = rest.remove("le").expect("le");
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect("le")
                    };
                    series.entry(rest).or_default().push((le, *v));
                }
            }
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}");
                let inf = buckets.last().expect("buckets");
                assert_eq!(inf.0, f64::INFINITY, "{name} ends in +Inf");
                let count = self.samples[&(format!("{name}_count"), labels.clone())];
                assert_eq!(inf.1, count, "{name}: +Inf == _count");
                assert!(self
                    .samples
                    .contains_key(&(format!("{name}_sum"), labels.clone())));
            }
        }
    }

    /// The sample's value; 0 when absent (a counter not yet incremented).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

impl Cloud {
    async fn scrape(&self) -> Scrape {
        let resp = self
            .http
            .get(format!("{}/metrics", self.metrics_url))
            .send()
            .await
            .expect("scrape");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        Scrape::parse(&resp.text().await.expect("text"))
    }

    async fn admin_token(&self) -> String {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": ADMIN_PW}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}});
        let resp = self
            .http
            .post(format!("{}/v3/auth/tokens", self.identity_url))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.headers()["x-subject-token"]
            .to_str()
            .expect("header")
            .to_string()
    }

    async fn get(&self, url: &str, token: Option<&str>) -> StatusCode {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        req.send().await.expect("send").status()
    }

    async fn create_server(&self, token: &str, image: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}/v2.1/servers", self.url))
            .header("x-auth-token", token)
            .json(&json!({"server": {"name": "s", "imageRef": image, "flavorRef": "1"}}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        resp.json().await.expect("json")
    }
}

fn req(
    service: &'static str,
    method: &'static str,
    status: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![("service", service), ("method", method), ("status", status)]
}

const REQUESTS: &str = "onestack_api_requests_total";
const DURATION_COUNT: &str = "onestack_api_request_duration_seconds_count";
const DECISIONS: &str = "onestack_scheduler_decisions_total";

#[tokio::test]
async fn metrics_count_requests_decisions_servers_and_hosts() {
    let c = start().await;
    let admin = c.admin_token().await;
    // An image to boot (raw, a few bytes), made before the first scrape.
    let resp = c
        .http
        .post(format!("{}/v2/images", c.image_url))
        .header("x-auth-token", &admin)
        .json(&json!({"name": "img", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .expect("image");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let image = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let resp = c
        .http
        .put(format!("{}/v2/images/{image}/file", c.image_url))
        .header("x-auth-token", &admin)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 512])
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let before = c.scrape().await;
    // Scheduler decisions exist from the start, at what they are.
    assert!(before.samples.contains_key(&(
        DECISIONS.to_string(),
        [("kind", "boot"), ("result", "placed")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    )));
    assert_eq!(before.get("onestack_store_up", &[]), 1.0);

    // One 2xx, two 404s (an unknown route, a missing server), one 401, on compute; one 2xx on
    // identity.
    assert_eq!(c.get(&format!("{}/", c.url), None).await, StatusCode::OK);
    assert_eq!(
        c.get(
            &format!("{}/v2.1/servers/nope/no/such/thing", c.url),
            Some(&admin)
        )
        .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(&format!("{}/v2.1/servers/nope", c.url), Some(&admin))
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(&format!("{}/v2.1/servers", c.url), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.get(&format!("{}/v3", c.identity_url), None).await,
        StatusCode::OK
    );
    let after = c.scrape().await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(delta(REQUESTS, &req("compute", "GET", "200")), 1.0);
    assert_eq!(delta(REQUESTS, &req("compute", "GET", "404")), 2.0);
    assert_eq!(delta(REQUESTS, &req("compute", "GET", "401")), 1.0);
    assert_eq!(delta(REQUESTS, &req("identity", "GET", "200")), 1.0);
    assert_eq!(delta(REQUESTS, &req("identity", "POST", "201")), 0.0);
    assert_eq!(delta(REQUESTS, &req("image", "GET", "200")), 0.0);
    for (service, status, n) in [
        ("compute", "200", 1.0),
        ("compute", "404", 2.0),
        ("compute", "401", 1.0),
    ] {
        assert_eq!(
            delta(DURATION_COUNT, &[("service", service), ("status", status)]),
            n,
            "{service} {status}"
        );
    }
    // The earlier requests were counted too: the token, the image and its upload.
    assert!(before.get(REQUESTS, &req("identity", "POST", "201")) >= 1.0);
    assert!(before.get(REQUESTS, &req("image", "POST", "201")) >= 1.0);
    assert!(before.get(REQUESTS, &req("image", "PUT", "204")) >= 1.0);

    // No host: the server is created in ERROR, and the scheduler says why.
    let server = c.create_server(&admin, &image).await;
    assert!(server["server"]["id"].is_string());
    let mut after = c.scrape().await;
    for _ in 0..50 {
        if after.get("onestack_instances", &[("vm_state", "error")]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = c.scrape().await;
    }
    let boot = |r: &'static str| [("kind", "boot"), ("result", r)];
    assert_eq!(
        after.get(DECISIONS, &boot("no_valid_host"))
            - before.get(DECISIONS, &boot("no_valid_host")),
        1.0
    );
    assert_eq!(
        after.get(DECISIONS, &boot("placed")),
        before.get(DECISIONS, &boot("placed"))
    );
    assert_eq!(
        after.get("onestack_instances", &[("vm_state", "error")]),
        1.0
    );
    assert_eq!(
        after.get("onestack_instances", &[("vm_state", "active")]),
        0.0
    );
    assert_eq!(
        after.get(REQUESTS, &req("compute", "POST", "202"))
            - before.get(REQUESTS, &req("compute", "POST", "202")),
        1.0
    );

    // A host joins (the test plays its agent: the internal API counts apart from compute).
    let resp = c
        .http
        .post(format!("{}/internal/v1/hosts", c.url))
        .header(AGENT_TOKEN_HEADER, AGENT_TOKEN)
        .json(
            &json!({"host": "h1", "host_ip": "198.18.0.2", "agent_url": "http://198.18.0.2:1",
            "vcpus": 8, "memory_mb": 16384, "local_gb": 100, "cpu_info": {},
            "hypervisor_type": "QEMU", "hypervisor_version": 7002000, "virt_type": "qemu",
            "availability_zone": null}),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), StatusCode::OK);
    c.create_server(&admin, &image).await;
    let last = c.scrape().await;
    assert_eq!(
        last.get(DECISIONS, &boot("placed")) - before.get(DECISIONS, &boot("placed")),
        1.0
    );
    assert_eq!(last.get(REQUESTS, &req("internal", "POST", "200")), 1.0);
    let h1 = [("host", "h1")];
    assert_eq!(last.get("onestack_host_up", &h1), 1.0);
    assert_eq!(last.get("onestack_host_enabled", &h1), 1.0);
    assert_eq!(last.get("onestack_host_vcpus", &h1), 8.0);
    assert_eq!(last.get("onestack_host_memory_mb", &h1), 16384.0);
    assert_eq!(last.get("onestack_host_disk_gb", &h1), 100.0);
    // Flavor 1 is m1.tiny: 1 vCPU, 512 MB, 1 GB.
    assert_eq!(last.get("onestack_host_vcpus_used", &h1), 1.0);
    assert_eq!(last.get("onestack_host_memory_mb_used", &h1), 512.0);
    assert_eq!(last.get("onestack_host_disk_gb_used", &h1), 1.0);
    assert_eq!(last.get("onestack_host_instances", &h1), 1.0);
    assert_eq!(
        last.get("onestack_instances", &[("vm_state", "building")]),
        1.0
    );
    assert_eq!(last.types["onestack_instances"], "gauge");
    assert_eq!(
        last.types["onestack_api_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(last.types[REQUESTS], "counter");

    // Only /metrics is served there; nothing in it names a tenant.
    assert_eq!(
        c.get(&format!("{}/other", c.metrics_url), None).await,
        StatusCode::NOT_FOUND
    );
    let text = c
        .http
        .get(format!("{}/metrics", c.metrics_url))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let id = server["server"]["id"].as_str().expect("id");
    assert!(!text.contains(id) && !text.contains(&image) && !text.contains("admin"));
}
