//! One byte budget over every gRPC request message being received
//! (`grpc.max_request_bytes`), so that what many calls at once can make
//! the daemon hold is bounded by it, not by connections × calls × the
//! largest message.
//!
//! tonic gathers a message whole before it decodes it, and a message may be
//! as large as [`MAX_MESSAGE`]. Without a budget, a thousand calls each
//! sending most of a large message would be buffered all at once. So each
//! call's request body is wrapped ([`Metered`]): it reads the gRPC
//! framing (a flag byte and a big-endian u32 length before each message)
//! as the bytes pass, and before it lets the first byte of a message
//! through it takes that message's length from the budget, waiting while
//! the budget is spent. A call waiting reads nothing more, so HTTP/2's
//! flow control holds its client (one stream window at most is buffered
//! below us). The bytes go back once tonic has the whole message decoded
//! and asks for more: tonic reads the body only when it holds no whole
//! message, so by then the message is in the handler's hands (where the
//! publisher's own room accounts for the payloads).
//!
//! Room is not held for ever: a message must arrive whole within
//! `grpc.message_timeout` of taking it (else its call ends with
//! DEADLINE_EXCEEDED), so a client that stops halfway cannot keep the
//! room from everyone else; and a call waits for room at most
//! [`ROOM_WAIT`] (then RESOURCE_EXHAUSTED with a retry delay).
//!
//! A call never waits while it holds part of the budget: the bytes of a
//! message are passed on (and the message finished) before the next
//! message's header is looked at, and released when tonic next reads. With
//! the budget at least one whole message large, and the semaphore first
//! come first served, every call that waits gets its turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{sleep, Sleep};
use tonic::codegen::http;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::MAX_MESSAGE;
use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

/// Bytes of gRPC framing before each message: a compressed flag and the
/// length.
const PREFIX: usize = 5;
/// The most one message takes from the budget: a larger one is refused by
/// tonic before it is read whole, so it needs no more.
pub const MAX_TAKE: usize = MAX_MESSAGE + PREFIX;
/// The longest a message waits for room before its call is refused: the
/// client had better try again later (or elsewhere) than hang.
pub const ROOM_WAIT: Duration = Duration::from_secs(10);

/// The budget shared by every call of the plane.
#[derive(Debug)]
pub struct Budget {
    room: Arc<Semaphore>,
    total: usize,
    /// `grpc.message_timeout`.
    message_timeout: Duration,
    /// Messages that had to wait for room.
    waits: AtomicU64,
    /// Calls ended because room did not come within [`ROOM_WAIT`].
    no_room: AtomicU64,
    /// Calls ended because a message did not arrive within the timeout.
    too_slow: AtomicU64,
}

impl Budget {
    /// A budget of `total` bytes; at least [`MAX_TAKE`] (the config checks
    /// it), else the largest message could never be read. A message must
    /// arrive within `message_timeout` of taking its room.
    pub fn new(total: usize, message_timeout: Duration) -> Arc<Budget> {
        let total = total.max(MAX_TAKE);
        Arc::new(Budget {
            room: Arc::new(Semaphore::new(total)),
            total,
            message_timeout,
            waits: AtomicU64::new(0),
            no_room: AtomicU64::new(0),
            too_slow: AtomicU64::new(0),
        })
    }

    /// Bytes held by messages being received now.
    pub fn held(&self) -> usize {
        self.total - self.room.available_permits()
    }

    /// `request` with its body metered against this budget.
    pub fn meter(
        self: &Arc<Budget>,
        request: http::Request<tonic::body::Body>,
    ) -> http::Request<tonic::body::Body> {
        let budget = self.clone();
        request.map(|body| tonic::body::Body::new(Metered::new(body, budget)))
    }
}

