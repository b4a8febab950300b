//! The file backend: one file per volume, `<dir>/<uuid>.img`, mode 0600.
//! Sparse types grow with ftruncate; fully provisioned types are
//! allocated with fallocate. Every change is fsynced with its directory.
//! An allocation that would leave less than a small reserve free is
//! refused, so the metadata store beside the volumes can still record it.

use super::{BackendError, Capacity, Change, Location, VolumeBackend, check_id};
use crate::config::Provisioning;
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Most space kept free when allocating (less on a small filesystem:
/// a 64th of it), so the store can always record a job's end.
pub const RESERVE: u64 = 16 << 20;

pub struct FileBackend {
    name: String,
    dir: PathBuf,
    snapshots: PathBuf,
    reserve: u64,
}

impl FileBackend {
    /// Opens the backend over `dir` (volumes) and its sibling `snapshots`,
    /// creating them (0700) if needed.
    pub fn open(name: &str, dir: &Path) -> Result<FileBackend, BackendError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(name, "create dir", dir, e))?;
        let snapshots = dir.with_file_name("snapshots");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snapshots)
            .map_err(|e| io(name, "create dir", &snapshots, e))?;
        Ok(FileBackend {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            snapshots,
            reserve: RESERVE,
        })
    }

    /// Sets the most space allocations leave free (0 lets them take all).
    pub fn with_reserve(mut self, bytes: u64) -> FileBackend {
        self.reserve = bytes;
        self
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    fn err(&self, op: &'static str, target: &Path, e: std::io::Error) -> BackendError {
        io(&self.name, op, target, e)
    }

    fn sync_dir(&self) -> Result<(), BackendError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err("fsync dir", &self.dir, e))
    }

    /// Grows `f` to `size` and, when provisioned, allocates every block.
    fn grow(
        &self,
        f: &File,
        path: &Path,
        size: u64,
        prov: Provisioning,
    ) -> Result<Change, BackendError> {
        let current = f.metadata().map_err(|e| self.err("stat", path, e))?.len();
        let mut change = Change::Unchanged;
        if prov == Provisioning::Full && size > 0 {
            // Refuse up front rather than fill the filesystem and fail.
            let before = allocated(f);
            let needed = size.saturating_sub(before * 512);
            let cap = self.capacity()?;
            let reserve = self.reserve.min(cap.total / 64);
            if needed.saturating_add(reserve) > cap.free {
                return Err(BackendError::NoSpace {
                    backend: self.name.clone(),
                    detail: format!(
                        "{needed} bytes must be allocated but only {} are free ({reserve} more are kept free for the metadata store)",
                        cap.free
                    ),
                });
            }
            // Allocating is idempotent; a half-done allocation completes.
            if let Err(e) = nix::fcntl::fallocate(
                f.as_fd(),
                nix::fcntl::FallocateFlags::empty(),
                0,
                size as i64,
            ) {
                // A failed fallocate can leave part of the range allocated
                // and the file longer (ext4 does): cut it back, so the
                // volume keeps its old size and the space is freed.
                let failed = self.err("fallocate", path, std::io::Error::from(e));
                f.set_len(current)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| self.err("truncate back after a failed fallocate", path, e))?;
                return Err(failed);
            }
            if allocated(f) != before {
                change = Change::Changed;
            }
        }
        if current < size {
            f.set_len(size).map_err(|e| self.err("truncate", path, e))?;
            change = Change::Changed;
        }
        if change == Change::Changed {
            f.sync_all().map_err(|e| self.err("fsync", path, e))?;
        }
        Ok(change)
    }
}

fn allocated(f: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    f.metadata().map(|m| m.blocks()).unwrap_or(0)
}

/// An io::Error as a backend error; running out of space is NoSpace.
pub(crate) fn io_error(
    backend: &str,
    op: &'static str,
    target: &Path,
    e: std::io::Error,
) -> BackendError {
    io(backend, op, target, e)
}

fn io(backend: &str, op: &'static str, target: &Path, e: std::io::Error) -> BackendError {
    let no_space = matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    );
    if no_space {
        BackendError::NoSpace {
            backend: backend.to_string(),
            detail: format!("{op} {}: {e}", target.display()),
        }
    } else {
        BackendError::Io {
            backend: backend.to_string(),
            op,
            target: target.display().to_string(),
            source: e,
        }
    }
}

