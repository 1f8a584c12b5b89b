//! The HTTP plane: the admin endpoint and the consumer API (HTTP/1.1, on
//! `admin.listen`), above the domain (spool, consumer groups, auth) and
//! beside the QUIC plane:
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | `200 {"status":"ok",...}`; `200 {"status":"degraded",...}` while damage found in the spool is unrepaired or a consumer group stopped at it; `503` while acks are held (disk full) or the daemon is stopping. Lists damage found and offsets given up by repairs |
//! | `GET /streams` | JSON: each stream's name, first and durable end offsets, damage found, recoveries (torn tails cut, repairs, offsets given up), scrub progress |
//! | `GET /streams/{name}` | JSON: one stream in full: offsets, records, bytes on disk, segments, producers (highest seq, connected), groups, retention and fsync policy |
//! | `PUT /streams/{name}` | creates the stream, empty, now (also with `streams.auto_create` off); `201`, `409` if it exists (admin principals only) |
//! | `DELETE /streams/{name}?force=true` | deletes the stream, its dead-letter stream, its groups' state and files; `409` naming what uses it (producer sessions, groups with members or a backlog, forwards) unless forced (admin principals only) |
//! | `POST /streams/{name}/purge?force=true` | removes every record: the first offset moves to the end, offsets are never reused, the idempotence table stays; `409` while in use unless forced (admin principals only) |
//! | `POST /spool/verify?stream=S` | JSON: every durable record, checkpoint, cursor and group state checked now, at full speed (admin principals only) |
//! | `GET /streams/{name}/records?from=N&limit=M` | JSON: durable records from offset N (payloads in base64), at most `admin.page_bytes` of payload (one record always) |
//! | `POST /streams/{name}/messages` | publish: the body is the message (or a batch); `200` once durable, with offset, producer, seq, duplicate. Idempotence by `Sluice-Producer-Id` + `Sluice-Seq` or `Idempotency-Key` ([`publish`]) |
//! | `POST /streams/{name}/groups/{group}/fetch` | JSON: up to `max` messages for the group, long-polling up to `wait_ms` |
//! | `POST /streams/{name}/groups/{group}/ack` | `{"acked":n}` once the acks are durable |
//! | `POST /streams/{name}/groups/{group}/nack` | `{"nacked":n}`: delivered again after `delay_ms` |
//! | `POST /streams/{name}/groups/{group}/extend` | `{"extended":n}`: ack deadlines moved to now + `ms` |
//! | `GET /streams/{name}/groups/{group}/ws` | WebSocket push consumer: deliveries out, acks, nacks, extensions and credit in |
//! | `GET /streams/{name}/groups/{group}/events` | server-sent events: one per delivery (`id` = offset), at most `max_outstanding` unacked; acks over `.../ack` |
//! | `GET /groups` | JSON: every consumer group's backlog, members, credit and counters |
//! | `GET /sessions` | JSON: every producer session open now: stream, producer, peer, rate, NACKs, repairs, credit, RTT |
//! | `POST /streams/{name}/groups/{group}/reset` | moves the group (admin principals only) |
//! | `DELETE /streams/{name}/groups/{group}` | forgets the group (admin principals only) |
//! | `GET /streams/{name}/dlq?from=N&limit=M` | JSON: the stream's dead letters, decoded, from the purge mark on |
//! | `POST /streams/{name}/dlq/replay` | appends the dead letters' payloads to the stream again (once each) |
//! | `POST /streams/{name}/dlq/purge` | moves the purge mark to the dead-letter stream's end |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of these routes, generated from the code ([`openapi`]) |
//!
//! The consumer routes (fetch to purge) are served by
//! [`consume`], the push routes (ws, events) by [`push`], publishing by
//! [`publish`], a stream's creation, deletion and purge by [`lifecycle`]; `daemon/HTTP.md` documents them with examples. [`api`]
//! lists every route, and makes the router and the OpenAPI document from
//! that one list.
//!
//! Metrics, health, `/groups`, `/sessions` and `/openapi.json` are open (for scrapers
//! and load balancers; keep the admin port off untrusted networks).
//! Everything else needs a principal allowed to consume the stream
//! (replay: and to publish to it): `Authorization: Bearer <token>` (unless
//! the daemon runs anonymously on loopback).
//!
//! [`serve`] serves the router: the limits on connections,
//! the timeouts, and the turns pages take.

