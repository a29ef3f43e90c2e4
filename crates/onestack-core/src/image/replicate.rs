//! Image data replication between the controllers of one database, with no shared storage.
//!
//! Every controller keeps its own copy of each image's data in its images directory. One that
//! lacks an image's file copies it from a live peer — a controller on record other than itself
//! whose heartbeat is at most [`LIVE_WITHIN`] old, freshest first, each in turn — over the peers'
//! internal API: `GET {compute}/internal/v1/images/{id}/file?local=1` with the controllers'
//! shared secret. It does so on demand ([`ImageService::ensure_local`], which a download calls
//! before opening the file) and in a background sweep ([`ImageService::spawn_replicator`]) that
//! copies every image missing here and removes the files of images no longer on record, so the
//! data outlives the controller that received the upload and a deleted image is not brought back.
//! `local=1` asks the peer to answer from its own directory only (404 when it lacks the file):
//! two controllers missing the same file never ask each other in a loop.
//!
//! A copy lands like an upload: streamed into a unique `.upload-*` file beside the final one
//! (removed at start-up if a crash leaves it), its size, SHA-512 and MD5 checked against the
//! image's record, fsynced and renamed into place, so a file under an image's id is always whole
//! and verified. A cut transfer or a mismatch leaves no file, and the next peer is tried. There is
//! one copy of an image at a time per controller (a per-image lock), and each runs as its own
//! task: a client that goes away mid-copy does not cut it short.
//!
//! The HTTP request is behind [`PeerFetch`], so this crate holds no HTTP client (the API crate
//! implements it) and tests can play a peer.

