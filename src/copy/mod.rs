//! File copy engine. This module owns copying one file to another while
//! keeping holes (extent map via SEEK_DATA/SEEK_HOLE), with an io_uring
//! engine and a pread/pwrite fallback, optional reflink, a blake3 manifest
//! of 1 MiB chunks built on a worker thread, verification and the
//! fsync-rename-fsync commit of a finished copy.

mod engine;
mod extents;
mod manifest;
pub mod stats;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub(crate) use manifest::compute as compute_manifest;
pub use manifest::{CHUNK_SIZE, Manifest, VerifyReport, verify};

/// Which engine the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePreference {
    /// io_uring when the probe passes, else the fallback.
    Auto,
    /// io_uring or an Unsupported error.
    Uring,
    /// Plain pread/pwrite.
    Fallback,
}

/// The engine that actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Fallback,
}

/// Knobs for one copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Reads kept in flight (io_uring) or buffers in the pool.
    pub queue_depth: u32,
    /// I/O size; a power of two from 4 KiB to 1 MiB (it must divide the chunk).
    pub block_size: usize,
    /// Open the source with O_DIRECT.
    pub direct_read: bool,
    /// Open the destination with O_DIRECT.
    pub direct_write: bool,
    /// Build a blake3 manifest while copying.
    pub manifest: bool,
    pub engine: EnginePreference,
    /// Try FICLONE first.
    pub reflink: bool,
    /// Do not write blocks that read as all zeros. Only for a destination
    /// already cleared (a fresh or discarded block device), where skipping
    /// them keeps a thin or sparse-backed device from filling up.
    pub skip_zero_blocks: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            queue_depth: 32,
            block_size: 1 << 20,
            // Measured on this machine (1 GiB cold, QD32, manifest on):
            // direct read 507 MB/s, buffered 206-409 MB/s; O_DIRECT on the
            // write side gave no further gain, so writes stay buffered.
            direct_read: true,
            direct_write: false,
            manifest: true,
            engine: EnginePreference::Auto,
            reflink: true,
            skip_zero_blocks: false,
        }
    }
}

/// Shared byte counters; cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    inner: Arc<(AtomicU64, AtomicU64)>,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bytes_done(&self) -> u64 {
        self.inner.0.load(Ordering::Relaxed)
    }
    pub fn bytes_total(&self) -> u64 {
        self.inner.1.load(Ordering::Relaxed)
    }
    fn add(&self, n: u64) {
        self.inner.0.fetch_add(n, Ordering::Relaxed);
    }
    fn start(&self, total: u64) {
        self.inner.0.store(0, Ordering::Relaxed);
        self.inner.1.store(total, Ordering::Relaxed);
    }
}

/// Cooperative cancellation flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// What a finished copy did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub logical_size: u64,
    pub bytes_copied: u64,
    pub engine: EngineKind,
    pub reflinked: bool,
    pub manifest: Option<Manifest>,
}

/// Stable error classes for callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyErrorKind {
    NoSpace,
    Cancelled,
    Mismatch,
    NotFound,
    Io,
    Unsupported,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{context}: no space left: {source}")]
    NoSpace {
        context: &'static str,
        source: io::Error,
    },
    #[error("copy cancelled")]
    Cancelled,
    #[error("chunk {chunk} does not match the manifest")]
    Mismatch { chunk: u64 },
    #[error("{context}: not found: {source}")]
    NotFound {
        context: &'static str,
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl CopyError {
    pub fn kind(&self) -> CopyErrorKind {
        match self {
            CopyError::NoSpace { .. } => CopyErrorKind::NoSpace,
            CopyError::Cancelled => CopyErrorKind::Cancelled,
            CopyError::Mismatch { .. } => CopyErrorKind::Mismatch,
            CopyError::NotFound { .. } => CopyErrorKind::NotFound,
            CopyError::Io { .. } => CopyErrorKind::Io,
            CopyError::Unsupported(_) => CopyErrorKind::Unsupported,
        }
    }

    /// Classify an io::Error: ENOSPC/EDQUOT/EFBIG are NoSpace, ENOENT NotFound.
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
                CopyError::NoSpace { context, source }
            }
            Some(libc::ENOENT) => CopyError::NotFound { context, source },
            _ => CopyError::Io { context, source },
        }
    }
}

/// Probe io_uring once: ring setup, buffer registration and the opcodes used.
pub fn probe() -> EngineKind {
    static KIND: OnceLock<EngineKind> = OnceLock::new();
    *KIND.get_or_init(|| match engine::probe_uring() {
        Ok(()) => EngineKind::Uring,
        Err(reason) => {
            tracing::warn!(%reason, "io_uring unavailable, using pread/pwrite fallback");
            EngineKind::Fallback
        }
    })
}

/// Copy `src` to `dst` (created or truncated), keeping holes, and fsync it.
pub fn copy(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    progress: &Progress,
    cancel: &CancelToken,
) -> Result<CopyReport, CopyError> {
    stats::timed(|| copy_inner(src, dst, opts, None, progress, cancel))
}

/// Like `copy`, but every chunk is checked against `expected` as it is
/// hashed; the first difference stops the copy with `Mismatch`.
pub fn copy_verified(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    expected: &Manifest,
    progress: &Progress,
    cancel: &CancelToken,
) -> Result<CopyReport, CopyError> {
    let mut o = opts.clone();
    o.manifest = true;
    stats::timed(|| copy_inner(src, dst, &o, Some(expected), progress, cancel))
}

