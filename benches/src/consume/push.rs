//! The consumers over the admin port's push routes (daemon/HTTP.md, "Push:
//! WebSocket and server-sent events"), next to the QUIC one (load.rs):
//!
//! - **ws**: binary frames in (a 40-byte header, then the payload), acks
//!   out on the same socket as `[first, last]` ranges, one message per
//!   batch; a `sync` at the end makes them durable;
//! - **sse**: the event stream on one connection, acks as `POST .../ack`
//!   on a second, kept alive, by a task of their own: each POST is answered
//!   once durable, and what arrives meanwhile goes in the next one.
//!
//! Both over hyper's HTTP/1.1 client connections ([`crate::http`]), made
//! on the consumers' runtime: the event stream's body is read there frame
//! by frame, until the stop signal.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Method;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::load::{Counter, BATCH};
use crate::http::{self, Connection};

/// Longest a connection, an answer or the final sync may take.
const WAIT: Duration = Duration::from_secs(30);
/// A binary frame's header before the payload (offset first, u64 LE).
const HEADER: usize = 40;

/// Where a group's push routes are.
#[derive(Clone)]
pub struct Route {
    pub admin: SocketAddr,
    pub stream: String,
    pub group: String,
    pub token: Option<String>,
}

impl Route {
    /// The names are this run's own (letters, digits, dashes): no escaping.
    fn path(&self, what: &str) -> String {
        format!("/streams/{}/groups/{}/{what}", self.stream, self.group)
    }

    /// A request to `path`, with the token.
    fn request(&self, method: Method, path: &str, body: Bytes) -> hyper::Request<Full<Bytes>> {
        http::request(method, self.admin, path, self.token.as_deref())
            .body(Full::new(body))
            .expect("a path of our own")
    }
}

/// A connection to the admin port (`open`: [`http::tcp`] or
/// [`http::connect`]), within [`WAIT`].
async fn open<T, F>(admin: SocketAddr, open: impl FnOnce(SocketAddr) -> F) -> Result<T, String>
where
    F: Future<Output = io::Result<T>>,
{
    timeout(WAIT, open(admin))
        .await
        .map_err(|_| format!("no connection to {admin} within {WAIT:?}"))?
        .map_err(|e| format!("cannot connect to the admin port {admin}: {e}"))
}

// ---- WebSocket ----

/// A group's member over the WebSocket route, subscribed.
pub struct Ws {
    ws: WebSocketStream<TcpStream>,
}

impl Ws {
    /// Upgrades, with the credit `(messages, bytes)`, and waits for the
    /// `subscribed` frame (the member has joined).
    pub async fn connect(to: &Route, (messages, bytes): (u32, u64)) -> Result<Ws, String> {
        let url = format!(
            "ws://{}{}?start=earliest&format=binary&max_messages={messages}&max_bytes={bytes}",
            to.admin,
            to.path("ws")
        );
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(t) = &to.token {
            let v = format!("Bearer {t}").parse().map_err(|_| "a bad token")?;
            req.headers_mut().insert("authorization", v);
        }
        let (mut ws, _) = timeout(
            WAIT,
            tokio_tungstenite::client_async(req, open(to.admin, http::tcp).await?),
        )
        .await
        .map_err(|_| "no WebSocket upgrade within 30 s")?
        .map_err(|e| format!("the WebSocket upgrade: {e}"))?;
        match timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"subscribed\"") => Ok(Ws { ws }),
            other => Err(format!("sluiced did not subscribe us: {other:?}")),
        }
    }
}

/// Offsets to ack as `[first, last]` ranges: a group's only member gets
/// consecutive offsets, so a batch's ack is mostly one range.
#[derive(Default)]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    fn push(&mut self, offset: u64) {
        match self.0.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(offset) => *last = offset,
            _ => self.0.push((offset, offset)),
        }
    }

    /// `{"ack":[[first,last],...]}`, and empties; `None` if there is none.
    fn take_ack(&mut self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .0
            .drain(..)
            .map(|(a, b)| format!("[{a},{b}]"))
            .collect();
        Some(format!("{{\"ack\":[{}]}}", list.join(",")))
    }
}

