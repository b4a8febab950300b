//! Running jobs: each runs on the runtime, does its backend work on a
//! blocking thread, and commits its terminal state together with the
//! volume's new state. Start-up recovery re-runs what a crash left behind;
//! every backend step is idempotent, so a re-run converges.

use super::{GIB, JobParams, Service, reason};
use crate::backend::{BackendErrorKind, VolumeBackend};
use crate::store::model::*;
use crate::store::{StoreErrorKind, VolumeEffect};
use std::sync::Arc;

/// Why a job's work failed.
pub(super) struct JobFailure {
    pub reason: String,
    /// The backend refused for lack of space and changed nothing.
    pub no_space: bool,
}

impl From<String> for JobFailure {
    fn from(reason: String) -> Self {
        JobFailure {
            reason,
            no_space: false,
        }
    }
}

impl Service {
    pub(super) fn spawn_job(self: &Arc<Self>, job: Job) {
        let svc = Arc::clone(self);
        self.tasks.spawn(async move {
            if !svc.job_delay.is_zero() {
                tokio::time::sleep(svc.job_delay).await;
            }
            svc.run_job(job).await;
        });
    }

    async fn run_job(self: Arc<Self>, job: Job) {
        let now = self.now();
        let marked = self
            .record(&job.id, || self.store.mark_job_running(&job.id, &now))
            .await;
        if let Err(e) = marked {
            tracing::error!(job = %job.id, error = %e, "cannot mark job running; recovery will retry it");
            return;
        }
        let Some(volume_id) = job.volume_id.clone() else {
            self.finish(&job, Err("job has no volume".into()), VolumeEffect::Nothing)
                .await;
            return;
        };
        let params: JobParams = match serde_json::from_str(&job.params) {
            Ok(p) => p,
            Err(e) => {
                let effect = VolumeEffect::SetState {
                    state: VolumeState::Error,
                    size_gib: None,
                    error_reason: Some(format!("job parameters unreadable: {e}")),
                };
                self.finish(&job, Err(format!("job parameters unreadable: {e}")), effect)
                    .await;
                return;
            }
        };
        if matches!(
            params,
            JobParams::Snapshot { .. } | JobParams::DeleteSnapshot { .. }
        ) {
            self.run_snapshot_job(job, params).await;
            return;
        }
        let backend_name = match self.store.get_volume(None, &volume_id) {
            Ok(v) => v.backend,
            Err(e) => {
                // The row is gone: only a delete can have finished already.
                let outcome = if job.kind == JobKind::DeleteVolume {
                    Ok(())
                } else {
                    Err(format!("volume row missing: {e}"))
                };
                self.finish(&job, outcome, VolumeEffect::Nothing).await;
                return;
            }
        };
        let backend = match self.backend(&backend_name) {
            Ok(b) => b,
            Err(e) => {
                let effect = VolumeEffect::SetState {
                    state: VolumeState::Error,
                    size_gib: None,
                    error_reason: Some(e.to_string()),
                };
                self.finish(&job, Err(e.to_string()), effect).await;
                return;
            }
        };
        let svc = Arc::clone(&self);
        let id = volume_id.clone();
        let p = params.clone();
        let work = tokio::task::spawn_blocking(move || svc.work(&id, &p, backend.as_ref())).await;
        let failure: Result<(), JobFailure> = match work {
            Ok(r) => r,
            Err(e) => Err(format!("job task failed: {e}").into()),
        };
        let no_space = matches!(&failure, Err(f) if f.no_space);
        let result: Result<(), String> = failure.map_err(|f| f.reason);
        let effect = match (&params, &result) {
            (JobParams::Create { .. }, Ok(())) => VolumeEffect::SetState {
                state: VolumeState::Available,
                size_gib: None,
                error_reason: None,
            },
            (JobParams::Create { .. }, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::Error,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (
                JobParams::Extend {
                    to_gib, back_to, ..
                },
                Ok(()),
            ) => VolumeEffect::SetState {
                state: VolumeState::parse(back_to).unwrap_or(VolumeState::Available),
                size_gib: Some(*to_gib),
                error_reason: None,
            },
            // A refusal for lack of space changed nothing: the volume goes
            // back to where it was, at its old size, with the reason.
            (JobParams::Extend { back_to, .. }, Err(e)) if no_space => VolumeEffect::SetState {
                state: VolumeState::parse(back_to).unwrap_or(VolumeState::Available),
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (JobParams::Extend { .. }, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::ErrorExtending,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (JobParams::Delete | JobParams::DeleteWithSnapshots, Ok(())) => VolumeEffect::Remove,
            (JobParams::Delete | JobParams::DeleteWithSnapshots, Err(e)) => {
                VolumeEffect::SetState {
                    state: VolumeState::ErrorDeleting,
                    size_gib: None,
                    error_reason: Some(e.clone()),
                }
            }
            (JobParams::Update | JobParams::Transfer { .. }, _) => VolumeEffect::Nothing,
            (JobParams::Snapshot { .. } | JobParams::DeleteSnapshot { .. }, _) => {
                VolumeEffect::Nothing
            }
            (JobParams::Revert { .. }, Ok(())) => VolumeEffect::SetState {
                state: VolumeState::Available,
                size_gib: None,
                error_reason: None,
            },
            (JobParams::Revert { .. }, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::ErrorRestoring,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (JobParams::Attach { .. }, Ok(())) => VolumeEffect::SetState {
                state: VolumeState::InUse,
                size_gib: None,
                error_reason: None,
            },
            (JobParams::Attach { server_id, .. }, Err(e)) => {
                self.drop_attachment(&volume_id, server_id, Some(e.clone()))
            }
            (JobParams::Detach { server_id }, Ok(())) => {
                self.drop_attachment(&volume_id, server_id, None)
            }
            (JobParams::UploadImage { back_to, .. }, Ok(())) => VolumeEffect::SetState {
                state: VolumeState::parse(back_to).unwrap_or(VolumeState::Available),
                size_gib: None,
                error_reason: None,
            },
            (JobParams::UploadImage { .. }, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::Error,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (JobParams::Detach { .. }, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::InUse,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
        };
        self.finish(&job, result, effect).await;
    }

    fn drop_attachment(
        &self,
        volume_id: &str,
        server_id: &str,
        reason: Option<String>,
    ) -> VolumeEffect {
        let found = self
            .store
            .attachments(volume_id)
            .ok()
            .and_then(|all| all.into_iter().find(|a| a.server_id == server_id));
        match found {
            Some(a) => VolumeEffect::DropAttachment {
                attachment_id: a.id,
                error_reason: reason,
            },
            None => VolumeEffect::Nothing,
        }
    }

    /// The blocking part of a job. Each step converges when run again.
    fn work(&self, id: &str, p: &JobParams, backend: &dyn VolumeBackend) -> Result<(), JobFailure> {
        let err = |e: &dyn std::error::Error| JobFailure::from(reason(e));
        match p {
            JobParams::Create {
                size_gib,
                provisioning,
                from_image: Some(img),
                ..
            } => {
                self.image_fill(id, img, size_gib * GIB, backend)?;
                backend
                    .extend(id, size_gib * GIB, *provisioning)
                    .map(|_| ())
                    .map_err(|e| err(&e))
            }
            JobParams::Create {
                size_gib,
                provisioning,
                from_snapshot: None,
                from_volume: None,
                ..
            } => backend
                .create(id, size_gib * GIB, *provisioning)
                .map(|_| ())
                .map_err(|e| err(&e)),
            JobParams::Create {
                size_gib,
                provisioning,
                from_snapshot: Some(sid),
                ..
            } => {
                if backend.in_place() {
                    backend
                        .create(id, size_gib * GIB, *provisioning)
                        .map_err(|e| err(&e))?;
                }
                self.restore_copy(sid, id, size_gib * GIB, backend)?;
                // Allocates the rest when the type is provisioned.
                backend
                    .extend(id, size_gib * GIB, *provisioning)
                    .map(|_| ())
                    .map_err(|e| err(&e))
            }
            JobParams::Create {
                size_gib,
                provisioning,
                from_snapshot: None,
                from_volume: Some(src),
                ..
            } => {
                if backend.in_place() {
                    backend
                        .create(id, size_gib * GIB, *provisioning)
                        .map_err(|e| err(&e))?;
                }
                self.clone_copy(src, id, size_gib * GIB, backend)?;
                backend
                    .extend(id, size_gib * GIB, *provisioning)
                    .map(|_| ())
                    .map_err(|e| err(&e))
            }
            JobParams::Revert { snapshot_id } => {
                let v = self.store.get_volume(None, id).map_err(|e| err(&e))?;
                Ok(self.restore_copy(snapshot_id, id, v.size_gib * GIB, backend)?)
            }
            JobParams::DeleteWithSnapshots => {
                for s in self.store.snapshots_of(id).map_err(|e| err(&e))? {
                    backend.delete_snapshot(&s.id).map_err(|e| err(&e))?;
                }
                self.store.remove_snapshots_of(id).map_err(|e| err(&e))?;
                backend.delete(id).map(|_| ()).map_err(|e| err(&e))
            }
            JobParams::Snapshot { .. } | JobParams::DeleteSnapshot { .. } => Ok(()),
            JobParams::Extend {
                to_gib,
                provisioning,
                ..
            } => {
                backend
                    .extend(id, to_gib * GIB, *provisioning)
                    .map_err(|e| JobFailure {
                        reason: reason(&e),
                        no_space: e.kind() == BackendErrorKind::NoSpace,
                    })?;
                // A live volume's readers see the new size before the job ends.
                if let Some(x) = self.store.export(id).map_err(|e| err(&e))? {
                    let seen = self
                        .exporter
                        .refresh_size(&x.host_path)
                        .map_err(|e| err(&e))?;
                    if seen < to_gib * GIB {
                        return Err(format!(
                            "{} shows {seen} bytes after resize, expected {}",
                            x.host_path,
                            to_gib * GIB
                        )
                        .into());
                    }
                }
                Ok(())
            }
            JobParams::Delete => backend.delete(id).map(|_| ()).map_err(|e| err(&e)),
            JobParams::Update | JobParams::Transfer { .. } => Ok(()),
            JobParams::UploadImage {
                image_id,
                disk_format,
                ..
            } => Ok(self.image_upload(id, image_id, disk_format, backend)?),
            JobParams::Attach {
                export_kind,
                read_only,
                ..
            } => {
                let v = self.store.get_volume(None, id).map_err(|e| err(&e))?;
                let kind = self.export_kind_for(&v, export_kind.as_deref());
                Ok(self.ensure_export(&v, backend, Some((kind, *read_only)))?)
            }
            JobParams::Detach { server_id } => {
                let others = self
                    .store
                    .attachments(id)
                    .map_err(|e| err(&e))?
                    .into_iter()
                    .filter(|a| &a.server_id != server_id)
                    .count();
                if others > 0 {
                    return Ok(());
                }
                if let Some(x) = self.store.export(id).map_err(|e| err(&e))? {
                    self.exporter.unexport(&x.host_path).map_err(|e| err(&e))?;
                    self.store.remove_export(id).map_err(|e| err(&e))?;
                    tracing::info!(volume = %id, device = %x.host_path, "export removed");
                }
                Ok(())
            }
        }
    }

    /// Exports a volume unless a live export of it exists, then applies
    /// its QoS limits. An existing export keeps its kind and mode (a second
    /// attachment shares it); otherwise `want` (kind, read-only) decides,
    /// else the volume type's kind, read-write.
    pub(super) fn ensure_export(
        &self,
        v: &Volume,
        backend: &dyn VolumeBackend,
        want: Option<(String, bool)>,
    ) -> Result<(), String> {
        let err = |e: &dyn std::error::Error| reason(e);
        let loc = backend.location(&v.id).ok_or_else(|| {
            format!(
                "backend {} cannot export volumes on this host",
                backend.name()
            )
        })?;
        let known = self.store.export(&v.id).map_err(|e| err(&e))?;
        let (kind, read_only) = match (&known, want) {
            (Some(k), _) => (k.kind.clone(), k.read_only),
            (None, Some(w)) => w,
            (None, None) => (self.export_kind_for(v, None), false),
        };
        let host_path = self
            .exporter
            .export_as(&kind, &v.id, &loc, read_only)
            .map_err(|e| err(&e))?;
        crate::failpoint::crash_point("export-before-commit");
        if known.as_ref().map(|k| k.host_path.as_str()) != Some(host_path.as_str()) {
            self.store
                .set_export(&crate::store::Export {
                    volume_id: v.id.clone(),
                    kind: kind.clone(),
                    host_path: host_path.clone(),
                    created_at: self.now(),
                    read_only,
                })
                .map_err(|e| err(&e))?;
            tracing::info!(volume = %v.id, device = %host_path, kind = %kind, read_only, "exported");
        }
        self.apply_qos(v, &host_path);
        Ok(())
    }

    /// Applies a volume's limits to its export; a host that cannot enforce
    /// them is warned about, not failed.
    pub(super) fn apply_qos(&self, v: &Volume, host_path: &str) {
        let limits = crate::export::QosLimits {
            max_iops: v.max_iops,
            max_throughput_mb: v.max_throughput,
        };
        match self.exporter.set_qos(host_path, &limits) {
            Ok(true) => {}
            Ok(false) => {
                if limits.max_iops.is_some() || limits.max_throughput_mb.is_some() {
                    tracing::warn!(volume = %v.id, "QoS limits are stored but this host cannot enforce them");
                }
            }
            Err(e) => tracing::warn!(volume = %v.id, error = %e, "cannot apply QoS limits"),
        }
    }

    /// Runs a store write that records a job's progress. While the disk
    /// is full it retries (backing off up to 2 s), so a job accepted
    /// before the disk filled still ends once space is freed, with no
    /// restart. It gives up only when shutdown stops jobs; start-up
    /// recovery finishes the job then.
    pub(super) async fn record<T>(
        &self,
        job_id: &str,
        mut write: impl FnMut() -> crate::store::Result<T>,
    ) -> crate::store::Result<T> {
        let mut pause = std::time::Duration::from_millis(50);
        let mut waited = false;
        loop {
            match write() {
                Ok(v) => {
                    if waited {
                        tracing::info!(job = %job_id, "job recorded now that the disk has space");
                    }
                    return Ok(v);
                }
                Err(e) if e.kind() == StoreErrorKind::NoSpace && !self.stopping() => {
                    if !waited {
                        tracing::warn!(job = %job_id, error = %e, "cannot record job: disk full; retrying until space is freed");
                        waited = true;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn finish(&self, job: &Job, result: Result<(), String>, effect: VolumeEffect) {
        crate::failpoint::crash_point("job-before-commit");
        let now = self.now();
        let (state, error) = match &result {
            Ok(()) => (JobState::Succeeded, None),
            Err(e) => (JobState::Failed, Some(e.as_str())),
        };
        let recorded = self
            .record(&job.id, || {
                self.store.finish_job(
                    &job.id,
                    state,
                    error,
                    job.volume_id.as_deref(),
                    &effect,
                    &now,
                )
            })
            .await;
        match recorded {
            Ok(()) => match error {
                None => tracing::info!(job = %job.id, kind = %job.kind, "job succeeded"),
                Some(e) => {
                    tracing::warn!(job = %job.id, kind = %job.kind, error = %e, "job failed")
                }
            },
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot record job end; recovery will retry it")
            }
        }
    }

    /// Finishes what a crash interrupted. Unfinished jobs run again; a
    /// volume in a transitional state with no job left goes to error.
    /// Returns how many jobs were resumed and volumes were failed.
    pub fn recover(self: &Arc<Self>) -> crate::store::Result<(usize, usize)> {
        let jobs = self.store.unfinished_jobs()?;
        let mut busy: std::collections::HashSet<String> = std::collections::HashSet::new();
        for job in &jobs {
            if let Some(v) = &job.volume_id {
                busy.insert(v.clone());
            }
        }
        let busy_snapshots: std::collections::HashSet<String> = jobs
            .iter()
            .filter_map(|j| match serde_json::from_str::<JobParams>(&j.params) {
                Ok(JobParams::Snapshot { snapshot_id })
                | Ok(JobParams::DeleteSnapshot { snapshot_id }) => Some(snapshot_id),
                _ => None,
            })
            .collect();
        self.recover_snapshots(&busy_snapshots);
        let now = self.now();
        let mut failed = 0;
        for v in self.store.volumes_in_transition()? {
            if busy.contains(&v.id) {
                continue;
            }
            let reason = format!(
                "interrupted while {} and no job was left to finish it",
                v.state
            );
            let state = match v.state {
                VolumeState::Extending => VolumeState::ErrorExtending,
                VolumeState::Deleting => VolumeState::ErrorDeleting,
                VolumeState::Restoring => VolumeState::ErrorRestoring,
                _ => VolumeState::Error,
            };
            tracing::warn!(volume = %v.id, from = %v.state, to = %state, "recovery: {reason}");
            self.store.set_state(&v.id, state, Some(&reason), &now)?;
            failed += 1;
        }
        self.report_orphans();
        self.reconcile_exports(&busy);
        let resumed = jobs.len();
        for job in jobs {
            tracing::info!(job = %job.id, kind = %job.kind, state = %job.state, "recovery: resuming job");
            self.spawn_job(job);
        }
        Ok((resumed, failed))
    }

    /// Brings host exports in line with the store: in-use volumes get their
    /// export back (loop devices do not survive a reboot), and exports of
    /// our files that no attachment needs are removed. Volumes with a job
    /// still to run are left to that job.
    fn reconcile_exports(&self, busy: &std::collections::HashSet<String>) {
        let attached = match self.store.attached_volumes() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "reconcile: cannot list attached volumes");
                return;
            }
        };
        for v in attached.iter().filter(|v| !busy.contains(&v.id)) {
            let before = self.store.export(&v.id).ok().flatten();
            let result = self
                .backend(&v.backend)
                .map_err(|e| e.to_string())
                .and_then(|b| self.ensure_export(v, b.as_ref(), None));
            match result {
                Ok(()) => {
                    let after = self.store.export(&v.id).ok().flatten();
                    if before.map(|b| b.host_path) != after.as_ref().map(|a| a.host_path.clone()) {
                        tracing::warn!(volume = %v.id, device = ?after.map(|a| a.host_path), "reconcile: export re-created");
                    }
                }
                Err(e) => {
                    tracing::error!(volume = %v.id, error = %e, "reconcile: cannot re-create export");
                    let _ = self.store.set_state(
                        &v.id,
                        VolumeState::Error,
                        Some(&format!("export lost and not re-created: {e}")),
                        &self.now(),
                    );
                }
            }
        }
        let wanted: std::collections::HashSet<String> =
            attached.iter().map(|v| v.id.clone()).collect();
        if let Ok(rows) = self.store.all_exports() {
            for x in rows
                .iter()
                .filter(|x| !wanted.contains(&x.volume_id) && !busy.contains(&x.volume_id))
            {
                tracing::warn!(volume = %x.volume_id, device = %x.host_path, "reconcile: removing export with no attachment");
                if let Err(e) = self.exporter.unexport(&x.host_path) {
                    tracing::error!(device = %x.host_path, error = %e, "reconcile: cannot remove export");
                    continue;
                }
                let _ = self.store.remove_export(&x.volume_id);
            }
        }
        let known: std::collections::HashSet<String> = self
            .store
            .all_exports()
            .map(|r| r.into_iter().map(|x| x.host_path).collect())
            .unwrap_or_default();
        for e in self.exporter.exposed_under(&self.data_dir) {
            if known.contains(&e.host_path) {
                continue;
            }
            let owner = e
                .backing
                .file_stem()
                .and_then(|s| s.to_str())
                .map(String::from)
                .unwrap_or_default();
            if busy.contains(&owner) {
                continue;
            }
            tracing::warn!(device = %e.host_path, backing = %e.backing.display(), "reconcile: detaching a device no attachment owns");
            if let Err(err) = self.exporter.unexport(&e.host_path) {
                tracing::error!(device = %e.host_path, error = %err, "reconcile: cannot detach");
            }
        }
    }

    /// Logs backend volumes that have no row. They are left in place: a
    /// lost database must never turn into lost volumes.
    fn report_orphans(&self) {
        let known: std::collections::HashSet<String> = match self.store.all_volume_ids() {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list volumes to look for orphans");
                return;
            }
        };
        for (name, backend) in &self.backends {
            match backend.list() {
                Ok(ids) => {
                    for id in ids.into_iter().filter(|id| !known.contains(id)) {
                        tracing::warn!(backend = %name, volume = %id, "backend holds a volume the store does not know; left in place");
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "cannot list backend volumes")
                }
            }
        }
    }
}
