//! The signature canonicaliser and verifier: arbitrary parts and
//! signatures never panic; a fresh correct signature is accepted once and
//! then refused as a replay; a changed URL is refused.
#![no_main]

use blockd::api::scp::auth::{AuthFailure, SignedRequest, Verifier, sign};
use blockd::config::Credential;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Fields separated by newlines: method, url, timestamp, key, account,
    // client type, signature.
    let mut f = text.split('\n');
    let mut next = || f.next().unwrap_or("");
    let (method, url, ts, key, account, client, sig) =
        (next(), next(), next(), next(), next(), next(), next());
    let cred = Credential {
        access_key: key.to_string(),
        secret_key: "fuzz-secret-0123456789".into(),
        user_id: "u".into(),
        project_id: "p".into(),
    };
    let v = Verifier::new(&[cred], 300);
    let req = SignedRequest {
        method,
        url,
        timestamp: ts,
        access_key: key,
        account_id: account,
        client_type: client,
    };
    let canonical = req.canonical();
    assert_eq!(
        canonical.len(),
        method.len() + url.len() + ts.len() + key.len() + account.len() + client.len()
    );
    let _ = v.verify(&req, sig, NOW);

    // A correct signature over a timestamp inside the window.
    let ts_ok = NOW.to_string();
    let fresh = SignedRequest {
        timestamp: &ts_ok,
        ..req.clone()
    };
    let good = sign("fuzz-secret-0123456789", &fresh);
    let v = Verifier::new(
        &[Credential {
            access_key: key.to_string(),
            secret_key: "fuzz-secret-0123456789".into(),
            user_id: "u".into(),
            project_id: "p".into(),
        }],
        300,
    );
    assert!(v.verify(&fresh, &good, NOW).is_ok());
    assert_eq!(v.verify(&fresh, &good, NOW), Err(AuthFailure::Replayed));
    let other_url = format!("{url}x");
    let tampered = SignedRequest {
        url: &other_url,
        ..fresh.clone()
    };
    assert!(v.verify(&tampered, &good, NOW).is_err());
});
