//! The LVM backend: each volume is a logical volume `<prefix><uuid>` in a
//! configured volume group, each snapshot a full copy in an LV
//! `<prefix>snap-<uuid>` of the same group, with its manifest in a file
//! under the data dir. Every lvm2 call goes through [`exec::Lvm`].
//!
//! Hosts without device-mapper cannot activate LVs. There lvm2 runs in
//! metadata-only mode, LVs are allocated contiguously, and each LV's bytes
//! are reached through a loop device over its window of the PV (offset =
//! pe_start + first PE x extent size, sizelimit = LV size). That fallback
//! is logged loudly at start-up. Clearing (a new LV, `volume_clear = zero`
//! at delete, a revert) punches the range through the device
//! (FALLOC_FL_PUNCH_HOLE, which is a discard that reads back as zeros), and
//! only if the device refuses does BLKZEROOUT run; neither writes zeros over
//! a sparse-backed PV.

pub mod exec;
pub mod report;

use super::{BackendError, Capacity, Change, Location, VolumeBackend, check_id};
use crate::config::{BackendConfig, Provisioning, VolumeClear};
use crate::export::loopdev;
use exec::{ExecError, Lvm};
use report::{LvInfo, VgInfo};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Checks a VG, LV prefix or pool name against lvm2's own rules, so that
/// nothing from the config can act as an option or a path.
pub fn check_lvm_name(s: &str, allow_empty: bool) -> Result<(), String> {
    if s.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err("must not be empty".into())
        };
    }
    if s.len() > 100 {
        return Err("must be at most 100 characters".into());
    }
    if s.starts_with('-') || s == "." || s == ".." {
        return Err(format!("{s:?} may not start with '-' or be . or .."));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
    {
        return Err(format!("{s:?} may hold only A-Z a-z 0-9 + _ . -"));
    }
    Ok(())
}

/// Whether the kernel has device-mapper (so LVs can be activated).
/// (The /dev/mapper/control node can exist without the driver, so the
/// kernel's own list decides.)
pub fn device_mapper_present() -> bool {
    std::fs::read_to_string("/proc/misc")
        .map(|m| m.lines().any(|l| l.trim_end().ends_with(" device-mapper")))
        .unwrap_or(false)
}

pub struct LvmBackend {
    name: String,
    vg: String,
    prefix: String,
    thin_pool: String,
    clear_on_delete: VolumeClear,
    lvm: Lvm,
    /// False: metadata-only mode with loop windows over the PV.
    dm: bool,
    /// Snapshot manifests: `<dir>/<snapshot>.manifest`.
    manifests: PathBuf,
    /// Serialises map and unmap, so two jobs never attach one window twice.
    maps: Mutex<()>,
}

