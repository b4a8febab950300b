//! Token validation against a real Keystone (from the CI venv, on SQLite,
//! started by tests/support/keystone.sh), and against no Keystone at all.

use blockd::keystone::{KeystoneConfig, KeystoneErrorKind, KeystoneValidator};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const ADMIN_PW: &str = "blockd-admin-pw";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keystone.sh")
}

fn venv() -> PathBuf {
    std::env::var_os("BLOCKD_CI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/blockd-ci-venv"))
}

/// Stops the server when the test ends, passed or not.
struct Keystone {
    dir: tempfile::TempDir,
    url: String,
}

impl Drop for Keystone {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn start_keystone() -> Option<Keystone> {
    if !venv().join("bin/keystone-manage").exists() {
        eprintln!(
            "SKIPPED: no keystone in {} (.ci/run installs it); Keystone token validation NOT tested",
            venv().display()
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::Builder::new()
        .prefix("blockd-keystone")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let ks = Keystone {
        url: format!("http://127.0.0.1:{port}"),
        dir,
    };
    let out = Command::new(script())
        .arg("start")
        .arg(ks.dir.path())
        .arg(port.to_string())
        .env("KEYSTONE_ADMIN_PASSWORD", ADMIN_PW)
        .output()
        .expect("run keystone.sh");
    assert!(
        out.status.success(),
        "keystone.sh start failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(ks)
}

/// Logs in with a password scoped to a project; returns the token.
async fn login(http: &reqwest::Client, url: &str, user: &str, pw: &str, project: &str) -> String {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": pw}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}},
    }});
    let r = http
        .post(format!("{url}/v3/auth/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "login {user}");
    r.headers()["X-Subject-Token"].to_str().unwrap().to_string()
}

async fn admin_post(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    path: &str,
    body: Value,
) -> Value {
    let r = http
        .post(format!("{url}/v3/{path}"))
        .header("X-Auth-Token", admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "POST {path}: {v}");
    v
}

#[tokio::test]
async fn validates_real_keystone_tokens() {
    let Some(ks) = tokio::task::spawn_blocking(start_keystone).await.unwrap() else {
        return;
    };
    let url = ks.url.clone();
    let http = reqwest::Client::new();
    let admin = login(&http, &url, "admin", ADMIN_PW, "admin").await;

    // A project, a user with the member role in it, and an image endpoint.
    let project = admin_post(
        &http,
        &url,
        &admin,
        "projects",
        json!({"project": {"name": "tenant1", "domain_id": "default"}}),
    )
    .await;
    let project_id = project["project"]["id"].as_str().unwrap().to_string();
    let user = admin_post(
        &http,
        &url,
        &admin,
        "users",
        json!({"user": {"name": "alice", "password": "alice-pw", "domain_id": "default"}}),
    )
    .await;
    let user_id = user["user"]["id"].as_str().unwrap().to_string();
    let roles: Value = http
        .get(format!("{url}/v3/roles?name=member"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let member = roles["roles"][0]["id"].as_str().unwrap().to_string();
    let r = http
        .put(format!(
            "{url}/v3/projects/{project_id}/users/{user_id}/roles/{member}"
        ))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let svc = admin_post(
        &http,
        &url,
        &admin,
        "services",
        json!({"service": {"type": "image", "name": "glance"}}),
    )
    .await;
    admin_post(
        &http,
        &url,
        &admin,
        "endpoints",
        json!({"endpoint": {
        "service_id": svc["service"]["id"], "interface": "public",
        "url": "http://127.0.0.1:9292", "region_id": "RegionOne"}}),
    )
    .await;

    let token = login(&http, &url, "alice", "alice-pw", "tenant1").await;

    // The service user logs in itself.
    let v = KeystoneValidator::new(KeystoneConfig {
        url: url.clone(),
        service_user: Some("admin".into()),
        service_password: Some(ADMIN_PW.into()),
        service_project: Some("admin".into()),
        ..Default::default()
    })
    .unwrap();
    let info = v.validate(&token).await.expect("valid token");
    assert_eq!(info.project_id, project_id);
    assert_eq!(info.user_id, user_id);
    assert!(info.has_role("member"), "{:?}", info.roles);
    assert!(!info.has_role("admin"), "{:?}", info.roles);
    let left = info.expires_at - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(50) && left <= chrono::Duration::minutes(61),
        "expires in {left}"
    );
    assert_eq!(
        info.endpoint("image", "public"),
        Some("http://127.0.0.1:9292")
    );

    // A second validation is answered from the cache.
    let asked = v.remote_checks();
    assert_eq!(v.validate(&token).await.unwrap(), info);
    assert_eq!(v.remote_checks(), asked);

    // Garbage and revoked tokens are invalid, not an outage.
    let e = v.validate("not-a-token").await.unwrap_err();
    assert_eq!(e.kind(), KeystoneErrorKind::InvalidToken, "{e}");
    let second = login(&http, &url, "alice", "alice-pw", "tenant1").await;
    let r = http
        .delete(format!("{url}/v3/auth/tokens"))
        .header("X-Auth-Token", &admin)
        .header("X-Subject-Token", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let e = v.validate(&second).await.unwrap_err();
    assert_eq!(e.kind(), KeystoneErrorKind::InvalidToken, "{e}");

    // A static service token works the same way.
    let fixed = KeystoneValidator::new(KeystoneConfig {
        url: url.clone(),
        service_token: Some(admin.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(fixed.validate(&token).await.unwrap().project_id, project_id);

    // Wrong service credentials are our fault, not the user's.
    let wrong = KeystoneValidator::new(KeystoneConfig {
        url: url.clone(),
        service_user: Some("admin".into()),
        service_password: Some("wrong".into()),
        service_project: Some("admin".into()),
        ..Default::default()
    })
    .unwrap();
    let e = wrong.validate(&token).await.unwrap_err();
    assert_eq!(e.kind(), KeystoneErrorKind::Internal, "{e}");
    drop(ks);
}

#[tokio::test]
async fn unreachable_keystone_is_a_distinct_error() {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v = KeystoneValidator::new(KeystoneConfig {
        url: format!("http://127.0.0.1:{port}"),
        service_token: Some("svc".into()),
        timeout_secs: 2,
        ..Default::default()
    })
    .unwrap();
    let e = v.validate("some-token").await.unwrap_err();
    assert_eq!(e.kind(), KeystoneErrorKind::Unavailable, "{e}");
    let e = v.validate("").await.unwrap_err();
    assert_eq!(e.kind(), KeystoneErrorKind::InvalidToken, "{e}");
}
