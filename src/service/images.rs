//! Volumes from Glance images and images from volumes. A create looks the
//! image up while the request waits (so not found, not visible, wrong
//! format or too large answer at once); its job downloads the data to a
//! temp file in the data dir, verifies the checksum, checks the real format
//! with qemu-img, writes the raw form into the volume (qemu-img for qcow2,
//! vmdk, vhd, vdi; the copy engine for raw) and records the image's
//! properties, marking the volume bootable. With the cache on, the raw
//! form and its blake3 manifest are kept, and the next volume from the
//! same image is copied from there, verified chunk by chunk. The caller's
//! token is kept in memory only, for its job.

use super::snapshots::{file_of, flush_export, grow_and_commit};
use super::{
    Caller, GIB, JobParams, Result, Service, ServiceError, UPDATABLE, VolumeDetail, not_found,
    reason,
};
use crate::backend::{VolumeBackend, temp_path};
use crate::config::Config;
use crate::copy::{self, CancelToken, CopyOptions, Progress};
use crate::images::glance::NewImage;
use crate::images::{DISK_FORMATS, Glance, Image, ImageCache, ImageError, ImageErrorKind, qemu};
use crate::store::model::*;
use crate::store::{ImageMetaChange, StoreError, Transition};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An image to fill a new volume from, with the token to fetch it.
#[derive(Debug, Clone)]
pub struct ImageSource {
    pub image: Image,
    pub token: Option<String>,
}

/// `os-volume_upload_image`'s request.
#[derive(Debug, Clone, Default)]
pub struct UploadImage {
    pub image_name: String,
    pub disk_format: String,
    pub container_format: String,
    pub visibility: Option<String>,
    pub protected: Option<bool>,
    /// Upload an in-use volume too.
    pub force: bool,
}

/// Glance, the cache, qemu-img and the temp dir, built from the config.
pub(super) struct Images {
    glance: Option<Glance>,
    cache: Option<Arc<ImageCache>>,
    tmp_dir: PathBuf,
    qemu_img: String,
    /// Tokens of callers whose jobs still have to talk to Glance, by volume.
    tokens: Mutex<HashMap<String, String>>,
    /// Images whose cache entry is being built in the background.
    filling: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Removes a file when dropped, unless disarmed.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn new(p: PathBuf) -> TempFile {
        let _ = std::fs::remove_file(&p);
        TempFile(Some(p))
    }
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Images {
    pub(super) fn new(cfg: &Config) -> Images {
        let ic = &cfg.images;
        let data_dir = cfg.data_dir();
        let glance = if ic.glance_url.is_empty() {
            None
        } else {
            match Glance::new(
                &ic.glance_url,
                std::time::Duration::from_secs(ic.timeout_secs),
            ) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::error!(error = %e, "images: cannot set up the Glance client");
                    None
                }
            }
        };
        let tmp_dir = data_dir.join("image-tmp");
        if glance.is_some() {
            use std::os::unix::fs::DirBuilderExt;
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&tmp_dir);
            if let Err(e) = made {
                tracing::error!(dir = %tmp_dir.display(), error = %e, "images: cannot create the temp dir");
            }
            // Temp files are per job; whatever is here a crash left behind.
            if let Ok(rd) = std::fs::read_dir(&tmp_dir) {
                for e in rd.flatten() {
                    tracing::info!(path = %e.path().display(), "images: removing a leftover temp file");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let cache = if glance.is_some() && ic.cache_size_gib > 0 {
            let dir = ic
                .cache_dir
                .clone()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| data_dir.join("image-cache"));
            match ImageCache::open(&dir, ic.cache_size_gib * GIB) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "images: cache unavailable; every create downloads");
                    None
                }
            }
        } else {
            None
        };
        Images {
            glance,
            cache,
            tmp_dir,
            qemu_img: ic.qemu_img.clone(),
            tokens: Mutex::new(HashMap::new()),
            filling: Arc::new(Mutex::new(std::collections::HashSet::new())),
        }
    }

    fn glance(&self) -> Result<&Glance> {
        self.glance.as_ref().ok_or_else(|| {
            ServiceError::ImageService(
                "no image service is configured on this node ([images] glance_url)".into(),
            )
        })
    }
}

