//! The admin HTTP endpoint (HTTP/1.1, on `admin.listen`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | `200 {"status":"ok",...}`, or `503` while acks are held (disk full) or the daemon is stopping |
//! | `GET /streams` | JSON: each stream's name and durable end offset |
//! | `GET /streams/{name}/records?from=N&limit=M` | JSON: durable records from offset N (payloads in base64) |
//! | `POST /streams/{name}/groups/{group}/fetch` | JSON: up to `max` messages for the group, long-polling up to `wait_ms` |
//! | `POST /streams/{name}/groups/{group}/ack` | `{"acked":n}` once the acks are durable |
//! | `POST /streams/{name}/groups/{group}/nack` | `{"nacked":n}`: delivered again after `delay_ms` |
//! | `POST /streams/{name}/groups/{group}/extend` | `{"extended":n}`: ack deadlines moved to now + `ms` |
//! | `GET /groups` | JSON: every consumer group's backlog, members, credit and counters |
//! | `GET /streams/{name}/dlq?from=N&limit=M` | JSON: the stream's dead letters, decoded, from the purge mark on |
//! | `POST /streams/{name}/dlq/replay` | appends the dead letters' payloads to the stream again (once each) |
//! | `POST /streams/{name}/dlq/purge` | moves the purge mark to the dead-letter stream's end |
//!
//! The consumer routes (fetch to purge) are served by
//! [`crate::consume::http`]; `daemon/HTTP.md` documents them with examples.
//!
//! Metrics, health and `/groups` are open (for scrapers and load
//! balancers; keep the admin port off untrusted networks). Everything else
//! needs a principal allowed to consume the stream (replay: and to publish
//! to it): `Authorization: Bearer <token>` (unless the daemon runs
//! anonymously on loopback).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sluice_transport::serve::ServeStats;
use tokio::net::TcpListener;

use crate::auth::{Action, Principal};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::quic::QuicStats;
use crate::spool::Spool;
use sluice_transport::lease::{Leases, SealedStats};

/// Most records one `/records` request returns.
pub const MAX_RECORDS_PER_REQUEST: usize = 10_000;

/// What the admin endpoint reads.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub socket: Arc<ServeStats>,
    pub spool: Arc<Spool>,
    /// Set when a stop begins: `/health` turns unhealthy so load balancers
    /// stop sending.
    pub stopping: AtomicBool,
    pub gate: Arc<Gate>,
    pub quic: Arc<QuicStats>,
    /// The fast path's leases and drops (`None` with `insecure_lan`).
    pub leases: Option<Leases>,
    pub sealed: Option<Arc<SealedStats>>,
    /// The AF_XDP receive path, when it runs.
    pub xdp: Option<Arc<sluice_xdp::datapath::XdpStats>>,
    pub consumers: Arc<crate::consume::service::Consumers>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/streams", get(streams))
        .route("/streams/{name}/records", get(records))
        .merge(crate::consume::http::routes())
        .with_state(state)
}

/// Binds the admin listener, with an error that says which address failed.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&s),
    )
        .into_response()
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    detail: String,
}

async fn health(State(s): State<Arc<AdminState>>) -> (StatusCode, Json<Health>) {
    if s.stopping.load(Ordering::Relaxed) {
        return unhealthy("stopping".into());
    }
    let full: Vec<String> = s
        .spool
        .open_streams()
        .iter()
        .filter(|st| st.health().disk_full)
        .map(|st| st.name().to_owned())
        .collect();
    if full.is_empty() {
        let body = Health {
            status: "ok",
            detail: "accepting".into(),
        };
        (StatusCode::OK, Json(body))
    } else {
        unhealthy(format!("disk full, acks held for: {}", full.join(", ")))
    }
}

fn unhealthy(detail: String) -> (StatusCode, Json<Health>) {
    let body = Health {
        status: "unhealthy",
        detail,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub name: String,
    /// Offset after the last durable record (`null` if the stream is on
    /// disk but not opened yet).
    pub durable_end: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
}

/// The principal of an HTTP request, from its bearer token.
pub(crate) fn principal(
    s: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Principal, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    s.gate
        .principal(peer, token, None)
        .map_err(|d| Box::new(error(StatusCode::UNAUTHORIZED, d.reason().to_owned())))
}

async fn streams(
    State(s): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let who = match principal(&s, peer, &headers) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let open = s.spool.open_streams();
    let mut names = s.spool.stream_names();
    names.sort();
    let streams = names
        .into_iter()
        .filter(|n| who.may(Action::Consume, n))
        .map(|name| StreamInfo {
            durable_end: open
                .iter()
                .find(|st| st.name() == name)
                .map(|st| st.durable_end()),
            name,
        })
        .collect();
    Json(StreamList { streams }).into_response()
}

#[derive(Deserialize)]
struct RecordsQuery {
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
}

/// One record as `/records` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RecordJson {
    pub offset: u64,
    pub timestamp_us: u64,
    pub producer: u64,
    pub seq: u64,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct RecordsPage {
    pub stream: String,
    pub records: Vec<RecordJson>,
    /// Where to continue: `from` for the next request.
    pub next: u64,
    pub durable_end: u64,
}

async fn records(
    State(s): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    let who = match principal(&s, peer, &headers) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(reason) = s.gate.check(peer, &who, Action::Consume, &name) {
        return error(StatusCode::FORBIDDEN, reason);
    }
    if !s.spool.stream_names().contains(&name) {
        return error(StatusCode::NOT_FOUND, format!("no stream {name:?}"));
    }
    let stream = match s.spool.stream(&name) {
        Ok(st) => st,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let limit = q.limit.unwrap_or(1_000).clamp(1, MAX_RECORDS_PER_REQUEST);
    let from = q.from;
    // Reading touches files: off the async workers.
    let page = tokio::task::spawn_blocking(move || {
        let mut reader = stream.reader(from);
        let mut records = Vec::new();
        while records.len() < limit {
            match reader.next_record()? {
                Some((offset, r)) => records.push(RecordJson {
                    offset,
                    timestamp_us: r.timestamp_us,
                    producer: r.producer,
                    seq: r.seq,
                    payload: base64::engine::general_purpose::STANDARD.encode(&r.payload),
                }),
                None => break,
            }
        }
        Ok::<_, crate::spool::SpoolError>(RecordsPage {
            stream: stream.name().to_owned(),
            next: reader.position(),
            durable_end: stream.durable_end(),
            records,
        })
    })
    .await;
    match page {
        Ok(Ok(page)) => Json(page).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An error answer: `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