mod caller;
pub mod consume;
pub mod error;
pub mod lifecycle;
pub mod openapi;
pub mod publish;
pub mod push;
pub mod serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Action;
use crate::gate::Gate;
use crate::metrics::Registry;
use crate::spool::recoveries::Recovery;
use crate::spool::writer::ScrubStats;
use crate::spool::{Damage, Spool, SpoolError, Stream};
use caller::{Caller, Consume, OnStream};
use error::{Answer, ApiError};
use serve::{page_answer, Http};

/// Most records one `/records` request returns.
pub const MAX_RECORDS_PER_REQUEST: usize = 10_000;

/// What the admin endpoint reads.
pub struct AdminState {
    /// What `/metrics` shows: every subsystem's families.
    pub metrics: Registry,
    pub spool: Arc<Spool>,
    /// Set when a stop begins: `/health` turns unhealthy so load balancers
    /// stop sending.
    pub stopping: AtomicBool,
    pub gate: Arc<Gate>,
    pub consumers: Arc<crate::consume::service::Consumers>,
    /// The admin port's limits: connections, and the turns and size of
    /// pages.
    pub http: Arc<Http>,
    /// Where HTTP publishes go: the same ingest as the fast path's.
    pub publisher: Arc<crate::publish::Publisher>,
    /// The producer sessions open now.
    pub sessions: Arc<crate::sessions::Sessions>,
}

/// The admin port's router: every route of [`api`].
pub fn router(state: Arc<AdminState>) -> Router {
    api().split_for_parts().0.with_state(state)
}

/// Every route of the API listener, each with its OpenAPI documentation:
/// the router ([`router`]) and `/openapi.json` ([`openapi::document`]) are
/// both made from this list, so a route is served and documented, or
/// neither.
///
/// **To add a route:** annotate its handler with `#[utoipa::path(...)]`
/// (method, path, `tag`, `params`, `request_body`, `responses` with the
/// error components of [`openapi`] it really gives, and `security(("bearer"
/// = []))` if it needs a token; see `records` or `consume::fetch`), derive
/// `utoipa::ToSchema` on its body types, and add one line here:
/// `.routes(routes!(module::handler))`. A WebSocket route documents its
/// upgrade (`(status = 101, description = "...")`), an SSE route its
/// stream (`content_type = "text/event-stream"`). Do not add routes with
/// `.route(..)` or `.merge(..)` of a plain axum router: they would be
/// served without documentation, and `openapi::tests` fails on any route
/// the router serves that the document does not list.
pub fn api() -> OpenApiRouter<Arc<AdminState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(metrics))
        .routes(routes!(health))
        .routes(routes!(streams))
        .routes(routes!(
            stream_info,
            lifecycle::create_stream,
            lifecycle::delete_stream
        ))
        .routes(routes!(lifecycle::purge_stream))
        .routes(routes!(records))
        .routes(routes!(verify))
        .routes(routes!(publish::publish))
        .routes(routes!(consume::fetch))
        .routes(routes!(consume::ack))
        .routes(routes!(consume::nack))
        .routes(routes!(consume::extend))
        .routes(routes!(consume::reset_group))
        .routes(routes!(consume::delete_group))
        .routes(routes!(push::ws))
        .routes(routes!(push::events))
        .routes(routes!(consume::groups))
        .routes(routes!(sessions))
        .routes(routes!(consume::dlq_list))
        .routes(routes!(consume::dlq_replay))
        .routes(routes!(consume::dlq_purge))
        .routes(routes!(openapi::openapi))
}

/// A query string, refused with the API's JSON error (axum's own
/// rejection answers in plain text).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<ApiQuery<T>, ApiError> {
        Query::<T>::from_request_parts(parts, s)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// Connections the kernel holds for the admin listener until they are
