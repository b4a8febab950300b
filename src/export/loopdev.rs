//! Kernel loop devices through raw ioctls: attach a backing file (or a window
//! of it) with one `LOOP_CONFIGURE`, detach with `LOOP_CLR_FD` confirmed
//! through sysfs, grow live with `LOOP_SET_CAPACITY`, and scan
//! `/sys/block/loop*` to find devices that already exist (there is no udev on
//! our hosts, so sysfs is the source of truth). Devices are never attached
//! with autoclear: a daemon restart must not detach devices under running
//! guests.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{Export, ExportError};

const LOOP_CONTROL: &str = "/dev/loop-control";
const SYS_BLOCK: &str = "/sys/block";

// Request numbers from <linux/loop.h> and <linux/fs.h>.
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04;
const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_SET_CAPACITY: libc::Ioctl = 0x4C07;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_REMOVE: libc::Ioctl = 0x4C81;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
// _IOR(0x12, 114, size_t) on 64-bit Linux.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_DIRECT_IO: u32 = 16;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// How often attach retries after losing a race for a free device.
const ATTACH_ATTEMPTS: u32 = 8;
/// How long detach waits for sysfs to show the device free.
const DETACH_CONFIRM: Duration = Duration::from_millis(250);

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel ABI sizes; a mismatch would corrupt the ioctl argument.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// Options for [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopOptions {
    /// Attach read-only (`LO_FLAGS_READ_ONLY`); the backing file is opened
    /// read-only too.
    pub read_only: bool,
    /// Byte offset of the device's first byte in the backing file. Must be a
    /// multiple of 512.
    pub offset: u64,
    /// Device size in bytes, 0 meaning "to the end of the file". Must be a
    /// multiple of 512.
    pub sizelimit: u64,
    /// Ask for direct I/O with 4096-byte logical blocks. Falls back to
    /// buffered I/O with 512-byte blocks when the backing filesystem refuses,
    /// or when offset or size are not 4096-aligned.
    pub direct_io: bool,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            read_only: false,
            offset: 0,
            sizelimit: 0,
            direct_io: true,
        }
    }
}

/// Result of an idempotent teardown: whether anything was actually removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachOutcome {
    Changed,
    Unchanged,
}

/// An attached loop device, as [`attach`] made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    number: u32,
    path: PathBuf,
    backing: PathBuf,
    read_only: bool,
    direct_io: bool,
    block_size: u32,
    offset: u64,
    sizelimit: u64,
    major_minor: (u32, u32),
}

impl LoopDevice {
    /// The N of /dev/loopN.
    pub fn number(&self) -> u32 {
        self.number
    }
    /// The device node, e.g. /dev/loop3.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Whether the kernel really does direct I/O on the backing file.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }
    /// Logical block size the device was configured with.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub fn sizelimit(&self) -> u64 {
        self.sizelimit
    }
    /// Detach this device (see [`detach`]).
    pub fn detach(&self) -> Result<DetachOutcome, ExportError> {
        detach(&self.path)
    }
    /// Re-read the backing file size after it grew (see [`set_capacity`]).
    pub fn set_capacity(&self) -> Result<(), ExportError> {
        set_capacity(&self.path)
    }
    /// Wrap in a guard that detaches on drop.
    pub fn into_guard(self) -> LoopGuard {
        LoopGuard::new(self)
    }
}

impl Export for LoopDevice {
    fn kind(&self) -> &'static str {
        "loop"
    }
    fn host_path(&self) -> String {
        self.path.display().to_string()
    }
    fn backing(&self) -> &Path {
        &self.backing
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn size_bytes(&self) -> Result<u64, ExportError> {
        device_size(&self.path)
    }
    fn major_minor(&self) -> Option<(u32, u32)> {
        Some(self.major_minor)
    }
    fn teardown(&self) -> Result<DetachOutcome, ExportError> {
        detach(&self.path)
    }
}

