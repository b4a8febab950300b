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
    /// Exposes `loc` and returns the host path. An existing export of the
    /// same location is reused.
    fn export(&self, loc: &Location, read_only: bool) -> Result<String, ExportError>;
    /// Tears an export down; an absent one is Unchanged.
    fn unexport(&self, host_path: &str) -> Result<Change, ExportError>;
    /// Makes readers of the export see the backing store's new size.
    fn refresh_size(&self, host_path: &str) -> Result<u64, ExportError>;
    /// Applies limits (None: unlimited). Returns whether they are enforced.
    fn set_qos(&self, host_path: &str, limits: &QosLimits) -> Result<bool, ExportError>;
    /// Exports whose backing store lies under `dir`.
    fn exposed_under(&self, dir: &Path) -> Vec<Exposed>;
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

    fn export(&self, loc: &Location, read_only: bool) -> Result<String, ExportError> {
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