/// Receives until `stop`, acking each batch; then a sync (the acks are
/// durable once it is answered) and a close.
pub async fn run_ws(
    link: Ws,
    count: &mut Counter,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut ws = link.ws;
    let mut frames = Vec::with_capacity(BATCH);
    let mut acks = Ranges::default();
    let fail = |e| format!("the WebSocket failed: {e}");
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            m = ws.next() => m,
        };
        frames.push(first);
        // And what has arrived already, without waiting: one batch, one ack.
        while frames.len() < BATCH {
            match ws.next().now_or_never() {
                Some(m) => frames.push(m),
                None => break,
            }
        }
        let now = count.now();
        for m in frames.drain(..) {
            match m.ok_or("sluiced ended the WebSocket")?.map_err(fail)? {
                Message::Binary(b) if b.len() >= HEADER => {
                    let offset = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                    count.add(offset, &b[HEADER..], now);
                    acks.push(offset);
                }
                Message::Text(t) if t.contains("\"error\"") => return Err(format!("sluiced: {t}")),
                Message::Close(f) => return Err(format!("sluiced closed the WebSocket: {f:?}")),
                Message::Binary(b) => return Err(format!("a binary frame of {} bytes", b.len())),
                // Pings are answered by tungstenite as it reads.
                _ => {}
            }
        }
        count.flush();
        if let Some(a) = acks.take_ack() {
            ws.send(Message::Text(a.into())).await.map_err(fail)?;
        }
    }
    ws.send(Message::Text(r#"{"sync":1}"#.into()))
        .await
        .map_err(fail)?;
    let synced = timeout(WAIT, async {
        // Deliveries that come meanwhile are not counted, nor acked: they
        // go back to the group when we leave.
        while let Some(m) = ws.next().await {
            match m.map_err(fail)? {
                Message::Text(t) if t.contains("\"synced\"") => return Ok(()),
                Message::Text(t) if t.contains("\"error\"") => return Err(format!("sluiced: {t}")),
                Message::Close(f) => return Err(format!("sluiced closed the WebSocket: {f:?}")),
                _ => {}
            }
        }
        Err("the WebSocket ended before the acks were durable".to_owned())
    })
    .await
    .map_err(|_| "the acks were not durable within 30 s".to_owned())?;
    let _ = timeout(WAIT, ws.close(None)).await;
    synced
}

// ---- server-sent events ----

/// Server-sent events from a body's bytes: the `data` of each event (its
/// lines joined by `\n`); comments, `id` and other fields are skipped.
#[derive(Default)]
struct Events {
    data: String,
    has_data: bool,
}

impl Events {
    /// Calls `each` with the data of every event that `text` completes,
    /// leaving in `text` what follows its last whole line.
    fn feed(
        &mut self,
        text: &mut Vec<u8>,
        mut each: impl FnMut(&str) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut at = 0;
        while let Some(nl) = text[at..].iter().position(|&b| b == b'\n') {
            let line = &text[at..at + nl];
            at += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if self.has_data {
                    each(&self.data)?;
                }
                self.data.clear();
                self.has_data = false;
            } else if let Some(d) = line.strip_prefix(b"data:") {
                let d = d.strip_prefix(b" ").unwrap_or(d);
                if self.has_data {
                    self.data.push('\n');
                }
                self.data
                    .push_str(std::str::from_utf8(d).map_err(|_| "an event not in UTF-8")?);
                self.has_data = true;
            }
        }
        text.drain(..at);
        Ok(())
    }
}

/// The fields of a delivery's event that are counted.
#[derive(serde::Deserialize)]
struct Event<'a> {
    offset: u64,
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

/// Sends `req` on `conn`; the answer's body if it is 200, else the error
/// (with the body).
async fn call(conn: &mut Connection, req: hyper::Request<Full<Bytes>>) -> Result<Incoming, String> {
    let what = format!("{} {}", req.method(), req.uri());
    let fail = |e: hyper::Error| format!("the admin port: {e}");
    conn.ready().await.map_err(fail)?;
    let answer = conn.send_request(req).await.map_err(fail)?;
    let status = answer.status().as_u16();
    if status == 200 {
        return Ok(answer.into_body());
    }
    let body = answer.into_body().collect().await.map(|b| b.to_bytes());
    Err(format!(
        "sluiced answered {status} to {what}: {}",
        String::from_utf8_lossy(&body.unwrap_or_default())
    ))
}

/// A group's member over the event stream (its head read: joined), and
/// the connection its acks go over.
pub struct Sse {
    events: Incoming,
    acks: Connection,
    to: Route,
}

