//! A producer's link to the daemon: what its sluice datagrams travel over.
//!
//! - raw UDP (to an `insecure_lan` data port);
//! - a QUIC stream, after authenticating on the connection's control stream;
//! - raw UDP sealed under a lease that the QUIC connection obtained, whose
//!   keys come from that TLS session, renewed over QUIC while it lasts.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ConnectionError, SendStream};
use tokio::net::UdpSocket;
use tracing::debug;

use super::options::{ProducerError, ProducerOptions, QuicOptions, Transport};
use super::tx::{self, DatagramTx};
use crate::quic::control::{Control, Purpose, RefuseCode};
use crate::quic::frame::{self, FramedRecv};
use crate::quic::{close_code, tls};
use crate::seal::{self, Opener, Sealer, Side, EXPORTER_LABEL, EXPORTER_LEN};
use crate::udp::SendBatch;
use crate::wire::MAX_DATAGRAM;

/// How long one attempt at a QUIC handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a producer needs to (re)establish its link.
#[derive(Debug, Clone)]
pub struct Connector {
    pub addr: SocketAddr,
    pub stream: String,
    pub producer_id: u64,
    pub options: ProducerOptions,
}

pub enum Link {
    Udp(UdpSocket, Option<Box<dyn DatagramTx>>),
    Quic(Box<QuicStream>),
    Sealed(Box<SealedUdp>),
}

/// The QUIC connection and its control stream, kept open while in use.
pub struct QuicSession {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) conn: Connection,
    _control: (SendStream, FramedRecv),
}

pub struct QuicStream {
    session: QuicSession,
    send: SendStream,
    recv: FramedRecv,
    out: Vec<u8>,
}

pub struct SealedUdp {
    session: QuicSession,
    lease: (SendStream, FramedRecv),
    lease_id: u64,
    ttl: Duration,
    renew_at: tokio::time::Instant,
    socket: UdpSocket,
    data_addr: SocketAddr,
    sealer: Sealer,
    opener: Opener,
    tx: Option<Box<dyn DatagramTx>>,
    sealed: SendBatch,
    scratch: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Connector {
    /// Opens the link its transport asks for.
    pub async fn link(&self) -> Result<Link, ProducerError> {
        match &self.options.transport {
            Transport::Udp => {
                let socket = udp_socket(self.addr, self.options.bind).await?;
                socket.connect(self.addr).await.map_err(io_err)?;
                let tx = self.tx(&socket, self.addr)?;
                Ok(Link::Udp(socket, tx))
            }
            Transport::Quic(q) => {
                let session = self.quic_session(q).await?;
                let (send, recv, reply) = self.open(&session, Purpose::Publish).await?;
                match reply {
                    Control::Opened => Ok(Link::Quic(Box::new(QuicStream {
                        session,
                        send,
                        recv,
                        out: Vec::new(),
                    }))),
                    other => Err(unexpected(other)),
                }
            }
            Transport::FastPath(q) => {
                let session = self.quic_session(q).await?;
                let (send, recv, reply) = self.open(&session, Purpose::Lease).await?;
                let Control::Lease {
                    lease_id,
                    data_addr,
                    expires_in_ms,
                } = reply
                else {
                    return Err(unexpected(reply));
                };
                let mut material = [0u8; EXPORTER_LEN];
                session
                    .conn
                    .export_keying_material(
                        &mut material,
                        EXPORTER_LABEL,
                        &seal::exporter_context(lease_id),
                    )
                    .map_err(|_| ProducerError::Tls("no keying material for the lease".into()))?;
                let (sealer, opener) = seal::keys(&material, lease_id, Side::Producer);
                // A daemon bound to every address names none: use the one
                // its QUIC plane answered on.
                let data_addr = if data_addr.ip().is_unspecified() {
                    SocketAddr::new(self.addr.ip(), data_addr.port())
                } else {
                    data_addr
                };
                let socket = udp_socket(data_addr, self.options.bind).await?;
                // Connected: answers from elsewhere are not even looked at,
                // and a TX ring learns the source address to use.
                socket.connect(data_addr).await.map_err(io_err)?;
                let tx = self.tx(&socket, data_addr)?;
                let ttl = Duration::from_millis(expires_in_ms);
                debug!(lease = lease_id, %data_addr, ?ttl, "fast-path lease");
                Ok(Link::Sealed(Box::new(SealedUdp {
                    session,
                    lease: (send, recv),
                    lease_id,
                    ttl,
                    renew_at: tokio::time::Instant::now() + ttl / 2,
                    socket,
                    data_addr,
                    sealer,
                    opener,
                    tx,
                    sealed: SendBatch::new(),
                    scratch: Vec::new(),
                    inbuf: vec![0u8; MAX_DATAGRAM],
                })))
            }
        }
    }

    /// The producer's TX ring, if it has one, for a socket talking to `remote`.
    fn tx(
        &self,
        socket: &UdpSocket,
        remote: SocketAddr,
    ) -> Result<Option<Box<dyn DatagramTx>>, ProducerError> {
        let Some(provider) = &self.options.tx else {
            return Ok(None);
        };
        let local = socket.local_addr().map_err(io_err)?;
        provider
            .make(local, remote)
            .map(Some)
            .map_err(|e| ProducerError::Config(format!("the producer's TX ring: {e}")))
    }

    /// Connects and authenticates.
    async fn quic_session(&self, q: &QuicOptions) -> Result<QuicSession, ProducerError> {
        // On the fast path nothing else crosses the connection: ping often,
        // so that a restarted daemon's reset is heard within a moment.
        let keep_alive = match self.options.transport {
            Transport::FastPath(_) => Duration::from_millis(250),
            _ => Duration::from_secs(2),
        };
        quic_session(self.addr, q, keep_alive, self.options.bind).await
    }

    /// Opens a stream for `purpose` and returns the daemon's first answer.
    async fn open(
        &self,
        session: &QuicSession,
        purpose: Purpose,
    ) -> Result<(SendStream, FramedRecv, Control), ProducerError> {
        let conn = &session.conn;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| connection_error(self.addr, e))?;
        let mut recv = FramedRecv::new(recv);
        let open = Control::Open {
            purpose,
            stream: self.stream.clone(),
            producer_id: self.producer_id,
        };
        frame::write(&mut send, &open.encode())
            .await
            .map_err(|e| stream_error(self.addr, conn, e))?;
        let reply = match recv.next().await {
            Ok(Some(f)) => Control::decode(&f).map_err(|e| ProducerError::Io(e.to_string()))?,
            Ok(None) => return Err(closed(self.addr, conn)),
            Err(e) => return Err(stream_error(self.addr, conn, e)),
        };
        match reply {
            Control::Refused { code, reason } => Err(refused(code, reason)),
            reply => Ok((send, recv, reply)),
        }
    }
}

