//! Hostile clients against the SCP listener: slow request heads, deep and
//! huge JSON, odd names and headers, and floods of query parameters. Each
//! gets a clear 4xx (or a closed connection) and changes nothing.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

async fn volume_count(c: &Client) -> usize {
    let a = c.get("/v1/volumes?limit=100").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.body["volumes"].as_array().map(|v| v.len()).unwrap_or(0)
}

/// Sends `raw` as the body of a signed POST /v1/volumes.
async fn post_raw(c: &Client, raw: String) -> Answer {
    Client::send(
        c.signed(Method::POST, "/v1/volumes", None)
            .header("Content-Type", "application/json")
            .body(raw),
    )
    .await
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let d = TestDaemon::start().await;
    let addr = d.addr;
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let started = Instant::now();
        s.write_all(b"GET /v1/volumes HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        // One header byte a second, never finishing the head.
        loop {
            if s.write_all(b"X").is_err() {
                return started.elapsed();
            }
            let mut b = [0u8; 256];
            match s.read(&mut b) {
                Ok(0) => return started.elapsed(),
                Ok(_) => return started.elapsed(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return started.elapsed(),
            }
            assert!(
                started.elapsed() < blockd::server::HEADER_TIMEOUT * 3,
                "a client trickling its request head was never cut off"
            );
        }
    })
    .await
    .unwrap();
    assert!(closed_after >= blockd::server::HEADER_TIMEOUT - Duration::from_secs(1));
    // The daemon still serves others.
    let c = d.client("a");
    assert_eq!(c.get("/v1/volumes").await.status, StatusCode::OK);
}

#[tokio::test]
async fn deep_and_huge_json_gets_400_and_creates_nothing() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let deep = format!(
        "{{\"name\": \"v\", \"size\": 8, \"tags\": {}{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let mut bodies = vec![deep];
    for size in [
        "1e400",
        "18446744073709551616",
        "-8",
        "8.5",
        "99999999999999999999999999999999",
        "\"8\"",
        "null",
    ] {
        bodies.push(format!("{{\"name\": \"v\", \"size\": {size}}}"));
    }
    bodies.push("{\"name\": \"v\", \"size\": 8".into());
    bodies.push("\u{feff}{}".into());
    for b in bodies {
        let a = post_raw(&c, b.clone()).await;
        let short: String = b.chars().take(60).collect();
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{short}: {}", a.text);
        assert!(
            a.body["errors"][0]["detail"].is_string(),
            "{short}: not the SCP error body: {}",
            a.text
        );
    }
    assert_eq!(volume_count(&c).await, 0);
}

#[tokio::test]
async fn odd_names_never_reach_a_path_and_bad_ones_get_400() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    for name in [
        "../../etc/passwd",
        "a/b",
        "name\r\nSet-Cookie: x=1",
        "nul\u{0}byte",
        "名前",
        "\u{202e}txt.exe",
        "",
        &"x".repeat(256),
    ] {
        let a = c
            .call(
                Method::POST,
                "/v1/volumes",
                Some(serde_json::json!({"name": name, "size": 8})),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name:?}: {}", a.text);
        assert!(a.headers.get("set-cookie").is_none());
    }
    assert_eq!(volume_count(&c).await, 0);
    let files: Vec<_> = std::fs::read_dir(d.dir.path().join("data/volumes"))
        .map(|r| r.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "files appeared: {files:?}");
}

#[tokio::test]
async fn thousands_of_query_parameters_get_400() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let q: Vec<String> = (0..5000).map(|i| format!("p{i}=1")).collect();
    let a = c.get(&format!("/v1/volumes?{}", q.join("&"))).await;
    assert!(
        a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::URI_TOO_LONG,
        "{} {}",
        a.status,
        a.text
    );
    let a = c.get("/v1/volumes?limit=1&limit=2&limit=3").await;
    assert!(
        a.status.is_client_error() || a.status.is_success(),
        "{}",
        a.text
    );
    assert!(!a.status.is_server_error());
}

#[tokio::test]
async fn injected_headers_are_not_echoed() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    // A client's own request id never replaces the server's.
    let a = Client::send(
        c.signed(Method::GET, "/v1/volumes", None)
            .header("X-Request-Id", "evil-id"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let rid = a.headers["x-request-id"].to_str().unwrap();
    assert!(rid.starts_with("req-") && rid != "evil-id", "{rid}");
    // A raw CR/LF inside a header value is refused by the HTTP layer.
    let addr = d.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /v1/volumes HTTP/1.1\r\nHost: x\r\nScp-AccessKey: a\rInjected: 1\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a header with a bare CR was served: {answer}"
    );
}
