//! Exports: turning a volume's backing store into something a hypervisor can
//! open, and enforcing QoS on it. Two kinds: a kernel loop device over the
//! volume's sparse file (or over a window of a physical volume, for an LVM
//! logical volume), throttled through the block cgroup controller; and a
//! vhost-user-blk socket served by blockd itself ([`vhost_blk`]), throttled
//! in its own data path. This module owns the raw loop ioctls, the sysfs scan that
//! finds existing loop devices at start-up, and the cgroup throttle files; it
//! owns no metadata and never decides which volume is exported where.

use std::io;
use std::path::{Path, PathBuf};

pub mod exporter;
pub mod loopdev;
pub mod qos;
pub mod vhost_blk;

#[cfg(test)]
mod tests;

pub use exporter::{Exporter, Exporters, Exposed, LoopExporter};
pub use loopdev::{
    DetachOutcome, LoopDevice, LoopGuard, LoopInfo, LoopOptions, attach, detach, device_size,
    find_by_backing, list, list_under, remove_device, set_capacity, set_sizelimit,
};
pub use qos::{QosLimits, ThrottleBackend, ThrottleState, Throttler};
pub use vhost_blk::VhostExporter;

/// Stable classes of export failure, for callers that map errors to API
/// responses or retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportErrorKind {
    /// The backing file or device does not exist.
    NotFound,
    /// The device is in use (held open, mounted, or raced by another attach).
    Busy,
    /// The host lacks what is needed (no loop driver, no throttle controller).
    Unsupported,
    /// Any other operating-system failure.
    Io,
    /// The request itself is malformed (bad path, bad alignment, zero limit).
    Invalid,
}

/// Errors from attaching, detaching, resizing or throttling an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("not found: {0}")]
    NotFound(PathBuf),
    #[error("{device} is busy: {reason}")]
    Busy { device: PathBuf, reason: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ExportError {
    /// The stable class of this error.
    pub fn kind(&self) -> ExportErrorKind {
        match self {
            ExportError::NotFound(_) => ExportErrorKind::NotFound,
            ExportError::Busy { .. } => ExportErrorKind::Busy,
            ExportError::Unsupported(_) => ExportErrorKind::Unsupported,
            ExportError::Invalid(_) => ExportErrorKind::Invalid,
            ExportError::Io { .. } => ExportErrorKind::Io,
        }
    }

    /// The operating-system error number behind an `Io` error, if any
    /// (for example `EPERM` when the caller lacks `CAP_SYS_ADMIN`).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            ExportError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Build an `Io` error, turning the errno values with a clear meaning
    /// into their own kinds.
    pub(crate) fn from_io(op: &'static str, path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) => ExportError::NotFound(path.to_path_buf()),
            Some(libc::EBUSY) => ExportError::Busy {
                device: path.to_path_buf(),
                reason: format!("{op}: {source}"),
            },
            _ => ExportError::Io {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Something a hypervisor can open to reach a volume.
pub trait Export {
    /// Short stable name of the export kind, e.g. `"loop"`.
    fn kind(&self) -> &'static str;
    /// What the hypervisor opens: a device node or a socket path.
    fn host_path(&self) -> String;
    /// The file (or device) that holds the data.
    fn backing(&self) -> &Path;
    /// Whether the guest sees the volume read-only.
    fn read_only(&self) -> bool;
    /// Size the guest sees, in bytes.
    fn size_bytes(&self) -> Result<u64, ExportError>;
    /// Block-device number, when the export is a kernel block device that
    /// the cgroup throttle can act on.
    fn major_minor(&self) -> Option<(u32, u32)>;
    /// Tear the export down. Tearing down an absent export is not an error.
    fn teardown(&self) -> Result<DetachOutcome, ExportError>;
}
