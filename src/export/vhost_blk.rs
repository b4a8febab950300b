//! The vhost-user-blk export: blockd itself serves a volume to a hypervisor
//! over a unix socket (`<run_dir>/vhost/<volume-id>.sock`), with no host
//! block device in between. Each export has a listener thread that takes one
//! frontend (QEMU) connection at a time through the rust-vmm crates, and one
//! worker thread per virtqueue. Workers batch the requests they find and do
//! the reads and writes straight between guest memory and the backing store,
//! through io_uring when the copy engine's probe allows it, else with
//! preadv/pwritev. Flush is an fdatasync; discard and write-zeroes punch
//! holes. QoS is a pair of token buckets per volume in this data path.
//! A resize updates the capacity in the config space and tells the frontend
//! through the backend request channel (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG).

use super::{ExportError, Exposed, QosLimits};
use crate::backend::{Change, Location};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Backend, Listener};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

type Mem = GuestMemoryMmap<()>;
type AtomicMem = GuestMemoryAtomic<Mem>;

pub const KIND: &str = "vhost-user-blk";
const SECTOR: u64 = 512;
const QUEUE_SIZE: usize = 256;
/// Virtqueues offered; the frontend may use fewer (`num-queues=`).
pub const NUM_QUEUES: usize = 4;
/// Data segments per request the guest may use (config `seg_max`).
const SEG_MAX: u32 = 128;
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

// ---------------------------------------------------------------------------
// Requests: parsing a descriptor chain (pure, tested without a guest).

/// One descriptor of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// What a guest asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

/// A parsed virtio-blk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// In 512-byte sectors.
    pub sector: u64,
    /// Data segments (readable for writes, writable for reads and get-id).
    pub data: Vec<Desc>,
    /// Where the one status byte goes.
    pub status: u64,
}

/// Why a chain is not a request we can even answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("chain too short")]
    TooShort,
    #[error("header descriptor is not readable or shorter than 16 bytes")]
    BadHeader,
    #[error("status descriptor is not a writable byte")]
    BadStatus,
    #[error("guest memory out of range")]
    Memory,
    #[error("data descriptors point the wrong way for this request")]
    Direction,
}

impl Request {
    /// Bytes of data the request carries.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|d| u64::from(d.len)).sum()
    }
}

/// Parses a chain: a 16-byte header (type, reserved, sector) first, the
/// status byte last, data in between. The header may share its descriptor
/// with data only in the layouts QEMU and Linux never use, so it must be a
/// descriptor of its own.
pub fn parse_request<M: GuestMemory>(mem: &M, descs: &[Desc]) -> Result<Request, ParseError> {
    if descs.len() < 2 {
        return Err(ParseError::TooShort);
    }
    let head = descs[0];
    if head.write || head.len < 16 {
        return Err(ParseError::BadHeader);
    }
    let mut hdr = [0u8; 16];
    mem.read_slice(&mut hdr, GuestAddress(head.addr))
        .map_err(|_| ParseError::Memory)?;
    let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
    let last = descs[descs.len() - 1];
    if !last.write || last.len < 1 {
        return Err(ParseError::BadStatus);
    }
    // The status byte is the last byte of the last descriptor; a last
    // descriptor longer than one byte also carries data (Windows drivers).
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(ParseError::Memory)?;
    let mut data: Vec<Desc> = descs[1..descs.len() - 1].to_vec();
    if last.len > 1 {
        data.push(Desc {
            len: last.len - 1,
            ..last
        });
    }
    let op = match ty {
        VIRTIO_BLK_T_IN => Op::Read,
        VIRTIO_BLK_T_OUT => Op::Write,
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_GET_ID => Op::GetId,
        VIRTIO_BLK_T_DISCARD => Op::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => Op::WriteZeroes,
        t => Op::Unsupported(t),
    };
    let want_write = matches!(op, Op::Read | Op::GetId);
    if matches!(
        op,
        Op::Read | Op::Write | Op::GetId | Op::Discard | Op::WriteZeroes
    ) && data.iter().any(|d| d.write != want_write)
    {
        return Err(ParseError::Direction);
    }
    Ok(Request {
        op,
        sector,
        data,
        status,
    })
}

/// One discard or write-zeroes segment: `(sector, sectors, unmap)`.
pub fn parse_segments<M: GuestMemory>(
    mem: &M,
    data: &[Desc],
) -> Result<Vec<(u64, u32, bool)>, ParseError> {
    let mut bytes = Vec::new();
    for d in data {
        let mut b = vec![0u8; d.len as usize];
        mem.read_slice(&mut b, GuestAddress(d.addr))
            .map_err(|_| ParseError::Memory)?;
        bytes.extend_from_slice(&b);
    }
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return Err(ParseError::TooShort);
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let sector = u64::from_le_bytes(c[0..8].try_into().unwrap_or([0; 8]));
            let n = u32::from_le_bytes(c[8..12].try_into().unwrap_or([0; 4]));
            let flags = u32::from_le_bytes(c[12..16].try_into().unwrap_or([0; 4]));
            (sector, n, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
        })
        .collect())
}