use super::{upload, Image, ImageService};
use crate::{CoreError, CoreResult};
use bytes::Bytes;
use futures_util::Stream;
use onestack_store::{Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A controller whose heartbeat is older than this is not asked for data (the same rule that
/// calls a controller down everywhere else).
pub const LIVE_WITHIN: Duration = crate::cluster::CONTROLLER_DOWN_AFTER;

/// The query parameter (`local=1`) of a copy request: answer from your own directory only.
pub const LOCAL_ONLY_PARAM: &str = "local";

/// A peer's answer body.
pub type PeerBody = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// What [`PeerFetch::get`] returns; `Err` when the peer could not be reached.
pub type PeerFuture = Pin<Box<dyn Future<Output = Result<PeerReply, String>> + Send>>;

/// A peer's answer to a copy request.
pub enum PeerReply {
    /// 200: the data follows.
    Data(PeerBody),
    /// Any other status (404: the peer has no copy either).
    Status(u16),
}

/// The one network call replication makes.
pub trait PeerFetch: Send + Sync {
    /// `GET url` with `secret` in the internal API's authentication header.
    fn get(&self, url: String, secret: String) -> PeerFuture;
}

/// What `enable_replication` gave an image service.
pub(super) struct Replication {
    me: String,
    secret: String,
    peers: Arc<dyn PeerFetch>,
    /// One lock per image being copied (entries go when nobody holds or awaits them).
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Images copied here from a peer.
    pub copied: usize,
    /// Images still missing here (no live peer had them, or the copy failed).
    pub missing: usize,
    /// Files removed because their image is no longer on record.
    pub removed: usize,
}

/// An image has data (and so a file on every controller) when active or deactivated.
fn has_data(img: &Image) -> bool {
    img.status == "active" || img.status == "deactivated"
}

fn unavailable(id: &str) -> CoreError {
    CoreError::Typed {
        status: 503,
        kind: "ServiceUnavailable",
        message: format!(
            "The data of image {id} is not on this controller and no other controller could \
             provide it; try again later."
        ),
    }
}

impl ImageService {
    /// Turns on replication: this controller is `me` in the store's `controllers`, copies from
    /// its peers with `secret` (the internal API's shared secret) through `peers`. Returns false
    /// when replication was already on (the first settings stay).
    pub fn enable_replication(
        &self,
        me: impl Into<String>,
        secret: impl Into<String>,
        peers: Arc<dyn PeerFetch>,
    ) -> bool {
        self.replication
            .set(Arc::new(Replication {
                me: me.into(),
                secret: secret.into(),
                peers,
                busy: Mutex::new(HashMap::new()),
            }))
            .is_ok()
    }

    fn copier(&self) -> Option<Copier> {
        Some(Copier {
            store: self.store.clone(),
            dir: self.dir.clone(),
            rep: self.replication.get()?.clone(),
        })
    }

    /// Makes sure the data of `img` (when it has data: active or deactivated) is in this
    /// controller's directory, copying it from a peer if not. Does nothing when replication is
    /// off. Errors: 503 when no live peer could provide a verified copy.
    pub async fn ensure_local(&self, img: &Image) -> CoreResult<()> {
        if !has_data(img) || exists(&self.data_path(&img.id)).await {
            return Ok(());
        }
        let Some(copier) = self.copier() else {
            return Ok(());
        };
        let img = img.clone();
        tokio::spawn(async move { copier.copy(&img).await })
            .await
            .map_err(|e| CoreError::Internal(format!("image copy task: {e}")))?
            .map(|_| ())
    }

    /// Runs [`ImageService::replicate_once`] every `every` until the service is dropped. None
    /// when replication is off.
    pub fn spawn_replicator(
        self: &Arc<Self>,
        every: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.replication.get()?;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                match svc.replicate_once().await {
                    Ok(r) if r.copied > 0 || r.removed > 0 => tracing::info!(
                        copied = r.copied,
                        removed = r.removed,
                        missing = r.missing,
                        "image replication sweep"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "image replication sweep failed"),
                }
            }
        }))
    }

    /// One sweep: removes the files of images no longer on record, then copies here, one at a
    /// time, every image with data that has no file here.
    pub async fn replicate_once(&self) -> CoreResult<SweepReport> {
        let Some(copier) = self.copier() else {
            return Ok(SweepReport::default());
        };
        // The directory first, then the record: a file an upload renames into place after this
        // scan belongs to an image already on record, so it is never taken for a leftover.
        let here = data_files(&self.dir).await?;
        let images = self.store.list_images().await?;
        let known: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        let mut report = SweepReport::default();
        for name in here.iter().filter(|n| !known.contains(n.as_str())) {
            match tokio::fs::remove_file(self.dir.join(name)).await {
                Ok(()) => {
                    tracing::info!(image_id = %name, "removed the data of an image no longer on record");
                    report.removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(image_id = %name, error = %e, "could not remove image data")
                }
            }
        }
        let missing: Vec<&Image> = images
            .iter()
            .filter(|i| has_data(i) && !here.contains(&i.id))
            .collect();
        if missing.is_empty() {
            return Ok(report);
        }
        if copier.live_peers().await?.is_empty() {
            tracing::debug!(
                missing = missing.len(),
                "images missing here, and no other controller is up"
            );
            report.missing = missing.len();
            return Ok(report);
        }
        for img in missing {
            match copier.copy(img).await {
                Ok(Outcome::Copied) => report.copied += 1,
                Ok(Outcome::AlreadyHere) => {}
                // A deleted image is not missing.
                Err(CoreError::Gone(_)) => {}
                Err(e) => {
                    tracing::warn!(image_id = %img.id, error = %e, "image still missing here");
                    report.missing += 1;
                }
            }
        }
        Ok(report)
    }
}

/// What a successful copy found.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Copied,
    AlreadyHere,
}

/// Why a copy from one peer failed.
enum Failure {
    /// That peer could not give a good copy: try the next.
    Peer(String),
    /// Here: trying another peer would not help.
    Local(CoreError),
}

struct Peer {
    name: String,
    compute: String,
}

/// What a copy must match, from the image's record.
struct Expected {
    size: u64,
    sha512: String,
    md5: Option<String>,
}

impl Expected {
    fn of(img: &Image) -> CoreResult<Expected> {
        let size = img.size.and_then(|s| u64::try_from(s).ok());
        let sha512 = match (img.os_hash_algo.as_deref(), &img.os_hash_value) {
            (Some("sha512") | None, Some(v)) => Some(v.clone()),
            _ => None,
        };
        match (size, sha512) {
            (Some(size), Some(sha512)) => Ok(Expected {
                size,
                sha512,
                md5: img.checksum.clone(),
            }),
            _ => Err(CoreError::Internal(format!(
                "image {} has no recorded size or SHA-512: a copy could not be verified",
                img.id
            ))),
        }
    }

