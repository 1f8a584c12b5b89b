//! Who asks: every route that needs rights takes a [`Caller`] (the
//! principal of the request's bearer token, or 401) and asks it what it
//! may do, instead of each handler reading headers itself. A route under
//! `/streams/{stream}` takes an [`OnStream`] instead: the caller, already
//! allowed what the route's rights say on the stream its path names (403
//! otherwise), so that no handler can forget the check. Whether the stream
//! exists is the handler's to ask after (404 comes after 403: a caller
//! without rights learns nothing of which streams exist).

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
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

// One reading of `Authorization: Bearer` for the HTTP and gRPC planes.
pub use crate::gate::bearer_token;

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

/// The rights a stream route needs (every one of them), as a type.
pub trait Rights {
    const ACTIONS: &'static [Action];
}

/// Reading a stream: records, fetch, acks, dead letters.
pub struct Consume;
/// What only an operator does to a stream: resets, deletions, purges.
pub struct Admin;
/// Taking messages out of a stream and writing them into it (a replay).
pub struct ConsumeAndPublish;
/// Writing messages into a stream.
pub struct Publish;

impl Rights for Consume {
    const ACTIONS: &'static [Action] = &[Action::Consume];
}
impl Rights for Admin {
    const ACTIONS: &'static [Action] = &[Action::Admin];
}
impl Rights for Publish {
    const ACTIONS: &'static [Action] = &[Action::Publish];
}
impl Rights for ConsumeAndPublish {
    const ACTIONS: &'static [Action] = &[Action::Consume, Action::Publish];
}

/// A route's stream (`{stream}` in its path) and its group (`{group}`,
/// empty where the path names none), with a caller allowed `R` on it.
pub struct OnStream<R> {
    pub caller: Caller,
    pub stream: String,
    pub group: String,
    rights: PhantomData<R>,
}

impl<R: Rights> FromRequestParts<Arc<AdminState>> for OnStream<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Arc<AdminState>,
    ) -> Result<OnStream<R>, ApiError> {
        let caller = Caller::from_request_parts(parts, s).await?;
        let params = RawPathParams::from_request_parts(parts, s)
            .await
            .map_err(|e| ApiError::bad(e.body_text()))?;
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        };
        let stream = param("stream")
            .ok_or_else(|| ApiError::internal("the route's path names no {stream}"))?;
        for &action in R::ACTIONS {
            caller.may(s, action, &stream)?;
        }
        Ok(OnStream {
            caller,
            stream,
            group: param("group").unwrap_or_default(),
            rights: PhantomData,
        })
    }
}