impl Sse {
    /// Opens the event stream with `max_outstanding` = the credit's
    /// messages (and its bytes), and the acks' connection.
    pub async fn connect(to: &Route, (messages, bytes): (u32, u64)) -> Result<Sse, String> {
        let mut conn = open(to.admin, http::connect).await?;
        let path = format!(
            "{}?start=earliest&max_outstanding={messages}&max_bytes={bytes}",
            to.path("events")
        );
        let get = to.request(Method::GET, &path, Bytes::new());
        // (`conn` may go: the connection ends with the body.)
        let events = timeout(WAIT, call(&mut conn, get))
            .await
            .map_err(|_| "no answer to the event stream's request within 30 s")??;
        Ok(Sse {
            events,
            acks: open(to.admin, http::connect).await?,
            to: to.clone(),
        })
    }
}

/// Receives until `stop`, handing each batch's offsets to the acker; then
/// waits for the acker's last POST (all acks durable) and leaves.
pub async fn run_sse(
    link: Sse,
    count: &mut Counter,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let Sse { events, acks, to } = link;
    let (tx, rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_loop(acks, to, rx));
    let read = read_events(events, count, stop, tx).await;
    let acked = acker.await.map_err(|e| e.to_string()).and_then(|r| r);
    // The acker's failure is the cause of the reader's, if both failed.
    acked.and(read)
}

async fn read_events(
    mut body: Incoming,
    count: &mut Counter,
    mut stop: watch::Receiver<bool>,
    acks: mpsc::UnboundedSender<Vec<u64>>,
) -> Result<(), String> {
    let mut text = Vec::new();
    let mut events = Events::default();
    let mut payload = Vec::new();
    loop {
        // One frame, of what has arrived, is one batch: nothing below
        // waits, so the acks of what was read go out before the next wait.
        let frame = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            f = body.frame() => f.ok_or("sluiced ended the event stream")?,
        };
        let frame = frame.map_err(|e| format!("the event stream: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        text.extend_from_slice(&data);
        let now = count.now();
        let mut offsets = Vec::new();
        events.feed(&mut text, |data| {
            let e: Event = serde_json::from_str(data).map_err(|e| format!("an event: {e}"))?;
            payload.clear();
            base64::engine::general_purpose::STANDARD
                .decode_vec(e.payload.as_bytes(), &mut payload)
                .map_err(|e| format!("an event's payload: {e}"))?;
            count.add(e.offset, &payload, now);
            offsets.push(e.offset);
            Ok(())
        })?;
        count.flush();
        if !offsets.is_empty() && acks.send(offsets).is_err() {
            return Err("the acks stopped".into());
        }
    }
}

/// POSTs the offsets handed over, all that waited in one request, each
/// answered once durable; returns when the reader is done and all are.
async fn ack_loop(
    mut conn: Connection,
    to: Route,
    mut rx: mpsc::UnboundedReceiver<Vec<u64>>,
) -> Result<(), String> {
    let path = to.path("ack");
    while let Some(mut offsets) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            offsets.extend(more);
        }
        let body = serde_json::json!({ "offsets": offsets }).to_string();
        let post = to.request(Method::POST, &path, body.into());
        let acked = async {
            let answer = call(&mut conn, post).await?;
            answer
                .collect()
                .await
                .map_err(|e| format!("the admin port: {e}"))
        };
        timeout(WAIT, acked)
            .await
            .map_err(|_| format!("no answer to POST {path} within 30 s"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events' data one feed completes.
    fn feed(e: &mut Events, text: &mut Vec<u8>) -> Vec<String> {
        let mut got = Vec::new();
        e.feed(text, |d| {
            got.push(d.to_owned());
            Ok(())
        })
        .unwrap();
        got
    }

    #[test]
    fn events_are_cut_at_blank_lines_across_reads() {
        let mut e = Events::default();
        let mut text =
            b": heartbeat\n\nid: 0\ndata: {\"offset\":0}\n\nid: 1\r\ndata: a\r\nda".to_vec();
        assert_eq!(feed(&mut e, &mut text), ["{\"offset\":0}"]);
        // The part of a line waits for the rest.
        assert_eq!(text, b"da");
        text.extend_from_slice(b"ta:b\r\n\r\n: x\n\n");
        assert_eq!(feed(&mut e, &mut text), ["a\nb"]);
        assert!(text.is_empty());
    }

    #[test]
    fn acks_are_ranges_of_consecutive_offsets() {
        let mut r = Ranges::default();
        assert_eq!(r.take_ack(), None);
        for o in [3, 4, 5, 9, 7, 8] {
            r.push(o);
        }
        assert_eq!(r.take_ack().unwrap(), r#"{"ack":[[3,5],[9,9],[7,8]]}"#);
        assert_eq!(r.take_ack(), None);
    }
}