/// accepted. The accept loop takes them at once (and closes those over a
/// limit); a short queue would drop the SYNs of a burst (a flood, and
/// whatever comes with it: health checks) for a second each.
const ACCEPT_QUEUE: u32 = 4096;

/// Binds the admin listener, with an error that says which address failed.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(ACCEPT_QUEUE)
    };
    listen().map_err(|e| std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}")))
}

/// Every producer session open now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<crate::sessions::SessionView>,
}

/// The producer sessions open now, by stream then producer (open, as
/// `/metrics` is): what `sluice stat --sessions` shows.
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "operations",
    responses(
        (status = 200, description = "Each open session's stream, producer, peer, rate, NACKs, repairs, credit and RTT", body = SessionList),
    )
)]
async fn sessions(State(s): State<Arc<AdminState>>) -> Json<SessionList> {
    Json(SessionList {
        sessions: s.sessions.list(),
    })
}

/// The daemon's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Prometheus text format (see the README, \"Watching it\")",
        content_type = "text/plain; version=0.0.4",
        body = String
    ))
)]
async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (serving, but damage was found in the spool, or a
    /// consumer group stopped at it) or `unhealthy` (503).
    pub status: String,
    pub detail: String,
    /// Damage found while running (readers, consumer groups, the scrub).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<Damage>,
    /// Offsets given up by repairs (and losses to fsync = interval), by
    /// stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostOffsets>,
}

/// Offsets a stream gave up.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct LostOffsets {
    pub stream: String,
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

/// Whether the daemon accepts, for load balancers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "`ok`; or `degraded` while damage found in the spool is unrepaired or a consumer group stopped at it", body = Health),
        (status = 503, description = "`unhealthy`: acks are held (disk full) or the daemon is stopping", body = Health),
    )
)]
async fn health(State(s): State<Arc<AdminState>>) -> (StatusCode, Json<Health>) {
    let streams = s.spool.open_streams();
    let damage: Vec<Damage> = streams.iter().flat_map(|st| st.damage()).collect();
    let lost: Vec<LostOffsets> = streams
        .iter()
        .flat_map(|st| {
            st.recoveries()
                .into_iter()
                .filter(|r| r.lost() > 0)
                .map(|r| LostOffsets {
                    stream: st.name().to_owned(),
                    from: r.from,
                    to: r.to,
                    reason: r.reason,
                })
        })
        .collect();
    let stopped: Vec<String> = s
        .consumers
        .stats()
        .into_iter()
        .filter(|g| g.stopped_at_damage.is_some())
        .map(|g| format!("{}/{}", g.stream, g.group))
        .collect();
    let full: Vec<&str> = streams
        .iter()
        .filter(|st| st.health().disk_full)
        .map(|st| st.name())
        .collect();
    let lost_note = if lost.is_empty() {
        String::new()
    } else {
        format!(
            "; {} offset(s) given up by repairs (see `lost`)",
            lost.iter().map(|l| l.to - l.from).sum::<u64>()
        )
    };
    let (code, status, detail) = if s.stopping.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            "stopping".to_owned(),
        )
    } else if !full.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            format!("disk full, acks held for: {}", full.join(", ")),
        )
    } else if !damage.is_empty() || !stopped.is_empty() {
        let mut d = format!(
            "accepting; damage found in the spool ({} finding(s): see `damage`; \
             `sluice spool verify`, then restart with --repair)",
            damage.len()
        );
        if !stopped.is_empty() {
            d.push_str(&format!(
                "; consumer groups stopped at it: {}",
                stopped.join(", ")
            ));
        }
        (StatusCode::OK, "degraded", d)
    } else {
        (StatusCode::OK, "ok", "accepting".to_owned())
    };
    let body = Health {
        status: status.into(),
        detail: format!("{detail}{lost_note}"),
        damage,
        lost,
    };
    (code, Json(body))
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct StreamInfo {
    pub name: String,
    /// Offset after the last durable record (`null` if the stream is on
    /// disk but not opened yet).
    pub durable_end: Option<u64>,
    /// Offset of the oldest record kept.
    #[serde(default)]
    pub first_offset: Option<u64>,
    /// Offsets given up by repairs, in all.
    #[serde(default)]
    pub lost_offsets: u64,
    /// What recovery and repair did: torn tails cut (their bytes set
    /// aside), repairs, offsets given up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recoveries: Vec<Recovery>,
    /// Damage found while running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<Damage>,
    #[serde(default)]
    pub scrub: Option<ScrubStats>,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
}

