//! Images: volumes filled from a Glance v2 image service and volumes
//! uploaded back to it. This module owns the Glance client (metadata,
//! streamed downloads with checksum checks, image creation and uploads),
//! `qemu-img` (format probe and conversion to raw), and the cache of raw
//! images with their blake3 manifests. The service layer drives it.

pub mod cache;
pub mod glance;
pub mod qemu;

pub use cache::ImageCache;
pub use glance::{Glance, Image};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[images]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Glance v2 endpoint, e.g. `http://127.0.0.1:9292`. Empty: images are
    /// not available (a create with an image answers 500, Glance unset).
    #[serde(default)]
    pub glance_url: String,
    /// Seconds to wait for Glance to connect and answer headers.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Raw images kept for later volumes. Empty: `<data_dir>/image-cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Disk the cache may use, in GiB (allocated bytes); 0 turns it off.
    #[serde(default = "default_cache_gib")]
    pub cache_size_gib: u64,
    /// The qemu-img program.
    #[serde(default = "default_qemu_img")]
    pub qemu_img: String,
}

fn default_timeout() -> u64 {
    30
}
fn default_cache_gib() -> u64 {
    20
}
fn default_qemu_img() -> String {
    "qemu-img".into()
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            glance_url: String::new(),
            timeout_secs: default_timeout(),
            cache_dir: None,
            cache_size_gib: default_cache_gib(),
            qemu_img: default_qemu_img(),
        }
    }
}

impl ImagesConfig {
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let u = &self.glance_url;
        if !(u.is_empty() || u.starts_with("http://") || u.starts_with("https://")) {
            return Err((
                "images.glance_url".into(),
                "must start with http:// or https://".into(),
            ));
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(("images.timeout_secs".into(), "must be 1-3600".into()));
        }
        if self.qemu_img.is_empty() {
            return Err(("images.qemu_img".into(), "must name a program".into()));
        }
        Ok(())
    }
}

/// Disk formats blockd can write into a volume, as Glance names them.
pub const DISK_FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vhd", "vdi"];

/// Stable error classes for the service layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageErrorKind {
    /// The image does not exist or the caller may not see it.
    NotFound,
    /// The image cannot become a volume (format, size, state).
    Invalid,
    /// Glance is unset, unreachable, or answered with a server error.
    Unavailable,
    /// Local failures: I/O, qemu-img, a checksum that does not match.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("image service: {0}")]
    Unavailable(String),
    #[error("image data does not match its {algo} checksum: expected {expected}, got {got}")]
    Checksum {
        algo: String,
        expected: String,
        got: String,
    },
    #[error("qemu-img: {0}")]
    Tool(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("image copy: {0}")]
    Copy(#[from] crate::copy::CopyError),
}

impl ImageError {
    pub fn kind(&self) -> ImageErrorKind {
        match self {
            ImageError::NotFound(_) => ImageErrorKind::NotFound,
            ImageError::Invalid(_) => ImageErrorKind::Invalid,
            ImageError::Unavailable(_) => ImageErrorKind::Unavailable,
            _ => ImageErrorKind::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ImageError {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;
