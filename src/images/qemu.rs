//! `qemu-img`: probing an image's real format and virtual size, and
//! converting between formats. Its JSON output is parsed here; the
//! parsers are tested on canned text.

use super::{ImageError, Result};
use std::path::Path;
use std::process::Command;

/// What `qemu-img info` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub format: String,
    pub virtual_size: u64,
    /// A backing file would pull in data from outside the image.
    pub backing: Option<String>,
}

/// Glance's disk_format in qemu's spelling.
pub fn qemu_format(disk_format: &str) -> Option<&'static str> {
    match disk_format {
        "raw" => Some("raw"),
        "qcow2" => Some("qcow2"),
        "vmdk" => Some("vmdk"),
        "vhd" | "vpc" => Some("vpc"),
        "vdi" => Some("vdi"),
        _ => None,
    }
}

pub fn parse_info(json: &str) -> Result<Info> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ImageError::Tool(format!("unreadable `info` output: {e}")))?;
    let format = v
        .get("format")
        .and_then(|f| f.as_str())
        .ok_or_else(|| ImageError::Tool("`info` gave no format".into()))?
        .to_string();
    let virtual_size = v
        .get("virtual-size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| ImageError::Tool("`info` gave no virtual-size".into()))?;
    let backing = v
        .get("backing-filename")
        .and_then(|b| b.as_str())
        .map(String::from);
    Ok(Info {
        format,
        virtual_size,
        backing,
    })
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::Tool("qemu-img is not installed (package qemu-utils)".into())
        } else {
            ImageError::io("run qemu-img", e)
        }
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ImageError::Tool(format!(
            "{} failed: {}",
            cmd.get_args()
                .next()
                .and_then(|a| a.to_str())
                .unwrap_or("command"),
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Probes `path` (format detection, not the declared format).
pub fn info(qemu_img: &str, path: &Path) -> Result<Info> {
    let out = run(Command::new(qemu_img)
        .args(["info", "--output=json"])
        .arg(path))?;
    parse_info(&out)
}

/// Checks that the data really is `disk_format` and has no backing file.
pub fn check(qemu_img: &str, path: &Path, disk_format: &str) -> Result<Info> {
    let want = qemu_format(disk_format).ok_or_else(|| {
        ImageError::Invalid(format!("disk_format {disk_format} is not supported"))
    })?;
    let i = info(qemu_img, path)?;
    if i.format != want {
        return Err(ImageError::Invalid(format!(
            "the image is declared {disk_format} but its data is {}",
            i.format
        )));
    }
    if let Some(b) = &i.backing {
        return Err(ImageError::Invalid(format!(
            "the image has a backing file ({b}); only self-contained images are accepted"
        )));
    }
    Ok(i)
}

/// Writes `src` (of `format`) as raw into `dst`, an existing file of the
/// virtual size that reads as zeros (a new sparse file).
pub fn convert_to_raw(qemu_img: &str, src: &Path, format: &str, dst: &Path) -> Result<()> {
    run(Command::new(qemu_img)
        .args([
            "convert",
            "-f",
            format,
            "-O",
            "raw",
            "-n",
            "--target-is-zero",
        ])
        .args(["-W", "-m", "16", "-t", "unsafe"])
        .arg(src)
        .arg(dst))?;
    Ok(())
}

/// Writes a raw file `src` as a new qcow2 file `dst`.
pub fn convert_to_qcow2(qemu_img: &str, src: &Path, dst: &Path) -> Result<()> {
    run(Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2", "-W", "-m", "16"])
        .arg(src)
        .arg(dst))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_json_is_read() {
        let i = parse_info(
            r#"{"virtual-size": 1073741824, "filename": "a.qcow2", "cluster-size": 65536,
                "format": "qcow2", "actual-size": 200704, "dirty-flag": false}"#,
        )
        .unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 1 << 30);
        assert_eq!(i.backing, None);
        let b = parse_info(
            r#"{"virtual-size": 1, "format": "qcow2", "backing-filename": "/etc/passwd"}"#,
        )
        .unwrap();
        assert_eq!(b.backing.as_deref(), Some("/etc/passwd"));
        assert!(parse_info("{}").is_err());
        assert!(parse_info("not json").is_err());
    }

    #[test]
    fn formats_map_to_qemu_names() {
        assert_eq!(qemu_format("vhd"), Some("vpc"));
        assert_eq!(qemu_format("iso"), None);
        assert_eq!(qemu_format("ami"), None);
    }
}