impl VolumeBackend for FileBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, id: &str, size: u64, prov: Provisioning) -> Result<Change, BackendError> {
        check_id(id)?;
        let path = self.path(id);
        let existed = path.exists();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.err("create", &path, e))?;
        let grown = match self.grow(&f, &path, size, prov) {
            Ok(c) => c,
            Err(e) => {
                // Leave no half-allocated file behind a failed create.
                if !existed {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        if !existed {
            f.sync_all().map_err(|e| self.err("fsync", &path, e))?;
            self.sync_dir()?;
            return Ok(Change::Changed);
        }
        Ok(grown)
    }

    fn extend(&self, id: &str, size: u64, prov: Provisioning) -> Result<Change, BackendError> {
        check_id(id)?;
        let path = self.path(id);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| self.err("open", &path, e))?;
        let current = f.metadata().map_err(|e| self.err("stat", &path, e))?.len();
        if current > size {
            return Err(BackendError::Shrink {
                id: id.to_string(),
                current,
                requested: size,
            });
        }
        self.grow(&f, &path, size, prov)
    }

    fn delete(&self, id: &str) -> Result<Change, BackendError> {
        check_id(id)?;
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(Change::Changed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Change::Unchanged),
            Err(e) => Err(self.err("remove", &path, e)),
        }
    }

    fn size(&self, id: &str) -> Result<Option<u64>, BackendError> {
        check_id(id)?;
        let path = self.path(id);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("stat", &path, e)),
        }
    }

    fn capacity(&self) -> Result<Capacity, BackendError> {
        let s = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| self.err("statvfs", &self.dir, std::io::Error::from(e)))?;
        let frag = s.fragment_size() as u64;
        Ok(Capacity {
            total: s.blocks() as u64 * frag,
            free: s.blocks_available() as u64 * frag,
        })
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| self.err("list", &self.dir, e))?;
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| self.err("list", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".img"))
                && check_id(id).is_ok()
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn location(&self, id: &str) -> Option<Location> {
        check_id(id).ok()?;
        Some(Location::File(self.path(id)))
    }

    fn snapshot_location(&self, snapshot_id: &str) -> Option<Location> {
        check_id(snapshot_id).ok()?;
        Some(Location::File(
            self.snapshots.join(format!("{snapshot_id}.img")),
        ))
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<Change, BackendError> {
        check_id(snapshot_id)?;
        let data = self.snapshots.join(format!("{snapshot_id}.img"));
        let mut change = Change::Unchanged;
        for p in [
            super::temp_path(&data),
            super::manifest_path(&data),
            data.clone(),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => change = Change::Changed,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err("remove", &p, e)),
            }
        }
        if change == Change::Changed {
            File::open(&self.snapshots)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.err("fsync dir", &self.snapshots, e))?;
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const GIB: u64 = 1 << 30;

    fn backend() -> (tempfile::TempDir, FileBackend) {
        let d = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let b = FileBackend::open("file", &d.path().join("volumes")).unwrap();
        (d, b)
    }

    #[test]
    fn sparse_create_extend_delete_converge() {
        let (_d, b) = backend();
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            b.create(&id, GIB, Provisioning::Sparse).unwrap(),
            Change::Changed
        );
        assert_eq!(
            b.create(&id, GIB, Provisioning::Sparse).unwrap(),
            Change::Unchanged
        );
        let m = std::fs::metadata(b.path(&id)).unwrap();
        assert_eq!(m.len(), GIB);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "sparse file has {} blocks",
            m.blocks()
        );
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(
            b.extend(&id, 2 * GIB, Provisioning::Sparse).unwrap(),
            Change::Changed
        );
        assert_eq!(
            b.extend(&id, 2 * GIB, Provisioning::Sparse).unwrap(),
            Change::Unchanged
        );
        assert_eq!(b.size(&id).unwrap(), Some(2 * GIB));
        let e = b.extend(&id, GIB, Provisioning::Sparse).unwrap_err();
        assert_eq!(e.kind(), super::super::BackendErrorKind::Shrink);
        assert_eq!(b.list().unwrap(), vec![id.clone()]);
        assert_eq!(b.delete(&id).unwrap(), Change::Changed);
        assert_eq!(b.delete(&id).unwrap(), Change::Unchanged);
        assert_eq!(b.size(&id).unwrap(), None);
    }

    #[test]
    fn provisioned_create_allocates_every_block() {
        let (_d, b) = backend();
        let id = uuid::Uuid::new_v4().to_string();
        b.create(&id, 64 << 20, Provisioning::Full).unwrap();
        let m = std::fs::metadata(b.path(&id)).unwrap();
        assert!(m.blocks() * 512 >= 64 << 20);
        b.extend(&id, 128 << 20, Provisioning::Full).unwrap();
        let m = std::fs::metadata(b.path(&id)).unwrap();
        assert!(m.blocks() * 512 >= 128 << 20);
    }

    #[test]
    fn ids_that_are_not_uuids_never_reach_a_path() {
        let (_d, b) = backend();
        for id in ["../x", "a/b", "", "3F500F00-ED80-4566-A057-E31760226F9A"] {
            assert_eq!(
                b.create(id, GIB, Provisioning::Sparse).unwrap_err().kind(),
                super::super::BackendErrorKind::Invalid
            );
        }
    }
}
