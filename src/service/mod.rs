//! The volume service: lifecycle rules, the state machine, quotas and the
//! jobs that do the work. Both API dialects call it; it calls the store and
//! the backends. Each mutation is recorded as a job in the same transaction
//! that changes the volume's state, and every job ends in a terminal state,
//! across restarts too.

mod extras;
mod images;
mod jobs;
mod snapshots;
mod transfers;

pub use images::{ImageSource, UploadImage};
pub use snapshots::CreateSnapshot;
pub use transfers::{CreateTransfer, NewTransfer};

use crate::backend::{BackendError, Location, VolumeBackend};
use crate::clock::{SharedClock, format_ts};
use crate::config::{Config, Provisioning, QuotaConfig, QuotaLimits};
use crate::export::Exporter;
use crate::store::NewAttachment;
use crate::store::model::*;
use crate::store::{QuotaCheck, Store, StoreError, Transition, VolumePatch};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio_util::task::TaskTracker;

pub const GIB: u64 = 1 << 30;

/// Who is asking. Volumes belong to projects; a caller sees its own
/// project's volumes only, unless it is an admin.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project_id: String,
    pub user_id: String,
    pub admin: bool,
}

impl Caller {
    fn scope(&self) -> Option<&str> {
        if self.admin {
            None
        } else {
            Some(&self.project_id)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("quota exceeded for {resource}: limit {limit}, in use {in_use}, requested {requested}")]
    QuotaExceeded {
        resource: &'static str,
        limit: u64,
        in_use: u64,
        requested: u64,
    },
    #[error("service is shutting down")]
    Unavailable,
    /// The image service is unset, unreachable or failing.
    #[error("image service: {0}")]
    ImageService(String),
    /// The request is valid but the backend cannot do it in this state.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a client is told when the image service fails (the log has why).
pub const IMAGE_SERVICE_MESSAGE: &str = "Failed to communicate with the image service (Glance): \
     it is unreachable, misconfigured or failing. Nothing was changed; retry later.";

/// A job's failure as the volume's error reason shows it. A cause that
/// the message already ends with (`{context}: {source}`) is not repeated.
pub(crate) fn reason(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let cause = x.to_string();
        if !s.ends_with(&cause) {
            s += &format!(": {cause}");
        }
        src = x.source();
    }
    s
}

/// Stable kinds the dialects map to their own status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Invalid,
    Conflict,
    QuotaExceeded,
    Unavailable,
    /// The image service (Glance) cannot serve the request.
    ImageService,
    /// 409 in both dialects.
    Busy,
    /// The backend lacks the space; 400 in both dialects.
    NoCapacity,
    /// The host's disk is full; nothing was changed.
    InsufficientStorage,
    /// A backend cannot be used now (its volume group is gone, say); 503.
    BackendUnavailable,
    Internal,
}