/// Connects to the QUIC plane at `addr` and authenticates, pinging every
/// `keep_alive`: what producers and consumers share.
pub(crate) async fn quic_session(
    addr: SocketAddr,
    q: &QuicOptions,
    keep_alive: Duration,
    bind: Option<SocketAddr>,
) -> Result<QuicSession, ProducerError> {
    let config =
        tls::client_config(&q.tls, keep_alive).map_err(|e| ProducerError::Config(e.to_string()))?;
    let endpoint =
        quinn::Endpoint::client(bind.unwrap_or_else(|| any_port(addr))).map_err(io_err)?;
    let name = tls::server_name(&q.tls, addr);
    let connecting = endpoint
        .connect_with(config, addr, &name)
        .map_err(|e| ProducerError::Config(e.to_string()))?;
    // A daemon that is down answers nothing: give up on this attempt
    // well before QUIC's idle timeout; the caller retries.
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| ProducerError::Unreachable {
            addr,
            reason: format!("no QUIC handshake within {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(|e| connection_error(addr, e))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| connection_error(addr, e))?;
    let mut recv = FramedRecv::new(recv);
    let auth = Control::Auth {
        token: q.token.clone().unwrap_or_default(),
    };
    frame::write(&mut send, &auth.encode())
        .await
        .map_err(|e| stream_error(addr, &conn, e))?;
    match recv.next().await {
        Ok(Some(f)) => match Control::decode(&f) {
            Ok(Control::AuthOk { principal }) => {
                debug!(%principal, %addr, "authenticated");
            }
            Ok(other) => return Err(unexpected(other)),
            Err(e) => return Err(ProducerError::Io(e.to_string())),
        },
        Ok(None) => return Err(closed(addr, &conn)),
        Err(e) => return Err(stream_error(addr, &conn, e)),
    }
    Ok(QuicSession {
        endpoint,
        conn,
        _control: (send, recv),
    })
}

/// What a failed connection to `addr` means to the caller.
pub(crate) fn connection_error(addr: SocketAddr, e: ConnectionError) -> ProducerError {
    let unreachable = |reason: String| ProducerError::Unreachable { addr, reason };
    match e {
        // Our own verification of the daemon failed.
        ConnectionError::TransportError(t) if is_crypto(t.code.into()) => ProducerError::Tls(
            format!("the daemon's certificate is not trusted: {}", t.reason),
        ),
        // The daemon's TLS refused us (our client certificate).
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code.into()) => {
            ProducerError::Tls(format!(
                "the daemon refused the TLS handshake ({}): check the client certificate",
                alert_name(u64::from(c.error_code) as u8)
            ))
        }
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            match u32::try_from(u64::from(c.error_code)) {
                Ok(close_code::AUTH_FAILED) => ProducerError::AuthFailed(reason),
                Ok(close_code::CONNECTION_LIMIT) => ProducerError::ConnectionLimit(reason),
                Ok(close_code::SHUTTING_DOWN) => {
                    unreachable(format!("the daemon is stopping: {reason}"))
                }
                _ => unreachable(format!("the daemon closed the connection: {reason}")),
            }
        }
        ConnectionError::TimedOut => unreachable("no answer over QUIC".into()),
        other => unreachable(other.to_string()),
    }
}