/// An image error as the request's caller should see it.
fn image_error(e: ImageError, image_id: &str) -> ServiceError {
    match e.kind() {
        ImageErrorKind::NotFound => ServiceError::NotFound {
            what: "image",
            id: image_id.to_string(),
        },
        ImageErrorKind::Invalid => ServiceError::invalid("imageRef", e.to_string()),
        ImageErrorKind::Unavailable => ServiceError::ImageService(e.to_string()),
        ImageErrorKind::Internal => ServiceError::ImageService(reason(&e)),
    }
}

fn ceil_gib(bytes: u64) -> u64 {
    bytes.div_ceil(GIB)
}

impl Service {
    /// Looks an image up for a new volume: it must exist, be visible to the
    /// caller, be active, and be in a format blockd can write.
    pub async fn lookup_image(
        &self,
        caller: &Caller,
        image_id: &str,
        token: Option<&str>,
    ) -> Result<Image> {
        let glance = self.images.glance()?;
        let img = glance
            .get_image(image_id, token)
            .await
            .map_err(|e| image_error(e, image_id))?;
        let owned = img.owner.as_deref() == Some(caller.project_id.as_str());
        let visible = matches!(img.visibility.as_str(), "public" | "community") || owned;
        if !visible && !caller.admin {
            return Err(ServiceError::NotFound {
                what: "image",
                id: image_id.to_string(),
            });
        }
        if img.status != "active" {
            return Err(ServiceError::invalid(
                "imageRef",
                format!("image {image_id} is {}, not active", img.status),
            ));
        }
        let fmt = img.disk_format.as_deref().unwrap_or("");
        if !DISK_FORMATS.contains(&fmt) {
            return Err(ServiceError::invalid(
                "imageRef",
                format!(
                    "image {image_id} has disk_format {fmt:?}; supported are {}",
                    DISK_FORMATS.join(", ")
                ),
            ));
        }
        let cf = img.container_format.as_deref().unwrap_or("bare");
        if cf != "bare" {
            return Err(ServiceError::invalid(
                "imageRef",
                format!("image {image_id} has container_format {cf:?}; only bare is supported"),
            ));
        }
        Ok(img)
    }

    /// The smallest volume, in GiB, that holds the image.
    pub fn image_min_gib(img: &Image) -> u64 {
        let data = ceil_gib(img.virtual_size.or(img.size).unwrap_or(0));
        data.max(img.min_disk.unwrap_or(0)).max(1)
    }

