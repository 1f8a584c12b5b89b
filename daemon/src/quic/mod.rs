//! The QUIC plane of `sluiced`: TLS 1.3 connections from producers, their
//! authentication, publishing over QUIC streams, and leases of the
//! authenticated raw-UDP fast path. The messages are in
//! `sluice_transport::quic::control` and WIRE.md.
//!
//! An authenticated connection holds a slot of [`ConnectionLimits`] while
//! it lives: `quic.max_connections` in all, `quic.max_connections_per_principal`
//! per token or client certificate (the anonymous principal of a loopback
//! daemon is everyone: only the total applies to it). One over a limit is
//! closed with [`close_code::CONNECTION_LIMIT`] and the limit's name,
//! instead of its AUTH_OK, and counted (`sluice_auth_denied_total{reason}`).

mod metrics;
mod subscriber;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream};
use sluice_transport::lease::Leases;
use sluice_transport::proto::ReceiverConfig;
use sluice_transport::quic::control::{Control, Purpose, RefuseCode};
use sluice_transport::quic::frame::{self, FramedRecv};
use sluice_transport::quic::stream_io::StreamIo;
use sluice_transport::quic::{close_code, tls};
use sluice_transport::seal::{exporter_context, EXPORTER_LABEL, EXPORTER_LEN};
use sluice_transport::serve::{self, ServeHandle};
use sluice_transport::udp::{self, SocketOptions};
use sluice_transport::wire::CloseCode;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::auth::{Action, Principal, PrincipalKind};
use crate::consume::service::Consumers;
use crate::gate::{Denied, Gate};
use crate::identity::{self, Identity};
use crate::ingest::{Ingest, IngestShared};
use crate::log_limit::LogLimit;
pub use metrics::SecurityMetrics;
use subscriber::Subscription;

/// How long a client has to send its first message on a stream.
const FIRST_MESSAGE: Duration = Duration::from_secs(10);

/// How long a lease the producer ended keeps opening its session's last
/// datagrams ([`Leases::end`]): they left before the connection closed,
/// so this is ample on any path whose round trip is below it.
const LEASE_DRAIN: Duration = Duration::from_secs(2);

/// Counters of the QUIC plane.
#[derive(Debug, Default)]
pub struct QuicStats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    /// Handshakes that failed (untrusted or missing client certificate,
    /// wrong ALPN, ...).
    pub handshake_failures: AtomicU64,
    pub leases_granted: AtomicU64,
}

/// What every connection's task needs.
struct Plane {
    ingest: Arc<IngestShared>,
    gate: Arc<Gate>,
    receiver: ReceiverConfig,
    /// `None` when the raw-UDP path is insecure (no leases needed).
    leases: Option<Leases>,
    data_addr: SocketAddr,
    lease_ttl: Duration,
    /// Endpoints of QUIC publish streams, for the drain at stop.
    drivers: Mutex<Vec<ServeHandle>>,
    consumers: Arc<Consumers>,
    stats: Arc<QuicStats>,
    handshake_log: Mutex<LogLimit>,
    limits: Arc<ConnectionLimits>,
}

/// Who holds how many authenticated QUIC connections, against the limits.
#[derive(Debug)]
pub struct ConnectionLimits {
    max: usize,
    per_principal: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// By principal (a token and a certificate may share a name: the kind
    /// tells them apart). No entry at zero.
    by_principal: HashMap<(PrincipalKind, String), usize>,
}

/// One connection's place within the limits, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    /// `None` for the anonymous principal (not limited per principal).
    principal: Option<(PrincipalKind, String)>,
}

