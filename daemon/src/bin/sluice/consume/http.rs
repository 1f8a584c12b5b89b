//! `sluice consume --transport ws|sse`: the same consumer over the admin
//! port's push routes instead of a QUIC session. ws: deliveries, acks,
//! nacks and credit over one WebSocket (daemon/HTTP.md, "WebSocket");
//! sse: deliveries as server-sent events read by a thread (ureq), acks and
//! nacks as HTTP requests, each durable when it returns.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_transport::client::StartAt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{exec, render_fields, stop_signal, Args, Fields};
use crate::Res;

type Error = Box<dyn std::error::Error>;

/// An event stream is closed by us when nothing (not even the daemon's
/// heartbeat, every 15 s) came for this long.
const SSE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One delivery as the push routes send it (the fetch route's fields).
#[derive(serde::Deserialize)]
struct Msg {
    offset: u64,
    delivery: u32,
    timestamp_us: u64,
    producer: u64,
    seq: u64,
    payload: String,
}

pub fn run(a: &Args) -> Res {
    let token = a.connect.token()?;
    // Not more out with us than we mean to handle.
    let window = match a.count {
        Some(n) => a.max_messages.min(n.clamp(1, u32::MAX as u64) as u32),
        None => a.max_messages,
    };
    // The event stream is read with a read timeout (the daemon's
    // heartbeats keep it alive); acks and nacks have their own.
    let admin = crate::admin::Admin::with_agent(&a.admin, a.admin_cert.path.as_deref(), |b| {
        b.timeout_connect(Duration::from_secs(10))
            .timeout_read(SSE_READ_TIMEOUT)
    })?;
    if a.transport == "ws" && admin.is_https() {
        return Err(format!(
            "--transport ws speaks plain HTTP only, and --admin {} is HTTPS (admin.tls): \
             use --transport sse or quic",
            a.admin
        )
        .into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut link = if a.transport == "ws" {
            Link::ws(a, &admin, token.as_deref(), window).await?
        } else {
            Link::sse(a, admin, token, window)
        };
        let result = consume(a, &mut link).await;
        // The acks made so far durable (ws; sse's are at each answer), then
        // leave: what was not acked goes to other members.
        let finished = link.finish().await;
        result.and(finished)
    })
}

/// The query naming where a new group starts.
fn start_param(s: StartAt) -> String {
    match s {
        StartAt::Earliest => "earliest".into(),
        StartAt::Latest => "latest".into(),
        StartAt::Offset(n) => format!("offset:{n}"),
        StartAt::Time(us) => format!(
            "time:{}",
            humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(us))
        ),
    }
}

/// The path (and query) of the group's route `what`.
fn route(a: &Args, what: &str, query: &str) -> String {
    format!(
        "/streams/{}/groups/{}/{what}?{query}",
        a.stream.name(),
        a.group
    )
}