    /// What differs between the record and what was received, if anything.
    fn mismatch(&self, got: &upload::Received) -> Option<String> {
        if got.size != self.size {
            Some(format!(
                "it sent {} bytes, the image has {}",
                got.size, self.size
            ))
        } else if !got.sha512.eq_ignore_ascii_case(&self.sha512) {
            Some("its data does not match the image's SHA-512".into())
        } else if self
            .md5
            .as_deref()
            .is_some_and(|m| !got.md5.eq_ignore_ascii_case(m))
        {
            Some("its data does not match the image's MD5 checksum".into())
        } else {
            None
        }
    }
}

/// The parts of an image service a copy needs, owned so a copy can run as its own task.
struct Copier {
    store: Store,
    dir: PathBuf,
    rep: Arc<Replication>,
}

impl Copier {
    /// The controllers to ask, freshest heartbeat first: live, not this one, with a compute URL.
    async fn live_peers(&self) -> CoreResult<Vec<Peer>> {
        let now_us = crate::now_micros();
        let mut peers: Vec<(i64, Peer)> = self
            .store
            .list_controllers()
            .await?
            .into_iter()
            .filter(|c| c.name != self.rep.me && crate::cluster::is_live(c, now_us))
            .filter_map(|c| {
                let compute = c.endpoint("compute")?;
                Some((
                    c.heartbeat_us,
                    Peer {
                        name: c.name,
                        compute,
                    },
                ))
            })
            .collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok(peers.into_iter().map(|(_, p)| p).collect())
    }

    async fn copy(&self, img: &Image) -> CoreResult<Outcome> {
        let _turn = self.rep.turn(&img.id).await;
        if exists(&self.dir.join(&img.id)).await {
            return Ok(Outcome::AlreadyHere);
        }
        let want = Expected::of(img)?;
        let peers = self.live_peers().await?;
        if peers.is_empty() {
            tracing::warn!(image_id = %img.id, "image data missing here, and no other controller is up");
            return Err(unavailable(&img.id));
        }
        for peer in &peers {
            match self.copy_from(peer, img, &want).await {
                Ok(()) => {
                    tracing::info!(image_id = %img.id, peer = %peer.name, size = want.size,
                                   "image data copied from a peer");
                    return Ok(Outcome::Copied);
                }
                Err(Failure::Peer(why)) => {
                    tracing::warn!(image_id = %img.id, peer = %peer.name, reason = %why,
                                   "could not copy image data from this peer");
                }
                Err(Failure::Local(e)) => return Err(e),
            }
        }
        Err(unavailable(&img.id))
    }

    async fn copy_from(&self, peer: &Peer, img: &Image, want: &Expected) -> Result<(), Failure> {
        let url = format!(
            "{}/internal/v1/images/{}/file?{LOCAL_ONLY_PARAM}=1",
            peer.compute.trim_end_matches('/'),
            img.id
        );
        let body = match self.rep.peers.get(url, self.rep.secret.clone()).await {
            Ok(PeerReply::Data(b)) => b,
            Ok(PeerReply::Status(404)) => return Err(Failure::Peer("it has no copy".into())),
            Ok(PeerReply::Status(s)) => return Err(Failure::Peer(format!("it answered {s}"))),
            Err(e) => return Err(Failure::Peer(format!("it could not be reached: {e}"))),
        };
        let tmp = upload::temp_path(&self.dir, &img.id);
        // `receive` removes the temporary file on any error; more than `size` bytes is one.
        let got = upload::receive(body, &tmp, want.size)
            .await
            .map_err(|e| match e {
                upload::ReceiveError::TooLarge { limit } => {
                    Failure::Peer(format!("it sent more than the image's {limit} bytes"))
                }
                upload::ReceiveError::Client(m) => Failure::Peer(m),
                upload::ReceiveError::StorageFull => Failure::Local(CoreError::TooLarge(
                    "Image storage media is full: there is not enough disk space for this image."
                        .into(),
                )),
                upload::ReceiveError::Io(e) => Failure::Local(CoreError::Internal(format!(
                    "copying image {}: {e}",
                    img.id
                ))),
            })?;
        if let Some(why) = want.mismatch(&got) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Failure::Peer(why));
        }
        let dest = self.dir.join(&img.id);
        if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Failure::Local(CoreError::Internal(format!(
                "storing image {}: {e}",
                img.id
            ))));
        }
        sync_dir(&self.dir).await;
        // Deleted while it was copied: it must not come back.
        match self.store.get_image(&img.id).await {
            Err(StoreError::NotFound) => {
                let _ = tokio::fs::remove_file(&dest).await;
                Err(Failure::Local(CoreError::Gone(format!(
                    "Image {} was deleted while its data was being copied.",
                    img.id
                ))))
            }
            // A store error: the verified file stays (a later sweep removes it if need be).
            _ => Ok(()),
        }
    }
}