impl ConnectionLimits {
    pub fn new(max: usize, per_principal: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max,
            per_principal,
            held: Mutex::default(),
        })
    }

    /// A slot for one more connection of `p`, or which limit it is over and
    /// what to tell it.
    pub fn admit(self: &Arc<Self>, p: &Principal) -> Result<Slot, (Denied, String)> {
        let mut held = self.held.lock().unwrap();
        if held.total >= self.max {
            return Err((
                Denied::ConnectionLimit,
                format!(
                    "too many QUIC connections: {} open, the most allowed (quic.max_connections)",
                    held.total
                ),
            ));
        }
        let key = (p.kind != PrincipalKind::Anonymous).then(|| (p.kind, p.name.clone()));
        if let Some(key) = &key {
            let n = held.by_principal.get(key).copied().unwrap_or(0);
            if n >= self.per_principal {
                return Err((
                    Denied::PrincipalConnectionLimit,
                    format!(
                        "too many QUIC connections of principal {:?}: {n} open, the most \
                         allowed (quic.max_connections_per_principal)",
                        p.name
                    ),
                ));
            }
            *held.by_principal.entry(key.clone()).or_insert(0) += 1;
        }
        held.total += 1;
        Ok(Slot {
            limits: self.clone(),
            principal: key,
        })
    }

    /// Connections held now: in all, and by `p`.
    pub fn held(&self, p: &Principal) -> (usize, usize) {
        let held = self.held.lock().unwrap();
        let mine = held
            .by_principal
            .get(&(p.kind, p.name.clone()))
            .copied()
            .unwrap_or(0);
        (held.total, mine)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limits.held.lock().unwrap();
        held.total -= 1;
        if let Some(key) = self.principal.take() {
            if let Some(n) = held.by_principal.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.by_principal.remove(&key);
                }
            }
        }
    }
}

/// The running QUIC plane.
pub struct QuicPlane {
    endpoint: quinn::Endpoint,
    plane: Arc<Plane>,
    accept: JoinHandle<()>,
    pub local_addr: SocketAddr,
}

pub struct QuicSetup {
    pub listen: SocketAddr,
    pub identity: Identity,
    pub client_ca: Option<std::path::PathBuf>,
    pub ingest: Arc<IngestShared>,
    pub gate: Arc<Gate>,
    pub receiver: ReceiverConfig,
    pub leases: Option<Leases>,
    pub data_addr: SocketAddr,
    pub lease_ttl: Duration,
    /// See [`identity::reset_key`].
    pub reset_key: [u8; 64],
    /// SO_RCVBUF of the QUIC socket (0: the kernel's default).
    pub recv_buffer: usize,
    pub consumers: Arc<Consumers>,
    /// Authenticated connections open at once, in all and per principal.
    pub max_connections: usize,
    pub max_connections_per_principal: usize,
}