impl LvmBackend {
    /// Opens the backend and checks it can work: lvm2 runs, the VG exists,
    /// its PVs open, and (without device-mapper) no thin pool is asked for.
    /// Existing LVs get their windows back in fallback mode.
    pub fn open(cfg: &BackendConfig, data_dir: &Path) -> Result<LvmBackend, BackendError> {
        let dm = device_mapper_present();
        let unavailable = |detail: String| BackendError::Unavailable {
            backend: cfg.name.clone(),
            detail,
        };
        let b = LvmBackend {
            name: cfg.name.clone(),
            vg: cfg.volume_group.clone(),
            prefix: cfg.lv_prefix.clone(),
            thin_pool: cfg.thin_pool.clone(),
            clear_on_delete: cfg.volume_clear,
            lvm: Lvm {
                binary: which("lvm").unwrap_or_else(|| "lvm".into()),
                devices: cfg.devices.clone(),
                no_activation: !dm,
                timeout: Duration::from_secs(cfg.command_timeout_secs),
            },
            dm,
            manifests: data_dir.join("lvm").join(&cfg.name).join("snapshots"),
            maps: Mutex::new(()),
        };
        b.lvm
            .run("version", &[])
            .map_err(|e| unavailable(format!("lvm2 tools do not run ({e}); install lvm2")))?;
        if !b.thin_pool.is_empty() && !dm {
            return Err(unavailable(format!(
                "thin_pool {:?} needs device-mapper, which this kernel lacks",
                b.thin_pool
            )));
        }
        b.vg_info()
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable(format!("volume group {:?} not found", b.vg)))?;
        for pv in b.pvs().map_err(|e| unavailable(e.to_string()))? {
            std::fs::File::open(&pv.name)
                .map_err(|e| unavailable(format!("physical volume {} unreadable: {e}", pv.name)))?;
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&b.manifests)
                .map_err(|e| super::file::io_error(&b.name, "create dir", &b.manifests, e))?;
        }
        if dm {
            tracing::info!(backend = %b.name, vg = %b.vg, "LVM backend ready (device-mapper present)");
        } else {
            tracing::warn!(
                backend = %b.name,
                vg = %b.vg,
                "LVM FALLBACK MODE: this kernel has no device-mapper. lvm2 runs metadata-only \
                 (activation disabled), LVs are allocated contiguously and reached through loop \
                 devices over the PV, and snapshots of in-use volumes are refused. \
                 This is not the recommended production setup."
            );
            for lv in b.lvs()? {
                if lv.name.starts_with(&b.prefix)
                    && let Err(e) = b.map(&lv)
                {
                    tracing::error!(backend = %b.name, lv = %lv.name, error = %e, "cannot map LV");
                }
            }
        }
        Ok(b)
    }

    /// Whether the backend runs without device-mapper.
    pub fn fallback(&self) -> bool {
        !self.dm
    }

    fn lv_name(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn snap_name(&self, id: &str) -> String {
        format!("{}snap-{id}", self.prefix)
    }

    fn cmd_err(&self, e: ExecError) -> BackendError {
        let detail = e.to_string();
        let lower = detail.to_ascii_lowercase();
        if lower.contains("insufficient free space") || lower.contains("insufficient suitable") {
            BackendError::NoSpace {
                backend: self.name.clone(),
                detail,
            }
        } else {
            BackendError::Command {
                backend: self.name.clone(),
                detail,
            }
        }
    }

    fn parse_err(&self, e: report::ParseError) -> BackendError {
        BackendError::Command {
            backend: self.name.clone(),
            detail: e.to_string(),
        }
    }

    fn vg_info(&self) -> Result<Option<VgInfo>, BackendError> {
        match self.lvm.report(
            "vgs",
            &["-o", "vg_name,vg_size,vg_free,vg_extent_size", &self.vg],
        ) {
            Ok(out) => report::parse_vg(&out, &self.vg).map_err(|e| self.parse_err(e)),
            Err(ExecError::Failed { stderr, .. }) if stderr.contains("not found") => Ok(None),
            Err(e) => Err(self.cmd_err(e)),
        }
    }

    fn vg(&self) -> Result<VgInfo, BackendError> {
        self.vg_info()?.ok_or_else(|| BackendError::Unavailable {
            backend: self.name.clone(),
            detail: format!("volume group {:?} not found", self.vg),
        })
    }

    fn pvs(&self) -> Result<Vec<report::PvInfo>, BackendError> {
        let out = self
            .lvm
            .report(
                "pvs",
                &[
                    "-o",
                    "pv_name,vg_name,pe_start",
                    "--select",
                    &format!("vg_name={}", self.vg),
                ],
            )
            .map_err(|e| self.cmd_err(e))?;
        let all = report::parse_pvs(&out).map_err(|e| self.parse_err(e))?;
        Ok(all.into_iter().filter(|p| p.vg == self.vg).collect())
    }

    fn lvs(&self) -> Result<Vec<LvInfo>, BackendError> {
        let out = self
            .lvm
            .report("lvs", &["-o", "lv_name,lv_size,seg_pe_ranges", &self.vg])
            .map_err(|e| self.cmd_err(e))?;
        report::parse_lvs(&out).map_err(|e| self.parse_err(e))
    }

    fn lv(&self, name: &str) -> Result<Option<LvInfo>, BackendError> {
        Ok(self.lvs()?.into_iter().find(|l| l.name == name))
    }

    /// The window of the PV holding a single-segment LV: (pv, offset, size).
    fn window(&self, lv: &LvInfo) -> Result<(PathBuf, u64, u64), BackendError> {
        let [seg] = lv.segments.as_slice() else {
            return Err(BackendError::Command {
                backend: self.name.clone(),
                detail: format!(
                    "LV {} has {} segments; without device-mapper only one contiguous segment can be mapped",
                    lv.name,
                    lv.segments.len()
                ),
            });
        };
        let vg = self.vg()?;
        let pv = self
            .pvs()?
            .into_iter()
            .find(|p| p.name == seg.pv)
            .ok_or_else(|| BackendError::Command {
                backend: self.name.clone(),
                detail: format!("PV {} of LV {} is not in the report", seg.pv, lv.name),
            })?;
        let offset = pv.pe_start + seg.start_pe * vg.extent_size;
        Ok((PathBuf::from(&seg.pv), offset, lv.size))
    }

    /// The loop device over an LV's window, attached if needed and sized to
    /// the LV. Fallback mode only.
    fn map(&self, lv: &LvInfo) -> Result<PathBuf, BackendError> {
        let (pv, offset, size) = self.window(lv)?;
        let _g = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let ex = |e: crate::export::ExportError| BackendError::Command {
            backend: self.name.clone(),
            detail: format!("loop window of LV {}: {e}", lv.name),
        };
        if let Some(found) = loopdev::find_by_backing(&pv)
            .into_iter()
            .find(|i| i.offset == offset)
        {
            if found.sizelimit != size {
                loopdev::set_sizelimit(&found.device, size).map_err(ex)?;
            }
            return Ok(found.device);
        }
        let dev = loopdev::attach(
            &pv,
            &loopdev::LoopOptions {
                offset,
                sizelimit: size,
                ..Default::default()
            },
        )
        .map_err(ex)?;
        tracing::info!(backend = %self.name, lv = %lv.name, device = %dev.path().display(), offset, size, "LV mapped through a loop device");
        Ok(dev.path().to_path_buf())
    }

    /// Detaches the window of an LV, before the LV is removed.
    fn unmap(&self, lv: &LvInfo) -> Result<(), BackendError> {
        let Ok((pv, offset, _)) = self.window(lv) else {
            return Ok(());
        };
        let _g = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        for i in loopdev::find_by_backing(&pv)
            .into_iter()
            .filter(|i| i.offset == offset)
        {
            loopdev::detach(&i.device).map_err(|e| BackendError::Command {
                backend: self.name.clone(),
                detail: format!(
                    "detach window {} of LV {}: {e}",
                    i.device.display(),
                    lv.name
                ),
            })?;
        }
        Ok(())
    }

    /// The device node of an LV.
    fn device(&self, lv: &LvInfo) -> Result<PathBuf, BackendError> {
        if self.dm {
            Ok(PathBuf::from(format!("/dev/{}/{}", self.vg, lv.name)))
        } else {
            self.map(lv)
        }
    }

    /// Makes an LV read as zeros from `from` to its end.
    fn clear_lv(&self, lv: &LvInfo, from: u64) -> Result<(), BackendError> {
        let dev = self.device(lv)?;
        if from >= lv.size {
            return Ok(());
        }
        clear_range(&dev, from, lv.size - from)
            .map_err(|e| super::file::io_error(&self.name, "clear", &dev, e))
    }

    /// Refuses early when the VG cannot hold `more` bytes.
    fn check_free(&self, more: u64, what: &str) -> Result<(), BackendError> {
        let vg = self.vg()?;
        let need = more.div_ceil(vg.extent_size) * vg.extent_size;
        if need > vg.free {
            return Err(BackendError::NoSpace {
                backend: self.name.clone(),
                detail: format!(
                    "{what} needs {need} bytes but volume group {} has {} free",
                    self.vg, vg.free
                ),
            });
        }
        Ok(())
    }

    /// Makes LV `name` exist with at least `size` bytes, cleared when new.
    fn ensure_lv(&self, name: &str, size: u64) -> Result<Change, BackendError> {
        if let Some(lv) = self.lv(name)? {
            if lv.size < size {
                return self.grow_lv(&lv, size);
            }
            self.device(&lv)?;
            return Ok(Change::Unchanged);
        }
        self.check_free(size, &format!("LV {name}"))?;
        let bytes = format!("{size}b");
        let mut args: Vec<&str> = vec!["-y", "-n", name];
        let pool;
        if self.thin_pool.is_empty() {
            args.extend(["--alloc", "contiguous", "-L", &bytes, &self.vg]);
        } else {
            pool = format!("{}/{}", self.vg, self.thin_pool);
            args.extend(["-V", &bytes, "--thinpool", &pool]);
        }
        self.lvm
            .run("lvcreate", &args)
            .map_err(|e| self.cmd_err(e))?;
        tracing::info!(backend = %self.name, lv = %name, size, "LV created");
        let lv = self.lv(name)?.ok_or_else(|| BackendError::Command {
            backend: self.name.clone(),
            detail: format!("LV {name} is missing right after lvcreate"),
        })?;
        // Thin LVs read zeros; thick extents may hold an old volume's bytes.
        if self.thin_pool.is_empty() {
            self.clear_lv(&lv, 0)?;
        }
        Ok(Change::Changed)
    }

    fn grow_lv(&self, lv: &LvInfo, size: u64) -> Result<Change, BackendError> {
        if self.thin_pool.is_empty() {
            self.check_free(size - lv.size, &format!("growing LV {}", lv.name))?;
        }
        let full = format!("{}/{}", self.vg, lv.name);
        let bytes = format!("{size}b");
        let mut args = vec!["-y", "-L", &bytes];
        if self.thin_pool.is_empty() {
            args.extend(["--alloc", "contiguous"]);
        }
        args.push(&full);
        self.lvm
            .run("lvextend", &args)
            .map_err(|e| self.cmd_err(e))?;
        let grown = self.lv(&lv.name)?.ok_or_else(|| BackendError::Command {
            backend: self.name.clone(),
            detail: format!("LV {} is missing right after lvextend", lv.name),
        })?;
        if self.thin_pool.is_empty() {
            self.clear_lv(&grown, lv.size)?;
        }
        tracing::info!(backend = %self.name, lv = %lv.name, from = lv.size, to = grown.size, "LV extended");
        Ok(Change::Changed)
    }

    fn remove_lv(&self, name: &str, clear: bool) -> Result<Change, BackendError> {
        let Some(lv) = self.lv(name)? else {
            return Ok(Change::Unchanged);
        };
        if clear {
            self.clear_lv(&lv, 0)?;
        }
        if !self.dm {
            self.unmap(&lv)?;
        }
        let full = format!("{}/{}", self.vg, name);
        self.lvm
            .run("lvremove", &["-y", &full])
            .map_err(|e| self.cmd_err(e))?;
        tracing::info!(backend = %self.name, lv = %name, cleared = clear, "LV removed");
        Ok(Change::Changed)
    }

    fn location_of(&self, name: &str) -> Option<Location> {
        match self.lv(name).and_then(|lv| match lv {
            Some(lv) => self.device(&lv).map(Some),
            None => Ok(None),
        }) {
            Ok(Some(p)) => Some(Location::BlockDevice(p)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(backend = %self.name, lv = %name, error = %e, "LV has no usable device");
                None
            }
        }
    }
}

