//! The command-line client: `blockd volume|snapshot|attach|detach|export`.
//! Requests are signed SCP calls to the daemon; `export show` and
//! `snapshot verify --local` read this host's store instead. Output is a
//! table, or JSON with `--json`; exit codes are in `exit`.

pub mod client;
mod local;
mod wait;

use clap::{Args, Subcommand};
use client::Client;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes, stable for scripts.
pub mod exit {
    /// The job ended in an error state, or a verify found a bad chunk.
    pub const FAILED: u8 = 1;
    /// `export show`: the volume exists but is not exported (usage errors
    /// from argument parsing also exit 2).
    pub const NOT_EXPORTED: u8 = 2;
    /// The daemon refused the request (a 4xx answer, e.g. unknown id, bad
    /// input, quota, wrong state, bad credentials).
    pub const REFUSED: u8 = 3;
    /// The daemon could not be reached or failed (5xx).
    pub const UNREACHABLE: u8 = 4;
    /// No usable endpoint, credentials or config.
    pub const SETUP: u8 = 5;
    /// `--wait` gave up before the job ended.
    pub const TIMEOUT: u8 = 6;
}

/// Why a command did not succeed: a message and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// HTTP status of a refusal.
    pub status: Option<u16>,
}

impl Failure {
    pub fn setup(m: impl Into<String>) -> Failure {
        Failure {
            code: exit::SETUP,
            message: m.into(),
            status: None,
        }
    }
    pub fn refused(status: u16, m: impl Into<String>) -> Failure {
        Failure {
            code: exit::REFUSED,
            message: m.into(),
            status: Some(status),
        }
    }
    pub fn unreachable(m: impl Into<String>) -> Failure {
        Failure {
            code: exit::UNREACHABLE,
            message: m.into(),
            status: None,
        }
    }
    pub fn failed(m: impl Into<String>) -> Failure {
        Failure {
            code: exit::FAILED,
            message: m.into(),
            status: None,
        }
    }
    pub fn timeout(m: impl Into<String>) -> Failure {
        Failure {
            code: exit::TIMEOUT,
            message: m.into(),
            status: None,
        }
    }
}

