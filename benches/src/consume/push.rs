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
//! The HTTP is the least that talks to sluiced's admin port (HTTP/1.1,
//! answers with a length or chunked): the workspace has no HTTP client on
//! tokio, and the event stream must be read on the consumers' runtime with
//! its stop signal, which a blocking client (ureq) cannot.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::load::{Counter, BATCH};

/// Longest a connection, an answer or the final sync may take.
const WAIT: Duration = Duration::from_secs(30);
/// A binary frame's header before the payload (offset first, u64 LE).
const HEADER: usize = 40;
/// Bytes read from an event stream at most at once.
const READ: usize = 64 << 10;

/// Where a group's push routes are.
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
}

async fn tcp(admin: SocketAddr) -> Result<TcpStream, String> {
    let s = timeout(WAIT, TcpStream::connect(admin))
        .await
        .map_err(|_| format!("no connection to {admin} within {WAIT:?}"))?
        .map_err(|e| format!("cannot connect to the admin port {admin}: {e}"))?;
    // Acks are small and wanted at once.
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
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
            tokio_tungstenite::client_async(req, tcp(to.admin).await?),
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

/// One HTTP/1.1 connection to the admin port: one request at a time.
struct Http {
    io: BufReader<TcpStream>,
    host: String,
    auth: String,
}

/// How an answer's body comes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

impl Http {
    async fn open(to: &Route) -> Result<Http, String> {
        Ok(Http {
            io: BufReader::with_capacity(READ, tcp(to.admin).await?),
            host: to.admin.to_string(),
            auth: match &to.token {
                Some(t) => format!("authorization: Bearer {t}\r\n"),
                None => String::new(),
            },
        })
    }

    /// Sends a request; reads the answer's status and headers.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Framing), String> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{}content-length: {}\r\n\r\n",
            self.host,
            self.auth,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let io = |e: std::io::Error| format!("the admin port: {e}");
        self.io.get_mut().write_all(&req).await.map_err(io)?;
        let mut line = String::new();
        self.line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
        let mut framing = Framing::Close;
        loop {
            self.line(&mut line).await?;
            let Some((name, value)) = line.split_once(':') else {
                break; // the empty line that ends the head
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse()
                    .map_err(|_| format!("a bad length {value:?}"))?;
                framing = Framing::Length(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                framing = Framing::Chunked;
            }
        }
        Ok((status, framing))
    }

    async fn line(&mut self, line: &mut String) -> Result<(), String> {
        line.clear();
        match self.io.read_line(line).await {
            Ok(0) => Err("the admin port closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("the admin port: {e}")),
        }
    }

    /// A whole (small) body: an ack's answer, a refusal.
    async fn body(&mut self, framing: Framing) -> Result<Vec<u8>, String> {
        let io = |e: std::io::Error| format!("the admin port: {e}");
        let mut out = Vec::new();
        match framing {
            Framing::Length(n) => {
                out.resize(n, 0);
                self.io.read_exact(&mut out).await.map_err(io)?;
            }
            Framing::Chunked => {
                let (mut raw, mut d) = (Vec::new(), Dechunk::default());
                while !d.done {
                    raw.reserve(4096);
                    if self.io.read_buf(&mut raw).await.map_err(io)? == 0 {
                        return Err("the admin port closed the connection".into());
                    }
                    d.feed(&mut raw, &mut out)?;
                }
            }
            Framing::Close => {
                self.io.read_to_end(&mut out).await.map_err(io)?;
            }
        }
        Ok(out)
    }

    /// A request whose answer must be 200; its body.
    async fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let call = async {
            let (status, framing) = self.send(method, path, body).await?;
            let answer = self.body(framing).await?;
            match status {
                200 => Ok(answer),
                s => Err(format!(
                    "sluiced answered {s} to {method} {path}: {}",
                    String::from_utf8_lossy(&answer)
                )),
            }
        };
        timeout(WAIT, call)
            .await
            .map_err(|_| format!("no answer to {method} {path} within 30 s"))?
    }
}

/// A chunked body's decoder (RFC 9112 §7.1), fed whatever the socket gave:
/// nothing waits inside it, so a partial size line just stays for the
/// next read.
#[derive(Default)]
struct Dechunk {
    /// Bytes of the current chunk's data still to come.
    left: usize,
    /// The last chunk came: trailer lines until an empty one.
    last: bool,
    done: bool,
}

impl Dechunk {
    /// Moves the body's bytes from `raw` to `out`; what cannot be read yet
    /// stays in `raw`.
    fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
        let mut at = 0;
        while !self.done {
            if self.left > 0 {
                let n = self.left.min(raw.len() - at);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&raw[at..at + n]);
                (at, self.left) = (at + n, self.left - n);
                continue;
            }
            let Some(nl) = raw[at..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let line = String::from_utf8_lossy(&raw[at..at + nl]);
            let line = line.trim();
            at += nl + 1;
            if self.last {
                self.done = line.is_empty();
            } else if !line.is_empty() {
                // (An empty line is the CRLF after a chunk's data.)
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| format!("a bad chunk size line {line:?}"))?;
                self.left = size;
                self.last = size == 0;
            }
        }
        raw.drain(..at);
        Ok(())
    }
}

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

