//! Compute's side of block storage: Nova's `os-volume_attachments`, boot from volume, the
//! volumes a host's agent must plug, and releasing a deleted server's volumes.

use super::{proto, server_not_found, ComputeService};
use crate::policy::AuthContext;
use crate::volume::{next_device, Reservation, VolumeService};
use crate::{CoreError, CoreResult};
use onestack_store::{InstanceRecord, VolumeRecord};
use std::sync::Arc;
use std::time::Duration;

/// One `block_device_mapping_v2` entry, as the API parsed it.
#[derive(Clone, Debug, Default)]
pub struct BlockDevice {
    pub source_type: String,
    pub destination_type: String,
    pub uuid: Option<String>,
    pub volume_size: Option<i64>,
    pub boot_index: Option<i64>,
    pub delete_on_termination: bool,
}

/// The root disk of a server booted from a volume.
#[derive(Clone, Debug)]
pub(crate) enum RootVolume {
    /// An existing volume, already reserved for the server.
    Existing(String),
    /// A volume being created from an image; the server waits for it.
    FromImage { volume_id: String },
}

/// How long a boot-from-volume server waits for its volume to be created.
const VOLUME_WAIT: Duration = Duration::from_secs(600);

impl ComputeService {
    /// Lets servers use volumes (absent in compute-only tests).
    pub fn attach_volumes(&self, volumes: Arc<VolumeService>) {
        let _ = self.volumes.set(volumes);
    }

    pub fn volumes(&self) -> Option<&Arc<VolumeService>> {
        self.volumes.get()
    }

    fn volume_service(&self) -> CoreResult<&Arc<VolumeService>> {
        self.volumes
            .get()
            .ok_or_else(|| CoreError::BadRequest("Block storage is not available.".into()))
    }

    /// The volumes attached to a server (what `os-volume_attachments` lists).
    pub async fn server_volumes(
        &self,
        ctx: &AuthContext,
        server: &str,
    ) -> CoreResult<Vec<VolumeRecord>> {
        self.get_server(ctx, server).await?;
        self.volumes_of(server).await
    }

    /// Attached or attaching volumes of a server, without a policy check (rendering).
    pub async fn volumes_of(&self, server: &str) -> CoreResult<Vec<VolumeRecord>> {
        if self.volumes.get().is_none() {
            return Ok(Vec::new());
        }
        Ok(self.store.instance_volumes(server).await?)
    }

    /// `POST /servers/{id}/os-volume_attachments`: reserves the volume and wakes the server's
    /// agent, which hot-plugs it (or plugs it at the next start of a stopped server).
    pub async fn attach_volume(
        &self,
        ctx: &AuthContext,
        server: &str,
        volume: &str,
        device: Option<&str>,
    ) -> CoreResult<VolumeRecord> {
        let vols = self.volume_service()?;
        let inst = self
            .get_server_for_update(
                ctx,
                server,
                "os_compute_api:os-volumes-attachments:create",
                true,
            )
            .await?;
        let vm = inst.vm_state.as_str();
        if !matches!(vm, "active" | "stopped" | "paused") || inst.task_state.is_some() {
            return Err(CoreError::Conflict(format!(
                "Cannot 'attach_volume' instance {server} while it is in vm_state {vm}"
            )));
        }
        let used: Vec<String> = self
            .store
            .instance_volumes(server)
            .await?
            .into_iter()
            .filter_map(|v| v.device)
            .collect();
        let device = match device {
            Some(d) if !d.is_empty() => {
                if !d.starts_with("/dev/") || used.iter().any(|u| u == d) || d == "/dev/vda" {
                    return Err(CoreError::BadRequest(format!(
                        "The supplied device path ({d}) is in use or invalid."
                    )));
                }
                d.to_string()
            }
            _ => next_device(&used),
        };
        let v = vols
            .reserve(
                ctx,
                volume,
                &Reservation {
                    server_id: server,
                    server_project: &inst.project_id,
                    host: inst.host.as_deref(),
                    device: &device,
                    boot_index: None,
                    delete_on_termination: false,
                },
            )
            .await?;
        self.notify();
        Ok(v)
    }

    /// `DELETE /servers/{id}/os-volume_attachments/{volume}`: 202, the agent unplugs it.
    pub async fn detach_volume(
        &self,
        ctx: &AuthContext,
        server: &str,
        volume: &str,
    ) -> CoreResult<()> {
        let vols = self.volume_service()?;
        let inst = self
            .get_server_for_update(
                ctx,
                server,
                "os_compute_api:os-volumes-attachments:delete",
                true,
            )
            .await?;
        if inst.task_state.is_some() {
            return Err(CoreError::Conflict(format!(
                "Cannot 'detach_volume' instance {server} while it is in task_state {}",
                inst.task_state.as_deref().unwrap_or_default()
            )));
        }
        vols.begin_detach(volume, server).await?;
        self.notify();
        Ok(())
    }

    /// An agent's word on a volume it plugged (`attach`) or unplugged (`detach`).
    pub async fn volume_report(
        &self,
        host: &str,
        server: &str,
        volume: &str,
        op: &str,
        error: Option<String>,
    ) -> CoreResult<()> {
        let vols = self.volume_service()?;
        match self.store.get_instance(server).await {
            Ok(i) if i.host.as_deref() == Some(host) => {}
            _ => return Err(server_not_found(server)),
        }
        match op {
            "attach" => vols.attach_done(volume, server, error).await,
            "detach" => vols.detach_done(volume, server, error).await,
            _ => Err(CoreError::BadRequest(format!(
                "unknown volume operation {op}"
            ))),
        }
    }

