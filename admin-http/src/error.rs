//! The admin plane's one error type, and how each becomes an HTTP answer. Bodies are
//! `{"error": code, "message": text}`; an internal failure is logged once here and shown
//! only as `internal`, so storage paths, key material and stack details never reach a
//! client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use messs_broker::BrokerError;
use messs_storage::StorageError;
use serde::Serialize;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed or asks for something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials (401). The message never says which part was wrong.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Authenticated, but not allowed (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such thing, or one the caller may not see (404).
    #[error("{0} not found")]
    NotFound(String),
    /// It exists already, or conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body is larger than `[admin] max_body_bytes` (413).
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// The body is not `application/json` (415).
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    /// Too many attempts; retry after that many seconds (429).
    #[error("too many requests")]
    TooManyRequests(u64),
    /// A part the request needs is not there or is overloaded (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// Anything else; logged, not shown (500).
    #[error("internal error")]
    Internal(String),
}

/// The JSON error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unauthenticated`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `too_many_requests`,
    /// `unavailable`, `internal`.
    pub error: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl AdminError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AdminError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            AdminError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AdminError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The whole story, an internal failure's cause included: for the operator's terminal
    /// or log when the admin plane starts, never for an HTTP client.
    pub fn for_operator(&self) -> String {
        match self {
            AdminError::Internal(what) => format!("internal error: {what}"),
            other => other.to_string(),
        }
    }

    /// A failure the caller cannot fix, logged with `what` (never shown).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        AdminError::Internal(what.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let AdminError::Internal(detail) = &self {
            tracing::error!(%detail, "admin request failed");
        }
        let body = ErrorBody {
            error: code,
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        match self {
            AdminError::TooManyRequests(secs) => {
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            AdminError::Unauthenticated(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"messs\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<StorageError> for AdminError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Invalid(m) => AdminError::BadRequest(m),
            StorageError::NotFound(m) => AdminError::NotFound(m),
            StorageError::TooLong(what) => AdminError::BadRequest(format!("{what} is too long")),
            StorageError::Busy(_) | StorageError::WriterStopped | StorageError::WriteFailed(_) => {
                tracing::warn!(error = %e, "admin request: the store cannot write");
                AdminError::Unavailable("the store cannot take writes now")
            }
            other => AdminError::internal(other),
        }
    }
}

impl From<BrokerError> for AdminError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Storage(s) => s.into(),
            BrokerError::Registry(m) => AdminError::BadRequest(m),
            BrokerError::Refused(messs_broker::PublishRefused::NotAuthorized) => {
                AdminError::Forbidden(
                    "the tenant's ACL does not allow publishing this (as this device)",
                )
            }
            BrokerError::Refused(r) => AdminError::BadRequest(r.to_string()),
            other => AdminError::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for AdminError {
    fn from(e: tokio::task::JoinError) -> Self {
        AdminError::internal(format!("blocking task: {e}"))
    }
}

/// Results of handlers.
pub type ApiResult<T> = Result<T, AdminError>;
