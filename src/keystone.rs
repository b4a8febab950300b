//! Keystone v3 token validation: asks Keystone about a user's token with a
//! service token of our own (static from config, or fetched with a service
//! user's password and fetched again before it expires), reads the user,
//! project, roles, expiry and service catalog, and caches each answer until
//! the token expires (or `cache_secs`, whichever is first), in a bounded
//! cache. Plain HTTP only: Keystone on loopback or behind a local TLS proxy.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `keystone` part of a dialect's auth config.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeystoneConfig {
    /// Keystone's base URL, e.g. `http://127.0.0.1:5000` (no `/v3`).
    #[serde(default = "default_url")]
    pub url: String,
    /// A static service token; otherwise the service user below logs in.
    #[serde(default)]
    pub service_token: Option<String>,
    #[serde(default)]
    pub service_user: Option<String>,
    #[serde(default)]
    pub service_password: Option<String>,
    #[serde(default)]
    pub service_project: Option<String>,
    /// Domain (name) of the service user and project.
    #[serde(default = "default_domain")]
    pub service_domain: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Most tokens kept in the cache.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Longest a validation is trusted before Keystone is asked again
    /// (a revoked token stays accepted at most this long).
    #[serde(default = "default_cache_secs")]
    pub cache_secs: u64,
}

