//! The consumer HTTP API, on the admin port: pull with long polling, acks,
//! nacks and extensions for clients that cannot keep a QUIC session (any
//! language with an HTTP client), the groups' figures, and the dead-letter
//! streams (list, replay, purge). `daemon/HTTP.md` documents it with
//! examples.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /streams/{s}/groups/{g}/fetch` | `{"max","wait_ms","start"}` | `{"messages":[...]}` |
//! | `POST /streams/{s}/groups/{g}/ack` | `{"offsets"}` | `{"acked":n}` once durable |
//! | `POST /streams/{s}/groups/{g}/nack` | `{"offsets","delay_ms"}` | `{"nacked":n}` once durable |
//! | `POST /streams/{s}/groups/{g}/extend` | `{"offsets","ms"}` | `{"extended":n}` once durable |
//! | `GET /groups` | | `{"groups":[GroupStats...]}` |
//! | `POST /streams/{s}/groups/{g}/reset` | `{"start"}` | `{"stream","group","floor"}` once durable |
//! | `DELETE /streams/{s}/groups/{g}` | | `{"stream","group","deleted":true}` once durable |
//! | `GET /streams/{s}/dlq?from=N&limit=M` | | dead letters from the purge mark on |
//! | `POST /streams/{s}/dlq/replay` | `{"purge"}` | `{"replayed","duplicates","skipped","purged_to"}` |
//! | `POST /streams/{s}/dlq/purge` | | `{"purged","purged_to"}` |
//!
//! Everything but `/groups` needs a principal allowed to consume the
//! stream (`Authorization: Bearer <token>`, unless the daemon runs
//! anonymously on loopback); replay also needs publish. `/groups` shows
//! what `/metrics` shows, and is as open.
//!
//! A fetch joins the group as a member for the length of the request only:
//! what it is handed stays out with nobody in particular until acked (by
//! offset, from any client), nacked, or its ack deadline passes. A client
//! that disconnects during the wait gives back what it was being handed.
//!
//! A reset or deletion needs the group to have no members (409 while it
//! has: stop them first); a configured group cannot be deleted (it would
//! come back at the next start).
//!
//! The purge mark of a dead-letter stream is its cursor named `.purged` (a
//! name no group can have): lists and replays start there, and retention
//! may delete what is below it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::caller::{Admin, Consume, ConsumeAndPublish, OnStream};
use super::error::{Answer, ApiError};
use super::openapi::{Conflict, StreamRefusals, Unavailable};
use super::serve::{page_answer, PagePermit};
use super::{existing_stream, json_into, AdminState, ApiQuery, StreamPath};
use crate::auth::Action;
use crate::consume::dead_letter::{self, DeadLetter};
use crate::consume::group::Delivery;
use crate::consume::service::{to_wire, ConsumeError, GroupHandle, GroupStats, StartAt};
use crate::spool::record::now_us;
use crate::spool::{Cursor, Outcome, Record, SpoolError, Stream};

/// Most messages one fetch returns.
pub const MAX_FETCH: u64 = 10_000;
/// Messages a fetch returns when the body does not say.
pub const DEFAULT_FETCH: u64 = 10;
/// Longest long poll, ms (longer waits are cut to it).
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most dead letters one list request returns.
pub const MAX_DEAD_LETTERS_PER_REQUEST: usize = 10_000;
/// Dead letters a list request returns when the query does not say.
pub const DEFAULT_DEAD_LETTERS: usize = 100;
/// The cursor of a dead-letter stream that holds its purge mark.
pub const PURGE_CURSOR: &str = ".purged";
/// A replay appends this many dead letters per batch at most ...
const REPLAY_BATCH: usize = 1_000;
/// ... and about this many payload bytes.
const REPLAY_BATCH_BYTES: usize = 4 << 20;

/// The path of a consumer group's routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct GroupPath {
    /// The stream's name.
    #[param(example = "orders")]
    #[allow(dead_code)] // read by OnStream, from the raw path
    stream: String,
    /// The consumer group's name.
    #[param(example = "billing")]
    #[allow(dead_code)]
    group: String,
}

// The request bodies, for the OpenAPI document: the handlers read them
// field by field (`Fields`, so that each complaint names its field) from
// the field lists below, which the document's test compares with these.