/// The streams the caller may consume.
#[utoipa::path(
    get,
    path = "/streams",
    tag = "streams",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each stream's offsets, damage, recoveries and scrub progress", body = StreamList),
        (status = 401, response = openapi::Unauthorized),
    )
)]
async fn streams(caller: Caller, State(s): State<Arc<AdminState>>) -> Response {
    let who = caller.principal;
    let open = s.spool.open_streams();
    let mut names = s.spool.stream_names();
    names.sort();
    let streams = names
        .into_iter()
        .filter(|n| who.may(Action::Consume, n))
        .map(|name| {
            let st = open.iter().find(|st| st.name() == name);
            StreamInfo {
                durable_end: st.map(|st| st.durable_end()),
                first_offset: st.map(|st| st.first_offset()),
                lost_offsets: st.map_or(0, |st| st.lost_offsets()),
                recoveries: st.map(|st| st.recoveries()).unwrap_or_default(),
                damage: st.map(|st| st.damage()).unwrap_or_default(),
                scrub: st.map(|st| st.scrub_stats()),
                name,
            }
        })
        .collect();
    Json(StreamList { streams }).into_response()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RecordsQuery {
    /// The first offset wanted (default 0).
    #[serde(default)]
    from: u64,
    /// Most records (default 1,000; more than 10,000 is cut to 10,000).
    limit: Option<usize>,
}

/// The path of a stream route.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct StreamPath {
    /// The stream's name.
    #[param(example = "orders")]
    #[allow(dead_code)] // read by OnStream, from the raw path
    stream: String,
}

/// One record as `/records` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct RecordJson {
    pub offset: u64,
    pub timestamp_us: u64,
    pub producer: u64,
    pub seq: u64,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct RecordsPage {
    pub stream: String,
    pub records: Vec<RecordJson>,
    /// Where to continue: `from` for the next request.
    pub next: u64,
    pub durable_end: u64,
}

/// Durable records of a stream, a page at a time.
#[utoipa::path(
    get,
    path = "/streams/{stream}/records",
    tag = "streams",
    params(StreamPath, RecordsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Records from `from` on, at most `limit` and about `admin.page_bytes` of payload (one record always); `next` is where to go on", body = RecordsPage),
        openapi::StreamRefusals,
        (status = 503, response = openapi::Unavailable),
    )
)]
async fn records(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<RecordsQuery>,
) -> Answer {
    let stream = existing_stream(&s, &on.stream)?;
    let limit = q.limit.unwrap_or(1_000).clamp(1, MAX_RECORDS_PER_REQUEST);
    let from = q.from;
    let permit = s.http.page_permit().await?;
    let cap = s.http.page_bytes();
    // Reading touches files: off the async workers.
    let json = tokio::task::spawn_blocking(move || records_page(&stream, from, limit, cap))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(page_answer(json, Some(permit)))
}

/// A producer the stream has stored messages of.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct ProducerMark {
    pub producer: u64,
    /// Its highest seq stored (what a resending producer is held to).
    pub highest_seq: u64,
    /// Whether it has a session open now (`/sessions` has its figures).
    pub connected: bool,
}

/// One stream in full: `sluice stream info`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct StreamDetail {
    pub name: String,
    /// Offset of the oldest record retention kept, and after the last
    /// durable one: `records` = their difference.
    pub first_offset: u64,
    pub durable_end: u64,
    pub records: u64,
    /// Bytes of its records (headers included), and what its files take
    /// on disk (segments, preallocated ones whole; indexes; its groups'
    /// state).
    pub bytes: u64,
    pub bytes_on_disk: u64,
    pub segments: usize,
    /// When the newest record was stored, Unix microseconds (0: none).
    pub last_append_us: u64,
    /// Producers the idempotence table knows, by id (at most
    /// [`MAX_PRODUCERS_LISTED`]; `producer_count` has them all).
    pub producers: Vec<ProducerMark>,
    pub producer_count: usize,
    /// Its consumer groups (as `/groups` shows them).
    pub groups: Vec<crate::consume::service::GroupStats>,
    /// `always`, `interval <duration>` or `never`.
    pub fsync: String,
    /// Retention: bytes and age kept at most (null: no limit).
    pub retention_bytes: Option<u64>,
    pub retention_age_seconds: Option<f64>,
    pub segment_bytes: u64,
    pub damage: Vec<Damage>,
}

