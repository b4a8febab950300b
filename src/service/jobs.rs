//! Running jobs: each runs on the runtime, does its backend work on a
//! blocking thread, and commits its terminal state together with the
//! volume's new state. Start-up recovery re-runs what a crash left behind;
//! every backend step is idempotent, so a re-run converges.

use super::{GIB, JobParams, Service};
use crate::store::VolumeEffect;
use crate::store::model::*;
use std::sync::Arc;

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
        if let Err(e) = self.store.mark_job_running(&job.id, &now) {
            tracing::error!(job = %job.id, error = %e, "cannot mark job running; recovery will retry it");
            return;
        }
        let Some(volume_id) = job.volume_id.clone() else {
            self.finish(&job, Err("job has no volume".into()), VolumeEffect::Nothing);
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
                self.finish(&job, Err(format!("job parameters unreadable: {e}")), effect);
                return;
            }
        };
        let backend_name = match self.store.get_volume(None, &volume_id) {
            Ok(v) => v.backend,
            Err(e) => {
                // The row is gone: only a delete can have finished already.
                let outcome = if job.kind == JobKind::DeleteVolume {
                    Ok(())
                } else {
                    Err(format!("volume row missing: {e}"))
                };
                self.finish(&job, outcome, VolumeEffect::Nothing);
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
                self.finish(&job, Err(e.to_string()), effect);
                return;
            }
        };
        let id = volume_id.clone();
        let p = params.clone();
        let work = tokio::task::spawn_blocking(move || match p {
            JobParams::Create {
                size_gib,
                provisioning,
            } => backend
                .create(&id, size_gib * GIB, provisioning)
                .map(|_| ()),
            JobParams::Extend {
                to_gib,
                provisioning,
                ..
            } => backend.extend(&id, to_gib * GIB, provisioning).map(|_| ()),
            JobParams::Delete => backend.delete(&id).map(|_| ()),
            JobParams::Update => Ok(()),
        })
        .await;
        let result: Result<(), String> = match work {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("job task failed: {e}")),
        };
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
            (JobParams::Extend { .. }, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::ErrorExtending,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (JobParams::Delete, Ok(())) => VolumeEffect::Remove,
            (JobParams::Delete, Err(e)) => VolumeEffect::SetState {
                state: VolumeState::ErrorDeleting,
                size_gib: None,
                error_reason: Some(e.clone()),
            },
            (JobParams::Update, _) => VolumeEffect::Nothing,
        };
        self.finish(&job, result, effect);
    }

    fn finish(&self, job: &Job, result: Result<(), String>, effect: VolumeEffect) {
        let now = self.now();
        let (state, error) = match &result {
            Ok(()) => (JobState::Succeeded, None),
            Err(e) => (JobState::Failed, Some(e.as_str())),
        };
        match self.store.finish_job(
            &job.id,
            state,
            error,
            job.volume_id.as_deref(),
            &effect,
            &now,
        ) {
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
        let resumed = jobs.len();
        for job in jobs {
            tracing::info!(job = %job.id, kind = %job.kind, state = %job.state, "recovery: resuming job");
            self.spawn_job(job);
        }
        Ok((resumed, failed))
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