/// A loop device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    pub device: PathBuf,
    pub number: u32,
    /// None when the device is free.
    pub backing_file: Option<PathBuf>,
    /// The backing file was unlinked while attached (sysfs says "(deleted)").
    pub backing_deleted: bool,
    pub offset: u64,
    /// 0 means "to the end of the backing file".
    pub sizelimit: u64,
    pub major_minor: (u32, u32),
    pub direct_io: bool,
    pub read_only: bool,
    /// Autoclear is armed: the device frees itself on last close (set by a
    /// deferred detach, or by another tool).
    pub autoclear: bool,
}

/// Attach `backing` to a free loop device.
pub fn attach(backing: &Path, opts: &LoopOptions) -> Result<LoopDevice, ExportError> {
    let started = Instant::now();
    if !opts.offset.is_multiple_of(512) || !opts.sizelimit.is_multiple_of(512) {
        return Err(ExportError::Invalid(format!(
            "offset {} and sizelimit {} must be multiples of 512",
            opts.offset, opts.sizelimit
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(backing)
        .map_err(|e| ExportError::from_io("open backing file", backing, e))?;
    let meta = file
        .metadata()
        .map_err(|e| ExportError::from_io("stat backing file", backing, e))?;
    if !meta.is_file() && !is_block_device(&meta) {
        return Err(ExportError::Invalid(format!(
            "{} is neither a regular file nor a block device",
            backing.display()
        )));
    }
    let canonical = fs::canonicalize(backing).unwrap_or_else(|_| backing.to_path_buf());
    let len = backing_len(&file, &meta, backing)?;
    if opts.offset >= len {
        return Err(ExportError::Invalid(format!(
            "offset {} is not inside {} ({} bytes)",
            opts.offset,
            backing.display(),
            len
        )));
    }
    let visible = match opts.sizelimit {
        0 => len - opts.offset,
        limit => limit.min(len - opts.offset),
    };
    // 4096-byte blocks only when every edge is 4096-aligned, so no byte of
    // the mapping becomes unreachable.
    let aligned = opts.offset.is_multiple_of(4096)
        && opts.sizelimit.is_multiple_of(4096)
        && visible.is_multiple_of(4096);
    let mut want_dio = opts.direct_io;
    if want_dio && !aligned {
        tracing::info!(
            backing = %backing.display(),
            "loop attach: offset or size not 4096-aligned, using 512-byte blocks without direct I/O"
        );
        want_dio = false;
    }

    let ctl = open_loop_control()?;
    let mut last_busy = None;
    for attempt in 0..ATTACH_ATTEMPTS {
        let number = get_free(&ctl)?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let dev = open_device_node(&path)?;
        let mut dio = want_dio;
        let result = loop {
            let block_size = if dio { 4096 } else { 512 };
            match configure(&dev, &file, &canonical, opts, dio, block_size) {
                Err(e) if dio && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        device = %path.display(),
                        backing = %backing.display(),
                        "LOOP_CONFIGURE refused direct I/O with 4096-byte blocks ({e}); \
                         retrying buffered with 512-byte blocks"
                    );
                    dio = false;
                }
                other => break other.map(|()| block_size),
            }
        };
        match result {
            Ok(block_size) => {
                let info = read_info(number);
                let direct_io = info.as_ref().map(|i| i.direct_io).unwrap_or(dio);
                if dio && !direct_io {
                    tracing::warn!(
                        device = %path.display(),
                        "kernel did not enable direct I/O on the backing file"
                    );
                }
                let major_minor = info.map(|i| i.major_minor).unwrap_or((7, number));
                tracing::debug!(
                    device = %path.display(),
                    backing = %canonical.display(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "loop device attached"
                );
                return Ok(LoopDevice {
                    number,
                    path,
                    backing: canonical,
                    read_only: opts.read_only,
                    direct_io,
                    block_size,
                    offset: opts.offset,
                    sizelimit: opts.sizelimit,
                    major_minor,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Someone else configured this device between GET_FREE and
                // our ioctl; ask for another one.
                tracing::debug!(device = %path.display(), attempt, "lost attach race, retrying");
                last_busy = Some(path);
            }
            Err(e) => return Err(ExportError::from_io("LOOP_CONFIGURE", &path, e)),
        }
    }
    Err(ExportError::Busy {
        device: last_busy.unwrap_or_else(|| PathBuf::from(LOOP_CONTROL)),
        reason: format!("every free loop device was taken by others ({ATTACH_ATTEMPTS} tries)"),
    })
}

/// Detach a loop device. A device that is already free, or absent, gives
/// `Unchanged`. If someone else holds the device open the kernel only defers
/// the detach (it arms autoclear and frees the device on last close); that is
/// reported as a `Busy` error rather than as success.
pub fn detach(dev: &Path) -> Result<DetachOutcome, ExportError> {
    let number = loop_number(dev)?;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dev)
    {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {
            return Ok(DetachOutcome::Unchanged);
        }
        Err(e) => return Err(ExportError::from_io("open loop device", dev, e)),
    };
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is a valid open block
    // device for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD, 0) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(DetachOutcome::Unchanged),
            _ => Err(ExportError::from_io("LOOP_CLR_FD", dev, err)),
        };
    }
    // With us as the only opener the kernel clears the device when this fd
    // closes; otherwise it waits for the last opener.
    drop(file);
    let deadline = Instant::now() + DETACH_CONFIRM;
    loop {
        if !is_bound(number) {
            return Ok(DetachOutcome::Changed);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let autoclear = read_info(number).map(|i| i.autoclear).unwrap_or(false);
    Err(ExportError::Busy {
        device: dev.to_path_buf(),
        reason: if autoclear {
            "held open elsewhere; the kernel deferred the detach until the last opener closes"
                .to_string()
        } else {
            "still attached after LOOP_CLR_FD".to_string()
        },
    })
}

/// Make the device see a grown backing file (`LOOP_SET_CAPACITY`). Open fds
/// see the new size at once.
pub fn set_capacity(dev: &Path) -> Result<(), ExportError> {
    let file = open_ro(dev)?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is valid.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_SET_CAPACITY, 0) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Err(ExportError::NotFound(dev.to_path_buf()));
        }
        return Err(ExportError::from_io("LOOP_SET_CAPACITY", dev, err));
    }
    Ok(())
}

/// Changes the size of a window mapping (`LOOP_SET_STATUS64` with a new
/// sizelimit), live: open fds see the new size. The kernel answers EAGAIN
/// while it cannot drop the old page cache, so that is retried briefly.
pub fn set_sizelimit(dev: &Path, sizelimit: u64) -> Result<(), ExportError> {
    if !sizelimit.is_multiple_of(512) {
        return Err(ExportError::Invalid(format!(
            "sizelimit {sizelimit} must be a multiple of 512"
        )));
    }
    let file = open_ro(dev)?;
    // SAFETY: LoopInfo64 is plain old data; all zeros is a valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 fills one loop_info64 through the pointer,
    // which points at a live local of exactly that layout (size asserted).
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    };
    if rc < 0 {
        return Err(ExportError::from_io(
            "LOOP_GET_STATUS64",
            dev,
            io::Error::last_os_error(),
        ));
    }
    if info.lo_sizelimit == sizelimit {
        return Ok(());
    }
    info.lo_sizelimit = sizelimit;
    let mut tries = 0;
    loop {
        // SAFETY: as above; the kernel only reads the struct.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                LOOP_SET_STATUS64,
                &info as *const LoopInfo64,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        tries += 1;
        if err.raw_os_error() == Some(libc::EAGAIN) && tries < 50 {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        return Err(ExportError::from_io("LOOP_SET_STATUS64", dev, err));
    }
}

/// Size of a block device in bytes (`BLKGETSIZE64`).
pub fn device_size(dev: &Path) -> Result<u64, ExportError> {
    let file = open_ro(dev)?;
    fd_size(&file).map_err(|e| ExportError::from_io("BLKGETSIZE64", dev, e))
}

/// Every loop device in sysfs, free or bound, ordered by number.
pub fn list() -> Vec<LoopInfo> {
    let Ok(entries) = fs::read_dir(SYS_BLOCK) else {
        return Vec::new();
    };
    let mut out: Vec<LoopInfo> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let number = name.to_str()?.strip_prefix("loop")?.parse::<u32>().ok()?;
            read_info(number)
        })
        .collect();
    out.sort_by_key(|i| i.number);
    out
}