impl ServiceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::NotFound { .. } => ErrorKind::NotFound,
            ServiceError::Invalid { .. } => ErrorKind::Invalid,
            ServiceError::Conflict(_) => ErrorKind::Conflict,
            ServiceError::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            ServiceError::Unavailable => ErrorKind::Unavailable,
            ServiceError::ImageService(_) => ErrorKind::ImageService,
            ServiceError::Busy(_) => ErrorKind::Busy,
            ServiceError::NoCapacity(_) => ErrorKind::NoCapacity,
            ServiceError::Store(e) if e.kind() == crate::store::StoreErrorKind::NoSpace => {
                ErrorKind::InsufficientStorage
            }
            ServiceError::Backend(e) if e.kind() == crate::backend::BackendErrorKind::NoSpace => {
                ErrorKind::InsufficientStorage
            }
            ServiceError::Backend(e)
                if e.kind() == crate::backend::BackendErrorKind::Unavailable =>
            {
                ErrorKind::BackendUnavailable
            }
            ServiceError::Store(_) | ServiceError::Backend(_) => ErrorKind::Internal,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
        ServiceError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Quota {
                resource,
                limit,
                in_use,
                requested,
            } => ServiceError::QuotaExceeded {
                resource,
                limit,
                in_use,
                requested,
            },
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::MarkerNotFound(m) => {
                ServiceError::invalid("marker", format!("marker {m} not found"))
            }
            e => ServiceError::Store(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;

fn not_found(id: &str) -> impl FnOnce(StoreError) -> ServiceError + '_ {
    move |e| match e {
        StoreError::NotFound => ServiceError::NotFound {
            what: "volume",
            id: id.to_string(),
        },
        e => e.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeType {
    pub id: String,
    pub name: String,
    pub description: String,
    pub provisioning: Provisioning,
    pub multiattach: bool,
    pub reflink: bool,
    pub backend: String,
    /// Export kind for attaches that name none.
    pub export: Option<String>,
}

/// A volume with what its views show beside it.
#[derive(Debug, Clone)]
pub struct VolumeDetail {
    pub volume: Volume,
    pub attachments: Vec<Attachment>,
    /// The image the volume was made from (empty for other volumes).
    pub image_metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct CreateVolume {
    pub name: String,
    pub description: String,
    pub size_gib: u64,
    pub volume_type: Option<String>,
    pub snapshot_id: Option<String>,
    /// Clone this volume's bytes into the new one.
    pub source_volid: Option<String>,
    pub tags: Vec<Tag>,
    pub max_iops: Option<u32>,
    pub max_throughput: Option<u32>,
    /// Fill the new volume from this image (already looked up).
    pub image: Option<ImageSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limits: QuotaLimits,
    pub usage: Usage,
}

/// What a job needs to run again after a crash; stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum JobParams {
    Create {
        size_gib: u64,
        provisioning: Provisioning,
        /// Fill the new volume from this snapshot, verifying its manifest.
        #[serde(default)]
        from_snapshot: Option<String>,
        /// Fill the new volume with a copy of this volume.
        #[serde(default)]
        from_volume: Option<String>,
        /// Fill the new volume from this image (the record looked up at
        /// create time; the caller's token is kept in memory only).
        #[serde(default)]
        from_image: Option<Box<crate::images::Image>>,
    },
    Extend {
        from_gib: u64,
        to_gib: u64,
        provisioning: Provisioning,
        /// The state the volume returns to.
        back_to: String,
    },
    Delete,
    /// Delete the volume's snapshots, then the volume.
    DeleteWithSnapshots,
    Update,
    Snapshot {
        snapshot_id: String,
    },
    DeleteSnapshot {
        snapshot_id: String,
    },
    Revert {
        snapshot_id: String,
    },
    Attach {
        server_id: String,
        /// Export kind asked for; None: the volume type's, else the default.
        #[serde(default)]
        export_kind: Option<String>,
        #[serde(default)]
        read_only: bool,
    },
    Detach {
        server_id: String,
    },
    /// Offer, accept or cancel of a transfer; finished when recorded.
    Transfer {
        transfer_id: String,
    },
    /// Upload the volume's content to a Glance image made for it.
    UploadImage {
        image_id: String,
        disk_format: String,
        /// The state the volume returns to.
        back_to: String,
    },
}

pub struct Service {
    store: Arc<Store>,
    backends: HashMap<String, Arc<dyn VolumeBackend>>,
    exporter: Arc<dyn Exporter>,
    /// The data dir: exports backed by files under it are ours.
    data_dir: std::path::PathBuf,
    types: Vec<VolumeType>,
    default_type: String,
    quota: RwLock<QuotaConfig>,
    clock: SharedClock,
    tasks: TaskTracker,
    job_delay: std::time::Duration,
    /// Snapshot copies in flight, by snapshot id: cancel and progress.
    copies: std::sync::Mutex<HashMap<String, (crate::copy::CancelToken, crate::copy::Progress)>>,
    copy_options: crate::copy::CopyOptions,
    /// Set when shutdown stops copies: their jobs stay unfinished.
    stopping: std::sync::atomic::AtomicBool,
    /// Glance, the image cache and qemu-img.
    images: images::Images,
    /// Export kind when neither the attach nor the volume type names one.
    default_export_kind: String,
}

/// How an attach exports the volume (a blockd extension of both dialects).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// `loop` or `vhost-user-blk`; None: the volume type's, else the default.
    pub export_kind: Option<String>,
    /// The guest sees the volume read-only.
    pub read_only: bool,
}

/// Volume type ids derived from names stay the same across restarts.
const TYPE_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c1b_7e0a_2d4f_4b8e_9a61_0c3d_b10c_d000);

