//! A bounded load test on loopback: 200 concurrent signed clients mix
//! creates, extends, shows, lists, snapshots and deletes for a fixed time
//! (BLOCKD_LOAD_SECS, 60 by default). Afterwards every accepted request has
//! reached a terminal state, rows and files agree, and nothing answered 5xx.
//! It prints p50/p99 latency and throughput.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    server_errors: Vec<String>,
    accepted_volumes: Vec<String>,
}

async fn timed(
    t: &mut Tally,
    c: &Client,
    m: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Answer {
    let started = Instant::now();
    let a = c.call(m.clone(), path, body).await;
    t.latencies.push(started.elapsed());
    if a.status.is_server_error() {
        t.server_errors
            .push(format!("{m} {path}: {} {}", a.status, a.text));
    }
    a
}

async fn client_loop(c: Client, n: usize, until: Instant) -> Tally {
    let mut t = Tally::default();
    let mut mine: Vec<String> = Vec::new();
    let mut step = n;
    while Instant::now() < until {
        step += 1;
        match step % 8 {
            0 | 4 => {
                let a = timed(
                    &mut t,
                    &c,
                    Method::POST,
                    "/v1/volumes",
                    Some(json!({"name": format!("load-{n}-{step}"), "size": 8})),
                )
                .await;
                if a.status == StatusCode::ACCEPTED
                    && let Some(id) = a.body["id"].as_str()
                {
                    mine.push(id.to_string());
                    t.accepted_volumes.push(id.to_string());
                }
            }
            1 => {
                if let Some(id) = mine.last() {
                    let p = format!("/v1/volumes/{id}/size");
                    timed(&mut t, &c, Method::PUT, &p, Some(json!({"size": 16}))).await;
                }
            }
            2 | 5 => {
                let p = match mine.first() {
                    Some(id) => format!("/v1/volumes/{id}"),
                    None => "/v1/volumes?limit=5".to_string(),
                };
                timed(&mut t, &c, Method::GET, &p, None).await;
            }
            3 | 6 => {
                timed(&mut t, &c, Method::GET, "/v1/volumes?limit=20", None).await;
            }
            _ => {
                if mine.len() > 1 {
                    let id = mine.remove(0);
                    if step % 16 == 7 {
                        let body = json!({"name": format!("s-{n}-{step}"), "volume_id": id});
                        timed(&mut t, &c, Method::POST, "/v1/snapshots", Some(body)).await;
                    }
                    let p = format!("/v1/volumes/{id}?cascade=true");
                    timed(&mut t, &c, Method::DELETE, &p, None).await;
                }
            }
        }
    }
    t
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ids_in(dir: &std::path::Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".img").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_lose_nothing() {
    let secs: u64 = std::env::var("BLOCKD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let d = TestDaemon::start_with(
        "[quota]\nvolumes = 100000\nsnapshots = 100000\ngigabytes = 100000000\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let c = d.client(if n % 2 == 0 { "a" } else { "b" });
        tasks.push(tokio::spawn(client_loop(c, n, until)));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("client task");
        all.latencies.extend(t.latencies);
        all.server_errors.extend(t.server_errors);
        all.accepted_volumes.extend(t.accepted_volumes);
    }
    let elapsed = started.elapsed();
    let mut lat = all.latencies.clone();
    lat.sort();
    eprintln!(
        "load: {} requests in {:.1} s = {:.0} req/s; p50 {:.1} ms, p99 {:.1} ms; {} volumes accepted",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        all.accepted_volumes.len()
    );
    assert!(
        all.server_errors.is_empty(),
        "5xx answers: {:#?}",
        all.server_errors
    );
    assert!(!all.accepted_volumes.is_empty(), "no create was accepted");

    // Every job ends.
    let db = d.dir.path().join("data/blockd.db");
    let deadline = Instant::now() + Duration::from_secs(120);
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open store read-only");
    loop {
        let open: i64 = conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} jobs never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stuck: i64 = conn
        .query_row(
            "SELECT count(*) FROM volumes WHERE state NOT IN ('available', 'error', 'in-use')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stuck, 0, "volumes left in a transient state");

    // No volume is lost: every accepted create is a row or was deleted by
    // a delete job that succeeded.
    let rows: HashSet<String> = conn
        .prepare("SELECT id FROM volumes")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let deleted: HashSet<String> = conn
        .prepare("SELECT volume_id FROM jobs WHERE kind = 'delete_volume' AND state = 'succeeded'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for id in &all.accepted_volumes {
        assert!(
            rows.contains(id) || deleted.contains(id),
            "volume {id} was accepted, then lost"
        );
    }
    // Rows and files agree, for volumes and snapshots.
    let files = ids_in(&d.dir.path().join("data/volumes"));
    let live: HashSet<String> = conn
        .prepare("SELECT id FROM volumes WHERE state != 'error'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        files.difference(&rows).count(),
        0,
        "files without a row: {:?}",
        files.difference(&rows).collect::<Vec<_>>()
    );
    assert_eq!(
        live.difference(&files).count(),
        0,
        "rows without a file: {:?}",
        live.difference(&files).collect::<Vec<_>>()
    );
    let snap_files = ids_in(&d.dir.path().join("data/snapshots"));
    let snap_rows: HashSet<String> = conn
        .prepare("SELECT id FROM snapshots WHERE status = 'available'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(snap_files, snap_rows, "snapshot files and rows differ");
}
