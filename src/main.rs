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
    blockd::server::run(listener, daemon.scp_app(), shutdown_signal())
        .await
        .context("serving the SCP API")?;
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            log_format,
        } => {
            init_logging(&log_format);
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(serve(config, data_dir))
        }
        Command::DefaultConfig => {
            print!("{}", blockd::config::EMBEDDED_DEFAULT);
            Ok(())
        }
    }
}
