//! Crash checks shared by the crash-injection and failpoint tests: a data
//! dir seen from outside the daemon (SQLite read-only, files, loop devices)
//! and the invariants that must hold after any crash and restart.

use super::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `len` bytes of blake3's output stream keyed by `tag`: data no two tags
/// share, so a volume's first bytes say whose data it holds.
pub fn pattern(tag: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(tag.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// The first `len` bytes of a file or device. Volumes are sparse files of
/// 8 GiB and more, so they are never read whole.
pub fn head(path: &Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {len} bytes of {path:?}: {e}"));
    buf
}

pub struct World {
    pub dir: PathBuf,
    pub port: u16,
    pub cfg: PathBuf,
    pub c: Client,
    pub db: PathBuf,
}

impl World {
    pub fn vol_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("data/volumes/{id}.img"))
    }
    pub fn snap_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("data/snapshots/{id}.img"))
    }
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
    }
    pub fn strings(&self, sql: &str) -> Vec<String> {
        let db = self.db();
        let mut st = db.prepare(sql).unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }
}

/// Ids of `*.img` files in a dir, and any other names found there.
pub fn files(dir: &Path) -> (BTreeSet<String>, Vec<String>) {
    let mut ids = BTreeSet::new();
    let mut other = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        match n.strip_suffix(".img") {
            Some(id) => {
                ids.insert(id.to_string());
            }
            None => other.push(n),
        }
    }
    (ids, other)
}

/// Loop devices whose backing file is under `root`: (device, file).
pub fn loops_under(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let b = b.trim().to_string();
        if b.starts_with(&root.display().to_string()) {
            out.push((format!("/dev/{name}"), b));
        }
    }
    out
}

/// Detaches loop devices left under `root`, so a failed run leaks none.
pub struct LoopGuard(pub PathBuf);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        for (dev, _) in loops_under(&self.0) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &dev])
                .status();
        }
    }
}

/// Waits until no job is pending or running.
pub async fn settle_jobs(w: &World, ctx: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open = w
            .strings("SELECT kind || ' ' || state FROM jobs WHERE state IN ('pending', 'running')");
        if open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ctx}: jobs never finished after restart: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What must hold after any crash, once recovery has finished: every job
/// ended, SQLite intact, rows and files one to one, no stray temp files,
/// and loop devices only for recorded exports of live volumes.
pub async fn check_store(w: &World, ctx: &str) {
    settle_jobs(w, ctx).await;
    let ok: String = w
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{ctx}");
    // The kept per-project counts agree with the rows.
    for tbl in ["volumes", "snapshots"] {
        let drift = w.strings(&format!(
            "SELECT COALESCE(a.p, k.p) FROM \
             (SELECT project_id AS p, COUNT(*) AS n FROM {tbl} GROUP BY project_id) a \
             FULL JOIN (SELECT project_id AS p, n FROM row_counts WHERE tbl = '{tbl}' AND n != 0) k \
             ON a.p = k.p WHERE a.n IS NOT k.n"
        ));
        assert!(
            drift.is_empty(),
            "{ctx}: kept {tbl} counts drift for {drift:?}"
        );
    }

    // Rows and files match one to one.
    let rows: BTreeSet<String> = w.strings("SELECT id FROM volumes").into_iter().collect();
    let (vfiles, vother) = files(&w.dir.join("data/volumes"));
    assert!(
        vother.is_empty(),
        "{ctx}: stray files in volumes/: {vother:?}"
    );
    for f in &vfiles {
        assert!(rows.contains(f), "{ctx}: file {f}.img has no volume row");
    }
    let no_data = w
        .strings("SELECT id || ' ' || state FROM volumes WHERE state NOT IN ('error', 'deleting')");
    for r in &no_data {
        let id = r.split(' ').next().unwrap();
        assert!(vfiles.contains(id), "{ctx}: volume {r} has no file");
    }
    let srows: BTreeSet<String> = w
        .strings("SELECT id FROM snapshots WHERE status = 'available'")
        .into_iter()
        .collect();
    let all_snaps: BTreeSet<String> = w.strings("SELECT id FROM snapshots").into_iter().collect();
    let (sfiles, sother) = files(&w.dir.join("data/snapshots"));
    for f in &sfiles {
        assert!(
            all_snaps.contains(f),
            "{ctx}: snapshot file {f}.img has no row"
        );
    }
    for s in &srows {
        assert!(
            sfiles.contains(s),
            "{ctx}: available snapshot {s} has no data"
        );
    }
    for o in &sother {
        let id = o.split('.').next().unwrap_or("");
        assert!(
            o.ends_with(".manifest") && srows.contains(id),
            "{ctx}: stray file in snapshots/: {o}"
        );
    }

    // Loop devices point only at live, exported volumes, and each export
    // has its device.
    let exports: BTreeMap<String, String> = {
        let db = w.db();
        let mut st = db
            .prepare("SELECT volume_id, host_path FROM exports")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let loops = loops_under(&w.dir);
    for (dev, file) in &loops {
        assert!(
            !file.ends_with("(deleted)"),
            "{ctx}: {dev} points at a deleted file {file}"
        );
        let id = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        assert_eq!(
            exports.get(&id),
            Some(dev),
            "{ctx}: {dev} -> {file} is not a recorded export"
        );
    }
    for (id, dev) in &exports {
        let want = w.vol_path(id).display().to_string();
        assert!(
            loops.iter().any(|(d, f)| d == dev && *f == want),
            "{ctx}: export of {id} at {dev} has no loop device"
        );
    }
}