pub(super) const FETCH_FIELDS: &[&str] = &["max", "wait_ms", "start"];
pub(super) const ACK_FIELDS: &[&str] = &["offsets"];
pub(super) const NACK_FIELDS: &[&str] = &["offsets", "delay_ms"];
pub(super) const EXTEND_FIELDS: &[&str] = &["offsets", "ms"];
pub(super) const RESET_FIELDS: &[&str] = &["start"];
pub(super) const REPLAY_FIELDS: &[&str] = &["purge"];
pub(super) const PURGE_FIELDS: &[&str] = &[];

/// A fetch's body (an empty body is `{}`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema: `fetch` reads the fields itself
pub struct FetchBody {
    /// Most messages to return (default 10; more than 10,000 is cut to 10,000).
    #[schema(minimum = 1)]
    max: Option<u64>,
    /// Long poll: wait up to this long for a first message, ms (default 0;
    /// more than 30,000 is cut to 30,000).
    wait_ms: Option<u64>,
    /// Where the group starts if it is new (default `earliest`):
    /// `earliest`, `latest`, `offset:N` or `time:RFC3339`.
    #[schema(pattern = "^(earliest|latest|offset:[0-9]+|time:.+)$")]
    start: Option<String>,
}

/// An ack's body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AckBody {
    /// The offsets of the messages done with.
    offsets: Vec<u64>,
}

/// A nack's body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NackBody {
    /// The offsets of the messages to deliver again.
    offsets: Vec<u64>,
    /// Deliver them again after this long, ms (default 0: at once).
    delay_ms: Option<u64>,
}

/// An extension's body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ExtendBody {
    /// The offsets of the messages still being worked on.
    offsets: Vec<u64>,
    /// Their ack deadline becomes now + this, ms (default: the group's ack
    /// deadline; at most `consumers.max_ack_extension`).
    ms: Option<u64>,
}

/// A reset's body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ResetBody {
    /// Where the group starts now: `earliest`, `latest`, `offset:N` or
    /// `time:RFC3339`.
    #[schema(pattern = "^(earliest|latest|offset:[0-9]+|time:.+)$")]
    start: String,
}

/// A replay's body (an empty body is `{}`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReplayBody {
    /// Move the purge mark past what was replayed (default false; needs an
    /// admin principal).
    purge: Option<bool>,
}

/// A purge's body: none, or `{}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {}

/// What an ack answers.
#[derive(Serialize, Deserialize, Debug, PartialEq, ToSchema)]
pub struct Acked {
    /// The offsets given.
    pub acked: usize,
}

/// What a nack answers.
#[derive(Serialize, Deserialize, Debug, PartialEq, ToSchema)]
pub struct Nacked {
    /// The offsets given.
    pub nacked: usize,
}

/// What an extension answers.
#[derive(Serialize, Deserialize, Debug, PartialEq, ToSchema)]
pub struct Extended {
    /// The offsets given.
    pub extended: usize,
}

/// One message as a fetch returns it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct MessageJson {
    /// Its offset in the stream: what acks, nacks and extensions name.
    pub offset: u64,
    /// 1 on the first delivery, more on redeliveries.
    pub delivery: u32,
    pub timestamp_us: u64,
    pub producer: u64,
    pub seq: u64,
    /// Milliseconds left to ack it before it is delivered again.
    pub deadline_ms: u64,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct FetchAnswer {
    pub messages: Vec<MessageJson>,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupStats>,
}

/// One delivery attempt of a dead letter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct AttemptJson {
    /// When it ended, µs since the Unix epoch.
    pub at_us: u64,
    pub member: String,
    /// `deadline-expired`, `nacked` or `member-left`.
    pub outcome: String,
}

/// One dead letter, decoded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct DeadLetterJson {
    /// Its offset in the dead-letter stream.
    pub offset: u64,
    /// The message's offset in its own stream.
    pub source_offset: u64,
    pub group: String,
    pub reason: String,
    pub deliveries: u32,
    pub history: Vec<AttemptJson>,
    /// The original record's producer, seq and timestamp.
    pub producer: u64,
    pub seq: u64,
    pub timestamp_us: u64,
    /// When it was dead-lettered, µs since the Unix epoch.
    pub dead_at_us: u64,
    /// The original payload, base64 (standard alphabet, padded).
    pub payload: String,
}