/// The virtio-blk config space (virtio 1.2, 5.2.4) for a capacity.
pub fn config_space(capacity_bytes: u64, num_queues: u16) -> [u8; 60] {
    let mut c = [0u8; 60];
    c[0..8].copy_from_slice(&(capacity_bytes / SECTOR).to_le_bytes());
    c[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes()); // size_max
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&4096u32.to_le_bytes()); // blk_size
    c[28..32].copy_from_slice(&(256u32).to_le_bytes()); // opt_io_size, in blocks
    c[34..36].copy_from_slice(&num_queues.to_le_bytes());
    c[36..40].copy_from_slice(&(u32::MAX / 2).to_le_bytes()); // max_discard_sectors
    c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
    c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment
    c[48..52].copy_from_slice(&(u32::MAX / 2).to_le_bytes()); // max_write_zeroes_sectors
    c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

// ---------------------------------------------------------------------------
// QoS: token buckets.

/// A token bucket that may go into debt: a request larger than the burst
/// still passes, and later ones wait until the debt is paid.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate_per_sec: u64) -> Bucket {
        let rate = rate_per_sec as f64;
        // A tenth of a second of burst.
        let burst = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens; returns how long the caller must wait first.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Buckets for one volume: IOPS and bytes, reads and writes each.
#[derive(Debug, Default)]
struct Buckets {
    read_iops: Option<Bucket>,
    write_iops: Option<Bucket>,
    read_bytes: Option<Bucket>,
    write_bytes: Option<Bucket>,
}

impl Buckets {
    fn new(l: &QosLimits) -> Buckets {
        let iops = |_| l.max_iops.map(|v| Bucket::new(u64::from(v)));
        let bps = |_| {
            l.max_throughput_mb
                .map(|v| Bucket::new(u64::from(v) * 1_000_000))
        };
        Buckets {
            read_iops: iops(()),
            write_iops: iops(()),
            read_bytes: bps(()),
            write_bytes: bps(()),
        }
    }

    fn take(&mut self, write: bool, bytes: u64) -> Duration {
        let now = Instant::now();
        let (i, b) = if write {
            (&mut self.write_iops, &mut self.write_bytes)
        } else {
            (&mut self.read_iops, &mut self.read_bytes)
        };
        let a = i.as_mut().map_or(Duration::ZERO, |x| x.take(1, now));
        let c = b.as_mut().map_or(Duration::ZERO, |x| x.take(bytes, now));
        a.max(c)
    }
}

// ---------------------------------------------------------------------------
// The state shared by an export's threads.

/// A connected frontend's backend request channel.
struct Channel {
    /// Kept so the crate's end stays open.
    _backend: Backend,
    fd: OwnedFd,
    inode: u64,
}

/// Socket inodes of channels in use, so a scan never takes another's.
static CLAIMED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

impl Drop for Channel {
    fn drop(&mut self) {
        if let Ok(mut c) = CLAIMED.lock()
            && let Some(set) = c.as_mut()
        {
            set.remove(&self.inode);
        }
    }
}

struct Shared {
    file: File,
    backing: PathBuf,
    block_device: bool,
    read_only: bool,
    capacity: AtomicU64,
    id: [u8; ID_BYTES],
    qos: Mutex<Buckets>,
    uring: bool,
    channel: Mutex<Option<Channel>>,
    connected: AtomicBool,
    shutdown: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
    stop: AtomicBool,
}

