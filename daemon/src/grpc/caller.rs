//! Who calls: the principal of a call's `authorization: Bearer <token>`
//! metadata, found by the same [`Gate`] as on every plane (UNAUTHENTICATED
//! without one), and its rights on a stream (PERMISSION_DENIED, before
//! anything tells whether the stream exists: a caller without rights
//! learns nothing of which streams do).

use std::net::{Ipv4Addr, SocketAddr};

use tonic::{Request, Status};

use crate::auth::{Action, Principal};
use crate::gate::{bearer_token, Gate};

/// A call's principal and where it came from.
pub(super) struct Caller {
    pub principal: Principal,
    pub peer: SocketAddr,
}

impl Caller {
    /// The principal of `req`, or UNAUTHENTICATED saying why.
    pub fn of<T>(gate: &Gate, req: &Request<T>) -> Result<Caller, Status> {
        // Every connection comes through conn.rs, which gives its address;
        // unspecified only if tonic were to lose it (the gate logs it).
        let peer = req
            .remote_addr()
            .unwrap_or((Ipv4Addr::UNSPECIFIED, 0).into());
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        let principal = gate
            .principal(peer, token, None)
            .map_err(|d| Status::unauthenticated(d.reason()))?;
        Ok(Caller { principal, peer })
    }

    /// Whether the caller may do `action` on `stream`; PERMISSION_DENIED
    /// naming why not (counted by the gate).
    pub fn may(&self, gate: &Gate, action: Action, stream: &str) -> Result<(), Status> {
        gate.check(self.peer, &self.principal, action, stream)
            .map_err(Status::permission_denied)
    }
}
