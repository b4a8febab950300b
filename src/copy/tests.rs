//! Copy tests; one body per case runs against both engines.

use super::*;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

const MIB: u64 = 1 << 20;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").unwrap()
}

/// Deterministic pseudo-random bytes.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Write `size` bytes with data only in the given ranges (holes elsewhere).
fn make(path: &Path, size: u64, data: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(s, e) in data {
        let mut buf = vec![0u8; (e - s) as usize];
        fill(&mut buf, s + 1);
        f.write_all_at(&buf, s).unwrap();
    }
    f.sync_all().unwrap();
}

/// Reference hasher: read the whole file, hash each 1 MiB piece.
fn ref_manifest(path: &Path) -> Vec<[u8; 32]> {
    let all = std::fs::read(path).unwrap();
    all.chunks(MIB as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect()
}

fn opts(engine: EnginePreference) -> CopyOptions {
    CopyOptions {
        engine,
        reflink: false,
        ..CopyOptions::default()
    }
}

struct Case {
    name: &'static str,
    size: u64,
    data: Vec<(u64, u64)>,
}

fn cases() -> Vec<Case> {
    let sparse: Vec<(u64, u64)> = (0..16)
        .filter(|i| i % 4 == 0)
        .map(|i| (i * MIB, (i + 1) * MIB))
        .collect();
    vec![
        Case {
            name: "dense",
            size: 8 * MIB,
            data: vec![(0, 8 * MIB)],
        },
        Case {
            name: "sparse25",
            size: 16 * MIB,
            data: sparse,
        },
        Case {
            name: "hole_start",
            size: 6 * MIB,
            data: vec![(3 * MIB, 6 * MIB)],
        },
        Case {
            name: "hole_end",
            size: 6 * MIB,
            data: vec![(0, 2 * MIB)],
        },
        Case {
            name: "odd_size",
            size: 5 * MIB + 12345,
            data: vec![(0, 5 * MIB + 12345)],
        },
        // Data that starts and ends inside a chunk, and a short final chunk.
        Case {
            name: "partial_chunks",
            size: 4 * MIB + 777,
            data: vec![(MIB / 2, MIB + 4096 * 3), (3 * MIB + 8192, 4 * MIB + 777)],
        },
        Case {
            name: "empty",
            size: 0,
            data: vec![],
        },
        Case {
            name: "all_hole",
            size: 3 * MIB + 5,
            data: vec![],
        },
    ]
}

fn check_copy(engine: EnginePreference, dr: bool, dw: bool, bs: usize) {
    let d = dir();
    for c in cases() {
        let src = d.path().join(format!("{}.src", c.name));
        let dst = d.path().join(format!("{}.dst", c.name));
        make(&src, c.size, &c.data);
        let mut o = opts(engine);
        o.direct_read = dr;
        o.direct_write = dw;
        o.block_size = bs;
        let p = Progress::new();
        let r = copy(&src, &dst, &o, &p, &CancelToken::new()).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(a == b, "{}: contents differ", c.name);
        assert_eq!(r.logical_size, c.size);
        assert_eq!(p.bytes_done(), p.bytes_total(), "{}", c.name);
        let (sb, db) = (
            std::fs::metadata(&src).unwrap().blocks(),
            std::fs::metadata(&dst).unwrap().blocks(),
        );
        // Allocation close to the source's (alignment may add a few pages).
        assert!(db <= sb + 64, "{}: dst blocks {db} vs src {sb}", c.name);
        let m = r.manifest.unwrap();
        assert_eq!(m.chunks(), &ref_manifest(&src)[..], "{}: manifest", c.name);
        assert_eq!(m.logical_size(), c.size);
    }
}

macro_rules! both_engines {
    ($($name:ident => $body:expr;)*) => {
        mod uring {
            use super::*;
            $(#[test] fn $name() { ($body)(EnginePreference::Uring) })*
        }
        mod fallback {
            use super::*;
            $(#[test] fn $name() { ($body)(EnginePreference::Fallback) })*
        }
    };
}

both_engines! {
    buffered => |e| check_copy(e, false, false, MIB as usize);
    direct_read => |e| check_copy(e, true, false, MIB as usize);
    direct_write => |e| check_copy(e, false, true, MIB as usize);
    direct_both => |e| check_copy(e, true, true, MIB as usize);
    small_blocks => |e| check_copy(e, true, false, 64 * 1024);
    verified_mismatch => t_verified_mismatch;
    verify_finds_bad_chunk => t_verify_bad_chunk;
    cancel => t_cancel;
    no_manifest => t_no_manifest;
}

fn t_verified_mismatch(e: EnginePreference) {
    let d = dir();
    let src = d.path().join("s");
    make(&src, 8 * MIB, &[(0, 2 * MIB), (4 * MIB, 8 * MIB)]);
    let o = opts(e);
    let m = copy(
        &src,
        &d.path().join("a"),
        &o,
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap()
    .manifest
    .unwrap();
    // Same manifest passes.
    copy_verified(
        &src,
        &d.path().join("b"),
        &o,
        &m,
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap();
    // Flip one byte in chunk 5.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&src)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 5 * MIB + 100).unwrap();
    f.write_all_at(&[b[0] ^ 1], 5 * MIB + 100).unwrap();
    let err = copy_verified(
        &src,
        &d.path().join("c"),
        &o,
        &m,
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), CopyErrorKind::Mismatch);
    assert!(matches!(err, CopyError::Mismatch { chunk: 5 }), "{err}");
}

fn t_verify_bad_chunk(e: EnginePreference) {
    let d = dir();
    let src = d.path().join("s");
    let dst = d.path().join("d");
    make(&src, 6 * MIB + 10, &[(0, 6 * MIB + 10)]);
    let m = copy(&src, &dst, &opts(e), &Progress::new(), &CancelToken::new())
        .unwrap()
        .manifest
        .unwrap();
    let mf = d.path().join("m");
    m.write_to(&mf).unwrap();
    let m2 = Manifest::read_from(&mf).unwrap();
    assert_eq!(m, m2);
    assert_eq!(m.checksum_hex().len(), 64);
    let ok = verify(&dst, &m2).unwrap();
    assert!(ok.ok && ok.first_bad_chunk.is_none() && ok.chunks == 7);
    let f = OpenOptions::new().write(true).open(&dst).unwrap();
    f.write_all_at(&[0xAA ^ 0x55], 3 * MIB + 7).unwrap();
    f.write_all_at(&[0x11], 6 * MIB + 3).unwrap();
    let bad = verify(&dst, &m2).unwrap();
    assert!(!bad.ok);
    assert_eq!(bad.first_bad_chunk, Some(3));
}

fn t_cancel(e: EnginePreference) {
    let d = dir();
    let src = d.path().join("s");
    make(&src, 4 * MIB, &[(0, 4 * MIB)]);
    let c = CancelToken::new();
    c.cancel();
    let err = copy(&src, &d.path().join("d"), &opts(e), &Progress::new(), &c).unwrap_err();
    assert_eq!(err.kind(), CopyErrorKind::Cancelled);
}

fn t_no_manifest(e: EnginePreference) {
    let d = dir();
    let src = d.path().join("s");
    make(&src, 3 * MIB, &[(MIB, 3 * MIB)]);
    let mut o = opts(e);
    o.manifest = false;
    let r = copy(
        &src,
        &d.path().join("d"),
        &o,
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap();
    assert!(r.manifest.is_none());
    assert_eq!(r.bytes_copied, 2 * MIB);
    assert_eq!(
        std::fs::read(&src).unwrap(),
        std::fs::read(d.path().join("d")).unwrap()
    );
}

#[test]
fn reflink_falls_back_on_ext4() {
    let d = dir();
    let src = d.path().join("s");
    make(&src, 2 * MIB, &[(0, MIB)]);
    let o = CopyOptions {
        reflink: true,
        ..CopyOptions::default()
    };
    let r = copy(
        &src,
        &d.path().join("d"),
        &o,
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap();
    assert!(!r.reflinked);
    assert_eq!(r.manifest.unwrap().chunks(), &ref_manifest(&src)[..]);
}

#[test]
fn bad_block_size_rejected() {
    let d = dir();
    let src = d.path().join("s");
    make(&src, MIB, &[]);
    let o = CopyOptions {
        block_size: 3000,
        ..CopyOptions::default()
    };
    let err = copy(
        &src,
        &d.path().join("d"),
        &o,
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), CopyErrorKind::Unsupported);
    let err = copy(
        &d.path().join("missing"),
        &d.path().join("d"),
        &CopyOptions::default(),
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), CopyErrorKind::NotFound);
}

#[test]
fn commit_renames() {
    let d = dir();
    let t = d.path().join("t");
    std::fs::File::create(&t).unwrap().write_all(b"x").unwrap();
    commit_file(&t, &d.path().join("f")).unwrap();
    assert!(!t.exists());
    assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"x");
}

/// Unmounts and removes the image even when the test fails.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn enospc_is_nospace() {
    for e in [EnginePreference::Uring, EnginePreference::Fallback] {
        let d = dir();
        let (mnt, _g) = match mount_fresh(d.path(), "mkfs.ext4", 64 * MIB) {
            Ok(m) => m,
            Err(why) => {
                eprintln!("SKIPPING enospc test: {why}");
                return;
            }
        };
        let src = d.path().join("src");
        make(&src, 128 * MIB, &[(0, 128 * MIB)]);
        let err = copy(
            &src,
            &mnt.join("dst"),
            &opts(e),
            &Progress::new(),
            &CancelToken::new(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), CopyErrorKind::NoSpace, "{e:?}: {err}");
    }
}

/// Free bytes of the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// Mounts a fresh filesystem made by `mkfs` in a sparse image under `d`,
/// or says why it cannot.
fn mount_fresh(d: &Path, mkfs: &str, size: u64) -> Result<(PathBuf, MountGuard), String> {
    let img = d.join("fs.img");
    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
    File::create(&img)
        .and_then(|f| f.set_len(size))
        .map_err(|e| e.to_string())?;
    match std::process::Command::new(mkfs)
        .arg("-q")
        .arg(&img)
        .status()
    {
        Ok(s) if s.success() => {}
        other => return Err(format!("{mkfs} failed: {other:?}")),
    }
    match std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .status()
    {
        Ok(s) if s.success() => Ok((mnt.clone(), MountGuard(mnt))),
        other => Err(format!("mount -o loop failed: {other:?}")),
    }
}

#[test]
fn loop_reflink_on_xfs_shares_extents_and_still_hashes() {
    let d = dir();
    let (mnt, _g) = match mount_fresh(d.path(), "mkfs.xfs", 512 * MIB) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPING reflink test: {why} (install xfsprogs; needs root)");
            return;
        }
    };
    let src = mnt.join("s");
    make(&src, 256 * MIB, &[(0, 32 * MIB), (100 * MIB, 116 * MIB)]);
    let before = free_bytes(&mnt);
    let dst = mnt.join("d");
    let r = copy(
        &src,
        &dst,
        &CopyOptions {
            reflink: true,
            ..CopyOptions::default()
        },
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap();
    assert!(
        r.reflinked,
        "XFS supports FICLONE, the copy should share extents"
    );
    assert_eq!(r.manifest.unwrap().chunks(), &ref_manifest(&src)[..]);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    let used = before.saturating_sub(free_bytes(&mnt));
    assert!(
        used < 4 * MIB,
        "a reflink copy of 48 MiB of data used {used} bytes"
    );
    // The same copy with reflink off takes real space.
    let plain = mnt.join("p");
    let before = free_bytes(&mnt);
    let r = copy(
        &src,
        &plain,
        &CopyOptions {
            reflink: false,
            ..CopyOptions::default()
        },
        &Progress::new(),
        &CancelToken::new(),
    )
    .unwrap();
    assert!(!r.reflinked);
    let used = before.saturating_sub(free_bytes(&mnt));
    assert!(used >= 40 * MIB, "a plain copy used only {used} bytes");
}

#[test]
fn skip_zero_blocks_leaves_written_zeros_unwritten() {
    for engine in [EnginePreference::Auto, EnginePreference::Fallback] {
        let d = dir();
        let src = d.path().join("s");
        make(&src, 8 * MIB, &[(0, MIB)]);
        // Zeros that are allocated data, not a hole.
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&vec![0u8; 4 * MIB as usize], 2 * MIB)
            .unwrap();
        f.sync_all().unwrap();
        let dst = d.path().join("d");
        let o = CopyOptions {
            skip_zero_blocks: true,
            ..opts(engine)
        };
        let r = copy(&src, &dst, &o, &Progress::new(), &CancelToken::new()).unwrap();
        assert_eq!(r.manifest.unwrap().chunks(), &ref_manifest(&src)[..]);
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let held = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            held <= 2 * MIB,
            "{engine:?}: destination holds {held} bytes"
        );
    }
}