/// A record of the dead-letter stream that is not an envelope.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct Skipped {
    pub offset: u64,
    pub error: String,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct DeadLetterPage {
    pub stream: String,
    /// The dead-letter stream's name.
    pub dlq: String,
    /// The purge mark: dead letters below it are not shown.
    pub purged_to: u64,
    pub dead_letters: Vec<DeadLetterJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Where to continue: `from` for the next request.
    pub next: u64,
    pub durable_end: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, ToSchema)]
pub struct ReplayAnswer {
    /// Dead letters appended to the stream now.
    pub replayed: u64,
    /// Dead letters a previous replay had appended already (not again).
    pub duplicates: u64,
    /// Records of the dead-letter stream that are not envelopes.
    pub skipped: u64,
    /// The purge mark afterwards.
    pub purged_to: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, ToSchema)]
pub struct PurgeAnswer {
    /// Dead letters that went below the mark now.
    pub purged: u64,
    pub purged_to: u64,
}

/// What a reset or deletion of a group answers.
#[derive(Serialize, Deserialize, Debug, PartialEq, ToSchema)]
pub struct GroupChange {
    pub stream: String,
    pub group: String,
    /// After a reset: the offset the group starts at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
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

/// A request's JSON object, read field by field so that every complaint
/// names its field. An empty body is an empty object.
struct Fields(Map<String, Value>);

impl Fields {
    fn parse(body: &[u8], allowed: &[&str]) -> Result<Fields, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields(Map::new()));
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(ApiError::bad(format!(
                "the body must be a JSON object with the fields {}",
                allowed.join(", ")
            )));
        };
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad(format!(
                "unknown field {k:?}: expected {}",
                allowed.join(", ")
            )));
        }
        Ok(Fields(m))
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::bad(format!(
                    "field {key:?} must be a whole number of 0 or more, not {v}"
                ))
            }),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                ApiError::bad(format!("field {key:?} must be true or false, not {v}"))
            }),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("field {key:?} must be a string, not {v}"))),
        }
    }

    /// The optional `start` (earliest, latest, offset:N, time:RFC3339).
    fn start(&self) -> Result<Option<StartAt>, ApiError> {
        self.str("start")?
            .map(|v| {
                crate::consume::service::parse_start(v)
                    .map_err(|e| ApiError::bad(format!("field \"start\": {e}")))
            })
            .transpose()
    }

    /// The required `offsets` array.
    fn offsets(&self) -> Result<Vec<u64>, ApiError> {
        let Some(v) = self.0.get("offsets") else {
            return Err(ApiError::bad(
                "field \"offsets\" is missing: give the offsets as an array of whole numbers",
            ));
        };
        let not = || {
            ApiError::bad(format!(
                "field \"offsets\" must be an array of offsets (whole numbers), not {v}"
            ))
        };
        v.as_array()
            .ok_or_else(not)?
            .iter()
            .map(|o| o.as_u64().ok_or_else(not))
            .collect()
    }
}

/// A delivery as JSON: the fields the QUIC plane sends, payload in base64.
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

