//! `POST /streams/{stream}/messages`: publishing over HTTP, for clients in
//! any language. The body is the message (any bytes), or, by its content
//! type, a batch stored durably together:
//!
//! | `Content-Type` | body |
//! |---|---|
//! | none, or any other than below | one message: the body's bytes |
//! | `application/x-ndjson` | one message per line: `{"data": "<UTF-8 text>"}` or `{"base64": "<bytes, standard base64>"}` |
//! | `application/vnd.sluice.frames` | messages as frames: a u32 big-endian length, then that many bytes, repeated |
//! | `multipart/form-data`, `application/x-www-form-urlencoded` | refused (415): a form is not a message |
//!
//! The answer comes once the messages are durable (the spool's fdatasync
//! rule); see [`crate::publish`] for the three ways a request is told
//! from its retries (headers `Sluice-Producer-Id` + `Sluice-Seq`, or
//! `Idempotency-Key`, or neither). daemon/HTTP.md documents it with
//! examples.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::caller::{OnStream, Publish};
use super::error::{Answer, ApiError};
use super::openapi::{Conflict, KeyUsed, NotAMessage, StreamRefusals, TooLarge, Unavailable};
use super::{AdminState, StreamPath};
use crate::publish::{batch, Identity, Placed, Plane, PublishError, Published};

pub const PRODUCER_HEADER: &str = "sluice-producer-id";
pub const SEQ_HEADER: &str = "sluice-seq";
pub const KEY_HEADER: &str = "idempotency-key";
use batch::{FRAMES, NDJSON};

/// Largest request body: one message of the largest size, or a batch of
/// that much (NDJSON's base64 takes a third more).
const MAX_BODY: usize = 16 << 20;
const MAX_NDJSON_BODY: usize = MAX_BODY / 3 * 4 + (1 << 20);

/// One message of the answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct MessageAnswer {
    /// Where it is stored (`null`: a duplicate of a producer's seq, stored
    /// before).
    pub offset: Option<u64>,
    pub seq: u64,
    pub duplicate: bool,
}

/// The answer to a one-message request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct PublishAnswer {
    pub stream: String,
    /// Where it is stored (`null`: a duplicate of a producer's seq, stored
    /// before).
    pub offset: Option<u64>,
    /// The producer id it is stored under (the daemon's own for a request
    /// without producer headers).
    pub producer: u64,
    pub seq: u64,
    /// A retry: nothing was stored; the rest is the original answer.
    pub duplicate: bool,
}

/// The answer to a batch.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct BatchAnswer {
    pub stream: String,
    pub producer: u64,
    /// Every message was a duplicate (a retry).
    pub duplicate: bool,
    pub messages: Vec<MessageAnswer>,
}

/// What the document says a publish answers: one message's answer, or a
/// batch's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only: the handler makes the two apart
enum Published200 {
    One(PublishAnswer),
    Batch(BatchAnswer),
}

/// How a request is told from its retries (one way or none).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // a schema only: `identity` reads the headers
struct PublishHeaders {
    /// Names this request: a retry with the same key (and body) stores
    /// nothing and gets the original answer; with another body, 422.
    /// Kept `spool.idempotency_window` (24 h).
    #[serde(rename = "Idempotency-Key")]
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$",
        example = "order-42"
    )]
    key: Option<String>,
    /// With `Sluice-Seq`: the producer's id, in the fast path's
    /// idempotence table.
    #[serde(rename = "Sluice-Producer-Id")]
    #[param(minimum = 1)]
    producer: Option<u64>,
    /// The seq of the request's first message (the others follow on); at
    /// or below the producer's highest stored, a duplicate.
    #[serde(rename = "Sluice-Seq")]
    #[param(minimum = 1)]
    seq: Option<u64>,
}

enum Form {
    One,
    Ndjson,
    Frames,
}

