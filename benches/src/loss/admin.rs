//! The one admin request the scenario needs beyond /metrics: how many
//! records a stream holds (`GET /streams`: each stream's durable end, which
//! for a stream made fresh for the row is its record count). A daemon off
//! loopback wants a token allowed to consume the stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Deserialize;

#[derive(Deserialize)]
struct StreamList {
    streams: Vec<StreamInfo>,
}

#[derive(Deserialize)]
struct StreamInfo {
    name: String,
    durable_end: Option<u64>,
}

/// Records in `stream` (its durable end offset).
pub(super) fn stored(admin: SocketAddr, token: Option<&str>, stream: &str) -> Result<u64, String> {
    let body = get(admin, "/streams", token)?;
    let list: StreamList =
        serde_json::from_str(&body).map_err(|e| format!("GET /streams: {e}: {body}"))?;
    list.streams
        .into_iter()
        .find(|s| s.name == stream)
        .and_then(|s| s.durable_end)
        .ok_or_else(|| format!("GET /streams does not list {stream} as open"))
}

/// GET `path` (HTTP/1.0, no keep-alive), with a bearer token if given.
fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> Result<String, String> {
    let err = |e: std::io::Error| format!("GET {path} from {admin}: {e}");
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(err)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no HTTP header"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("GET {path}: {status}: {body}"));
    }
    Ok(body.to_owned())
}
