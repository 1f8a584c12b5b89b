//! Who asks: every route that needs rights takes a [`Caller`] (the
//! principal of the request's bearer token, or 401) and asks it what it
//! may do, instead of each handler reading headers itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AdminState;
use crate::auth::{Action, Principal};

/// The principal of a request, and where it came from.
pub struct Caller {
    pub principal: Principal,
    pub peer: SocketAddr,
}

impl Caller {
    /// Whether the caller may do `action` on `stream` (`""`: the daemon);
    /// 403 naming why not. Refusals are counted by the gate.
    pub fn may(&self, s: &AdminState, action: Action, stream: &str) -> Result<(), ApiError> {
        s.gate
            .check(self.peer, &self.principal, action, stream)
            .map_err(ApiError::forbidden)
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl FromRequestParts<Arc<AdminState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Arc<AdminState>,
    ) -> Result<Caller, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| ApiError::internal("the connection's address is missing"))?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        let principal = s
            .gate
            .principal(peer, token, None)
            .map_err(|d| ApiError::unauthorized(d.reason()))?;
        Ok(Caller { principal, peer })
    }
}
