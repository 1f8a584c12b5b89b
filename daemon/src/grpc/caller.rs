//! Who calls: the principal of a call's `authorization: Bearer <token>`
//! metadata, found by the same [`Gate`] as on every plane (UNAUTHENTICATED
//! without one), and its rights on a stream (PERMISSION_DENIED, before
//! anything tells whether the stream exists: a caller without rights
//! learns nothing of which streams do).
//!
//! Also what a principal holds open: its streaming calls (PublishStream,
//! StreamingPull) count against `grpc.max_streams_per_principal` however
//! many connections carry them ([`StreamLimits`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::GrpcStats;
use crate::auth::{Action, Principal, PrincipalKind};
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

/// Open streaming calls by principal, against
/// `grpc.max_streams_per_principal`: without it one token could hold
/// `grpc.max_connections` × `grpc.max_streams_per_connection` calls by
/// spreading them over connections.
pub(super) struct StreamLimits {
    max: usize,
    /// By principal (a token and a certificate may share a name: the kind
    /// tells them apart); no entry at zero.
    held: Mutex<HashMap<(PrincipalKind, String), usize>>,
    stats: Arc<GrpcStats>,
}

/// One streaming call's place within [`StreamLimits`], given back when
/// dropped: however the call ends, its task drops it.
pub(super) struct StreamSlot {
    limits: Arc<StreamLimits>,
    /// `None` for the anonymous principal (not limited per principal).
    key: Option<(PrincipalKind, String)>,
}

/// When a refused caller may try again: by then some of its calls may
/// have ended.
const RETRY_STREAMS: Duration = Duration::from_secs(1);

impl StreamLimits {
    pub fn new(max: usize, stats: Arc<GrpcStats>) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            max,
            held: Mutex::default(),
            stats,
        })
    }

    /// A slot for one more streaming call of `p`, or RESOURCE_EXHAUSTED
    /// with RetryInfo (counted). The anonymous principal (every local
    /// client when no principals are configured, loopback only) is not
    /// limited: it is nobody in particular, as for QUIC's
    /// `quic.max_connections_per_principal`.
    pub fn open(self: &Arc<Self>, p: &Principal) -> Result<StreamSlot, Status> {
        let key = (p.kind != PrincipalKind::Anonymous).then(|| (p.kind, p.name.clone()));
        if let Some(key) = &key {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let n = held.entry(key.clone()).or_insert(0);
            if *n >= self.max {
                let n = *n;
                drop(held);
                self.stats.refused_principal_streams.fetch_add(1, Relaxed);
                return Err(Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "principal {:?} has {n} streaming calls open, the most allowed \
                         (grpc.max_streams_per_principal): end some, or try again",
                        p.name
                    ),
                    ErrorDetails::with_retry_info(Some(RETRY_STREAMS)),
                ));
            }
            *n += 1;
        }
        self.stats.streaming_calls.fetch_add(1, Relaxed);
        Ok(StreamSlot {
            limits: self.clone(),
            key,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limits.stats.streaming_calls.fetch_sub(1, Relaxed);
        if let Some(key) = self.key.take() {
            let mut held = self.limits.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Permissions;

    fn principal(kind: PrincipalKind, name: &str) -> Principal {
        Principal {
            name: name.into(),
            kind,
            permissions: Permissions::default(),
        }
    }

    #[test]
    fn streams_are_limited_per_principal_and_given_back() {
        let stats = Arc::new(GrpcStats::default());
        let limits = StreamLimits::new(2, stats.clone());
        let a = principal(PrincipalKind::Token, "a");
        let (s1, s2) = (limits.open(&a).unwrap(), limits.open(&a).unwrap());
        let e = limits.open(&a).err().unwrap();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.get_details_retry_info().is_some(), "{e:?}");
        assert_eq!(stats.refused_principal_streams.load(Relaxed), 1);
        // Another principal, a certificate of the same name, the
        // anonymous one: not held back by a's calls.
        let _b = limits.open(&principal(PrincipalKind::Token, "b")).unwrap();
        let _c = limits
            .open(&principal(PrincipalKind::ClientCert, "a"))
            .unwrap();
        let anon = principal(PrincipalKind::Anonymous, "anonymous");
        let _anon: Vec<_> = (0..5).map(|_| limits.open(&anon).unwrap()).collect();
        assert_eq!(stats.streaming_calls.load(Relaxed), 2 + 2 + 5);
        drop(s1);
        let _s3 = limits.open(&a).unwrap();
        drop((s2, _s3));
        assert!(!limits
            .held
            .lock()
            .unwrap()
            .contains_key(&(PrincipalKind::Token, "a".into())));
    }
}
