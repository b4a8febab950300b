//! Volume changes beyond the core lifecycle: tags (metadata), the
//! bootable flag, admin metadata (readonly, attach mode) with the states
//! that go with it, an admin's status reset, clones of whole volumes, and
//! quota limits set at run time.

use super::snapshots::{file_of, flush_export, grow_and_commit};
use super::{Caller, JobParams, Result, Service, ServiceError, VolumeDetail, not_found};
use crate::backend::{VolumeBackend, temp_path};
use crate::config::{QuotaLimits, QuotaOverride};
use crate::copy::{self, CancelToken, Progress};
use crate::store::model::*;
use crate::store::{StoreError, TagChange, VolumePatch};
use std::collections::BTreeMap;

impl Service {
    pub fn change_tags(
        &self,
        caller: &Caller,
        id: &str,
        change: TagChange,
    ) -> Result<VolumeDetail> {
        let patch = VolumePatch {
            tags: Some(change),
            ..Default::default()
        };
        self.patch(caller, id, JobKind::UpdateVolume, &patch)
    }

    pub fn set_bootable(&self, caller: &Caller, id: &str, bootable: bool) -> Result<VolumeDetail> {
        let patch = VolumePatch {
            bootable: Some(bootable),
            ..Default::default()
        };
        self.patch(caller, id, JobKind::UpdateVolume, &patch)
    }

    pub fn volume_tags(&self, id: &str) -> Result<Vec<Tag>> {
        Ok(self.store.volume_tags(id)?)
    }

    pub fn admin_metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.store.admin_metadata(id)?.into_iter().collect())
    }

    /// Sets or clears admin metadata and optionally moves the volume to
    /// `state`, when it is in one of `allowed`; recorded as a finished job.
    pub fn set_admin_metadata(
        &self,
        caller: &Caller,
        id: &str,
        allowed: &[VolumeState],
        entries: &[(&str, Option<&str>)],
        state: Option<VolumeState>,
    ) -> Result<Volume> {
        let job = self.new_job(
            JobKind::UpdateVolume,
            caller,
            id,
            &JobParams::Update,
            JobState::Succeeded,
        );
        self.store
            .set_admin_metadata(caller.scope(), id, allowed, entries, state, &job)
            .map_err(not_found(id))
            .map_err(|e| match e {
                ServiceError::Store(StoreError::WrongState(s)) => {
                    ServiceError::Conflict(format!("volume {id} is {s}"))
                }
                e => e,
            })
    }

    /// An admin's reset: the volume takes `state` whatever it was, unless a
    /// job is working on it.
    pub fn reset_state(&self, caller: &Caller, id: &str, state: VolumeState) -> Result<Volume> {
        if !caller.admin {
            return Err(ServiceError::Conflict(
                "only an admin may reset a volume's status".into(),
            ));
        }
        let settled: Vec<VolumeState> = VolumeState::ALL
            .iter()
            .copied()
            .filter(|s| !s.is_transitional())
            .collect();
        self.set_admin_metadata(caller, id, &settled, &[], Some(state))
    }

    /// Checks that `src` can be cloned into a volume of `size_gib`.
    pub(super) fn check_clone_source(
        &self,
        caller: &Caller,
        src: &str,
        size_gib: u64,
    ) -> Result<()> {
        let v = self
            .store
            .get_volume(caller.scope(), src)
            .map_err(not_found(src))?;
        if !matches!(v.state, VolumeState::Available | VolumeState::InUse) {
            return Err(ServiceError::invalid(
                "source_volid",
                format!("volume {src} is {}, not available", v.state),
            ));
        }
        self.refuse_live_copy(&v)?;
        if size_gib < v.size_gib {
            return Err(ServiceError::invalid(
                "size",
                format!(
                    "{size_gib} GiB is smaller than source volume {src} ({} GiB)",
                    v.size_gib
                ),
            ));
        }
        Ok(())
    }

    /// Copies a whole volume into a new one through the copy engine (data
    /// extents only), landing in a temp file that is renamed into place.
    pub(super) fn clone_copy(
        &self,
        src_id: &str,
        dst_id: &str,
        size: u64,
        backend: &dyn VolumeBackend,
    ) -> std::result::Result<(), String> {
        let in_place = backend.in_place();
        if in_place
            && let Ok(v) = self.store.get_volume(None, src_id)
            && v.state == crate::store::model::VolumeState::InUse
            && let Some(why) = backend.live_copy_refused()
        {
            return Err(format!("source volume {src_id} is in use: {why}"));
        }
        let src = file_of(backend.location(src_id), "source volume")?;
        if let Ok(Some(x)) = self.store.export(src_id) {
            flush_export(&x, &src)?;
        }
        let dst = file_of(backend.location(dst_id), "volume")?;
        let tmp = if in_place {
            dst.clone()
        } else {
            temp_path(&dst)
        };
        if !in_place {
            let _ = std::fs::remove_file(&tmp);
        }
        let opts = copy::CopyOptions {
            manifest: false,
            reflink: self.copy_options.reflink && !in_place,
            skip_zero_blocks: in_place,
            // Buffered writes to a block device cost 3x the CPU (measured).
            direct_write: self.copy_options.direct_write || in_place,
            ..self.copy_options.clone()
        };
        let copied = copy::copy(&src, &tmp, &opts, &Progress::new(), &CancelToken::new())
            .map(|_| ())
            .map_err(|e| super::reason(&e));
        if in_place {
            return copied;
        }
        grow_and_commit(copied, &tmp, &dst, size)
    }

    /// Sets some of a project's limits; they are stored and apply at once.
    pub fn set_project_quota(
        &self,
        caller: &Caller,
        project: &str,
        limits: &[(&str, u64)],
    ) -> Result<QuotaLimits> {
        let now = self.now();
        let job = Job {
            id: uuid::Uuid::new_v4().to_string(),
            kind: JobKind::SetQuota,
            volume_id: None,
            project_id: caller.project_id.clone(),
            state: JobState::Succeeded,
            params: serde_json::json!({"op": "set_quota", "project": project, "limits": limits})
                .to_string(),
            error: None,
            created_at: now.clone(),
            updated_at: now,
        };
        self.store.set_quota_limits(project, limits, &job)?;
        let mut q = self.quota.write().unwrap_or_else(|p| p.into_inner());
        let o = q.projects.entry(project.to_string()).or_default();
        for (res, v) in limits {
            apply_override(o, res, *v);
        }
        Ok(q.for_project(project))
    }

    pub fn default_quota_limits(&self) -> QuotaLimits {
        let q = self.quota.read().unwrap_or_else(|p| p.into_inner());
        QuotaLimits {
            volumes: q.volumes,
            snapshots: q.snapshots,
            gigabytes: q.gigabytes,
            per_volume_gigabytes: q.per_volume_gigabytes,
        }
    }

    /// Limits stored through the API win over the config's.
    pub(super) fn with_stored_quota_limits(self) -> Service {
        match self.store.quota_limits() {
            Ok(rows) => {
                {
                    let mut q = self.quota.write().unwrap_or_else(|p| p.into_inner());
                    for (project, res, v) in rows {
                        apply_override(q.projects.entry(project).or_default(), &res, v);
                    }
                }
                self
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stored quota limits; using the config's");
                self
            }
        }
    }
}

fn apply_override(o: &mut QuotaOverride, resource: &str, v: u64) {
    match resource {
        "volumes" => o.volumes = Some(v),
        "snapshots" => o.snapshots = Some(v),
        "gigabytes" => o.gigabytes = Some(v),
        "per_volume_gigabytes" => o.per_volume_gigabytes = Some(v),
        _ => {}
    }
}