fn validate(opts: &CopyOptions) -> Result<(), CopyError> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(4096..=CHUNK_SIZE as usize).contains(&bs) {
        return Err(CopyError::Unsupported(format!(
            "block_size {bs} must be a power of two from 4 KiB to 1 MiB"
        )));
    }
    if opts.queue_depth == 0 || opts.queue_depth > 4096 {
        return Err(CopyError::Unsupported(format!(
            "queue_depth {} must be 1..=4096",
            opts.queue_depth
        )));
    }
    Ok(())
}

fn copy_inner(
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
    expected: Option<&Manifest>,
    progress: &Progress,
    cancel: &CancelToken,
) -> Result<CopyReport, CopyError> {
    validate(opts)?;
    let kind = match opts.engine {
        EnginePreference::Fallback => EngineKind::Fallback,
        EnginePreference::Auto => probe(),
        EnginePreference::Uring => match probe() {
            EngineKind::Uring => EngineKind::Uring,
            EngineKind::Fallback => {
                return Err(CopyError::Unsupported("io_uring is not available".into()));
            }
        },
    };
    let src_f = File::open(src).map_err(|e| CopyError::io("open source", e))?;
    let size = byte_size(&src_f).map_err(|e| CopyError::io("stat source", e))?;
    // A block device is written in place (O_TRUNC does not apply to it).
    let dst_f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| CopyError::io("create destination", e))?;
    let dst_is_device = is_block_device(&dst_f);

    if let Some(exp) = expected
        && (exp.logical_size() != size || exp.chunk_size() != CHUNK_SIZE)
    {
        return Err(CopyError::Mismatch { chunk: 0 });
    }

    // Reflink: share the extents, then hash the destination if asked.
    if opts.reflink && try_reflink(&src_f, &dst_f)? {
        progress.start(size);
        progress.add(size);
        dst_f
            .sync_all()
            .map_err(|e| CopyError::io("fsync destination", e))?;
        let manifest = if opts.manifest {
            let m = manifest::compute(dst)?;
            if let Some(exp) = expected
                && let Some(c) = m.first_difference(exp)
            {
                return Err(CopyError::Mismatch { chunk: c });
            }
            Some(m)
        } else {
            None
        };
        return Ok(CopyReport {
            logical_size: size,
            bytes_copied: 0,
            engine: kind,
            reflinked: true,
            manifest,
        });
    }

    if dst_is_device {
        let room = byte_size(&dst_f).map_err(|e| CopyError::io("size destination", e))?;
        if room < size {
            return Err(CopyError::NoSpace {
                context: "destination device",
                source: io::Error::other(format!(
                    "the device holds {room} bytes, the source {size}"
                )),
            });
        }
    } else {
        dst_f
            .set_len(size)
            .map_err(|e| CopyError::io("size destination", e))?;
    }
    let any_direct = opts.direct_read || opts.direct_write;
    let extents = extents::data_extents(&src_f, size)?;
    let blocks = extents::blocks(&extents, size, opts.block_size as u64, any_direct);
    let total: u64 = blocks.iter().map(|b| b.len).sum();
    progress.start(total);

    let src_direct = if opts.direct_read {
        Some(open_direct(src, false).map_err(|e| CopyError::io("open source O_DIRECT", e))?)
    } else {
        None
    };
    let dst_direct = if opts.direct_write {
        Some(open_direct(dst, true).map_err(|e| CopyError::io("open destination O_DIRECT", e))?)
    } else {
        None
    };
    let fds = engine::Fds {
        src: src_f.as_raw_fd(),
        dst: dst_f.as_raw_fd(),
        src_direct: src_direct.as_ref().map(|f| f.as_raw_fd()),
        dst_direct: dst_direct.as_ref().map(|f| f.as_raw_fd()),
    };
    let hashes = engine::run(kind, &fds, &blocks, size, opts, expected, progress, cancel)?;
    dst_f
        .sync_all()
        .map_err(|e| CopyError::io("fsync destination", e))?;
    let manifest = hashes.map(|h| Manifest::new(CHUNK_SIZE, size, h));
    Ok(CopyReport {
        logical_size: size,
        bytes_copied: total,
        engine: kind,
        reflinked: false,
        manifest,
    })
}

fn is_block_device(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_block_device())
}

/// Size in bytes of a file or a block device (whose metadata says 0).
pub fn byte_size(f: &File) -> io::Result<u64> {
    if is_block_device(f) {
        use std::io::Seek;
        let mut r = f;
        return r.seek(io::SeekFrom::End(0));
    }
    Ok(f.metadata()?.len())
}

fn open_direct(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// FICLONE; Ok(false) when the filesystem cannot share extents.
fn try_reflink(src: &File, dst: &File) -> Result<bool, CopyError> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both fds are open for the duration of the call; FICLONE takes
    // the source fd as its integer argument and touches no memory of ours.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOTTY) => {
            Ok(false)
        }
        _ => Err(CopyError::io("reflink", e)),
    }
}

/// fsync `tmp`, rename it over `final_path`, then fsync the parent directory.
pub fn commit_file(tmp: &Path, final_path: &Path) -> Result<(), CopyError> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| CopyError::io("fsync temp file", e))?;
    std::fs::rename(tmp, final_path).map_err(|e| CopyError::io("rename", e))?;
    let parent = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| CopyError::io("fsync directory", e))?;
    Ok(())
}
