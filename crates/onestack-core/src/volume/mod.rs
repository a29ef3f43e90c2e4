//! Block storage (Cinder v3) application logic: volume types, volumes and their lifecycle,
//! volume snapshots, quotas, and the attach/detach handshake with compute.
//!
//! The controller's host is the storage host (Cinder's LVM reference layout): volume data is a
//! qcow2 file per volume in its volumes directory (`backend`). An API call changes the record
//! and hands slow work (copying an image, extending, deleting data) to a background job; a job a
//! killed process left half done is finished, or undone, when the service starts again.
//! Attaching is a handshake: compute reserves the volume (`attaching`), the server's agent
//! hot-plugs it and reports, and only then is it `in-use`.

pub mod backend;

use crate::image::{now, ImageService};
use crate::policy::{forbidden, AuthContext};
use crate::{CoreError, CoreResult};
use backend::Backend;
use onestack_store::{
    Changes, QuotaRefused, SnapshotRecord, SqlValue, Store, StoreError, VolumeLimits, VolumeRecord,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use onestack_store::VolumeUsage;

/// The one volume type every cloud has (Cinder's `__DEFAULT__`); its id is fixed so every
/// controller reports the same one.
pub const DEFAULT_TYPE_NAME: &str = "__DEFAULT__";
pub const DEFAULT_TYPE_ID: &str = "9c1a0d6e-5f2b-4c1e-9a55-0b5e1e6f0d01";

/// Cinder's quota resources, with Cinder's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeQuota {
    pub volumes: i64,
    pub gigabytes: i64,
    pub snapshots: i64,
    pub per_volume_gigabytes: i64,
    pub backups: i64,
    pub backup_gigabytes: i64,
    pub groups: i64,
}

impl Default for VolumeQuota {
    fn default() -> Self {
        VolumeQuota {
            volumes: 10,
            gigabytes: 1000,
            snapshots: 10,
            per_volume_gigabytes: -1,
            backups: 10,
            backup_gigabytes: 1000,
            groups: 10,
        }
    }
}

/// Quota resource names as Cinder's API spells them, with their store keys.
pub const QUOTA_RESOURCES: [&str; 7] = [
    "volumes",
    "gigabytes",
    "snapshots",
    "per_volume_gigabytes",
    "backups",
    "backup_gigabytes",
    "groups",
];

const QUOTA_PREFIX: &str = "volume.";

impl VolumeQuota {
    pub fn get(&self, resource: &str) -> Option<i64> {
        Some(match resource {
            "volumes" => self.volumes,
            "gigabytes" => self.gigabytes,
            "snapshots" => self.snapshots,
            "per_volume_gigabytes" => self.per_volume_gigabytes,
            "backups" => self.backups,
            "backup_gigabytes" => self.backup_gigabytes,
            "groups" => self.groups,
            _ => return None,
        })
    }

    fn set(&mut self, resource: &str, v: i64) {
        match resource {
            "volumes" => self.volumes = v,
            "gigabytes" => self.gigabytes = v,
            "snapshots" => self.snapshots = v,
            "per_volume_gigabytes" => self.per_volume_gigabytes = v,
            "backups" => self.backups = v,
            "backup_gigabytes" => self.backup_gigabytes = v,
            "groups" => self.groups = v,
            _ => {}
        }
    }

    fn limits(&self) -> VolumeLimits {
        VolumeLimits {
            volumes: self.volumes,
            gigabytes: self.gigabytes,
            snapshots: self.snapshots,
        }
    }
}

#[derive(Clone, Debug)]
pub struct VolumeConfig {
    pub availability_zone: String,
    pub quota: VolumeQuota,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            availability_zone: "nova".into(),
            quota: VolumeQuota::default(),
        }
    }
}

/// A create request, validated for types by the API layer.
#[derive(Clone, Debug, Default)]
pub struct VolumeCreate {
    pub size: Option<i64>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub volume_type: Option<String>,
    pub image_ref: Option<String>,
    pub snapshot_id: Option<String>,
    pub source_volid: Option<String>,
    pub availability_zone: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// What to change on a volume or snapshot; None leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct VolumeUpdate {
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Who a volume is reserved for, and how it is attached.
#[derive(Clone, Copy, Debug)]
pub struct Reservation<'a> {
    pub server_id: &'a str,
    pub server_project: &'a str,
    /// The server's host; None while it is not placed yet (a boot volume).
    pub host: Option<&'a str>,
    pub device: &'a str,
    /// 0 for the root volume.
    pub boot_index: Option<i64>,
    pub delete_on_termination: bool,
}

/// Background work on volume data.
#[derive(Clone, Debug)]
enum Job {
    Create(String),
    Delete(String),
    Extend {
        id: String,
        size: i64,
    },
    Upload {
        id: String,
        image: String,
        format: String,
    },
    CreateSnapshot(String),
    DeleteSnapshot(String),
}

pub struct VolumeService {
    store: Store,
    images: Arc<ImageService>,
    backend: Backend,
    cfg: VolumeConfig,
}

fn volume_not_found(id: &str) -> CoreError {
    CoreError::NotFound(format!("Volume {id} could not be found."))
}

fn snapshot_not_found(id: &str) -> CoreError {
    CoreError::NotFound(format!("Snapshot {id} could not be found."))
}

fn invalid_volume(msg: impl std::fmt::Display) -> CoreError {
    CoreError::BadRequest(format!("Invalid volume: {msg}"))
}

fn quota_error(r: QuotaRefused, requested_gb: i64) -> CoreError {
    // Cinder answers quota refusals with 413 and these messages.
    CoreError::TooLarge(match r {
        QuotaRefused::Volumes { limit, .. } => format!(
            "VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for quota 'volumes'."
        ),
        QuotaRefused::Snapshots { limit, .. } => format!(
            "SnapshotLimitExceeded: Maximum number of snapshots allowed ({limit}) exceeded"
        ),
        QuotaRefused::Gigabytes { used, limit } => format!(
            "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. Requested {requested_gb}G, quota is {limit}G and {used}G has been consumed."
        ),
    })
}

