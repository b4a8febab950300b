//! Putting the daemon together: the data dir, the store, backends,
//! credentials, start-up recovery, and the HTTP listener with graceful
//! shutdown. Tests drive `Daemon::start` on 127.0.0.1:0.

use crate::api::scp::version::VersionTable;
use crate::api::scp::{self, ScpState};
use crate::backend::VolumeBackend;
use crate::backend::file::FileBackend;
use crate::clock::SharedClock;
use crate::config::{Config, load_or_generate_credentials};
use crate::export::LoopExporter;
use crate::service::Service;
use crate::store::Store;
use axum::Router;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {problem}")]
    DataDir { path: String, problem: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("metadata store {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    #[error("backend: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("{0}")]
    Cinder(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// The pieces of a started daemon, before it serves.
pub struct Daemon {
    pub service: Arc<Service>,
    pub scp: Arc<ScpState>,
    pub cinder: Arc<crate::api::cinder::CinderState>,
    pub data_dir: PathBuf,
    pub max_body: usize,
    pub metrics: Arc<crate::ops::metrics::Metrics>,
}

/// Makes `dir` (0700) and refuses one that others can write to.
fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let bad = |problem: String| StartError::DataDir {
        path: dir.display().to_string(),
        problem,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(e.to_string()))?;
    let meta = std::fs::metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(bad(format!(
            "mode {mode:o} lets other users write to it; use 0700"
        )));
    }
    if mode & 0o077 != 0 {
        tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"), "data dir is readable by others; 0700 is advised");
    }
    Ok(())
}

/// Creates the database file 0600 before SQLite opens it, so its log and
/// shared-memory files (which SQLite gives the database's mode) are 0600
/// too, and tightens files an older version or an operator left looser.
fn private_db_files(db: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let bad = |path: &Path, e: std::io::Error| StartError::DataDir {
        path: path.display().to_string(),
        problem: e.to_string(),
    };
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(db)
        .map_err(|e| bad(db, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| bad(&path, e))?;
            tracing::warn!(path = %path.display(), was = format!("{mode:o}"), "database file was readable by others; now 0600");
        }
    }
    Ok(())
}

impl Daemon {
    /// Opens everything the config names and finishes interrupted jobs.
    pub fn open(cfg: &Config, clock: SharedClock) -> Result<Daemon, StartError> {
        let data_dir = cfg.data_dir();
        prepare_data_dir(&data_dir)?;
        let db = data_dir.join("blockd.db");
        private_db_files(&db)?;
        let store = Arc::new(Store::open(&db).map_err(|source| StartError::Store {
            path: db.display().to_string(),
            source,
        })?);
        let file = FileBackend::open("file", &data_dir.join("volumes"))?;
        let mut backends: HashMap<String, Arc<dyn VolumeBackend>> = HashMap::new();
        backends.insert("file".into(), Arc::new(file));
        for b in &cfg.backends {
            let opened: Arc<dyn VolumeBackend> = match b.kind {
                crate::config::BackendKind::File => Arc::new(FileBackend::open(
                    &b.name,
                    &data_dir.join("backends").join(&b.name).join("volumes"),
                )?),
                crate::config::BackendKind::Lvm => {
                    Arc::new(crate::backend::lvm::LvmBackend::open(b, &data_dir)?)
                }
            };
            backends.insert(b.name.clone(), opened);
        }

        let creds = if cfg.scp.credentials.is_empty() {
            let (c, new) = load_or_generate_credentials(&data_dir)?;
            let path = data_dir.join(crate::config::CREDENTIALS_FILE);
            if new {
                tracing::info!(path = %path.display(), "generated SCP credentials (no credentials configured)");
            } else {
                tracing::info!(path = %path.display(), "using generated SCP credentials");
            }
            c
        } else {
            cfg.scp.credentials.clone()
        };

        let exporter = Arc::new(LoopExporter::new());
        if !exporter.qos_enforced() {
            tracing::warn!(
                "no blkio throttle on this host: QoS limits are stored but not enforced"
            );
        }
        let vhost = Arc::new(crate::export::VhostExporter::new(
            &cfg.export.run_dir.join("vhost"),
        ));
        let exporter = Arc::new(crate::export::Exporters::new(vec![exporter, vhost]));
        let service = Arc::new(Service::new(cfg, store, backends, exporter, clock.clone()));
        let scp = Arc::new(ScpState::new(
            service.clone(),
            clock,
            VersionTable::new(cfg.versions()),
            &creds,
            cfg.scp.signature_window_secs,
            &cfg.scp.url_scheme,
        ));
        let validator =
            crate::api::cinder::auth::validator_for(&cfg.cinder).map_err(StartError::Cinder)?;
        let cinder = Arc::new(crate::api::cinder::CinderState::new(
            service.clone(),
            validator,
            &cfg.cinder,
        ));
        Ok(Daemon {
            service,
            scp,
            cinder,
            data_dir,
            max_body: cfg.scp.max_body_bytes,
            metrics: Arc::new(crate::ops::metrics::Metrics::new()),
        })
    }

    /// Resumes what a crash left unfinished. Needs a running runtime.
    pub fn recover(&self) -> Result<(), StartError> {
        let (resumed, failed) = self.service.recover().map_err(|source| StartError::Store {
            path: self.data_dir.join("blockd.db").display().to_string(),
            source,
        })?;
        if resumed + failed > 0 {
            tracing::info!(resumed, failed, "start-up recovery done");
        }
        Ok(())
    }

    pub fn scp_app(&self) -> Router {
        self.dialect(
            "scp",
            scp::router(self.scp.clone(), self.max_body),
            Some(scp::openapi::document()),
        )
    }

    /// What every dialect's router gets: `GET /openapi.json` with its
    /// document, request metrics and request ids.
    pub fn dialect(
        &self,
        name: &'static str,
        router: Router,
        doc: Option<serde_json::Value>,
    ) -> Router {
        let router = match doc {
            Some(doc) => {
                let doc = Arc::new(doc);
                router.route(
                    "/openapi.json",
                    axum::routing::get(move || {
                        let d = doc.clone();
                        async move { axum::Json((*d).clone()) }
                    }),
                )
            }
            None => router,
        };
        self.metrics
            .instrument(name, router)
            .layer(axum::middleware::from_fn(crate::api::request_id))
    }

    pub fn cinder_app(&self) -> Router {
        self.dialect(
            "cinder",
            crate::api::cinder::router(self.cinder.clone()),
            Some(crate::api::cinder::openapi::document()),
        )
    }

    /// The operations listener: `/metrics`, `/healthz`, `/readyz`.
    pub fn ops_app(&self) -> Router {
        crate::ops::metrics::router(crate::ops::metrics::OpsState {
            metrics: self.metrics.clone(),
            service: self.service.clone(),
        })
    }
}

/// How long a client may take to send a request head; also how long a
/// keep-alive connection may sit idle between requests.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send a request body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// requests finish. Slow clients are cut off by the two timeouts above.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        BODY_TIMEOUT,
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let local = l.local_addr().map_err(|source| StartError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    Ok((l, local))
}