impl Shared {
    fn new(file: File, path: &Path, block_device: bool, read_only: bool) -> Shared {
        let mut id = [0u8; ID_BYTES];
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let n = stem.len().min(ID_BYTES);
        id[..n].copy_from_slice(&stem.as_bytes()[..n]);
        Shared {
            file,
            backing: path.to_path_buf(),
            block_device,
            read_only,
            capacity: AtomicU64::new(0),
            id,
            qos: Mutex::new(Buckets::default()),
            uring: crate::copy::probe() == crate::copy::EngineKind::Uring,
            channel: Mutex::new(None),
            connected: AtomicBool::new(false),
            shutdown: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    fn size_now(&self) -> io::Result<u64> {
        if self.block_device {
            let mut n: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
            // points at a live local.
            let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64, &mut n) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// Tells the frontend that the config space changed. Returns whether a
    /// channel was there to tell.
    fn notify_config_change(&self) -> io::Result<bool> {
        let ch = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ch) = ch.as_ref() else {
            return Ok(false);
        };
        // Header: request CONFIG_CHANGE_MSG (2), flags version 1, size 0.
        let mut msg = [0u8; 12];
        msg[0..4].copy_from_slice(&2u32.to_le_bytes());
        msg[4..8].copy_from_slice(&1u32.to_le_bytes());
        // SAFETY: sends 12 bytes from a live buffer on an fd we own.
        let n = unsafe {
            libc::send(
                ch.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n != msg.len() as isize {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Finds the socket the frontend just handed over as the backend request
/// channel: an AF_UNIX stream socket of ours with no local name (our
/// accepted connections carry the listener's path) that no channel claims.
fn find_backend_channel() -> Option<(OwnedFd, u64)> {
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    let set = claimed.get_or_insert_with(HashSet::new);
    let mut best: Option<(RawFd, u64)> = None;
    for e in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let Some(ino) = link
            .to_str()
            .and_then(|s| s.strip_prefix("socket:["))
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if set.contains(&ino) || !unnamed_unix_stream(fd) {
            continue;
        }
        if best.is_none_or(|(b, _)| fd > b) {
            best = Some((fd, ino));
        }
    }
    let (fd, ino) = best?;
    // SAFETY: dup of an fd that is open in this process; the copy is ours.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    set.insert(ino);
    // SAFETY: `dup` is a fresh descriptor that nothing else owns.
    Some((unsafe { OwnedFd::from_raw_fd(dup) }, ino))
}

fn unnamed_unix_stream(fd: RawFd) -> bool {
    // SAFETY: getsockname/getsockopt write within the sizes passed, into
    // live locals.
    unsafe {
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        ) != 0
            || ty != libc::SOCK_STREAM
        {
            return false;
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        let mut alen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut alen) != 0 {
            return false;
        }
        addr.sun_family == libc::AF_UNIX as libc::sa_family_t
            && (alen as usize <= std::mem::size_of::<libc::sa_family_t>() || addr.sun_path[0] == 0)
    }
}

// ---------------------------------------------------------------------------
// The vhost-user backend of one connection.

#[derive(Clone)]
struct BlkBackend {
    shared: Arc<Shared>,
    mem: Arc<RwLock<Option<AtomicMem>>>,
    event_idx: Arc<AtomicBool>,
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock<AtomicMem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.shared.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cap = self.shared.capacity.load(Ordering::Acquire);
        let c = config_space(cap, NUM_QUEUES as u16);
        let start = (offset as usize).min(c.len());
        let end = (offset as usize + size as usize).min(c.len());
        let mut v = c[start..end].to_vec();
        v.resize(size as usize, 0);
        v
    }

    fn update_memory(&self, mem: AtomicMem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        match find_backend_channel() {
            Some((fd, inode)) => {
                *self
                    .shared
                    .channel
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Channel {
                    _backend: backend,
                    fd,
                    inode,
                });
            }
            None => tracing::warn!(
                backing = %self.shared.backing.display(),
                "vhost-user-blk: cannot find the backend request channel; resizes reach the guest only after a reconnect"
            ),
        }
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..NUM_QUEUES).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        _device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock<AtomicMem>],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected event set"));
        }
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        for vring in vrings {
            WORKER.with(|w| {
                let mut w = w.borrow_mut();
                loop {
                    if event_idx {
                        let _ = vring.disable_notification();
                    }
                    process_vring(&mut w, &self.shared, &atomic, vring);
                    if !event_idx || !vring.enable_notification().unwrap_or(false) {
                        break;
                    }
                }
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The data path.

/// Per worker thread: an io_uring when the probe allows one.
struct Worker {
    ring: Option<io_uring::IoUring>,
}

thread_local! {
    static WORKER: std::cell::RefCell<Worker> = std::cell::RefCell::new(Worker::new());
}

impl Worker {
    fn new() -> Worker {
        let ring = if crate::copy::probe() == crate::copy::EngineKind::Uring {
            io_uring::IoUring::new(QUEUE_SIZE as u32).ok()
        } else {
            None
        };
        Worker { ring }
    }
}

/// A read or write waiting to be submitted.
struct Pending {
    head: u16,
    status: u64,
    write: bool,
    offset: u64,
    iovs: Vec<libc::iovec>,
    len: u64,
}

fn iovecs(mem: &Mem, data: &[Desc]) -> Option<Vec<libc::iovec>> {
    data.iter()
        .map(|d| {
            let s = mem.get_slice(GuestAddress(d.addr), d.len as usize).ok()?;
            Some(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: d.len as usize,
            })
        })
        .collect()
}

fn process_vring(
    w: &mut Worker,
    shared: &Shared,
    atomic: &AtomicMem,
    vring: &VringRwLock<AtomicMem>,
) {
    let mem = atomic.memory();
    let mut done: Vec<(u16, u32)> = Vec::new();
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        let chain = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone());
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        let descs: Vec<Desc> = chain
            .clone()
            .map(|d| Desc {
                addr: d.addr().0,
                len: d.len(),
                write: d.is_write_only(),
            })
            .collect();
        let req = match parse_request(&*mem, &descs) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "vhost-user-blk: malformed request");
                done.push((head, 0));
                continue;
            }
        };
        match handle(w, shared, &mem, head, req, &mut batch) {
            Some(x) => done.push(x),
            None => {
                if batch.len() >= QUEUE_SIZE / 2 {
                    submit(w, shared, &mem, &mut batch, &mut done);
                }
            }
        }
    }
    submit(w, shared, &mem, &mut batch, &mut done);
    if done.is_empty() {
        return;
    }
    for (head, len) in done {
        let _ = vring.add_used(head, len);
    }
    if vring.needs_notification().unwrap_or(true) {
        let _ = vring.signal_used_queue();
    }
}

fn set_status(mem: &Mem, addr: u64, s: u32) {
    let _ = mem.write_obj(s as u8, GuestAddress(addr));
}