/// Bound loop devices whose backing file is `path` (after resolving
/// symlinks). Several can exist, e.g. a PV mapped at several offsets.
pub fn find_by_backing(path: &Path) -> Vec<LoopInfo> {
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    list()
        .into_iter()
        .filter(|i| i.backing_file.as_deref() == Some(target.as_path()))
        .collect()
}

/// Bound loop devices whose backing file lies inside `dir`, for start-up
/// reconcile and leak checks.
pub fn list_under(dir: &Path) -> Vec<LoopInfo> {
    let root = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    list()
        .into_iter()
        .filter(|i| {
            i.backing_file
                .as_deref()
                .is_some_and(|b| b.starts_with(&root))
        })
        .collect()
}

/// Remove a free loop device node (`LOOP_CTL_REMOVE`), for cleaning up
/// devices beyond the preallocated ones. An absent device is `Unchanged`; a
/// bound or open one is `Busy`.
pub fn remove_device(number: u32) -> Result<DetachOutcome, ExportError> {
    let ctl = open_loop_control()?;
    // SAFETY: LOOP_CTL_REMOVE takes the device number by value; the fd is a
    // valid /dev/loop-control handle.
    let rc = unsafe {
        libc::ioctl(
            ctl.as_raw_fd(),
            LOOP_CTL_REMOVE,
            libc::c_ulong::from(number),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        let path = PathBuf::from(format!("/dev/loop{number}"));
        return match err.raw_os_error() {
            Some(libc::ENODEV | libc::ENXIO) => Ok(DetachOutcome::Unchanged),
            _ => Err(ExportError::from_io("LOOP_CTL_REMOVE", &path, err)),
        };
    }
    Ok(DetachOutcome::Changed)
}

/// Detaches its device when dropped, also while unwinding from a panic.
/// Failures are logged, since Drop cannot return them.
#[derive(Debug)]
pub struct LoopGuard {
    device: Option<LoopDevice>,
}

impl LoopGuard {
    pub fn new(device: LoopDevice) -> Self {
        LoopGuard {
            device: Some(device),
        }
    }

    /// Give up the guard and keep the device attached.
    pub fn disarm(mut self) -> LoopDevice {
        match self.device.take() {
            Some(d) => d,
            // The Option is only emptied here and in Drop.
            None => unreachable!("LoopGuard without a device"),
        }
    }

    /// Detach now and report the outcome, instead of on drop.
    pub fn detach(mut self) -> Result<DetachOutcome, ExportError> {
        match self.device.take() {
            Some(d) => d.detach(),
            None => Ok(DetachOutcome::Unchanged),
        }
    }
}

impl Deref for LoopGuard {
    type Target = LoopDevice;
    fn deref(&self) -> &LoopDevice {
        match &self.device {
            Some(d) => d,
            None => unreachable!("LoopGuard without a device"),
        }
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if let Some(d) = self.device.take()
            && let Err(e) = d.detach()
        {
            tracing::warn!(device = %d.path.display(), "loop guard could not detach: {e}");
        }
    }
}

// ---- helpers ----

fn open_loop_control() -> Result<File, ExportError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(LOOP_CONTROL)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV) => ExportError::Unsupported(format!(
                "no loop driver: {LOOP_CONTROL} cannot be opened ({e})"
            )),
            _ => ExportError::from_io("open", Path::new(LOOP_CONTROL), e),
        })
}

