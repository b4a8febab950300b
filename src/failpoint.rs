//! Failpoints: named steps where a test makes the daemon crash or an I/O
//! fail on purpose. They exist only when built with the `failpoints`
//! feature (tests); without it each point compiles to nothing. The
//! `FAILPOINTS` environment variable arms them at start-up, in the `fail`
//! crate's syntax (`name=return;other=1*return`).
//!
//! Crash points kill the process with SIGKILL at that step, as a power cut
//! would: nothing after it runs, no destructor, no cleanup, no core file.
//! `snapshot-before-rename` (copy done and hashed, not yet renamed into
//! place), `snapshot-before-commit` (renamed, not yet committed),
//! `restore-before-rename` (a revert or create-from-snapshot copied into
//! its temp file), `export-before-commit` (loop device attached, not yet
//! recorded) and `job-before-commit` (a volume job's work done, its end not
//! yet recorded).
//!
//! I/O faults: `copy-read-eio` makes the copy engines' reads of the source
//! (io_uring and fallback) fail with EIO, as a bad disk would.

/// Kills the process here when `name` is armed.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("failpoint {name}: killing the process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}

/// True when `name` is armed: the caller fails its I/O with EIO.
#[cfg(feature = "failpoints")]
pub fn eio(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn eio(_name: &str) -> bool {
    false
}

/// Reads `FAILPOINTS` when the feature is on; keep the value alive for the
/// life of the process. A malformed value panics, so a typo cannot pass
/// for a point that was never armed.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    Some(fail::FailScenario::setup())
}

#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

/// Arms `name` with `actions` at run time (in-process tests).
#[cfg(feature = "failpoints")]
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

/// Disarms `name`.
#[cfg(feature = "failpoints")]
pub fn remove(name: &str) {
    fail::remove(name)
}
