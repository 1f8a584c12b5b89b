//! Push consumers over HTTP: a WebSocket and server-sent events, for
//! clients (browsers, scripts) that cannot keep a QUIC session but should
//! not poll. `daemon/HTTP.md` documents both with examples.
//!
//! | route | what |
//! |---|---|
//! | `GET /streams/{s}/groups/{g}/ws` | WebSocket: deliveries out (JSON text frames, or binary with `format=binary`), acks, nacks, extensions, credit and syncs in (JSON text frames) |
//! | `GET /streams/{s}/groups/{g}/events` | `text/event-stream`: one event per delivery (`id` = offset); acks over `POST .../ack` |
//!
//! Both are the QUIC subscriber's semantics (quic/subscriber.rs) on another
//! wire: the connection joins the group as a push member with a credit
//! window ([`Credit::Window`]), and the group hands it no more than the
//! window (messages and bytes not yet acked, nacked or expired; the
//! daemon's budget clamps what a client declares). An ack frees the window
//! whichever client sends it: the group gives a message back to the member
//! that holds it, so the HTTP ack route frees an event stream's window. The
//! member leaves when the connection ends, and what it held is delivered
//! again (a failed attempt, as for QUIC).
//!
//! Memory: what is out is bounded by the window; deliveries are written
//! one send at a time, each awaited (a WebSocket send waits for the socket;
//! an event stream's next event is asked for by hyper only when the last
//! went into its buffer), so a client that stops reading stops the member
//! and nothing piles up. A WebSocket whose sends make no progress for
//! `admin.idle_timeout`, or whose client answers no ping for
//! [`PING_EVERY`] × 3, is closed; an event stream that takes nothing for
//! `admin.idle_timeout` is closed by the server (serve.rs, [`Streaming`]).
//!
//! Conflation is a group's setting (`conflate` in `[[consumers.groups]]`):
//! it marks superseded messages done for every member, so no connection
//! can turn it on or off for itself. The `conflate` query parameter states
//! what the client expects, and is refused (409) when the group does
//! otherwise.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::debug;
use utoipa::IntoParams;

use super::caller::{Consume, OnStream};
use super::consume::{GroupPath, MessageJson};
use super::error::{Answer, ApiError};
use super::openapi::{BadRequest, Conflict, StreamRefusals, Unavailable};
use super::serve::Streaming;
use super::{existing_stream, AdminState, ApiQuery};
use crate::consume::group::{Credit, Delivery};
use crate::consume::service::{parse_start, to_wire, ConsumeError, Member, StartAt};

/// Messages a WebSocket member may hold unacked when `max_messages` is not
/// given.
pub const DEFAULT_WS_MESSAGES: u32 = 100;
/// Unacked events of an event stream when `max_outstanding` is not given.
pub const DEFAULT_OUTSTANDING: u32 = 100;
/// Most unacked events of an event stream (more is cut to it; the daemon's
/// `consumers.max_member_messages` may cut it further).
pub const MAX_OUTSTANDING: u32 = 10_000;
/// Payload bytes a member may hold unacked when `max_bytes` is not given
/// (the daemon's budget may grant less).
pub const DEFAULT_BYTES: u64 = 4 << 20;
/// A WebSocket is pinged this often; an event stream gets a comment this
/// often while it has nothing to send (at most half `admin.idle_timeout`,
/// so that a quiet stream is never taken for a stalled one).
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// Largest message a WebSocket client may send (its acks: some thousands
/// of offsets, or ranges).
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;
/// Most offsets a nack or extension may name once its ranges are counted
/// out (a member holds at most `consumers.max_member_messages` anyway).
pub const MAX_SETTLE_OFFSETS: u64 = 65_536;
/// Most bytes of deliveries gathered into one flush of a WebSocket.
const WRITE_BATCH: usize = 256 << 10;
/// How long a close frame may take to go out before the socket is just
/// dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Size of a binary frame's header, before the payload.
pub const BINARY_HEADER_LEN: usize = 40;

