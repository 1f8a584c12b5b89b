//! The admin HTTP endpoint: `GET /metrics` (Prometheus text) and
//! `GET /health`. Two read-only routes do not justify an HTTP framework;
//! this answers one request per connection and closes it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

/// What the admin endpoint serves.
pub trait AdminState: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// `Ok(detail)` if healthy, `Err(detail)` if not.
    fn health(&self) -> Result<String, String>;
}

pub async fn serve(listener: TcpListener, state: Arc<dyn AdminState>) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // Read the request head (we need only the request line).
            while n < buf.len() {
                match conn.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = match (method, path) {
                ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", state.metrics()),
                ("GET", "/health") => match state.health() {
                    Ok(d) => (
                        "200 OK",
                        "application/json",
                        format!("{{\"status\":\"ok\",\"detail\":{d:?}}}\n"),
                    ),
                    Err(d) => (
                        "503 Service Unavailable",
                        "application/json",
                        format!("{{\"status\":\"unhealthy\",\"detail\":{d:?}}}\n"),
                    ),
                },
                ("GET", _) => (
                    "404 Not Found",
                    "text/plain",
                    "routes: /metrics /health\n".into(),
                ),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(resp.as_bytes()).await.is_err() {
                debug!(%peer, "admin client went away");
            }
        });
    }
}

/// Binds the admin listener, with an error that says which address failed.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))
}
