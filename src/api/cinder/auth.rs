//! Who a Cinder caller is. `X-Auth-Token` goes to a `TokenValidator`,
//! which answers the user, project and roles behind it. noauth and static
//! tokens live here, and Keystone (`crate::keystone`) plugs in through the
//! same trait.

use super::config::{AuthMode, CinderConfig, StaticToken};
use crate::keystone::{KeystoneConfig, KeystoneErrorKind, KeystoneValidator};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub user_id: String,
    pub project_id: String,
    pub roles: Vec<String>,
    /// RFC 3339; None when the token does not expire.
    pub expires_at: Option<String>,
    /// The public image endpoint from the token's catalog (Keystone only).
    pub image_endpoint: Option<String>,
}

impl TokenInfo {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case("admin"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is unknown, expired or malformed: 401.
    #[error("{0}")]
    Invalid(String),
    /// The identity service could not be asked: 503, as keystonemiddleware.
    #[error("identity service unavailable: {0}")]
    Unavailable(String),
    /// Our side of the check failed (e.g. Keystone refused our service
    /// credentials): 500, details only in the log.
    #[error("token check failed: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind {
    Invalid,
    Unavailable,
    Internal,
}

impl AuthError {
    pub fn kind(&self) -> AuthErrorKind {
        match self {
            AuthError::Invalid(_) => AuthErrorKind::Invalid,
            AuthError::Unavailable(_) => AuthErrorKind::Unavailable,
            AuthError::Internal(_) => AuthErrorKind::Internal,
        }
    }
}

pub trait TokenValidator: Send + Sync {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, AuthError>>;
}

/// Cinder's noauth: `user:project` (or one word for both). Every caller is
/// an admin, as in Cinder's own noauth middleware.
pub struct NoAuth;

impl TokenValidator for NoAuth {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, AuthError>> {
        Box::pin(async move { noauth_info(token) })
    }
}

fn noauth_info(token: &str) -> Result<TokenInfo, AuthError> {
    let (user, project) = token.split_once(':').unwrap_or((token, token));
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    };
    if !ok(user) || !ok(project) {
        return Err(AuthError::Invalid(
            "noauth tokens are user:project (letters, digits, - _ . @)".into(),
        ));
    }
    Ok(TokenInfo {
        user_id: user.to_string(),
        project_id: project.to_string(),
        roles: vec!["admin".into(), "member".into()],
        expires_at: None,
        image_endpoint: None,
    })
}

/// Tokens listed in the config.
pub struct StaticTokens {
    tokens: Vec<StaticToken>,
}

impl StaticTokens {
    pub fn new(tokens: &[StaticToken]) -> StaticTokens {
        StaticTokens {
            tokens: tokens.to_vec(),
        }
    }
}

impl TokenValidator for StaticTokens {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, AuthError>> {
        Box::pin(async move {
            use subtle::ConstantTimeEq;
            let found = self
                .tokens
                .iter()
                .find(|t| bool::from(t.token.as_bytes().ct_eq(token.as_bytes())));
            match found {
                Some(t) => Ok(TokenInfo {
                    user_id: t.user_id.clone(),
                    project_id: t.project_id.clone(),
                    roles: t.roles.clone(),
                    expires_at: None,
                    image_endpoint: None,
                }),
                None => Err(AuthError::Invalid("the token is not valid".into())),
            }
        })
    }
}

/// Tokens checked by a Keystone v3 server.
pub struct Keystone(KeystoneValidator);

impl Keystone {
    pub fn new(cfg: &KeystoneConfig) -> Result<Keystone, String> {
        KeystoneValidator::new(cfg.clone()).map(Keystone)
    }
}

impl TokenValidator for Keystone {
    fn validate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenInfo, AuthError>> {
        Box::pin(async move {
            let t = self.0.validate(token).await.map_err(|e| match e.kind() {
                KeystoneErrorKind::InvalidToken => AuthError::Invalid(e.to_string()),
                KeystoneErrorKind::Unavailable => AuthError::Unavailable(e.to_string()),
                KeystoneErrorKind::Internal => AuthError::Internal(e.to_string()),
            })?;
            Ok(TokenInfo {
                image_endpoint: t.endpoint("image", "public").map(str::to_string),
                expires_at: Some(t.expires_at.to_rfc3339()),
                user_id: t.user_id,
                project_id: t.project_id,
                roles: t.roles,
            })
        })
    }
}

/// The validator the config asks for.
pub fn validator_for(cfg: &CinderConfig) -> Result<Arc<dyn TokenValidator>, String> {
    match cfg.auth {
        AuthMode::Noauth => Ok(Arc::new(NoAuth)),
        AuthMode::Static => Ok(Arc::new(StaticTokens::new(&cfg.tokens))),
        AuthMode::Keystone => {
            let k = cfg.keystone.as_ref().ok_or_else(|| {
                "cinder.auth = \"keystone\" needs a [cinder.keystone] section".to_string()
            })?;
            Ok(Arc::new(Keystone::new(k)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noauth_tokens_split_user_and_project() {
        let t = noauth_info("alice:proj1").unwrap();
        assert_eq!(
            (t.user_id.as_str(), t.project_id.as_str()),
            ("alice", "proj1")
        );
        assert!(t.is_admin());
        let t = noauth_info("solo").unwrap();
        assert_eq!(t.project_id, "solo");
        assert!(noauth_info("a:b/c").is_err());
        assert!(noauth_info(":p").is_err());
    }

    #[test]
    fn keystone_needs_its_section() {
        let mut cfg = CinderConfig {
            auth: AuthMode::Keystone,
            ..Default::default()
        };
        let e = validator_for(&cfg).err().unwrap();
        assert!(e.contains("[cinder.keystone]"), "{e}");
        cfg.keystone = Some(KeystoneConfig {
            service_token: Some("svc".into()),
            ..Default::default()
        });
        assert!(validator_for(&cfg).is_ok());
    }
}
