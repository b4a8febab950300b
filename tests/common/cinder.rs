//! A Cinder client for tests: token auth, the project in the URL, and an
//! optional microversion header, over the daemon's Cinder listener.

use super::{Answer, Client};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Static tokens: an admin of project-a, and members of project-a and -b.
pub const TOKENS: &str = r#"[cinder]
auth = "static"
[[cinder.tokens]]
token = "tok-admin-0001"
user_id = "admin"
project_id = "project-a"
roles = ["admin", "member"]
[[cinder.tokens]]
token = "tok-member-a01"
user_id = "user-a"
project_id = "project-a"
[[cinder.tokens]]
token = "tok-member-b01"
user_id = "user-b"
project_id = "project-b"
"#;

#[derive(Clone)]
pub struct Cinder {
    pub http: reqwest::Client,
    pub root: String,
    pub project: Option<String>,
    pub token: Option<String>,
    pub version: Option<String>,
}

impl Cinder {
    pub fn new(addr: std::net::SocketAddr, token: &str, project: &str) -> Cinder {
        Cinder {
            http: reqwest::Client::new(),
            root: format!("http://{addr}"),
            project: Some(project.to_string()),
            token: Some(token.to_string()),
            version: None,
        }
    }

    pub fn mv(mut self, v: &str) -> Cinder {
        self.version = Some(v.to_string());
        self
    }

    pub fn url(&self, path: &str) -> String {
        match &self.project {
            Some(p) => format!("{}/v3/{p}{path}", self.root),
            None => format!("{}/v3{path}", self.root),
        }
    }

    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, url);
        if let Some(t) = &self.token {
            rb = rb.header("X-Auth-Token", t);
        }
        if let Some(v) = &self.version {
            rb = rb.header("OpenStack-API-Version", format!("volume {v}"));
        }
        rb
    }

    pub async fn raw(&self, method: Method, path: &str, body: Option<&str>) -> Answer {
        let mut rb = self.request(method, &self.url(path));
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        Client::send(rb).await
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let b = body.map(|b| b.to_string());
        self.raw(method, path, b.as_deref()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Creates a volume and waits for it to be available.
    pub async fn create(&self, body: Value) -> Value {
        let a = self
            .post("/volumes", serde_json::json!({ "volume": body }))
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "create: {}", a.text);
        let id = a.body["volume"]["id"].as_str().unwrap().to_string();
        self.wait(&id, &["available"]).await
    }

    /// Polls a volume until its status is one of `want` (or it is gone,
    /// when `want` is empty).
    pub async fn wait(&self, id: &str, want: &[&str]) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.get(&format!("/volumes/{id}")).await;
            if want.is_empty() && a.status == StatusCode::NOT_FOUND {
                return Value::Null;
            }
            if a.status == StatusCode::OK
                && want.contains(&a.body["volume"]["status"].as_str().unwrap_or(""))
            {
                return a.body["volume"].clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "volume {id} never reached {want:?}: {} {}",
                a.status,
                a.text
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_snapshot(&self, id: &str, want: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.get(&format!("/snapshots/{id}")).await;
            if a.status == StatusCode::OK && a.body["snapshot"]["status"] == want {
                return a.body["snapshot"].clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "snapshot {id} never reached {want}: {}",
                a.text
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The fault name and message of a Cinder error body, checking its code.
pub fn fault(a: &Answer) -> (String, String) {
    let obj = a
        .body
        .as_object()
        .unwrap_or_else(|| panic!("not a fault body: {} {}", a.status, a.text));
    assert_eq!(obj.len(), 1, "fault body has one key: {}", a.text);
    let (name, inner) = obj.iter().next().unwrap();
    assert_eq!(
        inner["code"].as_u64(),
        Some(a.status.as_u16() as u64),
        "fault code matches the status: {}",
        a.text
    );
    (
        name.clone(),
        inner["message"].as_str().unwrap_or("").to_string(),
    )
}

/// Asserts a fault answer with this status and fault name; returns the message.
pub fn expect_fault(a: &Answer, status: u16, name: &str) -> String {
    assert_eq!(a.status.as_u16(), status, "status: {}", a.text);
    let (n, m) = fault(a);
    assert_eq!(n, name, "fault name: {}", a.text);
    assert!(
        a.headers.contains_key("x-openstack-request-id"),
        "request id on errors"
    );
    m
}
