//! Accepting the gRPC plane's connections within `grpc.max_connections`
//! (one over it is closed at once and counted), with TLS when
//! `grpc.tls` is on: each handshake in a task of its own, within
//! [`HANDSHAKE_TIMEOUT`], so that a slow one holds up no other. tonic
//! serves what comes out of the channel.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use super::{GrpcStats, HANDSHAKE_TIMEOUT};

/// Connections handed to tonic, as its `incoming`.
pub(super) type Incoming = ReceiverStream<io::Result<Conn>>;

/// Accepts on `listener` until the returned task is aborted or tonic
/// drops the incoming side.
pub(super) fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    max: usize,
    stats: Arc<GrpcStats>,
) -> (Incoming, JoinHandle<()>) {
    // Ready connections waiting for tonic: few (it takes them at once).
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(max));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, mostly: wait, then go on.
                        warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                stats.connections_refused.fetch_add(1, Relaxed);
                debug!(%peer, "gRPC connection refused: grpc.max_connections are open");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().ok();
            let (tx, tls, stats) = (tx.clone(), tls.clone(), stats.clone());
            tokio::spawn(async move {
                let io = match tls {
                    None => Io::Plain(tcp),
                    Some(tls) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(t)) => Io::Tls(Box::new(t)),
                            Ok(Err(e)) => {
                                stats.handshake_failures.fetch_add(1, Relaxed);
                                debug!(%peer, error = %e, "gRPC TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                stats.handshake_failures.fetch_add(1, Relaxed);
                                debug!(%peer, "gRPC TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                stats.connections.fetch_add(1, Relaxed);
                stats.connections_total.fetch_add(1, Relaxed);
                let conn = Conn {
                    io,
                    info: TcpConnectInfo {
                        local_addr: local,
                        remote_addr: Some(peer),
                    },
                    stats,
                    _slot: slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One connection, holding its slot of `grpc.max_connections` until it
/// closes.
pub(super) struct Conn {
    io: Io,
    info: TcpConnectInfo,
    stats: Arc<GrpcStats>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Relaxed);
    }
}

impl Connected for Conn {
    // TcpConnectInfo, TLS or not: `Request::remote_addr` reads it.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
