//! The image service (Glance v2): image records, who may see and change them, and their data
//! files under `<data dir>/images/<id>`.
//!
//! Visibility follows Glance: `public` and `community` images are readable by everyone
//! (community ones are listed only on request), `shared` ones by the owner and its members,
//! `private` ones by the owner; admins see all. Only the owner (or an admin) changes an image, and
//! only with the `member` role; `reader` is read-only.

pub mod inspect;
pub mod replicate;
pub mod schema;
pub mod upload;

use crate::policy::{forbidden, AuthContext};
use crate::{CoreError, CoreResult};
use bytes::Bytes;
use futures_util::Stream;
use onestack_store::{ImageMember, Store, StoreError, UploadResult};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use onestack_store::ImageRecord as Image;

/// Glance's `image_size_cap` default: 1 TiB.
pub const DEFAULT_SIZE_CAP: u64 = 1 << 40;

pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub struct ImageService {
    store: Store,
    dir: PathBuf,
    size_cap: u64,
    /// Set by `enable_replication` (see `replicate`): copy missing data from other controllers.
    replication: std::sync::OnceLock<Arc<replicate::Replication>>,
    /// The controller this service runs in, recorded on the uploads it receives.
    receiver: String,
}

/// List parameters, already parsed from the query string.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    /// Exact-match filters on attributes and free-form properties (`name`, `status`, `owner`,
    /// `disk_format`, `os_distro`, …). A value `in:a,b` matches any of the listed values.
    pub filters: Vec<(String, String)>,
    pub visibility: Option<String>,
    pub member_status: Option<String>,
    pub tags: Vec<String>,
    pub size_min: Option<i64>,
    pub size_max: Option<i64>,
    pub protected: Option<bool>,
    pub os_hidden: Option<bool>,
    /// Comparisons on timestamps: (field, operator, value), e.g. ("created_at", "gte", "2024-…").
    pub time_filters: Vec<(String, String, String)>,
    /// (key, descending) pairs; empty means created_at desc.
    pub sort: Vec<(String, bool)>,
    pub marker: Option<String>,
    pub limit: usize,
}

pub const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "virtual_size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "min_disk",
    "min_ram",
];

/// An image file the operator supplies (see `ImageService::register_file`).
#[derive(Clone, Copy)]
pub struct SystemImage<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub disk_format: &'a str,
    pub container_format: &'a str,
    pub properties: &'a [(String, String)],
    /// A property that identifies this exact file (e.g. its build recipe).
    pub marker: (&'a str, &'a str),
}

/// What a download serves: the image and its file (None when the image has no data yet).
pub struct Download {
    pub image: Image,
    pub path: Option<PathBuf>,
}

impl ImageService {
    /// Opens the image store in `dir`, putting back to `queued` any upload a dead process left
    /// half done and removing its partial files.
    pub async fn new(store: Store, dir: PathBuf, size_cap: u64) -> CoreResult<Arc<ImageService>> {
        Self::new_for(store, dir, size_cap, "").await
    }