/// Up to `max` messages for the group, long-polling up to `wait_ms`.
///
/// A fetch hands out at most `max` messages and about `admin.page_bytes`
/// of payload (one message always). The group hands out only what it is
/// asked for, so the fetch asks in slices: first one message (long-polling
/// for it), then as many as the rest of the page holds at the size of the
/// largest message seen so far, until the page is full, `max` is reached or
/// nothing more is ready. What it does not ask for stays with the group.
/// The page takes one of the page turns (`admin.max_page_requests`) after
/// its first message (a long poll does not hold a turn while it waits).
#[utoipa::path(
    post,
    path = "/streams/{stream}/groups/{group}/fetch",
    tag = "consumers",
    params(GroupPath),
    request_body(content = FetchBody, content_type = "application/json", description = "An empty body counts as `{}`"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Up to `max` messages, as soon as one is there; none when `wait_ms` has passed", body = FetchAnswer),
        StreamRefusals,
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn fetch(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    let (s, stream, group, body) = (&*s, &on.stream[..], &on.group[..], &body[..]);
    let f = Fields::parse(body, FETCH_FIELDS)?;
    let max = f.u64("max")?.unwrap_or(DEFAULT_FETCH);
    if max == 0 {
        return Err(ApiError::bad("field \"max\" must be at least 1"));
    }
    let max = max.min(MAX_FETCH) as usize;
    let wait = Duration::from_millis(f.u64("wait_ms")?.unwrap_or(0).min(MAX_WAIT_MS));
    let start = f.start()?.unwrap_or(StartAt::Earliest);
    let handle = s
        .consumers
        .group(stream, group, start)
        .await
        .map_err(consume_error)?;
    let cap = s.http.page_bytes();
    let member = s.consumers.member_id();
    // Without a long poll, the turn first: nothing is taken from the
    // group while waiting for it.
    let mut permit: Option<PagePermit> = None;
    if wait.is_zero() {
        permit = Some(s.http.page_permit().await?);
    }
    let mut got: Vec<Delivery> = Vec::new();
    let (mut bytes, mut largest) = (0u64, 1u64);
    loop {
        let (ask, wait) = if got.is_empty() {
            (1, wait)
        } else {
            // As many as fit at the size of the largest seen; none: full.
            let fits = (cap - bytes) / largest;
            if fits == 0 {
                break;
            }
            (fits.min((max - got.len()) as u64) as u32, Duration::ZERO)
        };
        let slice = handle
            .fetch_detached(member, ask, wait)
            .await
            .map_err(consume_error)?;
        if slice.is_empty() {
            break;
        }
        for d in &slice {
            let len = d.record.payload.len() as u64;
            bytes += len;
            largest = largest.max(len);
        }
        got.extend(slice);
        if got.len() >= max || bytes >= cap {
            break;
        }
        if permit.is_none() {
            match s.http.page_permit().await {
                Ok(p) => permit = Some(p),
                // No turn: the one message taken is the answer.
                Err(_) => break,
            }
        }
    }
    let now = Instant::now();
    let mut out = b"{\"messages\":[".to_vec();
    for (i, d) in got.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_into(&mut out, &message_json(d, now));
    }
    out.extend_from_slice(b"]}");
    Ok(page_answer(out, permit))
}

/// Moves a group as if it were created there now.
///
/// Moving a group moves it for every consumer of it: an operator's act.
#[utoipa::path(
    post,
    path = "/streams/{stream}/groups/{group}/reset",
    tag = "consumers",
    params(GroupPath),
    request_body(content = ResetBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group's new floor, once durable", body = GroupChange),
        StreamRefusals,
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn reset_group(
    on: OnStream<Admin>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    let (s, stream, group, body) = (&*s, &on.stream[..], &on.group[..], &body[..]);
    let f = Fields::parse(body, RESET_FIELDS)?;
    let Some(start) = f.start()? else {
        return Err(ApiError::bad(
            "field \"start\" is required: earliest, latest, offset:N or time:RFC3339",
        ));
    };
    let floor = s
        .consumers
        .reset(stream, group, start)
        .await
        .map_err(consume_error)?;
    Ok(Json(GroupChange {
        stream: stream.to_owned(),
        group: group.to_owned(),
        floor: Some(floor),
        deleted: false,
    })
    .into_response())
}

/// Forgets a group: its position, ack state and cursor.
#[utoipa::path(
    delete,
    path = "/streams/{stream}/groups/{group}",
    tag = "consumers",
    params(GroupPath),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted, durably", body = GroupChange),
        StreamRefusals,
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn delete_group(on: OnStream<Admin>, State(s): State<Arc<AdminState>>) -> Answer {
    let (s, stream, group) = (&*s, &on.stream[..], &on.group[..]);
    s.consumers
        .delete(stream, group)
        .await
        .map_err(consume_error)?;
    Ok(Json(GroupChange {
        stream: stream.to_owned(),
        group: group.to_owned(),
        floor: None,
        deleted: true,
    })
    .into_response())
}

/// The running group an ack, nack or extension is for.
/// The group that acks, nacks and extensions go to, once its queue has
/// room for them (see [`GroupHandle::room`]).
async fn existing(s: &AdminState, stream: &str, group: &str) -> Result<Arc<GroupHandle>, ApiError> {
    let h = s.consumers.existing(stream, group).await.ok_or_else(|| {
        ApiError::not_found(format!(
            "no consumer group {group:?} of stream {stream:?} (a fetch creates it)"
        ))
    })?;
    h.room().await;
    Ok(h)
}

/// What the three settling routes do.
#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
    Extend,
}