/// The WebSocket route's query (the document's; [`Params`] reads it).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct WsQuery {
    /// Where the group starts if it is new: `earliest`, `latest`,
    /// `offset:N`, `time:RFC3339`.
    #[param(example = "earliest")]
    start: Option<String>,
    /// The window: messages out and not acked (at least 1; default 100).
    #[param(minimum = 1)]
    max_messages: Option<u64>,
    /// The window's payload bytes (at least 1; default 4 MiB).
    #[param(minimum = 1)]
    max_bytes: Option<u64>,
    /// `json` (text frames, the default) or `binary` (a 40-byte header,
    /// then the payload).
    #[param(pattern = "^(json|binary)$")]
    format: Option<String>,
    /// What the client relies on: `latest_per_key` or `none`; 409 if the
    /// group does otherwise.
    #[param(pattern = "^(latest_per_key|none)$")]
    conflate: Option<String>,
}

/// The event stream's query (the document's; [`Params`] reads it).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventsQuery {
    /// Where the group starts if it is new: `earliest`, `latest`,
    /// `offset:N`, `time:RFC3339`.
    #[param(example = "earliest")]
    start: Option<String>,
    /// Events out and not acked at once (at least 1, default 100, at most
    /// 10,000).
    #[param(minimum = 1)]
    max_outstanding: Option<u64>,
    /// Their payload bytes (at least 1; default 4 MiB).
    #[param(minimum = 1)]
    max_bytes: Option<u64>,
    /// What the client relies on: `latest_per_key` or `none`; 409 if the
    /// group does otherwise.
    #[param(pattern = "^(latest_per_key|none)$")]
    conflate: Option<String>,
}

/// A query string read parameter by parameter, so that every complaint
/// names its parameter; unknown ones are refused.
struct Params(HashMap<String, String>);

impl Params {
    fn new(q: HashMap<String, String>, allowed: &[&str]) -> Result<Params, ApiError> {
        if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad(format!(
                "unknown query parameter {k:?}: expected {}",
                allowed.join(", ")
            )));
        }
        Ok(Params(q))
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.0
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad(format!(
                        "query parameter {key:?} must be a whole number of 0 or more, not {v:?}"
                    ))
                })
            })
            .transpose()
    }

    /// A count of at least 1, cut to `max`.
    fn count(&self, key: &str, default: u64, max: u64) -> Result<u64, ApiError> {
        match self.u64(key)? {
            None => Ok(default),
            Some(0) => Err(ApiError::bad(format!(
                "query parameter {key:?} must be at least 1"
            ))),
            Some(n) => Ok(n.min(max)),
        }
    }

    fn start(&self) -> Result<StartAt, ApiError> {
        match self.0.get("start") {
            None => Ok(StartAt::Earliest),
            Some(v) => {
                parse_start(v).map_err(|e| ApiError::bad(format!("query parameter \"start\": {e}")))
            }
        }
    }

    /// What the client expects of conflation: `None` if it does not say.
    fn conflate(&self) -> Result<Option<bool>, ApiError> {
        match self.0.get("conflate").map(String::as_str) {
            None => Ok(None),
            Some("latest_per_key") => Ok(Some(true)),
            Some("none") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad(format!(
                "query parameter \"conflate\" must be latest_per_key or none, not {v:?}"
            ))),
        }
    }
}

fn consume_error(e: ConsumeError) -> ApiError {
    match e {
        ConsumeError::NoSuchStream(_) => ApiError::not_found(e.to_string()),
        ConsumeError::BadGroup(_) => ApiError::bad(e.to_string()),
        ConsumeError::Stopping => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        ConsumeError::Spool(_) => ApiError::internal(e),
        ConsumeError::NoSuchGroup { .. } => ApiError::not_found(e.to_string()),
        ConsumeError::GroupBusy { .. }
        | ConsumeError::ConfiguredGroup { .. }
        | ConsumeError::NoReset { .. }
        | ConsumeError::TooManyGroups { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Joins the group named by `on` as a push member with this window, after
/// checking the stream (404) and what the client expects of conflation
/// (409 when the group does otherwise).
async fn join(
    s: &AdminState,
    on: &OnStream<Consume>,
    p: &Params,
    what: &str,
    messages: u32,
    bytes: u64,
) -> Result<Member, ApiError> {
    let (stream, group) = (&on.stream[..], &on.group[..]);
    existing_stream(s, stream)?;
    let start = p.start()?;
    let conflate = p.conflate()?;
    let handle = s
        .consumers
        .group(stream, group, start)
        .await
        .map_err(consume_error)?;
    if let Some(wanted) = conflate {
        let does = handle.config().conflate.is_some();
        if wanted != does {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "consumer group {group:?} of stream {stream:?} {}: conflation is the group's \
                     setting (conflate = \"latest_per_key\" in its [[consumers.groups]] entry), the \
                     same for every member; use a group configured {}",
                    if does { "conflates" } else { "does not conflate" },
                    if wanted { "so" } else { "without it" },
                ),
            ));
        }
    }
    let credit = Credit::Window { messages, bytes };
    s.consumers
        .join(
            stream,
            group,
            start,
            format!("{what} {}", on.caller.peer),
            credit,
            on.caller.peer,
        )
        .await
        .map_err(consume_error)
}