/// Most producers [`StreamDetail`] lists.
pub const MAX_PRODUCERS_LISTED: usize = 1_000;

/// A stream in full: offsets, records, bytes on disk, segments, producers,
/// groups, retention and fsync policy.
#[utoipa::path(
    get,
    path = "/streams/{stream}",
    tag = "streams",
    params(StreamPath),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stream's offsets, size, segments, producers, groups, retention and fsync policy", body = StreamDetail),
        openapi::StreamRefusals,
    )
)]
async fn stream_info(on: OnStream<Consume>, State(s): State<Arc<AdminState>>) -> Answer {
    let stream = existing_stream(&s, &on.stream)?;
    let segments = stream.segments();
    let connected: std::collections::HashSet<u64> = s
        .sessions
        .list()
        .into_iter()
        .filter(|v| v.stream == on.stream)
        .map(|v| v.producer)
        .collect();
    let all = stream.producers();
    let config = s.spool.config();
    let fsync = match config.fsync {
        crate::spool::FsyncPolicy::Always => "always".to_owned(),
        crate::spool::FsyncPolicy::Interval(d) => {
            format!("interval {}", humantime::format_duration(d))
        }
        crate::spool::FsyncPolicy::Never => "never".to_owned(),
    };
    let (first, end) = (stream.first_offset(), stream.durable_end());
    let detail = StreamDetail {
        name: on.stream.clone(),
        first_offset: first,
        durable_end: end,
        records: end.saturating_sub(first),
        bytes: stream.total_bytes(),
        // As sluice_spool_disk_bytes: preallocated segments whole,
        // indexes, its groups' state (the durable data if the file system
        // cannot say).
        bytes_on_disk: stream
            .fs()
            .disk_usage(stream.dir())
            .ok()
            .flatten()
            .unwrap_or_else(|| segments.iter().map(|m| m.len).sum()),
        segments: segments.len(),
        last_append_us: segments
            .iter()
            .map(|m| m.last_timestamp_us)
            .max()
            .unwrap_or(0),
        producer_count: all.len(),
        producers: all
            .into_iter()
            .take(MAX_PRODUCERS_LISTED)
            .map(|(producer, highest_seq)| ProducerMark {
                producer,
                highest_seq,
                connected: connected.contains(&producer),
            })
            .collect(),
        groups: s
            .consumers
            .stats()
            .into_iter()
            .filter(|g| g.stream == on.stream)
            .collect(),
        fsync,
        retention_bytes: config.retention_bytes,
        retention_age_seconds: config.retention_age.map(|d| d.as_secs_f64()),
        segment_bytes: config.log.segment_bytes,
        damage: stream.damage(),
    };
    Ok(Json(detail).into_response())
}

/// Stream `name`, if it exists (404 if not, or while it is being deleted).
pub(crate) fn existing_stream(s: &AdminState, name: &str) -> Result<Stream, ApiError> {
    stream_exists(s, name)?;
    s.spool.stream(name).map_err(ApiError::spool)
}

/// 404 unless stream `name` exists on disk (without opening it).
pub(crate) fn stream_exists(s: &AdminState, name: &str) -> Result<(), ApiError> {
    if s.spool.stream_names().iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no stream {name:?}")))
    }
}