impl QuicPlane {
    pub fn start(setup: QuicSetup) -> Result<QuicPlane, String> {
        let server = tls::server_config(
            setup.identity.chain,
            setup.identity.key,
            setup.client_ca.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        // As large a receive buffer as the data socket's: bursts from many
        // producers otherwise overflow it (QUIC recovers, at a cost).
        let options = SocketOptions {
            recv_buffer: (setup.recv_buffer > 0).then_some(setup.recv_buffer),
            send_buffer: None,
            allow_smaller_buffers: true,
        };
        let socket = udp::bind_std(setup.listen, &options)
            .map_err(|e| format!("QUIC listener {}: {e}", setup.listen))?;
        // Both the reset secret and the key that tells our connection ids
        // from noise survive restarts: a restarted daemon recognises the
        // ids it handed out before and answers them with a stateless reset.
        let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &setup.reset_key[..32]);
        let cid_key = u64::from_be_bytes(setup.reset_key[56..].try_into().expect("8 bytes"));
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| format!("QUIC listener {}: {e}", setup.listen))?;
        let local_addr = endpoint.local_addr().map_err(|e| e.to_string())?;
        let plane = Arc::new(Plane {
            ingest: setup.ingest,
            gate: setup.gate,
            receiver: setup.receiver,
            leases: setup.leases,
            data_addr: setup.data_addr,
            lease_ttl: setup.lease_ttl,
            drivers: Mutex::new(Vec::new()),
            consumers: setup.consumers,
            stats: Arc::default(),
            handshake_log: Mutex::new(LogLimit::new(5)),
            limits: ConnectionLimits::new(
                setup.max_connections,
                setup.max_connections_per_principal,
            ),
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), plane.clone()));
        Ok(QuicPlane {
            endpoint,
            plane,
            accept,
            local_addr,
        })
    }

    pub fn stats(&self) -> Arc<QuicStats> {
        self.plane.stats.clone()
    }

    /// Stops taking connections and data; what is in flight can still be
    /// acked.
    pub fn pause(&self) {
        self.accept.abort();
        for d in self.plane.drivers.lock().unwrap().iter() {
            d.pause();
        }
    }

    /// Acks what was made durable, closes every session and connection.
    pub async fn shutdown(self) {
        let drivers = std::mem::take(&mut *self.plane.drivers.lock().unwrap());
        for d in drivers {
            d.shutdown(CloseCode::ShuttingDown, "sluiced is stopping")
                .await;
        }
        self.endpoint
            .close(close_code::SHUTTING_DOWN.into(), b"sluiced is stopping");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, plane: Arc<Plane>) {
    while let Some(incoming) = endpoint.accept().await {
        let plane = plane.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    plane.stats.connections.fetch_add(1, Relaxed);
                    plane.stats.connections_total.fetch_add(1, Relaxed);
                    serve_connection(conn, &plane).await;
                    plane.stats.connections.fetch_sub(1, Relaxed);
                }
                Err(e) => {
                    plane.stats.handshake_failures.fetch_add(1, Relaxed);
                    let allowed = plane.handshake_log.lock().unwrap().allow(Instant::now());
                    if let Some(suppressed) = allowed {
                        warn!(%peer, error = %e, suppressed, "QUIC handshake failed");
                    }
                }
            }
        });
    }
}

/// Authenticates a connection on its control stream, then serves the
/// streams it opens.
async fn serve_connection(conn: Connection, plane: &Arc<Plane>) {
    let peer = conn.remote_address();
    // The slot is held until the connection ends (this function returns).
    let (principal, _slot) = match authenticate(&conn, plane).await {
        Ok(p) => p,
        Err((code, reason)) => {
            conn.close(code.into(), reason.as_bytes());
            return;
        }
    };
    debug!(%peer, principal = %principal.name, kind = %principal.kind, "authenticated");
    let principal = Arc::new(principal);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (plane, principal, conn) = (plane.clone(), principal.clone(), conn.clone());
                tokio::spawn(async move {
                    serve_stream(send, recv, &conn, &principal, &plane).await;
                });
            }
            Err(e) => {
                debug!(%peer, reason = %e, "connection ended");
                return;
            }
        }
    }
}

async fn authenticate(
    conn: &Connection,
    plane: &Plane,
) -> Result<(Principal, Slot), (u32, String)> {
    let peer = conn.remote_address();
    let protocol = |what: &str| (close_code::PROTOCOL, format!("expected AUTH: {what}"));
    let (mut send, recv) = tokio::time::timeout(FIRST_MESSAGE, conn.accept_bi())
        .await
        .map_err(|_| protocol("no control stream in time"))?
        .map_err(|e| protocol(&e.to_string()))?;
    let mut recv = FramedRecv::new(recv);
    let first = tokio::time::timeout(FIRST_MESSAGE, recv.next())
        .await
        .map_err(|_| protocol("nothing in time"))?
        .map_err(|e| protocol(&e.to_string()))?
        .ok_or_else(|| protocol("the stream ended"))?;
    let Ok(Control::Auth { token }) = Control::decode(&first) else {
        return Err(protocol("another message"));
    };
    let cn = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(|c| identity::common_name(c)));
    let principal = plane
        .gate
        .principal(peer, &token, cn.as_deref())
        .map_err(|d| (close_code::AUTH_FAILED, d.reason().to_owned()))?;
    let slot = plane.limits.admit(&principal).map_err(|(d, reason)| {
        plane.gate.refused(peer, d, &principal.name);
        (close_code::CONNECTION_LIMIT, reason)
    })?;
    let ok = Control::AuthOk {
        principal: principal.name.clone(),
    };
    frame::write(&mut send, &ok.encode())
        .await
        .map_err(|e| protocol(&e.to_string()))?;
    // The control stream stays open for the connection's life.
    tokio::spawn(async move {
        let _keep = send;
        while let Ok(Some(_)) = recv.next().await {}
    });
    Ok((principal, slot))
}