/// Deletion is allowed from these states only.
const DELETABLE: &[VolumeState] = &[
    VolumeState::Available,
    VolumeState::Error,
    VolumeState::ErrorExtending,
    VolumeState::ErrorDeleting,
    VolumeState::ErrorRestoring,
];

/// Extending is allowed from these states; an in-use volume grows live.
const EXTENDABLE: &[VolumeState] = &[VolumeState::Available, VolumeState::InUse];

/// Metadata (name, QoS) may change in any state but these.
const UPDATABLE: &[VolumeState] = &[
    VolumeState::Creating,
    VolumeState::Available,
    VolumeState::Reserved,
    VolumeState::Attaching,
    VolumeState::Detaching,
    VolumeState::InUse,
    VolumeState::Extending,
    VolumeState::Restoring,
    VolumeState::AwaitingTransfer,
    VolumeState::Error,
    VolumeState::ErrorExtending,
    VolumeState::ErrorDeleting,
    VolumeState::ErrorRestoring,
];

impl Service {
    pub fn new(
        cfg: &Config,
        store: Arc<Store>,
        backends: HashMap<String, Arc<dyn VolumeBackend>>,
        exporter: Arc<dyn Exporter>,
        clock: SharedClock,
    ) -> Service {
        let types = cfg
            .volume_types
            .iter()
            .map(|t| VolumeType {
                id: t.id.clone().unwrap_or_else(|| {
                    uuid::Uuid::new_v5(&TYPE_NAMESPACE, t.name.as_bytes()).to_string()
                }),
                name: t.name.clone(),
                description: t.description.clone(),
                provisioning: t.provisioning,
                multiattach: t.multiattach,
                reflink: t.reflink,
                backend: t.backend.clone(),
                export: t.export.clone(),
            })
            .collect();
        Service {
            store,
            backends,
            exporter,
            data_dir: cfg.data_dir(),
            types,
            default_type: cfg.default_volume_type.clone(),
            quota: RwLock::new(cfg.quota.clone()),
            clock,
            tasks: TaskTracker::new(),
            job_delay: std::time::Duration::from_millis(cfg.jobs.debug_delay_ms),
            copies: std::sync::Mutex::new(HashMap::new()),
            copy_options: crate::copy::CopyOptions::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            images: images::Images::new(cfg),
            default_export_kind: cfg.export.default_kind.clone(),
        }
        .with_stored_quota_limits()
    }