/// Punches `len` bytes at `off` of a block device (a discard that reads
/// back as zeros); BLKZEROOUT only when the device cannot punch.
pub fn clear_range(dev: &Path, off: u64, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(dev)?;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
    ) {
        return Err(e);
    }
    // _IO(0x12, 127)
    const BLKZEROOUT: libc::Ioctl = 0x127F;
    let range: [u64; 2] = [off, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer,
    // which points at a live local array.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

impl VolumeBackend for LvmBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, id: &str, size: u64, _prov: Provisioning) -> Result<Change, BackendError> {
        check_id(id)?;
        self.ensure_lv(&self.lv_name(id), size)
    }

    fn extend(&self, id: &str, size: u64, _prov: Provisioning) -> Result<Change, BackendError> {
        check_id(id)?;
        let name = self.lv_name(id);
        let lv = self.lv(&name)?.ok_or_else(|| BackendError::NotFound {
            backend: self.name.clone(),
            id: id.to_string(),
        })?;
        if lv.size > size {
            return Err(BackendError::Shrink {
                id: id.to_string(),
                current: lv.size,
                requested: size,
            });
        }
        if lv.size == size {
            // A re-run after lvextend: the window may still be the old size.
            self.device(&lv)?;
            return Ok(Change::Unchanged);
        }
        self.grow_lv(&lv, size)
    }

    fn delete(&self, id: &str) -> Result<Change, BackendError> {
        check_id(id)?;
        self.remove_lv(&self.lv_name(id), self.clear_on_delete == VolumeClear::Zero)
    }

    fn size(&self, id: &str) -> Result<Option<u64>, BackendError> {
        check_id(id)?;
        Ok(self.lv(&self.lv_name(id))?.map(|l| l.size))
    }

    fn capacity(&self) -> Result<Capacity, BackendError> {
        let vg = self.vg()?;
        Ok(Capacity {
            total: vg.size,
            free: vg.free,
        })
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let mut ids: Vec<String> = self
            .lvs()?
            .into_iter()
            .filter_map(|l| {
                let id = l.name.strip_prefix(&self.prefix)?;
                check_id(id).ok().map(|_| id.to_string())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn location(&self, id: &str) -> Option<Location> {
        check_id(id).ok()?;
        self.location_of(&self.lv_name(id))
    }

    fn snapshot_location(&self, snapshot_id: &str) -> Option<Location> {
        check_id(snapshot_id).ok()?;
        self.location_of(&self.snap_name(snapshot_id))
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<Change, BackendError> {
        check_id(snapshot_id)?;
        let mut change = self.remove_lv(
            &self.snap_name(snapshot_id),
            self.clear_on_delete == VolumeClear::Zero,
        )?;
        let m = self.manifests.join(format!("{snapshot_id}.manifest"));
        match std::fs::remove_file(&m) {
            Ok(()) => change = Change::Changed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(super::file::io_error(&self.name, "remove", &m, e)),
        }
        Ok(change)
    }

    fn in_place(&self) -> bool {
        true
    }

    fn prepare_snapshot(&self, snapshot_id: &str, size: u64) -> Result<(), BackendError> {
        check_id(snapshot_id)?;
        let name = self.snap_name(snapshot_id);
        if self.ensure_lv(&name, size)? == Change::Unchanged
            && let Some(lv) = self.lv(&name)?
        {
            // A copy that ran before a crash left bytes behind.
            self.clear_lv(&lv, 0)?;
        }
        Ok(())
    }

    fn clear(&self, id: &str) -> Result<(), BackendError> {
        check_id(id)?;
        let lv = self
            .lv(&self.lv_name(id))?
            .ok_or_else(|| BackendError::NotFound {
                backend: self.name.clone(),
                id: id.to_string(),
            })?;
        self.clear_lv(&lv, 0)
    }

    fn snapshot_manifest(&self, snapshot_id: &str) -> Option<PathBuf> {
        check_id(snapshot_id).ok()?;
        Some(self.manifests.join(format!("{snapshot_id}.manifest")))
    }

    fn live_copy_refused(&self) -> Option<String> {
        if self.dm {
            None
        } else {
            Some(format!(
                "backend {} has no device-mapper, so no point-in-time copy of an in-use volume \
                 can be taken; detach the volume and snapshot it then",
                self.name
            ))
        }
    }

    fn begin_live_copy(&self, id: &str) -> Result<Option<Location>, BackendError> {
        check_id(id)?;
        if !self.dm {
            return Ok(None);
        }
        let lv = self
            .lv(&self.lv_name(id))?
            .ok_or_else(|| BackendError::NotFound {
                backend: self.name.clone(),
                id: id.to_string(),
            })?;
        // A temporary snapshot left by a crash is stale: make a fresh one.
        self.end_live_copy(id)?;
        let pit = format!("{}-pit", lv.name);
        let origin = format!("{}/{}", self.vg, lv.name);
        if self.thin_pool.is_empty() {
            // Room for a tenth of the volume to change during the copy.
            let vg = self.vg()?;
            let cow = (lv.size / 10).max(vg.extent_size);
            let bytes = format!("{cow}b");
            self.lvm
                .run("lvcreate", &["-y", "-s", "-n", &pit, "-L", &bytes, &origin])
                .map_err(|e| self.cmd_err(e))?;
        } else {
            self.lvm
                .run("lvcreate", &["-y", "-s", "-kn", "-n", &pit, &origin])
                .map_err(|e| self.cmd_err(e))?;
        }
        tracing::info!(backend = %self.name, lv = %lv.name, snapshot = %pit, "temporary LVM snapshot for a live copy");
        Ok(Some(Location::BlockDevice(PathBuf::from(format!(
            "/dev/{}/{pit}",
            self.vg
        )))))
    }

    fn end_live_copy(&self, id: &str) -> Result<(), BackendError> {
        check_id(id)?;
        if !self.dm {
            return Ok(());
        }
        self.remove_lv(&format!("{}-pit", self.lv_name(id)), false)
            .map(|_| ())
    }

    fn allocates_upfront(&self, _prov: Provisioning) -> bool {
        self.thin_pool.is_empty()
    }
}