    pub(super) fn check_image_fits(&self, img: &Image, size_gib: u64) -> Result<()> {
        if let Some(min) = img.min_disk
            && size_gib < min
        {
            return Err(ServiceError::invalid(
                "size",
                format!(
                    "{size_gib} GiB is smaller than image {}'s min_disk of {min} GiB",
                    img.id
                ),
            ));
        }
        let need = img.virtual_size.or(img.size).unwrap_or(0);
        if need > size_gib.saturating_mul(GIB) {
            return Err(ServiceError::invalid(
                "size",
                format!(
                    "image {} is larger than the volume: it needs {} GiB, the volume has {size_gib} GiB",
                    img.id,
                    ceil_gib(need)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn keep_image_token(&self, volume_id: &str, token: Option<String>) {
        if let Some(t) = token {
            self.images
                .tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(volume_id.to_string(), t);
        }
    }

    fn take_image_token(&self, volume_id: &str) -> Option<String> {
        self.images
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(volume_id)
    }

    /// The image cache's directory, when the cache is on.
    pub fn image_cache_dir(&self) -> Option<PathBuf> {
        self.images.cache.as_ref().map(|c| c.dir().to_path_buf())
    }

    /// The job's part of a create from an image: fills the volume's file.
    pub(super) fn image_fill(
        &self,
        volume_id: &str,
        img: &Image,
        size: u64,
        backend: &dyn VolumeBackend,
    ) -> std::result::Result<(), String> {
        let token = self.take_image_token(volume_id);
        let dst = file_of(backend.location(volume_id), "volume")?;
        let tmp = temp_path(&dst);
        let _ = std::fs::remove_file(&tmp);
        let filled = self
            .image_into(volume_id, img, token.as_deref(), &tmp, size)
            .map_err(|e| format!("image {}: {}", img.id, reason(&e)));
        grow_and_commit(filled, &tmp, &dst, size)?;
        let entries: Vec<(String, String)> = img.volume_metadata().into_iter().collect();
        self.store
            .change_image_metadata(
                None,
                volume_id,
                &[VolumeState::Creating],
                &ImageMetaChange::Replace(entries),
                None,
                &self.now(),
            )
            .map_err(|e| reason(&e))?;
        Ok(())
    }

    /// Writes the image's raw form into `tmp`: from the cache when it has
    /// the image, else downloaded (and then cached).
    fn image_into(
        &self,
        volume_id: &str,
        img: &Image,
        token: Option<&str>,
        tmp: &Path,
        size: u64,
    ) -> std::result::Result<(), ImageError> {
        let im = &self.images;
        let fp = img.fingerprint();
        let plain = CopyOptions {
            manifest: false,
            reflink: false,
            ..self.copy_options.clone()
        };
        if let Some(cache) = &im.cache
            && let Some((raw, m)) = cache.lookup(&img.id, &fp)
        {
            match copy::copy_verified(&raw, tmp, &plain, &m, &Progress::new(), &CancelToken::new())
            {
                Ok(_) => {
                    tracing::info!(volume = %volume_id, image = %img.id, "image cache hit");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(image = %img.id, error = %e, "image cache entry failed its check; dropped, downloading");
                    cache.remove(&img.id);
                    let _ = std::fs::remove_file(tmp);
                }
            }
        }
        let glance = im
            .glance
            .as_ref()
            .ok_or_else(|| ImageError::Unavailable("no image service is configured".into()))?;
        let fmt = img.disk_format.clone().unwrap_or_default();
        let qfmt = qemu::qemu_format(&fmt)
            .ok_or_else(|| ImageError::Invalid(format!("disk_format {fmt} is not supported")))?;
        let dl = TempFile::new(im.tmp_dir.join(format!("{volume_id}.download")));
        let started = std::time::Instant::now();
        let rt = tokio::runtime::Handle::current();
        let n = rt.block_on(glance.download(img, token, dl.path()))?;
        tracing::info!(volume = %volume_id, image = %img.id, bytes = n, secs = started.elapsed().as_secs_f64(), "image downloaded and verified");
        let info = qemu::check(&im.qemu_img, dl.path(), &fmt)?;
        if info.virtual_size > size {
            return Err(ImageError::Invalid(format!(
                "its virtual size ({} bytes) is larger than the volume ({size} bytes)",
                info.virtual_size
            )));
        }
        // The raw form goes straight into the volume; the cache entry is
        // built from the download afterwards, off the create's path.
        if qfmt == "raw" {
            copy::copy(
                dl.path(),
                tmp,
                &plain,
                &Progress::new(),
                &CancelToken::new(),
            )?;
        } else {
            let f = std::fs::File::create(tmp)
                .map_err(|e| ImageError::io(format!("create {}", tmp.display()), e))?;
            f.set_len(info.virtual_size)
                .map_err(|e| ImageError::io(format!("size {}", tmp.display()), e))?;
            drop(f);
            qemu::convert_to_raw(&im.qemu_img, dl.path(), qfmt, tmp)?;
        }
        if im.cache.is_some() {
            self.fill_cache_later(img, dl, qfmt, info.virtual_size);
        }
        Ok(())
    }

    /// Builds the cache entry of `img` from its verified download on a
    /// thread of its own; the download is removed when it is done.
    fn fill_cache_later(&self, img: &Image, dl: TempFile, qfmt: &'static str, vsize: u64) {
        let Some(cache) = self.images.cache.as_ref() else {
            return;
        };
        {
            let mut f = self
                .images
                .filling
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !f.insert(img.id.clone()) {
                return; // Another create is filling it already.
            }
        }
        let id = img.id.clone();
        let fp = img.fingerprint();
        let raw = cache.temp_raw(&id, &uuid::Uuid::new_v4().to_string());
        let cache = Arc::clone(cache);
        let qemu_img = self.images.qemu_img.clone();
        let filling = Arc::clone(&self.images.filling);
        let spawned = std::thread::Builder::new()
            .name("image-cache-fill".into())
            .spawn(move || {
                let raw = TempFile::new(raw);
                let built = (|| -> std::result::Result<(), ImageError> {
                    if qfmt == "raw" {
                        std::fs::rename(dl.path(), raw.path())
                            .map_err(|e| ImageError::io("move the download into the cache", e))?;
                    } else {
                        let f = std::fs::File::create(raw.path())
                            .map_err(|e| ImageError::io("create a cache file", e))?;
                        f.set_len(vsize)
                            .map_err(|e| ImageError::io("size a cache file", e))?;
                        drop(f);
                        qemu::convert_to_raw(&qemu_img, dl.path(), qfmt, raw.path())?;
                    }
                    drop(dl);
                    let m = copy::compute_manifest(raw.path())?;
                    cache.insert(&id, &fp, raw.path(), &m)
                })();
                match built {
                    Ok(()) => {
                        raw.keep();
                        tracing::info!(image = %id, "image cache: entry ready");
                    }
                    Err(e) => {
                        tracing::warn!(image = %id, error = %reason(&e), "image cache: cannot keep the image")
                    }
                }
                filling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "image cache: cannot start the fill thread");
            self.images
                .filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&img.id);
        }
    }

    /// Starts an upload of a volume to a new Glance image; answers the
    /// image record. The volume is `uploading` until the job ends.
    pub async fn upload_to_image(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        req: UploadImage,
        token: Option<&str>,
    ) -> Result<(VolumeDetail, Image)> {
        self.accepting()?;
        let v = self
            .store
            .get_volume(caller.scope(), id)
            .map_err(not_found(id))?;
        let allowed: &[VolumeState] = if req.force {
            &[VolumeState::Available, VolumeState::InUse]
        } else {
            &[VolumeState::Available]
        };
        if !allowed.contains(&v.state) {
            return Err(ServiceError::Conflict(format!(
                "volume {id} is {}; it can be uploaded when available{}",
                v.state,
                if req.force {
                    " or in use"
                } else {
                    " (or in use with force)"
                }
            )));
        }
        self.refuse_live_copy(&v)?;
        if !matches!(req.disk_format.as_str(), "raw" | "qcow2") {
            return Err(ServiceError::invalid(
                "disk_format",
                format!("{:?} is not supported; use raw or qcow2", req.disk_format),
            ));
        }
        if req.container_format != "bare" {
            return Err(ServiceError::invalid(
                "container_format",
                format!("{:?} is not supported; use bare", req.container_format),
            ));
        }
        let glance = self.images.glance()?;
        // Custom properties of the source image travel with the volume.
        let mut properties: BTreeMap<String, String> = self
            .store
            .image_metadata(id)?
            .into_iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "image_id"
                        | "image_name"
                        | "checksum"
                        | "container_format"
                        | "disk_format"
                        | "size"
                        | "min_ram"
                        | "min_disk"
                        | "owner"
                        | "visibility"
                        | "status"
                        | "virtual_size"
                        | "os_hash_algo"
                        | "os_hash_value"
                )
            })
            .collect();
        properties.insert("blockd_source_volume".into(), id.to_string());
        let img = glance
            .create_image(
                &NewImage {
                    name: req.image_name.clone(),
                    disk_format: req.disk_format.clone(),
                    container_format: req.container_format.clone(),
                    visibility: req.visibility.clone(),
                    protected: req.protected,
                    owner: Some(caller.project_id.clone()),
                    properties,
                },
                token,
            )
            .await
            .map_err(|e| image_error(e, "(new)"))?;
        let params = JobParams::UploadImage {
            image_id: img.id.clone(),
            disk_format: req.disk_format.clone(),
            back_to: v.state.as_str().to_string(),
        };
        let job = self.new_job(JobKind::UploadImage, caller, id, &params, JobState::Pending);
        let now = self.now();
        let moved = self
            .store
            .transition(
                caller.scope(),
                id,
                &Transition {
                    allowed,
                    to: VolumeState::Uploading,
                    job: &job,
                    quota: None,
                    now: &now,
                },
            )
            .map_err(not_found(id))
            .map_err(|e| super::conflict(e, "upload"));
        if let Err(e) = moved {
            let _ = glance.delete_image(&img.id, token).await;
            return Err(e);
        }
        self.keep_image_token(id, token.map(String::from));
        tracing::info!(volume = %id, image = %img.id, job = %job.id, "upload to image accepted");
        self.spawn_job(job);
        Ok((self.get_volume(caller, id)?, img))
    }

    /// The job's part of an upload: raw as it is, or qcow2 via qemu-img.
    /// A failed upload deletes the image it was filling.
    pub(super) fn image_upload(
        &self,
        volume_id: &str,
        image_id: &str,
        disk_format: &str,
        backend: &dyn VolumeBackend,
    ) -> std::result::Result<(), String> {
        let token = self.take_image_token(volume_id);
        let glance = self
            .images
            .glance
            .as_ref()
            .ok_or("no image service is configured")?;
        let rt = tokio::runtime::Handle::current();
        let run = || -> std::result::Result<(), ImageError> {
            let src = file_of(backend.location(volume_id), "volume").map_err(ImageError::Tool)?;
            if let Ok(Some(x)) = self.store.export(volume_id) {
                flush_export(&x, &src).map_err(ImageError::Tool)?;
            }
            if disk_format == "qcow2" {
                let q = TempFile::new(
                    self.images
                        .tmp_dir
                        .join(format!("{volume_id}.upload.qcow2")),
                );
                qemu::convert_to_qcow2(&self.images.qemu_img, &src, q.path())?;
                rt.block_on(glance.upload(image_id, token.as_deref(), q.path()))
            } else {
                rt.block_on(glance.upload(image_id, token.as_deref(), &src))
            }
        };
        match run() {
            Ok(()) => {
                tracing::info!(volume = %volume_id, image = %image_id, "volume uploaded to image");
                Ok(())
            }
            Err(e) => {
                if let Err(d) = rt.block_on(glance.delete_image(image_id, token.as_deref())) {
                    tracing::warn!(image = %image_id, error = %d, "cannot delete the image of a failed upload");
                }
                Err(format!("upload to image {image_id}: {}", reason(&e)))
            }
        }
    }

    pub fn image_metadata(&self, caller: &Caller, id: &str) -> Result<BTreeMap<String, String>> {
        self.store
            .get_volume(caller.scope(), id)
            .map_err(not_found(id))?;
        Ok(self.store.image_metadata(id)?.into_iter().collect())
    }

    /// Sets or removes image metadata keys; recorded as a finished job.
    pub fn change_image_metadata(
        &self,
        caller: &Caller,
        id: &str,
        change: ImageMetaChange,
    ) -> Result<BTreeMap<String, String>> {
        let job = self.new_job(
            JobKind::UpdateVolume,
            caller,
            id,
            &JobParams::Update,
            JobState::Succeeded,
        );
        let key = match &change {
            ImageMetaChange::Delete(k) => Some(k.clone()),
            _ => None,
        };
        let rows = self
            .store
            .change_image_metadata(
                caller.scope(),
                id,
                UPDATABLE,
                &change,
                Some(&job),
                &self.now(),
            )
            .map_err(|e| match (e, &key) {
                (StoreError::NotFound, Some(k))
                    if self.store.get_volume(caller.scope(), id).is_ok() =>
                {
                    ServiceError::NotFound {
                        what: "image metadata key",
                        id: k.clone(),
                    }
                }
                (e, _) => not_found(id)(e),
            })
            .map_err(|e| super::conflict(e, "change the image metadata of"))?;
        Ok(rows.into_iter().collect())
    }
}
