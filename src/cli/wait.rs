//! `--wait`: polls a volume or snapshot until its job has ended, with a
//! progress bar for snapshot copies on a terminal.

use super::Failure;
use super::client::Client;
use serde_json::Value;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(200);

/// What the wait is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The volume leaves every transitional state.
    Settled,
    /// The volume is gone.
    Gone,
}

const TRANSITIONAL: &[&str] = &[
    "creating",
    "extending",
    "deleting",
    "attaching",
    "detaching",
    "restoring",
    "reserved",
];

/// The reason blockd's own view gives for an error state.
async fn reason(c: &Client, path: &str) -> String {
    c.get(path)
        .await
        .ok()
        .and_then(|v| v["error_reason"].as_str().map(String::from))
        .unwrap_or_else(|| "no reason recorded".into())
}

pub async fn volume(c: &Client, id: &str, until: Until, limit: Duration) -> Result<Value, Failure> {
    let deadline = Instant::now() + limit;
    loop {
        match c.get(&format!("/v1/volumes/{id}")).await {
            Err(f) if f.status == Some(404) && until == Until::Gone => return Ok(Value::Null),
            Err(f) => return Err(f),
            Ok(v) => {
                let state = v["state"].as_str().unwrap_or("").to_string();
                if state.starts_with("error") {
                    let why = reason(c, &format!("/blockd/v1/volumes/{id}")).await;
                    return Err(Failure::failed(format!("volume {id} is {state}: {why}")));
                }
                if until == Until::Settled && !TRANSITIONAL.contains(&state.as_str()) {
                    return Ok(v);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::timeout(format!(
                "volume {id}: still busy after {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until GET `path` answers 404.
pub async fn gone(c: &Client, path: &str, limit: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        match c.get(path).await {
            Err(f) if f.status == Some(404) => return Ok(()),
            Err(f) => return Err(f),
            Ok(v) if v["status"].as_str().is_some_and(|s| s.starts_with("error")) => {
                return Err(Failure::failed(format!("{path} is {}", v["status"])));
            }
            Ok(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(Failure::timeout(format!(
                "{path}: still there after {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for a snapshot copy; returns the snapshot's SCP view.
pub async fn snapshot(c: &Client, id: &str, limit: Duration, bar: bool) -> Result<Value, Failure> {
    let deadline = Instant::now() + limit;
    let pb = if bar {
        let pb = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(format!("copying {id}"));
        Some(pb)
    } else {
        None
    };
    let finish = |pb: &Option<indicatif::ProgressBar>| {
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
    };
    loop {
        let n = match c.get(&format!("/blockd/v1/snapshots/{id}")).await {
            Ok(n) => n,
            Err(f) => {
                finish(&pb);
                return Err(f);
            }
        };
        let status = n["status"].as_str().unwrap_or("");
        if let (Some(pb), Some(p)) = (&pb, n["progress"].as_object()) {
            pb.set_length(p["bytes_total"].as_u64().unwrap_or(0));
            pb.set_position(p["bytes_done"].as_u64().unwrap_or(0));
        }
        if status.starts_with("error") {
            finish(&pb);
            let why = n["error_reason"].as_str().unwrap_or("no reason recorded");
            return Err(Failure::failed(format!("snapshot {id} is {status}: {why}")));
        }
        if status == "available" {
            finish(&pb);
            return c.get(&format!("/v1/snapshots/{id}")).await;
        }
        if Instant::now() >= deadline {
            finish(&pb);
            return Err(Failure::timeout(format!(
                "snapshot {id}: still {status} after {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
