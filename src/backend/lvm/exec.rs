//! The one way blockd runs lvm2: `lvm <command>` with LC_ALL=C, udev off,
//! the configured device list, activation off on hosts without
//! device-mapper, a timeout, and stderr kept for the error. Report commands
//! always ask for JSON in bytes without suffixes.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run lvm {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("lvm {command} did not finish within {secs} s and was killed")]
    Timeout { command: String, secs: u64 },
    #[error("lvm {command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Settings every lvm2 call gets.
#[derive(Debug, Clone)]
pub struct Lvm {
    /// The lvm binary (found on PATH by default).
    pub binary: PathBuf,
    /// Only these devices are scanned (`--devices`); empty: lvm.conf decides.
    pub devices: Vec<PathBuf>,
    /// Metadata-only mode for hosts without device-mapper.
    pub no_activation: bool,
    pub timeout: Duration,
}

impl Lvm {
    /// The `--config` string: udev off, no devices file when a device list
    /// is given, and activation off without device-mapper.
    pub fn config_string(&self) -> String {
        let mut c = String::new();
        if self.no_activation {
            c += "global{activation=0} ";
        }
        c += "activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0";
        if !self.devices.is_empty() {
            c += " use_devicesfile=0";
        }
        c += "}";
        c
    }

    /// The whole argument list for `lvm <command> <args>`.
    pub fn argv(&self, command: &str, args: &[&str]) -> Vec<String> {
        let mut v = vec![command.to_string(), "--config".into(), self.config_string()];
        if !self.devices.is_empty() {
            let list: Vec<String> = self
                .devices
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            v.push("--devices".into());
            v.push(list.join(","));
        }
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    /// Runs a command; returns its stdout.
    pub fn run(&self, command: &str, args: &[&str]) -> Result<String, ExecError> {
        let argv = self.argv(command, args);
        let label = format!("{command} {}", args.join(" "));
        let mut child = Command::new(&self.binary)
            .args(&argv)
            .env("LC_ALL", "C")
            // lvm2 warns about every inherited fd; the daemon holds many.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ExecError::Spawn {
                command: label.clone(),
                source: e,
            })?;
        // Drain both pipes on threads so a chatty command cannot block.
        let drain = |p: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = p {
                    let _ = p.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ExecError::Timeout {
                        command: label,
                        secs: self.timeout.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    return Err(ExecError::Spawn {
                        command: label,
                        source: e,
                    });
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            return Err(ExecError::Failed {
                command: label,
                status: status.to_string(),
                stderr: quiet(&stderr),
            });
        }
        Ok(stdout)
    }

    /// Runs a report command (`lvs`, `vgs`, `pvs`) in JSON, sizes in bytes.
    pub fn report(&self, command: &str, args: &[&str]) -> Result<String, ExecError> {
        let mut a = vec!["--reportformat", "json", "--units", "b", "--nosuffix"];
        a.extend_from_slice(args);
        self.run(command, &a)
    }
}

/// stderr without the warnings metadata-only mode always prints.
fn quiet(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.contains("Activation disabled")
                && !l.contains("compiled without activation")
                && !l.contains("not zeroed")
                && !l.contains("leaked on")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvm(no_activation: bool, devices: Vec<PathBuf>) -> Lvm {
        Lvm {
            binary: "lvm".into(),
            devices,
            no_activation,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn argv_restricts_devices_and_turns_udev_and_activation_off() {
        let a = lvm(true, vec!["/dev/loop3".into(), "/dev/loop4".into()]).argv("lvs", &["vg"]);
        assert_eq!(a[0], "lvs");
        assert_eq!(a[1], "--config");
        assert!(a[2].contains("global{activation=0}"));
        assert!(a[2].contains("udev_sync=0 udev_rules=0"));
        assert!(a[2].contains("obtain_device_list_from_udev=0 use_devicesfile=0"));
        assert_eq!(a[3..], ["--devices", "/dev/loop3,/dev/loop4", "vg"]);
        let b = lvm(false, vec![]).argv("vgs", &[]);
        assert!(!b[2].contains("activation=0"));
        assert!(!b[2].contains("use_devicesfile"));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn quiet_drops_the_fallback_warnings() {
        let s = "  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n  Volume group \"x\" not found\n";
        assert_eq!(quiet(s), "Volume group \"x\" not found");
    }

    fn script(dir: &std::path::Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-lvm");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn missing_binary_failure_and_hang_are_errors_with_their_reason() {
        let mut l = lvm(true, vec![]);
        l.binary = "/nonexistent/lvm".into();
        assert!(matches!(l.run("lvs", &[]), Err(ExecError::Spawn { .. })));

        let d = tempfile::tempdir().unwrap();
        l.binary = script(
            d.path(),
            "echo \"$LC_ALL\"; echo '  Volume group \"nope\" not found' >&2; exit 5",
        );
        match l.run("vgs", &["nope"]) {
            Err(ExecError::Failed { stderr, status, .. }) => {
                assert_eq!(stderr, "Volume group \"nope\" not found");
                assert!(status.contains('5'), "{status}");
            }
            r => panic!("{r:?}"),
        }
        l.binary = script(d.path(), "echo \"$LC_ALL\"");
        assert_eq!(l.run("vgs", &[]).unwrap().trim(), "C");

        l.binary = script(d.path(), "exec sleep 5");
        l.timeout = Duration::from_millis(200);
        let t = Instant::now();
        assert!(matches!(l.run("lvs", &[]), Err(ExecError::Timeout { .. })));
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