/// Where the daemon is and how to sign; flags win over the environment,
/// which wins over the daemon's own config and credentials file.
#[derive(Args, Debug, Clone, Default)]
pub struct Conn {
    /// SCP endpoint, e.g. http://127.0.0.1:8780 [default: the config's scp.listen]
    #[arg(long, env = "BLOCKD_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    #[arg(long, env = "BLOCKD_ACCESS_KEY", global = true)]
    pub access_key: Option<String>,
    #[arg(long, env = "BLOCKD_SECRET_KEY", hide_env_values = true, global = true)]
    pub secret_key: Option<String>,
    /// The daemon's config file [default: /etc/blockd/blockd.toml if present]
    #[arg(long, short, env = "BLOCKD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The daemon's data dir (for its generated credentials.toml).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// SCP API version to speak.
    #[arg(long, default_value = "1.3", global = true)]
    pub api_version: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds `--wait` waits before giving up.
    #[arg(long, default_value_t = 600, global = true)]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Volumes, through the SCP API.
    Volume {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Snapshots, through the SCP API.
    Snapshot {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Attach a volume to a server.
    Attach {
        #[command(flatten)]
        conn: Conn,
        volume_id: String,
        server_id: String,
        /// Wait until the volume is in-use (then print the export).
        #[arg(long)]
        wait: bool,
        /// Export kind: loop or vhost-user-blk (default: the volume type's).
        #[arg(long)]
        export_kind: Option<String>,
        /// The guest sees the volume read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Detach a volume from a server.
    Detach {
        #[command(flatten)]
        conn: Conn,
        volume_id: String,
        server_id: String,
        /// Wait until the detach has finished.
        #[arg(long)]
        wait: bool,
    },
    /// Host exports of volumes, read from the local store.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (size in GiB, a multiple of 8).
    Create {
        name: String,
        #[arg(long)]
        size: u64,
        /// Volume type name or id.
        #[arg(long = "type")]
        volume_type: Option<String>,
        /// Make it from this snapshot.
        #[arg(long)]
        snapshot: Option<String>,
        /// Fill it from this Glance image (marks it bootable).
        #[arg(long = "image", conflicts_with = "snapshot")]
        image_id: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// List volumes.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one volume (blockd's own view with --json adds jobs and exports).
    Show { volume_id: String },
    /// Grow a volume to a new size in GiB.
    Extend {
        volume_id: String,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        wait: bool,
    },
    /// Delete a volume; an absent one is not an error.
    Delete {
        volume_id: String,
        /// Delete its snapshots too.
        #[arg(long)]
        cascade: bool,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot a volume (a full copy).
    Create {
        volume_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Needed for an in-use volume.
        #[arg(long)]
        force: bool,
        /// Wait for the copy, with a progress bar on a terminal.
        #[arg(long)]
        wait: bool,
    },
    /// List snapshots.
    List {
        /// Only this volume's.
        #[arg(long)]
        volume: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one snapshot.
    Show { snapshot_id: String },
    /// Delete a snapshot; an absent one is not an error.
    Delete {
        snapshot_id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Re-hash a snapshot against its manifest; exit 1 on a bad chunk.
    /// Through the daemon, or with --local (implied by --data-dir) from the
    /// files on this host, which works while the daemon is stopped.
    Verify {
        snapshot_id: String,
        #[arg(long)]
        local: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
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

/// Runs a client command; prints its error and returns its exit code.
pub fn run(cmd: Command) -> ExitCode {
    let r = match cmd {
        Command::Export {
            command:
                ExportCommand::Show {
                    volume_id,
                    config,
                    data_dir,
                    json,
                },
        } => local::export_show(&volume_id, config, data_dir, json),
        Command::Snapshot {
            conn,
            command: SnapshotCommand::Verify { snapshot_id, local },
        } if local || conn.data_dir.is_some() => {
            local::snapshot_verify(&snapshot_id, conn.config.clone(), conn.data_dir.clone())
        }
        remote => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(run_remote(remote)),
            Err(e) => Err(Failure::setup(format!("starting the runtime: {e}"))),
        },
    };
    match r {
        Ok(code) => code,
        Err(f) => {
            eprintln!("blockd: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn conn_of(cmd: &Command) -> &Conn {
    match cmd {
        Command::Volume { conn, .. }
        | Command::Snapshot { conn, .. }
        | Command::Attach { conn, .. }
        | Command::Detach { conn, .. } => conn,
        Command::Export { .. } => unreachable!("export runs locally"),
    }
}

fn id_of(v: &Value) -> Result<String, Failure> {
    v["id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| Failure::unreachable(format!("the answer has no id: {v}")))
}

/// Sends a DELETE; false when the thing was already absent.
async fn delete(c: &Client, path: &str) -> Result<bool, Failure> {
    match c.call(Method::DELETE, path, None).await {
        Err(f) if f.status == Some(404) => Ok(false),
        r => r.map(|_| true),
    }
}

async fn run_remote(cmd: Command) -> Result<ExitCode, Failure> {
    let conn = conn_of(&cmd).clone();
    let c = Client::new(&conn)?;
    let out = Printer { json: conn.json };
    let timeout = std::time::Duration::from_secs(conn.timeout);
    match cmd {
        Command::Volume { command, .. } => match command {
            VolumeCommand::Create {
                name,
                size,
                volume_type,
                snapshot,
                image_id,
                wait,
            } => {
                let mut body = json!({"name": name, "size": size});
                if let Some(t) = volume_type {
                    body["volume_type"] = t.into();
                }
                if let Some(s) = snapshot {
                    body["snapshot_id"] = s.into();
                }
                if let Some(i) = image_id {
                    body["image_id"] = i.into();
                }
                let (_, v) = c.call(Method::POST, "/v1/volumes", Some(&body)).await?;
                let v = if wait {
                    wait::volume(&c, &id_of(&v)?, wait::Until::Settled, timeout).await?
                } else {
                    v
                };
                out.volumes(&[v]);
            }
            VolumeCommand::List { limit } => {
                let v = c.get(&format!("/v1/volumes?limit={limit}")).await?;
                out.list(&v, "volumes", Printer::volumes);
            }
            VolumeCommand::Show { volume_id } => {
                if out.json {
                    out.raw(&c.get(&format!("/blockd/v1/volumes/{volume_id}")).await?);
                } else {
                    out.volumes(&[c.get(&format!("/v1/volumes/{volume_id}")).await?]);
                }
            }
            VolumeCommand::Extend {
                volume_id,
                size,
                wait,
            } => {
                c.call(
                    Method::PUT,
                    &format!("/v1/volumes/{volume_id}/size"),
                    Some(&json!({"size": size})),
                )
                .await?;
                let v = if wait {
                    wait::volume(&c, &volume_id, wait::Until::Settled, timeout).await?
                } else {
                    c.get(&format!("/v1/volumes/{volume_id}")).await?
                };
                out.volumes(&[v]);
            }
            VolumeCommand::Delete {
                volume_id,
                cascade,
                wait,
            } => {
                let path = format!("/v1/volumes/{volume_id}?cascade={cascade}");
                if !delete(&c, &path).await? {
                    out.done(&volume_id, "absent", false);
                    return Ok(ExitCode::SUCCESS);
                }
                if wait {
                    wait::volume(&c, &volume_id, wait::Until::Gone, timeout).await?;
                    out.done(&volume_id, "deleted", true);
                } else {
                    out.done(&volume_id, "deleting", true);
                }
            }
        },
        Command::Snapshot { command, .. } => match command {
            SnapshotCommand::Create {
                volume_id,
                name,
                description,
                force,
                wait,
            } => {
                let mut body = json!({"name": name, "volume_id": volume_id, "force": force});
                if let Some(d) = description {
                    body["description"] = d.into();
                }
                let (_, s) = c.call(Method::POST, "/v1/snapshots", Some(&body)).await?;
                let s = if wait {
                    wait::snapshot(&c, &id_of(&s)?, timeout, !out.json).await?
                } else {
                    s
                };
                out.snapshots(&[s]);
            }
            SnapshotCommand::List { volume, limit } => {
                let mut path = format!("/v1/snapshots?limit={limit}");
                if let Some(v) = volume {
                    path += &format!("&volume_id={v}");
                }
                out.list(&c.get(&path).await?, "snapshots", Printer::snapshots);
            }
            SnapshotCommand::Show { snapshot_id } => {
                out.snapshots(&[c.get(&format!("/v1/snapshots/{snapshot_id}")).await?]);
            }
            SnapshotCommand::Delete { snapshot_id, wait } => {
                let path = format!("/v1/snapshots/{snapshot_id}");
                if !delete(&c, &path).await? {
                    out.done(&snapshot_id, "absent", false);
                    return Ok(ExitCode::SUCCESS);
                }
                if wait {
                    wait::gone(&c, &path, timeout).await?;
                    out.done(&snapshot_id, "deleted", true);
                } else {
                    out.done(&snapshot_id, "deleting", true);
                }
            }
            SnapshotCommand::Verify { snapshot_id, .. } => {
                let path = format!("/blockd/v1/snapshots/{snapshot_id}/verify");
                let (_, r) = c.call(Method::POST, &path, None).await?;
                let ok = r["ok"].as_bool() == Some(true);
                if out.json {
                    out.raw(&r);
                } else if ok {
                    println!("{snapshot_id}\tOK\t{} chunks", r["chunks"]);
                } else {
                    println!(
                        "{snapshot_id}\tBAD\tfirst bad chunk {} of {}",
                        r["first_bad_chunk"], r["chunks"]
                    );
                }
                if !ok {
                    return Ok(ExitCode::from(exit::FAILED));
                }
            }
        },
        Command::Attach {
            volume_id,
            server_id,
            wait,
            export_kind,
            read_only,
            ..
        } => {
            let mut body = json!({"server_id": server_id});
            if let Some(k) = export_kind {
                body["export_kind"] = json!(k);
            }
            if read_only {
                body["read_only"] = json!(true);
            }
            let (_, a) = c
                .call(
                    Method::POST,
                    &format!("/v1/volumes/{volume_id}/servers"),
                    Some(&body),
                )
                .await?;
            if wait {
                wait::volume(&c, &volume_id, wait::Until::Settled, timeout).await?;
            }
            out.attachment(&a);
            if wait {
                let (_, v) = c
                    .call(
                        Method::GET,
                        &format!("/blockd/v1/volumes/{volume_id}"),
                        None,
                    )
                    .await?;
                if let Some(x) = v.get("export").filter(|x| !x.is_null()) {
                    let s = |k: &str| x[k].as_str().unwrap_or("").to_string();
                    println!("export\t{}\t{}", s("kind"), s("host_path"));
                }
            }
        }
        Command::Detach {
            volume_id,
            server_id,
            wait,
            ..
        } => {
            let path = format!("/v1/volumes/{volume_id}/servers/{server_id}");
            c.call(Method::DELETE, &path, None).await?;
            let v = if wait {
                wait::volume(&c, &volume_id, wait::Until::Settled, timeout).await?
            } else {
                c.get(&format!("/v1/volumes/{volume_id}")).await?
            };
            out.volumes(&[v]);
        }
        Command::Export { .. } => unreachable!("export runs locally"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Tables by default, JSON with `--json`.
struct Printer {
    json: bool,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under headers, each column as wide as its widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

impl Printer {
    fn raw(&self, v: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    }

    fn list(&self, v: &Value, key: &str, rows: fn(&Printer, &[Value])) {
        if self.json {
            self.raw(v);
        } else {
            rows(self, v[key].as_array().map(|a| a.as_slice()).unwrap_or(&[]));
        }
    }

    fn volumes(&self, vs: &[Value]) {
        if self.json {
            return vs.iter().for_each(|v| self.raw(v));
        }
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| {
                let servers: Vec<String> = v["servers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| format!("{}:{}", cell(&s["id"]), cell(&s["device"])))
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    cell(&v["id"]),
                    cell(&v["name"]),
                    cell(&v["size"]),
                    cell(&v["state"]),
                    cell(&v["volume_type"]),
                    if servers.is_empty() {
                        "-".into()
                    } else {
                        servers.join(",")
                    },
                ]
            })
            .collect();
        table(&["ID", "NAME", "GIB", "STATE", "TYPE", "SERVERS"], &rows);
    }

    fn snapshots(&self, ss: &[Value]) {
        if self.json {
            return ss.iter().for_each(|v| self.raw(v));
        }
        let rows: Vec<Vec<String>> = ss
            .iter()
            .map(|s| {
                vec![
                    cell(&s["id"]),
                    cell(&s["name"]),
                    cell(&s["volume_id"]),
                    cell(&s["size"]),
                    cell(&s["status"]),
                ]
            })
            .collect();
        table(&["ID", "NAME", "VOLUME", "GIB", "STATUS"], &rows);
    }

    fn attachment(&self, a: &Value) {
        if self.json {
            return self.raw(a);
        }
        table(
            &["VOLUME", "SERVER", "DEVICE"],
            &[vec![
                cell(&a["volume_id"]),
                cell(&a["server_id"]),
                cell(&a["device"]),
            ]],
        );
    }

    fn done(&self, id: &str, what: &str, changed: bool) {
        if self.json {
            self.raw(&json!({"id": id, "result": what, "changed": changed}));
        } else {
            println!("{id}\t{what}");
        }
    }
}
