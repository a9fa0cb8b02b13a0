//! Request extractors whose rejections are [`AdminError`]s, so a malformed body, query or
//! path gets the same JSON error body (and a documented status) as every other error,
//! instead of axum's plain-text rejection.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::AdminError;

fn rejected(status: StatusCode, text: String) -> AdminError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => AdminError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AdminError::UnsupportedMediaType,
        _ => AdminError::BadRequest(text),
    }
}

/// A JSON body.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e @ JsonRejection::JsonDataError(_))
            | Err(e @ JsonRejection::JsonSyntaxError(_)) => {
                Err(AdminError::BadRequest(e.body_text()))
            }
            Err(e) => Err(rejected(e.status(), e.body_text())),
        }
    }
}

/// Query parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| AdminError::BadRequest(e.body_text()))
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| AdminError::BadRequest(e.body_text()))
    }
}