impl Replication {
    /// Waits for this controller's turn to copy image `id`.
    async fn turn(&self, id: &str) -> Turn<'_> {
        let cell = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        Turn {
            rep: self,
            id: id.to_string(),
            guard: Some(cell.lock_owned().await),
        }
    }
}

/// Holds the copy lock of one image; its entry goes when nobody else awaits it.
struct Turn<'a> {
    rep: &'a Replication,
    id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut busy = self.rep.busy.lock().unwrap_or_else(|p| p.into_inner());
        // Held by the map and this guard only: nobody waits.
        if busy
            .get(&self.id)
            .is_some_and(|c| Arc::strong_count(c) <= 2)
        {
            busy.remove(&self.id);
        }
        self.guard.take();
    }
}

async fn exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

/// The image data files in `dir` (temporary `.upload-*` files left out).
async fn data_files(dir: &Path) -> CoreResult<HashSet<String>> {
    let mut out = HashSet::new();
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| CoreError::Internal(format!("cannot read {}: {e}", dir.display())))?;
    while let Some(e) = entries
        .next_entry()
        .await
        .map_err(|e| CoreError::Internal(format!("cannot read {}: {e}", dir.display())))?
    {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !e.file_type().await.is_ok_and(|t| t.is_file()) {
            continue;
        }
        out.insert(name);
    }
    Ok(out)
}