fn default_url() -> String {
    "http://127.0.0.1:5000".into()
}
fn default_domain() -> String {
    "Default".into()
}
fn default_timeout() -> u64 {
    5
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_secs() -> u64 {
    300
}

impl Default for KeystoneConfig {
    fn default() -> Self {
        KeystoneConfig {
            url: default_url(),
            service_token: None,
            service_user: None,
            service_password: None,
            service_project: None,
            service_domain: default_domain(),
            timeout_secs: default_timeout(),
            cache_entries: default_cache_entries(),
            cache_secs: default_cache_secs(),
        }
    }
}

impl KeystoneConfig {
    /// Checks that the config can work; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("http://") {
            return Err(format!(
                "keystone.url: must be an http:// URL (got {:?})",
                self.url
            ));
        }
        let user = [
            &self.service_user,
            &self.service_password,
            &self.service_project,
        ];
        let given = user.iter().filter(|v| v.is_some()).count();
        match (&self.service_token, given) {
            (Some(_), 0) | (None, 3) => {}
            (Some(_), _) => {
                return Err(
                    "keystone: give either service_token or service_user/service_password/service_project, not both"
                        .into(),
                );
            }
            (None, _) => {
                return Err(
                    "keystone: needs service_token, or all of service_user, service_password and service_project"
                        .into(),
                );
            }
        }
        if self.timeout_secs == 0 || self.cache_entries == 0 {
            return Err("keystone: timeout_secs and cache_entries must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub interface: String,
    pub region: Option<String>,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub service_type: String,
    pub name: Option<String>,
    pub endpoints: Vec<Endpoint>,
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub user_id: String,
    pub project_id: String,
    pub roles: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub catalog: Vec<CatalogEntry>,
}

impl TokenInfo {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }

    /// The URL of a service's endpoint for `interface` (e.g. `image`, `public`).
    pub fn endpoint(&self, service_type: &str, interface: &str) -> Option<&str> {
        self.catalog
            .iter()
            .filter(|c| c.service_type == service_type)
            .flat_map(|c| c.endpoints.iter())
            .find(|e| e.interface == interface)
            .map(|e| e.url.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    #[error("the token is not valid")]
    InvalidToken,
    #[error("the token is not scoped to a project")]
    Unscoped,
    #[error("keystone is unreachable: {0}")]
    Unreachable(String),
    #[error("keystone refused our service credentials: {0}")]
    ServiceAuth(String),
    #[error("keystone answered {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("keystone's answer is malformed: {0}")]
    Malformed(String),
}

/// Stable kinds: a dialect answers InvalidToken with 401, Unavailable with
/// 503 and Internal with 500, without the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeystoneErrorKind {
    InvalidToken,
    Unavailable,
    Internal,
}

impl KeystoneError {
    pub fn kind(&self) -> KeystoneErrorKind {
        match self {
            KeystoneError::InvalidToken | KeystoneError::Unscoped => {
                KeystoneErrorKind::InvalidToken
            }
            KeystoneError::Unreachable(_) => KeystoneErrorKind::Unavailable,
            KeystoneError::Unexpected { status, .. } if *status >= 500 => {
                KeystoneErrorKind::Unavailable
            }
            KeystoneError::ServiceAuth(_)
            | KeystoneError::Unexpected { .. }
            | KeystoneError::Malformed(_) => KeystoneErrorKind::Internal,
        }
    }
}

#[derive(Deserialize)]
struct Wire {
    token: WireToken,
}

#[derive(Deserialize)]
struct WireToken {
    expires_at: String,
    user: WireId,
    project: Option<WireId>,
    #[serde(default)]
    roles: Vec<WireRole>,
    #[serde(default)]
    catalog: Vec<WireService>,
}

#[derive(Deserialize)]
struct WireId {
    id: String,
}

#[derive(Deserialize)]
struct WireRole {
    name: String,
}

#[derive(Deserialize)]
struct WireService {
    #[serde(rename = "type")]
    service_type: String,
    name: Option<String>,
    #[serde(default)]
    endpoints: Vec<WireEndpoint>,
}

#[derive(Deserialize)]
struct WireEndpoint {
    interface: String,
    region_id: Option<String>,
    region: Option<String>,
    url: String,
}

/// Reads a Keystone v3 token document (`{"token": {...}}`).
pub fn parse_token(body: &str) -> Result<TokenInfo, KeystoneError> {
    let w: Wire =
        serde_json::from_str(body).map_err(|e| KeystoneError::Malformed(e.to_string()))?;
    let t = w.token;
    let expires_at = DateTime::parse_from_rfc3339(&t.expires_at)
        .map_err(|e| KeystoneError::Malformed(format!("expires_at {:?}: {e}", t.expires_at)))?
        .with_timezone(&Utc);
    let project = t.project.ok_or(KeystoneError::Unscoped)?;
    Ok(TokenInfo {
        user_id: t.user.id,
        project_id: project.id,
        roles: t.roles.into_iter().map(|r| r.name).collect(),
        expires_at,
        catalog: t
            .catalog
            .into_iter()
            .map(|s| CatalogEntry {
                service_type: s.service_type,
                name: s.name,
                endpoints: s
                    .endpoints
                    .into_iter()
                    .map(|e| Endpoint {
                        interface: e.interface,
                        region: e.region_id.or(e.region),
                        url: e.url,
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// A service token is fetched again this long before it expires.
const SERVICE_TOKEN_MARGIN_SECS: i64 = 60;

struct Cached {
    info: TokenInfo,
    until: DateTime<Utc>,
}

pub struct KeystoneValidator {
    cfg: KeystoneConfig,
    http: reqwest::Client,
    service: tokio::sync::Mutex<Option<(String, DateTime<Utc>)>>,
    /// Keyed by a hash of the token, so the cache holds no bearer tokens.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    remote_checks: AtomicU64,
}

fn unreachable(e: reqwest::Error) -> KeystoneError {
    KeystoneError::Unreachable(crate::service::reason(&e))
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl KeystoneValidator {
    pub fn new(cfg: KeystoneConfig) -> Result<KeystoneValidator, String> {
        cfg.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .build()
            .map_err(|e| format!("keystone client: {e}"))?;
        Ok(KeystoneValidator {
            cfg,
            http,
            service: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            remote_checks: AtomicU64::new(0),
        })
    }

    /// How many validations went to Keystone (cache misses).
    pub fn remote_checks(&self) -> u64 {
        self.remote_checks.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.url.trim_end_matches('/'))
    }

    /// Validates a user's token, from the cache while it is fresh.
    pub async fn validate(&self, token: &str) -> Result<TokenInfo, KeystoneError> {
        if token.is_empty() || token.len() > 8192 {
            return Err(KeystoneError::InvalidToken);
        }
        let key = token_key(token);
        let now = Utc::now();
        if let Some(c) = self.lock_cache().get(&key)
            && c.until > now
        {
            return Ok(c.info.clone());
        }
        let info = self.ask(token).await?;
        if info.expires_at <= Utc::now() {
            return Err(KeystoneError::InvalidToken);
        }
        self.remember(key, &info);
        Ok(info)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, key: [u8; 32], info: &TokenInfo) {
        let now = Utc::now();
        let cap = now + chrono::Duration::seconds(self.cfg.cache_secs as i64);
        let mut cache = self.lock_cache();
        if cache.len() >= self.cfg.cache_entries {
            cache.retain(|_, c| c.until > now);
        }
        while cache.len() >= self.cfg.cache_entries {
            let Some(oldest) = cache.iter().min_by_key(|(_, c)| c.until).map(|(k, _)| *k) else {
                break;
            };
            cache.remove(&oldest);
        }
        cache.insert(
            key,
            Cached {
                info: info.clone(),
                until: info.expires_at.min(cap),
            },
        );
    }

    async fn ask(&self, token: &str) -> Result<TokenInfo, KeystoneError> {
        let mut retried = false;
        loop {
            let service = self.service_token(retried).await?;
            self.remote_checks.fetch_add(1, Ordering::Relaxed);
            let resp = self
                .http
                .get(self.url("/v3/auth/tokens"))
                .header("X-Auth-Token", &service)
                .header("X-Subject-Token", token)
                .header("Accept", "application/json")
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status().as_u16();
            let body = resp.text().await.map_err(unreachable)?;
            match status {
                200 => return parse_token(&body),
                // Keystone answers 404 for an unknown, expired or revoked token.
                404 => return Err(KeystoneError::InvalidToken),
                401 | 403 if !retried && self.cfg.service_token.is_none() => {
                    // Our own token may have been revoked; log in again once.
                    retried = true;
                }
                401 | 403 => {
                    return Err(KeystoneError::ServiceAuth(format!(
                        "token validation answered {status}"
                    )));
                }
                _ => {
                    return Err(KeystoneError::Unexpected {
                        status,
                        body: body.chars().take(200).collect(),
                    });
                }
            }
        }
    }

    /// The token we present; a password login when it is missing, about to
    /// expire, or `renew` is set.
    async fn service_token(&self, renew: bool) -> Result<String, KeystoneError> {
        if let Some(t) = &self.cfg.service_token {
            return Ok(t.clone());
        }
        let mut held = self.service.lock().await;
        if let Some((tok, exp)) = held.as_ref()
            && !renew
            && *exp > Utc::now() + chrono::Duration::seconds(SERVICE_TOKEN_MARGIN_SECS)
        {
            return Ok(tok.clone());
        }
        let (tok, exp) = self.login().await?;
        *held = Some((tok.clone(), exp));
        Ok(tok)
    }

    async fn login(&self) -> Result<(String, DateTime<Utc>), KeystoneError> {
        let c = &self.cfg;
        let domain = serde_json::json!({"name": c.service_domain});
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": c.service_user, "domain": domain, "password": c.service_password,
            }}},
            "scope": {"project": {"name": c.service_project, "domain": domain}},
        }});
        let resp = self
            .http
            .post(self.url("/v3/auth/tokens"))
            .json(&body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = resp.text().await.map_err(unreachable)?;
        match status {
            201 | 200 => {}
            401 | 403 | 404 => {
                return Err(KeystoneError::ServiceAuth(format!(
                    "service user login answered {status}"
                )));
            }
            _ => {
                return Err(KeystoneError::Unexpected {
                    status,
                    body: text.chars().take(200).collect(),
                });
            }
        }
        let tok = header.ok_or_else(|| {
            KeystoneError::Malformed("login answer has no X-Subject-Token".into())
        })?;
        let info = parse_token(&text)?;
        Ok((tok, info.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = r#"{"token": {"methods": ["password"], "user": {"domain": {"id": "default", "name": "Default"}, "id": "u1", "name": "demo", "password_expires_at": null}, "audit_ids": ["x"], "expires_at": "2026-12-02T06:57:47.000000Z", "issued_at": "2026-12-02T05:57:47.000000Z", "project": {"domain": {"id": "default", "name": "Default"}, "id": "p1", "name": "demo"}, "is_domain": false, "roles": [{"id": "r1", "name": "member"}, {"id": "r2", "name": "reader"}], "catalog": [{"endpoints": [{"id": "e1", "interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9292", "region": "RegionOne"}, {"id": "e2", "interface": "internal", "region_id": "RegionOne", "url": "http://10.0.0.1:9292", "region": "RegionOne"}], "id": "s1", "type": "image", "name": "glance"}, {"endpoints": [], "id": "s2", "type": "identity", "name": "keystone"}]}}"#;

    #[test]
    fn parses_a_project_token() {
        let t = parse_token(TOKEN).unwrap();
        assert_eq!(t.user_id, "u1");
        assert_eq!(t.project_id, "p1");
        assert_eq!(t.roles, ["member", "reader"]);
        assert!(t.has_role("Member") && !t.has_role("admin"));
        assert_eq!(
            t.expires_at,
            "2026-12-02T06:57:47Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(t.endpoint("image", "public"), Some("http://127.0.0.1:9292"));
        assert_eq!(
            t.endpoint("image", "internal"),
            Some("http://10.0.0.1:9292")
        );
        assert_eq!(t.endpoint("image", "admin"), None);
        assert_eq!(t.endpoint("volumev3", "public"), None);
        assert_eq!(
            t.catalog[0].endpoints[0].region.as_deref(),
            Some("RegionOne")
        );
    }

    #[test]
    fn refuses_unscoped_and_malformed_tokens() {
        let unscoped = TOKEN.replace(r#""project": {"domain": {"id": "default", "name": "Default"}, "id": "p1", "name": "demo"}, "#, "");
        let e = parse_token(&unscoped).unwrap_err();
        assert_eq!(e.kind(), KeystoneErrorKind::InvalidToken);
        for bad in [
            "",
            "{}",
            r#"{"token": {}}"#,
            &TOKEN.replace("2026-12-02T06:57:47.000000Z", "tomorrow"),
        ] {
            let e = parse_token(bad).unwrap_err();
            assert_eq!(e.kind(), KeystoneErrorKind::Internal, "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn cache_is_bounded_and_drops_the_soonest_expiring() {
        let v = KeystoneValidator::new(KeystoneConfig {
            service_token: Some("svc".into()),
            cache_entries: 3,
            ..Default::default()
        })
        .unwrap();
        let base = parse_token(TOKEN).unwrap();
        let now = Utc::now();
        for i in 0..5i64 {
            let info = TokenInfo {
                user_id: format!("u{i}"),
                // The third token expires first.
                expires_at: now + chrono::Duration::minutes(if i == 2 { 1 } else { 10 + i }),
                ..base.clone()
            };
            v.remember(token_key(&format!("t{i}")), &info);
            assert!(v.lock_cache().len() <= 3);
        }
        let cache = v.lock_cache();
        let mut users: Vec<_> = cache.values().map(|c| c.info.user_id.clone()).collect();
        users.sort();
        assert_eq!(users, ["u1", "u3", "u4"]);
        // Entries are trusted for cache_secs at most, even if the token lives longer.
        let c = &cache[&token_key("t4")];
        assert!(c.until <= now + chrono::Duration::seconds(301));
    }

    #[test]
    fn config_needs_one_kind_of_service_credential() {
        let mut c = KeystoneConfig::default();
        assert!(c.validate().is_err());
        c.service_token = Some("t".into());
        c.validate().unwrap();
        c.service_user = Some("u".into());
        assert!(c.validate().unwrap_err().contains("not both"));
        c.service_token = None;
        assert!(c.validate().is_err());
        c.service_password = Some("p".into());
        c.service_project = Some("service".into());
        c.validate().unwrap();
        c.url = "https://keystone".into();
        assert!(c.validate().unwrap_err().contains("keystone.url"));
        let parsed: Result<KeystoneConfig, _> = toml::from_str("url = \"http://x\"\nbogus = 1\n");
        assert!(parsed.is_err());
    }
}
