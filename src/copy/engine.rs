//! The two copy engines over one block list, and the hasher thread they share.
//!
//! io_uring: up to QD reads in flight into registered, page-aligned buffers;
//! a finished read becomes a write from the same buffer; a finished write
//! hands the buffer to the hasher (or straight back to the pool). Short I/O
//! and EAGAIN are resubmitted from where they stopped.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use io_uring::{IoUring, opcode, types};

use super::extents::Block;
use super::manifest::{CHUNK_SIZE, Manifest, chunk_len, zero_hash};
use super::{CancelToken, CopyError, CopyOptions, EngineKind, Progress};

pub(crate) struct Fds {
    pub src: RawFd,
    pub dst: RawFd,
    pub src_direct: Option<RawFd>,
    pub dst_direct: Option<RawFd>,
}

const ALIGN: usize = 4096;
const NO_MISMATCH: u64 = u64::MAX;

fn aligned(off: u64, len: u64) -> bool {
    off.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN as u64)
}

impl Fds {
    /// The direct fd when the I/O is aligned, else the buffered one.
    fn read_fd(&self, off: u64, len: u64) -> RawFd {
        match self.src_direct {
            Some(fd) if aligned(off, len) => fd,
            _ => self.src,
        }
    }
    fn write_fd(&self, off: u64, len: u64) -> RawFd {
        match self.dst_direct {
            Some(fd) if aligned(off, len) => fd,
            _ => self.dst,
        }
    }
}

/// `n` page-aligned buffers of `size` bytes in one allocation.
struct Buffers {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    size: usize,
    n: usize,
}

impl Buffers {
    fn new(n: usize, size: usize) -> Result<Self, CopyError> {
        let layout = std::alloc::Layout::from_size_align(n * size, ALIGN)
            .map_err(|_| CopyError::Unsupported(format!("buffer pool of {n} x {size} bytes")))?;
        // SAFETY: the layout has a non-zero size (n >= 1, size >= 4096).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(CopyError::io(
                "allocate buffers",
                io::Error::from(io::ErrorKind::OutOfMemory),
            ));
        }
        Ok(Buffers {
            ptr,
            layout,
            size,
            n,
        })
    }
    fn at(&self, i: usize) -> *mut u8 {
        // SAFETY: i < n, so the offset stays inside the allocation.
        unsafe { self.ptr.add(i * self.size) }
    }
    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.n)
            .map(|i| libc::iovec {
                iov_base: self.at(i).cast(),
                iov_len: self.size,
            })
            .collect()
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: ptr came from alloc_zeroed with this layout; all users (ring
        // ops and the hasher) are finished before the pool is dropped.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A finished block lent to the hasher; the buffer index goes back when done.
struct Piece {
    buf: usize,
    ptr: *const u8,
    off: u64,
    len: usize,
}

// SAFETY: the engine does not touch a buffer between sending its Piece and
// getting its index back, so the hasher has exclusive access to those bytes.
unsafe impl Send for Piece {}

/// Hasher thread: assembles chunks (zeros for holes), hashes each once all
/// its data arrived, in any order. Optionally compares with an expected
/// manifest and records the first bad chunk.
struct Hasher {
    tx: Option<Sender<Piece>>,
    handle: Option<JoinHandle<HashMap<u64, [u8; 32]>>>,
    mismatch: Arc<AtomicU64>,
}

impl Hasher {
    fn spawn(
        blocks: &[Block],
        size: u64,
        expected: Option<&Manifest>,
        ret: Sender<usize>,
    ) -> Result<Self, CopyError> {
        // Data bytes each chunk still waits for.
        let mut want: HashMap<u64, u64> = HashMap::new();
        for b in blocks {
            *want.entry(b.off / CHUNK_SIZE).or_default() += b.len;
        }
        let expected: Option<Vec<[u8; 32]>> = expected.map(|m| m.chunks().to_vec());
        let mismatch = Arc::new(AtomicU64::new(NO_MISMATCH));
        let mm = mismatch.clone();
        let (tx, rx) = mpsc::channel::<Piece>();
        let handle = std::thread::Builder::new()
            .name("blockd-hash".into())
            .spawn(move || hash_loop(rx, ret, want, size, expected, mm))
            .map_err(|e| CopyError::io("spawn hasher", e))?;
        Ok(Hasher {
            tx: Some(tx),
            handle: Some(handle),
            mismatch,
        })
    }
    fn send(&self, p: Piece) {
        if let Some(tx) = &self.tx {
            // A send error means the hasher died; join() reports that.
            let _ = tx.send(p);
        }
    }
    fn mismatch(&self) -> Option<u64> {
        let m = self.mismatch.load(Ordering::Relaxed);
        (m != NO_MISMATCH).then_some(m)
    }
    fn join(&mut self) -> Result<HashMap<u64, [u8; 32]>, CopyError> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| CopyError::io("hasher thread", io::Error::other("hasher panicked"))),
            None => Ok(HashMap::new()),
        }
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        // Never free buffers while the hasher may still read them.
        let _ = self.join();
    }
}