/// A delivery as JSON: what a fetch returns for it.
fn message_json(d: Delivery, now: Instant) -> MessageJson {
    let w = to_wire(d, now);
    MessageJson {
        offset: w.offset,
        delivery: w.delivery,
        timestamp_us: w.timestamp_us,
        producer: w.producer,
        seq: w.seq,
        deadline_ms: w.deadline_ms,
        payload: base64::engine::general_purpose::STANDARD.encode(&w.payload),
    }
}

/// A delivery as a binary frame: a header of [`BINARY_HEADER_LEN`] bytes,
/// little-endian (offset u64, delivery u32, deadline_ms u32, timestamp_us
/// u64, producer u64, seq u64), then the payload as it is.
fn binary_frame(d: Delivery, now: Instant) -> Vec<u8> {
    let w = to_wire(d, now);
    let mut v = Vec::with_capacity(BINARY_HEADER_LEN + w.payload.len());
    v.extend_from_slice(&w.offset.to_le_bytes());
    v.extend_from_slice(&w.delivery.to_le_bytes());
    v.extend_from_slice(&(w.deadline_ms.min(u32::MAX as u64) as u32).to_le_bytes());
    v.extend_from_slice(&w.timestamp_us.to_le_bytes());
    v.extend_from_slice(&w.producer.to_le_bytes());
    v.extend_from_slice(&w.seq.to_le_bytes());
    v.extend_from_slice(&w.payload);
    v
}

/// The heartbeat period: [`PING_EVERY`], or half the idle timeout if that
/// is shorter.
fn heartbeat(s: &AdminState) -> Duration {
    PING_EVERY
        .min(s.http.limits.idle_timeout / 2)
        .max(Duration::from_millis(100))
}

// ---- WebSocket ----

#[utoipa::path(
    get,
    path = "/streams/{stream}/groups/{group}/ws",
    tag = "push",
    params(GroupPath, WsQuery),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "The WebSocket is open: the group's deliveries come as frames (daemon/HTTP.md, Push)"),
        StreamRefusals,
        (status = 405, response = BadRequest),
        (status = 409, response = Conflict),
        (status = 426, response = BadRequest),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn ws(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Answer {
    let p = Params::new(
        q,
        &["start", "max_messages", "max_bytes", "format", "conflate"],
    )?;
    let binary = match p.0.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("binary") => true,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "query parameter \"format\" must be json or binary, not {v:?}"
            )))
        }
    };
    let messages = p.count("max_messages", DEFAULT_WS_MESSAGES as u64, u32::MAX as u64)? as u32;
    let bytes = p.count("max_bytes", DEFAULT_BYTES, u64::MAX)?;
    // Not an upgrade: said as the other errors are, after the checks of
    // rights (401, 403) and before anything joins.
    let upgrade = upgrade.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let member = join(&s, &on, &p, "ws", messages, bytes).await?;
    let idle = s.http.limits.idle_timeout;
    let beat = heartbeat(&s);
    let peer = on.caller.peer;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let why = serve_ws(socket, member, binary, idle, beat).await;
            debug!(%peer, why, "websocket consumer left");
        })
        .into_response())
}

/// Close codes (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED: u16 = 1003;
const INVALID_DATA: u16 = 1007;
const POLICY: u16 = 1008;

