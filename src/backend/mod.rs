//! Backends own where a volume's bytes live. The service only sees the
//! `VolumeBackend` trait: create, grow and delete by volume id, each
//! idempotent and reporting whether it changed anything. Today there is
//! the file backend (sparse or preallocated files under the data dir) and
//! the LVM backend (logical volumes in a volume group).

pub mod file;
pub mod lvm;

use crate::config::Provisioning;
use std::path::PathBuf;

/// Whether a call changed anything (a re-run of a finished call does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Changed,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no space left on backend {backend}: {detail}")]
    NoSpace { backend: String, detail: String },
    #[error("volume {id} would shrink from {current} to {requested} bytes; shrinking is refused")]
    Shrink {
        id: String,
        current: u64,
        requested: u64,
    },
    #[error("invalid volume id {0:?}")]
    InvalidId(String),
    #[error("backend {backend}: {detail}")]
    Command { backend: String, detail: String },
    #[error("backend {backend} is not usable: {detail}")]
    Unavailable { backend: String, detail: String },
    #[error("backend {backend}: volume {id} does not exist")]
    NotFound { backend: String, id: String },
    #[error("backend {backend}: {op} {target}: {source}")]
    Io {
        backend: String,
        op: &'static str,
        target: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    NoSpace,
    Shrink,
    Invalid,
    Io,
    /// An external tool (lvm2) failed; its stderr is in the message.
    Command,
    /// The backend failed its start-up check.
    Unavailable,
    NotFound,
}

impl BackendError {
    pub fn kind(&self) -> BackendErrorKind {
        match self {
            BackendError::NoSpace { .. } => BackendErrorKind::NoSpace,
            BackendError::Shrink { .. } => BackendErrorKind::Shrink,
            BackendError::InvalidId(_) => BackendErrorKind::Invalid,
            BackendError::Io { .. } => BackendErrorKind::Io,
            BackendError::Command { .. } => BackendErrorKind::Command,
            BackendError::Unavailable { .. } => BackendErrorKind::Unavailable,
            BackendError::NotFound { .. } => BackendErrorKind::NotFound,
        }
    }
}

/// Where a local backend keeps a volume, for layers that need to open it
/// (copy, export). Remote backends answer None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    BlockDevice(PathBuf),
}

/// Space a backend has, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total: u64,
    pub free: u64,
}

pub trait VolumeBackend: Send + Sync {
    fn name(&self) -> &str;
    /// Makes the volume exist with `size` bytes. Converges if it exists.
    fn create(&self, id: &str, size: u64, prov: Provisioning) -> Result<Change, BackendError>;
    /// Grows the volume to `size` bytes; refuses to shrink.
    fn extend(&self, id: &str, size: u64, prov: Provisioning) -> Result<Change, BackendError>;
    /// Removes the volume; an absent volume is Unchanged, not an error.
    fn delete(&self, id: &str) -> Result<Change, BackendError>;
    /// Current size in bytes, or None when the volume does not exist.
    fn size(&self, id: &str) -> Result<Option<u64>, BackendError>;
    fn capacity(&self) -> Result<Capacity, BackendError>;
    /// Ids of every volume the backend holds.
    fn list(&self) -> Result<Vec<String>, BackendError>;
    fn location(&self, id: &str) -> Option<Location>;
    /// Where a snapshot's full copy lives (its manifest sits beside it).
    fn snapshot_location(&self, snapshot_id: &str) -> Option<Location>;
    /// Removes a snapshot's data and manifest; absent is Unchanged.
    fn delete_snapshot(&self, snapshot_id: &str) -> Result<Change, BackendError>;

    /// Volumes and snapshots are devices written in place: the service makes
    /// and clears the target first instead of writing a temp file.
    fn in_place(&self) -> bool {
        false
    }
    /// Makes a snapshot's device exist with `size` bytes, reading as zeros.
    fn prepare_snapshot(&self, _snapshot_id: &str, _size: u64) -> Result<(), BackendError> {
        Ok(())
    }
    /// Makes a volume read as zeros without writing it end to end.
    fn clear(&self, _id: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// Where a snapshot's manifest is kept.
    fn snapshot_manifest(&self, snapshot_id: &str) -> Option<PathBuf> {
        match self.snapshot_location(snapshot_id)? {
            Location::File(p) | Location::BlockDevice(p) => Some(manifest_path(&p)),
        }
    }
    /// Why a copy of an in-use volume would not be point-in-time, if so.
    fn live_copy_refused(&self) -> Option<String> {
        None
    }
    /// A point-in-time source to copy an in-use volume from (an LVM
    /// snapshot); None copies the volume itself.
    fn begin_live_copy(&self, _id: &str) -> Result<Option<Location>, BackendError> {
        Ok(None)
    }
    /// Drops what `begin_live_copy` made; nothing there is not an error.
    fn end_live_copy(&self, _id: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// Whether create and extend allocate every byte at once, so that the
    /// service checks free space before it accepts them.
    fn allocates_upfront(&self, _prov: Provisioning) -> bool {
        false
    }
}

/// The manifest path beside a snapshot file, and the temp path a copy is
/// written to before it is renamed into place.
pub fn manifest_path(data: &std::path::Path) -> PathBuf {
    data.with_extension("manifest")
}

pub fn temp_path(data: &std::path::Path) -> PathBuf {
    let mut s = data.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Accepts only the server's own hyphenated UUIDs, so that no user input
/// can ever reach a path or command line.
pub fn check_id(id: &str) -> Result<(), BackendError> {
    match uuid::Uuid::parse_str(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(BackendError::InvalidId(id.to_string())),
    }
}
