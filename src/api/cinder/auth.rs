//! Who a Cinder caller is. `X-Auth-Token` goes to a `TokenValidator`,
//! which answers the user, project and roles behind it. noauth and static
//! tokens live here; a Keystone validator plugs in through the same trait.

use super::config::{AuthMode, CinderConfig, StaticToken};
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
    /// The identity service could not be asked: 401 too, as Cinder does.
    #[error("identity service unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorKind {
    Invalid,
    Unavailable,
}

impl AuthError {
    pub fn kind(&self) -> AuthErrorKind {
        match self {
            AuthError::Invalid(_) => AuthErrorKind::Invalid,
            AuthError::Unavailable(_) => AuthErrorKind::Unavailable,
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
                }),
                None => Err(AuthError::Invalid("the token is not valid".into())),
            }
        })
    }
}

/// The validator the config asks for. Keystone needs a validator given
/// from outside (`keystone`); without one, start-up fails.
pub fn validator_for(
    cfg: &CinderConfig,
    keystone: Option<Arc<dyn TokenValidator>>,
) -> Result<Arc<dyn TokenValidator>, String> {
    match cfg.auth {
        AuthMode::Noauth => Ok(Arc::new(NoAuth)),
        AuthMode::Static => Ok(Arc::new(StaticTokens::new(&cfg.tokens))),
        AuthMode::Keystone => keystone.ok_or_else(|| {
            "cinder.auth = \"keystone\": this build has no Keystone token validator yet; \
             use auth = \"static\" or \"noauth\""
                .to_string()
        }),
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
    fn keystone_without_a_validator_fails_clearly() {
        let cfg = CinderConfig {
            auth: AuthMode::Keystone,
            ..Default::default()
        };
        let e = validator_for(&cfg, None).err().unwrap();
        assert!(e.contains("Keystone"), "{e}");
    }
}