async fn settle(on: &OnStream<Consume>, s: &AdminState, body: &[u8], kind: Settle) -> Answer {
    let (stream, group) = (&on.stream[..], &on.group[..]);
    let allowed = match kind {
        Settle::Ack => ACK_FIELDS,
        Settle::Nack => NACK_FIELDS,
        Settle::Extend => EXTEND_FIELDS,
    };
    let f = Fields::parse(body, allowed)?;
    let offsets = f.offsets()?;
    let n = offsets.len();
    let ms = |key| f.u64(key).map(|v| v.map(Duration::from_millis));
    let (h, answer) = match kind {
        Settle::Ack => {
            let h = existing(s, stream, group).await?;
            h.ack(sluice_transport::offsets::ranges_of(&offsets));
            (h, Json(Acked { acked: n }).into_response())
        }
        Settle::Nack => {
            let delay = ms("delay_ms")?.unwrap_or(Duration::ZERO);
            let h = existing(s, stream, group).await?;
            h.nack_any(offsets, delay);
            (h, Json(Nacked { nacked: n }).into_response())
        }
        Settle::Extend => {
            let by = ms("ms")?;
            let h = existing(s, stream, group).await?;
            let by = by.unwrap_or(h.config().ack_deadline);
            h.extend_any(offsets, by);
            (h, Json(Extended { extended: n }).into_response())
        }
    };
    h.sync().await.map_err(consume_error)?;
    Ok(answer)
}

