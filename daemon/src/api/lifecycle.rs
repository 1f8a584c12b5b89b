//! A stream's lifecycle, for operators (admin principals): create one now
//! (`PUT /streams/{stream}`, also when `streams.auto_create` is off),
//! delete one (`DELETE /streams/{stream}`: the stream, its dead-letter
//! stream, its groups' state and its files) and purge one (`POST
//! /streams/{stream}/purge`: every record, keeping the idempotence table).
//! Delete and purge refuse a stream in use (409 naming what uses it:
//! producer sessions, groups with members or a backlog, forwards) unless
//! `?force=true`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::caller::{Admin, OnStream};
use super::error::{Answer, ApiError};
use super::openapi::{Conflict, StreamRefusals, Unavailable};
use super::{existing_stream, stream_exists, AdminState, ApiQuery, StreamPath};

/// What a lifecycle route did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct StreamChange {
    pub stream: String,
    /// `created`, `deleted` or `purged`.
    pub done: String,
    /// The stream's first offset and end after the change (none once
    /// deleted).
    #[serde(default)]
    pub first_offset: Option<u64>,
    #[serde(default)]
    pub durable_end: Option<u64>,
    /// Records the purge removed.
    #[serde(default)]
    pub removed: u64,
    /// What was using the stream when a forced delete or purge went ahead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forced_past: Vec<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ForceQuery {
    /// Go ahead although producers, consumer groups or forwards use the
    /// stream.
    #[serde(default)]
    force: bool,
}

/// Creates an empty stream now.
#[utoipa::path(
    put,
    path = "/streams/{stream}",
    tag = "streams",
    params(StreamPath),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The stream, created empty", body = StreamChange),
        StreamRefusals,
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn create_stream(on: OnStream<Admin>, State(s): State<Arc<AdminState>>) -> Answer {
    let spool = s.spool.clone();
    let name = on.stream.clone();
    let created = tokio::task::spawn_blocking(move || spool.create(&name))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::spool)?;
    let change = StreamChange {
        stream: on.stream,
        done: "created".into(),
        first_offset: Some(created.first_offset()),
        durable_end: Some(created.durable_end()),
        removed: 0,
        forced_past: Vec::new(),
    };
    Ok((StatusCode::CREATED, Json(change)).into_response())
}

/// Deletes a stream: its records, its dead-letter stream, its consumer
/// groups' state, its files. The name makes a fresh stream afterwards.
#[utoipa::path(
    delete,
    path = "/streams/{stream}",
    tag = "streams",
    params(StreamPath, ForceQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stream is gone", body = StreamChange),
        StreamRefusals,
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn delete_stream(
    on: OnStream<Admin>,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> Answer {
    let name = on.stream.clone();
    stream_exists(&s, &name)?;
    let forced_past = in_use(&s, &name, q.force)?;
    let spool = s.spool.clone();
    let n = name.clone();
    let existed = s
        .consumers
        .retire_stream(&name, move || spool.delete(&n))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map_err(ApiError::spool)?;
    if !existed {
        return Err(ApiError::not_found(format!("no stream {name:?}")));
    }
    Ok(Json(StreamChange {
        stream: name,
        done: "deleted".into(),
        first_offset: None,
        durable_end: None,
        removed: 0,
        forced_past,
    })
    .into_response())
}

/// Removes every record of a stream; offsets go on from its end, and the
/// idempotence table stays (a producer's resend is still a duplicate).
#[utoipa::path(
    post,
    path = "/streams/{stream}/purge",
    tag = "streams",
    params(StreamPath, ForceQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stream is empty; its first offset is its end", body = StreamChange),
        StreamRefusals,
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn purge_stream(
    on: OnStream<Admin>,
    State(s): State<Arc<AdminState>>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> Answer {
    let stream = existing_stream(&s, &on.stream)?;
    let forced_past = in_use(&s, &on.stream, q.force)?;
    let before = stream.first_offset();
    let first = stream
        .purge()
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::spool)?;
    Ok(Json(StreamChange {
        stream: on.stream,
        done: "purged".into(),
        first_offset: Some(first),
        durable_end: Some(stream.durable_end()),
        removed: first.saturating_sub(before),
        forced_past,
    })
    .into_response())
}

/// What uses `stream` now: producer sessions, groups with members or a
/// backlog, forwards (a forward is group `forward.<name>`). A 409 naming
/// them unless `force`; with it, the list (for the answer and the log).
fn in_use(s: &AdminState, stream: &str, force: bool) -> Result<Vec<String>, ApiError> {
    let mut busy = Vec::new();
    let producers: Vec<String> = s
        .sessions
        .list()
        .into_iter()
        .filter(|v| v.stream == stream)
        .map(|v| v.producer.to_string())
        .collect();
    if !producers.is_empty() {
        busy.push(format!(
            "{} producer session(s) connected (producer {})",
            producers.len(),
            producers.join(", ")
        ));
    }
    for g in s
        .consumers
        .stats()
        .into_iter()
        .filter(|g| g.stream == stream)
    {
        if let Some(forward) = g.group.strip_prefix("forward.") {
            busy.push(format!("forward {forward:?} (group {})", g.group));
        } else if g.members > 0 {
            busy.push(format!("group {:?} has {} member(s)", g.group, g.members));
        } else if g.backlog_messages > 0 {
            busy.push(format!(
                "group {:?} has a backlog of {} message(s)",
                g.group, g.backlog_messages
            ));
        }
    }
    if busy.is_empty() || force {
        if !busy.is_empty() {
            tracing::warn!(stream, in_use = %busy.join("; "), "forced past what uses the stream");
        }
        return Ok(busy);
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "stream {stream:?} is in use: {}; stop them first, or force it (--force, ?force=true)",
            busy.join("; ")
        ),
    ))
}
