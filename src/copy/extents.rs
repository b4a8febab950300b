//! Data extent map (SEEK_DATA/SEEK_HOLE) and the block list built from it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::{CHUNK_SIZE, CopyError};

/// One I/O unit: never crosses a chunk boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub off: u64,
    pub len: u64,
}

/// Data extents of `f` as (start, end) pairs, in order.
pub(crate) fn data_extents(f: &File, size: u64) -> Result<Vec<(u64, u64)>, CopyError> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on an fd we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            if e.raw_os_error() == Some(libc::EINVAL) && pos == 0 {
                // No extent map (a block device): all of it is data.
                return Ok(vec![(0, size)]);
            }
            return Err(CopyError::io("seek data", e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(CopyError::io("seek hole", io::Error::last_os_error()));
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if end > start {
            out.push((start, end));
        }
        pos = end.max(start + 1);
    }
    Ok(out)
}

/// Split extents into blocks of at most `bs` that never cross a chunk. With
/// O_DIRECT, extents are widened to 4 KiB (clamped at EOF) so that every
/// block but the file's tail is aligned.
pub(crate) fn blocks(extents: &[(u64, u64)], size: u64, bs: u64, align: bool) -> Vec<Block> {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in extents {
        let (s, e) = if align {
            (s & !4095, ((e + 4095) & !4095).min(size))
        } else {
            (s, e)
        };
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let step = bs.min(CHUNK_SIZE);
    let mut out = Vec::new();
    for (s, e) in merged {
        let mut off = s;
        while off < e {
            // Next boundary of the block grid (it divides the chunk grid).
            let next = ((off / step) + 1) * step;
            let end = next.min(e);
            out.push(Block {
                off,
                len: end - off,
            });
            off = end;
        }
    }
    out
}
