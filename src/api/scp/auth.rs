//! SCP request signatures: base64(HMAC-SHA256(secret, method + url +
//! timestamp + access key + account id + client type)). The URL is the
//! scheme, the Host header and the request target exactly as received.
//! The body is not covered by the signature, as in the official clients.

use crate::config::Credential;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

type HmacSha256 = Hmac<Sha256>;

/// The signed parts of one request.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub timestamp: &'a str,
    pub access_key: &'a str,
    pub account_id: &'a str,
    pub client_type: &'a str,
}

impl SignedRequest<'_> {
    /// The exact string the client signs.
    pub fn canonical(&self) -> String {
        format!(
            "{}{}{}{}{}{}",
            self.method,
            self.url,
            self.timestamp,
            self.access_key,
            self.account_id,
            self.client_type
        )
    }
}

/// Signs a request the way clients do (used by tests and the CLI).
pub fn sign(secret: &str, req: &SignedRequest) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(req.canonical().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    MissingHeader(&'static str),
    Duplicate(&'static str),
    BadTimestamp,
    Stale,
    UnknownKey,
    BadSignature,
    Replayed,
}

impl AuthFailure {
    /// What the client is told. An unknown key and a wrong signature read
    /// the same, so keys cannot be probed.
    pub fn public_message(&self) -> String {
        match self {
            AuthFailure::MissingHeader(h) => format!("the {h} header is required"),
            AuthFailure::Duplicate(h) => format!("the {h} header must appear once"),
            AuthFailure::BadTimestamp => {
                "Scp-Timestamp must be Unix time in milliseconds".to_string()
            }
            AuthFailure::Stale => {
                "Scp-Timestamp is outside the accepted window; check the client's clock".to_string()
            }
            AuthFailure::UnknownKey | AuthFailure::BadSignature => {
                "the access key or signature is not valid".to_string()
            }
            AuthFailure::Replayed => "this signature was already used".to_string(),
        }
    }
}

/// Checks signatures and remembers the ones seen inside the window.
pub struct Verifier {
    creds: HashMap<String, Credential>,
    window_ms: i64,
    /// Accepted signatures by timestamp, oldest first, so the ones that
    /// have left the window (and would be refused as stale anyway) are
    /// dropped from the front in O(log n) each.
    seen: Mutex<BTreeSet<(i64, [u8; 32])>>,
}

impl Verifier {
    pub fn new(creds: &[Credential], window_secs: i64) -> Verifier {
        Verifier {
            creds: creds
                .iter()
                .map(|c| (c.access_key.clone(), c.clone()))
                .collect(),
            window_ms: window_secs * 1000,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// A verifier with new keys that still remembers the signatures seen.
    pub fn rekeyed(&self, creds: &[Credential], window_secs: i64) -> Verifier {
        let v = Verifier::new(creds, window_secs);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        *v.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        v
    }

    /// Verifies `req` carrying `signature` at `now_ms`; returns the
    /// credential it was signed with.
    pub fn verify(
        &self,
        req: &SignedRequest,
        signature: &str,
        now_ms: i64,
    ) -> Result<&Credential, AuthFailure> {
        let ts: i64 = req
            .timestamp
            .parse()
            .map_err(|_| AuthFailure::BadTimestamp)?;
        if (now_ms - ts).abs() > self.window_ms {
            return Err(AuthFailure::Stale);
        }
        let cred = self
            .creds
            .get(req.access_key)
            .ok_or(AuthFailure::UnknownKey)?;
        let given = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| AuthFailure::BadSignature)?;
        let mut mac = HmacSha256::new_from_slice(cred.secret_key.as_bytes())
            .map_err(|_| AuthFailure::BadSignature)?;
        mac.update(req.canonical().as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&given)
            .map_err(|_| AuthFailure::BadSignature)?;

        // A verified HMAC-SHA256 is 32 bytes.
        let given: [u8; 32] = given.try_into().map_err(|_| AuthFailure::BadSignature)?;
        let oldest = now_ms - self.window_ms;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while seen.first().is_some_and(|(t, _)| *t < oldest) {
            seen.pop_first();
        }
        if !seen.insert((ts, given)) {
            return Err(AuthFailure::Replayed);
        }
        Ok(cred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred() -> Credential {
        Credential {
            access_key: "ak".into(),
            secret_key: "secret-secret-secret".into(),
            user_id: "u".into(),
            project_id: "p".into(),
        }
    }

    fn req<'a>(url: &'a str, ts: &'a str) -> SignedRequest<'a> {
        SignedRequest {
            method: "GET",
            url,
            timestamp: ts,
            access_key: "ak",
            account_id: "",
            client_type: "Openapi",
        }
    }

    #[test]
    fn canonical_string_matches_the_reference_example() {
        let r = SignedRequest {
            method: "POST",
            url: "http://127.0.0.1:35379/v1/volumes",
            timestamp: "1795896264294",
            access_key: "test-ak",
            account_id: "",
            client_type: "Openapi",
        };
        assert_eq!(
            r.canonical(),
            "POSThttp://127.0.0.1:35379/v1/volumes1795896264294test-akOpenapi"
        );
    }

    #[test]
    fn verify_accepts_once_and_refuses_tamper_skew_replay() {
        let v = Verifier::new(&[cred()], 300);
        let now = 1_800_000_000_000i64;
        let ts = now.to_string();
        let r = req("http://h/v1/volumes?limit=1", &ts);
        let sig = sign("secret-secret-secret", &r);
        assert!(v.verify(&r, &sig, now).is_ok());
        assert_eq!(v.verify(&r, &sig, now).unwrap_err(), AuthFailure::Replayed);
        let tampered = req("http://h/v1/volumes?limit=2", &ts);
        assert_eq!(
            v.verify(&tampered, &sig, now).unwrap_err(),
            AuthFailure::BadSignature
        );
        let ts2 = (now - 301_000).to_string();
        let old = req("http://h/v1/volumes", &ts2);
        let sig2 = sign("secret-secret-secret", &old);
        assert_eq!(v.verify(&old, &sig2, now).unwrap_err(), AuthFailure::Stale);
        let wrong = sign("another-secret-entirely", &req("http://h/x", &ts));
        assert_eq!(
            v.verify(&req("http://h/x", &ts), &wrong, now).unwrap_err(),
            AuthFailure::BadSignature
        );
    }

    #[test]
    fn signatures_that_leave_the_window_are_forgotten() {
        let v = Verifier::new(&[cred()], 300);
        let now = 1_800_000_000_000i64;
        for k in 0..3 {
            let ts = (now + k).to_string();
            let r = req("http://h/v1/volumes", &ts);
            assert!(v.verify(&r, &sign("secret-secret-secret", &r), now).is_ok());
        }
        assert_eq!(v.seen.lock().unwrap().len(), 3);
        let later = now + 300_001;
        let ts = later.to_string();
        let r = req("http://h/v1/volumes", &ts);
        assert!(
            v.verify(&r, &sign("secret-secret-secret", &r), later)
                .is_ok()
        );
        // The first one is outside the window now; the other two are not.
        assert_eq!(v.seen.lock().unwrap().len(), 3);
    }
}