#[utoipa::path(
    post,
    path = "/streams/{stream}/messages",
    tag = "publish",
    params(StreamPath, PublishHeaders),
    request_body(
        description = "The message's bytes (any content type but the two batch forms and forms); \
            or a batch: NDJSON lines `{\"data\": text}` / `{\"base64\": bytes}`, or frames \
            (u32 big-endian length, bytes). At most 16 MiB of messages, 10,000 messages.",
        content(
            (Vec<u8> = "application/octet-stream"),
            (String = "text/plain"),
            (String = "application/x-ndjson"),
            (Vec<u8> = "application/vnd.sluice.frames"),
        ),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored and durable (or a retry: `duplicate`, the original answer, `Idempotent-Replayed: true`)", body = Published200),
        StreamRefusals,
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 415, response = NotAMessage),
        (status = 422, response = KeyUsed),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn publish(
    on: OnStream<Publish>,
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let form = form(&headers)?;
    let identity = identity(&headers)?;
    let limit = match form {
        Form::Ndjson => MAX_NDJSON_BODY,
        _ => MAX_BODY,
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = length.filter(|&l| l > limit as u64) {
        return Err(too_large(len));
    }
    // Room for the body before it is read (a chunked one may take all).
    let reserved = s
        .publisher
        .reserve(length.unwrap_or(limit as u64))
        .map_err(refusal)?;
    let body = to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            too_large(limit as u64 + 1)
        } else {
            ApiError::bad(format!("reading the body: {e}"))
        }
    })?;
    let identity = match identity {
        Keyed::Key(key) => Identity::Key {
            key,
            hash: sha256(&body),
        },
        Keyed::Other(i) => i,
    };
    let payloads = match form {
        Form::One => vec![body],
        Form::Ndjson => batch::ndjson(&body).map_err(ApiError::bad)?,
        Form::Frames => batch::frames(body).map_err(ApiError::bad)?,
    };
    let one = matches!(form, Form::One);
    let published = s
        .publisher
        .publish(reserved, &on.stream, identity, payloads, Plane::Http)
        .await
        .map_err(refusal)?;
    Ok(answer(&on.stream, one, published))
}

fn too_large(len: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a body of {len} bytes or more; a message may be at most {MAX_BODY} bytes, a request at most {MAX_BODY} bytes of messages"),
    )
}

fn refusal(e: PublishError) -> ApiError {
    let status = match &e {
        PublishError::NoStream(_) => StatusCode::NOT_FOUND,
        PublishError::Refused(_) => StatusCode::CONFLICT,
        PublishError::Busy(_) => return ApiError::busy(e.to_string(), 1),
        PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::KeyConflict => StatusCode::UNPROCESSABLE_ENTITY,
        PublishError::Bad(_) => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

fn answer(stream: &str, one: bool, p: Published) -> Response {
    let replayed = p.replayed;
    let mut r = if one && p.messages.len() == 1 {
        let m = &p.messages[0];
        Json(PublishAnswer {
            stream: stream.to_owned(),
            offset: m.offset,
            producer: p.producer,
            seq: m.seq,
            duplicate: m.duplicate,
        })
        .into_response()
    } else {
        let messages: Vec<MessageAnswer> = p
            .messages
            .iter()
            .map(|m: &Placed| MessageAnswer {
                offset: m.offset,
                seq: m.seq,
                duplicate: m.duplicate,
            })
            .collect();
        Json(BatchAnswer {
            stream: stream.to_owned(),
            producer: p.producer,
            duplicate: messages.iter().all(|m| m.duplicate),
            messages,
        })
        .into_response()
    };
    if replayed {
        // Stripe's name for it: this answer is the original one.
        r.headers_mut().insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    r
}

/// What the content type says the body is.
fn form(headers: &HeaderMap) -> Result<Form, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Form::One);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::bad("Content-Type is not text"))?;
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Ok(match essence.as_str() {
        NDJSON => Form::Ndjson,
        FRAMES => Form::Frames,
        "multipart/form-data" | "application/x-www-form-urlencoded" => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {essence}: a form is not a message; send the message's bytes as the body (any other type), or a batch as {NDJSON} or {FRAMES}"),
            ))
        }
        _ => Form::One,
    })
}

enum Keyed {
    Key(String),
    Other(Identity),
}

/// How the request is told from its retries, from its headers.
fn identity(headers: &HeaderMap) -> Result<Keyed, ApiError> {
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::bad(format!("{name} is not visible ASCII")))
            })
            .transpose()
    };
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        text(name)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad(format!("{name}: {v:?} is not an unsigned 64-bit integer"))
                })
            })
            .transpose()
    };
    let key = text(KEY_HEADER)?;
    let producer = number(PRODUCER_HEADER)?;
    let seq = number(SEQ_HEADER)?;
    match (key, producer, seq) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ApiError::bad(
            "Idempotency-Key and Sluice-Producer-Id/Sluice-Seq both given: use one or the other",
        )),
        (Some(key), None, None) => {
            crate::publish::check_key(key).map_err(ApiError::bad)?;
            Ok(Keyed::Key(key.to_owned()))
        }
        (None, Some(0), _) => Err(ApiError::bad("Sluice-Producer-Id: 0 is not a producer id")),
        (None, _, Some(0)) => Err(ApiError::bad("Sluice-Seq: seqs start at 1")),
        (None, Some(id), Some(seq)) => Ok(Keyed::Other(Identity::Producer { id, seq })),
        (None, Some(_), None) => Err(ApiError::bad(
            "Sluice-Producer-Id without Sluice-Seq: give both",
        )),
        (None, None, Some(_)) => Err(ApiError::bad(
            "Sluice-Seq without Sluice-Producer-Id: give both",
        )),
        (None, None, None) => Ok(Keyed::Other(Identity::None)),
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}