/// A [`RecordsPage`] of `stream` from `from`, as JSON: at most `limit`
/// records, and the page stops before the record that would take its
/// payloads past `cap` bytes, unless that is the first (one record of the
/// largest size always fits); `next` is where to go on. Each record is
/// written out as it is read: the page's memory is its JSON and one
/// record.
fn records_page(stream: &Stream, from: u64, limit: usize, cap: u64) -> Result<Vec<u8>, SpoolError> {
    let mut reader = stream.reader(from);
    let mut out = b"{\"stream\":".to_vec();
    json_into(&mut out, stream.name());
    out.extend_from_slice(b",\"records\":[");
    let (mut n, mut bytes, mut stopped_at) = (0, 0u64, None);
    while n < limit {
        let Some((offset, r)) = reader.next_record()? else {
            break;
        };
        let len = r.payload.len() as u64;
        if n > 0 && bytes + len > cap {
            stopped_at = Some(offset);
            break;
        }
        bytes += len;
        if n > 0 {
            out.push(b',');
        }
        json_into(
            &mut out,
            &RecordJson {
                offset,
                timestamp_us: r.timestamp_us,
                producer: r.producer,
                seq: r.seq,
                payload: base64::engine::general_purpose::STANDARD.encode(&r.payload),
            },
        );
        n += 1;
    }
    let next = stopped_at.unwrap_or_else(|| reader.position());
    out.extend_from_slice(
        format!(
            "],\"next\":{next},\"durable_end\":{}}}",
            stream.durable_end()
        )
        .as_bytes(),
    );
    Ok(out)
}

/// Appends `v` as JSON to `out`.
pub(crate) fn json_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(out, v).expect("plain data serializes to JSON");
}

#[cfg(test)]
mod tests {
    use super::caller::bearer_token;
    use super::{records_page, RecordsPage};
    use crate::spool::{Spool, SpoolConfig};

    #[test]
    fn a_page_stops_before_the_record_that_would_pass_the_cap_unless_it_is_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            min_free_bytes: 0,
            ..SpoolConfig::default()
        };
        let spool = Spool::open(dir.path(), config).unwrap();
        let stream = spool.stream("s").unwrap();
        for (seq, len) in [5usize, 5, 20, 5, 1].into_iter().enumerate() {
            let payload = bytes::Bytes::from(vec![b'x'; len]);
            stream
                .append(1, seq as u64 + 1, payload)
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        let page = |from, limit| {
            let json = records_page(&stream, from, limit, 12).unwrap();
            let p: RecordsPage = serde_json::from_slice(&json).unwrap();
            assert_eq!((p.stream.as_str(), p.durable_end), ("s", 5));
            let offsets: Vec<u64> = p.records.iter().map(|r| r.offset).collect();
            (offsets, p.next)
        };
        assert_eq!(
            page(0, 100),
            (vec![0, 1], 2),
            "5 + 5 fit 12; 20 more do not"
        );
        assert_eq!(
            page(2, 100),
            (vec![2], 3),
            "a record larger than a page comes alone"
        );
        assert_eq!(page(3, 100), (vec![3, 4], 5));
        assert_eq!(page(3, 1), (vec![3], 4), "the count still counts");
        assert_eq!(page(5, 100), (vec![], 5));
        drop(stream);
        spool.shutdown();
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", " bEaReR abc"] {
            assert_eq!(bearer_token(v), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearerabc", "abc", ""] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VerifyQuery {
    /// Only this stream (default: every open stream).
    #[param(example = "orders")]
    stream: Option<String>,
}

/// Checks every durable record of every open stream (or one) now, with
/// its checkpoint, cursors and groups: `sluice spool verify` through the
/// daemon. Reads at full speed: admin principals only.
#[utoipa::path(
    post,
    path = "/spool/verify",
    tag = "streams",
    params(VerifyQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the check found, stream by stream (what `sluice spool verify` shows)", body = crate::verify::Report),
        openapi::StreamRefusals,
    )
)]
async fn verify(
    caller: Caller,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> Answer {
    caller.may(&s, Action::Admin, "")?;
    if let Some(name) = &q.stream {
        if s.spool.open_stream(name).is_none() {
            return Err(ApiError::not_found(format!("no stream {name:?}")));
        }
    }
    let spool = s.spool.clone();
    let report =
        tokio::task::spawn_blocking(move || crate::verify::running(&spool, q.stream.as_deref()))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Ok(Json(report).into_response())
}