/// Why a WebSocket ended: a close frame to send, or nothing (the socket is
/// gone or stuck).
enum End {
    Close(u16, String),
    Gone(&'static str),
}

/// Serves one WebSocket consumer until it ends; returns why.
async fn serve_ws(
    mut socket: WebSocket,
    mut member: Member,
    binary: bool,
    idle: Duration,
    beat: Duration,
) -> &'static str {
    let hello = json!({"subscribed": {
        "member": member.id,
        "ack_deadline_ms": member.group.config().ack_deadline.as_millis() as u64,
        "max_deliveries": member.group.config().max_deliveries,
    }});
    if send(&mut socket, Message::Text(hello.to_string().into()), idle)
        .await
        .is_err()
    {
        return "gone before the first frame";
    }
    // Answers to syncs come back through here, so that only this task
    // writes to the socket. Bounded: a sync is sent only as fast as the
    // group's queue lets this reader send commands.
    let (answers, mut answered) = mpsc::unbounded_channel::<Value>();
    let mut ping = tokio::time::interval(beat);
    ping.tick().await;
    let mut heard = Instant::now();
    let end = loop {
        tokio::select! {
            batch = member.deliveries.recv() => {
                let Some(batch) = batch else {
                    break End::Close(GOING_AWAY, "the daemon is stopping".into());
                };
                if let Err(e) = deliver(&mut socket, &mut member, batch, binary, idle).await {
                    break e;
                }
            }
            a = answered.recv() => {
                let Some(a) = a else { continue };
                if send(&mut socket, Message::Text(a.to_string().into()), idle).await.is_err() {
                    break End::Gone("a send failed or made no progress");
                }
            }
            m = socket.recv() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(_)) | None => break End::Gone("the client went away"),
                };
                heard = Instant::now();
                match m {
                    Message::Text(t) => {
                        // A full group queue holds this reader (and so the
                        // client), not memory.
                        member.group.room().await;
                        if let Err((code, why)) = handle(t.as_str(), &member, &answers) {
                            break End::Close(code, why);
                        }
                    }
                    Message::Binary(_) => {
                        break End::Close(UNSUPPORTED, "send acks, nacks, extensions and credit as JSON text frames".into());
                    }
                    // tungstenite answers pings itself; a pong is a sign of
                    // life, noted above.
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => break End::Gone("the client closed"),
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > beat * 3 {
                    break End::Close(GOING_AWAY, "no answer to pings".into());
                }
                if send(&mut socket, Message::Ping(Default::default()), idle).await.is_err() {
                    break End::Gone("a ping could not be sent");
                }
            }
        }
    };
    // Leave first: what the member held goes back to the group now, not
    // after a close frame a stuck client may never take.
    drop(member);
    match end {
        End::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(truncate(reason, 120)),
            };
            let _ = send(
                &mut socket,
                Message::Close(Some(frame)),
                CLOSE_WAIT.min(idle),
            )
            .await;
            "closed by the daemon"
        }
        End::Gone(why) => why,
    }
}