/// A group's member over the event stream (its head read: joined), and
/// the connection its acks go over.
pub struct Sse {
    events: Http,
    framing: Framing,
    acks: Http,
    ack_path: String,
}

impl Sse {
    /// Opens the event stream with `max_outstanding` = the credit's
    /// messages (and its bytes), and the acks' connection.
    pub async fn connect(to: &Route, (messages, bytes): (u32, u64)) -> Result<Sse, String> {
        let mut events = Http::open(to).await?;
        let path = format!(
            "{}?start=earliest&max_outstanding={messages}&max_bytes={bytes}",
            to.path("events")
        );
        let (status, framing) = timeout(WAIT, events.send("GET", &path, b""))
            .await
            .map_err(|_| "no answer to the event stream's request within 30 s")??;
        if status != 200 {
            let body = events.body(framing).await.unwrap_or_default();
            return Err(format!(
                "sluiced answered {status} to GET {path}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(Sse {
            events,
            framing,
            acks: Http::open(to).await?,
            ack_path: to.path("ack"),
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
    let Sse {
        mut events,
        framing,
        acks,
        ack_path,
    } = link;
    let (tx, rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_loop(acks, ack_path, rx));
    let read = read_events(&mut events, framing, count, stop, tx).await;
    let acked = acker.await.map_err(|e| e.to_string()).and_then(|r| r);
    // The acker's failure is the cause of the reader's, if both failed.
    acked.and(read)
}

async fn read_events(
    http: &mut Http,
    framing: Framing,
    count: &mut Counter,
    mut stop: watch::Receiver<bool>,
    acks: mpsc::UnboundedSender<Vec<u64>>,
) -> Result<(), String> {
    let (mut raw, mut text) = (Vec::with_capacity(READ), Vec::with_capacity(READ));
    let mut dechunk = (framing == Framing::Chunked).then(Dechunk::default);
    let mut events = Events::default();
    let mut payload = Vec::new();
    loop {
        raw.reserve(READ);
        // One read, of whatever has arrived, is one batch: nothing below
        // waits, so the acks of what was read go out before the next wait.
        let n = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            n = http.io.read_buf(&mut raw) => n.map_err(|e| format!("the event stream: {e}"))?,
        };
        if n == 0 {
            return Err("sluiced ended the event stream".into());
        }
        match &mut dechunk {
            Some(d) => d.feed(&mut raw, &mut text)?,
            None => text.append(&mut raw),
        }
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
    mut http: Http,
    path: String,
    mut rx: mpsc::UnboundedReceiver<Vec<u64>>,
) -> Result<(), String> {
    let mut body = String::new();
    while let Some(mut offsets) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            offsets.extend(more);
        }
        body.clear();
        body.push_str("{\"offsets\":[");
        for (i, o) in offsets.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&o.to_string());
        }
        body.push_str("]}");
        http.call("POST", &path, body.as_bytes()).await?;
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
    fn a_chunked_body_is_decoded_in_any_pieces() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n\n\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let (mut d, mut out) = (Dechunk::default(), Vec::new());
            let mut raw = wire[..cut].to_vec();
            d.feed(&mut raw, &mut out).unwrap();
            raw.extend_from_slice(&wire[cut..]);
            d.feed(&mut raw, &mut out).unwrap();
            assert_eq!(out, b"hello\n", "cut at {cut}");
            assert!(d.done && raw.is_empty(), "cut at {cut}");
        }
        let mut raw = b"zz\r\n".to_vec();
        assert!(Dechunk::default().feed(&mut raw, &mut Vec::new()).is_err());
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
