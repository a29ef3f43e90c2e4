//! Image records (Glance v2): the image row, its free-form properties, its tags and its members.
//! Status changes that race with uploads are conditional updates, so two writers never both win.

use crate::{require_row, retry_transient, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One image with everything stored about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub name: Option<String>,
    pub owner: String,
    pub status: String,
    pub visibility: String,
    pub protected: bool,
    pub os_hidden: bool,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub min_disk: i64,
    pub min_ram: i64,
    pub size: Option<i64>,
    pub virtual_size: Option<i64>,
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub properties: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
}

row_struct!(ImageRecord {
    id: "id" => val, name: "name" => val, owner: "owner" => val, status: "status" => val,
    visibility: "visibility" => val, protected: "protected" => flag, os_hidden: "os_hidden" => flag,
    disk_format: "disk_format" => val, container_format: "container_format" => val,
    min_disk: "min_disk" => val, min_ram: "min_ram" => val, size: "size" => val,
    virtual_size: "virtual_size" => val, checksum: "checksum" => val,
    os_hash_algo: "os_hash_algo" => val, os_hash_value: "os_hash_value" => val,
    created_at: "created_at" => val, updated_at: "updated_at" => val,
    properties: "" => default, tags: "" => default,
});

/// A project an image is shared with, and whether it accepted.
#[derive(Clone, Debug, FromRow, PartialEq)]
pub struct ImageMember {
    pub image_id: String,
    pub member_id: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

/// What a finished upload records.
#[derive(Clone, Debug)]
pub struct UploadResult {
    pub size: i64,
    pub virtual_size: Option<i64>,
    pub checksum: String,
    pub os_hash_algo: String,
    pub os_hash_value: String,
}

const IMAGE_COLUMNS: &str = "id, name, owner, status, visibility, protected, os_hidden, \
    disk_format, container_format, min_disk, min_ram, size, virtual_size, checksum, \
    os_hash_algo, os_hash_value, created_at, updated_at";

impl Store {
    /// Inserts the image with its properties and tags, all or nothing.
    pub async fn create_image(&self, img: &ImageRecord) -> Result<()> {
        retry_transient("create image", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query(&format!(
                "INSERT INTO images ({IMAGE_COLUMNS}) VALUES \
                 ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)"
            ))
            .bind(&img.id)
            .bind(&img.name)
            .bind(&img.owner)
            .bind(&img.status)
            .bind(&img.visibility)
            .bind(img.protected as i64)
            .bind(img.os_hidden as i64)
            .bind(&img.disk_format)
            .bind(&img.container_format)
            .bind(img.min_disk)
            .bind(img.min_ram)
            .bind(img.size)
            .bind(img.virtual_size)
            .bind(&img.checksum)
            .bind(&img.os_hash_algo)
            .bind(&img.os_hash_value)
            .bind(&img.created_at)
            .bind(&img.updated_at)
            .execute(&mut *tx)
            .await?;
            write_children(&mut tx, img).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn get_image(&self, id: &str) -> Result<ImageRecord> {
        let mut img: ImageRecord =
            sqlx::query_as(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1"))
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        let props: Vec<(String, String)> =
            sqlx::query_as("SELECT name, value FROM image_properties WHERE image_id = $1")
                .bind(id)
                .fetch_all(self.pool())
                .await?;
        img.properties = props.into_iter().collect();
        let tags: Vec<(String,)> = sqlx::query_as("SELECT tag FROM image_tags WHERE image_id = $1")
            .bind(id)
            .fetch_all(self.pool())
            .await?;
        img.tags = tags.into_iter().map(|(t,)| t).collect();
        Ok(img)
    }

    /// Every image, with properties and tags. Visibility and filters are applied by the caller;
    /// a private cloud holds hundreds of images, not millions.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let mut images: Vec<ImageRecord> =
            sqlx::query_as(&format!("SELECT {IMAGE_COLUMNS} FROM images"))
                .fetch_all(self.pool())
                .await?;
        let props: Vec<(String, String, String)> =
            sqlx::query_as("SELECT image_id, name, value FROM image_properties")
                .fetch_all(self.pool())
                .await?;
        let tags: Vec<(String, String)> = sqlx::query_as("SELECT image_id, tag FROM image_tags")
            .fetch_all(self.pool())
            .await?;
        let index: HashMap<String, usize> = images
            .iter()
            .enumerate()
            .map(|(i, img)| (img.id.clone(), i))
            .collect();
        for (image_id, name, value) in props {
            if let Some(&i) = index.get(&image_id) {
                images[i].properties.insert(name, value);
            }
        }
        for (image_id, tag) in tags {
            if let Some(&i) = index.get(&image_id) {
                images[i].tags.insert(tag);
            }
        }
        Ok(images)
    }

    /// Replaces the user-editable metadata (not status, size or hashes, which only uploads and
    /// actions change). Fails with NotFound when the image is gone.
    pub async fn update_image_meta(&self, img: &ImageRecord) -> Result<()> {
        retry_transient("update image", || async move {
            let mut tx = self.pool().begin().await?;
            let r = sqlx::query(
                "UPDATE images SET name = $2, owner = $3, visibility = $4, protected = $5, \
                 os_hidden = $6, disk_format = $7, container_format = $8, min_disk = $9, \
                 min_ram = $10, updated_at = $11 WHERE id = $1",
            )
            .bind(&img.id)
            .bind(&img.name)
            .bind(&img.owner)
            .bind(&img.visibility)
            .bind(img.protected as i64)
            .bind(img.os_hidden as i64)
            .bind(&img.disk_format)
            .bind(&img.container_format)
            .bind(img.min_disk)
            .bind(img.min_ram)
            .bind(&img.updated_at)
            .execute(&mut *tx)
            .await?;
            require_row(r)?;
            sqlx::query("DELETE FROM image_properties WHERE image_id = $1")
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM image_tags WHERE image_id = $1")
                .bind(&img.id)
                .execute(&mut *tx)
                .await?;
            write_children(&mut tx, img).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Moves the image from one of `from` to `to`; false when its status was something else.
    pub async fn transition_image(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        now: &str,
    ) -> Result<bool> {
        let mut changed = false;
        for f in from {
            let r = sqlx::query(
                "UPDATE images SET status = $3, updated_at = $4 WHERE id = $1 AND status = $2",
            )
            .bind(id)
            .bind(*f)
            .bind(to)
            .bind(now)
            .execute(self.pool())
            .await?;
            if r.rows_affected() > 0 {
                changed = true;
                break;
            }
        }
        Ok(changed)
    }

    /// Records a completed upload and activates the image, only if it is still `saving`.
    pub async fn finish_image_upload(&self, id: &str, r: &UploadResult, now: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE images SET status = 'active', size = $2, virtual_size = $3, checksum = $4, \
             os_hash_algo = $5, os_hash_value = $6, updated_at = $7 \
             WHERE id = $1 AND status = 'saving'",
        )
        .bind(id)
        .bind(r.size)
        .bind(r.virtual_size)
        .bind(&r.checksum)
        .bind(&r.os_hash_algo)
        .bind(&r.os_hash_value)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Images left `saving` by a process that died mid-upload go back to `queued`.
    /// `queued → saving`, recording which controller receives the data (so that another
    /// controller's restart leaves the upload alone). False when the image was not queued.
    pub async fn start_image_upload(&self, id: &str, receiver: &str, now: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE images SET status = 'saving', receiving_by = $2, updated_at = $3 \
             WHERE id = $1 AND status = 'queued'",
        )
        .bind(id)
        .bind(receiver)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Puts back to `queued` the uploads whose receiver is gone and returns their ids:
    /// `restarting` — that controller starts again, so its uploads (and any with no receiver on
    /// record) died with its old process; `down` — controllers on record that stopped beating,
    /// whose uploads never finish.
    pub async fn requeue_interrupted_uploads(
        &self,
        now: &str,
        restarting: Option<&str>,
        down: &[String],
    ) -> Result<Vec<String>> {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT id, receiving_by FROM images WHERE status = 'saving'")
                .fetch_all(self.pool())
                .await?;
        let mut out = Vec::new();
        for (id, by) in rows {
            let gone = match (by.as_deref(), restarting) {
                (None, Some(_)) => true,
                (Some(b), Some(me)) if b == me => true,
                (Some(b), _) => down.iter().any(|x| x == b),
                (None, None) => false,
            };
            if gone
                && self
                    .transition_image(&id, &["saving"], "queued", now)
                    .await?
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub async fn delete_image(&self, id: &str) -> Result<()> {
        retry_transient("delete image", || async move {
            let mut tx = self.pool().begin().await?;
            for table in ["image_properties", "image_tags", "image_members"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE image_id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            let r = sqlx::query("DELETE FROM images WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            require_row(r)?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn list_image_members(&self, image_id: &str) -> Result<Vec<ImageMember>> {
        Ok(sqlx::query_as(
            "SELECT image_id, member_id, status, created_at, updated_at FROM image_members \
             WHERE image_id = $1 ORDER BY created_at, member_id",
        )
        .bind(image_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every membership of one project: which shared images it may see.
    pub async fn list_memberships(&self, member_id: &str) -> Result<Vec<ImageMember>> {
        Ok(sqlx::query_as(
            "SELECT image_id, member_id, status, created_at, updated_at FROM image_members \
             WHERE member_id = $1",
        )
        .bind(member_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn get_image_member(&self, image_id: &str, member_id: &str) -> Result<ImageMember> {
        Ok(sqlx::query_as(
            "SELECT image_id, member_id, status, created_at, updated_at FROM image_members \
             WHERE image_id = $1 AND member_id = $2",
        )
        .bind(image_id)
        .bind(member_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Fails with Conflict when the project already is a member.
    pub async fn add_image_member(&self, m: &ImageMember) -> Result<()> {
        sqlx::query(
            "INSERT INTO image_members (image_id, member_id, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&m.image_id)
        .bind(&m.member_id)
        .bind(&m.status)
        .bind(&m.created_at)
        .bind(&m.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn set_image_member_status(
        &self,
        image_id: &str,
        member_id: &str,
        status: &str,
        now: &str,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE image_members SET status = $3, updated_at = $4 \
             WHERE image_id = $1 AND member_id = $2",
        )
        .bind(image_id)
        .bind(member_id)
        .bind(status)
        .bind(now)
        .execute(self.pool())
        .await?;
        require_row(r)
    }

    pub async fn delete_image_member(&self, image_id: &str, member_id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM image_members WHERE image_id = $1 AND member_id = $2")
            .bind(image_id)
            .bind(member_id)
            .execute(self.pool())
            .await?;
        require_row(r)
    }
}

async fn write_children(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    img: &ImageRecord,
) -> Result<()> {
    for (name, value) in &img.properties {
        sqlx::query("INSERT INTO image_properties (image_id, name, value) VALUES ($1, $2, $3)")
            .bind(&img.id)
            .bind(name)
            .bind(value)
            .execute(&mut **tx)
            .await?;
    }
    for tag in &img.tags {
        sqlx::query("INSERT INTO image_tags (image_id, tag) VALUES ($1, $2)")
            .bind(&img.id)
            .bind(tag)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