    /// As `new`, in controller `receiver` of a cloud with several: only the uploads this
    /// controller was receiving are put back (another's may be under way).
    pub async fn new_for(
        store: Store,
        dir: PathBuf,
        size_cap: u64,
        receiver: &str,
    ) -> CoreResult<Arc<ImageService>> {
        // Image data is tenants' data: root's alone.
        crate::fsutil::create_private_dir(&dir)
            .map_err(|e| CoreError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let requeued = store
            .requeue_interrupted_uploads(&now(), Some(receiver), &[])
            .await?;
        for id in &requeued {
            tracing::warn!(image_id = %id, "upload interrupted by a restart; image is queued again");
            let _ = std::fs::remove_file(dir.join(id));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".upload-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Arc::new(ImageService {
            store,
            dir,
            size_cap,
            replication: std::sync::OnceLock::new(),
            receiver: receiver.to_string(),
        }))
    }

    /// The leader's part: uploads whose receiving controller is on record but no longer beats
    /// will never finish; they are queued again so the client can upload once more. Read fresh
    /// from the store: a controller that has just started is never taken for a stopped one.
    pub async fn requeue_abandoned_uploads(&self) -> CoreResult<usize> {
        let now_us = crate::now_micros();
        let down: Vec<String> = self
            .store
            .list_controllers()
            .await?
            .into_iter()
            .filter(|c| !crate::cluster::is_live(c, now_us))
            .map(|c| c.name)
            .collect();
        if down.is_empty() {
            return Ok(0);
        }
        let requeued = self
            .store
            .requeue_interrupted_uploads(&now(), None, &down)
            .await?;
        for id in &requeued {
            tracing::warn!(image_id = %id, "upload abandoned by a controller that stopped; queued again");
        }
        Ok(requeued.len())
    }

    pub fn size_cap(&self) -> u64 {
        self.size_cap
    }

    /// The file holding an active image's data.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn not_found(id: &str) -> CoreError {
        CoreError::NotFound(format!("No image found with ID {id}"))
    }

    async fn membership(&self, ctx: &AuthContext, image_id: &str) -> Option<ImageMember> {
        let project = ctx.project_id()?;
        self.store.get_image_member(image_id, project).await.ok()
    }

    async fn can_see(&self, ctx: &AuthContext, img: &Image) -> bool {
        if ctx.is_admin() || Some(img.owner.as_str()) == ctx.project_id() {
            return true;
        }
        match img.visibility.as_str() {
            "public" | "community" => true,
            "shared" => self.membership(ctx, &img.id).await.is_some(),
            _ => false,
        }
    }

    /// Deactivated images are downloadable only by admins, as in Glance.
    async fn load_visible(&self, ctx: &AuthContext, id: &str) -> CoreResult<Image> {
        let img = match self.store.get_image(id).await {
            Ok(i) => i,
            Err(StoreError::NotFound) => return Err(Self::not_found(id)),
            Err(e) => return Err(e.into()),
        };
        if self.can_see(ctx, &img).await {
            Ok(img)
        } else {
            Err(Self::not_found(id))
        }
    }

    /// Loads an image the caller may change: visible, owned (or admin), with a writer role.
    async fn load_owned(&self, ctx: &AuthContext, id: &str, action: &str) -> CoreResult<Image> {
        let img = self.load_visible(ctx, id).await?;
        ctx.require_member(action)?;
        if !ctx.is_admin() && Some(img.owner.as_str()) != ctx.project_id() {
            return Err(CoreError::Forbidden(format!(
                "You are not permitted to modify image {id}: you do not own it."
            )));
        }
        Ok(img)
    }

    pub async fn get(&self, ctx: &AuthContext, id: &str) -> CoreResult<Image> {
        self.load_visible(ctx, id).await
    }

    /// Creates a `queued` image from the request document.
    pub async fn create(
        &self,
        ctx: &AuthContext,
        mut doc: Map<String, Value>,
    ) -> CoreResult<Image> {
        ctx.require_member("add_image")?;
        let project = ctx.project_id().ok_or_else(|| {
            CoreError::Forbidden("Creating an image needs a project-scoped token.".into())
        })?;
        for key in doc.keys() {
            if schema::RESERVED.contains(&key.as_str()) {
                return Err(CoreError::Forbidden(format!(
                    "Attribute '{key}' is reserved."
                )));
            }
            if key != "id" && schema::READ_ONLY.contains(&key.as_str()) {
                return Err(CoreError::Forbidden(format!(
                    "Attribute '{key}' is read-only."
                )));
            }
        }
        schema::validate_document(&doc)?;
        let id = match doc.remove("id") {
            Some(Value::String(s)) => s.to_lowercase(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        let owner = match doc.remove("owner") {
            Some(Value::String(o)) if o != project => {
                if !ctx.is_admin() {
                    return Err(CoreError::Forbidden(
                        "You are not permitted to create images owned by another project.".into(),
                    ));
                }
                o
            }
            _ => project.to_string(),
        };
        // Glance's default since API 2.5: shared (visible to members once added).
        let mut img = blank_image(id.clone(), owner, "shared");
        apply_document(&mut img, doc)?;
        if img.visibility == "public" && !ctx.is_admin() {
            return Err(publicize_forbidden());
        }
        match self.store.create_image(&img).await {
            Ok(()) => Ok(img),
            Err(StoreError::Conflict(_)) => Err(CoreError::Conflict(format!(
                "An image with identifier {id} already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a JSON patch (already parsed) to the image's document.
    pub async fn patch(
        &self,
        ctx: &AuthContext,
        id: &str,
        ops: &[schema::PatchOp],
    ) -> CoreResult<Image> {
        let img = self.load_owned(ctx, id, "modify_image").await?;
        let before = document(&img);
        let mut after = before.clone();
        schema::apply_patch(&mut after, ops)?;
        for (key, old) in &before {
            let new = after.get(key);
            if new == Some(old) {
                continue;
            }
            if schema::READ_ONLY.contains(&key.as_str()) {
                return Err(CoreError::Forbidden(format!(
                    "Attribute '{key}' is read-only."
                )));
            }
            if new.is_none() && schema::BASE_WRITABLE.contains(&key.as_str()) {
                return Err(CoreError::Forbidden(format!(
                    "Attribute '{key}' is a base attribute and cannot be removed."
                )));
            }
        }
        for key in after.keys() {
            if !before.contains_key(key) {
                if schema::RESERVED.contains(&key.as_str()) {
                    return Err(CoreError::Forbidden(format!(
                        "Attribute '{key}' is reserved."
                    )));
                }
                if schema::READ_ONLY.contains(&key.as_str()) {
                    return Err(CoreError::Forbidden(format!(
                        "Attribute '{key}' is read-only."
                    )));
                }
            }
        }
        schema::validate_document(&after)?;
        let mut updated = img.clone();
        updated.properties.clear();
        let editable: Map<String, Value> = after
            .into_iter()
            .filter(|(k, _)| !schema::READ_ONLY.contains(&k.as_str()))
            .collect();
        apply_document(&mut updated, editable)?;
        let formats_changed = updated.disk_format != img.disk_format
            || updated.container_format != img.container_format;
        if formats_changed && img.status != "queued" {
            return Err(CoreError::Forbidden(
                "Attributes disk_format and container_format can be only replaced for a queued image."
                    .into(),
            ));
        }
        if updated.visibility == "public" && img.visibility != "public" && !ctx.is_admin() {
            return Err(publicize_forbidden());
        }
        if updated.owner != img.owner && !ctx.is_admin() {
            return Err(CoreError::Forbidden(
                "Only an administrator may change the owner of an image.".into(),
            ));
        }
        if updated == img {
            return Ok(img);
        }
        updated.updated_at = now();
        match self.store.update_image_meta(&updated).await {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(Self::not_found(id)),
            Err(e) => return Err(e.into()),
        }
        self.store
            .get_image(id)
            .await
            .map_err(|e| CoreError::from_store(e, "image", id))
    }

    pub async fn add_tag(&self, ctx: &AuthContext, id: &str, tag: &str) -> CoreResult<()> {
        schema::validate_tag_value(&Value::String(tag.to_string()))?;
        let mut img = self.load_owned(ctx, id, "modify_image").await?;
        if img.tags.contains(tag) {
            return Ok(());
        }
        if img.tags.len() >= schema::MAX_TAGS {
            return Err(CoreError::TooLarge(format!(
                "Maximum number of tags exceeded (limit {})",
                schema::MAX_TAGS
            )));
        }
        img.tags.insert(tag.to_string());
        img.updated_at = now();
        self.store.update_image_meta(&img).await?;
        Ok(())
    }

    pub async fn remove_tag(&self, ctx: &AuthContext, id: &str, tag: &str) -> CoreResult<()> {
        let mut img = self.load_owned(ctx, id, "modify_image").await?;
        if !img.tags.remove(tag) {
            return Err(CoreError::NotFound(format!(
                "Tag {tag} not found on image {id}."
            )));
        }
        img.updated_at = now();
        self.store.update_image_meta(&img).await?;
        Ok(())
    }

    /// Deletes the record, then its data file. Protected images must be unprotected first.
    pub async fn delete(&self, ctx: &AuthContext, id: &str) -> CoreResult<()> {
        let img = self.load_owned(ctx, id, "delete_image").await?;
        if img.protected {
            return Err(CoreError::Forbidden(format!(
                "Image {id} is protected and cannot be deleted."
            )));
        }
        match self.store.delete_image(id).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        match tokio::fs::remove_file(self.data_path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(image_id = %id, error = %e, "could not remove image data"),
        }
        Ok(())
    }

    /// `deactivate` hides an active image's data from non-admins; `reactivate` undoes it.
    /// Glance's `deactivate`/`reactivate` are `admin or (role:member and project_id:owner)`.
    pub async fn set_active(&self, ctx: &AuthContext, id: &str, active: bool) -> CoreResult<()> {
        let action = if active { "reactivate" } else { "deactivate" };
        let img = self.load_visible(ctx, id).await?;
        ctx.require_member(action)?;
        if !ctx.is_admin() && Some(img.owner.as_str()) != ctx.project_id() {
            return Err(forbidden(action));
        }
        let (from, to) = if active {
            ("deactivated", "active")
        } else {
            ("active", "deactivated")
        };
        if img.status == to {
            return Ok(());
        }
        if !self.store.transition_image(id, &[from], to, &now()).await? {
            return Err(CoreError::Forbidden(format!(
                "Not allowed to {} image in status '{}'.",
                if active { "reactivate" } else { "deactivate" },
                img.status
            )));
        }
        Ok(())
    }

    /// Receives the image data. The image goes `queued → saving → active`; on any failure it is
    /// `queued` again and no file is left behind.
    pub async fn upload<S, E>(
        &self,
        ctx: &AuthContext,
        id: &str,
        body: S,
        declared_size: Option<u64>,
    ) -> CoreResult<Image>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let img = self.load_owned(ctx, id, "upload_image").await?;
        if img.status != "queued" {
            return Err(CoreError::Conflict(format!(
                "Image status transition from {} to saving is not allowed",
                img.status
            )));
        }
        if let Some(n) = declared_size {
            if n > self.size_cap {
                return Err(too_large(self.size_cap));
            }
        }
        if !self
            .store
            .start_image_upload(id, &self.receiver, &now())
            .await?
        {
            return Err(CoreError::Conflict(
                "Image status transition from saving to saving is not allowed".into(),
            ));
        }
        let tmp = upload::temp_path(&self.dir, id);
        let outcome = self.receive_and_activate(&img, body, &tmp).await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
            // Back to queued so the client can try again (unless it was deleted meanwhile).
            if let Err(e) = self
                .store
                .transition_image(id, &["saving"], "queued", &now())
                .await
            {
                tracing::error!(image_id = %id, error = %e, "could not requeue image");
            }
        }
        outcome
    }

    async fn receive_and_activate<S, E>(
        &self,
        img: &Image,
        body: S,
        tmp: &Path,
    ) -> CoreResult<Image>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let got = upload::receive(body, tmp, self.size_cap)
            .await
            .map_err(|e| match e {
                upload::ReceiveError::TooLarge { limit } => too_large(limit),
                upload::ReceiveError::StorageFull => CoreError::TooLarge(
                    "Image storage media is full: there is not enough disk space for this image."
                        .into(),
                ),
                upload::ReceiveError::Client(m) => CoreError::BadRequest(m),
                upload::ReceiveError::Io(e) => {
                    CoreError::Internal(format!("writing image {}: {e}", img.id))
                }
            })?;
        let virtual_size = inspect::check(img.disk_format.as_deref(), &got.head, got.size)
            .map_err(CoreError::BadRequest)?;
        let final_path = self.data_path(&img.id);
        tokio::fs::rename(tmp, &final_path)
            .await
            .map_err(|e| CoreError::Internal(format!("storing image {}: {e}", img.id)))?;
        let result = UploadResult {
            size: got.size as i64,
            virtual_size: virtual_size.map(|v| v as i64),
            checksum: got.md5,
            os_hash_algo: "sha512".into(),
            os_hash_value: got.sha512,
        };
        let activated = self
            .store
            .finish_image_upload(&img.id, &result, &now())
            .await;
        match activated {
            Ok(true) => self
                .store
                .get_image(&img.id)
                .await
                .map_err(|e| CoreError::from_store(e, "image", &img.id)),
            Ok(false) | Err(_) => {
                let _ = tokio::fs::remove_file(&final_path).await;
                if let Err(e) = activated {
                    return Err(e.into());
                }
                Err(CoreError::Gone(format!(
                    "Image {} was deleted or changed while its data was being uploaded.",
                    img.id
                )))
            }
        }
    }

    /// The image and its data file, for a download the caller may make: Glance's
    /// `download_image` wants the `member` role even for a public image (a reader only reads
    /// the metadata).
    pub async fn download(&self, ctx: &AuthContext, id: &str) -> CoreResult<Download> {
        let img = self.load_visible(ctx, id).await?;
        ctx.require_member("download_image")?;
        if img.status == "deactivated" && !ctx.is_admin() {
            return Err(CoreError::Forbidden(
                "The requested image has been deactivated. Image data download is forbidden."
                    .into(),
            ));
        }
        let has_data = img.status == "active" || img.status == "deactivated";
        if has_data {
            // Another controller may have received the upload: copy its data here first.
            self.ensure_local(&img).await?;
        }
        let path = has_data.then(|| self.data_path(id));
        Ok(Download { image: img, path })
    }

    /// Images visible to the caller, filtered, sorted and paged. Returns the page and whether
    /// more follow.
    pub async fn list(&self, ctx: &AuthContext, q: &ListQuery) -> CoreResult<(Vec<Image>, bool)> {
        let all = self.store.list_images().await?;
        let memberships: std::collections::HashMap<String, String> = match ctx.project_id() {
            Some(p) => self
                .store
                .list_memberships(p)
                .await?
                .into_iter()
                .map(|m| (m.image_id, m.status))
                .collect(),
            None => Default::default(),
        };
        let project = ctx.project_id();
        let member_status = q.member_status.as_deref().unwrap_or("accepted");
        let mut out: Vec<Image> = all
            .into_iter()
            .filter(|img| {
                let own = Some(img.owner.as_str()) == project;
                let member = memberships.get(&img.id);
                let listed = match q.visibility.as_deref() {
                    Some("all") | None => {
                        own || img.visibility == "public"
                            || (img.visibility == "shared"
                                && member
                                    .is_some_and(|s| member_status == "all" || s == member_status))
                            || (ctx.is_admin() && img.visibility != "community")
                            || (q.visibility.as_deref() == Some("all")
                                && img.visibility == "community")
                    }
                    Some(v) => {
                        img.visibility == v
                            && (own
                                || ctx.is_admin()
                                || v == "public"
                                || v == "community"
                                || (v == "shared"
                                    && member.is_some_and(|s| {
                                        member_status == "all" || s == member_status
                                    })))
                    }
                };
                listed && matches(img, q)
            })
            .collect();
        out.sort_by(|a, b| compare(a, b, &q.sort));
        if let Some(marker) = &q.marker {
            let pos = out.iter().position(|i| &i.id == marker).ok_or_else(|| {
                CoreError::BadRequest(format!(
                    "Invalid marker. Image {marker} could not be found."
                ))
            })?;
            out.drain(..=pos);
        }
        let more = out.len() > q.limit;
        out.truncate(q.limit);
        Ok((out, more))
    }

    /// Registers an operator-supplied image file (the built-in guest image) as a public image
    /// owned by `owner`, through the same hashing and inspection as an upload. Returns None when
    /// an active image with this name and the same `marker` property value already exists.
    pub async fn register_file(
        &self,
        owner: &str,
        sys: &SystemImage<'_>,
    ) -> CoreResult<Option<Image>> {
        let SystemImage {
            name,
            file,
            disk_format,
            container_format,
            properties,
            marker,
        } = *sys;
        let existing = self.store.list_images().await?;
        if existing.iter().any(|i| {
            i.name.as_deref() == Some(name)
                && i.status == "active"
                && i.properties.get(marker.0).map(String::as_str) == Some(marker.1)
        }) {
            return Ok(None);
        }
        let mut img = blank_image(
            uuid::Uuid::new_v4().to_string(),
            owner.to_string(),
            "public",
        );
        img.name = Some(name.to_string());
        img.disk_format = Some(disk_format.to_string());
        img.container_format = Some(container_format.to_string());
        img.properties = properties.iter().cloned().collect();
        img.properties
            .insert(marker.0.to_string(), marker.1.to_string());
        self.store.create_image(&img).await?;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| CoreError::Internal(format!("cannot read {}: {e}", file.display())))?;
        let body = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
        if !self
            .store
            .transition_image(&img.id, &["queued"], "saving", &now())
            .await?
        {
            return Err(CoreError::Conflict(
                "image changed during registration".into(),
            ));
        }
        let tmp = upload::temp_path(&self.dir, &img.id);
        match self.receive_and_activate(&img, body, &tmp).await {
            Ok(done) => Ok(Some(done)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                let _ = self.store.delete_image(&img.id).await;
                Err(e)
            }
        }
    }

    /// A `queued` private snapshot image for a server's createImage, owned by its project.
    pub async fn create_snapshot_record(
        &self,
        owner: &str,
        name: &str,
        properties: &[(String, String)],
        min_disk: i64,
        min_ram: i64,
    ) -> CoreResult<Image> {
        self.create_system_record(owner, name, "qcow2", properties, min_disk, min_ram)
            .await
    }

    /// A `queued` private image of `disk_format` whose data the system provides (a snapshot, a
    /// volume uploaded to an image).
    pub async fn create_system_record(
        &self,
        owner: &str,
        name: &str,
        disk_format: &str,
        properties: &[(String, String)],
        min_disk: i64,
        min_ram: i64,
    ) -> CoreResult<Image> {
        let mut img = blank_image(
            uuid::Uuid::new_v4().to_string(),
            owner.to_string(),
            "private",
        );
        img.name = Some(name.to_string());
        img.disk_format = Some(disk_format.into());
        img.container_format = Some("bare".into());
        img.min_disk = min_disk;
        img.min_ram = min_ram;
        img.properties = properties.iter().cloned().collect();
        self.store.create_image(&img).await?;
        Ok(img)
    }

    /// Receives the data of a queued image on behalf of the system (a compute agent uploading a
    /// snapshot); the same hashing, inspection and all-or-nothing rules as a user upload.
    pub async fn upload_system<S, E>(&self, id: &str, body: S) -> CoreResult<Image>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let img = self
            .store
            .get_image(id)
            .await
            .map_err(|_| Self::not_found(id))?;
        if !self
            .store
            .start_image_upload(id, &self.receiver, &now())
            .await?
        {
            return Err(CoreError::Conflict(format!(
                "Image status transition from {} to saving is not allowed",
                img.status
            )));
        }
        let tmp = upload::temp_path(&self.dir, id);
        match self.receive_and_activate(&img, body, &tmp).await {
            Ok(done) => Ok(done),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                let _ = self
                    .store
                    .transition_image(id, &["saving"], "queued", &now())
                    .await;
                Err(e)
            }
        }
    }

    /// An image by id, whoever owns it (agents fetching what a server boots from).
    pub async fn get_system(&self, id: &str) -> CoreResult<Image> {
        self.store.get_image(id).await.map_err(|e| match e {
            StoreError::NotFound => Self::not_found(id),
            e => e.into(),
        })
    }

    /// Removes an image record and its data regardless of owner (a failed snapshot).
    pub async fn delete_system(&self, id: &str) -> CoreResult<()> {
        match self.store.delete_image(id).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = tokio::fs::remove_file(self.data_path(id)).await;
        Ok(())
    }

    // ---- members ----

    async fn load_for_members(&self, ctx: &AuthContext, id: &str) -> CoreResult<Image> {
        let img = self.load_visible(ctx, id).await?;
        if img.visibility != "shared" {
            return Err(CoreError::Forbidden(format!(
                "Only shared images have members (image {id} is {}).",
                img.visibility
            )));
        }
        Ok(img)
    }

    pub async fn list_members(&self, ctx: &AuthContext, id: &str) -> CoreResult<Vec<ImageMember>> {
        let img = self.load_for_members(ctx, id).await?;
        let members = self.store.list_image_members(id).await?;
        if ctx.is_admin() || Some(img.owner.as_str()) == ctx.project_id() {
            Ok(members)
        } else {
            // A member sees only its own membership.
            Ok(members
                .into_iter()
                .filter(|m| Some(m.member_id.as_str()) == ctx.project_id())
                .collect())
        }
    }

    pub async fn get_member(
        &self,
        ctx: &AuthContext,
        id: &str,
        member: &str,
    ) -> CoreResult<ImageMember> {
        let members = self.list_members(ctx, id).await?;
        members
            .into_iter()
            .find(|m| m.member_id == member)
            .ok_or_else(|| {
                CoreError::NotFound(format!("Member {member} not found for image {id}."))
            })
    }

    pub async fn add_member(
        &self,
        ctx: &AuthContext,
        id: &str,
        member: &str,
    ) -> CoreResult<ImageMember> {
        self.load_for_members(ctx, id).await?;
        self.load_owned(ctx, id, "add_member").await?;
        if member.is_empty() || member.len() > 255 {
            return Err(CoreError::BadRequest("member must be a project id.".into()));
        }
        let ts = now();
        let m = ImageMember {
            image_id: id.into(),
            member_id: member.into(),
            status: "pending".into(),
            created_at: ts.clone(),
            updated_at: ts,
        };
        match self.store.add_image_member(&m).await {
            Ok(()) => Ok(m),
            Err(StoreError::Conflict(_)) => Err(CoreError::Conflict(format!(
                "Member {member} already exists for image {id}."
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The member itself accepts or rejects a share (or an admin: Glance's `modify_member` is
    /// `admin or (role:member and project_id:%(member_id)s)`).
    pub async fn set_member_status(
        &self,
        ctx: &AuthContext,
        id: &str,
        member: &str,
        status: &str,
    ) -> CoreResult<ImageMember> {
        if !["pending", "accepted", "rejected"].contains(&status) {
            return Err(CoreError::BadRequest(format!(
                "Invalid status: {status}. It must be one of pending, accepted, rejected."
            )));
        }
        self.get_member(ctx, id, member).await?;
        ctx.require_member("modify_member")?;
        if !ctx.is_admin() && ctx.project_id() != Some(member) {
            return Err(CoreError::Forbidden(
                "Only the member project may change its membership status.".into(),
            ));
        }
        let ts = now();
        self.store
            .set_image_member_status(id, member, status, &ts)
            .await
            .map_err(|e| CoreError::from_store(e, "member", member))?;
        self.store
            .get_image_member(id, member)
            .await
            .map_err(|e| CoreError::from_store(e, "member", member))
    }

    /// The owner's member (or an admin) removes a member; Glance checks `delete_member` before
    /// it looks the membership up, so a project that sees the image but does not own it is 403.
    pub async fn remove_member(&self, ctx: &AuthContext, id: &str, member: &str) -> CoreResult<()> {
        self.load_for_members(ctx, id).await?;
        self.load_owned(ctx, id, "delete_member").await?;
        self.get_member(ctx, id, member).await?;
        self.store
            .delete_image_member(id, member)
            .await
            .map_err(|_| CoreError::NotFound(format!("Member {member} not found for image {id}.")))
    }
}

/// A new `queued` image with no data and Glance's attribute defaults.
fn blank_image(id: String, owner: String, visibility: &str) -> Image {
    let ts = now();
    Image {
        id,
        name: None,
        owner,
        status: "queued".into(),
        visibility: visibility.into(),
        protected: false,
        os_hidden: false,
        disk_format: None,
        container_format: None,
        min_disk: 0,
        min_ram: 0,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        created_at: ts.clone(),
        updated_at: ts,
        properties: Default::default(),
        tags: Default::default(),
    }
}

fn publicize_forbidden() -> CoreError {
    CoreError::Forbidden("You are not authorized to complete publicize_image action.".into())
}

fn too_large(limit: u64) -> CoreError {
    CoreError::TooLarge(format!(
        "Image exceeds the storage quota: the image size limit is {limit} bytes."
    ))
}

/// The image as a flat JSON document (the shape of Glance's schema, without links).
pub fn document(img: &Image) -> Map<String, Value> {
    let mut doc = Map::new();
    for (k, v) in &img.properties {
        doc.insert(k.clone(), Value::String(v.clone()));
    }
    let base = json!({
        "id": img.id, "name": img.name, "owner": img.owner, "status": img.status,
        "visibility": img.visibility, "protected": img.protected, "os_hidden": img.os_hidden,
        "disk_format": img.disk_format, "container_format": img.container_format,
        "min_disk": img.min_disk, "min_ram": img.min_ram, "size": img.size,
        "virtual_size": img.virtual_size, "checksum": img.checksum,
        "os_hash_algo": img.os_hash_algo, "os_hash_value": img.os_hash_value,
        "created_at": img.created_at, "updated_at": img.updated_at,
        "tags": img.tags.iter().collect::<Vec<_>>(),
    });
    if let Value::Object(b) = base {
        doc.extend(b);
    }
    doc
}

/// Sets writable attributes and properties from a validated document.
fn apply_document(img: &mut Image, doc: Map<String, Value>) -> CoreResult<()> {
    for (key, v) in doc {
        match key.as_str() {
            "name" => img.name = v.as_str().map(str::to_string),
            "owner" => {
                if let Some(o) = v.as_str() {
                    img.owner = o.to_string();
                }
            }
            "visibility" => img.visibility = v.as_str().unwrap_or("shared").to_string(),
            "protected" => img.protected = v.as_bool().unwrap_or(false),
            "os_hidden" => img.os_hidden = v.as_bool().unwrap_or(false),
            "disk_format" => img.disk_format = v.as_str().map(str::to_string),
            "container_format" => img.container_format = v.as_str().map(str::to_string),
            "min_disk" => img.min_disk = v.as_i64().unwrap_or(0),
            "min_ram" => img.min_ram = v.as_i64().unwrap_or(0),
            "tags" => {
                img.tags = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            _ => {
                // kernel_id/ramdisk_id may be null, meaning unset.
                if let Some(s) = v.as_str() {
                    img.properties.insert(key, s.to_string());
                } else {
                    img.properties.remove(&key);
                }
            }
        }
    }
    Ok(())
}

fn attr(img: &Image, key: &str) -> Option<String> {
    let s = |v: &Option<String>| v.clone();
    match key {
        "id" => Some(img.id.clone()),
        "name" => s(&img.name),
        "owner" => Some(img.owner.clone()),
        "status" => Some(img.status.clone()),
        "visibility" => Some(img.visibility.clone()),
        "disk_format" => s(&img.disk_format),
        "container_format" => s(&img.container_format),
        "checksum" => s(&img.checksum),
        "os_hash_value" => s(&img.os_hash_value),
        "created_at" => Some(img.created_at.clone()),
        "updated_at" => Some(img.updated_at.clone()),
        "min_disk" => Some(img.min_disk.to_string()),
        "min_ram" => Some(img.min_ram.to_string()),
        other => img.properties.get(other).cloned(),
    }
}

fn matches(img: &Image, q: &ListQuery) -> bool {
    if q.os_hidden.unwrap_or(false) != img.os_hidden {
        return false;
    }
    if q.protected.is_some_and(|p| p != img.protected) {
        return false;
    }
    if !q.tags.iter().all(|t| img.tags.contains(t)) {
        return false;
    }
    let size = img.size.unwrap_or(0);
    if q.size_min.is_some_and(|m| img.size.is_none() || size < m)
        || q.size_max.is_some_and(|m| img.size.is_none() || size > m)
    {
        return false;
    }
    for (key, want) in &q.filters {
        let have = attr(img, key);
        let ok = match want.strip_prefix("in:") {
            Some(list) => list
                .split(',')
                .map(|v| v.trim().trim_matches('"'))
                .any(|v| have.as_deref() == Some(v)),
            None => have.as_deref() == Some(want.as_str()),
        };
        if !ok {
            return false;
        }
    }
    for (key, op, value) in &q.time_filters {
        let have = attr(img, key).unwrap_or_default();
        let ord = have.as_str().cmp(value.as_str());
        let ok = match op.as_str() {
            "gt" => ord == Ordering::Greater,
            "gte" => ord != Ordering::Less,
            "lt" => ord == Ordering::Less,
            "lte" => ord != Ordering::Greater,
            "neq" => ord != Ordering::Equal,
            _ => ord == Ordering::Equal,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn compare(a: &Image, b: &Image, sort: &[(String, bool)]) -> Ordering {
    let default = [("created_at".to_string(), true)];
    let keys = if sort.is_empty() { &default[..] } else { sort };
    for (key, desc) in keys
        .iter()
        .chain(std::iter::once(&("id".to_string(), true)))
    {
        let ord = match key.as_str() {
            "size" => a.size.cmp(&b.size),
            "virtual_size" => a.virtual_size.cmp(&b.virtual_size),
            "min_disk" => a.min_disk.cmp(&b.min_disk),
            "min_ram" => a.min_ram.cmp(&b.min_ram),
            k => attr(a, k).cmp(&attr(b, k)),
        };
        let ord = if *desc { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}