fn hash_loop(
    rx: Receiver<Piece>,
    ret: Sender<usize>,
    mut want: HashMap<u64, u64>,
    size: u64,
    expected: Option<Vec<[u8; 32]>>,
    mismatch: Arc<AtomicU64>,
) -> HashMap<u64, [u8; 32]> {
    let mut done = HashMap::new();
    let mut partial: HashMap<u64, Vec<u8>> = HashMap::new();
    for p in rx {
        let chunk = p.off / CHUNK_SIZE;
        let clen = chunk_len(chunk, size);
        let at = (p.off % CHUNK_SIZE) as usize;
        // SAFETY: see `impl Send for Piece`: the bytes are ours until the
        // index is sent back below.
        let data = unsafe { std::slice::from_raw_parts(p.ptr, p.len) };
        let hash = if at == 0 && p.len as u64 == clen {
            // The whole chunk in one piece: hash straight from the buffer.
            let h = *blake3::hash(data).as_bytes();
            let _ = ret.send(p.buf);
            Some(h)
        } else {
            // Assemble into a zeroed chunk (zeros stand for holes).
            let buf = partial
                .entry(chunk)
                .or_insert_with(|| vec![0u8; clen as usize]);
            buf[at..at + p.len].copy_from_slice(data);
            let _ = ret.send(p.buf);
            let left = want
                .get(&chunk)
                .copied()
                .unwrap_or(0)
                .saturating_sub(p.len as u64);
            want.insert(chunk, left);
            if left == 0 {
                partial.remove(&chunk).map(|b| *blake3::hash(&b).as_bytes())
            } else {
                None
            }
        };
        if let Some(h) = hash {
            if let Some(exp) = &expected
                && exp.get(chunk as usize) != Some(&h)
            {
                mismatch.fetch_min(chunk, Ordering::Relaxed);
            }
            done.insert(chunk, h);
        }
    }
    done
}

/// Fill in hole chunks and check them against the expected manifest.
fn finish(
    mut data: HashMap<u64, [u8; 32]>,
    size: u64,
    expected: Option<&Manifest>,
) -> Result<Vec<[u8; 32]>, CopyError> {
    let n = size.div_ceil(CHUNK_SIZE);
    let out: Vec<[u8; 32]> = (0..n)
        .map(|i| {
            data.remove(&i)
                .unwrap_or_else(|| zero_hash(chunk_len(i, size)))
        })
        .collect();
    if let Some(exp) = expected
        && let Some(c) = Manifest::new(CHUNK_SIZE, size, out.clone()).first_difference(exp)
    {
        return Err(CopyError::Mismatch { chunk: c });
    }
    Ok(out)
}