/// A close reason fits a control frame (125 bytes, less its code).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// Sends one frame, waiting for the socket to take it, for at most `idle`.
async fn send(socket: &mut WebSocket, m: Message, idle: Duration) -> Result<(), ()> {
    match tokio::time::timeout(idle, socket.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Writes a batch of deliveries (and any others ready, up to
/// [`WRITE_BATCH`] bytes) and flushes them; each frame waits for room in
/// the socket's buffer, and the whole for at most `idle` per flush.
async fn deliver(
    socket: &mut WebSocket,
    member: &mut Member,
    batch: Vec<Delivery>,
    binary: bool,
    idle: Duration,
) -> Result<(), End> {
    let mut batches = vec![batch];
    let mut bytes: usize = batches[0].iter().map(|d| d.record.payload.len()).sum();
    while bytes < WRITE_BATCH {
        match member.deliveries.try_recv() {
            Ok(b) => {
                bytes += b.iter().map(|d| d.record.payload.len()).sum::<usize>();
                batches.push(b);
            }
            Err(_) => break,
        }
    }
    let now = Instant::now();
    let write = async {
        for d in batches.into_iter().flatten() {
            let m = if binary {
                Message::Binary(binary_frame(d, now).into())
            } else {
                let text = serde_json::to_string(&message_json(d, now))
                    .expect("plain data serializes to JSON");
                Message::Text(text.into())
            };
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(idle, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone("a send failed")),
        Err(_) => Err(End::Gone("the client took nothing for admin.idle_timeout")),
    }
}

/// Reads one client message and does what it says; a close code and reason
/// for one that is not understood.
fn handle(
    text: &str,
    member: &Member,
    answers: &mpsc::UnboundedSender<Value>,
) -> Result<(), (u16, String)> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| (INVALID_DATA, format!("not JSON: {e}")))?;
    let Value::Object(m) = v else {
        return Err((
            POLICY,
            "a message is a JSON object: ack, nack, extend, credit or sync".into(),
        ));
    };
    let bad = |why: String| (POLICY, why);
    let only = |allowed: &[&str]| -> Result<(), (u16, String)> {
        match m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(bad(format!(
                "unknown field {k:?} (expected {})",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    };
    let ms = |key: &str| -> Result<Option<Duration>, (u16, String)> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(Duration::from_millis(n)))
                .ok_or_else(|| bad(format!("{key:?} must be a whole number of milliseconds"))),
        }
    };
    if let Some(list) = m.get("ack") {
        only(&["ack"])?;
        member.ack(ranges(list).map_err(bad)?);
    } else if let Some(list) = m.get("nack") {
        only(&["nack", "delay_ms"])?;
        let offsets = offsets(list).map_err(bad)?;
        member.nack(offsets, ms("delay_ms")?.unwrap_or(Duration::ZERO));
    } else if let Some(list) = m.get("extend") {
        only(&["extend", "ms"])?;
        let offsets = offsets(list).map_err(bad)?;
        let by = ms("ms")?.unwrap_or(member.group.config().ack_deadline);
        member.extend(offsets, by);
    } else if let Some(c) = m.get("credit") {
        only(&["credit"])?;
        member.set_credit(credit(c).map_err(bad)?);
    } else if let Some(id) = m.get("sync") {
        only(&["sync"])?;
        let id = id.clone();
        let group = member.group.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let answer = match group.sync().await {
                Ok(()) => json!({ "synced": id }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            let _ = answers.send(answer);
        });
    } else {
        return Err(bad(
            "a message has one of ack, nack, extend, credit or sync".into(),
        ));
    }
    Ok(())
}

/// One element of an offsets list: an offset `n`, or a range `[first,
/// last]` (both included).
fn range_of(v: &Value) -> Result<std::ops::Range<u64>, String> {
    if let Some(n) = v.as_u64() {
        return n
            .checked_add(1)
            .map(|e| n..e)
            .ok_or_else(|| format!("offset {n} is too large"));
    }
    if let Some([a, b]) = v.as_array().map(Vec::as_slice) {
        if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
            if a <= b {
                if let Some(e) = b.checked_add(1) {
                    return Ok(a..e);
                }
            }
        }
    }
    Err(format!(
        "{v} is neither an offset (a whole number) nor a range [first, last] of them"
    ))
}

fn list(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{v} is not a list of offsets and [first, last] ranges"))
}

/// An ack's list as ranges (however wide: the group acks by range).
fn ranges(v: &Value) -> Result<Vec<std::ops::Range<u64>>, String> {
    list(v)?.iter().map(range_of).collect()
}

/// A nack's or extension's list as offsets, at most [`MAX_SETTLE_OFFSETS`].
fn offsets(v: &Value) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for r in list(v)?.iter().map(range_of) {
        let r = r?;
        if out.len() as u64 + (r.end - r.start) > MAX_SETTLE_OFFSETS {
            return Err(format!(
                "more than {MAX_SETTLE_OFFSETS} offsets in one nack or extension"
            ));
        }
        out.extend(r);
    }
    Ok(out)
}

/// `{"max_messages": N, "max_bytes": B}`: a new window (the daemon clamps
/// it as at the start).
fn credit(v: &Value) -> Result<Credit, String> {
    let Value::Object(m) = v else {
        return Err("credit is {\"max_messages\": N, \"max_bytes\": B}".into());
    };
    let m: &Map<String, Value> = m;
    if let Some(k) = m.keys().find(|k| *k != "max_messages" && *k != "max_bytes") {
        return Err(format!(
            "unknown credit field {k:?} (expected max_messages, max_bytes)"
        ));
    }
    let n = |k: &str| -> Result<u64, String> {
        m.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("credit needs {k:?}, a whole number"))
    };
    Ok(Credit::Window {
        messages: n("max_messages")?.min(u32::MAX as u64) as u32,
        bytes: n("max_bytes")?.max(1),
    })
}

// ---- server-sent events ----

