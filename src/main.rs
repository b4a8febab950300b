//! The blockd binary: `blockd serve`, and the client commands in `blockd::cli`.

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

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            log_format,
        } => {
            let cfg = blockd::ops::reload::load(config.as_deref(), data_dir.as_ref())?;
            let filter = blockd::ops::logging::initial_filter(cfg.daemon.log_level.as_deref());
            let log = blockd::ops::logging::init(log_format == "json", &filter);
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let opts = blockd::ops::lifecycle::ServeOptions {
                config,
                data_dir,
                log,
            };
            let r = rt.block_on(blockd::ops::lifecycle::serve(opts));
            // Blocking work abandoned at the drain deadline is not waited for.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            r?;
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
