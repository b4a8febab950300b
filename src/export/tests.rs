//! Privileged loop-device tests. Each one skips loudly (eprintln "SKIP")
//! when loop devices cannot be used here, and detaches what it made through
//! guards even when it fails.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

const MIB: u64 = 1 << 20;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("blockd-test")
        .tempdir_in("/var/tmp")
        .expect("tempdir")
}

fn sparse(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p)
        .expect("create")
        .set_len(len)
        .expect("set_len");
    p
}

/// Attach, or print why not and return None.
fn attach_or_skip(backing: &Path, opts: &LoopOptions) -> Option<LoopGuard> {
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: /dev/loop-control is missing");
        return None;
    }
    let t = Instant::now();
    match attach(backing, opts) {
        Ok(d) => {
            eprintln!("attach {} in {:?}", d.path().display(), t.elapsed());
            Some(d.into_guard())
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("SKIP: attach gave EPERM: {e}");
            None
        }
        Err(e) => panic!("attach failed: {e}"),
    }
}

fn aligned(len: usize, byte: u8) -> (Vec<u8>, usize) {
    let v = vec![byte; len + 4096];
    let off = v.as_ptr().align_offset(4096);
    (v, off)
}

fn open_direct(dev: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .expect("open O_DIRECT")
}

#[test]
fn loop_attach_write_read_back() {
    let dir = scratch();
    let f = sparse(dir.path(), "vol", 16 * MIB);
    let Some(g) = attach_or_skip(&f, &LoopOptions::default()) else {
        return;
    };
    assert_eq!(device_size(g.path()).expect("size"), 16 * MIB);
    let (buf, off) = aligned(65536, 0xA5);
    open_direct(g.path())
        .write_all_at(&buf[off..off + 65536], MIB)
        .expect("write");
    let mut back = vec![0u8; 65536];
    File::open(&f)
        .expect("open")
        .read_exact_at(&mut back, MIB)
        .expect("read");
    assert!(back.iter().all(|&b| b == 0xA5));
    assert_eq!(list_under(dir.path()).len(), 1);
    assert_eq!(find_by_backing(&f).len(), 1);
}

#[test]
fn loop_read_only_refuses_writes() {
    let dir = scratch();
    let f = sparse(dir.path(), "ro", 4 * MIB);
    let opts = LoopOptions {
        read_only: true,
        ..LoopOptions::default()
    };
    let Some(g) = attach_or_skip(&f, &opts) else {
        return;
    };
    let r = OpenOptions::new()
        .write(true)
        .open(g.path())
        .and_then(|mut d| d.write_all(&[1u8; 4096]).and_then(|_| d.sync_all()));
    assert!(r.is_err(), "write to read-only loop device succeeded");
}

#[test]
fn loop_detach_twice_and_busy() {
    let dir = scratch();
    let f = sparse(dir.path(), "d", 4 * MIB);
    let Some(g) = attach_or_skip(&f, &LoopOptions::default()) else {
        return;
    };
    let dev = g.path().to_path_buf();
    let held = File::open(&dev).expect("hold");
    let busy = detach(&dev).err().map(|e| e.kind());
    assert_eq!(busy, Some(ExportErrorKind::Busy));
    drop(held);
    assert!(
        list_under(dir.path()).is_empty(),
        "device not freed after last close"
    );
    assert_eq!(g.detach().ok(), Some(DetachOutcome::Unchanged));
    assert_eq!(detach(&dev).ok(), Some(DetachOutcome::Unchanged));
}

#[test]
fn loop_live_extend() {
    let dir = scratch();
    let f = sparse(dir.path(), "grow", 8 * MIB);
    let Some(g) = attach_or_skip(&f, &LoopOptions::default()) else {
        return;
    };
    let mut fd = File::open(g.path()).expect("open");
    File::options()
        .write(true)
        .open(&f)
        .expect("o")
        .set_len(24 * MIB)
        .expect("grow");
    g.set_capacity().expect("set_capacity");
    assert_eq!(device_size(g.path()).expect("size"), 24 * MIB);
    assert_eq!(fd.seek(SeekFrom::End(0)).expect("seek"), 24 * MIB);
}

#[test]
fn loop_offset_sizelimit_window() {
    let dir = scratch();
    let f = sparse(dir.path(), "pv", 16 * MIB);
    File::options()
        .write(true)
        .open(&f)
        .expect("o")
        .write_all_at(&[7u8; 4096], 4 * MIB)
        .expect("w");
    let opts = LoopOptions {
        offset: 4 * MIB,
        sizelimit: 2 * MIB,
        ..LoopOptions::default()
    };
    let Some(g) = attach_or_skip(&f, &opts) else {
        return;
    };
    assert_eq!(device_size(g.path()).expect("size"), 2 * MIB);
    let mut first = vec![0u8; 4096];
    File::open(g.path())
        .expect("open")
        .read_exact(&mut first)
        .expect("read");
    assert!(first.iter().all(|&b| b == 7));
    let info = &find_by_backing(&f)[0];
    assert_eq!((info.offset, info.sizelimit), (4 * MIB, 2 * MIB));
}

fn timed_write(dev: &Path, bytes: usize) -> f64 {
    let (buf, off) = aligned(MIB as usize, 0x5A);
    let d = open_direct(dev);
    let t = Instant::now();
    let mut pos = 0u64;
    while (pos as usize) < bytes {
        d.write_all_at(&buf[off..off + MIB as usize], pos)
            .expect("write");
        pos += MIB;
    }
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

#[test]
fn loop_qos_throughput_limit() {
    let dir = scratch();
    let f = sparse(dir.path(), "qos", 64 * MIB);
    let Some(g) = attach_or_skip(&f, &LoopOptions::default()) else {
        return;
    };
    let t = Throttler::detect();
    if !t.enforced() {
        eprintln!("SKIP: no throttle controller");
        return;
    }
    let mm = g.major_minor().expect("mm");
    let free = timed_write(g.path(), 32 * MIB as usize);
    t.apply(
        mm,
        &QosLimits {
            max_iops: None,
            max_throughput_mb: Some(20),
        },
    )
    .expect("apply");
    let limited = timed_write(g.path(), 32 * MIB as usize);
    t.clear(mm).expect("clear");
    eprintln!("QoS: unlimited {free:.0} MB/s, limited {limited:.1} MB/s");
    assert_eq!(t.current(mm).expect("current"), ThrottleState::default());
    assert!((15.0..=25.0).contains(&limited), "limited {limited}");
    assert!(free >= 3.0 * limited, "free {free}");
}
