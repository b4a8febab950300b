//! Metrics in the Prometheus (OpenMetrics) text format, and the operations
//! router: `/metrics`, `/healthz` (the process answers) and `/readyz` (the
//! store and every backend answer, and shutdown has not begun).
//!
//! Request metrics come from one middleware that each dialect's router
//! gets through `Metrics::instrument`; routes are labelled by their
//! matched path template, never by the raw URL. Everything else is read
//! from the store and the service when scraped.

use crate::copy::{EngineKind, stats as copy_stats};
use crate::service::Service;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Instant;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    volumes: Family<Labels, Gauge>,
    volume_bytes: Family<Labels, Gauge>,
    snapshots: Family<Labels, Gauge>,
    jobs: Family<Labels, Gauge>,
    exports: Family<Labels, Gauge>,
    backend_free: Family<Labels, Gauge>,
    backend_total: Family<Labels, Gauge>,
    backend_up: Family<Labels, Gauge>,
    copy_bytes: Family<Labels, Counter>,
    copy_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    copies: Family<Labels, Counter>,
    copies_failed: Counter,
    copies_in_flight: Gauge,
    copy_bytes_in_flight: Gauge,
    copy_engine: Family<Labels, Gauge>,
    image_cache_hits: Counter,
    image_cache_misses: Counter,
    /// One scrape at a time: gauges are rebuilt, then encoded.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("blockd");
        let requests = Family::<Labels, Counter>::default();
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let m = Metrics {
            requests,
            latency,
            volumes: Family::default(),
            volume_bytes: Family::default(),
            snapshots: Family::default(),
            jobs: Family::default(),
            exports: Family::default(),
            backend_free: Family::default(),
            backend_total: Family::default(),
            backend_up: Family::default(),
            copy_bytes: Family::default(),
            copy_seconds: Family::default(),
            copies: Family::default(),
            copies_failed: Counter::default(),
            copies_in_flight: Gauge::default(),
            copy_bytes_in_flight: Gauge::default(),
            copy_engine: Family::default(),
            image_cache_hits: Counter::default(),
            image_cache_misses: Counter::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "Requests served, by dialect, method, route template and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Request latency, by dialect, method, route template and status",
            m.latency.clone(),
        );
        let gauges: [(&str, &str, &Family<Labels, Gauge>); 9] = [
            ("volumes", "Volumes by backend and state", &m.volumes),
            (
                "volume_bytes",
                "Provisioned bytes of volumes by backend and state",
                &m.volume_bytes,
            ),
            ("snapshots", "Snapshots by status", &m.snapshots),
            ("jobs", "Jobs by kind and state", &m.jobs),
            ("exports", "Host exports by kind", &m.exports),
            (
                "backend_free_bytes",
                "Free capacity of each backend",
                &m.backend_free,
            ),
            (
                "backend_total_bytes",
                "Total capacity of each backend",
                &m.backend_total,
            ),
            (
                "backend_up",
                "1 when the backend answered its capacity query",
                &m.backend_up,
            ),
            (
                "copy_engine",
                "1 for the copy engine this host uses (io_uring or fallback)",
                &m.copy_engine,
            ),
        ];
        for (name, help, fam) in gauges {
            r.register(name, help, fam.clone());
        }
        r.register(
            "copy_bytes",
            "Bytes written by finished copies, by engine",
            m.copy_bytes.clone(),
        );
        r.register(
            "copy_seconds",
            "Time spent in finished copies, by engine (bytes / seconds = throughput)",
            m.copy_seconds.clone(),
        );
        r.register("copies", "Finished copies, by engine", m.copies.clone());
        r.register(
            "copies_failed",
            "Copies that ended in an error or were cancelled",
            m.copies_failed.clone(),
        );
        r.register(
            "copies_in_flight",
            "Snapshot copies running now",
            m.copies_in_flight.clone(),
        );
        r.register(
            "copy_in_flight_bytes_done",
            "Bytes done by the snapshot copies running now",
            m.copy_bytes_in_flight.clone(),
        );
        r.register(
            "image_cache_hits",
            "Volumes made from an image copied from the image cache",
            m.image_cache_hits.clone(),
        );
        r.register(
            "image_cache_misses",
            "Volumes made from an image that had to download it (cache on)",
            m.image_cache_misses.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Adds request metrics for `dialect` to every route of `router`.
    pub fn instrument(self: &Arc<Self>, dialect: &'static str, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(
            (self.clone(), dialect),
            track,
        ))
    }

    fn observe(&self, dialect: &'static str, method: &str, route: &str, status: u16, secs: f64) {
        let labels: Labels = vec![
            ("dialect", dialect.to_string()),
            ("method", method.to_string()),
            ("route", route.to_string()),
            ("status", status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(secs);
    }

    /// Rebuilds the scrape-time values and encodes everything.
    pub fn render(&self, svc: &Service) -> Result<String, String> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let stats = svc.store().stats().map_err(|e| e.to_string())?;
        let set = |fam: &Family<Labels, Gauge>, rows: Vec<(Labels, u64)>| {
            fam.clear();
            for (l, v) in rows {
                fam.get_or_create(&l).set(v as i64);
            }
        };
        let two = |a: &'static str, b: &'static str, g: &crate::store::Group| -> Labels {
            vec![(a, g.labels[0].clone()), (b, g.labels[1].clone())]
        };
        let one =
            |a: &'static str, g: &crate::store::Group| -> Labels { vec![(a, g.labels[0].clone())] };
        set(
            &self.volumes,
            stats
                .volumes
                .iter()
                .map(|g| (two("backend", "state", g), g.count))
                .collect(),
        );
        set(
            &self.volume_bytes,
            stats
                .volumes
                .iter()
                .map(|g| (two("backend", "state", g), g.bytes))
                .collect(),
        );
        set(
            &self.snapshots,
            stats
                .snapshots
                .iter()
                .map(|g| (one("status", g), g.count))
                .collect(),
        );
        set(
            &self.jobs,
            stats
                .jobs
                .iter()
                .map(|g| (two("kind", "state", g), g.count))
                .collect(),
        );
        set(
            &self.exports,
            stats
                .exports
                .iter()
                .map(|g| (one("kind", g), g.count))
                .collect(),
        );
        let caps = svc.backend_capacities();
        let backend = |n: &str| -> Labels { vec![("backend", n.to_string())] };
        set(
            &self.backend_free,
            caps.iter()
                .filter_map(|(n, c)| c.as_ref().ok().map(|c| (backend(n), c.free)))
                .collect(),
        );
        set(
            &self.backend_total,
            caps.iter()
                .filter_map(|(n, c)| c.as_ref().ok().map(|c| (backend(n), c.total)))
                .collect(),
        );
        set(
            &self.backend_up,
            caps.iter()
                .map(|(n, c)| (backend(n), c.is_ok() as u64))
                .collect(),
        );
        for kind in [EngineKind::Uring, EngineKind::Fallback] {
            let l: Labels = vec![("engine", engine_name(kind).to_string())];
            let t = copy_stats::totals(kind);
            let c = self.copy_bytes.get_or_create(&l);
            c.inc_by(t.bytes.saturating_sub(c.get()));
            let c = self.copies.get_or_create(&l);
            c.inc_by(t.copies.saturating_sub(c.get()));
            let c = self.copy_seconds.get_or_create(&l);
            let secs = t.micros as f64 / 1e6;
            if secs > c.get() {
                c.inc_by(secs - c.get());
            }
        }
        self.copies_failed
            .inc_by(copy_stats::failed().saturating_sub(self.copies_failed.get()));
        self.image_cache_hits
            .inc_by(crate::images::cache::hits().saturating_sub(self.image_cache_hits.get()));
        self.image_cache_misses
            .inc_by(crate::images::cache::misses().saturating_sub(self.image_cache_misses.get()));
        let (n, done, _) = svc.copies_in_flight();
        self.copies_in_flight.set(n as i64);
        self.copy_bytes_in_flight.set(done as i64);
        let used = crate::copy::probe();
        set(
            &self.copy_engine,
            [EngineKind::Uring, EngineKind::Fallback]
                .into_iter()
                .map(|k| {
                    (
                        vec![("engine", engine_name(k).to_string())],
                        (k == used) as u64,
                    )
                })
                .collect(),
        );
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

fn engine_name(k: EngineKind) -> &'static str {
    match k {
        EngineKind::Uring => "io_uring",
        EngineKind::Fallback => "fallback",
    }
}

async fn track(
    State((m, dialect)): State<(Arc<Metrics>, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.observe(
        dialect,
        &method,
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// What the operations router needs.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub service: Arc<Service>,
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(st): State<OpsState>) -> Response {
    let r = tokio::task::spawn_blocking(move || st.metrics.render(&st.service)).await;
    match r {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<OpsState>) -> Response {
    let svc = st.service.clone();
    let checks = tokio::task::spawn_blocking(move || {
        let mut checks = serde_json::Map::new();
        let mut ok = true;
        let store = svc.store().ping();
        ok &= store.is_ok();
        checks.insert(
            "store".into(),
            json!(
                store
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| e.to_string())
            ),
        );
        for (name, cap) in svc.backend_capacities() {
            ok &= cap.is_ok();
            checks.insert(
                format!("backend:{name}"),
                json!(
                    cap.map(|_| "ok".to_string())
                        .unwrap_or_else(|e| e.to_string())
                ),
            );
        }
        let accepting = svc.is_accepting();
        ok &= accepting;
        checks.insert(
            "accepting".into(),
            json!(if accepting { "ok" } else { "shutting down" }),
        );
        (ok, checks)
    })
    .await;
    match checks {
        Ok((ok, checks)) => {
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let word = if ok { "ready" } else { "not ready" };
            (status, Json(json!({"status": word, "checks": checks}))).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "readiness task failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not ready"})),
            )
                .into_response()
        }
    }
}