impl Collect for Budget {
    fn collect(&self, e: &mut Exposition) {
        for (name, kind, help, v) in [
            (
                "sluice_grpc_request_bytes",
                Kind::Gauge,
                "Bytes of gRPC request messages being received, held against grpc.max_request_bytes.",
                self.held() as f64,
            ),
            (
                "sluice_grpc_request_budget_bytes",
                Kind::Gauge,
                "grpc.max_request_bytes: the most bytes of gRPC request messages received at once.",
                self.total as f64,
            ),
            (
                "sluice_grpc_request_waits_total",
                Kind::Counter,
                "gRPC request messages that waited for room in grpc.max_request_bytes.",
                self.waits.load(Relaxed) as f64,
            ),
        ] {
            e.family(name, kind, help);
            e.sample(name, &[], v);
        }
        let name = "sluice_grpc_request_timeouts_total";
        e.family(
            name,
            Kind::Counter,
            "gRPC calls ended while receiving a message: no room within 10 s (room), or the message not whole within grpc.message_timeout (message).",
        );
        for (reason, v) in [("room", &self.no_room), ("message", &self.too_slow)] {
            e.sample(name, &[("reason", reason)], v.load(Relaxed) as f64);
        }
    }
}

/// The tower layer that meters every request of the plane.
#[derive(Clone)]
pub struct MeterLayer(pub Arc<Budget>);

impl<S> tower_layer::Layer<S> for MeterLayer {
    type Service = Metering<S>;

    fn layer(&self, inner: S) -> Metering<S> {
        Metering {
            inner,
            budget: self.0.clone(),
        }
    }
}

/// A service whose requests' bodies are metered.
#[derive(Clone)]
pub struct Metering<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Metering<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> S::Future {
        self.inner.call(self.budget.meter(request))
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request body that takes each message's bytes from the budget before
/// passing them on.
pub struct Metered {
    inner: tonic::body::Body,
    budget: Arc<Budget>,
    /// Read from `inner`, not yet passed on.
    rest: Bytes,
    /// How much of `rest` the framing has been followed through.
    scanned: usize,
    /// The prefix of the next message, as far as it has come.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    left: u64,
    /// The room of the message being passed on.
    current: Option<OwnedSemaphorePermit>,
    /// The room of messages passed on whole: given back when tonic reads
    /// again (it has decoded them by then).
    passed: Vec<OwnedSemaphorePermit>,
    /// Waiting for room for the message whose prefix was just read.
    waiting: Option<Acquire>,
    /// When the wait for room, or the message holding room, runs out.
    clock: Option<Pin<Box<Sleep>>>,
}

impl Metered {
    fn new(inner: tonic::body::Body, budget: Arc<Budget>) -> Metered {
        Metered {
            inner,
            budget,
            rest: Bytes::new(),
            scanned: 0,
            prefix: [0; PREFIX],
            prefix_len: 0,
            left: 0,
            current: None,
            passed: Vec::new(),
            waiting: None,
            clock: None,
        }
    }

    /// Takes room for a message of `len` bytes: at once when there is
    /// room, else by waiting (counted).
    fn take(&mut self, len: u32) {
        let want = (len as usize + PREFIX).min(MAX_TAKE) as u32;
        match self.budget.room.clone().try_acquire_many_owned(want) {
            Ok(permit) => self.took(permit),
            // Closed cannot happen (the semaphore is never closed); should
            // it, the poll of `waiting` reports it.
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                self.budget.waits.fetch_add(1, Relaxed);
                let room = self.budget.room.clone();
                self.waiting = Some(Box::pin(room.acquire_many_owned(want)));
                self.clock = Some(Box::pin(sleep(ROOM_WAIT)));
            }
        }
    }

    /// The current message has its room: its time starts.
    fn took(&mut self, permit: OwnedSemaphorePermit) {
        self.current = Some(permit);
        self.clock = Some(Box::pin(sleep(self.budget.message_timeout)));
    }

    /// Whether the clock has run out (it wakes this task when it does).
    fn out_of_time(&mut self, cx: &mut Context<'_>) -> bool {
        self.clock
            .as_mut()
            .is_some_and(|c| c.as_mut().poll(cx).is_ready())
    }

