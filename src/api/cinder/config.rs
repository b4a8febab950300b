//! The `[cinder]` config section: the dialect's listener, how callers are
//! authenticated, and the availability zone this node reports.

use crate::keystone::KeystoneConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The token is `user:project`, as Cinder's own noauth. Loopback only.
    Noauth,
    /// Tokens listed under `[[cinder.tokens]]`.
    Static,
    /// Tokens validated against a Keystone v3 server.
    Keystone,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CinderConfig {
    /// Serve the Cinder dialect at all.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_auth")]
    pub auth: AuthMode,
    #[serde(default)]
    pub tokens: Vec<StaticToken>,
    /// The one availability zone this node is in.
    #[serde(default = "default_zone")]
    pub availability_zone: String,
    /// Largest request body accepted, in bytes (Cinder's default).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// The Keystone server and service credentials, for `auth = "keystone"`.
    #[serde(default)]
    pub keystone: Option<KeystoneConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token: String,
    pub user_id: String,
    pub project_id: String,
    /// `admin` among them grants the admin view (all_tenants, reset_status).
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
}

impl Default for CinderConfig {
    fn default() -> Self {
        CinderConfig {
            enabled: default_enabled(),
            listen: default_listen(),
            auth: default_auth(),
            tokens: Vec::new(),
            availability_zone: default_zone(),
            max_body_bytes: default_max_body(),
            keystone: None,
        }
    }
}

fn default_enabled() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8776".into()
}
fn default_auth() -> AuthMode {
    AuthMode::Noauth
}
fn default_zone() -> String {
    "nova".into()
}
fn default_max_body() -> usize {
    114_688
}
fn default_roles() -> Vec<String> {
    vec!["member".into()]
}

impl CinderConfig {
    /// Checks the section; an error names the key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, p: String| Err((format!("cinder.{k}"), p));
        let addr: SocketAddr = match self.listen.parse() {
            Ok(a) => a,
            Err(e) => return bad("listen", format!("not an address:port ({e})")),
        };
        if self.enabled && self.auth == AuthMode::Noauth && !addr.ip().is_loopback() {
            return bad(
                "auth",
                format!(
                    "noauth trusts any caller, so it is allowed only on a loopback listener; \
                     cinder.listen is {addr}. Use auth = \"static\" or \"keystone\", or listen on 127.0.0.1"
                ),
            );
        }
        if self.auth == AuthMode::Static && self.tokens.is_empty() {
            return bad(
                "tokens",
                "auth = \"static\" needs at least one [[cinder.tokens]] entry".into(),
            );
        }
        for (i, t) in self.tokens.iter().enumerate() {
            for (name, v) in [
                ("token", &t.token),
                ("user_id", &t.user_id),
                ("project_id", &t.project_id),
            ] {
                if v.is_empty() || v.len() > 255 {
                    return bad(
                        &format!("tokens[{i}].{name}"),
                        "must be 1-255 characters".into(),
                    );
                }
            }
            if t.token.len() < 8 {
                return bad(
                    &format!("tokens[{i}].token"),
                    "must be at least 8 characters".into(),
                );
            }
            if self.tokens[..i].iter().any(|o| o.token == t.token) {
                return bad(&format!("tokens[{i}].token"), "appears twice".into());
            }
        }
        match (&self.keystone, self.auth) {
            (None, AuthMode::Keystone) => {
                return bad(
                    "keystone",
                    "auth = \"keystone\" needs a [cinder.keystone] section (url and service credentials)"
                        .into(),
                );
            }
            (Some(k), AuthMode::Keystone) => {
                if let Err(p) = k.validate() {
                    return bad("keystone", p);
                }
            }
            _ => {}
        }
        if self.availability_zone.is_empty() || self.availability_zone.len() > 255 {
            return bad("availability_zone", "must be 1-255 characters".into());
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn noauth_needs_loopback_and_static_needs_tokens() {
        let e = err("[cinder]\nlisten = \"0.0.0.0:8776\"\n");
        assert!(e.contains("cinder.auth") && e.contains("loopback"), "{e}");
        let e = err("[cinder]\nauth = \"static\"\n");
        assert!(e.contains("cinder.tokens"), "{e}");
        let ok = Config::parse(
            "[cinder]\nlisten = \"0.0.0.0:1\"\nauth = \"static\"\n[[cinder.tokens]]\ntoken = \"t0123456789\"\nuser_id = \"u\"\nproject_id = \"p\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(ok.cinder.tokens[0].roles, vec!["member".to_string()]);
        let e = err("[cinder]\nbogus = 1\n");
        assert!(e.contains("bogus"), "{e}");
        assert!(Config::parse("", "t.toml").unwrap().cinder.enabled);
    }

    #[test]
    fn keystone_needs_its_section_and_credentials() {
        let e = err("[cinder]\nauth = \"keystone\"\n");
        assert!(
            e.contains("cinder.keystone") && e.contains("section"),
            "{e}"
        );
        let e = err("[cinder]\nauth = \"keystone\"\n[cinder.keystone]\nurl = \"http://k:5000\"\n");
        assert!(e.contains("service_token"), "{e}");
        let ok = Config::parse(
            "[cinder]\nlisten = \"0.0.0.0:1\"\nauth = \"keystone\"\n[cinder.keystone]\nurl = \"http://k:5000\"\nservice_token = \"svc\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(ok.cinder.keystone.unwrap().url, "http://k:5000");
    }
}