/// The daemon's `{"error": ...}`, or the body as it is.
fn error_text(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

enum Link {
    Ws {
        ws: Box<WebSocketStream<MaybeTlsStream<TcpStream>>>,
        max_bytes: u64,
        /// Deliveries read while a command ran (within the window).
        early: std::collections::VecDeque<Msg>,
    },
    Sse {
        events: mpsc::Receiver<Result<Msg, String>>,
        /// `http(s)://HOST:PORT`.
        admin: String,
        agent: ureq::Agent,
        path: String,
        token: Option<String>,
    },
}

impl Link {
    async fn ws(
        a: &Args,
        admin: &crate::admin::Admin,
        token: Option<&str>,
        window: u32,
    ) -> Result<Link, Error> {
        let query = format!(
            "start={}&max_messages={window}&max_bytes={}",
            start_param(a.start),
            a.max_bytes
        );
        // http://HOST:PORT → ws://HOST:PORT (run() refused https).
        let base = admin.base.strip_prefix("http://").unwrap_or(&admin.base);
        let mut req = format!("ws://{base}{}", route(a, "ws", &query)).into_client_request()?;
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let admin = &a.admin;
        let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(c) => c,
            Err(tungstenite::Error::Http(r)) => {
                let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
                return Err(format!(
                    "sluiced at {admin} answered {}: {}",
                    r.status().as_u16(),
                    error_text(&body)
                )
                .into());
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach sluiced's admin endpoint at {admin}: {e} (is it running? see --admin)"
                )
                .into())
            }
        };
        // The first frame says the subscription is on.
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"subscribed\"") => {}
            other => return Err(format!("sluiced did not subscribe us: {other:?}").into()),
        }
        Ok(Link::Ws {
            ws: Box::new(ws),
            max_bytes: a.max_bytes,
            early: Default::default(),
        })
    }

    fn sse(a: &Args, admin: crate::admin::Admin, token: Option<String>, window: u32) -> Link {
        let query = format!(
            "start={}&max_outstanding={window}&max_bytes={}",
            start_param(a.start),
            a.max_bytes
        );
        let url = format!("{}{}", admin.base, route(a, "events", &query));
        // One event at a time: the thread stops reading (and so the daemon
        // stops sending, past its window) while we work.
        let (tx, events) = mpsc::channel(1);
        let (agent, shown, t) = (admin.agent.clone(), a.admin.to_string(), token.clone());
        std::thread::spawn(move || read_events(&agent, &url, &shown, t.as_deref(), tx));
        Link::Sse {
            events,
            admin: admin.base,
            agent: admin.agent,
            path: format!("/streams/{}/groups/{}", a.stream.name(), a.group),
            token,
        }
    }

    /// The next delivery; `None` when the daemon ended the stream.
    async fn next(&mut self) -> Result<Option<Msg>, Error> {
        if let Link::Ws { early, .. } = self {
            if let Some(m) = early.pop_front() {
                return Ok(Some(m));
            }
        }
        self.read().await
    }

    /// Reads the WebSocket while a command runs, keeping what comes for
    /// later: reading is what answers the daemon's pings (a client that
    /// answers none for 45 s is taken for gone). Returns only if the
    /// link fails or ends. An event stream needs nothing (its thread
    /// reads; the daemon's comments need no answer).
    async fn keep_alive(&mut self) -> Error {
        if !matches!(self, Link::Ws { .. }) {
            return std::future::pending().await;
        }
        loop {
            match self.read().await {
                Ok(Some(m)) => {
                    if let Link::Ws { early, .. } = self {
                        early.push_back(m);
                    }
                }
                Ok(None) => return "sluiced ended the stream (is it stopping?)".into(),
                Err(e) => return e,
            }
        }
    }

    async fn read(&mut self) -> Result<Option<Msg>, Error> {
        match self {
            Link::Ws { ws, .. } => loop {
                let m = match ws.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(format!("the WebSocket failed: {e}").into()),
                    None => return Ok(None),
                };
                match m {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(&t)?;
                        if v.get("offset").is_some() {
                            return Ok(Some(serde_json::from_value(v)?));
                        }
                        if let Some(e) = v.get("error") {
                            return Err(format!("sluiced: {e}").into());
                        }
                    }
                    Message::Close(f) => {
                        return match f {
                            Some(f) if u16::from(f.code) != 1000 => Err(format!(
                                "sluiced closed the WebSocket: {} {}",
                                u16::from(f.code),
                                f.reason
                            )
                            .into()),
                            _ => Ok(None),
                        }
                    }
                    _ => {}
                }
            },
            Link::Sse { events, .. } => match events.recv().await {
                Some(Ok(m)) => Ok(Some(m)),
                Some(Err(e)) => Err(e.into()),
                None => Ok(None),
            },
        }
    }

    async fn send(&mut self, what: Value) -> Res {
        match self {
            Link::Ws { ws, .. } => {
                ws.send(Message::Text(what.to_string().into()))
                    .await
                    .map_err(|e| format!("the WebSocket failed: {e}"))?;
                Ok(())
            }
            Link::Sse {
                admin,
                agent,
                path,
                token,
                ..
            } => {
                // {"ack": [n]} → POST .../ack {"offsets": [n]}, and so on.
                let (verb, body) = match what {
                    Value::Object(mut m) => {
                        let (verb, offsets) = ["ack", "nack"]
                            .into_iter()
                            .find_map(|k| m.remove(k).map(|v| (k, v)))
                            .ok_or("only acks and nacks go over HTTP")?;
                        m.insert("offsets".into(), offsets);
                        (verb, Value::Object(m))
                    }
                    _ => return Err("only acks and nacks go over HTTP".into()),
                };
                let url = format!("{admin}{path}/{verb}");
                let (agent, token) = (agent.clone(), token.clone());
                let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
                    let mut req = agent.post(&url).timeout(Duration::from_secs(60));
                    if let Some(t) = &token {
                        req = req.set("authorization", &format!("Bearer {t}"));
                    }
                    match req.send_json(body) {
                        Ok(_) => Ok(()),
                        Err(ureq::Error::Status(code, r)) => Err(format!(
                            "sluiced answered {code} to a {verb}: {}",
                            error_text(&r.into_string().unwrap_or_default())
                        )),
                        Err(e) => Err(format!("a {verb} failed: {e}")),
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
                Ok(done?)
            }
        }
    }

    async fn ack(&mut self, offset: u64) -> Res {
        self.send(json!({ "ack": [offset] })).await
    }

    async fn nack(&mut self, offset: u64, delay: Duration) -> Res {
        self.send(json!({ "nack": [offset], "delay_ms": delay.as_millis() as u64 }))
            .await
    }

    /// A smaller window (ws; an event stream keeps the one it began with).
    async fn set_credit(&mut self, messages: u32) -> Res {
        if let Link::Ws { max_bytes, .. } = self {
            let c = json!({"credit": {"max_messages": messages, "max_bytes": *max_bytes}});
            return self.send(c).await;
        }
        Ok(())
    }

    /// ws: waits until the acks sent are durable, then closes.
    async fn finish(&mut self) -> Res {
        let Link::Ws { ws, .. } = self else {
            return Ok(());
        };
        ws.send(Message::Text(json!({"sync": 1}).to_string().into()))
            .await?;
        let synced = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = ws.next().await {
                if let Message::Text(t) = m? {
                    let v: Value = serde_json::from_str(&t)?;
                    if v.get("synced").is_some() {
                        return Ok(());
                    }
                    if let Some(e) = v.get("error") {
                        return Err(format!("sluiced: {e}").into());
                    }
                }
            }
            Err::<(), Error>("the WebSocket closed before the acks were durable".into())
        })
        .await
        .map_err(|_| "the acks were not durable within 30 s")?;
        // The stream's own close (a close frame), named: once futures'
        // `alloc` feature is on (tonic turns it on), `Box<_>` is a Sink and
        // `ws.close(..)` would find SinkExt::close first.
        let _ = WebSocketStream::close(ws, None).await;
        synced
    }
}