/// Run one engine; returns the chunk hashes when a manifest was asked for.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    kind: EngineKind,
    fds: &Fds,
    blocks: &[Block],
    size: u64,
    opts: &CopyOptions,
    expected: Option<&Manifest>,
    progress: &Progress,
    cancel: &CancelToken,
) -> Result<Option<Vec<[u8; 32]>>, CopyError> {
    let qd = match kind {
        EngineKind::Uring => opts.queue_depth as usize,
        // pread/pwrite needs only a few buffers to overlap with hashing.
        EngineKind::Fallback => (opts.queue_depth as usize).clamp(1, 4),
    };
    let qd = qd.min(blocks.len().max(1));
    // Buffers lent to the hasher would otherwise lower the reads in
    // flight whenever that thread waits for CPU; give it a second set.
    let nbufs = if opts.manifest { qd * 2 } else { qd };
    let bufs = Buffers::new(nbufs, opts.block_size)?;
    let (ret_tx, ret_rx) = mpsc::channel::<usize>();
    let mut hasher = if opts.manifest {
        Some(Hasher::spawn(blocks, size, expected, ret_tx)?)
    } else {
        None
    };
    let ctx = Ctx {
        qd,
        fds,
        blocks,
        bufs: &bufs,
        hasher: hasher.as_ref(),
        ret_rx: &ret_rx,
        progress,
        cancel,
        skip_zero: opts.skip_zero_blocks,
    };
    let res = match kind {
        EngineKind::Uring => run_uring(&ctx),
        EngineKind::Fallback => run_fallback(&ctx),
    };
    // Join before `bufs` drops: the hasher may still hold buffers.
    let hashes = match hasher.as_mut() {
        Some(h) => {
            let m = h.mismatch();
            let data = h.join()?;
            if let Some(chunk) = m {
                return Err(CopyError::Mismatch { chunk });
            }
            res?;
            Some(finish(data, size, expected)?)
        }
        None => {
            res?;
            None
        }
    };
    Ok(hashes)
}

struct Ctx<'a> {
    /// Most operations in flight at once.
    qd: usize,
    fds: &'a Fds,
    blocks: &'a [Block],
    bufs: &'a Buffers,
    hasher: Option<&'a Hasher>,
    ret_rx: &'a Receiver<usize>,
    progress: &'a Progress,
    cancel: &'a CancelToken,
    /// Leave all-zero blocks unwritten (the destination reads as zeros).
    skip_zero: bool,
}

