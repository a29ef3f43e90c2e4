//! The controllers of one cloud: each beats a heartbeat into the store (where its APIs answer,
//! whether it leads), and the one holding the leader lease (`LockName::Leader`, a PostgreSQL
//! advisory lock, so it is freed when its holder's session dies) runs the singleton work. On
//! SQLite there is one controller, which always leads.

use crate::metrics::Gauge;
use futures_util::future::BoxFuture;
use onestack_store::{ControllerRecord, LockName, Store, StoreLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often a controller beats and its lease is checked or tried.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A controller whose last heartbeat is older than this is down.
pub const CONTROLLER_DOWN_AFTER: Duration = Duration::from_secs(10);
/// How often the leader runs its singleton work.
pub const SINGLETON_EVERY: Duration = Duration::from_secs(5);
/// Longest one round of one piece of singleton work may take before it is abandoned.
const WORK_TIMEOUT: Duration = Duration::from_secs(60);

static LEADER: Gauge = Gauge::new(
    "onestack_controller_leader",
    "1 while this controller holds the leader lease and runs the singleton work.",
);

/// One piece of singleton work: called every `SINGLETON_EVERY` on the leader only.
pub struct SingletonWork {
    pub name: &'static str,
    pub run: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl SingletonWork {
    /// `round` once per round; its error is logged, and the next round tries again.
    pub fn new<F, Fut, T, E>(name: &'static str, round: F) -> SingletonWork
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        SingletonWork {
            name,
            run: Box::new(move || {
                let fut = round();
                Box::pin(async move {
                    if let Err(e) = fut.await {
                        tracing::warn!(work = name, error = %e, "singleton work failed");
                    }
                })
            }),
        }
    }
}

pub struct Cluster {
    store: Store,
    name: String,
    /// This controller's base URL by service type, and the same as the JSON on record.
    endpoints: HashMap<String, String>,
    endpoints_json: String,
    started_at: String,
    leader: AtomicBool,
    known: RwLock<Vec<ControllerRecord>>,
    /// Every known controller's base URLs by service type (parsed once per heartbeat: catalogs
    /// read them on every token).
    known_endpoints: RwLock<Vec<HashMap<String, String>>>,
}

impl Cluster {
    /// This controller, `name`, whose APIs answer at `endpoints` (service type → base URL).
    pub fn new(store: Store, name: &str, endpoints: &[(&str, String)]) -> Arc<Cluster> {
        let endpoints: HashMap<String, String> = endpoints
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        Arc::new(Cluster {
            store,
            name: name.to_string(),
            endpoints_json: serde_json::json!(endpoints).to_string(),
            endpoints,
            started_at: crate::image::now(),
            leader: AtomicBool::new(false),
            known: RwLock::new(Vec::new()),
            known_endpoints: RwLock::new(Vec::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this controller holds the leader lease now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Every controller on record as of the last heartbeat.
    pub fn controllers(&self) -> Vec<ControllerRecord> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The controllers whose heartbeat is recent.
    pub fn live_controllers(&self) -> Vec<ControllerRecord> {
        let now = crate::now_micros();
        self.controllers()
            .into_iter()
            .filter(|c| is_live(c, now))
            .collect()
    }

    /// Records a heartbeat and refreshes the list of controllers.
    pub async fn beat(&self) {
        let now = crate::now_micros();
        if let Err(e) = self
            .store
            .controller_heartbeat(
                &self.name,
                &self.endpoints_json,
                &self.started_at,
                now,
                self.is_leader(),
            )
            .await
        {
            tracing::warn!(error = %e, "controller heartbeat failed");
        }
        match self.store.list_controllers().await {
            Ok(list) => {
                *self
                    .known_endpoints
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) =
                    list.iter().map(ControllerRecord::endpoints).collect();
                *self.known.write().unwrap_or_else(|e| e.into_inner()) = list;
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the controllers"),
        }
    }

    /// Beats, holds or seeks the lease, and (while leading) runs `work`, until the process
    /// ends.
    pub fn spawn(self: &Arc<Self>, work: Vec<SingletonWork>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run(work).await })
    }

    async fn run(self: Arc<Self>, work: Vec<SingletonWork>) {
        let beating = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    me.beat().await;
                    tokio::time::sleep(HEARTBEAT).await;
                }
            })
        };
        let mut lease: Option<StoreLock> = None;
        let mut next_work = tokio::time::Instant::now();
        LEADER.set(&[], 0.0);
        loop {
            self.keep_or_seek(&mut lease).await;
            if lease.is_some() && tokio::time::Instant::now() >= next_work {
                for w in &work {
                    if tokio::time::timeout(WORK_TIMEOUT, (w.run)()).await.is_err() {
                        tracing::warn!(work = w.name, "singleton work timed out");
                    }
                }
                next_work = tokio::time::Instant::now() + SINGLETON_EVERY;
            }
            tokio::time::sleep(HEARTBEAT / 2).await;
            if beating.is_finished() {
                break;
            }
        }
    }

    /// Keeps a held lease while its session answers; otherwise tries to take it.
    async fn keep_or_seek(&self, lease: &mut Option<StoreLock>) {
        if let Some(l) = lease.as_mut() {
            if l.alive().await {
                return;
            }
            tracing::warn!(controller = %self.name, "lost the leader lease (its database session ended)");
            *lease = None;
            self.set_leader(false).await;
        }
        match self.store.try_lock(LockName::Leader).await {
            Ok(Some(l)) => {
                *lease = Some(l);
                tracing::info!(controller = %self.name, "took the leader lease");
                self.set_leader(true).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot try the leader lease"),
        }
    }

    async fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Relaxed);
        LEADER.set(&[], if leading { 1.0 } else { 0.0 });
        // On record at once, not at the next beat.
        self.beat().await;
    }

    /// `url` with a controller's base URL for `service` replaced by this controller's: a
    /// catalog issued here points at the controller the client talks to (which shares the
    /// cloud's state), so losing another controller does not strand the client.
    pub fn localize(&self, service: &str, url: &str) -> String {
        let Some(mine) = self.endpoints.get(service) else {
            return url.to_string();
        };
        let known = self
            .known_endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for theirs in known.iter().filter_map(|c| c.get(service)) {
            if let Some(rest) = url.strip_prefix(theirs.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{mine}{rest}");
                }
            }
        }
        url.to_string()
    }
}

