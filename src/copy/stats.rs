//! Process-wide copy totals by engine, for the metrics endpoint.

use super::{CopyError, CopyReport, EngineKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

struct Totals {
    bytes: AtomicU64,
    micros: AtomicU64,
    copies: AtomicU64,
}

impl Totals {
    const fn new() -> Totals {
        Totals {
            bytes: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            copies: AtomicU64::new(0),
        }
    }
}

static URING: Totals = Totals::new();
static FALLBACK: Totals = Totals::new();
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Totals of one engine since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineTotals {
    pub bytes: u64,
    pub micros: u64,
    pub copies: u64,
}

fn of(kind: EngineKind) -> &'static Totals {
    match kind {
        EngineKind::Uring => &URING,
        EngineKind::Fallback => &FALLBACK,
    }
}

/// Runs a copy and adds what it did to the totals.
pub(super) fn timed(
    f: impl FnOnce() -> Result<CopyReport, CopyError>,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let r = f();
    match &r {
        Ok(rep) => {
            let t = of(rep.engine);
            t.bytes.fetch_add(rep.bytes_copied, Ordering::Relaxed);
            t.micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            t.copies.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
        }
    }
    r
}

pub fn totals(kind: EngineKind) -> EngineTotals {
    let t = of(kind);
    EngineTotals {
        bytes: t.bytes.load(Ordering::Relaxed),
        micros: t.micros.load(Ordering::Relaxed),
        copies: t.copies.load(Ordering::Relaxed),
    }
}

/// Copies that ended in an error (cancelled ones included).
pub fn failed() -> u64 {
    FAILED.load(Ordering::Relaxed)
}
