//! What the load generator ([`crate::load`]) publishes through: a sluice
//! [`Producer`] (fast path, QUIC, raw UDP) or an [`HttpPublisher`]
//! (`POST /streams/{stream}/messages` on the daemon's admin address, see
//! daemon/HTTP.md). Both take a batch and answer once it is durable, so the
//! closed and open loops, their latency and their timelines are the same
//! code for every path.
//!
//! The HTTP publisher's exactly-once identity, and why:
//!
//! - **one connection per producer** (`connections == 1`): `Sluice-Producer-Id`
//!   and `Sluice-Seq`, the fast path's own table. The daemon takes a seq at or
//!   below the highest it stored for the producer as a duplicate, so the
//!   requests of one producer must reach it in seq order: one at a time, on
//!   one connection, numbered when they are sent (not when the call is made:
//!   the open loop's calls are tasks that may reach the connection in
//!   another order than they were made in).
//! - **several connections per producer**: requests overtake one another
//!   on the way, so seqs would be taken as duplicates; each request gets an
//!   `Idempotency-Key` of its own instead (`{producer}-{first seq}`), which
//!   costs the spool a key block per record and a key in its table.
//!
//! A `duplicate: true` answer is an error here (the harness sends every
//! request once, so a duplicate means the identity scheme is wrong); a 503
//! with `Retry-After` (backpressure) is waited out and the same request sent
//! again, and counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use sluice_transport::client::Producer;

use crate::http::{self, Connection};

/// A batch publisher of any kind.
#[derive(Clone)]
pub enum Publisher {
    Sluice(Producer),
    Http(HttpPublisher),
    Grpc(GrpcPublisher),
}

impl From<Producer> for Publisher {
    fn from(p: Producer) -> Publisher {
        Publisher::Sluice(p)
    }
}

impl Publisher {
    /// Publishes `msgs`; returns once all of them are durable.
    pub async fn send_batch(&self, msgs: Vec<Bytes>) -> Result<(), String> {
        match self {
            Publisher::Sluice(p) => p
                .send_batch(msgs)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Publisher::Http(h) => h.send_batch(msgs).await,
            Publisher::Grpc(g) => g.send_batch(msgs).await,
        }
    }

    /// Flushes and ends the session (a producer's), or drops the idle
    /// connections (HTTP: every call has its answer by then).
    pub async fn close(self) -> Result<(), String> {
        match self {
            Publisher::Sluice(p) => p.close().await.map_err(|e| e.to_string()),
            // The last clone dropped half-closes the call: every batch has
            // its ack by then, so the daemon ends it OK.
            Publisher::Http(_) | Publisher::Grpc(_) => Ok(()),
        }
    }
}

/// One producer publishing over gRPC's PublishStream (daemon/GRPC.md):
/// one call, its batches numbered and sent in order, several in flight
/// within the credit the daemon grants; a batch is done when the durable
/// seq reaches its last seq. Clones share the call.
#[derive(Clone)]
pub struct GrpcPublisher(Arc<GrpcInner>);

struct GrpcInner {
    /// Batches go out under this lock, so they are numbered in the order
    /// sent: (the next seq, the batches not yet acked: last seq, bytes).
    order: tokio::sync::Mutex<(u64, std::collections::VecDeque<(u64, u64)>)>,
    tx: tokio::sync::mpsc::Sender<proto::PublishStreamRequest>,
    state: tokio::sync::watch::Receiver<GrpcState>,
}

#[derive(Debug, Clone, Default)]
struct GrpcState {
    acked: u64,
    credit_messages: u64,
    credit_bytes: u64,
    /// The call ended: its status, or that it ended early.
    ended: Option<String>,
}

use sluice_daemon::grpc::proto;

