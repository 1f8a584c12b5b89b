//! HTTP/1.1 to the daemon's admin port, for the HTTP publisher
//! ([`crate::publisher`]) and the event stream's consumer
//! ([`crate::consume::push`]): hyper's own client connections.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::http::request::Builder;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connection's sending half: one request at a time, kept alive.
pub type Connection = SendRequest<Full<Bytes>>;

/// A TCP connection to `addr` without Nagle: one small request at a time
/// (a batch, an ack) would wait for the previous answer's ack.
pub async fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// An HTTP/1.1 connection to `addr`, read and written by a task of its own
/// on the current runtime.
pub async fn connect(addr: SocketAddr) -> io::Result<Connection> {
    let io = TokioIo::new(tcp(addr).await?);
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

/// A request to `path` at `addr`, with the bearer `token` if there is one.
pub fn request(
    method: hyper::Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Builder {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    match token {
        Some(t) => req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}")),
        None => req,
    }
}