/// Whether `c` beat within `CONTROLLER_DOWN_AFTER` of `now_us`.
pub fn is_live(c: &ControllerRecord, now_us: i64) -> bool {
    now_us.saturating_sub(c.heartbeat_us) <= CONTROLLER_DOWN_AFTER.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .expect("open")
    }

    #[tokio::test]
    async fn catalog_urls_point_at_the_controller_that_issued_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(&dir).await;
        let a = Cluster::new(
            s.clone(),
            "a",
            &[("compute", "http://198.18.0.1:8774".into())],
        );
        let b = Cluster::new(s, "b", &[("compute", "http://198.18.0.2:8774".into())]);
        a.beat().await;
        b.beat().await;
        assert_eq!(
            b.localize("compute", "http://198.18.0.1:8774/v2.1"),
            "http://198.18.0.2:8774/v2.1"
        );
        assert_eq!(
            b.localize("compute", "http://198.18.0.1:8774"),
            "http://198.18.0.2:8774"
        );
        // Someone else's endpoint, a longer port, another service: unchanged.
        for (svc, url) in [
            ("compute", "http://203.0.113.9:8774/v2.1"),
            ("compute", "http://198.18.0.1:87745/v2.1"),
            ("image", "http://198.18.0.1:8774/v2"),
        ] {
            assert_eq!(b.localize(svc, url), url);
        }
        assert_eq!(b.controllers().len(), 2);
        assert_eq!(b.live_controllers().len(), 2);
    }

    #[tokio::test]
    async fn the_only_controller_of_sqlite_leads_and_runs_the_work() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = Cluster::new(store(&dir).await, "solo", &[]);
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = runs.clone();
        let task = c.spawn(vec![SingletonWork {
            name: "count",
            run: Box::new(move || {
                let counter = counter.clone();
                Box::pin(async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                })
            }),
        }]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(c.is_leader());
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        let rec = c.controllers();
        assert_eq!(rec.len(), 1);
        assert!(rec[0].leader_since_us.is_some(), "{rec:?}");
        task.abort();
    }
}