impl GrpcPublisher {
    /// Opens a PublishStream of `producer` on `stream` at the gRPC address
    /// `addr`.
    pub async fn connect(
        addr: SocketAddr,
        stream: &str,
        producer: u64,
        token: Option<String>,
    ) -> Result<GrpcPublisher, String> {
        use proto::{publish_stream_request as rq, publish_stream_response as rs};
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("gRPC: connect to {addr}: {e}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let open = proto::PublishStreamRequest {
            kind: Some(rq::Kind::Open(proto::PublishStreamOpen {
                stream: stream.into(),
                producer_id: producer,
            })),
        };
        tx.send(open).await.map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| "a token not ASCII")?;
            req.metadata_mut().insert("authorization", v);
        }
        let mut answers = proto::publisher_client::PublisherClient::new(ch)
            .max_decoding_message_size(sluice_daemon::grpc::MAX_MESSAGE)
            .max_encoding_message_size(sluice_daemon::grpc::MAX_MESSAGE)
            .publish_stream(req)
            .await
            .map_err(|e| format!("gRPC: PublishStream: {e}"))?
            .into_inner();
        let opened = match answers.message().await {
            Ok(Some(proto::PublishStreamResponse {
                kind: Some(rs::Kind::Opened(o)),
            })) => o,
            Ok(other) => return Err(format!("gRPC: PublishStream: not opened: {other:?}")),
            Err(e) => return Err(format!("gRPC: PublishStream: {e}")),
        };
        let (set, state) = tokio::sync::watch::channel(GrpcState {
            acked: opened.durable_seq,
            credit_messages: opened.credit_messages,
            credit_bytes: opened.credit_bytes,
            ended: None,
        });
        tokio::spawn(async move {
            loop {
                match answers.message().await {
                    Ok(Some(proto::PublishStreamResponse {
                        kind: Some(rs::Kind::Status(st)),
                    })) => set.send_modify(|s| {
                        s.acked = st.durable_seq;
                        s.credit_messages = st.credit_messages;
                        s.credit_bytes = st.credit_bytes;
                    }),
                    Ok(Some(other)) => {
                        set.send_modify(|s| s.ended = Some(format!("gRPC: unexpected {other:?}")));
                        return;
                    }
                    Ok(None) => {
                        set.send_modify(|s| s.ended = Some("gRPC: the stream ended".into()));
                        return;
                    }
                    Err(e) => {
                        set.send_modify(|s| s.ended = Some(format!("gRPC: {e}")));
                        return;
                    }
                }
            }
        });
        Ok(GrpcPublisher(Arc::new(GrpcInner {
            order: tokio::sync::Mutex::new((opened.durable_seq + 1, Default::default())),
            tx,
            state,
        })))
    }

    /// Sends `msgs` as one batch once the credit allows; returns once
    /// they are durable.
    pub async fn send_batch(&self, msgs: Vec<Bytes>) -> Result<(), String> {
        let n = msgs.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        let me = &self.0;
        let mut state = me.state.clone();
        let last = {
            let mut order = me.order.lock().await;
            let (next, unacked) = &mut *order;
            let first = *next;
            let last = first + n - 1;
            let granted = state
                .wait_for(|s| {
                    let out: u64 = unacked
                        .iter()
                        .filter(|(l, _)| *l > s.acked)
                        .map(|(_, b)| b)
                        .sum();
                    s.ended.is_some()
                        || (last <= s.acked + s.credit_messages
                            && (out == 0 || out + bytes <= s.credit_bytes))
                })
                .await
                .map_err(|e| e.to_string())?
                .clone();
            if let Some(e) = granted.ended {
                return Err(e);
            }
            unacked.retain(|(l, _)| *l > granted.acked);
            unacked.push_back((last, bytes));
            let batch = proto::PublishStreamRequest {
                kind: Some(proto::publish_stream_request::Kind::Batch(
                    proto::PublishBatch {
                        seq: first,
                        payloads: msgs,
                    },
                )),
            };
            me.tx
                .send(batch)
                .await
                .map_err(|_| "gRPC: the call ended")?;
            *next = last + 1;
            last
        };
        let done = state
            .wait_for(|s| s.ended.is_some() || s.acked >= last)
            .await
            .map_err(|e| e.to_string())?;
        if done.acked >= last {
            return Ok(());
        }
        Err(done.ended.clone().unwrap_or_default())
    }
}

