//! What the service asks of an export kind: expose a backend location as
//! something a hypervisor opens, tear it down, follow a resize, throttle
//! it, and list what is exposed (for start-up reconcile).

use super::{ExportError, LoopOptions, QosLimits, Throttler, loopdev};
use crate::backend::{Change, Location};
use std::path::{Path, PathBuf};

/// One exposed volume as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    pub host_path: String,
    pub backing: PathBuf,
}

pub trait Exporter: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Exposes volume `volume_id` at `loc` and returns the host path. An
    /// existing export of the same location is reused. Kinds that name what
    /// they make (vhost-user sockets) name it after the volume, so the path
    /// stays the same across restarts whatever device backs it.
    fn export(
        &self,
        volume_id: &str,
        loc: &Location,
        read_only: bool,
    ) -> Result<String, ExportError>;
    /// Tears an export down; an absent one is Unchanged.
    fn unexport(&self, host_path: &str) -> Result<Change, ExportError>;
    /// Makes readers of the export see the backing store's new size.
    fn refresh_size(&self, host_path: &str) -> Result<u64, ExportError>;
    /// Applies limits (None: unlimited). Returns whether they are enforced.
    fn set_qos(&self, host_path: &str, limits: &QosLimits) -> Result<bool, ExportError>;
    /// Exports whose backing store lies under `dir`.
    fn exposed_under(&self, dir: &Path) -> Vec<Exposed>;
    /// Whether `host_path` is an export of this kind.
    fn handles(&self, _host_path: &str) -> bool {
        true
    }
    /// Exposes `loc` as an export of the named kind.
    fn export_as(
        &self,
        kind: &str,
        volume_id: &str,
        loc: &Location,
        read_only: bool,
    ) -> Result<String, ExportError> {
        if kind == self.kind() {
            self.export(volume_id, loc, read_only)
        } else {
            Err(ExportError::Unsupported(format!("export kind {kind:?}")))
        }
    }
    /// Whether this exporter (or one it holds) serves the named kind.
    fn has_kind(&self, kind: &str) -> bool {
        kind == self.kind()
    }
}

/// Several export kinds behind one [`Exporter`]: `export` uses the first,
/// `export_as` picks by kind, and calls naming a host path go to the kind
/// that handles it.
pub struct Exporters {
    kinds: Vec<std::sync::Arc<dyn Exporter>>,
}

impl Exporters {
    /// `kinds` must not be empty; the first is the default.
    pub fn new(kinds: Vec<std::sync::Arc<dyn Exporter>>) -> Exporters {
        Exporters { kinds }
    }

    fn by_path(&self, host_path: &str) -> Result<&dyn Exporter, ExportError> {
        self.kinds
            .iter()
            .find(|k| k.handles(host_path))
            .map(|k| k.as_ref())
            .ok_or_else(|| ExportError::Invalid(format!("no export kind handles {host_path}")))
    }

    fn first(&self) -> Result<&dyn Exporter, ExportError> {
        self.kinds
            .first()
            .map(|k| k.as_ref())
            .ok_or_else(|| ExportError::Unsupported("no export kind configured".into()))
    }
}

impl Exporter for Exporters {
    fn kind(&self) -> &'static str {
        self.kinds.first().map_or("none", |k| k.kind())
    }
    fn export(
        &self,
        volume_id: &str,
        loc: &Location,
        read_only: bool,
    ) -> Result<String, ExportError> {
        self.first()?.export(volume_id, loc, read_only)
    }
    fn export_as(
        &self,
        kind: &str,
        volume_id: &str,
        loc: &Location,
        read_only: bool,
    ) -> Result<String, ExportError> {
        match self.kinds.iter().find(|k| k.kind() == kind) {
            Some(k) => k.export(volume_id, loc, read_only),
            None => Err(ExportError::Unsupported(format!("export kind {kind:?}"))),
        }
    }
    fn has_kind(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k.kind() == kind)
    }
    fn unexport(&self, host_path: &str) -> Result<Change, ExportError> {
        self.by_path(host_path)?.unexport(host_path)
    }
    fn refresh_size(&self, host_path: &str) -> Result<u64, ExportError> {
        self.by_path(host_path)?.refresh_size(host_path)
    }
    fn set_qos(&self, host_path: &str, limits: &QosLimits) -> Result<bool, ExportError> {
        self.by_path(host_path)?.set_qos(host_path, limits)
    }
    fn exposed_under(&self, dir: &Path) -> Vec<Exposed> {
        self.kinds
            .iter()
            .flat_map(|k| k.exposed_under(dir))
            .collect()
    }
    fn handles(&self, host_path: &str) -> bool {
        self.kinds.iter().any(|k| k.handles(host_path))
    }
}

/// Loop devices over volume files: direct I/O, 4096-byte blocks where the
/// filesystem allows, never autoclear.
pub struct LoopExporter {
    throttler: Throttler,
}

impl LoopExporter {
    pub fn new() -> LoopExporter {
        LoopExporter {
            throttler: Throttler::detect(),
        }
    }

    pub fn qos_enforced(&self) -> bool {
        self.throttler.enforced()
    }
}

impl Default for LoopExporter {
    fn default() -> Self {
        LoopExporter::new()
    }
}

fn major_minor(dev: &Path) -> Result<(u32, u32), ExportError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dev).map_err(|e| ExportError::from_io("stat", dev, e))?;
    let rdev = m.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

impl Exporter for LoopExporter {
    fn kind(&self) -> &'static str {
        "loop"
    }

    fn handles(&self, host_path: &str) -> bool {
        host_path.starts_with("/dev/")
    }

    fn export(
        &self,
        _volume_id: &str,
        loc: &Location,
        read_only: bool,
    ) -> Result<String, ExportError> {
        let path = match loc {
            Location::File(p) | Location::BlockDevice(p) => p,
        };
        if let Some(existing) = loopdev::find_by_backing(path).into_iter().next() {
            return Ok(existing.device.display().to_string());
        }
        let dev = loopdev::attach(
            path,
            &LoopOptions {
                read_only,
                ..LoopOptions::default()
            },
        )?;
        Ok(dev.path().display().to_string())
    }

    fn unexport(&self, host_path: &str) -> Result<Change, ExportError> {
        let dev = Path::new(host_path);
        if let Ok(mm) = major_minor(dev) {
            let _ = self.throttler.clear(mm);
        }
        Ok(match loopdev::detach(dev)? {
            loopdev::DetachOutcome::Changed => Change::Changed,
            loopdev::DetachOutcome::Unchanged => Change::Unchanged,
        })
    }

    fn refresh_size(&self, host_path: &str) -> Result<u64, ExportError> {
        let dev = Path::new(host_path);
        loopdev::set_capacity(dev)?;
        loopdev::device_size(dev)
    }

    fn set_qos(&self, host_path: &str, limits: &QosLimits) -> Result<bool, ExportError> {
        let mm = major_minor(Path::new(host_path))?;
        if limits.max_iops.is_none() && limits.max_throughput_mb.is_none() {
            self.throttler.clear(mm)?;
        } else {
            self.throttler.apply(mm, limits)?;
        }
        Ok(self.throttler.enforced())
    }

    fn exposed_under(&self, dir: &Path) -> Vec<Exposed> {
        loopdev::list_under(dir)
            .into_iter()
            .filter_map(|i| {
                Some(Exposed {
                    host_path: i.device.display().to_string(),
                    backing: i.backing_file?,
                })
            })
            .collect()
    }
}