fn get_free(ctl: &File) -> Result<u32, ExportError> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device
    // number; the fd is a valid /dev/loop-control handle.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
    if rc < 0 {
        return Err(ExportError::from_io(
            "LOOP_CTL_GET_FREE",
            Path::new(LOOP_CONTROL),
            io::Error::last_os_error(),
        ));
    }
    Ok(rc as u32)
}

/// Open /dev/loopN read-write. devtmpfs normally has the node by the time
/// GET_FREE returns; wait briefly in case it does not.
fn open_device_node(path: &Path) -> Result<File, ExportError> {
    let mut tries = 0;
    loop {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(ExportError::from_io("open loop device", path, e)),
        }
    }
}

fn configure(
    dev: &File,
    backing: &File,
    name: &Path,
    opts: &LoopOptions,
    dio: bool,
    block_size: u32,
) -> io::Result<()> {
    let mut flags = 0;
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if dio {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let mut file_name = [0u8; LO_NAME_SIZE];
    let bytes = name.as_os_str().as_bytes();
    let n = bytes.len().min(LO_NAME_SIZE - 1);
    file_name[..n].copy_from_slice(&bytes[..n]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: opts.offset,
            lo_sizelimit: opts.sizelimit,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: file_name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised #[repr(C)] struct matching the
    // kernel's struct loop_config (size checked at compile time); it lives on
    // the stack for the whole call and the kernel only reads it. Both fds are
    // open for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE,
            &config as *const LoopConfig,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fd_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at a live, aligned local; the fd is valid.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn open_ro(dev: &Path) -> Result<File, ExportError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dev)
        .map_err(|e| ExportError::from_io("open device", dev, e))
}

fn is_block_device(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_block_device()
}

fn backing_len(file: &File, meta: &fs::Metadata, path: &Path) -> Result<u64, ExportError> {
    if is_block_device(meta) {
        fd_size(file).map_err(|e| ExportError::from_io("BLKGETSIZE64", path, e))
    } else {
        Ok(meta.len())
    }
}

fn loop_number(dev: &Path) -> Result<u32, ExportError> {
    dev.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("loop"))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| ExportError::Invalid(format!("{} is not a loop device", dev.display())))
}

