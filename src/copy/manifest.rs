//! blake3 manifest of 1 MiB chunks of the logical content, its file format
//! and re-verification of a file against it.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use super::CopyError;
use super::extents::data_extents;

/// Manifest chunk size: 1 MiB.
pub const CHUNK_SIZE: u64 = 1 << 20;

const MAGIC: &str = "blockd-manifest v1";

/// Hash of `len` zero bytes; the full-chunk value is computed once.
pub(crate) fn zero_hash(len: u64) -> [u8; 32] {
    static FULL: OnceLock<[u8; 32]> = OnceLock::new();
    let h = |n: u64| *blake3::hash(&vec![0u8; n as usize]).as_bytes();
    if len == CHUNK_SIZE {
        *FULL.get_or_init(|| h(CHUNK_SIZE))
    } else {
        h(len)
    }
}

/// Length of chunk `i` of a file of `size` bytes.
pub(crate) fn chunk_len(i: u64, size: u64) -> u64 {
    (size - i * CHUNK_SIZE).min(CHUNK_SIZE)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    chunk_size: u64,
    logical_size: u64,
    chunks: Vec<[u8; 32]>,
}

/// Result of `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub first_bad_chunk: Option<u64>,
    pub chunks: u64,
}

impl Manifest {
    pub fn new(chunk_size: u64, logical_size: u64, chunks: Vec<[u8; 32]>) -> Self {
        Manifest {
            chunk_size,
            logical_size,
            chunks,
        }
    }
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }
    pub fn logical_size(&self) -> u64 {
        self.logical_size
    }
    pub fn chunks(&self) -> &[[u8; 32]] {
        &self.chunks
    }
    /// blake3 over the ordered chunk hashes.
    pub fn checksum(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for c in &self.chunks {
            h.update(c);
        }
        *h.finalize().as_bytes()
    }
    pub fn checksum_hex(&self) -> String {
        hex(&self.checksum())
    }

    /// First chunk index where the two manifests differ.
    pub fn first_difference(&self, other: &Manifest) -> Option<u64> {
        let n = self.chunks.len().max(other.chunks.len());
        (0..n)
            .find(|&i| self.chunks.get(i) != other.chunks.get(i))
            .map(|i| i as u64)
    }

    /// Text format: magic, sizes, one hex hash per line, checksum. Fsynced.
    pub fn write_to(&self, path: &Path) -> Result<(), CopyError> {
        let mut s = format!(
            "{MAGIC}\nchunk_size {}\nlogical_size {}\nchunks {}\n",
            self.chunk_size,
            self.logical_size,
            self.chunks.len()
        );
        for c in &self.chunks {
            s.push_str(&hex(c));
            s.push('\n');
        }
        s.push_str(&format!("checksum {}\n", self.checksum_hex()));
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CopyError::io("create manifest", e))?;
        f.write_all(s.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| CopyError::io("write manifest", e))
    }

    pub fn read_from(path: &Path) -> Result<Manifest, CopyError> {
        let text = std::fs::read_to_string(path).map_err(|e| CopyError::io("read manifest", e))?;
        parse(&text).ok_or_else(|| {
            CopyError::io(
                "parse manifest",
                io::Error::new(io::ErrorKind::InvalidData, "malformed manifest"),
            )
        })
    }
}

fn parse(text: &str) -> Option<Manifest> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut field =
        |name: &str| -> Option<u64> { lines.next()?.strip_prefix(name)?.trim().parse().ok() };
    let chunk_size = field("chunk_size ")?;
    let logical_size = field("logical_size ")?;
    let n = field("chunks ")?;
    let mut chunks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        chunks.push(unhex(lines.next()?)?);
    }
    let m = Manifest::new(chunk_size, logical_size, chunks);
    let sum = lines.next()?.strip_prefix("checksum ")?;
    (sum == m.checksum_hex()).then_some(m)
}

pub(crate) fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Hash a file chunk by chunk; holes hash as zeros and are not read.
pub(crate) fn compute(path: &Path) -> Result<Manifest, CopyError> {
    let f = File::open(path).map_err(|e| CopyError::io("open for hashing", e))?;
    let size = super::byte_size(&f).map_err(|e| CopyError::io("stat for hashing", e))?;
    let extents = data_extents(&f, size)?;
    let n = size.div_ceil(CHUNK_SIZE);
    let mut chunks = Vec::with_capacity(n as usize);
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut ei = 0;
    for i in 0..n {
        let (cs, len) = (i * CHUNK_SIZE, chunk_len(i, size));
        let ce = cs + len;
        while ei < extents.len() && extents[ei].1 <= cs {
            ei += 1;
        }
        let mut any = false;
        // A chunk with no data is a hole: its hash is known, and clearing
        // the buffer for it would cost a 1 MiB write per chunk of a huge
        // sparse file.
        if ei < extents.len() && extents[ei].0 < ce {
            buf[..len as usize].fill(0);
        }
        let mut j = ei;
        while j < extents.len() && extents[j].0 < ce {
            let (s, e) = (extents[j].0.max(cs), extents[j].1.min(ce));
            let dst = &mut buf[(s - cs) as usize..(e - cs) as usize];
            f.read_exact_at(dst, s)
                .map_err(|e| CopyError::io("read for hashing", e))?;
            any = true;
            j += 1;
        }
        chunks.push(if any {
            *blake3::hash(&buf[..len as usize]).as_bytes()
        } else {
            zero_hash(len)
        });
    }
    Ok(Manifest::new(CHUNK_SIZE, size, chunks))
}

/// Re-hash `path` and compare it with `manifest`.
pub fn verify(path: &Path, manifest: &Manifest) -> Result<VerifyReport, CopyError> {
    if manifest.chunk_size != CHUNK_SIZE {
        return Err(CopyError::Unsupported(format!(
            "manifest chunk size {}",
            manifest.chunk_size
        )));
    }
    let m = compute(path)?;
    let bad = if m.logical_size != manifest.logical_size {
        Some(m.first_difference(manifest).unwrap_or(0))
    } else {
        m.first_difference(manifest)
    };
    Ok(VerifyReport {
        ok: bad.is_none(),
        first_bad_chunk: bad,
        chunks: m.chunks.len() as u64,
    })
}