/// Handles one request: reads and writes go to `batch`; everything else
/// completes now (after the batch, for a flush). Returns the used entry
/// when it completed.
fn handle(
    w: &mut Worker,
    shared: &Shared,
    mem: &Mem,
    head: u16,
    req: Request,
    batch: &mut Vec<Pending>,
) -> Option<(u16, u32)> {
    let cap = shared.capacity.load(Ordering::Acquire);
    let offset = req.sector.checked_mul(SECTOR);
    let len = req.data_len();
    let in_range = offset.is_some_and(|o| o.checked_add(len).is_some_and(|e| e <= cap));
    let status = req.status;
    let finish = |s: u32, used: u32| {
        set_status(mem, status, s);
        Some((head, used + 1))
    };
    match req.op {
        Op::Read | Op::Write => {
            let write = req.op == Op::Write;
            if write && shared.read_only {
                return finish(VIRTIO_BLK_S_IOERR, 0);
            }
            if !in_range {
                return finish(VIRTIO_BLK_S_IOERR, 0);
            }
            let Some(iovs) = iovecs(mem, &req.data) else {
                return finish(VIRTIO_BLK_S_IOERR, 0);
            };
            let wait = shared
                .qos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(write, len);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            // Requests in one batch run concurrently; one that overlaps a
            // pending request with a write on either side waits for it, so
            // a read after a write sees the write.
            let off = offset.unwrap_or(0);
            if batch
                .iter()
                .any(|p| (p.write || write) && p.offset < off + len && off < p.offset + p.len)
            {
                let mut done = Vec::new();
                submit(w, shared, mem, batch, &mut done);
                PENDING_DONE.with(|p| p.borrow_mut().extend(done));
            }
            batch.push(Pending {
                head,
                status,
                write,
                offset: offset.unwrap_or(0),
                iovs,
                len,
            });
            None
        }
        Op::Flush => {
            let mut done = Vec::new();
            submit(w, shared, mem, batch, &mut done);
            // Entries of the batch were completed in `done`; report them
            // through the used ring by the caller is not possible from
            // here, so their status bytes are set and they are returned
            // by the flush path of the caller below.
            PENDING_DONE.with(|p| p.borrow_mut().extend(done));
            let r = if shared.read_only {
                Ok(())
            } else {
                nix::unistd::fdatasync(&shared.file).map_err(io::Error::from)
            };
            finish(status_of(&r), 0)
        }
        Op::GetId => {
            let mut left = &shared.id[..];
            let mut used = 0u32;
            for d in &req.data {
                let n = left.len().min(d.len as usize);
                if mem.write_slice(&left[..n], GuestAddress(d.addr)).is_err() {
                    return finish(VIRTIO_BLK_S_IOERR, 0);
                }
                left = &left[n..];
                used += n as u32;
            }
            finish(VIRTIO_BLK_S_OK, used)
        }
        Op::Discard | Op::WriteZeroes => {
            if shared.read_only {
                return finish(VIRTIO_BLK_S_IOERR, 0);
            }
            let segs = match parse_segments(mem, &req.data) {
                Ok(s) => s,
                Err(_) => return finish(VIRTIO_BLK_S_UNSUPP, 0),
            };
            let mut done = Vec::new();
            submit(w, shared, mem, batch, &mut done);
            PENDING_DONE.with(|p| p.borrow_mut().extend(done));
            let mut r = Ok(());
            for (sector, n, _unmap) in segs {
                let (Some(off), Some(l)) =
                    (sector.checked_mul(SECTOR), u64::from(n).checked_mul(SECTOR))
                else {
                    return finish(VIRTIO_BLK_S_IOERR, 0);
                };
                if off.checked_add(l).is_none_or(|e| e > cap) {
                    return finish(VIRTIO_BLK_S_IOERR, 0);
                }
                // A discard of a block device need not read back as zeros,
                // so write-zeroes always zeroes there, unmap or not.
                let zero = req.op == Op::WriteZeroes && shared.block_device;
                r = punch(shared, off, l, zero);
                if r.is_err() {
                    break;
                }
            }
            finish(status_of(&r), 0)
        }
        Op::Unsupported(_) => finish(VIRTIO_BLK_S_UNSUPP, 0),
    }
}