fn sysfs(number: u32, rel: &str) -> Option<String> {
    fs::read_to_string(format!("{SYS_BLOCK}/loop{number}/{rel}"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

fn is_bound(number: u32) -> bool {
    Path::new(&format!("{SYS_BLOCK}/loop{number}/loop/backing_file")).exists()
}

fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

fn read_info(number: u32) -> Option<LoopInfo> {
    let major_minor = parse_major_minor(&sysfs(number, "dev")?)?;
    let flag = |rel: &str| sysfs(number, rel).is_some_and(|v| v.trim() == "1");
    let num = |rel: &str| {
        sysfs(number, rel)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let raw_backing = sysfs(number, "loop/backing_file");
    let (backing_file, backing_deleted) = match raw_backing {
        Some(b) => match b.strip_suffix(" (deleted)") {
            Some(stripped) => (Some(PathBuf::from(stripped)), true),
            None => (Some(PathBuf::from(b)), false),
        },
        None => (None, false),
    };
    let bound = backing_file.is_some();
    Some(LoopInfo {
        device: PathBuf::from(format!("/dev/loop{number}")),
        number,
        backing_file,
        backing_deleted,
        offset: if bound { num("loop/offset") } else { 0 },
        sizelimit: if bound { num("loop/sizelimit") } else { 0 },
        major_minor,
        direct_io: bound && flag("loop/dio"),
        read_only: flag("ro"),
        autoclear: bound && flag("loop/autoclear"),
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_device_numbers() {
        assert_eq!(loop_number(Path::new("/dev/loop12")).ok(), Some(12));
        assert!(loop_number(Path::new("/dev/vda")).is_err());
        assert!(loop_number(Path::new("/dev/loop")).is_err());
        assert_eq!(parse_major_minor("7:3\n"), Some((7, 3)));
        assert_eq!(parse_major_minor("7"), None);
    }

    #[test]
    fn misaligned_offset_is_invalid() {
        let opts = LoopOptions {
            offset: 100,
            ..LoopOptions::default()
        };
        let err = attach(Path::new("/nonexistent"), &opts).err();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(super::super::ExportErrorKind::Invalid)
        );
    }

    #[test]
    fn missing_backing_is_not_found() {
        let err = attach(Path::new("/nonexistent/blockd"), &LoopOptions::default()).err();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(super::super::ExportErrorKind::NotFound)
        );
    }

    #[test]
    fn detach_of_absent_device_is_unchanged() {
        let out = detach(Path::new("/dev/loop999999")).ok();
        assert_eq!(out, Some(DetachOutcome::Unchanged));
    }
}
