//! The blockd binary: `blockd serve [--config FILE]`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "blockd", version, about = "Block-storage daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override the data dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Log format: text or json.
        #[arg(long, default_value = "text")]
        log_format: String,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Snapshots on this host.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Host exports of volumes, read from the local store.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Re-hash a snapshot against its manifest; exit 1 on the first bad chunk.
    Verify {
        snapshot_id: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn snapshot_verify(
    id: &str,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    let cfg = blockd::config::Config::load(config.as_deref())?;
    let dir = data_dir.unwrap_or_else(|| cfg.data_dir());
    let store = blockd::store::Store::open_read_only(&dir.join("blockd.db"))?;
    let s = store
        .get_snapshot(None, id)
        .with_context(|| format!("snapshot {id}"))?;
    let data = dir.join("snapshots").join(format!("{}.img", s.id));
    let manifest = blockd::copy::Manifest::read_from(&blockd::backend::manifest_path(&data))?;
    if let Some(sum) = &s.checksum
        && *sum != manifest.checksum_hex()
    {
        println!("{id}\tBAD\tmanifest checksum differs from the store");
        return Ok(std::process::ExitCode::from(1));
    }
    let r = blockd::copy::verify(&data, &manifest)?;
    match r.first_bad_chunk {
        None if r.ok => {
            println!("{id}\tOK\t{} chunks", r.chunks);
            Ok(std::process::ExitCode::SUCCESS)
        }
        bad => {
            println!("{id}\tBAD\tfirst bad chunk {bad:?} of {}", r.chunks);
            Ok(std::process::ExitCode::from(1))
        }
    }
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Show where a volume is exposed on this host (e.g. /dev/loop3).
    Show {
        volume_id: String,
        /// Config file of the daemon (for its data dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code 2: the volume exists but is not exported.
fn export_show(
    volume_id: &str,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let cfg = blockd::config::Config::load(config.as_deref())?;
    let dir = data_dir.unwrap_or_else(|| cfg.data_dir());
    let db = dir.join("blockd.db");
    let store = blockd::store::Store::open_read_only(&db)
        .with_context(|| format!("opening {}", db.display()))?;
    let v = store
        .get_volume(None, volume_id)
        .with_context(|| format!("volume {volume_id}"))?;
    let x = store.export(volume_id)?;
    if json {
        let out = serde_json::json!({
            "volume_id": v.id,
            "state": v.state.as_str(),
            "export": x,
            "attachments": store.attachments(volume_id)?,
        });
        println!("{out}");
    } else {
        match &x {
            Some(x) => println!("{}\t{}\t{}\t{}", v.id, v.state, x.kind, x.host_path),
            None => println!("{}\t{}\tnot exported", v.id, v.state),
        }
    }
    Ok(if x.is_some() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn serve(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let mut cfg = blockd::config::Config::load(config.as_deref())?;
    if data_dir.is_some() {
        cfg.data_dir = data_dir;
    }
    let daemon = blockd::server::Daemon::open(&cfg, blockd::clock::system())?;
    daemon.recover()?;
    let (listener, addr) = blockd::server::bind(&cfg.scp.listen).await?;
    tracing::info!(%addr, data_dir = %daemon.data_dir.display(), "SCP API listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cinder = if cfg.cinder.enabled {
        let (l, a) = blockd::server::bind(&cfg.cinder.listen).await?;
        tracing::info!(addr = %a, auth = ?cfg.cinder.auth, "Cinder API listening");
        let mut rx = stop_rx.clone();
        let app = daemon.cinder_app();
        Some(tokio::spawn(async move {
            blockd::server::run(l, app, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }))
    } else {
        None
    };
    blockd::server::run(listener, daemon.scp_app(), async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await
    .context("serving the SCP API")?;
    drop(stop_rx);
    if let Some(c) = cinder {
        c.await
            .context("the Cinder listener task")?
            .context("serving the Cinder API")?;
    }
    if !daemon
        .service
        .drain(std::time::Duration::from_secs(30))
        .await
    {
        tracing::warn!("jobs still running at exit; start-up recovery will finish them");
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            log_format,
        } => {
            init_logging(&log_format);
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(serve(config, data_dir))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            print!("{}", blockd::config::EMBEDDED_DEFAULT);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Export {
            command:
                ExportCommand::Show {
                    volume_id,
                    config,
                    data_dir,
                    json,
                },
        } => export_show(&volume_id, config, data_dir, json),
        Command::Snapshot {
            command:
                SnapshotCommand::Verify {
                    snapshot_id,
                    config,
                    data_dir,
                },
        } => snapshot_verify(&snapshot_id, config, data_dir),
    }
}
