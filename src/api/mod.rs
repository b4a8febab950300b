//! The REST dialects, and what they share: request ids and per-request
//! tracing spans, JSON body parsing that names the bad field, and query
//! string helpers. Each dialect maps service errors to HTTP in one place.

pub mod cinder;
pub mod scp;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use tracing::Instrument;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, for logs and error bodies.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives each request an id, a tracing span carrying it, and a response
/// header with it.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    async move {
        let started = std::time::Instant::now();
        let mut resp = next.run(req).await;
        tracing::info!(
            status = resp.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "served"
        );
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID.clone(), v);
        }
        resp
    }
    .instrument(span)
    .await
}

/// Why a body could not be read as the expected JSON.
#[derive(Debug)]
pub enum BodyError {
    TooLarge(usize),
    Unreadable(String),
    Malformed(String),
    /// A field is missing, unknown or of the wrong type.
    Field {
        field: String,
        message: String,
    },
}

impl axum::response::IntoResponse for BodyError {
    // Dialects map body errors to their own format; this is the fallback.
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            BodyError::TooLarge(_) => (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large".to_string(),
            ),
            BodyError::Unreadable(m) | BodyError::Malformed(m) => {
                (axum::http::StatusCode::BAD_REQUEST, m)
            }
            BodyError::Field { field, message } => (
                axum::http::StatusCode::BAD_REQUEST,
                format!("{field}: {message}"),
            ),
        };
        (status, msg).into_response()
    }
}

/// The raw request body, with the size cap applied.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = BodyError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::BytesRejection;
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(BytesRejection::FailedToBufferBody(e)) => {
                let status = e.status();
                if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(BodyError::TooLarge(0))
                } else {
                    Err(BodyError::Unreadable(e.body_text()))
                }
            }
            Err(e) => Err(BodyError::Unreadable(e.body_text())),
        }
    }
}

impl RawBody {
    /// Parses the body as `T`, naming the field at fault on failure.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, BodyError> {
        if self.0.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(BodyError::Malformed("the request body is empty".into()));
        }
        let de = &mut serde_json::Deserializer::from_slice(&self.0);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(v),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = strip_position(&inner.to_string());
                match inner.classify() {
                    serde_json::error::Category::Data => Err(BodyError::Field {
                        field: field_name(&path, &message),
                        message,
                    }),
                    _ => Err(BodyError::Malformed(format!(
                        "the request body is not valid JSON: {message}"
                    ))),
                }
            }
        }
    }
}

/// serde names a missing field in its message, not its path; an unknown
/// field is already the last element of the path.
fn field_name(path: &str, message: &str) -> String {
    let quoted = message.split('`').nth(1).unwrap_or("");
    let missing = message.starts_with("missing field");
    match (path, missing) {
        (".", true) => quoted.to_string(),
        (p, true) => format!("{p}.{quoted}"),
        (".", false) if message.starts_with("unknown field") => quoted.to_string(),
        (".", false) => "body".to_string(),
        (p, false) => p.to_string(),
    }
}

fn strip_position(m: &str) -> String {
    match m.find(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

/// Parses a raw query string into pairs, refusing floods of parameters.
pub fn query_pairs(raw: Option<&str>, max: usize) -> Result<Vec<(String, String)>, String> {
    let raw = raw.unwrap_or("");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .take(max + 1)
        .collect();
    if pairs.len() > max {
        return Err(format!("too many query parameters (at most {max})"));
    }
    Ok(pairs)
}

/// Reads a query boolean: true/false in any case (clients send "True"),
/// 1/0, or empty for "not given".
pub fn query_bool(name: &str, v: &str) -> Result<Option<bool>, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "null" | "none" => Ok(None),
        "true" | "1" | "yes" => Ok(Some(true)),
        "false" | "0" | "no" => Ok(Some(false)),
        _ => Err(format!("{name} must be true or false, not {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        size: u64,
        inner: Option<Inner>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        key: String,
    }

    fn field(body: &str) -> String {
        match RawBody(Bytes::from(body.to_string())).parse::<T>() {
            Err(BodyError::Field { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn body_errors_name_the_field() {
        assert_eq!(field(r#"{"size": "x"}"#), "size");
        assert_eq!(field(r#"{}"#), "size");
        assert_eq!(field(r#"{"size": 8, "extra": 1}"#), "extra");
        assert_eq!(field(r#"{"size": 8, "inner": {"key": 5}}"#), "inner.key");
        assert_eq!(field(r#"{"size": 8, "inner": {}}"#), "inner.key");
        assert!(matches!(
            RawBody(Bytes::from("{")).parse::<T>(),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            RawBody(Bytes::from("")).parse::<T>(),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn query_floods_are_refused() {
        let q: String = (0..100).map(|i| format!("a{i}=1&")).collect();
        assert!(query_pairs(Some(&q), 50).is_err());
        assert_eq!(query_pairs(Some("a=1&b=%20x"), 50).unwrap().len(), 2);
    }
}