    /// Passes on the bytes of `rest` followed so far.
    fn pass(&mut self) -> Frame<Bytes> {
        let out = self.rest.split_to(self.scanned);
        self.scanned = 0;
        Frame::data(out)
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        // tonic reads only once it has handed out every whole message.
        this.passed.clear();
        loop {
            if let Some(waiting) = this.waiting.as_mut() {
                let Poll::Ready(permit) = waiting.as_mut().poll(cx) else {
                    if this.out_of_time(cx) {
                        // Dropped at once: a waiter is handed room as soon
                        // as it frees up, even before it is polled again.
                        this.waiting = None;
                        this.clock = None;
                        this.budget.no_room.fetch_add(1, Relaxed);
                        return Poll::Ready(Some(Err(no_room())));
                    }
                    return Poll::Pending;
                };
                this.waiting = None;
                match permit {
                    Ok(permit) => this.took(permit),
                    Err(_) => {
                        return Poll::Ready(Some(Err(Status::internal(
                            "the gRPC request budget is closed",
                        ))))
                    }
                }
            }
            if this.scanned == this.rest.len() {
                if !this.rest.is_empty() {
                    return Poll::Ready(Some(Ok(this.pass())));
                }
                let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) else {
                    if this.current.is_some() && this.out_of_time(cx) {
                        // The room goes back now, not when tonic drops us.
                        this.current = None;
                        this.clock = None;
                        this.budget.too_slow.fetch_add(1, Relaxed);
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                            "a request message did not arrive whole within grpc.message_timeout ({})",
                            humantime::format_duration(this.budget.message_timeout)
                        )))));
                    }
                    return Poll::Pending;
                };
                match frame {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => this.rest = data,
                        // Trailers: no message bytes.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    end_or_error => return Poll::Ready(end_or_error),
                }
                continue;
            }
            let unscanned = this.rest.len() - this.scanned;
            if this.left > 0 {
                let n = this.left.min(unscanned as u64);
                this.left -= n;
                this.scanned += n as usize;
                if this.left == 0 {
                    this.passed.extend(this.current.take());
                    this.clock = None;
                }
                continue;
            }
            // At a message's prefix. The message before it goes on first,
            // so that no call waits for room while holding some.
            if this.prefix_len == 0 && this.scanned > 0 {
                return Poll::Ready(Some(Ok(this.pass())));
            }
            let n = (PREFIX - this.prefix_len).min(unscanned);
            this.prefix[this.prefix_len..this.prefix_len + n]
                .copy_from_slice(&this.rest[this.scanned..this.scanned + n]);
            this.prefix_len += n;
            this.scanned += n;
            if this.prefix_len == PREFIX {
                this.prefix_len = 0;
                let len = u32::from_be_bytes([
                    this.prefix[1],
                    this.prefix[2],
                    this.prefix[3],
                    this.prefix[4],
                ]);
                this.left = len.into();
                if len > 0 {
                    this.take(len);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// RESOURCE_EXHAUSTED with a retry delay: room did not come in time.
fn no_room() -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "no room for this request message within {} s: gRPC calls are receiving grpc.max_request_bytes of messages; try again",
            ROOM_WAIT.as_secs()
        ),
        ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    /// gRPC framing of messages of these lengths, filled with their index.
    fn framed(lens: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            out.push(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend(std::iter::repeat_n(i as u8, len as usize));
        }
        out
    }

    /// A body of `bytes` cut into frames of `frame` bytes.
    fn body(bytes: &[u8], frame: usize) -> tonic::body::Body {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
            .chunks(frame)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        tonic::body::Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    /// Every byte passes, in order, whatever the frames' cut, and the room
    /// is all given back at the end.
    #[tokio::test]
    async fn passes_every_byte_and_gives_the_room_back() {
        let bytes = framed(&[0, 3, 70, 1, 200, 0, 5]);
        for frame in [1, 2, 4, 5, 6, 7, 64, 1000] {
            let budget = Budget::new(MAX_TAKE, Duration::from_secs(60));
            let mut m = Metered::new(body(&bytes, frame), budget.clone());
            let mut got = Vec::new();
            let mut most_held = 0;
            while let Some(f) = m.frame().await {
                got.extend_from_slice(&f.unwrap().into_data().unwrap());
                most_held = most_held.max(budget.held());
            }
            assert_eq!(got, bytes, "frames of {frame}");
            assert!(most_held > 0 && most_held <= 205 * 2, "held {most_held}");
            drop(m);
            assert_eq!(budget.held(), 0, "frames of {frame}");
        }
    }

    /// A message waits while the budget is spent by another call, and
    /// goes on once that call's message has been handed on and read past.
    #[tokio::test]
    async fn a_message_waits_for_room() {
        let budget = Budget::new(MAX_TAKE, Duration::from_secs(60));
        let big = framed(&[(MAX_MESSAGE - 10) as u32, 1]);
        let mut first = Metered::new(body(&big, 64 << 10), budget.clone());
        // The first call takes its message's room (and gets its first
        // bytes through).
        let f = first.frame().await.unwrap().unwrap();
        assert!(!f.into_data().unwrap().is_empty());
        assert!(budget.held() >= MAX_MESSAGE - 10);
        let mut second = Metered::new(body(&framed(&[100]), 7), budget.clone());
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), second.frame()).await;
        assert!(
            waited.is_err(),
            "the second call got room the first one holds"
        );
        assert_eq!(budget.waits.load(Relaxed), 1);
        // The first call's message goes through whole; reading past it
        // gives its room back, and the second call goes on.
        while let Some(f) = first.frame().await {
            f.unwrap();
        }
        let mut got = 0;
        while let Some(f) = second.frame().await {
            got += f.unwrap().into_data().unwrap().len();
        }
        assert_eq!(got, 105);
    }

    /// A length past the largest message takes no more than one message's
    /// room (tonic refuses it).
    #[tokio::test]
    async fn an_oversized_length_takes_at_most_the_largest() {
        let budget = Budget::new(MAX_TAKE, Duration::from_secs(60));
        let mut bytes = vec![0];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[1; 100]);
        let mut m = Metered::new(body(&bytes, 50), budget.clone());
        m.frame().await.unwrap().unwrap();
        assert_eq!(budget.held(), MAX_TAKE);
    }

    /// A body of `bytes` that then never ends.
    fn stalling(bytes: &[u8]) -> tonic::body::Body {
        let first: Result<Frame<Bytes>, Infallible> =
            Ok(Frame::data(Bytes::copy_from_slice(bytes)));
        let stream = futures_util::StreamExt::chain(
            futures_util::stream::iter([first]),
            futures_util::stream::pending(),
        );
        tonic::body::Body::new(StreamBody::new(stream))
    }

    /// A message that stops halfway ends its call once the timeout runs
    /// out, and gives its room back; a call that waited for that room
    /// runs out of waiting first (10 s against 60 s).
    #[tokio::test(start_paused = true)]
    async fn room_is_not_held_for_ever() {
        let budget = Budget::new(MAX_TAKE, Duration::from_secs(60));
        let mut half = Metered::new(
            stalling(&framed(&[(MAX_MESSAGE - 10) as u32])[..1000]),
            budget.clone(),
        );
        half.frame().await.unwrap().unwrap();
        let mut other = Metered::new(body(&framed(&[100]), 7), budget.clone());
        let e = other.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_eq!(budget.no_room.load(Relaxed), 1);
        let e = half.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert_eq!(budget.too_slow.load(Relaxed), 1);
        assert_eq!(budget.held(), 0, "the room is back before the bodies go");
        drop((half, other));
    }
}
