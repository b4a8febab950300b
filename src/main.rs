//! The blockd binary: `blockd serve`, and the client commands in `blockd::cli`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

// Requests allocate many small short-lived buffers; mimalloc serves them
// with less locking than glibc's allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[command(flatten)]
    Client(blockd::cli::Command),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let _failpoints = blockd::failpoint::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            log_format,
        } => {
            // Whatever the daemon creates is its own: 0600 files, 0700 dirs.
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
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
        Command::Client(c) => Ok(blockd::cli::run(c)),
    }
}
