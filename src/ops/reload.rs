//! Live reload on SIGHUP: re-reads the config file and applies what can
//! change while running (credentials, quotas, the version table, the log
//! filter, the drain time). A file that does not load changes nothing.
//! Keys that need a restart are named in the log.

use super::logging::LogControl;
use crate::api::scp::ScpState;
use crate::api::scp::version::VersionTable;
use crate::config::{Config, ConfigError, Credential, load_or_generate_credentials};
use crate::service::Service;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Holds the config in force and the parts it can change.
pub struct Reloader {
    path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    current: Config,
    creds: Vec<Credential>,
    scp: Arc<ScpState>,
    service: Arc<Service>,
    log: LogControl,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Applied changes, one line each.
    pub applied: Vec<String>,
    /// Keys that changed in the file but need a restart.
    pub need_restart: Vec<String>,
}

fn differs<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

/// The credentials in force for `cfg`: configured, or the generated file.
pub fn effective_credentials(cfg: &Config) -> Result<Vec<Credential>, ConfigError> {
    if cfg.scp.credentials.is_empty() {
        Ok(load_or_generate_credentials(&cfg.data_dir())?.0)
    } else {
        Ok(cfg.scp.credentials.clone())
    }
}

/// Loads `path` (or the embedded default) and applies a `--data-dir` override.
pub fn load(
    path: Option<&std::path::Path>,
    data_dir: Option<&PathBuf>,
) -> Result<Config, ConfigError> {
    let mut cfg = Config::load(path)?;
    if let Some(d) = data_dir {
        cfg.data_dir = Some(d.clone());
    }
    Ok(cfg)
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        data_dir: Option<PathBuf>,
        current: Config,
        scp: Arc<ScpState>,
        service: Arc<Service>,
        log: LogControl,
    ) -> Result<Reloader, ConfigError> {
        let creds = effective_credentials(&current)?;
        Ok(Reloader {
            path,
            data_dir,
            current,
            creds,
            scp,
            service,
            log,
        })
    }

    pub fn current(&self) -> &Config {
        &self.current
    }

    /// Re-reads the file and applies it; on error nothing changes.
    pub fn reload(&mut self) -> Result<Outcome, ConfigError> {
        let next = load(self.path.as_deref(), self.data_dir.as_ref())?;
        let creds = effective_credentials(&next)?;
        if let Some(l) = &next.daemon.log_level {
            // Validated already; a failure here would be a bug, not input.
            tracing_subscriber::EnvFilter::try_new(l).map_err(|e| ConfigError::Invalid {
                file: self.file_name(),
                key: "daemon.log_level".into(),
                problem: e.to_string(),
            })?;
        }
        let old = &self.current;
        let mut out = Outcome::default();

        if creds != self.creds || next.scp.signature_window_secs != old.scp.signature_window_secs {
            let keys = |c: &[Credential]| -> Vec<String> {
                c.iter().map(|c| c.access_key.clone()).collect()
            };
            let (was, now) = (keys(&self.creds), keys(&creds));
            let added: Vec<&String> = now.iter().filter(|k| !was.contains(k)).collect();
            let removed: Vec<&String> = was.iter().filter(|k| !now.contains(k)).collect();
            self.scp
                .set_credentials(&creds, next.scp.signature_window_secs);
            out.applied.push(format!(
                "scp credentials: {} access keys (added {added:?}, removed {removed:?}), signature window {} s",
                now.len(),
                next.scp.signature_window_secs
            ));
        }
        if differs(&next.versions(), &old.versions()) {
            self.scp.set_versions(VersionTable::new(next.versions()));
            let table: Vec<String> = next
                .versions()
                .iter()
                .map(|v| format!("{} {}", v.id, v.status.as_str()))
                .collect();
            out.applied
                .push(format!("scp version table: {}", table.join(", ")));
        }
        if differs(&next.quota, &old.quota) {
            self.service.set_quota(next.quota.clone());
            out.applied.push(format!(
                "quota: volumes {}, snapshots {}, gigabytes {}, per_volume_gigabytes {}, {} project overrides",
                next.quota.volumes,
                next.quota.snapshots,
                next.quota.gigabytes,
                next.quota.per_volume_gigabytes,
                next.quota.projects.len()
            ));
        }
        if next.daemon.log_level != old.daemon.log_level {
            let level = next.daemon.log_level.as_deref().unwrap_or("info");
            self.log
                .set(level)
                .map_err(|problem| ConfigError::Invalid {
                    file: self.file_name(),
                    key: "daemon.log_level".into(),
                    problem,
                })?;
            out.applied.push(format!("log filter: {level}"));
        }
        if next.daemon.drain_secs != old.daemon.drain_secs {
            out.applied
                .push(format!("drain time: {} s", next.daemon.drain_secs));
        }
        let fixed: [(&str, bool); 8] = [
            ("data_dir", next.data_dir() != old.data_dir()),
            ("scp.listen", next.scp.listen != old.scp.listen),
            (
                "scp.max_body_bytes",
                next.scp.max_body_bytes != old.scp.max_body_bytes,
            ),
            ("scp.url_scheme", next.scp.url_scheme != old.scp.url_scheme),
            (
                "volume_types",
                differs(&next.volume_types, &old.volume_types),
            ),
            (
                "default_volume_type",
                next.default_volume_type != old.default_volume_type,
            ),
            ("jobs", differs(&next.jobs, &old.jobs)),
            ("metrics.listen", next.metrics.listen != old.metrics.listen),
        ];
        out.need_restart = fixed
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k.to_string())
            .collect();
        self.current = next;
        self.creds = creds;
        Ok(out)
    }

    fn file_name(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<embedded default>".into())
    }

    /// Reloads and logs the result; an error keeps the old config.
    pub fn reload_and_log(&mut self) {
        match self.reload() {
            Ok(o) => {
                if o.applied.is_empty() && o.need_restart.is_empty() {
                    tracing::info!("SIGHUP: config reloaded, nothing changed");
                }
                for a in &o.applied {
                    tracing::info!(change = %a, "SIGHUP: applied");
                }
                for k in &o.need_restart {
                    tracing::warn!(key = %k, "SIGHUP: changed, but takes effect only after a restart");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: config not reloaded; the old one stays in force")
            }
        }
    }
}