    /// New jobs are refused once shutdown has begun.
    fn accepting(&self) -> Result<()> {
        if self.tasks.is_closed() {
            return Err(ServiceError::Unavailable);
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    fn now(&self) -> String {
        format_ts(self.clock.now())
    }

    fn backend(&self, name: &str) -> Result<Arc<dyn VolumeBackend>> {
        self.backends.get(name).cloned().ok_or_else(|| {
            ServiceError::Conflict(format!("backend {name:?} is not configured on this node"))
        })
    }

    pub fn volume_types(&self) -> &[VolumeType] {
        &self.types
    }

    pub fn default_volume_type(&self) -> &VolumeType {
        // Config validation guarantees the default exists.
        self.types
            .iter()
            .find(|t| t.name == self.default_type)
            .unwrap_or(&self.types[0])
    }

    /// Finds a type by name or id.
    pub fn volume_type(&self, name_or_id: &str) -> Option<&VolumeType> {
        self.types
            .iter()
            .find(|t| t.name == name_or_id || t.id == name_or_id)
    }

    pub fn quota_limits(&self, project: &str) -> QuotaLimits {
        self.quota
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_project(project)
    }

    /// Each backend's name and capacity, for metrics and readiness.
    pub fn backend_capacities(
        &self,
    ) -> Vec<(
        String,
        std::result::Result<crate::backend::Capacity, crate::backend::BackendError>,
    )> {
        let mut v: Vec<_> = self
            .backends
            .iter()
            .map(|(name, b)| (name.clone(), b.capacity()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The capacity behind a volume type whose backend allocates up front
    /// (an LVM volume group); None for sparse storage or when it cannot be read.
    pub fn type_capacity(&self, vt: &VolumeType) -> Option<crate::backend::Capacity> {
        let b = self.backends.get(&vt.backend)?;
        if !b.allocates_upfront(vt.provisioning) {
            return None;
        }
        b.capacity().ok()
    }

    /// Copies stay inside one backend: a new volume must be of a type on
    /// the backend that holds its source.
    fn same_backend(&self, vt: &VolumeType, source_volume: &str, field: &str) -> Result<()> {
        let src = self.store.get_volume(None, source_volume)?;
        if src.backend != vt.backend {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "the source lives on backend {}, but volume type {} is on backend {}",
                    src.backend, vt.name, vt.backend
                ),
            ));
        }
        Ok(())
    }

    /// Refuses, before anything changes, a create or grow by `gib` that a
    /// backend allocating up front has no room for.
    fn check_capacity(&self, vt: &VolumeType, gib: u64) -> Result<()> {
        let b = self.backend(&vt.backend)?;
        if !b.allocates_upfront(vt.provisioning) {
            return Ok(());
        }
        let cap = b.capacity()?;
        if gib.saturating_mul(GIB) > cap.free {
            return Err(ServiceError::NoCapacity(format!(
                "backend {} has {} GiB free of {} GiB; {gib} GiB more do not fit",
                vt.backend,
                cap.free / GIB,
                cap.total / GIB
            )));
        }
        Ok(())
    }

    /// Snapshot copies in flight: how many, bytes done and bytes total.
    pub fn copies_in_flight(&self) -> (usize, u64, u64) {
        let m = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        m.values().fold((0, 0, 0), |(n, d, t), (_, p)| {
            (n + 1, d + p.bytes_done(), t + p.bytes_total())
        })
    }

    /// Whether new jobs are still accepted (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        !self.tasks.is_closed()
    }

    /// Replaces the quota limits (live reload).
    pub fn set_quota(&self, q: QuotaConfig) {
        *self.quota.write().unwrap_or_else(|p| p.into_inner()) = q;
    }

    pub fn quota(&self, caller: &Caller) -> Result<Quota> {
        Ok(Quota {
            limits: self.quota_limits(&caller.project_id),
            usage: self.store.usage(&caller.project_id)?,
        })
    }

    fn new_job(
        &self,
        kind: JobKind,
        caller: &Caller,
        volume_id: &str,
        params: &JobParams,
        state: JobState,
    ) -> Job {
        let now = self.now();
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            volume_id: Some(volume_id.to_string()),
            project_id: caller.project_id.clone(),
            state,
            params: serde_json::to_string(params).unwrap_or_else(|_| "{}".into()),
            error: None,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    fn detail(&self, volume: Volume) -> Result<VolumeDetail> {
        let attachments = self.store.attachments(&volume.id)?;
        let image_metadata = self.store.image_metadata(&volume.id)?.into_iter().collect();
        Ok(VolumeDetail {
            volume,
            attachments,
            image_metadata,
        })
    }

    pub fn create_volume(
        self: &Arc<Self>,
        caller: &Caller,
        req: CreateVolume,
    ) -> Result<VolumeDetail> {
        self.accepting()?;
        let vt = match &req.volume_type {
            None => self.default_volume_type().clone(),
            Some(t) => self
                .volume_type(t)
                .cloned()
                .ok_or_else(|| ServiceError::NotFound {
                    what: "volume type",
                    id: t.clone(),
                })?,
        };
        if req.size_gib == 0 {
            return Err(ServiceError::invalid("size", "must be at least 1"));
        }
        let limits = self.quota_limits(&caller.project_id);
        if req.size_gib > limits.per_volume_gigabytes {
            return Err(ServiceError::QuotaExceeded {
                resource: "per_volume_gigabytes",
                limit: limits.per_volume_gigabytes,
                in_use: 0,
                requested: req.size_gib,
            });
        }
        if let Some(sid) = &req.snapshot_id {
            let snap = self
                .store
                .get_snapshot(Some(&caller.project_id), sid)
                .map_err(|e| match e {
                    StoreError::NotFound => ServiceError::NotFound {
                        what: "snapshot",
                        id: sid.clone(),
                    },
                    e => e.into(),
                })?;
            if snap.status != SnapshotStatus::Available {
                return Err(ServiceError::invalid(
                    "snapshot_id",
                    format!("snapshot {sid} is {}, not available", snap.status),
                ));
            }
            if req.size_gib < snap.size_gib {
                return Err(ServiceError::invalid(
                    "size",
                    format!(
                        "{} GiB is smaller than snapshot {sid} ({} GiB)",
                        req.size_gib, snap.size_gib
                    ),
                ));
            }
        }
        if let Some(src) = &req.source_volid {
            self.check_clone_source(caller, src, req.size_gib)?;
            self.same_backend(&vt, src, "source_volid")?;
        }
        if let Some(img) = &req.image {
            self.check_image_fits(&img.image, req.size_gib)?;
        }
        let b = self.backend(&vt.backend)?;
        if req.image.is_some() && b.in_place() {
            return Err(ServiceError::invalid(
                "image",
                format!(
                    "volume type {} keeps its volumes on backend {}, which cannot be filled \
                     from an image yet; use a file-backed type",
                    vt.name, vt.backend
                ),
            ));
        }
        if let Some(sid) = &req.snapshot_id
            && let Ok(snap) = self.store.get_snapshot(None, sid)
        {
            self.same_backend(&vt, &snap.volume_id, "snapshot_id")?;
        }
        self.check_capacity(&vt, req.size_gib)?;
        let now = self.now();
        let volume = Volume {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: caller.project_id.clone(),
            user_id: caller.user_id.clone(),
            name: req.name,
            description: req.description,
            size_gib: req.size_gib,
            volume_type_id: vt.id.clone(),
            volume_type: vt.name.clone(),
            state: VolumeState::Creating,
            bootable: false,
            encrypted: false,
            multiattach: vt.multiattach,
            snapshot_id: req.snapshot_id,
            source_volid: req.source_volid,
            max_iops: req.max_iops,
            max_throughput: req.max_throughput,
            backend: vt.backend.clone(),
            error_reason: None,
            created_at: now.clone(),
            modified_at: now,
        };
        let params = JobParams::Create {
            size_gib: volume.size_gib,
            provisioning: vt.provisioning,
            from_snapshot: volume.snapshot_id.clone(),
            from_volume: volume.source_volid.clone(),
            from_image: req.image.as_ref().map(|i| Box::new(i.image.clone())),
        };
        let job = self.new_job(
            JobKind::CreateVolume,
            caller,
            &volume.id,
            &params,
            JobState::Pending,
        );
        self.store.create_volume(
            &volume,
            &req.tags,
            &job,
            &QuotaCheck {
                volumes_limit: limits.volumes,
                gigabytes_limit: limits.gigabytes,
                add_volumes: 1,
                add_gigabytes: volume.size_gib,
            },
        )?;
        if let Some(img) = &req.image {
            self.keep_image_token(&volume.id, img.token.clone());
        }
        tracing::info!(volume = %volume.id, job = %job.id, size_gib = volume.size_gib, "volume create accepted");
        self.spawn_job(job);
        self.detail(volume)
    }

    pub fn get_volume(&self, caller: &Caller, id: &str) -> Result<VolumeDetail> {
        let (volume, attachments, image_metadata) = self
            .store
            .volume_detail(caller.scope(), id)
            .map_err(not_found(id))?;
        Ok(VolumeDetail {
            volume,
            attachments,
            image_metadata: image_metadata.into_iter().collect(),
        })
    }

    pub fn list_volumes(&self, caller: &Caller, mut q: VolumeQuery) -> Result<Page<VolumeDetail>> {
        if !caller.admin || q.project_id.is_none() {
            q.project_id = caller.scope().map(String::from);
        }
        let page = self.store.list_volumes(&q)?;
        // One query for the page's attachments rather than one per volume.
        let ids: Vec<&str> = page.items.iter().map(|v| v.id.as_str()).collect();
        let mut by_volume: HashMap<String, Vec<Attachment>> = HashMap::new();
        for a in self.store.attachments_of(&ids)? {
            by_volume.entry(a.volume_id.clone()).or_default().push(a);
        }
        let mut images = self.store.image_metadata_of(&ids)?;
        let items = page
            .items
            .into_iter()
            .map(|volume| VolumeDetail {
                attachments: by_volume.remove(&volume.id).unwrap_or_default(),
                image_metadata: images.remove(&volume.id).unwrap_or_default(),
                volume,
            })
            .collect();
        Ok(Page {
            items,
            count: page.count,
        })
    }

    pub fn update_volume(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<VolumeDetail> {
        let patch = VolumePatch {
            name,
            description,
            ..Default::default()
        };
        self.patch(caller, id, JobKind::UpdateVolume, &patch)
    }

    /// Stores QoS limits; None keeps a limit as it is.
    pub fn set_qos(
        &self,
        caller: &Caller,
        id: &str,
        max_iops: Option<u32>,
        max_throughput: Option<u32>,
    ) -> Result<VolumeDetail> {
        let patch = VolumePatch {
            max_iops,
            max_throughput,
            ..Default::default()
        };
        let d = self.patch(caller, id, JobKind::SetQos, &patch)?;
        // Limits change live on an attached volume.
        if let Some(x) = self.store.export(id)? {
            self.apply_qos(&d.volume, &x.host_path);
        }
        Ok(d)
    }

    fn patch(
        &self,
        caller: &Caller,
        id: &str,
        kind: JobKind,
        patch: &VolumePatch,
    ) -> Result<VolumeDetail> {
        let job = self.new_job(kind, caller, id, &JobParams::Update, JobState::Succeeded);
        let now = self.now();
        let v = self
            .store
            .update_volume(caller.scope(), id, UPDATABLE, patch, &job, &now)
            .map_err(not_found(id))
            .map_err(|e| conflict(e, "update"))?;
        self.detail(v)
    }

    pub fn extend_volume(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        new_size_gib: u64,
    ) -> Result<VolumeDetail> {
        self.accepting()?;
        let current = self
            .store
            .get_volume(caller.scope(), id)
            .map_err(not_found(id))?;
        if !EXTENDABLE.contains(&current.state) {
            return Err(ServiceError::Conflict(format!(
                "volume {id} is {}; it can be extended only when available or in use",
                current.state
            )));
        }
        if self.copying_snapshot(id)? {
            return Err(ServiceError::Conflict(format!(
                "volume {id} has a snapshot being copied; extend it afterwards"
            )));
        }
        if new_size_gib <= current.size_gib {
            return Err(ServiceError::invalid(
                "size",
                format!(
                    "new size {new_size_gib} GiB must be larger than the current {} GiB; volumes only grow",
                    current.size_gib
                ),
            ));
        }
        let limits = self.quota_limits(&current.project_id);
        if new_size_gib > limits.per_volume_gigabytes {
            return Err(ServiceError::QuotaExceeded {
                resource: "per_volume_gigabytes",
                limit: limits.per_volume_gigabytes,
                in_use: current.size_gib,
                requested: new_size_gib,
            });
        }
        let vt = self.volume_type(&current.volume_type_id).cloned();
        if let Some(t) = &vt {
            self.check_capacity(t, new_size_gib - current.size_gib)?;
        }
        let params = JobParams::Extend {
            from_gib: current.size_gib,
            to_gib: new_size_gib,
            provisioning: vt.map(|t| t.provisioning).unwrap_or(Provisioning::Sparse),
            back_to: current.state.as_str().to_string(),
        };
        let job = self.new_job(
            JobKind::ExtendVolume,
            caller,
            id,
            &params,
            JobState::Pending,
        );
        let now = self.now();
        let quota = QuotaCheck {
            volumes_limit: limits.volumes,
            gigabytes_limit: limits.gigabytes,
            add_volumes: 0,
            add_gigabytes: new_size_gib - current.size_gib,
        };
        self.store
            .transition(
                caller.scope(),
                id,
                &Transition {
                    allowed: EXTENDABLE,
                    to: VolumeState::Extending,
                    job: &job,
                    quota: Some(&quota),
                    now: &now,
                },
            )
            .map_err(not_found(id))
            .map_err(|e| conflict(e, "extend"))?;
        tracing::info!(volume = %id, job = %job.id, to_gib = new_size_gib, "volume extend accepted");
        self.spawn_job(job);
        self.get_volume(caller, id)
    }

    pub fn delete_volume(self: &Arc<Self>, caller: &Caller, id: &str, cascade: bool) -> Result<()> {
        self.accepting()?;
        let v = self
            .store
            .get_volume(caller.scope(), id)
            .map_err(not_found(id))?;
        if !DELETABLE.contains(&v.state) {
            return Err(ServiceError::Conflict(format!(
                "volume {id} is {}; it can be deleted only when available or in an error state",
                v.state
            )));
        }
        if !self.store.attachments(id)?.is_empty() {
            return Err(ServiceError::Conflict(format!("volume {id} is attached")));
        }
        let snaps = self.store.snapshots_of(id)?;
        if !snaps.is_empty() && !cascade {
            return Err(ServiceError::Conflict(format!(
                "volume {id} has {} snapshot(s); delete them first or pass cascade=true",
                snaps.len()
            )));
        }
        if let Some(busy) = snaps.iter().find(|s| {
            matches!(
                s.status,
                SnapshotStatus::Creating | SnapshotStatus::Deleting
            )
        }) {
            return Err(ServiceError::Conflict(format!(
                "snapshot {} of volume {id} is {}; retry when it settles",
                busy.id, busy.status
            )));
        }
        let params = if snaps.is_empty() {
            JobParams::Delete
        } else {
            JobParams::DeleteWithSnapshots
        };
        let job = self.new_job(
            JobKind::DeleteVolume,
            caller,
            id,
            &params,
            JobState::Pending,
        );
        let now = self.now();
        self.store
            .transition(
                caller.scope(),
                id,
                &Transition {
                    allowed: DELETABLE,
                    to: VolumeState::Deleting,
                    job: &job,
                    quota: None,
                    now: &now,
                },
            )
            .map_err(not_found(id))
            .map_err(|e| conflict(e, "delete"))?;
        tracing::info!(volume = %id, job = %job.id, "volume delete accepted");
        self.spawn_job(job);
        Ok(())
    }

    /// Attaches a volume to a server: allocates the server's next device
    /// name now, and exports the volume in a job (attaching -> in-use).
    pub fn attach_volume(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        server_id: &str,
        delete_on_termination: bool,
    ) -> Result<Attachment> {
        self.attach_volume_with(
            caller,
            id,
            server_id,
            delete_on_termination,
            &AttachOptions::default(),
        )
    }

    /// The export kind an attach of this volume would use.
    pub fn export_kind_for(&self, v: &Volume, asked: Option<&str>) -> String {
        asked
            .map(String::from)
            .or_else(|| {
                self.volume_type(&v.volume_type_id)
                    .and_then(|t| t.export.clone())
            })
            .unwrap_or_else(|| self.default_export_kind.clone())
    }

    /// Attaches with a chosen export kind and read-only mode.
    pub fn attach_volume_with(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        server_id: &str,
        delete_on_termination: bool,
        opts: &AttachOptions,
    ) -> Result<Attachment> {
        self.accepting()?;
        if let Some(k) = &opts.export_kind
            && !self.exporter.has_kind(k)
        {
            return Err(ServiceError::invalid(
                "export_kind",
                format!("{k:?} is not an export kind of this node (loop, vhost-user-blk)"),
            ));
        }
        let params = JobParams::Attach {
            server_id: server_id.to_string(),
            export_kind: opts.export_kind.clone(),
            read_only: opts.read_only,
        };
        let job = self.new_job(
            JobKind::AttachVolume,
            caller,
            id,
            &params,
            JobState::Pending,
        );
        let now = self.now();
        let att = self
            .store
            .begin_attach(
                caller.scope(),
                &NewAttachment {
                    volume_id: id,
                    server_id,
                    delete_on_termination,
                    job: &job,
                    now: &now,
                },
            )
            .map_err(not_found(id))
            .map_err(|e| conflict(e, "attach"))?;
        tracing::info!(volume = %id, server = %server_id, device = %att.device, job = %job.id, "attach accepted");
        self.spawn_job(job);
        Ok(att)
    }

    /// Detaches a volume from a server (detaching -> available, or in-use
    /// while other attachments remain).
    pub fn detach_volume(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        server_id: &str,
    ) -> Result<()> {
        self.accepting()?;
        let params = JobParams::Detach {
            server_id: server_id.to_string(),
        };
        let job = self.new_job(
            JobKind::DetachVolume,
            caller,
            id,
            &params,
            JobState::Pending,
        );
        let now = self.now();
        self.store
            .begin_detach(caller.scope(), id, server_id, &job, &now)
            .map_err(|e| match e {
                StoreError::NotFound => ServiceError::NotFound {
                    what: "attachment",
                    id: format!("{id} on server {server_id}"),
                },
                e => e.into(),
            })
            .map_err(|e| conflict(e, "detach"))?;
        tracing::info!(volume = %id, server = %server_id, job = %job.id, "detach accepted");
        self.spawn_job(job);
        Ok(())
    }

    /// A server's attachments among the caller's volumes.
    pub fn server_attachments(&self, caller: &Caller, server_id: &str) -> Result<Vec<Attachment>> {
        Ok(self.store.server_attachments(caller.scope(), server_id)?)
    }

    pub fn attachment(
        &self,
        caller: &Caller,
        server_id: &str,
        volume_id: &str,
    ) -> Result<Attachment> {
        self.server_attachments(caller, server_id)?
            .into_iter()
            .find(|a| a.volume_id == volume_id)
            .ok_or_else(|| ServiceError::NotFound {
                what: "attachment",
                id: format!("{volume_id} on server {server_id}"),
            })
    }

    pub fn set_delete_on_termination(
        &self,
        caller: &Caller,
        server_id: &str,
        volume_id: &str,
        value: bool,
    ) -> Result<Attachment> {
        let a = self.attachment(caller, server_id, volume_id)?;
        self.store.set_delete_on_termination(&a.id, value)?;
        self.attachment(caller, server_id, volume_id)
    }

    /// The host export of an attached volume.
    pub fn export_of(&self, caller: &Caller, id: &str) -> Result<Option<crate::store::Export>> {
        self.store
            .get_volume(caller.scope(), id)
            .map_err(not_found(id))?;
        Ok(self.store.export(id)?)
    }

    /// Where the volume's bytes are, for operators and hypervisor glue.
    pub fn location(&self, caller: &Caller, id: &str) -> Result<Option<Location>> {
        let v = self
            .store
            .get_volume(caller.scope(), id)
            .map_err(not_found(id))?;
        Ok(self.backend(&v.backend)?.location(&v.id))
    }

    pub fn jobs_for_volume(&self, caller: &Caller, id: &str) -> Result<Vec<Job>> {
        // Visibility follows the volume; a deleted volume's jobs stay
        // readable to its project.
        let jobs = self.store.jobs_for_volume(id, 50)?;
        if !caller.admin && jobs.iter().any(|j| j.project_id != caller.project_id) {
            return Err(ServiceError::NotFound {
                what: "volume",
                id: id.to_string(),
            });
        }
        if jobs.is_empty() {
            self.store
                .get_volume(caller.scope(), id)
                .map_err(not_found(id))?;
        }
        Ok(jobs)
    }

    /// Stops taking new jobs and waits (bounded) for running ones.
    pub async fn drain(&self, limit: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }

    /// Drains for `limit`; then stops snapshot copies between chunks,
    /// leaving their jobs unfinished so the next start copies again, and
    /// waits up to `grace` for them. True when no job is left running.
    pub async fn shutdown(&self, limit: std::time::Duration, grace: std::time::Duration) -> bool {
        if self.drain(limit).await {
            return true;
        }
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let copies: Vec<crate::copy::CancelToken> = self
            .copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(t, _)| t.clone())
            .collect();
        if copies.is_empty() {
            return false;
        }
        tracing::info!(
            copies = copies.len(),
            "drain time is up: stopping snapshot copies"
        );
        for t in &copies {
            t.cancel();
        }
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Whether shutdown has stopped copies.
    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A state check that failed inside the store's transaction is a conflict.
fn conflict(e: ServiceError, op: &str) -> ServiceError {
    match e {
        ServiceError::Store(StoreError::WrongState(s)) => {
            ServiceError::Conflict(format!("volume is {s}; cannot {op} it now"))
        }
        e => e,
    }
}
