//! The HTTP plane's one error: `{"error": message}` with its status, and a
//! `Retry-After` when the port is busy. Every route answers with it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the field when the request is malformed.
    pub error: String,
}

/// A request turned down.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds after which to try again (busy answers).
    retry_after: Option<u32>,
}

/// What a route answers.
pub type Answer = Result<Response, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong (the message names the field).
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no principal (a missing or unknown token).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: a principal without the right.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 500: the daemon failed (the spool, a task).
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    /// A spool's refusal as the client should read it: a bad or taken
    /// stream name, a stream being deleted (404); anything else is the
    /// daemon's failure (500).
    pub fn spool(e: crate::spool::SpoolError) -> ApiError {
        use crate::spool::SpoolError;
        match e {
            SpoolError::BadStreamName(_) => ApiError::bad(e.to_string()),
            SpoolError::StreamExists(_) | SpoolError::TooManyStreams { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            SpoolError::StreamDeleted(_) => ApiError::not_found(e.to_string()),
            e => ApiError::internal(e),
        }
    }

    /// 503 with `Retry-After`: a limit is reached for now.
    pub fn busy(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
