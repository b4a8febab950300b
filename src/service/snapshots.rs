//! Snapshots: full, independent copies of a volume made by the copy engine,
//! each with a blake3 manifest beside it. A copy is written to a temp file,
//! fsynced and renamed into place before the snapshot is committed as
//! available, so a crash leaves either no snapshot or a complete one.

use super::{Caller, JobParams, Result, Service, ServiceError, not_found, reason};
use crate::backend::{Location, VolumeBackend, manifest_path, temp_path};
use crate::copy::{self, CancelToken, CopyErrorKind, Manifest, Progress};
use crate::store::StoreError;
use crate::store::model::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct CreateSnapshot {
    pub volume_id: String,
    pub name: String,
    pub description: Option<String>,
    /// Allows snapshotting an in-use volume (it is flushed first).
    pub force: bool,
    pub metadata: Option<String>,
}

fn snapshot_not_found(id: &str) -> impl FnOnce(StoreError) -> ServiceError + '_ {
    move |e| match e {
        StoreError::NotFound => ServiceError::NotFound {
            what: "snapshot",
            id: id.to_string(),
        },
        StoreError::Conflict(m) => ServiceError::Conflict(m),
        e => e.into(),
    }
}

pub(super) fn file_of(loc: Option<Location>, what: &str) -> std::result::Result<PathBuf, String> {
    match loc {
        Some(Location::File(p)) | Some(Location::BlockDevice(p)) => Ok(p),
        None => Err(format!("{what} has no local path on this host")),
    }
}

/// After a copy into `tmp` succeeded, grows it to at least `size` bytes
/// and renames it onto `dst`; on any failure the temp file goes away.
pub(super) fn grow_and_commit(
    copied: std::result::Result<(), String>,
    tmp: &Path,
    dst: &Path,
    size: u64,
) -> std::result::Result<(), String> {
    let grown = copied.and_then(|_| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp)
            .map_err(|e| e.to_string())?;
        if f.metadata().map_err(|e| e.to_string())?.len() < size {
            f.set_len(size).map_err(|e| e.to_string())?;
        }
        crate::failpoint::crash_point("restore-before-rename");
        copy::commit_file(tmp, dst).map_err(|e| reason(&e))
    });
    if grown.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    grown
}

/// Flushes what an attached volume's guest writes through before a copy
/// reads `src`: the loop device, or for vhost-user-blk (whose guest I/O
/// goes straight to the backing store) `src` itself.
pub(super) fn flush_export(
    x: &crate::store::Export,
    src: &Path,
) -> std::result::Result<(), String> {
    if x.kind == crate::export::vhost_blk::KIND {
        flush(src)
    } else {
        flush(Path::new(&x.host_path))
    }
}

/// Flushes a file or device to stable storage.
pub(super) fn flush(path: &Path) -> std::result::Result<(), String> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("flush {}: {e}", path.display()))
}

impl Service {
    /// Refuses (409) a copy of an in-use volume whose backend cannot give
    /// a point-in-time source, before anything is made.
    pub(super) fn refuse_live_copy(&self, v: &crate::store::model::Volume) -> Result<()> {
        if v.state == VolumeState::InUse
            && let Some(why) = self.backend(&v.backend)?.live_copy_refused()
        {
            return Err(ServiceError::Busy(format!(
                "volume {} is in use: {why}",
                v.id
            )));
        }
        Ok(())
    }

    pub(super) fn copying_snapshot(&self, volume_id: &str) -> Result<bool> {
        Ok(self
            .store
            .snapshots_of(volume_id)?
            .iter()
            .any(|s| s.status == SnapshotStatus::Creating))
    }

