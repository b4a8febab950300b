//! Cinder fault bodies, `{"badRequest": {"message": "...", "code": 400}}`,
//! and the one function that turns service errors into them.

use super::auth::{AuthError, AuthErrorKind};
use crate::service::{ErrorKind, ServiceError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct CinderError {
    pub status: StatusCode,
    pub message: String,
}

pub type CResult<T> = Result<T, CinderError>;

/// The fault name Cinder uses for a status code.
pub fn fault_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        405 => "badMethod",
        409 => "conflictingRequest",
        413 => "overLimit",
        415 => "badMediaType",
        501 => "notImplemented",
        503 => "serviceUnavailable",
        _ => "computeFault",
    }
}

impl CinderError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> CinderError {
        CinderError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> CinderError {
        CinderError::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> CinderError {
        CinderError::new(StatusCode::NOT_FOUND, m)
    }
    pub fn forbidden(m: impl Into<String>) -> CinderError {
        CinderError::new(StatusCode::FORBIDDEN, m)
    }
    pub fn unauthorized() -> CinderError {
        CinderError::new(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        )
    }
    pub fn internal() -> CinderError {
        CinderError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server has either erred or is incapable of performing the requested operation.",
        )
    }
    pub fn malformed() -> CinderError {
        CinderError::bad_request("Malformed request body")
    }
    pub fn invalid_volume(m: impl std::fmt::Display) -> CinderError {
        CinderError::bad_request(format!("Invalid volume: {m}"))
    }
    pub fn invalid_input(m: impl std::fmt::Display) -> CinderError {
        CinderError::bad_request(format!("Invalid input received: {m}"))
    }
}

impl IntoResponse for CinderError {
    fn into_response(self) -> Response {
        let name = fault_name(self.status);
        let mut inner = json!({"message": self.message, "code": self.status.as_u16()});
        let limited = self.status == StatusCode::PAYLOAD_TOO_LARGE
            || self.status == StatusCode::TOO_MANY_REQUESTS;
        if limited {
            inner["retryAfter"] = json!("0");
        }
        let mut resp = (self.status, Json(json!({ name: inner }))).into_response();
        resp.extensions_mut().insert(super::Fault);
        if limited {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("0"));
        }
        resp
    }
}

/// The one place service errors become Cinder faults. Internal errors are
/// logged whole and answered without their details.
impl From<ServiceError> for CinderError {
    fn from(e: ServiceError) -> Self {
        match (&e, e.kind()) {
            (ServiceError::NotFound { what, id }, _) => {
                let what = match *what {
                    "volume type" => "Volume type",
                    "snapshot" => "Snapshot",
                    "attachment" => "Volume attachment",
                    "transfer" => "Transfer",
                    "image" => "Image",
                    "image metadata key" => "Image metadata key",
                    _ => "Volume",
                };
                CinderError::not_found(format!("{what} {id} could not be found."))
            }
            (ServiceError::Invalid { field, message }, _) => {
                CinderError::invalid_input(format!("{field}: {message}"))
            }
            (_, ErrorKind::Conflict) => CinderError::invalid_volume(&e),
            (_, ErrorKind::Busy) => CinderError::new(StatusCode::CONFLICT, e.to_string()),
            (_, ErrorKind::NoCapacity) => CinderError::bad_request(e.to_string()),
            (
                ServiceError::QuotaExceeded {
                    resource,
                    limit,
                    in_use,
                    requested,
                },
                _,
            ) => {
                let m = match *resource {
                    "volumes" => format!("Maximum number of volumes allowed ({limit}) exceeded"),
                    "snapshots" => {
                        format!("Maximum number of snapshots allowed ({limit}) exceeded")
                    }
                    "per_volume_gigabytes" => format!(
                        "Requested volume size {requested}G is larger than maximum allowed limit {limit}G."
                    ),
                    _ => format!(
                        "Requested volume or snapshot exceeds allowed gigabytes quota. \
                         Requested {requested}G, quota is {limit}G and {in_use}G has been consumed."
                    ),
                };
                CinderError::new(StatusCode::PAYLOAD_TOO_LARGE, m)
            }
            (_, ErrorKind::Unavailable) => CinderError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is shutting down; retry shortly.",
            ),
            (_, ErrorKind::ImageService) => {
                tracing::error!(error = %e, "image service failure");
                CinderError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    crate::service::IMAGE_SERVICE_MESSAGE,
                )
            }
            (_, ErrorKind::BackendUnavailable) => {
                tracing::warn!(error = %e, "request refused: backend unusable");
                CinderError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; nothing was changed. Retry once it is back."),
                )
            }
            (_, ErrorKind::InsufficientStorage) => {
                tracing::warn!(error = %crate::service::reason(&e), "request refused: disk full");
                CinderError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "The host's data disk is full, so the change was not saved; nothing was changed. Retry once space is freed.",
                )
            }
            _ => {
                tracing::error!(error = %crate::service::reason(&e), "request failed");
                CinderError::internal()
            }
        }
    }
}

/// Token checks that fail: a bad token is 401, an identity service that
/// cannot be asked is 503 (as keystonemiddleware answers), our own failure
/// is 500. Only the log has the details.
impl From<AuthError> for CinderError {
    fn from(e: AuthError) -> Self {
        match e.kind() {
            AuthErrorKind::Invalid => {
                tracing::info!(error = %e, "token refused");
                CinderError::unauthorized()
            }
            AuthErrorKind::Unavailable => {
                tracing::warn!(error = %e, "token not checked");
                CinderError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The identity service is unavailable; try again later.",
                )
            }
            AuthErrorKind::Internal => {
                tracing::error!(error = %e, "token not checked");
                CinderError::internal()
            }
        }
    }
}

impl From<crate::api::BodyError> for CinderError {
    fn from(e: crate::api::BodyError) -> Self {
        match e {
            crate::api::BodyError::TooLarge(_) => {
                CinderError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request is too large.")
            }
            _ => CinderError::malformed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_maps_to_over_limit() {
        let e: CinderError = ServiceError::QuotaExceeded {
            resource: "volumes",
            limit: 1,
            in_use: 1,
            requested: 1,
        }
        .into();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(fault_name(e.status), "overLimit");
        assert_eq!(fault_name(StatusCode::NOT_ACCEPTABLE), "computeFault");
    }
}