fn json_map(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str::<BTreeMap<String, Value>>(s)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}

fn to_json(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".into())
}

fn validate_metadata(m: &BTreeMap<String, String>) -> CoreResult<()> {
    for (k, v) in m {
        if k.is_empty() || k.len() > 255 || v.len() > 255 {
            return Err(CoreError::BadRequest(
                "Invalid metadata: keys must be 1 to 255 characters and values at most 255.".into(),
            ));
        }
    }
    Ok(())
}

fn check_name(n: &Option<String>) -> CoreResult<()> {
    if n.as_deref().is_some_and(|n| n.chars().count() > 255) {
        return Err(CoreError::BadRequest(
            "Name has more than 255 characters.".into(),
        ));
    }
    Ok(())
}

/// The next free virtio device name after those in use (`/dev/vda` is the root disk).
pub fn next_device(used: &[String]) -> String {
    for c in b'b'..=b'z' {
        let d = format!("/dev/vd{}", c as char);
        if !used.contains(&d) {
            return d;
        }
    }
    "/dev/vdz".into()
}

impl VolumeService {
    /// Starts the service on `dir` and finishes (or undoes) work a killed process left.
    pub async fn new(
        store: Store,
        images: Arc<ImageService>,
        dir: std::path::PathBuf,
        cfg: VolumeConfig,
    ) -> CoreResult<Arc<VolumeService>> {
        let backend = Backend::new(dir)?;
        backend.clean_partial();
        let svc = Arc::new(VolumeService {
            store,
            images,
            backend,
            cfg,
        });
        svc.resume().await?;
        Ok(svc)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.cfg
    }

    /// The file holding a volume's data on the storage host.
    pub fn volume_path(&self, id: &str) -> std::path::PathBuf {
        self.backend.volume_path(id)
    }