/// One stream: publish over it, lease the fast path, or consume.
async fn serve_stream(
    mut send: SendStream,
    recv: RecvStream,
    conn: &Connection,
    principal: &Principal,
    plane: &Arc<Plane>,
) {
    let peer = conn.remote_address();
    let mut recv = FramedRecv::new(recv);
    let first = match tokio::time::timeout(FIRST_MESSAGE, recv.next()).await {
        Ok(Ok(Some(f))) => f,
        _ => return,
    };
    let (purpose, stream, producer_id) = match Control::decode(&first) {
        Ok(Control::Open {
            purpose,
            stream,
            producer_id,
        }) => (purpose, stream, producer_id),
        Ok(Control::Subscribe {
            stream,
            group,
            start,
            mode,
            max_messages,
            max_bytes,
        }) => {
            if let Err(reason) = plane.gate.check(peer, principal, Action::Consume, &stream) {
                refuse(&mut send, RefuseCode::Forbidden, &reason).await;
                return;
            }
            let sub = Subscription {
                stream,
                group,
                start,
                mode,
                max_messages,
                max_bytes,
            };
            subscriber::serve(send, recv, &plane.consumers, sub, peer).await;
            return;
        }
        _ => {
            refuse(
                &mut send,
                RefuseCode::BadRequest,
                "expected OPEN or SUBSCRIBE",
            )
            .await;
            return;
        }
    };
    if let Err(reason) = plane.gate.check(peer, principal, Action::Publish, &stream) {
        refuse(&mut send, RefuseCode::Forbidden, &reason).await;
        return;
    }
    if let Err(reason) = plane.ingest.stream_for(&stream) {
        refuse(&mut send, RefuseCode::NoSuchStream, &reason.to_string()).await;
        return;
    }
    match purpose {
        Purpose::Publish => {
            if frame::write(&mut send, &Control::Opened.encode())
                .await
                .is_err()
            {
                return;
            }
            let io = StreamIo::new(send, recv, peer);
            let owner = Ingest::only(plane.ingest.clone(), &stream, producer_id);
            let handle = serve::serve(io, plane.receiver.clone(), owner);
            let mut drivers = plane.drivers.lock().unwrap();
            drivers.retain(|d| !d.is_finished());
            drivers.push(handle);
        }
        Purpose::Lease => lease(send, recv, conn, &stream, producer_id, plane).await,
    }
}

