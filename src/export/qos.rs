//! Block-device QoS through the kernel's cgroup throttle. Limits are keyed by
//! a device's major:minor and apply to reads and writes alike, live.
//! Throughput is in MB/s where 1 MB = 1_000_000 bytes. With cgroup v1 the
//! limits go in the ROOT blkio cgroup, so they bind every process there; that
//! is what a loop device export needs (all I/O to the device is throttled).
//! With cgroup v2 the root has no io.max, so limits go in a named cgroup and
//! bind only processes in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;

use super::ExportError;

const V1_BLKIO: &str = "/sys/fs/cgroup/blkio";

/// Limits for one device. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosLimits {
    /// I/O operations per second, for reads and for writes each.
    pub max_iops: Option<u32>,
    /// MB/s (1 MB = 1_000_000 bytes), for reads and for writes each.
    pub max_throughput_mb: Option<u32>,
}

/// Which kernel mechanism enforces limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottleBackend {
    /// cgroup v1 blkio throttle files in this directory.
    CgroupV1(PathBuf),
    /// cgroup v2 io.max in this cgroup directory.
    CgroupV2(PathBuf),
    /// Nothing: limits are accepted but not enforced.
    None,
}

/// Limits in force for a device as the kernel reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleState {
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

/// Applies and clears per-device limits.
#[derive(Debug, Clone)]
pub struct Throttler {
    backend: ThrottleBackend,
}

static NO_THROTTLE_WARNING: Once = Once::new();

impl Throttler {
    /// Pick cgroup v1 blkio, else a cgroup v2 cgroup of ours with io.max,
    /// else none (warning once).
    pub fn detect() -> Throttler {
        let v1 = Path::new(V1_BLKIO);
        if v1.join("blkio.throttle.write_bps_device").exists() {
            return Throttler::with_backend(ThrottleBackend::CgroupV1(v1.to_path_buf()));
        }
        if let Some(dir) = find_v2_cgroup() {
            return Throttler::with_backend(ThrottleBackend::CgroupV2(dir));
        }
        NO_THROTTLE_WARNING.call_once(|| {
            tracing::warn!(
                "no block I/O throttle found (no cgroup v1 blkio, no cgroup v2 io.max): QoS limits will NOT be enforced"
            );
        });
        Throttler::with_backend(ThrottleBackend::None)
    }

    pub fn with_backend(backend: ThrottleBackend) -> Throttler {
        Throttler { backend }
    }

    pub fn backend(&self) -> &ThrottleBackend {
        &self.backend
    }

    /// Whether limits are really enforced.
    pub fn enforced(&self) -> bool {
        !matches!(self.backend, ThrottleBackend::None)
    }

    /// Set exactly these limits on the device (a `None` field removes it).
    pub fn apply(&self, dev: (u32, u32), limits: &QosLimits) -> Result<(), ExportError> {
        if limits.max_iops == Some(0) || limits.max_throughput_mb == Some(0) {
            return Err(ExportError::Invalid(
                "a QoS limit of 0 is not allowed; use None".into(),
            ));
        }
        let bps = limits.max_throughput_mb.map(|m| u64::from(m) * 1_000_000);
        let iops = limits.max_iops.map(u64::from);
        match &self.backend {
            ThrottleBackend::CgroupV1(dir) => {
                let (maj, min) = dev;
                for (file, v) in [
                    ("blkio.throttle.read_bps_device", bps),
                    ("blkio.throttle.write_bps_device", bps),
                    ("blkio.throttle.read_iops_device", iops),
                    ("blkio.throttle.write_iops_device", iops),
                ] {
                    write(&dir.join(file), &format!("{maj}:{min} {}", v.unwrap_or(0)))?;
                }
                Ok(())
            }
            ThrottleBackend::CgroupV2(dir) => write(&dir.join("io.max"), &v2_line(dev, bps, iops)),
            ThrottleBackend::None => Ok(()),
        }
    }

    /// Remove every limit on the device.
    pub fn clear(&self, dev: (u32, u32)) -> Result<(), ExportError> {
        self.apply(dev, &QosLimits::default())
    }

    /// Limits in force on the device.
    pub fn current(&self, dev: (u32, u32)) -> Result<ThrottleState, ExportError> {
        let key = format!("{}:{}", dev.0, dev.1);
        match &self.backend {
            ThrottleBackend::CgroupV1(dir) => {
                let get = |file: &str| -> Result<Option<u64>, ExportError> {
                    let p = dir.join(file);
                    let text =
                        fs::read_to_string(&p).map_err(|e| ExportError::from_io("read", &p, e))?;
                    Ok(text.lines().find_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        if k == key {
                            v.trim().parse().ok()
                        } else {
                            None
                        }
                    }))
                };
                Ok(ThrottleState {
                    read_bps: get("blkio.throttle.read_bps_device")?,
                    write_bps: get("blkio.throttle.write_bps_device")?,
                    read_iops: get("blkio.throttle.read_iops_device")?,
                    write_iops: get("blkio.throttle.write_iops_device")?,
                })
            }
            ThrottleBackend::CgroupV2(dir) => {
                let p = dir.join("io.max");
                let text =
                    fs::read_to_string(&p).map_err(|e| ExportError::from_io("read", &p, e))?;
                Ok(parse_v2(&text, &key))
            }
            ThrottleBackend::None => Ok(ThrottleState::default()),
        }
    }
}

fn v2_line(dev: (u32, u32), bps: Option<u64>, iops: Option<u64>) -> String {
    let f = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |v| v.to_string());
    format!(
        "{}:{} rbps={} wbps={} riops={} wiops={}",
        dev.0,
        dev.1,
        f(bps),
        f(bps),
        f(iops),
        f(iops)
    )
}

fn parse_v2(text: &str, key: &str) -> ThrottleState {
    let mut st = ThrottleState::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some(key) {
            continue;
        }
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v = v.parse::<u64>().ok();
            match k {
                "rbps" => st.read_bps = v,
                "wbps" => st.write_bps = v,
                "riops" => st.read_iops = v,
                "wiops" => st.write_iops = v,
                _ => {}
            }
        }
    }
    st
}

/// Our own cgroup v2 directory, if its hierarchy has the io controller and
/// it has an io.max file (the root cgroup has none).
fn find_v2_cgroup() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_start_matches('/');
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
        if fstype != "cgroup2" {
            return None;
        }
        let root = Path::new(mnt);
        let ctrls = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        if !ctrls.split_whitespace().any(|c| c == "io") {
            return None;
        }
        let dir = root.join(rel);
        dir.join("io.max").exists().then_some(dir)
    })
}

fn write(path: &Path, line: &str) -> Result<(), ExportError> {
    fs::write(path, line).map_err(|e| ExportError::from_io("write throttle", path, e))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn v2_lines_round_trip() {
        let line = v2_line((7, 3), Some(20_000_000), None);
        assert_eq!(line, "7:3 rbps=20000000 wbps=20000000 riops=max wiops=max");
        let st = parse_v2(&line, "7:3");
        assert_eq!(st.write_bps, Some(20_000_000));
        assert_eq!(st.read_iops, None);
    }
}
