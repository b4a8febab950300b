//! The signed SCP client the command line uses: where the daemon is, which
//! credentials sign, and one call that turns answers into `Outcome`s.

use super::{Conn, Failure};
use crate::api::scp::auth::{SignedRequest, sign};
use crate::config::{Config, Credential};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The daemon's config file on an installed node.
pub const SYSTEM_CONFIG: &str = "/etc/blockd/blockd.toml";

pub struct Client {
    http: reqwest::Client,
    /// Where requests go, e.g. `http://127.0.0.1:8780`.
    base: String,
    /// The scheme and host the signature names (the daemon's url_scheme).
    sign_base: String,
    cred: Credential,
    version: String,
}

#[derive(Deserialize)]
struct CredentialsFile {
    credentials: Vec<Credential>,
}

/// The daemon config the client reads: `--config`, else the system file
/// when it exists, else the embedded default.
pub fn daemon_config(conn: &Conn) -> Result<Config, Failure> {
    let path = conn.config.clone().or_else(|| {
        let p = PathBuf::from(SYSTEM_CONFIG);
        p.exists().then_some(p)
    });
    let mut cfg = Config::load(path.as_deref()).map_err(|e| Failure::setup(e.to_string()))?;
    if let Some(d) = &conn.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    Ok(cfg)
}

fn read_credentials_file(path: &Path) -> Result<Credential, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::setup(format!("cannot read {}: {e}", path.display())))?;
    let f: CredentialsFile =
        toml::from_str(&text).map_err(|e| Failure::setup(format!("{}: {e}", path.display())))?;
    f.credentials
        .into_iter()
        .next()
        .ok_or_else(|| Failure::setup(format!("{} holds no credentials", path.display())))
}

fn local_endpoint(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip = if a.is_ipv6() { "[::1]" } else { "127.0.0.1" };
            format!("{ip}:{}", a.port())
        }
        _ => listen.to_string(),
    }
}

impl Client {
    /// Endpoint and credentials from flags, then environment (both via
    /// clap), then the daemon's config and generated credentials file.
    pub fn new(conn: &Conn) -> Result<Client, Failure> {
        let need_config =
            conn.endpoint.is_none() || conn.access_key.is_none() || conn.secret_key.is_none();
        let cfg = if need_config {
            Some(daemon_config(conn)?)
        } else {
            None
        };
        let (base, sign_base) = match (&conn.endpoint, &cfg) {
            (Some(e), _) => {
                let e = e.trim_end_matches('/').to_string();
                let e = if e.contains("://") {
                    e
                } else {
                    format!("http://{e}")
                };
                (e.clone(), e)
            }
            (None, Some(c)) => {
                let host = local_endpoint(&c.scp.listen);
                (
                    format!("http://{host}"),
                    format!("{}://{host}", c.scp.url_scheme),
                )
            }
            (None, None) => unreachable!("config is loaded when no endpoint is given"),
        };
        let cred = match (&conn.access_key, &conn.secret_key, &cfg) {
            (Some(a), Some(s), _) => Credential {
                access_key: a.clone(),
                secret_key: s.clone(),
                user_id: String::new(),
                project_id: String::new(),
            },
            (_, _, Some(c)) => match c.scp.credentials.first() {
                Some(cred) => cred.clone(),
                None => read_credentials_file(&c.data_dir().join(crate::config::CREDENTIALS_FILE))?,
            },
            _ => {
                return Err(Failure::setup(
                    "give both --access-key and --secret-key (or BLOCKD_ACCESS_KEY and BLOCKD_SECRET_KEY)",
                ));
            }
        };
        Ok(Client {
            http: reqwest::Client::new(),
            base,
            sign_base,
            cred,
            version: format!("virtualserver {}", conn.api_version),
        })
    }

    /// Sends a signed request; a 2xx answer gives its JSON body (Null when
    /// empty), anything else a `Failure` with the daemon's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(reqwest::StatusCode, Value), Failure> {
        let ts = chrono::Utc::now().timestamp_millis().to_string();
        let sig = sign(
            &self.cred.secret_key,
            &SignedRequest {
                method: method.as_str(),
                url: &format!("{}{path}", self.sign_base),
                timestamp: &ts,
                access_key: &self.cred.access_key,
                account_id: "",
                client_type: "Openapi",
            },
        );
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Scp-AccessKey", &self.cred.access_key)
            .header("Scp-ClientType", "Openapi")
            .header("Scp-Signature", sig)
            .header("Scp-Timestamp", ts)
            .header("Scp-Api-Version", &self.version);
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| Failure::unreachable(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::unreachable(format!("reading the answer: {e}")))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.clone()))
        };
        if status.is_success() {
            return Ok((status, value));
        }
        let detail = value["errors"][0]["detail"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| text.trim().to_string());
        let code = value["errors"][0]["code"].as_str().unwrap_or("");
        let msg = format!("{} {code}: {detail}", status.as_u16());
        Err(if status.is_client_error() {
            Failure::refused(status.as_u16(), msg)
        } else {
            Failure::unreachable(msg)
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self.call(Method::GET, path, None).await?.1)
    }
}