/// Grants a raw-UDP lease and keeps it while the stream lives and the
/// client renews it.
async fn lease(
    mut send: SendStream,
    mut recv: FramedRecv,
    conn: &Connection,
    stream: &str,
    producer_id: u64,
    plane: &Plane,
) {
    let Some(leases) = &plane.leases else {
        let reason = "the daemon's data port is insecure_lan: publish to it directly";
        refuse(&mut send, RefuseCode::Unavailable, reason).await;
        return;
    };
    let id: u64 = rand::random::<u64>() | 1;
    let mut material = [0u8; EXPORTER_LEN];
    if conn
        .export_keying_material(&mut material, EXPORTER_LABEL, &exporter_context(id))
        .is_err()
    {
        refuse(&mut send, RefuseCode::Unavailable, "no keying material").await;
        return;
    }
    leases.grant(
        id,
        &material,
        stream,
        producer_id,
        plane.lease_ttl,
        Instant::now(),
    );
    plane.stats.leases_granted.fetch_add(1, Relaxed);
    info!(peer = %conn.remote_address(), lease = id, stream, producer = producer_id, "fast-path lease granted");
    let granted = Control::Lease {
        lease_id: id,
        data_addr: plane.data_addr,
        expires_in_ms: plane.lease_ttl.as_millis() as u64,
    };
    if frame::write(&mut send, &granted.encode()).await.is_ok() {
        // Renewals until the client goes away or the lease runs out.
        while let Ok(Some(f)) = recv.next().await {
            if !matches!(Control::decode(&f), Ok(Control::Renew)) {
                break;
            }
            let reply = match leases.renew(id, plane.lease_ttl, Instant::now()) {
                Ok(()) => granted.clone(),
                Err(_) => Control::Refused {
                    code: RefuseCode::Unavailable,
                    reason: "lease expired".into(),
                },
            };
            let expired = matches!(reply, Control::Refused { .. });
            if frame::write(&mut send, &reply.encode()).await.is_err() || expired {
                break;
            }
        }
    }
    // Ended by the producer (its stream or connection closed): what it sent
    // just before still lands. Ended here (expired, the daemon closed the
    // connection): its keys go at once.
    let by_producer = !matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::LocallyClosed)
    );
    if by_producer {
        leases.end(id, LEASE_DRAIN, Instant::now());
        tokio::time::sleep(LEASE_DRAIN).await;
    }
    leases.revoke(id);
    debug!(lease = id, "fast-path lease ended");
}

/// Refuses what a stream asked for, with the reason, and ends the stream.
pub(crate) async fn refuse(send: &mut SendStream, code: RefuseCode, reason: &str) {
    let msg = Control::Refused {
        code,
        reason: reason.to_owned(),
    };
    let _ = frame::write(send, &msg.encode()).await;
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Permissions;

    fn principal(name: &str, kind: PrincipalKind) -> Principal {
        Principal {
            name: name.into(),
            kind,
            permissions: Permissions::default(),
        }
    }

    #[test]
    fn connections_are_limited_per_principal_and_in_all_and_given_back() {
        let limits = ConnectionLimits::new(5, 2);
        let a = principal("a", PrincipalKind::Token);
        let b = principal("b", PrincipalKind::Token);
        // A certificate named like a token is another principal.
        let a_cert = principal("a", PrincipalKind::ClientCert);
        let a1 = limits.admit(&a).unwrap();
        let _a2 = limits.admit(&a).unwrap();
        let (d, reason) = limits.admit(&a).unwrap_err();
        assert_eq!(d, Denied::PrincipalConnectionLimit);
        assert!(
            reason.contains("\"a\"") && reason.contains("max_connections_per_principal"),
            "{reason}"
        );
        let _b1 = limits.admit(&b).unwrap();
        let _c1 = limits.admit(&a_cert).unwrap();
        assert_eq!(limits.held(&a), (4, 2));
        // A closed connection gives its slot back.
        drop(a1);
        assert_eq!(limits.held(&a), (3, 1));
        let _a3 = limits.admit(&a).unwrap();
        let _b2 = limits.admit(&b).unwrap();
        // Five in all: the total refuses whoever comes next.
        let (d, reason) = limits
            .admit(&principal("c", PrincipalKind::Token))
            .unwrap_err();
        assert_eq!(d, Denied::ConnectionLimit);
        assert!(reason.contains("quic.max_connections"), "{reason}");
        assert_eq!(limits.held(&a).0, 5);
    }

    #[test]
    fn the_anonymous_principal_is_limited_by_the_total_only() {
        let limits = ConnectionLimits::new(10, 2);
        let anyone = principal("anonymous", PrincipalKind::Anonymous);
        let slots: Vec<Slot> = (0..10).map(|_| limits.admit(&anyone).unwrap()).collect();
        assert_eq!(
            limits.admit(&anyone).unwrap_err().0,
            Denied::ConnectionLimit
        );
        drop(slots);
        assert_eq!(limits.held(&anyone), (0, 0));
        assert!(limits.held.lock().unwrap().by_principal.is_empty());
    }
}