/// Whether a publisher with `connections` gives each request an
/// Idempotency-Key (else producer seqs): see the module's comment.
pub fn keyed(connections: usize) -> bool {
    connections > 1
}

/// The batch body's `Content-Type` (daemon/HTTP.md, "Batches").
const FRAMES: &str = "application/vnd.sluice.frames";

/// One producer publishing over HTTP (see the module's comment). Clones
/// share the connections and the seqs.
#[derive(Clone)]
pub struct HttpPublisher(Arc<Inner>);

struct Inner {
    addr: SocketAddr,
    /// `/streams/{stream}/messages`.
    path: String,
    producer: u64,
    token: Option<String>,
    /// Idempotency-Key per request, else producer seqs.
    keyed: bool,
    /// The next request's first seq (1-based).
    next_seq: AtomicU64,
    /// One per connection: a call holds one while its request is out.
    slots: tokio::sync::Semaphore,
    /// Connections kept alive between calls.
    idle: Mutex<Vec<Connection>>,
    /// Requests answered 503 and sent again (shared by the run's publishers).
    retries: Arc<AtomicU64>,
}

impl HttpPublisher {
    /// Producer `producer` of `stream` at `addr`, with up to `connections`
    /// requests out at once; counts 503 retries in `retries`. Connects on
    /// its first call.
    pub fn new(
        addr: SocketAddr,
        stream: &str,
        producer: u64,
        token: Option<String>,
        connections: usize,
        retries: Arc<AtomicU64>,
    ) -> HttpPublisher {
        HttpPublisher(Arc::new(Inner {
            addr,
            path: format!("/streams/{stream}/messages"),
            producer,
            token,
            keyed: keyed(connections),
            next_seq: AtomicU64::new(1),
            slots: tokio::sync::Semaphore::new(connections.max(1)),
            idle: Mutex::new(Vec::new()),
            retries,
        }))
    }

    /// One request: the message as the body, or (more than one) frames.
    pub async fn send_batch(&self, msgs: Vec<Bytes>) -> Result<(), String> {
        let n = msgs.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let (content_type, body) = match <[Bytes; 1]>::try_from(msgs) {
            Ok([m]) => ("application/octet-stream", m),
            Err(msgs) => (FRAMES, frames(&msgs)),
        };
        let me = &self.0;
        let _slot = me.slots.acquire().await.map_err(|e| e.to_string())?;
        let idle = me.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match idle.filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => http::connect(me.addr)
                .await
                .map_err(|e| format!("HTTP: connect to {}: {e}", me.addr))?,
        };
        // Numbered under the slot: with one connection, in the order sent.
        let seq = me.next_seq.fetch_add(n, Relaxed);
        loop {
            let token = me.token.as_deref();
            let mut req = http::request(hyper::Method::POST, me.addr, &me.path, token)
                .header(hyper::header::CONTENT_TYPE, content_type);
            req = if me.keyed {
                req.header("idempotency-key", format!("{}-{seq}", me.producer))
            } else {
                req.header("sluice-producer-id", me.producer)
                    .header("sluice-seq", seq)
            };
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())?;
            conn.ready().await.map_err(|e| format!("HTTP: {e}"))?;
            let answer = conn
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = answer.status();
            let retry_after = answer
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            let text = answer
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("HTTP: {e}"))?
                .to_bytes();
            match (status.as_u16(), retry_after) {
                (200, _) => check_answer(&text, n)?,
                // Backpressure: the same request, with the same identity,
                // once the daemon says (503 without it: it is stopping).
                (503, Some(secs)) => {
                    me.retries.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    continue;
                }
                _ => {
                    let text = String::from_utf8_lossy(&text);
                    return Err(format!("HTTP {status}: {}", text.trim()));
                }
            }
            break;
        }
        me.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        Ok(())
    }
}

/// `msgs` as frames: a u32 big-endian length, then the bytes, each.
fn frames(msgs: &[Bytes]) -> Bytes {
    let mut b = BytesMut::with_capacity(msgs.iter().map(|m| 4 + m.len()).sum());
    for m in msgs {
        b.put_u32(m.len() as u32);
        b.put_slice(m);
    }
    b.freeze()
}