impl Ctx<'_> {
    /// Whether the block just read into `buf` is all zeros.
    fn all_zero(&self, buf: usize, b: Block) -> bool {
        // SAFETY: the read filled b.len bytes of buffer `buf`, which this
        // engine owns until it is written or handed to the hasher.
        let bytes = unsafe { std::slice::from_raw_parts(self.bufs.at(buf), b.len as usize) };
        let (head, words, tail) = {
            // SAFETY: any bit pattern is a valid u64.
            unsafe { bytes.align_to::<u64>() }
        };
        head.iter().all(|&x| x == 0)
            && words.iter().all(|&x| x == 0)
            && tail.iter().all(|&x| x == 0)
    }

    /// Stop reason checked between submissions.
    fn should_stop(&self) -> Option<CopyError> {
        if self.cancel.is_cancelled() {
            return Some(CopyError::Cancelled);
        }
        self.hasher
            .and_then(|h| h.mismatch())
            .map(|chunk| CopyError::Mismatch { chunk })
    }
    /// A block is fully written: lend it to the hasher or free it.
    fn block_done(&self, buf: usize, b: Block, free: &mut Vec<usize>) {
        self.progress.add(b.len);
        match self.hasher {
            Some(h) => h.send(Piece {
                buf,
                ptr: self.bufs.at(buf),
                off: b.off,
                len: b.len as usize,
            }),
            None => free.push(buf),
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Read,
    Write,
}

#[derive(Clone, Copy)]
struct Op {
    block: Block,
    phase: Phase,
    done: u64,
}

fn eagain(res: i32) -> bool {
    res == -libc::EAGAIN || res == -libc::EINTR
}

fn push(ring: &mut IoUring, ctx: &Ctx, buf: usize, op: &Op) -> Result<(), CopyError> {
    let off = op.block.off + op.done;
    let len = op.block.len - op.done;
    // SAFETY: done < len <= block_size, so the pointer stays inside buffer `buf`.
    let ptr = unsafe { ctx.bufs.at(buf).add(op.done as usize) };
    let entry = match op.phase {
        Phase::Read => opcode::ReadFixed::new(
            types::Fd(ctx.fds.read_fd(off, len)),
            ptr,
            len as u32,
            buf as u16,
        )
        .offset(off)
        .build(),
        Phase::Write => opcode::WriteFixed::new(
            types::Fd(ctx.fds.write_fd(off, len)),
            ptr,
            len as u32,
            buf as u16,
        )
        .offset(off)
        .build(),
    }
    .user_data(buf as u64);
    // SAFETY: the buffer is registered and owned by this op until its
    // completion is reaped; the fds outlive the ring's use of them.
    unsafe { ring.submission().push(&entry) }.map_err(|_| {
        CopyError::io(
            "submission queue",
            io::Error::other("submission queue full"),
        )
    })
}

fn run_uring(ctx: &Ctx) -> Result<(), CopyError> {
    let n = ctx.bufs.n;
    let mut ring = IoUring::new(n as u32).map_err(|e| CopyError::io("io_uring setup", e))?;
    let iov = ctx.bufs.iovecs();
    // SAFETY: the iovecs point into `ctx.bufs`, which outlives the ring (the
    // ring is dropped at the end of this function).
    unsafe { ring.submitter().register_buffers(&iov) }
        .map_err(|e| CopyError::io("register buffers", e))?;
    let mut ops: Vec<Option<Op>> = vec![None; n];
    let mut free: Vec<usize> = (0..n).rev().collect();
    let mut next = 0usize;
    let mut inflight = 0usize;
    let mut err: Option<CopyError> = None;
    loop {
        while let Ok(i) = ctx.ret_rx.try_recv() {
            free.push(i);
        }
        if err.is_none() {
            err = ctx.should_stop();
        }
        // Keep up to QD reads in flight.
        while err.is_none() && next < ctx.blocks.len() && inflight < ctx.qd {
            let Some(buf) = free.pop() else { break };
            let op = Op {
                block: ctx.blocks[next],
                phase: Phase::Read,
                done: 0,
            };
            if let Err(e) = push(&mut ring, ctx, buf, &op) {
                free.push(buf);
                err = Some(e);
                break;
            }
            ops[buf] = Some(op);
            next += 1;
            inflight += 1;
        }
        if inflight == 0 {
            if err.is_some() || next >= ctx.blocks.len() {
                break;
            }
            // All buffers are with the hasher: wait for one.
            match ctx.ret_rx.recv() {
                Ok(i) => free.push(i),
                Err(_) => break,
            }
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1)
            && e.raw_os_error() != Some(libc::EINTR)
        {
            // The ring is unusable; in-flight ops cannot be drained safely
            // other than by dropping the ring (which waits for them).
            return Err(CopyError::io("io_uring submit", e));
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            let buf = ud as usize;
            let Some(mut op) = ops[buf] else { continue };
            let read = matches!(op.phase, Phase::Read);
            let res = if read && crate::failpoint::eio("copy-read-eio") {
                -libc::EIO
            } else {
                res
            };
            let finished_io = if res < 0 {
                if eagain(res) && err.is_none() {
                    false
                } else {
                    if err.is_none() {
                        let what = match op.phase {
                            Phase::Read => "read source",
                            Phase::Write => "write destination",
                        };
                        err = Some(CopyError::io(what, io::Error::from_raw_os_error(-res)));
                    }
                    ops[buf] = None;
                    free.push(buf);
                    inflight -= 1;
                    continue;
                }
            } else if res == 0 {
                if err.is_none() {
                    err = Some(CopyError::io(
                        "copy",
                        io::Error::new(io::ErrorKind::UnexpectedEof, "short transfer of 0 bytes"),
                    ));
                }
                ops[buf] = None;
                free.push(buf);
                inflight -= 1;
                continue;
            } else {
                op.done += res as u64;
                op.done >= op.block.len
            };
            if err.is_some() {
                // Stopping: do not start new I/O, just release.
                ops[buf] = None;
                free.push(buf);
                inflight -= 1;
                continue;
            }
            if finished_io {
                match op.phase {
                    Phase::Read if ctx.skip_zero && ctx.all_zero(buf, op.block) => {
                        ops[buf] = None;
                        inflight -= 1;
                        ctx.block_done(buf, op.block, &mut free);
                        continue;
                    }
                    Phase::Read => {
                        op = Op {
                            block: op.block,
                            phase: Phase::Write,
                            done: 0,
                        };
                    }
                    Phase::Write => {
                        ops[buf] = None;
                        inflight -= 1;
                        ctx.block_done(buf, op.block, &mut free);
                        continue;
                    }
                }
            }
            // Resubmit the rest (short I/O or EAGAIN) or start the write.
            if let Err(e) = push(&mut ring, ctx, buf, &op) {
                err = Some(e);
                ops[buf] = None;
                free.push(buf);
                inflight -= 1;
                continue;
            }
            ops[buf] = Some(op);
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn pread_full(
    fd_of: impl Fn(u64, u64) -> RawFd,
    buf: *mut u8,
    b: Block,
    write: bool,
) -> Result<(), CopyError> {
    let what = if write {
        "write destination"
    } else {
        "read source"
    };
    if !write && crate::failpoint::eio("copy-read-eio") {
        return Err(CopyError::io(what, io::Error::from_raw_os_error(libc::EIO)));
    }
    let mut done = 0u64;
    while done < b.len {
        let (off, len) = (b.off + done, b.len - done);
        let fd = fd_of(off, len);
        // SAFETY: buf has at least b.len bytes and we own it for this call.
        let r = unsafe {
            let p = buf.add(done as usize);
            if write {
                libc::pwrite(fd, p.cast(), len as usize, off as libc::off_t)
            } else {
                libc::pread(fd, p.cast(), len as usize, off as libc::off_t)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                continue;
            }
            return Err(CopyError::io(what, e));
        }
        if r == 0 {
            return Err(CopyError::io(
                what,
                io::Error::new(io::ErrorKind::UnexpectedEof, "short transfer of 0 bytes"),
            ));
        }
        done += r as u64;
    }
    Ok(())
}

fn run_fallback(ctx: &Ctx) -> Result<(), CopyError> {
    let mut free: Vec<usize> = (0..ctx.bufs.n).rev().collect();
    for &b in ctx.blocks {
        if let Some(e) = ctx.should_stop() {
            return Err(e);
        }
        let buf = match free.pop() {
            Some(i) => i,
            None => match ctx.ret_rx.recv() {
                Ok(i) => i,
                Err(_) => return Err(CopyError::io("hasher", io::Error::other("hasher gone"))),
            },
        };
        let p = ctx.bufs.at(buf);
        pread_full(|o, l| ctx.fds.read_fd(o, l), p, b, false)?;
        if !(ctx.skip_zero && ctx.all_zero(buf, b)) {
            pread_full(|o, l| ctx.fds.write_fd(o, l), p, b, true)?;
        }
        ctx.block_done(buf, b, &mut free);
        while let Ok(i) = ctx.ret_rx.try_recv() {
            free.push(i);
        }
    }
    Ok(())
}

/// Set up a small ring, register a buffer and check the opcodes we use.
pub(crate) fn probe_uring() -> Result<(), String> {
    let ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("probe: {e}"))?;
    for (name, code) in [
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    let bufs = Buffers::new(1, ALIGN).map_err(|e| e.to_string())?;
    let iov = bufs.iovecs();
    // SAFETY: `bufs` outlives the registration, which is dropped with `ring`
    // at the end of this function (ring is declared first, so dropped last;
    // we unregister explicitly before returning).
    unsafe { ring.submitter().register_buffers(&iov) }
        .map_err(|e| format!("register_buffers: {e}"))?;
    ring.submitter()
        .unregister_buffers()
        .map_err(|e| format!("unregister_buffers: {e}"))?;
    Ok(())
}