thread_local! {
    /// Completions a flush or discard drained from the batch early.
    static PENDING_DONE: std::cell::RefCell<Vec<(u16, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn status_of(r: &io::Result<()>) -> u32 {
    match r {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(_) => VIRTIO_BLK_S_IOERR,
    }
}

/// Frees (or zeroes) a range: a hole in a file, a discard (or zero-out) on
/// a block device. Both read back as zeroes.
fn punch(shared: &Shared, off: u64, len: u64, zero_only: bool) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let fd = shared.file.as_raw_fd();
    if shared.block_device {
        let range = [off, len];
        let op = if zero_only { BLKZEROOUT } else { BLKDISCARD };
        // SAFETY: the ioctl reads two u64 from a live local array.
        let r = unsafe { libc::ioctl(fd, op, range.as_ptr()) };
        if r < 0 {
            // Devices without discard still zero.
            // SAFETY: as above.
            if unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        return Ok(());
    }
    // SAFETY: fallocate on an fd we own, with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Submits the batch and waits for all of it; each entry's status byte is
/// set and its used entry appended to `done`.
fn submit(
    w: &mut Worker,
    shared: &Shared,
    mem: &Mem,
    batch: &mut Vec<Pending>,
    done: &mut Vec<(u16, u32)>,
) {
    PENDING_DONE.with(|p| done.append(&mut p.borrow_mut()));
    if batch.is_empty() {
        return;
    }
    let fd = shared.file.as_raw_fd();
    // A buffered write to a regular file that cannot complete without
    // blocking is handed by io_uring to a kernel worker, serialised per
    // inode, and the thread hop costs more than it saves. Such writes go
    // through pwritev on this thread; reads and block-device writes use the
    // ring.
    let on_ring = |p: &Pending| !p.write || shared.block_device;
    let ringed = batch.iter().filter(|p| on_ring(p)).count();
    // Per request: its ring completion, if it went through the ring.
    let mut results: Vec<Option<io::Result<u64>>> = (0..batch.len()).map(|_| None).collect();
    let mut queued = vec![false; batch.len()];
    let mut broken = false;
    if let Some(ring) = w.ring.as_mut().filter(|_| ringed > 0) {
        let mut pushed = 0;
        {
            let mut sq = ring.submission();
            for (i, p) in batch.iter().enumerate() {
                if !on_ring(p) {
                    continue;
                }
                let e = if p.write {
                    io_uring::opcode::Writev::new(
                        io_uring::types::Fd(fd),
                        p.iovs.as_ptr(),
                        p.iovs.len() as u32,
                    )
                    .offset(p.offset)
                    .build()
                } else {
                    io_uring::opcode::Readv::new(
                        io_uring::types::Fd(fd),
                        p.iovs.as_ptr(),
                        p.iovs.len() as u32,
                    )
                    .offset(p.offset)
                    .build()
                }
                .user_data(i as u64);
                // SAFETY: the iovecs and the guest memory they point at live
                // until every completion is reaped below.
                if unsafe { sq.push(&e) }.is_err() {
                    // The ring is full: the rest go through plain calls.
                    break;
                }
                queued[i] = true;
                pushed += 1;
            }
        }
        // Every queued request is reaped before its memory is given back:
        // interrupted waits are retried, and a ring that fails for good
        // fails its requests rather than redoing them while they may
        // still be in flight.
        let mut got = 0;
        while got < pushed {
            let waited = loop {
                match ring.submit_and_wait(pushed - got) {
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                        ) => {}
                    other => break other,
                }
            };
            if waited.is_err() {
                broken = true;
                break;
            }
            for c in ring.completion() {
                let i = c.user_data() as usize;
                if i < results.len() && results[i].is_none() {
                    got += 1;
                    results[i] = Some(if c.result() < 0 {
                        Err(io::Error::from_raw_os_error(-c.result()))
                    } else {
                        Ok(c.result() as u64)
                    });
                }
            }
        }
    }
    if broken {
        tracing::warn!("vhost-user-blk: io_uring failed; this worker goes on with preadv/pwritev");
        w.ring = None;
    }
    for (i, p) in batch.drain(..).enumerate() {
        let r = match results[i].take() {
            Some(Ok(n)) if n == p.len => Ok(()),
            // A short transfer: finish the rest with plain calls.
            Some(Ok(n)) => rw_all(fd, p.write, &p.iovs, p.offset, n),
            Some(Err(e)) => Err(io::Error::from_raw_os_error(
                e.raw_os_error().unwrap_or(libc::EIO),
            )),
            // Queued on a ring that broke: its fate is unknown, so it fails.
            None if queued[i] => Err(io::Error::from_raw_os_error(libc::EIO)),
            None => rw_all(fd, p.write, &p.iovs, p.offset, 0),
        };
        if let Err(e) = &r {
            tracing::warn!(error = %e, offset = p.offset, write = p.write, "vhost-user-blk: I/O error");
        }
        set_status(mem, p.status, status_of(&r));
        let used = if p.write { 1 } else { p.len as u32 + 1 };
        done.push((p.head, used));
    }
}

/// preadv/pwritev until all of `iovs` past `skip` bytes is transferred.
fn rw_all(
    fd: RawFd,
    write: bool,
    iovs: &[libc::iovec],
    offset: u64,
    mut skip: u64,
) -> io::Result<()> {
    let total: u64 = iovs.iter().map(|v| v.iov_len as u64).sum();
    while skip < total {
        // Build the remaining iovec list.
        let mut rest = Vec::with_capacity(iovs.len());
        let mut s = skip;
        for v in iovs {
            let l = v.iov_len as u64;
            if s >= l {
                s -= l;
                continue;
            }
            rest.push(libc::iovec {
                // SAFETY: `s < l`, so the pointer stays inside this iovec.
                iov_base: unsafe { v.iov_base.cast::<u8>().add(s as usize) }.cast(),
                iov_len: (l - s) as usize,
            });
            s = 0;
        }
        let off = (offset + skip) as libc::off_t;
        // SAFETY: the iovecs point into mapped guest memory of the given
        // lengths; the kernel reads or writes only within them.
        let n = unsafe {
            if write {
                libc::pwritev(fd, rest.as_ptr(), rest.len().min(1024) as i32, off)
            } else {
                libc::preadv(fd, rest.as_ptr(), rest.len().min(1024) as i32, off)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        skip += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The exporter.

/// One served volume.
struct Served {
    shared: Arc<Shared>,
    socket: PathBuf,
    /// The socket file's inode: a later daemon may have bound the path anew.
    inode: u64,
    /// A second handle on the listening socket, to wake its accept.
    wake: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Serves volumes over vhost-user-blk sockets in `dir`.
pub struct VhostExporter {
    dir: PathBuf,
    served: Mutex<HashMap<PathBuf, Served>>,
}

impl VhostExporter {
    pub fn new(dir: &Path) -> VhostExporter {
        VhostExporter {
            dir: dir.to_path_buf(),
            served: Mutex::new(HashMap::new()),
        }
    }

    /// The socket volume `volume_id` is served on. Ids are server-made
    /// UUIDs; anything else that could leave the dir is refused.
    pub fn socket_for(&self, volume_id: &str) -> Result<PathBuf, ExportError> {
        let plain = !volume_id.is_empty()
            && volume_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(ExportError::Invalid(format!(
                "cannot name a socket after volume id {volume_id:?}"
            )));
        }
        Ok(self.dir.join(format!("{volume_id}.sock")))
    }

    /// Whether a frontend is connected to this socket now.
    pub fn connected(&self, socket: &Path) -> bool {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(socket)
            .is_some_and(|s| s.shared.connected.load(Ordering::Acquire))
    }

    fn start(
        &self,
        socket: PathBuf,
        path: &Path,
        block_device: bool,
        read_only: bool,
    ) -> Result<Served, ExportError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| ExportError::from_io("open", path, e))?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| ExportError::from_io("create socket dir", &self.dir, e))?;
        let stem = socket
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let shared = Arc::new(Shared::new(file, path, block_device, read_only));
        let size = shared
            .size_now()
            .map_err(|e| ExportError::from_io("size", path, e))?;
        shared.capacity.store(size, Ordering::Release);
        // Bound before export returns: QEMU reads the capacity at start.
        // A stale socket of a previous run is replaced.
        let _ = std::fs::remove_file(&socket);
        let ul = std::os::unix::net::UnixListener::bind(&socket)
            .map_err(|e| ExportError::from_io("listen", &socket, e))?;
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(&socket).map_err(|e| ExportError::from_io("stat", &socket, e))?,
        );
        let wake = ul
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| ExportError::from_io("dup", &socket, e))?;
        let listener = Listener::from(ul);
        let s2 = Arc::clone(&shared);
        let name = format!("vhost-{}", stem.chars().take(8).collect::<String>());
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || serve(listener, s2, name))
            .map_err(|e| ExportError::from_io("spawn", path, e))?;
        tracing::info!(socket = %socket.display(), backing = %path.display(), read_only, io_uring = shared.uring, "vhost-user-blk export serving");
        Ok(Served {
            shared,
            socket,
            inode,
            wake,
            thread: Some(thread),
        })
    }

    fn stop(&self, mut s: Served) {
        s.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = s
            .shared
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.shutdown();
        }
        // Shutting the listening socket down wakes its accept.
        // SAFETY: shutdown on a descriptor we own.
        unsafe { libc::shutdown(s.wake.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = s.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                if let Some(h) = s
                    .shared
                    .shutdown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    h.shutdown();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(socket = %s.socket.display(), "vhost-user-blk: listener did not stop in time");
            }
        }
        let ours = std::fs::metadata(&s.socket)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == s.inode)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&s.socket);
        }
    }
}