/// A stream failed: the connection's reason if it closed, else the I/O.
pub(crate) fn stream_error(addr: SocketAddr, conn: &Connection, e: io::Error) -> ProducerError {
    match conn.close_reason() {
        Some(reason) => connection_error(addr, reason),
        None => ProducerError::Io(e.to_string()),
    }
}

fn closed(addr: SocketAddr, conn: &Connection) -> ProducerError {
    stream_error(addr, conn, io::Error::other("the daemon ended the stream"))
}

fn refused(code: RefuseCode, reason: String) -> ProducerError {
    match code {
        RefuseCode::Forbidden => ProducerError::Forbidden(reason),
        RefuseCode::NoSuchStream => ProducerError::Rejected(reason),
        RefuseCode::Unavailable if reason.contains("lease expired") => {
            ProducerError::LeaseExpired(reason)
        }
        _ => ProducerError::Rejected(reason),
    }
}

fn unexpected(c: Control) -> ProducerError {
    ProducerError::Io(format!("unexpected answer from the daemon: {c:?}"))
}

fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// The TLS alerts a client sees when the daemon refuses its certificate.
fn alert_name(alert: u8) -> String {
    match alert {
        42 => "bad certificate".into(),
        45 => "certificate expired".into(),
        46 => "certificate unknown".into(),
        48 => "unknown CA".into(),
        116 => "certificate required".into(),
        other => format!("alert {other}"),
    }
}

fn any_port(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    }
}

async fn udp_socket(
    peer: SocketAddr,
    bind: Option<SocketAddr>,
) -> Result<UdpSocket, ProducerError> {
    UdpSocket::bind(bind.unwrap_or_else(|| any_port(peer)))
        .await
        .map_err(io_err)
}

fn io_err(e: io::Error) -> ProducerError {
    ProducerError::Io(e.to_string())
}

/// How long a clean close waits for its QUIC close to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why a link stopped working: the caller reconnects, or gives up on a
/// permanent error.
pub type LinkLost = ProducerError;

impl Link {
    /// Ends the link after a clean close: its QUIC connection is closed as
    /// done, and this returns once that reached the daemon (or after
    /// `CLOSE_WAIT`), so that the daemon ends its lease and the connection
    /// at once, not at QUIC's idle timeout after a process that exits.
    pub async fn close(self) {
        let session = match self {
            Link::Udp(..) => return,
            Link::Quic(q) => q.session,
            Link::Sealed(s) => s.session,
        };
        session.conn.close(close_code::DONE.into(), b"done");
        let _ = tokio::time::timeout(CLOSE_WAIT, session.endpoint.wait_idle()).await;
    }