    pub fn create_snapshot(
        self: &Arc<Self>,
        caller: &Caller,
        req: CreateSnapshot,
    ) -> Result<Snapshot> {
        self.accepting()?;
        let v = self
            .store
            .get_volume(caller.scope(), &req.volume_id)
            .map_err(not_found(&req.volume_id))?;
        self.refuse_live_copy(&v)?;
        if v.state == VolumeState::InUse && !req.force {
            return Err(ServiceError::Conflict(format!(
                "volume {} is in use; pass force=true to snapshot it",
                v.id
            )));
        }
        if self.copying_snapshot(&v.id)? {
            return Err(ServiceError::Conflict(format!(
                "volume {} already has a snapshot being copied",
                v.id
            )));
        }
        let allowed: &[VolumeState] = if req.force {
            &[VolumeState::Available, VolumeState::InUse]
        } else {
            &[VolumeState::Available]
        };
        let now = self.now();
        let snap = Snapshot {
            id: uuid::Uuid::new_v4().to_string(),
            volume_id: v.id.clone(),
            project_id: v.project_id.clone(),
            user_id: caller.user_id.clone(),
            name: req.name,
            description: req.description,
            size_gib: v.size_gib,
            status: SnapshotStatus::Creating,
            metadata: req.metadata,
            checksum: None,
            error_reason: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let params = JobParams::Snapshot {
            snapshot_id: snap.id.clone(),
        };
        let job = self.new_job(
            JobKind::CreateSnapshot,
            caller,
            &v.id,
            &params,
            JobState::Pending,
        );
        let limit = self.quota_limits(&v.project_id).snapshots;
        self.store
            .create_snapshot(&snap, allowed, limit, &job)
            .map_err(|e| match e {
                StoreError::WrongState(s) => ServiceError::Conflict(format!(
                    "volume {} is {s}; it can be snapshotted when available{}",
                    v.id,
                    if req.force { " or in use" } else { "" }
                )),
                e => e.into(),
            })?;
        tracing::info!(snapshot = %snap.id, volume = %v.id, job = %job.id, "snapshot accepted");
        self.spawn_job(job);
        Ok(snap)
    }

    pub fn get_snapshot(&self, caller: &Caller, id: &str) -> Result<Snapshot> {
        self.store
            .get_snapshot(caller.scope(), id)
            .map_err(snapshot_not_found(id))
    }

    pub fn list_snapshots(&self, caller: &Caller, mut q: SnapshotQuery) -> Result<Page<Snapshot>> {
        q.project_id = caller.scope().map(String::from);
        Ok(self.store.list_snapshots(&q)?)
    }

    pub fn update_snapshot(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<Snapshot> {
        self.store
            .update_snapshot(caller.scope(), id, name, description, &self.now())
            .map_err(snapshot_not_found(id))
    }

    pub fn set_snapshot_metadata(
        &self,
        caller: &Caller,
        id: &str,
        metadata: &str,
    ) -> Result<Snapshot> {
        self.store
            .set_snapshot_metadata(caller.scope(), id, metadata, &self.now())
            .map_err(snapshot_not_found(id))
    }

    /// Deletes a snapshot; one still being copied is cancelled.
    pub fn delete_snapshot(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<()> {
        self.accepting()?;
        let s = self.get_snapshot(caller, id)?;
        let params = JobParams::DeleteSnapshot {
            snapshot_id: id.to_string(),
        };
        let job = self.new_job(
            JobKind::DeleteSnapshot,
            caller,
            &s.volume_id,
            &params,
            JobState::Pending,
        );
        self.store
            .begin_snapshot_delete(
                caller.scope(),
                id,
                &[
                    SnapshotStatus::Available,
                    SnapshotStatus::Error,
                    SnapshotStatus::ErrorDeleting,
                    SnapshotStatus::Creating,
                ],
                &job,
                &self.now(),
            )
            .map_err(snapshot_not_found(id))?;
        if let Some(t) = self.cancel_token(id) {
            tracing::info!(snapshot = %id, "cancelling the copy of a deleted snapshot");
            t.cancel();
        }
        self.spawn_job(job);
        Ok(())
    }

    /// Restores a volume from one of its own snapshots.
    pub fn revert_volume(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        snapshot_id: &str,
    ) -> Result<()> {
        self.accepting()?;
        let s = self.get_snapshot(caller, snapshot_id)?;
        if s.volume_id != id {
            return Err(ServiceError::invalid(
                "snapshot_id",
                format!("snapshot {snapshot_id} is not a snapshot of volume {id}"),
            ));
        }
        if s.status != SnapshotStatus::Available {
            return Err(ServiceError::Conflict(format!(
                "snapshot {snapshot_id} is {}, not available",
                s.status
            )));
        }
        let params = JobParams::Revert {
            snapshot_id: snapshot_id.to_string(),
        };
        let job = self.new_job(
            JobKind::RevertVolume,
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
                &crate::store::Transition {
                    allowed: &[VolumeState::Available],
                    to: VolumeState::Restoring,
                    job: &job,
                    quota: None,
                    now: &now,
                },
            )
            .map_err(|e| match e {
                StoreError::WrongState(st) => ServiceError::Conflict(format!(
                    "volume {id} is {st}; it can be reverted only when available"
                )),
                StoreError::NotFound => ServiceError::NotFound {
                    what: "volume",
                    id: id.to_string(),
                },
                e => e.into(),
            })?;
        self.spawn_job(job);
        Ok(())
    }

    /// Re-hashes a snapshot against its manifest.
    pub fn verify_snapshot(&self, caller: &Caller, id: &str) -> Result<copy::VerifyReport> {
        let s = self.get_snapshot(caller, id)?;
        if s.status != SnapshotStatus::Available {
            return Err(ServiceError::Conflict(format!(
                "snapshot {id} is {}",
                s.status
            )));
        }
        let v = self.store.get_volume(None, &s.volume_id)?;
        let backend = self.backend(&v.backend)?;
        let data =
            file_of(backend.snapshot_location(id), "snapshot").map_err(ServiceError::Conflict)?;
        let mpath = backend
            .snapshot_manifest(id)
            .unwrap_or_else(|| manifest_path(&data));
        let m = Manifest::read_from(&mpath)
            .map_err(|e| ServiceError::Conflict(format!("manifest of snapshot {id}: {e}")))?;
        copy::verify(&data, &m).map_err(|e| ServiceError::Conflict(format!("verify: {e}")))
    }

    fn cancel_token(&self, id: &str) -> Option<CancelToken> {
        self.copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(t, _)| t.clone())
    }

    /// Bytes done and total of a snapshot copy in flight.
    pub fn snapshot_progress(&self, caller: &Caller, id: &str) -> Result<Option<(u64, u64)>> {
        self.get_snapshot(caller, id)?;
        Ok(self
            .copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(_, p)| (p.bytes_done(), p.bytes_total())))
    }

    /// Copies a volume into a new snapshot; returns the manifest checksum.
    pub(super) fn snapshot_copy(
        &self,
        snap_id: &str,
        v: &Volume,
        backend: &dyn VolumeBackend,
    ) -> std::result::Result<String, String> {
        let in_place = backend.in_place();
        if in_place {
            if v.state == VolumeState::InUse
                && let Some(why) = backend.live_copy_refused()
            {
                return Err(format!("volume {} is in use: {why}", v.id));
            }
            backend
                .prepare_snapshot(snap_id, v.size_gib * super::GIB)
                .map_err(|e| reason(&e))?;
        }
        let mut src = file_of(backend.location(&v.id), "volume")?;
        let mut live = false;
        if v.state == VolumeState::InUse {
            flush(&src)?;
            if let Ok(Some(x)) = self.store.export(&v.id) {
                flush_export(&x, &src)?;
            }
            if let Some(pit) = backend.begin_live_copy(&v.id).map_err(|e| reason(&e))? {
                src = file_of(Some(pit), "point-in-time source")?;
                live = true;
            }
        }
        let copied = self.snapshot_copy_from(snap_id, v, backend, &src, in_place);
        if live && let Err(e) = backend.end_live_copy(&v.id) {
            tracing::warn!(volume = %v.id, error = %e, "cannot drop the temporary snapshot");
        }
        copied
    }

    fn snapshot_copy_from(
        &self,
        snap_id: &str,
        v: &Volume,
        backend: &dyn VolumeBackend,
        src: &Path,
        in_place: bool,
    ) -> std::result::Result<String, String> {
        let dst = file_of(backend.snapshot_location(snap_id), "snapshot")?;
        let mpath = backend
            .snapshot_manifest(snap_id)
            .unwrap_or_else(|| manifest_path(&dst));
        // Devices are written in place; files go through a temp file.
        let tmp = if in_place {
            dst.clone()
        } else {
            temp_path(&dst)
        };
        if !in_place {
            let _ = std::fs::remove_file(&tmp);
        }
        let cancel = CancelToken::new();
        let progress = Progress::new();
        self.copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(snap_id.to_string(), (cancel.clone(), progress.clone()));
        let opts = copy::CopyOptions {
            reflink: !in_place
                && self.copy_options.reflink
                && self.volume_type(&v.volume_type).is_none_or(|t| t.reflink),
            skip_zero_blocks: in_place,
            // Buffered writes to a block device cost 3x the CPU (measured).
            direct_write: self.copy_options.direct_write || in_place,
            ..self.copy_options.clone()
        };
        let result = copy::copy(src, &tmp, &opts, &progress, &cancel);
        if result.is_err() && !in_place {
            let _ = std::fs::remove_file(&tmp);
        }
        // Leaving the map tells a waiting delete that the copy has stopped.
        self.copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(snap_id);
        let report = result.map_err(|e| match e.kind() {
            CopyErrorKind::Cancelled => "cancelled".to_string(),
            _ => reason(&e),
        })?;
        let manifest = report
            .manifest
            .ok_or_else(|| "the copy produced no manifest".to_string())?;
        let done = manifest
            .write_to(&mpath)
            .inspect(|_| crate::failpoint::crash_point("snapshot-before-rename"))
            .and_then(|_| {
                if in_place {
                    Ok(())
                } else {
                    copy::commit_file(&tmp, &dst)
                }
            });
        if let Err(e) = done {
            if !in_place {
                let _ = std::fs::remove_file(&tmp);
            }
            let _ = std::fs::remove_file(&mpath);
            return Err(reason(&e));
        }
        tracing::info!(
            snapshot = %snap_id,
            bytes = report.bytes_copied,
            engine = ?report.engine,
            reflinked = report.reflinked,
            "snapshot copied"
        );
        Ok(manifest.checksum_hex())
    }

    /// Fills `dst_volume` from a snapshot, verifying every chunk, then
    /// grows it to `size` bytes. The copy lands in a temp file first.
    pub(super) fn restore_copy(
        &self,
        snapshot_id: &str,
        dst_volume: &str,
        size: u64,
        backend: &dyn VolumeBackend,
    ) -> std::result::Result<(), String> {
        let src = file_of(backend.snapshot_location(snapshot_id), "snapshot")?;
        let mpath = backend
            .snapshot_manifest(snapshot_id)
            .unwrap_or_else(|| manifest_path(&src));
        let m = Manifest::read_from(&mpath).map_err(|e| reason(&e))?;
        let in_place = backend.in_place();
        if in_place {
            // Cleared by discard, so the copy writes only chunks with data.
            backend.clear(dst_volume).map_err(|e| reason(&e))?;
        }
        let dst = file_of(backend.location(dst_volume), "volume")?;
        let tmp = if in_place {
            dst.clone()
        } else {
            temp_path(&dst)
        };
        if !in_place {
            let _ = std::fs::remove_file(&tmp);
        }
        let r = copy::copy_verified(
            &src,
            &tmp,
            &crate::copy::CopyOptions {
                manifest: false,
                reflink: self.copy_options.reflink && !in_place,
                skip_zero_blocks: in_place,
                // Buffered writes to a block device cost 3x the CPU (measured).
                direct_write: self.copy_options.direct_write || in_place,
                ..self.copy_options.clone()
            },
            &m,
            &Progress::new(),
            &CancelToken::new(),
        );
        if in_place {
            return r.map(|_| ()).map_err(|e| reason(&e));
        }
        grow_and_commit(r.map(|_| ()).map_err(|e| reason(&e)), &tmp, &dst, size)
    }

    /// Runs a snapshot job to its end and records it.
    pub(super) async fn run_snapshot_job(self: Arc<Self>, job: Job, params: JobParams) {
        let (JobParams::Snapshot { snapshot_id } | JobParams::DeleteSnapshot { snapshot_id }) =
            &params
        else {
            return;
        };
        let sid = snapshot_id.clone();
        let svc = Arc::clone(&self);
        let p = params.clone();
        let volume_id = job.volume_id.clone().unwrap_or_default();
        let out =
            tokio::task::spawn_blocking(move || -> std::result::Result<Option<String>, String> {
                let v = svc
                    .store
                    .get_volume(None, &volume_id)
                    .map_err(|e| format!("volume {volume_id}: {e}"))?;
                let backend = svc.backend(&v.backend).map_err(|e| e.to_string())?;
                match p {
                    JobParams::Snapshot { snapshot_id } => svc
                        .snapshot_copy(&snapshot_id, &v, backend.as_ref())
                        .map(Some),
                    JobParams::DeleteSnapshot { snapshot_id } => {
                        svc.stop_copy(&snapshot_id);
                        backend
                            .delete_snapshot(&snapshot_id)
                            .map(|_| None)
                            .map_err(|e| reason(&e))
                    }
                    _ => Ok(None),
                }
            })
            .await
            .unwrap_or_else(|e| Err(format!("job task failed: {e}")));
        let deleting = matches!(params, JobParams::DeleteSnapshot { .. });
        if !deleting && self.stopping() && matches!(&out, Err(e) if e == "cancelled") {
            tracing::info!(job = %job.id, snapshot = %sid, "copy stopped for shutdown; it runs again at the next start");
            return;
        }
        let now = self.now();
        // A snapshot deleted while it was copied ends with its row gone.
        let still_wanted = !deleting
            && self
                .store
                .get_snapshot(None, &sid)
                .map(|s| s.status == SnapshotStatus::Creating)
                .unwrap_or(false);
        let (job_state, error, status, checksum) = match (&out, deleting) {
            (Ok(_), true) => (JobState::Succeeded, None, None, None),
            (Err(e), true) => (
                JobState::Failed,
                Some(e.clone()),
                Some(SnapshotStatus::ErrorDeleting),
                None,
            ),
            (Ok(sum), false) if still_wanted => (
                JobState::Succeeded,
                None,
                Some(SnapshotStatus::Available),
                sum.clone(),
            ),
            (Err(e), false) if still_wanted => (
                JobState::Failed,
                Some(e.clone()),
                Some(SnapshotStatus::Error),
                None,
            ),
            (_, false) => (
                JobState::Failed,
                Some("snapshot was deleted during the copy".to_string()),
                None,
                None,
            ),
        };
        if status.is_none()
            && !deleting
            && let Ok(v) = self
                .store
                .get_volume(None, job.volume_id.as_deref().unwrap_or(""))
            && let Ok(b) = self.backend(&v.backend)
        {
            let _ = b.delete_snapshot(&sid);
        }
        crate::failpoint::crash_point("snapshot-before-commit");
        let r = self
            .record(&job.id, || {
                self.store
                    .finish_snapshot_job(&crate::store::SnapshotJobEnd {
                        job_id: &job.id,
                        job_state,
                        error: error.as_deref(),
                        snapshot_id: &sid,
                        status,
                        checksum: checksum.as_deref(),
                        now: &now,
                    })
            })
            .await;
        match (r, &error) {
            (Err(e), _) => {
                tracing::error!(job = %job.id, error = %e, "cannot record snapshot job end")
            }
            (Ok(()), Some(e)) => {
                tracing::warn!(job = %job.id, snapshot = %sid, error = %e, "snapshot job failed")
            }
            (Ok(()), None) => {
                tracing::info!(job = %job.id, snapshot = %sid, "snapshot job succeeded")
            }
        }
    }

    /// Cancels a running copy into `snapshot_id` and waits (bounded) until
    /// it has stopped and removed its temp file.
    fn stop_copy(&self, snapshot_id: &str) {
        let Some(t) = self.cancel_token(snapshot_id) else {
            return;
        };
        t.cancel();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.cancel_token(snapshot_id).is_some() {
            if std::time::Instant::now() > deadline {
                tracing::warn!(snapshot = %snapshot_id, "copy did not stop within 60 s of its cancel");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Start-up: snapshots left creating or deleting with no job go to an
    /// error state, and temp files of copies that never finished go away.
    pub(super) fn recover_snapshots(&self, busy_snapshots: &std::collections::HashSet<String>) {
        let now = self.now();
        for (from, to) in [
            (SnapshotStatus::Creating, SnapshotStatus::Error),
            (SnapshotStatus::Deleting, SnapshotStatus::ErrorDeleting),
        ] {
            for s in self.store.snapshots_in_status(from).unwrap_or_default() {
                if busy_snapshots.contains(&s.id) {
                    continue;
                }
                let why = format!("interrupted while {from} and no job was left to finish it");
                tracing::warn!(snapshot = %s.id, "recovery: {why}");
                let _ = self
                    .store
                    .set_snapshot_status(&s.id, to, None, Some(&why), &now);
            }
        }
    }
}
