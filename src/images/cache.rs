//! The image cache: the raw form of recently used images, each with the
//! blake3 manifest of its 1 MiB chunks and the Glance checksum it came
//! from. A later volume from the same image copies from here, verified
//! chunk by chunk while it copies, instead of downloading again. Entries
//! are evicted least recently used first once the allocated bytes exceed
//! the limit. Hits and misses are counted for the metrics.

use crate::copy::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);

/// Creates served from the cache since start-up.
pub fn hits() -> u64 {
    HITS.load(Ordering::Relaxed)
}

/// Creates that had to download since start-up (cache on).
pub fn misses() -> u64 {
    MISSES.load(Ordering::Relaxed)
}

pub struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
    lock: Mutex<()>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    fingerprint: String,
}

fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

impl ImageCache {
    /// Opens (creating) the cache dir and removes temp files a crash left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<ImageCache> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(dir)?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                tracing::info!(path = %p.display(), "image cache: removing a leftover temp file");
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(ImageCache {
            dir: dir.to_path_buf(),
            max_bytes,
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn raw(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.raw"))
    }
    fn manifest(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.manifest"))
    }
    fn meta(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Where a new entry is built before `insert`.
    pub fn temp_raw(&self, id: &str, job: &str) -> PathBuf {
        self.dir.join(format!("{id}.{job}.raw.tmp"))
    }

    /// The raw file and manifest of `id` when its content is `fingerprint`;
    /// a stale or broken entry is removed. Counts a hit or a miss.
    pub fn lookup(&self, id: &str, fingerprint: &str) -> Option<(PathBuf, Manifest)> {
        let found = valid_id(id)
            .then(|| {
                let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                let meta: Meta = serde_json::from_slice(&std::fs::read(self.meta(id)).ok()?).ok()?;
                if meta.fingerprint != fingerprint {
                    tracing::info!(image = %id, "image cache: entry is for older content; dropped");
                    self.remove_locked(id);
                    return None;
                }
                let m = match Manifest::read_from(&self.manifest(id)) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(image = %id, error = %e, "image cache: manifest unreadable; dropped");
                        self.remove_locked(id);
                        return None;
                    }
                };
                let raw = self.raw(id);
                if !raw.exists() {
                    self.remove_locked(id);
                    return None;
                }
                // Most recently used: the meta file's mtime.
                if let Ok(f) = std::fs::File::options().write(true).open(self.meta(id)) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                Some((raw, m))
            })
            .flatten();
        match found {
            Some(_) => HITS.fetch_add(1, Ordering::Relaxed),
            None => MISSES.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// Commits a finished raw file (fsynced and renamed) with its manifest,
    /// then evicts old entries past the size limit.
    pub fn insert(
        &self,
        id: &str,
        fingerprint: &str,
        tmp_raw: &Path,
        manifest: &Manifest,
    ) -> super::Result<()> {
        if !valid_id(id) {
            return Err(super::ImageError::Invalid(format!(
                "{id:?} is not an image id"
            )));
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        manifest.write_to(&self.manifest(id))?;
        crate::copy::commit_file(tmp_raw, &self.raw(id))?;
        let meta = serde_json::to_vec(&Meta {
            fingerprint: fingerprint.to_string(),
        })
        .map_err(|e| super::ImageError::Tool(format!("cache meta: {e}")))?;
        std::fs::write(self.meta(id), meta)
            .map_err(|e| super::ImageError::io("write cache meta", e))?;
        self.evict_locked(id);
        Ok(())
    }

    pub fn remove(&self, id: &str) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(id);
    }

    fn remove_locked(&self, id: &str) {
        for p in [self.meta(id), self.manifest(id), self.raw(id)] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Entries by last use, oldest first: (id, last use, allocated bytes).
    fn entries(&self) -> Vec<(String, std::time::SystemTime, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let used = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let bytes: u64 = [self.raw(id), self.manifest(id)]
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.blocks() * 512)
                .sum();
            out.push((id.to_string(), used, bytes));
        }
        out.sort_by_key(|e| e.1);
        out
    }

    /// Allocated bytes of all entries.
    pub fn used_bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.2).sum()
    }

    fn evict_locked(&self, keep: &str) {
        let entries = self.entries();
        let mut used: u64 = entries.iter().map(|e| e.2).sum();
        for (id, _, bytes) in entries {
            if used <= self.max_bytes {
                break;
            }
            if id == keep {
                continue;
            }
            tracing::info!(image = %id, bytes, "image cache: evicting least recently used");
            self.remove_locked(&id);
            used = used.saturating_sub(bytes);
        }
        if used > self.max_bytes {
            tracing::info!(image = %keep, "image cache: entry alone exceeds the limit; not kept");
            self.remove_locked(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: &ImageCache, id: &str, len: usize) {
        let tmp = c.temp_raw(id, "j");
        std::fs::write(&tmp, vec![7u8; len]).unwrap();
        let m = Manifest::new(1 << 20, len as u64, vec![[0u8; 32]]);
        c.insert(id, "sha512:x", &tmp, &m).unwrap();
    }

    #[test]
    fn lru_evicts_the_oldest_and_counts_hits() {
        let d = tempfile::tempdir().unwrap();
        let c = ImageCache::open(d.path(), 3 << 20).unwrap();
        let a = "00000000-0000-4000-8000-00000000000a";
        let b = "00000000-0000-4000-8000-00000000000b";
        let n = "00000000-0000-4000-8000-00000000000c";
        entry(&c, a, 1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(20));
        entry(&c, b, 1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let h = hits();
        assert!(c.lookup(a, "sha512:x").is_some());
        assert!(hits() > h);
        assert!(
            c.lookup(a, "sha512:other").is_none(),
            "stale content is dropped"
        );
        entry(&c, a, 1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(c.lookup(b, "sha512:x").is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        // a is now the oldest; a third entry pushes it out.
        entry(&c, n, 1 << 20);
        assert!(c.lookup(a, "sha512:x").is_none());
        assert!(c.lookup(b, "sha512:x").is_some());
        assert!(c.lookup(n, "sha512:x").is_some());
        assert!(c.used_bytes() <= 3 << 20);
        assert!(c.lookup("../../etc/passwd", "x").is_none());
    }
}