/// Makes a rename in `dir` durable; a failure is logged (the file itself is already synced).
async fn sync_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let done = tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "could not sync the images directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "shared-secret";

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Good,
        Corrupt,
        Short,
        Long,
        Cut,
        Missing,
        Down,
        /// Deletes the image from the store, then serves it.
        DeleteFirst,
    }

    /// Plays the peers: each base URL serves the files of one directory, in one mode.
    struct FakePeers {
        peers: Mutex<HashMap<String, (PathBuf, Mode)>>,
        calls: Mutex<Vec<String>>,
        store: Store,
    }

    impl FakePeers {
        fn set(&self, base: &str, dir: &Path, mode: Mode) {
            self.peers
                .lock()
                .expect("lock")
                .insert(base.to_string(), (dir.to_path_buf(), mode));
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().expect("lock").clone()
        }
    }

    impl PeerFetch for FakePeers {
        fn get(&self, url: String, secret: String) -> PeerFuture {
            assert_eq!(secret, SECRET);
            self.calls.lock().expect("lock").push(url.clone());
            let found = self
                .peers
                .lock()
                .expect("lock")
                .iter()
                .find(|(base, _)| url.starts_with(base.as_str()))
                .map(|(_, v)| v.clone());
            let id = url
                .split("/images/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default()
                .to_string();
            assert!(url.ends_with("/file?local=1"), "{url}");
            let store = self.store.clone();
            Box::pin(async move {
                let Some((dir, mode)) = found else {
                    return Err("connection refused".to_string());
                };
                let mut data = match std::fs::read(dir.join(&id)) {
                    Ok(d) => d,
                    Err(_) => return Ok(PeerReply::Status(404)),
                };
                let mut tail: Vec<Result<Bytes, String>> = Vec::new();
                match mode {
                    Mode::Good => {}
                    Mode::Corrupt => data[1000] ^= 1,
                    Mode::Short => {
                        data.pop();
                    }
                    Mode::Long => data.push(0),
                    Mode::Cut => {
                        data.truncate(data.len() / 2);
                        tail.push(Err("connection reset by peer".into()));
                    }
                    Mode::Missing => return Ok(PeerReply::Status(404)),
                    Mode::Down => return Err("connection refused".into()),
                    Mode::DeleteFirst => store.delete_image(&id).await.expect("delete"),
                }
                // Slow enough that concurrent callers overlap.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut parts: Vec<Result<Bytes, String>> = data
                    .chunks(300_000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                parts.extend(tail);
                Ok(PeerReply::Data(Box::pin(futures_util::stream::iter(parts))))
            })
        }
    }

    struct Cloud {
        _tmp: tempfile::TempDir,
        store: Store,
        a: Arc<ImageService>,
        b: Arc<ImageService>,
        a_dir: PathBuf,
        b_dir: PathBuf,
        peers: Arc<FakePeers>,
    }

    async fn heartbeat(store: &Store, name: &str, base: &str, age: Duration) {
        let us = chrono::Utc::now().timestamp_micros() - age.as_micros() as i64;
        let ep = serde_json::json!({ "compute": base }).to_string();
        store
            .controller_heartbeat(name, &ep, "t", us, false)
            .await
            .expect("heartbeat");
    }

    /// Two controllers' image services on one store: `a` (http://a) holds the uploads, `b`
    /// replicates through the fake peers.
    async fn cloud() -> Cloud {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(&format!("sqlite://{}/s.db", tmp.path().display()))
            .await
            .expect("store");
        let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
        let a = ImageService::new(store.clone(), a_dir.clone(), 1 << 30)
            .await
            .expect("a");
        let b = ImageService::new(store.clone(), b_dir.clone(), 1 << 30)
            .await
            .expect("b");
        let peers = Arc::new(FakePeers {
            peers: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            store: store.clone(),
        });
        peers.set("http://a", &a_dir, Mode::Good);
        assert!(b.enable_replication("b", SECRET, peers.clone()));
        assert!(!b.enable_replication("b", "other", peers.clone()));
        heartbeat(&store, "a", "http://a", Duration::ZERO).await;
        heartbeat(&store, "b", "http://b", Duration::ZERO).await;
        Cloud {
            _tmp: tmp,
            store,
            a,
            b,
            a_dir,
            b_dir,
            peers,
        }
    }

    fn data(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    /// An active raw image uploaded through `svc`.
    async fn image(svc: &ImageService, bytes: &[u8]) -> Image {
        let img = svc
            .create_system_record("p", "img", "raw", &[], 0, 0)
            .await
            .expect("record");
        let body = futures_util::stream::iter(
            bytes
                .chunks(1 << 20)
                .map(|c| Ok::<_, String>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        svc.upload_system(&img.id, body).await.expect("upload")
    }

    fn stray_temp_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[tokio::test]
    async fn a_missing_file_is_copied_from_a_live_peer_and_verified() {
        let c = cloud().await;
        let bytes = data(2_500_123, 1);
        let img = image(&c.a, &bytes).await;
        assert!(!c.b_dir.join(&img.id).exists());
        c.b.ensure_local(&img).await.expect("copy");
        assert_eq!(std::fs::read(c.b_dir.join(&img.id)).expect("copied"), bytes);
        assert_eq!(
            c.peers.calls(),
            vec![format!(
                "http://a/internal/v1/images/{}/file?local=1",
                img.id
            )]
        );
        // Present now: no second request.
        c.b.ensure_local(&img).await.expect("again");
        assert_eq!(c.peers.calls().len(), 1);
        // Without replication nothing is fetched (and nothing fails).
        let gone = image(&c.a, &data(10, 2)).await;
        std::fs::remove_file(c.a_dir.join(&gone.id)).expect("rm");
        c.a.ensure_local(&gone).await.expect("replication off");
    }

    #[tokio::test]
    async fn bad_copies_leave_no_file_and_the_next_peer_is_tried() {
        let c = cloud().await;
        let bytes = data(1_234_567, 3);
        let img = image(&c.a, &bytes).await;
        for mode in [
            Mode::Corrupt,
            Mode::Short,
            Mode::Long,
            Mode::Cut,
            Mode::Missing,
            Mode::Down,
        ] {
            c.peers.set("http://a", &c.a_dir, mode);
            let err = c.b.ensure_local(&img).await.expect_err("bad copy");
            assert!(
                matches!(err, CoreError::Typed { status: 503, .. }),
                "{err:?}"
            );
            assert!(!c.b_dir.join(&img.id).exists());
            assert!(stray_temp_files(&c.b_dir).is_empty());
        }
        // A stale peer is not asked; itself is never asked.
        c.peers.set("http://a", &c.a_dir, Mode::Good);
        heartbeat(&c.store, "a", "http://a", LIVE_WITHIN * 2).await;
        let before = c.peers.calls().len();
        assert!(c.b.ensure_local(&img).await.is_err());
        assert_eq!(c.peers.calls().len(), before);
        // A corrupt peer, fresher (so asked first), then the good one.
        heartbeat(&c.store, "a", "http://a", Duration::ZERO).await;
        c.peers.set("http://evil", &c.a_dir, Mode::Corrupt);
        heartbeat(&c.store, "evil", "http://evil", Duration::ZERO).await;
        c.b.ensure_local(&img).await.expect("second peer");
        let calls = c.peers.calls();
        assert!(calls[calls.len() - 2].starts_with("http://evil/"));
        assert!(calls[calls.len() - 1].starts_with("http://a/"));
        assert!(calls.iter().all(|u| !u.starts_with("http://b/")));
        assert_eq!(std::fs::read(c.b_dir.join(&img.id)).expect("file"), bytes);
    }

    #[tokio::test]
    async fn concurrent_requests_copy_once() {
        let c = cloud().await;
        let bytes = data(3_000_000, 4);
        let img = image(&c.a, &bytes).await;
        let all = (0..8).map(|_| c.b.ensure_local(&img));
        for r in futures_util::future::join_all(all).await {
            r.expect("copy");
        }
        assert_eq!(c.peers.calls().len(), 1);
        assert_eq!(std::fs::read(c.b_dir.join(&img.id)).expect("file"), bytes);
        assert!(c
            .b
            .replication
            .get()
            .expect("on")
            .busy
            .lock()
            .expect("lock")
            .is_empty());
    }

    #[tokio::test]
    async fn an_image_deleted_during_its_copy_does_not_come_back() {
        let c = cloud().await;
        let img = image(&c.a, &data(100_000, 5)).await;
        c.peers.set("http://a", &c.a_dir, Mode::DeleteFirst);
        let err = c.b.ensure_local(&img).await.expect_err("deleted");
        assert!(matches!(err, CoreError::Gone(_)), "{err:?}");
        assert!(!c.b_dir.join(&img.id).exists());
        assert!(stray_temp_files(&c.b_dir).is_empty());
    }

    #[tokio::test]
    async fn the_sweep_copies_what_is_missing_and_removes_what_was_deleted() {
        let c = cloud().await;
        let one = data(700_000, 6);
        let two = data(1_500_000, 7);
        let (i1, i2) = (image(&c.a, &one).await, image(&c.a, &two).await);
        // Not active: no data to copy.
        let queued =
            c.a.create_system_record("p", "q", "raw", &[], 0, 0)
                .await
                .expect("queued");
        // A leftover of an image deleted elsewhere, and an upload under way: only the first goes.
        let stale = uuid::Uuid::new_v4().to_string();
        std::fs::write(c.b_dir.join(&stale), b"old").expect("stale");
        std::fs::write(c.b_dir.join(".upload-x"), b"partial").expect("partial");
        let r = c.b.replicate_once().await.expect("sweep");
        assert_eq!(
            r,
            SweepReport {
                copied: 2,
                missing: 0,
                removed: 1
            }
        );
        assert_eq!(std::fs::read(c.b_dir.join(&i1.id)).expect("one"), one);
        assert_eq!(std::fs::read(c.b_dir.join(&i2.id)).expect("two"), two);
        assert!(!c.b_dir.join(&stale).exists());
        assert!(!c.b_dir.join(&queued.id).exists());
        assert!(c.b_dir.join(".upload-x").exists());
        // Nothing to do now.
        assert_eq!(
            c.b.replicate_once().await.expect("sweep"),
            SweepReport::default()
        );
        // Deleted through a: b's copy goes on its next sweep, and is not fetched again.
        c.a.delete_system(&i1.id).await.expect("delete");
        let r = c.b.replicate_once().await.expect("sweep");
        assert_eq!(r.removed, 1);
        assert!(!c.b_dir.join(&i1.id).exists());
        // With every peer down the missing image is counted, not fetched.
        std::fs::remove_file(c.b_dir.join(&i2.id)).expect("rm");
        heartbeat(&c.store, "a", "http://a", LIVE_WITHIN * 2).await;
        let calls = c.peers.calls().len();
        let r = c.b.replicate_once().await.expect("sweep");
        assert_eq!(r.missing, 1);
        assert_eq!(c.peers.calls().len(), calls);
        // The background task does the same on its own.
        heartbeat(&c.store, "a", "http://a", Duration::ZERO).await;
        let task =
            c.b.spawn_replicator(Duration::from_millis(20))
                .expect("replication on");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !c.b_dir.join(&i2.id).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sweep copied nothing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert_eq!(std::fs::read(c.b_dir.join(&i2.id)).expect("two"), two);
        assert!(c.a.spawn_replicator(Duration::from_secs(1)).is_none());
    }
}