/// Reads the event stream at `url` and hands each delivery to `tx` (an
/// error, and the end, too).
fn read_events(
    agent: &ureq::Agent,
    url: &str,
    admin: &str,
    token: Option<&str>,
    tx: mpsc::Sender<Result<Msg, String>>,
) {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    let r = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            let _ = tx.blocking_send(Err(format!(
                "sluiced at {admin} answered {code}: {}",
                error_text(&body)
            )));
            return;
        }
        Err(e) => {
            let _ = tx.blocking_send(Err(format!(
                "cannot reach sluiced's admin endpoint at {admin}: {e} (is it running? see --admin)"
            )));
            return;
        }
    };
    let mut data = String::new();
    for line in BufReader::new(r.into_reader()).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("the event stream failed: {e}")));
                return;
            }
        };
        if line.is_empty() {
            // An event ends; a heartbeat (a comment) has no data.
            if !data.is_empty() {
                let m = serde_json::from_str(&data)
                    .map_err(|e| format!("an event that is not a delivery: {e}"));
                if tx.blocking_send(m).is_err() {
                    return;
                }
                data.clear();
            }
        } else if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
}

async fn consume(a: &Args, link: &mut Link) -> Res {
    let mut stop = Box::pin(stop_signal());
    let mut acked = 0u64;
    let done = |acked: u64| a.count.is_some_and(|n| acked >= n);
    while !done(acked) {
        let m = tokio::select! {
            _ = &mut stop => return Ok(()),
            m = link.next() => match m? {
                Some(m) => m,
                None => return Err("sluiced ended the stream (is it stopping?)".into()),
            },
        };
        let payload = base64::engine::general_purpose::STANDARD.decode(&m.payload)?;
        let f = Fields {
            offset: m.offset,
            delivery: m.delivery,
            timestamp_us: m.timestamp_us,
            producer: m.producer,
            seq: m.seq,
            payload: &payload,
        };
        let print = match (&a.print, &a.exec) {
            (Some(p), _) => Some(p.as_str()),
            (None, None) => Some("payload"),
            (None, Some(_)) => None,
        };
        if let Some(how) = print {
            let mut out = std::io::stdout().lock();
            out.write_all(&render_fields(how, &f))?;
            out.flush()?;
        }
        let ok = match &a.exec {
            None => true,
            Some(cmd) => {
                let ran = {
                    let run = exec(cmd, &f, &mut stop);
                    tokio::pin!(run);
                    tokio::select! {
                        r = &mut run => r?,
                        e = link.keep_alive() => return Err(e),
                    }
                };
                match ran {
                    Some(status) => status.success(),
                    None => {
                        eprintln!("sluice: stopped while running the command on offset {}; it will be delivered again", m.offset);
                        return Ok(());
                    }
                }
            }
        };
        if ok {
            // With --count, no larger a window than what is left to do.
            if let Some(count) = a.count {
                let left = count.saturating_sub(acked + 1);
                if left < a.max_messages as u64 {
                    link.set_credit(left as u32).await?;
                }
            }
            link.ack(m.offset).await?;
            acked += 1;
        } else {
            link.nack(m.offset, a.nack_delay).await?;
            eprintln!(
                "sluice: offset {} (delivery {}): the command failed; nacked, delivered again in {}",
                m.offset,
                m.delivery,
                humantime::format_duration(a.nack_delay)
            );
        }
    }
    Ok(())
}
