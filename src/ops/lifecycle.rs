//! The daemon's life: open, recover, bind, tell systemd READY=1, serve
//! until SIGTERM or SIGINT (reloading on SIGHUP), then STOPPING=1, stop
//! accepting, drain jobs for a bounded time and close the store.

use super::logging::LogControl;
use super::notify::{Notifier, watchdog_interval};
use super::reload::{Reloader, load};
use crate::config::ConfigError;
use crate::server::{Daemon, StartError, bind, run};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How `blockd serve` was started.
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub log: LogControl,
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("listener {name} failed: {source}")]
    Serve {
        name: &'static str,
        source: std::io::Error,
    },
}

/// How long copies get to stop once the drain time is up.
const COPY_STOP_GRACE: Duration = Duration::from_secs(5);

/// Microseconds of CLOCK_MONOTONIC, for the RELOADING=1 message.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Runs the daemon until a stop signal; returns once the store is closed.
pub async fn serve(opts: ServeOptions) -> Result<(), LifecycleError> {
    let cfg = load(opts.config.as_deref(), opts.data_dir.as_ref())?;
    let notifier = Notifier::from_env();
    // Handlers first: a signal during start-up waits here instead of killing us.
    let sig = |k| signal(k).map_err(LifecycleError::Signals);
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );

    notifier.send("STATUS=opening the store and recovering");
    let daemon = Daemon::open(&cfg, crate::clock::system())?;
    daemon.recover()?;
    let (scp_listener, scp_addr) = bind(&cfg.scp.listen).await?;
    let cinder_listener = if cfg.cinder.enabled {
        Some(bind(&cfg.cinder.listen).await?)
    } else {
        None
    };
    let ops_listener = match cfg.metrics.listen.as_str() {
        "" => None,
        addr => Some(bind(addr).await?),
    };

    let stop = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    let mut serve_on = |name: &'static str, l, app| {
        let s = stop.clone();
        servers.spawn(async move {
            run(l, app, s.cancelled_owned())
                .await
                .map_err(|source| LifecycleError::Serve { name, source })
        });
    };
    serve_on("scp", scp_listener, daemon.scp_app());
    tracing::info!(addr = %scp_addr, data_dir = %daemon.data_dir.display(), "SCP API listening");
    if let Some((l, addr)) = cinder_listener {
        serve_on("cinder", l, daemon.cinder_app());
        tracing::info!(%addr, auth = ?cfg.cinder.auth, "Cinder API listening");
    }
    // The operations listener stays up until the drain is over, so that
    // /readyz can say "shutting down" meanwhile.
    let ops_stop = CancellationToken::new();
    let ops = ops_listener.map(|(l, addr)| {
        tracing::info!(%addr, "metrics and health listening");
        let app = daemon.ops_app();
        let s = ops_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = run(l, app, s.cancelled_owned()).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        })
    });

    notifier.send(&format!("READY=1\nSTATUS=serving SCP on {scp_addr}"));
    let watchdog = watchdog_interval().map(|every| {
        let n = notifier.clone();
        tracing::info!(every_ms = every.as_millis() as u64, "systemd watchdog on");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                n.send("WATCHDOG=1");
            }
        })
    });

    let mut reloader = Reloader::new(
        opts.config.clone(),
        opts.data_dir.clone(),
        cfg,
        daemon.scp.clone(),
        daemon.service.clone(),
        opts.log.clone(),
    )?;
    let mut failure = None;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                notifier.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
                reloader.reload_and_log();
                notifier.send("READY=1");
            }
            Some(r) = servers.join_next() => {
                let e = match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => LifecycleError::Serve { name: "listener", source: std::io::Error::other("stopped") },
                    Err(e) => LifecycleError::Serve { name: "listener", source: std::io::Error::other(e.to_string()) },
                };
                tracing::error!(error = %e, "a listener failed; shutting down");
                failure = Some(e);
                break;
            }
        }
    }

    let drain = Duration::from_secs(reloader.current().daemon.drain_secs);
    let deadline = Instant::now() + drain;
    notifier.send(&format!(
        "STOPPING=1\nSTATUS=draining (up to {} s)",
        drain.as_secs()
    ));
    stop.cancel();
    let requests_done = tokio::time::timeout(drain, async {
        while servers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !requests_done {
        tracing::warn!("requests still open at the drain deadline; closing them");
        servers.abort_all();
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    if !daemon.service.shutdown(left, COPY_STOP_GRACE).await {
        tracing::warn!("jobs still running at exit; start-up recovery will finish them");
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    ops_stop.cancel();
    if let Some(h) = ops {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    match daemon.service.store().close_clean() {
        Ok(()) => tracing::info!("store closed"),
        Err(e) => {
            tracing::error!(error = %e, "store checkpoint failed; the next start replays its log")
        }
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