    /// A deleted server's volumes are detached (and deleted when so marked).
    pub(crate) async fn release_volumes(&self, server: &str) {
        if let Some(v) = self.volumes.get() {
            if let Err(e) = v.release_server(server).await {
                tracing::error!(instance = %server, error = %e, "cannot release the volumes of a deleted server");
            }
        }
    }

    /// What the agent plugs: the root volume (boot from volume) and the data volumes being or
    /// staying attached; a detaching one is listed with its state so the agent unplugs it.
    pub(crate) async fn desired_volumes(
        &self,
        inst: &InstanceRecord,
    ) -> CoreResult<Vec<proto::VolumeAttachment>> {
        Ok(self
            .volumes_of(&inst.id)
            .await?
            .into_iter()
            .map(|v| proto::VolumeAttachment {
                serial: v.id.chars().take(20).collect(),
                state: v.attach_status.clone(),
                device: v.device.clone().unwrap_or_default(),
                boot: v.boot_index == Some(0),
                volume_id: v.id,
            })
            .collect())
    }

    /// Checks a boot-from-volume request and prepares its root volume: an existing volume is
    /// reserved at once; one from an image is created and the server waits for it.
    pub(crate) async fn prepare_root_volume(
        &self,
        ctx: &AuthContext,
        server_id: &str,
        project: &str,
        bd: &BlockDevice,
        image_ref: &str,
    ) -> CoreResult<RootVolume> {
        let vols = self.volume_service()?;
        if bd.destination_type != "volume" {
            return Err(CoreError::BadRequest(
                "Block Device Mapping is Invalid: the boot device must be a volume when no image is given."
                    .into(),
            ));
        }
        match bd.source_type.as_str() {
            "volume" => {
                let id = bd.uuid.clone().ok_or_else(|| {
                    CoreError::BadRequest(
                        "Block Device Mapping is Invalid: uuid is required.".into(),
                    )
                })?;
                let v = vols.get(ctx, &id).await.map_err(|_| {
                    CoreError::BadRequest(format!(
                        "Block Device Mapping is Invalid: failed to get volume {id}."
                    ))
                })?;
                if !v.bootable {
                    return Err(CoreError::BadRequest(format!(
                        "Block Device Mapping is Invalid: Volume {id} is not bootable."
                    )));
                }
                vols.reserve(
                    ctx,
                    &id,
                    &Reservation {
                        server_id,
                        server_project: project,
                        host: None,
                        device: "/dev/vda",
                        boot_index: Some(0),
                        delete_on_termination: bd.delete_on_termination,
                    },
                )
                .await?;
                Ok(RootVolume::Existing(id))
            }
            "image" => {
                let image = bd
                    .uuid
                    .clone()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| image_ref.to_string());
                let size = bd.volume_size.ok_or_else(|| {
                    CoreError::BadRequest(
                        "Block Device Mapping is Invalid: Images with destination_type 'volume' need to have a non-zero size specified"
                            .into(),
                    )
                })?;
                let v = vols
                    .create(
                        ctx,
                        crate::volume::VolumeCreate {
                            size: Some(size),
                            image_ref: Some(image),
                            name: Some(String::new()),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| match e {
                        CoreError::BadRequest(m) => {
                            CoreError::BadRequest(format!("Block Device Mapping is Invalid: {m}"))
                        }
                        e => e,
                    })?;
                if bd.delete_on_termination {
                    let _ = self
                        .store
                        .update_volume(
                            &v.id,
                            &[],
                            &vec![("delete_on_termination", true.into())],
                            None,
                        )
                        .await;
                }
                Ok(RootVolume::FromImage { volume_id: v.id })
            }
            other => Err(CoreError::BadRequest(format!(
                "Block Device Mapping is Invalid: source_type {other} is not supported."
            ))),
        }
    }

    /// Waits for a boot volume made from an image, reserves it, then schedules the server.
    pub(crate) fn finish_boot_volume(
        self: &Arc<Self>,
        ctx: AuthContext,
        mut inst: InstanceRecord,
        volume_id: String,
        delete_on_termination: bool,
        zone: Option<String>,
        host: Option<String>,
    ) {
        let svc = self.clone();
        tokio::spawn(async move {
            let r = async {
                let vols = svc.volume_service()?.clone();
                let deadline = tokio::time::Instant::now() + VOLUME_WAIT;
                loop {
                    let v = svc.store.get_volume(&volume_id).await?;
                    match v.status.as_str() {
                        "available" => break,
                        "creating" if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        s => {
                            return Err(CoreError::Internal(format!(
                                "Volume {volume_id} did not finish being created (status {s})."
                            )))
                        }
                    }
                }
                vols.reserve(
                    &ctx,
                    &volume_id,
                    &Reservation {
                        server_id: &inst.id,
                        server_project: &inst.project_id,
                        host: None,
                        device: "/dev/vda",
                        boot_index: Some(0),
                        delete_on_termination,
                    },
                )
                .await?;
                svc.schedule(&mut inst, zone, host).await?;
                if let Some(h) = &inst.host {
                    vols.set_attached_host(&volume_id, h).await?;
                }
                svc.notify();
                Ok::<(), CoreError>(())
            }
            .await;
            if let Err(e) = r {
                tracing::error!(instance = %inst.id, error = %e, "boot from volume failed");
                svc.fail_build(
                    &inst.id,
                    &format!("Build of instance {} aborted: {e}", inst.id),
                )
                .await;
            }
        });
    }
}