    async fn resume(self: &Arc<Self>) -> CoreResult<()> {
        for v in self
            .store
            .volumes_in_status(&["creating", "deleting", "extending", "uploading"])
            .await?
        {
            match v.status.as_str() {
                "creating" => self.spawn(Job::Create(v.id.clone())),
                "deleting" => self.spawn(Job::Delete(v.id.clone())),
                _ => {
                    // An extend or upload that was cut off: the data is whole either way
                    // (resize and copy write elsewhere first); record what the file says.
                    let size = backend::virtual_size(&self.backend.volume_path(&v.id))
                        .await
                        .map(|b| (b >> 30) as i64)
                        .unwrap_or(v.size_gb);
                    let back = if v.instance_id.is_some() {
                        "in-use"
                    } else {
                        "available"
                    };
                    self.store
                        .update_volume(
                            &v.id,
                            &[v.status.as_str()],
                            &vec![
                                ("status", back.into()),
                                ("size_gb", size.max(v.size_gb).into()),
                                ("updated_at", now().into()),
                            ],
                            None,
                        )
                        .await?;
                }
            }
        }
        for s in self
            .store
            .snapshots_in_status(&["creating", "deleting"])
            .await?
        {
            if s.status == "creating" {
                self.spawn(Job::CreateSnapshot(s.id.clone()));
            } else {
                self.spawn(Job::DeleteSnapshot(s.id.clone()));
            }
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, job: Job) {
        let svc = self.clone();
        tokio::spawn(async move {
            if let Err(e) = svc.run(job.clone()).await {
                tracing::error!(?job, error = %e, "volume job failed");
            }
        });
    }

    async fn set_status(&self, id: &str, from: &[&str], to: &str, error: Option<String>) -> bool {
        self.store
            .update_volume(
                id,
                from,
                &vec![
                    ("status", to.into()),
                    ("error", error.into()),
                    ("updated_at", now().into()),
                ],
                None,
            )
            .await
            .unwrap_or(false)
    }

    async fn run(self: &Arc<Self>, job: Job) -> CoreResult<()> {
        match job {
            Job::Create(id) => {
                let v = self.store.get_volume(&id).await?;
                let dest = self.backend.volume_path(&id);
                let r = if dest.exists() {
                    Ok(())
                } else if let Some(image) = &v.source_image_id {
                    let img = self.images.get_system(image).await?;
                    let fmt = backend::qemu_format(img.disk_format.as_deref().unwrap_or("raw"));
                    // Uploaded through another controller: its data is copied here first.
                    match self.images.ensure_local(&img).await {
                        Ok(()) => {
                            self.backend
                                .create_from(&dest, &self.images.data_path(image), fmt, v.size_gb)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                } else if let Some(snap) = &v.snapshot_id {
                    self.backend
                        .create_from(&dest, &self.backend.snapshot_path(snap), "qcow2", v.size_gb)
                        .await
                } else if let Some(src) = &v.source_volid {
                    self.backend
                        .create_from(&dest, &self.backend.volume_path(src), "qcow2", v.size_gb)
                        .await
                } else {
                    self.backend.create_empty(&id, v.size_gb).await
                };
                match r {
                    Ok(()) => {
                        // A volume deleted meanwhile loses its data again.
                        if !self.set_status(&id, &["creating"], "available", None).await {
                            let _ = self.backend.remove(&dest).await;
                        }
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(volume = %id, error = %e, "volume create failed");
                        self.set_status(
                            &id,
                            &["creating"],
                            "error",
                            Some("Failed to create the volume's data.".into()),
                        )
                        .await;
                        Err(e)
                    }
                }
            }
            Job::Delete(id) => match self.backend.remove(&self.backend.volume_path(&id)).await {
                Ok(()) => match self.store.delete_volume(&id).await {
                    Ok(()) | Err(StoreError::NotFound) => Ok(()),
                    Err(e) => Err(e.into()),
                },
                Err(e) => {
                    self.set_status(&id, &["deleting"], "error_deleting", None)
                        .await;
                    Err(e)
                }
            },
            Job::Extend { id, size } => {
                let r = self
                    .backend
                    .grow(&self.backend.volume_path(&id), size)
                    .await;
                let changes: Changes = match &r {
                    Ok(()) => vec![
                        ("status", "available".into()),
                        ("size_gb", size.into()),
                        ("updated_at", now().into()),
                    ],
                    Err(_) => vec![
                        ("status", "error_extending".into()),
                        ("updated_at", now().into()),
                    ],
                };
                self.store
                    .update_volume(&id, &["extending"], &changes, None)
                    .await?;
                r
            }
            Job::Upload { id, image, format } => {
                let v = self.store.get_volume(&id).await?;
                let back = if v.instance_id.is_some() {
                    "in-use"
                } else {
                    "available"
                };
                let r = async {
                    let tmp = self.backend.dir().join(format!("upload-{image}.tmp"));
                    let copy = self
                        .backend
                        .convert(&tmp, &self.backend.volume_path(&id), &format)
                        .await;
                    let r = match copy {
                        Ok(()) => {
                            let f = tokio::fs::File::open(&tmp).await.map_err(|e| {
                                CoreError::Internal(format!("cannot read {}: {e}", tmp.display()))
                            })?;
                            let body = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                            self.images.upload_system(&image, body).await.map(|_| ())
                        }
                        Err(e) => Err(e),
                    };
                    let _ = tokio::fs::remove_file(&tmp).await;
                    r
                }
                .await;
                if r.is_err() {
                    let _ = self.images.delete_system(&image).await;
                }
                self.set_status(&id, &["uploading"], back, None).await;
                r
            }
            Job::CreateSnapshot(id) => {
                let s = self.store.get_snapshot(&id).await?;
                let dest = self.backend.snapshot_path(&id);
                let r = if dest.exists() {
                    Ok(())
                } else {
                    self.backend
                        .create_from(&dest, &self.backend.volume_path(&s.volume_id), "qcow2", 0)
                        .await
                };
                let status = if r.is_ok() { "available" } else { "error" };
                let done = self
                    .store
                    .update_snapshot(
                        &id,
                        &["creating"],
                        &vec![("status", status.into()), ("updated_at", now().into())],
                    )
                    .await?;
                if !done {
                    let _ = self.backend.remove(&dest).await;
                }
                r
            }
            Job::DeleteSnapshot(id) => {
                self.backend
                    .remove(&self.backend.snapshot_path(&id))
                    .await?;
                match self.store.delete_snapshot(&id).await {
                    Ok(()) | Err(StoreError::NotFound) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    // ---- volumes ----

    /// A volume the caller may see: its project's, or any for an admin. Others' are 404.
    async fn load(&self, ctx: &AuthContext, id: &str) -> CoreResult<VolumeRecord> {
        match self.store.get_volume(id).await {
            Ok(v) if ctx.is_admin() || ctx.project_id() == Some(v.project_id.as_str()) => Ok(v),
            Ok(_) | Err(StoreError::NotFound) => Err(volume_not_found(id)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, ctx: &AuthContext, id: &str) -> CoreResult<VolumeRecord> {
        self.load(ctx, id).await
    }

    /// The project in a `/v3/{project_id}/…` URL must be the token's (Cinder's "Malformed
    /// request url"); an admin may name any.
    pub fn check_url_project(&self, ctx: &AuthContext, project: &str) -> CoreResult<()> {
        if ctx.is_admin() || ctx.project_id() == Some(project) {
            Ok(())
        } else {
            Err(CoreError::BadRequest("Malformed request url".into()))
        }
    }

    /// The volumes `GET /v3/{project}/volumes` lists: the caller's project's, everyone's for
    /// an admin with `all_tenants`, or the named project's for an admin naming another.
    pub async fn list_in(
        &self,
        ctx: &AuthContext,
        project: &str,
        all_tenants: bool,
    ) -> CoreResult<Vec<VolumeRecord>> {
        self.check_url_project(ctx, project)?;
        if !all_tenants && ctx.is_admin() && ctx.project_id() != Some(project) {
            let mut list = self.list(ctx, true).await?;
            list.retain(|v| v.project_id == project);
            return Ok(list);
        }
        self.list(ctx, all_tenants).await
    }

    /// The caller's project's volumes, or (admin, `all_tenants`) everyone's.
    pub async fn list(
        &self,
        ctx: &AuthContext,
        all_tenants: bool,
    ) -> CoreResult<Vec<VolumeRecord>> {
        if all_tenants && ctx.is_admin() {
            return Ok(self.store.list_volumes(None).await?);
        }
        let Some(p) = ctx.project_id() else {
            return Ok(Vec::new());
        };
        Ok(self.store.list_volumes(Some(p)).await?)
    }

    fn check_type(&self, t: Option<&str>) -> CoreResult<()> {
        match t {
            None => Ok(()),
            Some(t) if t == DEFAULT_TYPE_NAME || t == DEFAULT_TYPE_ID => Ok(()),
            Some(t) => Err(CoreError::NotFound(format!(
                "Volume type with name {t} could not be found."
            ))),
        }
    }

    pub async fn create(
        self: &Arc<Self>,
        ctx: &AuthContext,
        req: VolumeCreate,
    ) -> CoreResult<VolumeRecord> {
        ctx.require_member("volume:create")?;
        let project = ctx
            .project_id()
            .ok_or_else(|| forbidden("volume:create"))?
            .to_string();
        check_name(&req.name)?;
        validate_metadata(&req.metadata)?;
        self.check_type(req.volume_type.as_deref())?;
        if let Some(z) = &req.availability_zone {
            if z != &self.cfg.availability_zone {
                return Err(CoreError::BadRequest(format!(
                    "Invalid input received: Availability zone '{z}' is invalid."
                )));
            }
        }
        let sources = [&req.image_ref, &req.snapshot_id, &req.source_volid]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources > 1 {
            return Err(CoreError::BadRequest(
                "Invalid input received: only one of imageRef, snapshot_id and source_volid may be given."
                    .into(),
            ));
        }
        let mut bootable = false;
        let mut image_meta = BTreeMap::new();
        let mut min_size = 1;
        if let Some(image_ref) = &req.image_ref {
            let img = match self.images.get(ctx, image_ref).await {
                Ok(i) => i,
                Err(CoreError::NotFound(_)) | Err(CoreError::Forbidden(_)) => {
                    return Err(CoreError::BadRequest(format!(
                        "Invalid image identifier or unable to access requested image. (image {image_ref} could not be found)"
                    )))
                }
                Err(e) => return Err(e),
            };
            if img.status != "active" {
                return Err(CoreError::BadRequest(format!(
                    "Invalid image identifier or unable to access requested image. (image {image_ref} is not active)"
                )));
            }
            let bytes = img.virtual_size.or(img.size).unwrap_or(0);
            let gb = (bytes + (1 << 30) - 1) >> 30;
            min_size = gb.max(img.min_disk).max(1);
            bootable = true;
            image_meta.insert("image_id".into(), img.id.clone());
            image_meta.insert("image_name".into(), img.name.clone().unwrap_or_default());
            for (k, v) in [
                ("checksum", img.checksum.clone()),
                ("container_format", img.container_format.clone()),
                ("disk_format", img.disk_format.clone()),
            ] {
                if let Some(v) = v {
                    image_meta.insert(k.into(), v);
                }
            }
            image_meta.insert("min_disk".into(), img.min_disk.to_string());
            image_meta.insert("min_ram".into(), img.min_ram.to_string());
            image_meta.insert("size".into(), img.size.unwrap_or(0).to_string());
            for (k, v) in &img.properties {
                image_meta.insert(k.clone(), v.clone());
            }
            let size = req.size.unwrap_or(min_size);
            if size < min_size {
                return Err(CoreError::BadRequest(format!(
                    "Invalid input received: Image virtual size is {gb}GB and doesn't fit in a volume of size {size}GB."
                )));
            }
        }
        if let Some(sid) = &req.snapshot_id {
            let s = self
                .load_snapshot(ctx, sid)
                .await
                .map_err(|_| snapshot_not_found(sid))?;
            if s.status != "available" {
                return Err(CoreError::BadRequest(
                    "Invalid snapshot: Originating snapshot status must be one of 'available' values"
                        .into(),
                ));
            }
            min_size = s.size_gb;
            if let Ok(src) = self.store.get_volume(&s.volume_id).await {
                bootable = src.bootable;
                image_meta = json_map(&src.image_metadata);
            }
        }
        if let Some(vid) = &req.source_volid {
            let src = self.load(ctx, vid).await?;
            if !matches!(src.status.as_str(), "available" | "in-use") || src.instance_id.is_some() {
                return Err(invalid_volume(format!(
                    "Volume {vid} status must be available to clone, but the current status is: {}.",
                    src.status
                )));
            }
            min_size = src.size_gb;
            bootable = src.bootable;
            image_meta = json_map(&src.image_metadata);
        }
        let size = match req.size {
            Some(s) => s,
            None if sources == 1 => min_size,
            None => {
                return Err(CoreError::BadRequest(
                    "Invalid input received: size is required for an empty volume.".into(),
                ))
            }
        };
        if size < 1 {
            return Err(CoreError::BadRequest(format!(
                "Invalid input received: Volume size '{size}' must be an integer and greater than 0."
            )));
        }
        if size < min_size {
            return Err(CoreError::BadRequest(format!(
                "Invalid input received: Volume size '{size}'GB cannot be smaller than the source size '{min_size}'GB."
            )));
        }
        let quota = self.quota(&project).await?;
        if quota.per_volume_gigabytes >= 0 && size > quota.per_volume_gigabytes {
            return Err(CoreError::TooLarge(format!(
                "VolumeSizeExceedsLimit: Requested volume size {size}G is larger than maximum allowed limit {}G.",
                quota.per_volume_gigabytes
            )));
        }
        let t = now();
        let v = VolumeRecord {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project,
            user_id: ctx.user.id.clone(),
            name: req.name.clone(),
            description: req.description.clone(),
            size_gb: size,
            status: "creating".into(),
            volume_type: DEFAULT_TYPE_NAME.into(),
            bootable,
            availability_zone: self.cfg.availability_zone.clone(),
            source_image_id: req.image_ref.clone(),
            snapshot_id: req.snapshot_id.clone(),
            source_volid: req.source_volid.clone(),
            image_metadata: to_json(&image_meta),
            metadata: to_json(&req.metadata),
            attach_status: "detached".into(),
            created_at: t.clone(),
            updated_at: t,
            ..Default::default()
        };
        if let Err(r) = self.store.create_volume_within(&v, quota.limits()).await? {
            return Err(quota_error(r, size));
        }
        self.spawn(Job::Create(v.id.clone()));
        Ok(v)
    }

    pub async fn update(
        &self,
        ctx: &AuthContext,
        id: &str,
        u: VolumeUpdate,
    ) -> CoreResult<VolumeRecord> {
        ctx.require_member("volume:update")?;
        let v = self.load(ctx, id).await?;
        let mut changes: Changes = Vec::new();
        if let Some(n) = u.name {
            check_name(&n)?;
            changes.push(("name", n.into()));
        }
        if let Some(d) = u.description {
            changes.push(("description", d.into()));
        }
        if let Some(m) = u.metadata {
            validate_metadata(&m)?;
            changes.push(("metadata", to_json(&m).into()));
        }
        if !changes.is_empty() {
            changes.push(("updated_at", now().into()));
            self.store.update_volume(&v.id, &[], &changes, None).await?;
        }
        self.load(ctx, id).await
    }

    /// Merges (or, `replace`, sets) user metadata; returns the whole set.
    pub async fn set_metadata(
        &self,
        ctx: &AuthContext,
        id: &str,
        meta: BTreeMap<String, String>,
        replace: bool,
    ) -> CoreResult<BTreeMap<String, String>> {
        ctx.require_member("volume:update_volume_metadata")?;
        validate_metadata(&meta)?;
        let v = self.load(ctx, id).await?;
        let mut all = if replace {
            BTreeMap::new()
        } else {
            json_map(&v.metadata)
        };
        all.extend(meta);
        self.store
            .update_volume(
                id,
                &[],
                &vec![
                    ("metadata", to_json(&all).into()),
                    ("updated_at", now().into()),
                ],
                None,
            )
            .await?;
        Ok(all)
    }

    pub async fn delete_metadata_key(
        &self,
        ctx: &AuthContext,
        id: &str,
        key: &str,
    ) -> CoreResult<()> {
        ctx.require_member("volume:delete_volume_metadata")?;
        let v = self.load(ctx, id).await?;
        let mut all = json_map(&v.metadata);
        if all.remove(key).is_none() {
            return Err(CoreError::NotFound(format!(
                "Volume {id} has no metadata with key {key}."
            )));
        }
        self.store
            .update_volume(
                id,
                &[],
                &vec![
                    ("metadata", to_json(&all).into()),
                    ("updated_at", now().into()),
                ],
                None,
            )
            .await?;
        Ok(())
    }

    pub async fn delete(
        self: &Arc<Self>,
        ctx: &AuthContext,
        id: &str,
        cascade: bool,
    ) -> CoreResult<()> {
        ctx.require_member("volume:delete")?;
        let v = self.load(ctx, id).await?;
        const DELETABLE: [&str; 4] = ["available", "error", "error_extending", "error_deleting"];
        if !DELETABLE.contains(&v.status.as_str()) || v.instance_id.is_some() {
            return Err(invalid_volume(format!(
                "Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots or be disassociated from snapshots after volume transfer. (volume {id} is {})",
                v.status
            )));
        }
        let snaps = self.store.volume_snapshot_count(id).await?;
        if snaps > 0 && !cascade {
            return Err(invalid_volume(format!(
                "Volume {id} still has {snaps} dependent snapshots."
            )));
        }
        if !self.set_status(id, &DELETABLE, "deleting", None).await {
            return Err(invalid_volume(format!(
                "Volume {id} changed status while being deleted."
            )));
        }
        if cascade {
            for s in self.store.list_snapshots(Some(&v.project_id)).await? {
                if s.volume_id == id {
                    self.backend
                        .remove(&self.backend.snapshot_path(&s.id))
                        .await?;
                    let _ = self.store.delete_snapshot(&s.id).await;
                }
            }
        }
        self.spawn(Job::Delete(id.to_string()));
        Ok(())
    }

    /// `os-extend`: grows an available volume within the gigabytes quota.
    pub async fn extend(
        self: &Arc<Self>,
        ctx: &AuthContext,
        id: &str,
        new_size: i64,
    ) -> CoreResult<()> {
        ctx.require_member("volume:extend")?;
        let v = self.load(ctx, id).await?;
        if v.status != "available" {
            return Err(invalid_volume(format!(
                "Volume status must be available to extend, but current status is: {}.",
                v.status
            )));
        }
        if new_size <= v.size_gb {
            return Err(CoreError::BadRequest(format!(
                "Invalid input received: New size for extend must be greater than current size. (current: {}, extended: {new_size})."
                , v.size_gb
            )));
        }
        let quota = self.quota(&v.project_id).await?;
        if quota.per_volume_gigabytes >= 0 && new_size > quota.per_volume_gigabytes {
            return Err(CoreError::TooLarge(format!(
                "VolumeSizeExceedsLimit: Requested volume size {new_size}G is larger than maximum allowed limit {}G.",
                quota.per_volume_gigabytes
            )));
        }
        let changes: Changes = vec![("status", "extending".into()), ("updated_at", now().into())];
        match self
            .store
            .extend_volume_within(id, &["available"], new_size, quota.gigabytes, &changes)
            .await?
        {
            Err(r) => Err(quota_error(r, new_size - v.size_gb)),
            Ok(false) => Err(invalid_volume(format!("Volume {id} changed status."))),
            Ok(true) => {
                self.spawn(Job::Extend {
                    id: id.to_string(),
                    size: new_size,
                });
                Ok(())
            }
        }
    }

    /// `os-volume_upload_image`: a new image (queued, then active) with the volume's data.
    /// An attached volume needs `force` (its data may change while it is copied).
    pub async fn upload_to_image(
        self: &Arc<Self>,
        ctx: &AuthContext,
        id: &str,
        image_name: &str,
        disk_format: &str,
        force: bool,
    ) -> CoreResult<(VolumeRecord, crate::image::Image)> {
        ctx.require_member("volume_extension:volume_actions:upload_image")?;
        let v = self.load(ctx, id).await?;
        let allowed: &[&str] = if force {
            &["available", "in-use"]
        } else {
            &["available"]
        };
        if !allowed.contains(&v.status.as_str()) {
            return Err(invalid_volume(format!(
                "Volume {id} status must be available{}, but current status is: {}.",
                if force { " or in-use" } else { "" },
                v.status
            )));
        }
        if !matches!(disk_format, "qcow2" | "raw") {
            return Err(CoreError::BadRequest(format!(
                "Invalid input received: disk_format {disk_format} is not supported; use qcow2 or raw."
            )));
        }
        if !self.set_status(id, allowed, "uploading", None).await {
            return Err(invalid_volume(format!("Volume {id} changed status.")));
        }
        let img = match self
            .images
            .create_system_record(&v.project_id, image_name, disk_format, &[], v.size_gb, 0)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                self.set_status(id, &["uploading"], &v.status, None).await;
                return Err(e);
            }
        };
        self.spawn(Job::Upload {
            id: id.to_string(),
            image: img.id.clone(),
            format: disk_format.to_string(),
        });
        let v = self.store.get_volume(id).await?;
        Ok((v, img))
    }

    pub async fn set_bootable(
        &self,
        ctx: &AuthContext,
        id: &str,
        bootable: bool,
    ) -> CoreResult<()> {
        ctx.require_member("volume_extension:volume_actions:set_bootable")?;
        self.load(ctx, id).await?;
        self.store
            .update_volume(
                id,
                &[],
                &vec![("bootable", bootable.into()), ("updated_at", now().into())],
                None,
            )
            .await?;
        Ok(())
    }

    /// `os-reset_status` (admin): the operator's way out of a stuck state.
    pub async fn reset_status(&self, ctx: &AuthContext, id: &str, status: &str) -> CoreResult<()> {
        // Others' volumes are 404 before the role is looked at, as in Cinder.
        self.load(ctx, id).await?;
        ctx.require_admin("volume_extension:volume_admin_actions:reset_status")?;
        const STATUSES: [&str; 7] = [
            "available",
            "error",
            "in-use",
            "creating",
            "deleting",
            "error_deleting",
            "error_extending",
        ];
        if !STATUSES.contains(&status) {
            return Err(CoreError::BadRequest(format!(
                "Invalid input received: Volume status {status} is not valid."
            )));
        }
        self.load(ctx, id).await?;
        self.set_status(id, &[], status, None).await;
        Ok(())
    }

    // ---- snapshots ----

    async fn load_snapshot(&self, ctx: &AuthContext, id: &str) -> CoreResult<SnapshotRecord> {
        match self.store.get_snapshot(id).await {
            Ok(s) if ctx.is_admin() || ctx.project_id() == Some(s.project_id.as_str()) => Ok(s),
            Ok(_) | Err(StoreError::NotFound) => Err(snapshot_not_found(id)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_snapshot(&self, ctx: &AuthContext, id: &str) -> CoreResult<SnapshotRecord> {
        self.load_snapshot(ctx, id).await
    }

    pub async fn list_snapshots(
        &self,
        ctx: &AuthContext,
        all_tenants: bool,
    ) -> CoreResult<Vec<SnapshotRecord>> {
        if all_tenants && ctx.is_admin() {
            return Ok(self.store.list_snapshots(None).await?);
        }
        let Some(p) = ctx.project_id() else {
            return Ok(Vec::new());
        };
        Ok(self.store.list_snapshots(Some(p)).await?)
    }

    /// A point-in-time copy of a volume. An attached volume needs `force`, as in Cinder.
    pub async fn create_snapshot(
        self: &Arc<Self>,
        ctx: &AuthContext,
        volume_id: &str,
        name: Option<String>,
        description: Option<String>,
        force: bool,
        metadata: BTreeMap<String, String>,
    ) -> CoreResult<SnapshotRecord> {
        ctx.require_member("volume:create_snapshot")?;
        check_name(&name)?;
        validate_metadata(&metadata)?;
        let v = self.load(ctx, volume_id).await?;
        let ok = v.status == "available" || (force && v.status == "in-use");
        if !ok {
            return Err(invalid_volume(if v.status == "in-use" {
                format!("Volume {volume_id} is attached; a snapshot of it needs force=True (status: in-use).")
            } else {
                format!(
                    "Volume {volume_id} status must be available, but current status is: {}.",
                    v.status
                )
            }));
        }
        let quota = self.quota(&v.project_id).await?;
        let t = now();
        let s = SnapshotRecord {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: v.project_id.clone(),
            user_id: ctx.user.id.clone(),
            volume_id: volume_id.to_string(),
            name,
            description,
            size_gb: v.size_gb,
            status: "creating".into(),
            metadata: to_json(&metadata),
            created_at: t.clone(),
            updated_at: t,
        };
        if let Err(r) = self
            .store
            .create_snapshot_within(&s, quota.limits())
            .await?
        {
            return Err(quota_error(r, s.size_gb));
        }
        self.spawn(Job::CreateSnapshot(s.id.clone()));
        Ok(s)
    }

    pub async fn update_snapshot(
        &self,
        ctx: &AuthContext,
        id: &str,
        u: VolumeUpdate,
    ) -> CoreResult<SnapshotRecord> {
        ctx.require_member("volume:update_snapshot")?;
        self.load_snapshot(ctx, id).await?;
        let mut changes: Changes = Vec::new();
        if let Some(n) = u.name {
            check_name(&n)?;
            changes.push(("name", n.into()));
        }
        if let Some(d) = u.description {
            changes.push(("description", d.into()));
        }
        if let Some(m) = u.metadata {
            validate_metadata(&m)?;
            changes.push(("metadata", to_json(&m).into()));
        }
        if !changes.is_empty() {
            changes.push(("updated_at", now().into()));
            self.store.update_snapshot(id, &[], &changes).await?;
        }
        self.load_snapshot(ctx, id).await
    }

    pub async fn delete_snapshot(self: &Arc<Self>, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        ctx.require_member("volume:delete_snapshot")?;
        let s = self.load_snapshot(ctx, id).await?;
        let ok = self
            .store
            .update_snapshot(
                id,
                &["available", "error", "error_deleting"],
                &vec![("status", "deleting".into()), ("updated_at", now().into())],
            )
            .await?;
        if !ok {
            return Err(CoreError::BadRequest(format!(
                "Invalid snapshot: Snapshot status must be available or error and must not be part of a group. (snapshot {id} is {})",
                s.status
            )));
        }
        self.spawn(Job::DeleteSnapshot(id.to_string()));
        Ok(())
    }

    // ---- quotas ----

    /// A project's limits: its overrides over the defaults.
    pub async fn quota(&self, project: &str) -> CoreResult<VolumeQuota> {
        let mut q = self.cfg.quota;
        for (res, limit) in self.store.quota_limits(project).await? {
            if let Some(r) = res.strip_prefix(QUOTA_PREFIX) {
                q.set(r, limit);
            }
        }
        Ok(q)
    }

    pub fn default_quota(&self) -> VolumeQuota {
        self.cfg.quota
    }

    pub async fn usage(&self, project: &str) -> CoreResult<VolumeUsage> {
        Ok(self.store.volume_usage(project).await?)
    }

    /// `GET /os-quota-sets/{project}/defaults`: Cinder checks `volume_extension:quotas:show`
    /// against the named project, as for the quota itself.
    pub fn default_quota_of(&self, ctx: &AuthContext, project: &str) -> CoreResult<VolumeQuota> {
        self.check_quota_read(ctx, project)?;
        Ok(self.cfg.quota)
    }

    /// Reading a project's quota: admins any, others their own project.
    pub fn check_quota_read(&self, ctx: &AuthContext, project: &str) -> CoreResult<()> {
        if ctx.is_admin() || ctx.project_id() == Some(project) {
            Ok(())
        } else {
            Err(forbidden("volume_extension:quotas:show"))
        }
    }

    /// Sets limits (admin). Unknown resources and values below -1 are refused before any change.
    pub async fn set_quota(
        &self,
        ctx: &AuthContext,
        project: &str,
        values: &BTreeMap<String, i64>,
    ) -> CoreResult<VolumeQuota> {
        ctx.require_admin("volume_extension:quotas:update")?;
        for (k, v) in values {
            if self.cfg.quota.get(k).is_none() {
                return Err(CoreError::BadRequest(format!(
                    "Bad key(s) in quota set: {k}"
                )));
            }
            if *v < -1 {
                return Err(CoreError::BadRequest(format!(
                    "Quota limit {v} for {k} must be -1 or greater."
                )));
            }
        }
        let used = self.usage(project).await?;
        for (k, v) in values {
            let in_use = match k.as_str() {
                "volumes" => used.volumes,
                "gigabytes" => used.gigabytes(),
                "snapshots" => used.snapshots,
                _ => 0,
            };
            if *v >= 0 && *v < in_use {
                return Err(CoreError::BadRequest(format!(
                    "Invalid input received: Quota limit {v} for {k} must be greater than or equal to already used and reserved {in_use}."
                )));
            }
        }
        for (k, v) in values {
            self.store
                .set_quota_limit(project, &format!("{QUOTA_PREFIX}{k}"), *v)
                .await?;
        }
        self.quota(project).await
    }

    /// Back to the defaults (admin).
    pub async fn delete_quota(&self, ctx: &AuthContext, project: &str) -> CoreResult<()> {
        ctx.require_admin("volume_extension:quotas:delete")?;
        Ok(self.store.clear_quota_limits(project, QUOTA_PREFIX).await?)
    }

    // ---- attachments (called by compute) ----

    /// Reserves an available volume of the server's project for the server: `attaching`, with
    /// the attachment recorded, and the host's agent woken to plug it.
    pub async fn reserve(
        &self,
        ctx: &AuthContext,
        volume_id: &str,
        r: &Reservation<'_>,
    ) -> CoreResult<VolumeRecord> {
        let Reservation {
            server_id,
            server_project,
            host,
            device,
            boot_index,
            delete_on_termination,
        } = *r;
        let v = self.load(ctx, volume_id).await?;
        if v.project_id != server_project {
            return Err(volume_not_found(volume_id));
        }
        if v.status != "available" {
            return Err(invalid_volume(format!(
                "volume {volume_id} status must be 'available'. Currently in '{}'",
                v.status
            )));
        }
        let t = now();
        let status = if host.is_some() {
            "attaching"
        } else {
            "reserved"
        };
        let changes: Changes = vec![
            ("status", status.into()),
            ("attach_status", "attaching".into()),
            ("attachment_id", uuid::Uuid::new_v4().to_string().into()),
            ("instance_id", server_id.into()),
            ("attached_host", host.map(str::to_string).into()),
            ("device", device.into()),
            ("attached_at", t.clone().into()),
            ("boot_index", SqlValue::Int(boot_index)),
            ("delete_on_termination", delete_on_termination.into()),
            ("error", SqlValue::Text(None)),
            ("updated_at", t.into()),
        ];
        if !self
            .store
            .update_volume(volume_id, &["available"], &changes, host)
            .await?
        {
            return Err(invalid_volume(format!(
                "volume {volume_id} changed status while being attached"
            )));
        }
        Ok(self.store.get_volume(volume_id).await?)
    }

    /// The host a reserved boot volume's server was placed on (its agent plugs it at start).
    pub async fn set_attached_host(&self, volume_id: &str, host: &str) -> CoreResult<()> {
        self.store
            .update_volume(
                volume_id,
                &["reserved", "attaching"],
                &vec![
                    ("attached_host", host.into()),
                    ("status", "attaching".into()),
                ],
                Some(host),
            )
            .await?;
        Ok(())
    }

    /// The agent's word on an attach: `in-use`, or back to `available` with the reason.
    pub async fn attach_done(
        &self,
        volume_id: &str,
        server_id: &str,
        error: Option<String>,
    ) -> CoreResult<()> {
        let v = self.store.get_volume(volume_id).await?;
        if v.instance_id.as_deref() != Some(server_id) || v.attach_status != "attaching" {
            return Ok(());
        }
        let t = now();
        let changes: Changes = match &error {
            None => vec![
                ("status", "in-use".into()),
                ("attach_status", "attached".into()),
                ("updated_at", t.into()),
            ],
            Some(e) => {
                tracing::warn!(volume = %volume_id, server = %server_id, error = %e, "attach failed");
                detached_changes(
                    Some(format!("Attaching to server {server_id} failed: {e}")),
                    t,
                )
            }
        };
        let done = self
            .store
            .update_volume(volume_id, &["attaching", "reserved"], &changes, None)
            .await?;
        if done && error.is_some() {
            self.backend.reclaim(volume_id);
        }
        Ok(())
    }

    /// Starts a detach from `server_id`: `detaching`, and the host's agent woken to unplug it.
    pub async fn begin_detach(&self, volume_id: &str, server_id: &str) -> CoreResult<()> {
        let v = self.store.get_volume(volume_id).await?;
        if v.instance_id.as_deref() != Some(server_id) {
            return Err(CoreError::NotFound(format!(
                "volume_id not found: {volume_id}"
            )));
        }
        if v.boot_index == Some(0) {
            return Err(CoreError::BadRequest(
                "Can't detach root device volume".into(),
            ));
        }
        if v.status != "in-use" {
            return Err(invalid_volume(format!(
                "Unable to detach volume. Volume status must be 'in-use' and attach_status must be 'attached' to detach. (volume {volume_id} is {})",
                v.status
            )));
        }
        let changes: Changes = vec![
            ("status", "detaching".into()),
            ("attach_status", "detaching".into()),
            ("updated_at", now().into()),
        ];
        if !self
            .store
            .update_volume(volume_id, &["in-use"], &changes, v.attached_host.as_deref())
            .await?
        {
            return Err(invalid_volume(format!(
                "volume {volume_id} changed status while being detached"
            )));
        }
        Ok(())
    }

    /// The agent's word on a detach: `available`, or (the guest did not let go) back to
    /// `in-use` with the reason as the volume's error.
    pub async fn detach_done(
        &self,
        volume_id: &str,
        server_id: &str,
        error: Option<String>,
    ) -> CoreResult<()> {
        let v = self.store.get_volume(volume_id).await?;
        if v.instance_id.as_deref() != Some(server_id) || v.attach_status != "detaching" {
            return Ok(());
        }
        let t = now();
        let changes: Changes = match &error {
            None => detached_changes(None, t),
            Some(e) => {
                tracing::warn!(volume = %volume_id, server = %server_id, error = %e, "detach failed");
                vec![
                    ("status", "in-use".into()),
                    ("attach_status", "attached".into()),
                    (
                        "error",
                        format!("Detaching from server {server_id} failed: {e}").into(),
                    ),
                    ("updated_at", t.into()),
                ]
            }
        };
        let done = self
            .store
            .update_volume(volume_id, &["detaching"], &changes, None)
            .await?;
        if done && error.is_none() {
            self.backend.reclaim(volume_id);
        }
        Ok(())
    }

    /// A server is gone: its volumes are detached, and those marked delete_on_termination
    /// deleted.
    pub async fn release_server(self: &Arc<Self>, server_id: &str) -> CoreResult<()> {
        for v in self.store.instance_volumes(server_id).await? {
            let t = now();
            if v.delete_on_termination {
                let mut changes = detached_changes(None, t);
                changes[0] = ("status", "deleting".into());
                if self.store.update_volume(&v.id, &[], &changes, None).await? {
                    self.spawn(Job::Delete(v.id.clone()));
                }
            } else {
                self.store
                    .update_volume(&v.id, &[], &detached_changes(None, t), None)
                    .await?;
                self.backend.reclaim(&v.id);
            }
        }
        Ok(())
    }

    /// What a volume list or show says of attachments, per Cinder (`attachments[]`).
    pub fn attachments(v: &VolumeRecord, server_host: Option<&str>) -> Value {
        match (&v.instance_id, &v.attachment_id) {
            (Some(server), Some(att))
                if v.attach_status == "attached" || v.attach_status == "detaching" =>
            {
                json!([{
                    "id": v.id,
                    "attachment_id": att,
                    "volume_id": v.id,
                    "server_id": server,
                    "host_name": server_host.or(v.attached_host.as_deref()),
                    "device": v.device,
                    "attached_at": v.attached_at,
                }])
            }
            _ => json!([]),
        }
    }

    /// User metadata and image metadata as JSON objects.
    pub fn metadata_of(v: &VolumeRecord) -> (Map<String, Value>, Map<String, Value>) {
        let m = |s: &str| -> Map<String, Value> {
            json_map(s)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect()
        };
        (m(&v.metadata), m(&v.image_metadata))
    }

    pub fn snapshot_metadata(s: &SnapshotRecord) -> Map<String, Value> {
        json_map(&s.metadata)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    }
}

fn detached_changes(error: Option<String>, t: String) -> Changes {
    vec![
        ("status", "available".into()),
        ("attach_status", "detached".into()),
        ("attachment_id", SqlValue::Text(None)),
        ("instance_id", SqlValue::Text(None)),
        ("attached_host", SqlValue::Text(None)),
        ("device", SqlValue::Text(None)),
        ("attached_at", SqlValue::Text(None)),
        ("boot_index", SqlValue::Int(None)),
        ("delete_on_termination", false.into()),
        ("error", error.into()),
        ("updated_at", t.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_follow_the_root_disk() {
        assert_eq!(next_device(&[]), "/dev/vdb");
        assert_eq!(
            next_device(&["/dev/vdb".into(), "/dev/vdd".into()]),
            "/dev/vdc"
        );
    }

    #[test]
    fn quota_names_round_trip() {
        let mut q = VolumeQuota::default();
        for (i, r) in QUOTA_RESOURCES.iter().enumerate() {
            q.set(r, i as i64);
            assert_eq!(q.get(r), Some(i as i64));
        }
        assert_eq!(q.get("cores"), None);
    }
}