#[utoipa::path(
    get,
    path = "/streams/{stream}/groups/{group}/events",
    tag = "push",
    params(GroupPath, EventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An endless event stream: an event per delivery (`id`: its offset, `data`: the message as JSON), `: heartbeat` comments", content_type = "text/event-stream", body = String),
        StreamRefusals,
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn events(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let p = Params::new(q, &["start", "max_outstanding", "max_bytes", "conflate"])?;
    let outstanding = p.count(
        "max_outstanding",
        DEFAULT_OUTSTANDING as u64,
        MAX_OUTSTANDING as u64,
    )? as u32;
    let bytes = p.count("max_bytes", DEFAULT_BYTES, u64::MAX)?;
    // A resumed stream: nothing to do. What was not acked comes again
    // under the group's rules (the old connection's member left, its
    // messages were handed back); nothing is acked for the client.
    if let Some(last) = headers.get("last-event-id") {
        debug!(peer = %on.caller.peer, last = ?last, "event stream resumed");
    }
    let member = join(&s, &on, &p, "sse", outstanding, bytes).await?;
    let beat = heartbeat(&s);
    // One body frame per batch the group hands over, written into one
    // buffer: a frame (and an axum `Event`, and a deadline update in
    // serve.rs) per delivery cost the daemon five times a WebSocket's
    // CPU per message (sluice-bench e2e --consume-path sse).
    let events = futures_util::stream::unfold(member, move |mut member| async move {
        let chunk = match tokio::time::timeout(beat, member.deliveries.recv()).await {
            // None: the group stopped (the daemon stops): the stream ends.
            Ok(batch) => event_chunk(batch?, Instant::now()),
            Err(_) => Bytes::from_static(b": heartbeat\n\n"),
        };
        Some((Ok::<_, Infallible>(chunk), member))
    });
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response();
    r.extensions_mut().insert(Streaming);
    Ok(r)
}

/// Deliveries as server-sent events: `id` the offset, `data` the message
/// as one line of JSON.
fn event_chunk(batch: Vec<Delivery>, now: Instant) -> Bytes {
    let mut out = Vec::with_capacity(batch.len() * 256);
    for d in batch {
        let m = message_json(d, now);
        out.extend_from_slice(format!("id: {}\ndata: ", m.offset).as_bytes());
        serde_json::to_writer(&mut out, &m).expect("plain data serializes to JSON");
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_ranges_are_read_and_bounded() {
        assert_eq!(
            ranges(&json!([1, [3, 5], 9])).unwrap(),
            vec![1..2, 3..6, 9..10]
        );
        assert_eq!(offsets(&json!([1, [3, 5]])).unwrap(), vec![1, 3, 4, 5]);
        assert!(ranges(&json!([[5, 3]])).is_err());
        assert!(ranges(&json!([-1])).is_err());
        assert!(ranges(&json!([u64::MAX])).is_err());
        assert!(ranges(&json!({"a": 1})).is_err());
        // A wide ack is a range; a wide nack is refused, not counted out.
        assert_eq!(
            ranges(&json!([[0, u64::MAX - 1]])).unwrap(),
            vec![0..u64::MAX]
        );
        assert!(offsets(&json!([[0, u64::MAX - 1]])).is_err());
    }

    #[test]
    fn a_credit_names_both_fields() {
        assert_eq!(
            credit(&json!({"max_messages": 3, "max_bytes": 10})).unwrap(),
            Credit::Window {
                messages: 3,
                bytes: 10
            }
        );
        assert!(credit(&json!({"max_messages": 3})).is_err());
        assert!(credit(&json!({"max_messages": 3, "max_bytes": 1, "x": 1})).is_err());
    }

    #[test]
    fn a_binary_frame_has_its_header_then_the_payload() {
        let now = Instant::now();
        let d = Delivery {
            member: 1,
            offset: 7,
            delivery: 2,
            deadline: now + Duration::from_millis(1500),
            record: crate::spool::Record::new(9, 11, 13, bytes::Bytes::from_static(b"hi")),
        };
        let f = binary_frame(d, now);
        assert_eq!(f.len(), BINARY_HEADER_LEN + 2);
        assert_eq!(u64::from_le_bytes(f[0..8].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(f[8..12].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(f[12..16].try_into().unwrap()), 1500);
        assert_eq!(u64::from_le_bytes(f[16..24].try_into().unwrap()), 13);
        assert_eq!(u64::from_le_bytes(f[24..32].try_into().unwrap()), 9);
        assert_eq!(u64::from_le_bytes(f[32..40].try_into().unwrap()), 11);
        assert_eq!(&f[40..], b"hi");
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}