/// Takes one frontend connection after another until stopped.
fn serve(mut listener: Listener, shared: Arc<Shared>, name: String) {
    while !shared.stop.load(Ordering::SeqCst) {
        let backend = BlkBackend {
            shared: Arc::clone(&shared),
            mem: Arc::new(RwLock::new(None)),
            event_idx: Arc::new(AtomicBool::new(false)),
        };
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let mut daemon = match VhostUserDaemon::new(name.clone(), backend, mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "vhost-user-blk: cannot set up a connection");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            tracing::warn!(error = %e, "vhost-user-blk: accept failed");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if shared.stop.load(Ordering::SeqCst) {
            daemon.request_shutdown();
        } else {
            shared.connected.store(true, Ordering::Release);
            *shared.shutdown.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
            tracing::info!(backing = %shared.backing.display(), "vhost-user-blk: frontend connected");
        }
        if let Err(e) = daemon.wait() {
            tracing::info!(error = %e, "vhost-user-blk: connection ended");
        }
        for h in daemon.get_epoll_handlers() {
            h.send_exit_event();
        }
        drop(daemon);
        shared.connected.store(false, Ordering::Release);
        *shared.shutdown.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *shared.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for VhostExporter {
    fn drop(&mut self) {
        let all: Vec<Served> = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            self.stop(s);
        }
    }
}

impl super::Exporter for VhostExporter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn handles(&self, host_path: &str) -> bool {
        Path::new(host_path).starts_with(&self.dir)
    }

    fn export(
        &self,
        volume_id: &str,
        loc: &Location,
        read_only: bool,
    ) -> Result<String, ExportError> {
        let (path, block) = match loc {
            Location::File(p) => (p, false),
            Location::BlockDevice(p) => (p, true),
        };
        let block = block
            || std::fs::metadata(path)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
        let socket = self.socket_for(volume_id)?;
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = served.get(&socket) {
            if s.shared.read_only == read_only {
                return Ok(socket.display().to_string());
            }
            if s.shared.connected.load(Ordering::Acquire) {
                return Err(ExportError::Busy {
                    device: socket.clone(),
                    reason: "served with another read-only mode to a connected guest".into(),
                });
            }
            if let Some(old) = served.remove(&socket) {
                self.stop(old);
            }
        }
        let s = self.start(socket.clone(), path, block, read_only)?;
        served.insert(socket.clone(), s);
        Ok(socket.display().to_string())
    }

    fn unexport(&self, host_path: &str) -> Result<Change, ExportError> {
        let socket = PathBuf::from(host_path);
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = served.get(&socket) else {
            let _ = std::fs::remove_file(&socket);
            return Ok(Change::Unchanged);
        };
        if s.shared.connected.load(Ordering::Acquire) {
            return Err(ExportError::Busy {
                device: socket,
                reason: "a guest is connected".into(),
            });
        }
        if let Some(s) = served.remove(&socket) {
            self.stop(s);
        }
        Ok(Change::Changed)
    }

    fn refresh_size(&self, host_path: &str) -> Result<u64, ExportError> {
        let socket = PathBuf::from(host_path);
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let s = served
            .get(&socket)
            .ok_or_else(|| ExportError::NotFound(socket.clone()))?;
        let size = s
            .shared
            .size_now()
            .map_err(|e| ExportError::from_io("size", &s.shared.backing, e))?;
        let old = s.shared.capacity.swap(size, Ordering::AcqRel);
        if old != size {
            match s.shared.notify_config_change() {
                Ok(true) => {
                    tracing::info!(socket = %host_path, size, "vhost-user-blk: capacity change sent")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(socket = %host_path, error = %e, "vhost-user-blk: cannot send the capacity change; the guest sees it after a reconnect")
                }
            }
        }
        Ok(size)
    }

    fn set_qos(&self, host_path: &str, limits: &QosLimits) -> Result<bool, ExportError> {
        if limits.max_iops == Some(0) || limits.max_throughput_mb == Some(0) {
            return Err(ExportError::Invalid(
                "a QoS limit of 0 is not allowed; use None".into(),
            ));
        }
        let socket = PathBuf::from(host_path);
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let s = served
            .get(&socket)
            .ok_or_else(|| ExportError::NotFound(socket.clone()))?;
        *s.shared.qos.lock().unwrap_or_else(|p| p.into_inner()) = Buckets::new(limits);
        Ok(true)
    }

    fn exposed_under(&self, dir: &Path) -> Vec<Exposed> {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.shared.backing.starts_with(dir))
            .map(|s| Exposed {
                host_path: s.socket.display().to_string(),
                backing: s.shared.backing.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    fn mem() -> Mem {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn header(m: &Mem, at: u64, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn d(addr: u64, len: u32, write: bool) -> Desc {
        Desc { addr, len, write }
    }

    #[test]
    fn parses_reads_writes_and_status_placement() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 8);
        let r = parse_request(
            &m,
            &[
                d(0x1000, 16, false),
                d(0x2000, 4096, true),
                d(0x3000, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(r.op, Op::Read);
        assert_eq!(r.sector, 8);
        assert_eq!(r.data_len(), 4096);
        assert_eq!(r.status, 0x3000);
        // Data and status sharing the last descriptor.
        let r = parse_request(&m, &[d(0x1000, 16, false), d(0x2000, 513, true)]).unwrap();
        assert_eq!(r.data, vec![d(0x2000, 512, true)]);
        assert_eq!(r.status, 0x2000 + 512);
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let r = parse_request(
            &m,
            &[
                d(0x1000, 16, false),
                d(0x2000, 512, false),
                d(0x3000, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(r.op, Op::Write);
        header(&m, 0x1000, 99, 0);
        let r = parse_request(&m, &[d(0x1000, 16, false), d(0x3000, 1, true)]).unwrap();
        assert_eq!(r.op, Op::Unsupported(99));
    }

    #[test]
    fn refuses_malformed_chains() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            parse_request(&m, &[d(0x1000, 16, false)]),
            Err(ParseError::TooShort)
        );
        assert_eq!(
            parse_request(&m, &[d(0x1000, 8, false), d(0x3000, 1, true)]),
            Err(ParseError::BadHeader)
        );
        assert_eq!(
            parse_request(&m, &[d(0x1000, 16, false), d(0x3000, 1, false)]),
            Err(ParseError::BadStatus)
        );
        // A read whose data buffer the device may not write.
        assert_eq!(
            parse_request(
                &m,
                &[
                    d(0x1000, 16, false),
                    d(0x2000, 512, false),
                    d(0x3000, 1, true)
                ]
            ),
            Err(ParseError::Direction)
        );
        assert_eq!(
            parse_request(&m, &[d(0x10_0000_0000, 16, false), d(0x3000, 1, true)]),
            Err(ParseError::Memory)
        );
    }

    #[test]
    fn discard_segments_and_config_space() {
        let m = mem();
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&64u64.to_le_bytes());
        seg[8..12].copy_from_slice(&16u32.to_le_bytes());
        seg[12..16].copy_from_slice(&VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.to_le_bytes());
        m.write_slice(&seg, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            parse_segments(&m, &[d(0x2000, 16, false)]).unwrap(),
            vec![(64, 16, true)]
        );
        assert!(parse_segments(&m, &[d(0x2000, 15, false)]).is_err());
        let c = config_space(1 << 30, 2);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            (1 << 30) / 512
        );
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
    }

    #[test]
    fn token_bucket_spreads_work_over_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100);
        // Burst of a tenth of a second, then each token costs 10 ms.
        let mut waited = Duration::ZERO;
        for _ in 0..110 {
            waited += b.take(1, t0);
        }
        assert!(waited > Duration::from_millis(100), "{waited:?}");
        // After a second of rest the debt is paid and the burst refilled.
        assert_eq!(b.take(1, t0 + Duration::from_secs(2)), Duration::ZERO);
        // One request larger than the burst passes, the next one waits.
        let mut b = Bucket::new(1_000_000);
        assert_eq!(b.take(100_000, t0), Duration::ZERO);
        assert!(b.take(1_000_000, t0) >= Duration::from_millis(900));
    }

    fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Puts `descs` on a ready 16-entry queue in `m`, runs one worker over
    /// it, and returns the used ring's address.
    fn run_queue(m: &Mem, descs: &[RawDescriptor], shared: &Shared) -> u64 {
        let q = MockSplitQueue::new(m, 16);
        q.add_desc_chains(descs, 0).unwrap();
        let atomic = GuestMemoryAtomic::new(m.clone());
        let vring = VringRwLock::new(atomic.clone(), 16).unwrap();
        vring
            .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
            .unwrap();
        vring.set_queue_size(16);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        process_vring(&mut Worker::new(), shared, &atomic, &vring);
        q.used_addr().0
    }

    #[test]
    fn queue_handling_writes_reads_flushes_and_answers_get_id() {
        use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0123456789abcdef0123456789.img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        let shared = Shared::new(f, &path, false, false);
        shared.capacity.store(1 << 20, Ordering::Release);

        let m = mem();
        let n = VRING_DESC_F_NEXT as u16;
        let w = VRING_DESC_F_WRITE as u16;
        // write 4 KiB of 0xab at sector 8; read it back; flush; get-id.
        header(&m, 0x10_0000, VIRTIO_BLK_T_OUT, 8);
        m.write_slice(&[0xab; 4096], GuestAddress(0x11_0000))
            .unwrap();
        header(&m, 0x12_0000, VIRTIO_BLK_T_IN, 8);
        header(&m, 0x14_0000, VIRTIO_BLK_T_FLUSH, 0);
        header(&m, 0x15_0000, VIRTIO_BLK_T_GET_ID, 0);
        let descs = [
            raw(0x10_0000, 16, n, 1),
            raw(0x11_0000, 4096, n, 2),
            raw(0x11_8000, 1, w, 0),
            raw(0x12_0000, 16, n, 4),
            raw(0x13_0000, 4096, n | w, 5),
            raw(0x13_8000, 1, w, 0),
            raw(0x14_0000, 16, n, 7),
            raw(0x14_8000, 1, w, 0),
            raw(0x15_0000, 16, n, 9),
            raw(0x15_4000, 20, n | w, 10),
            raw(0x15_8000, 1, w, 0),
        ];
        let used = run_queue(&m, &descs, &shared);

        let used_idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(used_idx, 4, "every request completed");
        for st in [0x11_8000u64, 0x13_8000, 0x14_8000, 0x15_8000] {
            let s: u8 = m.read_obj(GuestAddress(st)).unwrap();
            assert_eq!(u32::from(s), VIRTIO_BLK_S_OK, "status at {st:#x}");
        }
        let mut back = [0u8; 4096];
        m.read_slice(&mut back, GuestAddress(0x13_0000)).unwrap();
        assert!(back.iter().all(|&b| b == 0xab), "the read saw the write");
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[4096..8192].iter().all(|&b| b == 0xab));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x15_4000)).unwrap();
        assert_eq!(&id, b"0123456789abcdef0123");
    }

    #[test]
    fn out_of_range_and_read_only_writes_fail_with_ioerr() {
        use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let shared = Shared::new(f, &path, false, true);
        shared.capacity.store(1 << 16, Ordering::Release);
        let m = mem();
        let n = VRING_DESC_F_NEXT as u16;
        let w = VRING_DESC_F_WRITE as u16;
        header(&m, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
        header(&m, 0x12_0000, VIRTIO_BLK_T_IN, 1 << 20);
        let descs = [
            raw(0x10_0000, 16, n, 1),
            raw(0x11_0000, 512, n, 2),
            raw(0x11_8000, 1, w, 0),
            raw(0x12_0000, 16, n, 4),
            raw(0x13_0000, 512, n | w, 5),
            raw(0x13_8000, 1, w, 0),
        ];
        run_queue(&m, &descs, &shared);
        for st in [0x11_8000u64, 0x13_8000] {
            let s: u8 = m.read_obj(GuestAddress(st)).unwrap();
            assert_eq!(u32::from(s), VIRTIO_BLK_S_IOERR, "status at {st:#x}");
        }
    }
}
