//! Running blockd as a service: the systemd notify protocol, signals and
//! the shutdown drain, live reload on SIGHUP, log control, and the
//! operations listener with metrics, health and readiness.

pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod reload;

use serde::{Deserialize, Serialize};

/// `[daemon]`: how the process runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// How long shutdown waits for running jobs before it stops copies at
    /// a safe point and exits; unfinished jobs resume at the next start.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    /// Log filter (RUST_LOG syntax). RUST_LOG, when set, wins at start-up;
    /// SIGHUP applies this key when it changed.
    #[serde(default)]
    pub log_level: Option<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            drain_secs: default_drain_secs(),
            log_level: None,
        }
    }
}

fn default_drain_secs() -> u64 {
    30
}

/// `[metrics]`: the operations listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty turns it off.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9977".into()
}

/// Checks the two sections; returns the bad key and the problem.
pub fn validate(daemon: &DaemonConfig, metrics: &MetricsConfig) -> Result<(), (String, String)> {
    if daemon.drain_secs == 0 || daemon.drain_secs > 3600 {
        return Err(("daemon.drain_secs".into(), "must be 1-3600".into()));
    }
    if let Some(l) = &daemon.log_level
        && let Err(e) = tracing_subscriber::EnvFilter::try_new(l)
    {
        return Err(("daemon.log_level".into(), format!("not a log filter: {e}")));
    }
    if !metrics.listen.is_empty()
        && let Err(e) = metrics.listen.parse::<std::net::SocketAddr>()
    {
        return Err((
            "metrics.listen".into(),
            format!("not an address:port ({e})"),
        ));
    }
    Ok(())
}