/// A 200 answer: every one of the `n` messages stored now, none a
/// duplicate.
fn check_answer(body: &[u8], n: u64) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "HTTP 200 but not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    let (listed, stored) = match v["messages"].as_array() {
        Some(ms) => (
            ms.len(),
            ms.iter().filter(|m| m["duplicate"] == false).count(),
        ),
        None => (1, usize::from(v["duplicate"] == false)),
    };
    if listed as u64 != n {
        return Err(format!("{n} messages sent, the answer lists {listed}: {v}"));
    }
    if v["duplicate"] != false || stored as u64 != n {
        return Err(format!(
            "the daemon stored {stored} of {n} messages, the rest were duplicates (each \
             request is sent once, so its identity was reused): {v}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_length_prefixed() {
        let b = frames(&[Bytes::from_static(b"ab"), Bytes::new()]);
        assert_eq!(&b[..], &[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]);
    }

    #[test]
    fn duplicates_and_short_answers_are_errors() {
        let one = br#"{"stream":"s","offset":3,"producer":9,"seq":1,"duplicate":false}"#;
        assert!(check_answer(one, 1).is_ok());
        let dup = br#"{"stream":"s","offset":null,"producer":9,"seq":1,"duplicate":true}"#;
        assert!(check_answer(dup, 1).unwrap_err().contains("stored 0 of 1"));
        let batch = br#"{"stream":"s","producer":9,"duplicate":false,"messages":[
            {"offset":1,"seq":2,"duplicate":false},{"offset":null,"seq":3,"duplicate":true}]}"#;
        assert!(check_answer(batch, 2)
            .unwrap_err()
            .contains("stored 1 of 2"));
        assert!(check_answer(batch, 1).is_err());
        assert!(check_answer(b"not json", 1).is_err());
    }

    /// Requests as a tiny server sees them: the identity headers, the
    /// body, keep-alive, and a 503 waited out and sent again.
    #[test]
    fn publishes_with_seqs_or_keys_and_retries_a_503() {
        use std::io::{BufRead, BufReader, Read, Write};
        let rt = crate::load::runtime(None).unwrap();
        for connections in [1, 2] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (s, _) = listener.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut seen = Vec::new();
                for k in 0..3 {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line.to_ascii_lowercase());
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let answer = if k == 1 {
                        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 2\r\n\r\n{}".to_owned()
                    } else {
                        let j = if k == 0 {
                            r#"{"offset":0,"duplicate":false}"#.to_owned()
                        } else {
                            r#"{"duplicate":false,"messages":[{"duplicate":false},{"duplicate":false}]}"#.to_owned()
                        };
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{j}", j.len())
                    };
                    w.write_all(answer.as_bytes()).unwrap();
                    seen.push((head, body));
                }
                seen
            });
            let retries = Arc::new(AtomicU64::new(0));
            let p = HttpPublisher::new(addr, "s", 7, None, connections, retries.clone());
            rt.block_on(async {
                p.send_batch(vec![Bytes::from_static(b"one")])
                    .await
                    .unwrap();
                let two = vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")];
                p.send_batch(two).await.unwrap();
            });
            let seen = server.join().unwrap();
            assert_eq!(retries.load(Relaxed), 1);
            assert!(seen[0].0.starts_with("post /streams/s/messages http/1.1"));
            assert_eq!(seen[0].1, b"one");
            assert!(seen[1]
                .0
                .contains("content-type: application/vnd.sluice.frames"));
            assert_eq!(seen[1].1, seen[2].1, "sent again as it was");
            assert_eq!(seen[1].0, seen[2].0);
            if connections == 1 {
                assert!(seen[0]
                    .0
                    .contains("sluice-producer-id: 7\r\nsluice-seq: 1\r\n"));
                assert!(seen[1].0.contains("sluice-seq: 2\r\n"));
            } else {
                assert!(seen[0].0.contains("idempotency-key: 7-1\r\n"));
                assert!(seen[1].0.contains("idempotency-key: 7-2\r\n"));
                assert!(!seen[1].0.contains("sluice-seq"));
            }
        }
    }
}