/// Done with these messages: the answer comes once the acks are durable.
#[utoipa::path(
    post,
    path = "/streams/{stream}/groups/{group}/ack",
    tag = "consumers",
    params(GroupPath),
    request_body(content = AckBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many offsets were given, once the acks are durable", body = Acked),
        StreamRefusals,
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn ack(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    settle(&on, &s, &body, Settle::Ack).await
}

/// Not done: deliver these again after `delay_ms` (messages out now only).
#[utoipa::path(
    post,
    path = "/streams/{stream}/groups/{group}/nack",
    tag = "consumers",
    params(GroupPath),
    request_body(content = NackBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many offsets were given, once durable", body = Nacked),
        StreamRefusals,
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn nack(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    settle(&on, &s, &body, Settle::Nack).await
}

/// Still working on these: their ack deadline becomes now + `ms`.
#[utoipa::path(
    post,
    path = "/streams/{stream}/groups/{group}/extend",
    tag = "consumers",
    params(GroupPath),
    request_body(content = ExtendBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many offsets were given, once durable", body = Extended),
        StreamRefusals,
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn extend(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    settle(&on, &s, &body, Settle::Extend).await
}

/// Every consumer group the daemon runs, by stream then group (open, as
/// `/metrics` is).
#[utoipa::path(
    get,
    path = "/groups",
    tag = "consumers",
    responses(
        (status = 200, description = "Each group's backlog, members, credit and counters", body = GroupList),
    )
)]
pub(super) async fn groups(State(s): State<Arc<AdminState>>) -> Json<GroupList> {
    Json(GroupList {
        groups: s.consumers.stats(),
    })
}

/// The dead-letter stream of `stream`, if one was ever written.
fn dlq_of(s: &AdminState, stream: &str) -> Result<(String, Option<Stream>), ApiError> {
    let name = dead_letter::dlq_stream_name(stream).map_err(|e| ApiError::bad(e.to_string()))?;
    if !s.spool.stream_names().contains(&name) {
        return Ok((name, None));
    }
    let dlq = s.spool.stream(&name).map_err(ApiError::internal)?;
    Ok((name, Some(dlq)))
}

/// Where the dead letters not purged start.
fn purge_mark(dlq: &Stream) -> u64 {
    dlq.cursor(PURGE_CURSOR).map_or(0, |c| c.ack_floor)
}

fn dead_letter_json(offset: u64, d: DeadLetter) -> DeadLetterJson {
    DeadLetterJson {
        offset,
        source_offset: d.offset,
        group: d.group,
        reason: d.reason,
        deliveries: d.deliveries,
        history: d
            .history
            .into_iter()
            .map(|a| AttemptJson {
                at_us: a.at_us,
                member: a.member,
                outcome: a.outcome.as_str().to_owned(),
            })
            .collect(),
        producer: d.producer,
        seq: d.seq,
        timestamp_us: d.timestamp_us,
        dead_at_us: d.dead_at_us,
        payload: base64::engine::general_purpose::STANDARD.encode(&d.payload),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DlqQuery {
    /// The first dead-letter offset wanted (default 0; the purge mark if
    /// lower).
    #[serde(default)]
    from: u64,
    /// Most dead letters (default 100; more than 10,000 is cut to 10,000).
    limit: Option<usize>,
}

/// The stream's dead letters, decoded, from the purge mark on.
#[utoipa::path(
    get,
    path = "/streams/{stream}/dlq",
    tag = "dead letters",
    params(StreamPath, DlqQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "At most `limit` dead letters and about `admin.page_bytes` of envelopes (one always); `next` is where to go on. A stream without a dead-letter stream answers an empty list", body = DeadLetterPage),
        StreamRefusals,
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn dlq_list(
    on: OnStream<Consume>,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<DlqQuery>,
) -> Answer {
    let (s, stream) = (&*s, &on.stream[..]);
    existing_stream(s, stream)?;
    let (name, dlq) = dlq_of(s, stream)?;
    let Some(dlq) = dlq else {
        return Ok(Json(DeadLetterPage {
            stream: stream.to_owned(),
            dlq: name,
            purged_to: 0,
            dead_letters: Vec::new(),
            skipped: Vec::new(),
            next: q.from,
            durable_end: 0,
        })
        .into_response());
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_DEAD_LETTERS)
        .clamp(1, MAX_DEAD_LETTERS_PER_REQUEST);
    let permit = s.http.page_permit().await?;
    let cap = s.http.page_bytes();
    let stream = stream.to_owned();
    // Reading touches files: off the async workers.
    let page = tokio::task::spawn_blocking(move || {
        dead_letter_page(&dlq, &stream, &name, q.from, limit, cap)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(page_answer(page, Some(permit)))
}

/// A [`DeadLetterPage`] as JSON: at most `limit` records of the
/// dead-letter stream from `from` (the purge mark if higher), stopping
/// before the dead letter that would take the page's envelopes past `cap`
/// bytes unless it is the first; each is written out as it is read.
fn dead_letter_page(
    dlq: &Stream,
    stream: &str,
    name: &str,
    from: u64,
    limit: usize,
    cap: u64,
) -> Result<Vec<u8>, SpoolError> {
    let purged_to = purge_mark(dlq);
    let mut reader = dlq.reader(from.max(purged_to));
    let mut out = b"{\"stream\":".to_vec();
    json_into(&mut out, &stream);
    out.extend_from_slice(b",\"dlq\":");
    json_into(&mut out, &name);
    out.extend_from_slice(format!(",\"purged_to\":{purged_to},\"dead_letters\":[").as_bytes());
    let (mut shown, mut skipped) = (0, Vec::new());
    let (mut bytes, mut stopped_at) = (0u64, None);
    while shown + skipped.len() < limit {
        let Some((offset, r)) = reader.next_record()? else {
            break;
        };
        let len = r.payload.len() as u64;
        if shown > 0 && bytes + len > cap {
            stopped_at = Some(offset);
            break;
        }
        match dead_letter::decode_bytes(&r.payload) {
            Ok(d) => {
                bytes += len;
                if shown > 0 {
                    out.push(b',');
                }
                json_into(&mut out, &dead_letter_json(offset, d));
                shown += 1;
            }
            Err(e) => skipped.push(Skipped {
                offset,
                error: e.to_string(),
            }),
        }
    }
    out.push(b']');
    if !skipped.is_empty() {
        out.extend_from_slice(b",\"skipped\":");
        json_into(&mut out, &skipped);
    }
    let next = stopped_at.unwrap_or_else(|| reader.position());
    out.extend_from_slice(
        format!(",\"next\":{next},\"durable_end\":{}}}", dlq.durable_end()).as_bytes(),
    );
    Ok(out)
}

/// One batch of a replay, read from the dead-letter stream.
struct ReplayBatch {
    records: Vec<Record>,
    skipped: u64,
    /// Where the next batch starts.
    next: u64,
}

/// Reads dead letters from `from` up to `end` (not past), at most one
/// batch, as records of the replay producer.
fn replay_batch(
    dlq: &Stream,
    producer: u64,
    from: u64,
    end: u64,
) -> Result<ReplayBatch, SpoolError> {
    let mut reader = dlq.reader(from);
    let mut b = ReplayBatch {
        records: Vec::new(),
        skipped: 0,
        next: from.max(dlq.first_offset()),
    };
    let mut bytes = 0;
    while b.records.len() < REPLAY_BATCH && bytes < REPLAY_BATCH_BYTES {
        let Some((offset, r)) = reader.next_record()? else {
            break;
        };
        if offset >= end {
            break;
        }
        b.next = offset + 1;
        match dead_letter::decode_bytes(&r.payload) {
            Ok(d) => {
                bytes += d.payload.len();
                b.records.push(Record {
                    producer,
                    // Replaying the same dead letter again is a duplicate
                    // the spool stores once.
                    seq: offset + 1,
                    timestamp_us: now_us(),
                    payload: d.payload,
                    key: None,
                });
            }
            Err(_) => b.skipped += 1,
        }
    }
    Ok(b)
}

/// Appends the payloads of the dead letters from the purge mark on to the
/// stream again (once each: replaying twice stores nothing twice).
#[utoipa::path(
    post,
    path = "/streams/{stream}/dlq/replay",
    tag = "dead letters",
    params(StreamPath),
    request_body(content = ReplayBody, content_type = "application/json", description = "An empty body counts as `{}`"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many were replayed, once durable", body = ReplayAnswer),
        StreamRefusals,
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn dlq_replay(
    on: OnStream<ConsumeAndPublish>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    let (s, stream, body) = (&*s, &on.stream[..], &body[..]);
    let f = Fields::parse(body, REPLAY_FIELDS)?;
    let purge = f.bool("purge")?.unwrap_or(false);
    if purge {
        on.caller.may(s, Action::Admin, stream)?;
    }
    let source = existing_stream(s, stream)?;
    let (_, dlq) = dlq_of(s, stream)?;
    let mut answer = ReplayAnswer {
        replayed: 0,
        duplicates: 0,
        skipped: 0,
        purged_to: 0,
    };
    let Some(dlq) = dlq else {
        return Ok(Json(answer).into_response());
    };
    let producer = dead_letter::replay_producer_id(stream);
    // What is there now; dead letters arriving meanwhile wait for the
    // next replay (and are not purged by this one).
    let end = dlq.durable_end();
    let d = dlq.clone();
    let mut from = tokio::task::spawn_blocking(move || purge_mark(&d))
        .await
        .map_err(ApiError::internal)?;
    answer.purged_to = from;
    while from < end {
        let d = dlq.clone();
        let batch = tokio::task::spawn_blocking(move || replay_batch(&d, producer, from, end))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        answer.skipped += batch.skipped;
        if !batch.records.is_empty() {
            let outcomes = source
                .append_batch(batch.records)
                .await
                .map_err(|_| ApiError::internal(SpoolError::Closed))?
                .map_err(|e| ApiError::internal(format!("replaying into {stream:?}: {e}")))?;
            for o in outcomes {
                match o {
                    Outcome::Stored { .. } => answer.replayed += 1,
                    // (Replayed records carry no request key: the key
                    // outcomes do not occur.)
                    Outcome::Duplicate | Outcome::Repeated { .. } | Outcome::KeyConflict => {
                        answer.duplicates += 1
                    }
                    // An earlier replay failed part-way; this one goes on
                    // only from where that one stopped.
                    Outcome::Refused => {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "an earlier replay into {stream:?} failed part-way; replay again"
                            ),
                        ))
                    }
                }
            }
        }
        if batch.next <= from {
            break;
        }
        from = batch.next;
    }
    if purge {
        answer.purged_to = set_purge_mark(&dlq, from).await?;
    }
    Ok(Json(answer).into_response())
}

/// Moves the purge mark up to `to` (never down) and waits until it is
/// durable; returns the mark.
async fn set_purge_mark(dlq: &Stream, to: u64) -> Result<u64, ApiError> {
    let d = dlq.clone();
    let old = tokio::task::spawn_blocking(move || purge_mark(&d))
        .await
        .map_err(ApiError::internal)?;
    if to <= old {
        return Ok(old);
    }
    let cursor = Cursor {
        ack_floor: to,
        retain_until_acked: false,
    };
    dlq.set_cursor(PURGE_CURSOR, cursor)
        .await
        .map_err(|_| ApiError::internal(SpoolError::Closed))?
        .map_err(ApiError::internal)?;
    Ok(to)
}

/// Moves the purge mark to the dead-letter stream's durable end.
///
/// Dead letters dropped from view are dropped for every group: an
/// operator's act.
#[utoipa::path(
    post,
    path = "/streams/{stream}/dlq/purge",
    tag = "dead letters",
    params(StreamPath),
    request_body(content = PurgeBody, content_type = "application/json", description = "No body, or `{}`"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many went below the mark, once durable", body = PurgeAnswer),
        StreamRefusals,
    )
)]
pub(super) async fn dlq_purge(
    on: OnStream<Admin>,
    State(s): State<Arc<AdminState>>,
    body: Bytes,
) -> Answer {
    let (s, stream, body) = (&*s, &on.stream[..], &body[..]);
    Fields::parse(body, PURGE_FIELDS)?;
    existing_stream(s, stream)?;
    let (_, dlq) = dlq_of(s, stream)?;
    let Some(dlq) = dlq else {
        return Ok(Json(PurgeAnswer {
            purged: 0,
            purged_to: 0,
        })
        .into_response());
    };
    let d = dlq.clone();
    let old = tokio::task::spawn_blocking(move || purge_mark(&d))
        .await
        .map_err(ApiError::internal)?;
    let purged_to = set_purge_mark(&dlq, dlq.durable_end()).await?;
    // Retention may have deleted some below the old mark already.
    let from = old.max(dlq.first_offset()).min(purged_to);
    Ok(Json(PurgeAnswer {
        purged: purged_to - from,
        purged_to,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error message of a refused request.
    fn message(r: ApiError) -> String {
        let r = r.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = rt
            .block_on(axum::body::to_bytes(r.into_body(), 1 << 16))
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["error"].as_str().unwrap().to_owned()
    }

    #[test]
    fn fields_are_read_one_by_one_and_named_when_wrong() {
        let allowed = &["max", "start", "purge", "offsets"];
        let f = Fields::parse(b"  \n", allowed).ok().unwrap();
        assert_eq!(f.u64("max").ok().unwrap(), None);
        let f = Fields::parse(
            br#"{"max": 5, "start": "latest", "purge": true, "offsets": [1, 2]}"#,
            allowed,
        )
        .ok()
        .unwrap();
        assert_eq!(f.u64("max").ok().unwrap(), Some(5));
        assert_eq!(f.str("start").ok().unwrap(), Some("latest"));
        assert_eq!(f.bool("purge").ok().unwrap(), Some(true));
        assert_eq!(f.offsets().ok().unwrap(), [1, 2]);
        let f = Fields::parse(br#"{"max": 1.5, "start": 3, "purge": 1}"#, allowed)
            .ok()
            .unwrap();
        assert!(message(f.u64("max").unwrap_err()).contains("\"max\""));
        assert!(message(f.str("start").unwrap_err()).contains("\"start\""));
        assert!(message(f.bool("purge").unwrap_err()).contains("\"purge\""));
        assert!(message(f.offsets().unwrap_err()).contains("\"offsets\" is missing"));
        for (body, says) in [
            (&br#"{"max": 1"#[..], "not JSON"),
            (b"[1]", "JSON object"),
            (br#"{"maximum": 1}"#, "unknown field \"maximum\""),
            (br#"{"offsets": [-1]}"#, "\"offsets\" must be an array"),
        ] {
            let m = match Fields::parse(body, allowed) {
                Err(r) => message(r),
                Ok(f) => message(f.offsets().unwrap_err()),
            };
            assert!(m.contains(says), "{m:?} lacks {says:?}");
        }
    }
}