    /// Sends every datagram of `batch` (all to the daemon) and empties it.
    pub async fn send(&mut self, batch: &mut SendBatch) -> Result<(), LinkLost> {
        match self {
            Link::Udp(socket, tx) => {
                // A send error (e.g. ICMP port unreachable surfacing) is not
                // fatal: the protocol's timers retry, and give up in time.
                if let Err(e) = tx::send(socket, tx.as_mut(), batch).await {
                    debug!(error = %e, "send to sluiced failed");
                }
                Ok(())
            }
            Link::Quic(q) => {
                q.out.clear();
                for (_, d) in batch.iter() {
                    frame::put(&mut q.out, d);
                }
                batch.clear();
                q.send
                    .write_all(&q.out)
                    .await
                    .map_err(|e| lost(&q.session, e.to_string()))
            }
            Link::Sealed(s) => {
                for (_, d) in batch.iter() {
                    s.scratch.clear();
                    s.sealer
                        .seal(d, &mut s.scratch)
                        .map_err(|e| ProducerError::LeaseExpired(e.to_string()))?;
                    s.sealed.push(s.data_addr, &s.scratch);
                }
                batch.clear();
                if let Err(e) = tx::send(&s.socket, s.tx.as_mut(), &mut s.sealed).await {
                    debug!(error = %e, "send to sluiced failed");
                }
                Ok(())
            }
        }
    }

    /// The next datagram from the daemon.
    pub async fn recv(&mut self) -> Result<Bytes, LinkLost> {
        match self {
            Link::Udp(socket, _) => {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match socket.recv(&mut buf).await {
                        Ok(n) => return Ok(Bytes::copy_from_slice(&buf[..n])),
                        Err(e) => debug!(error = %e, "receive from sluiced failed"),
                    }
                }
            }
            Link::Quic(q) => match q.recv.next().await {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(lost(&q.session, "the daemon ended the stream".into())),
                Err(e) => Err(lost(&q.session, e.to_string())),
            },
            Link::Sealed(s) => s.recv().await,
        }
    }

    /// The largest sluice datagram this link carries for a sender whose
    /// configured maximum is `configured`.
    pub fn max_datagram(&self, configured: usize) -> usize {
        match self {
            Link::Udp(..) => configured,
            // No MTU inside a stream: big frames cost less per message.
            Link::Quic(_) => configured.max(32 << 10),
            Link::Sealed(_) => configured - seal::OVERHEAD,
        }
    }
}

impl SealedUdp {
    async fn recv(&mut self) -> Result<Bytes, LinkLost> {
        loop {
            tokio::select! {
                r = self.socket.recv_from(&mut self.inbuf) => {
                    let (n, from) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            debug!(error = %e, "receive from sluiced failed");
                            continue;
                        }
                    };
                    if from != self.data_addr {
                        continue;
                    }
                    let mut buf = BytesMut::from(&self.inbuf[..n]);
                    // Anything that does not open is someone else's (or
                    // damaged): dropped, as the daemon does.
                    if let Ok(inner) = self.opener.open(&mut buf) {
                        let len = inner.len();
                        return Ok(buf.freeze().slice(seal::HEADER_LEN..seal::HEADER_LEN + len));
                    }
                }
                _ = tokio::time::sleep_until(self.renew_at) => {
                    frame::write(&mut self.lease.0, &Control::Renew.encode())
                        .await
                        .map_err(|e| lost(&self.session, e.to_string()))?;
                    // Until the answer comes, do not ask again.
                    self.renew_at = tokio::time::Instant::now() + self.ttl;
                }
                f = self.lease.1.next() => match f {
                    Ok(Some(f)) => match Control::decode(&f) {
                        Ok(Control::Lease { lease_id, expires_in_ms, .. }) if lease_id == self.lease_id => {
                            self.ttl = Duration::from_millis(expires_in_ms);
                            self.renew_at = tokio::time::Instant::now() + self.ttl / 2;
                        }
                        Ok(Control::Refused { code, reason }) => return Err(refused(code, reason)),
                        _ => return Err(lost(&self.session, "unexpected lease message".into())),
                    },
                    Ok(None) => return Err(lost(&self.session, "the daemon ended the lease".into())),
                    Err(e) => return Err(lost(&self.session, e.to_string())),
                },
            }
        }
    }
}

/// The link failed: the connection's own reason when it closed.
fn lost(session: &QuicSession, what: String) -> LinkLost {
    match session.conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(c))
            if u64::from(c.error_code) == u64::from(close_code::AUTH_FAILED) =>
        {
            ProducerError::AuthFailed(String::from_utf8_lossy(&c.reason).into_owned())
        }
        Some(reason) => ProducerError::Io(format!("QUIC connection lost: {reason}")),
        None => ProducerError::Io(what),
    }
}
