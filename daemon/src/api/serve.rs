//! The admin port's HTTP server, with limits no client gets past.
//!
//! An accept loop over tokio's listener hands each connection to hyper's
//! HTTP/1.1 server, with axum's router as the service and the peer's
//! address as [`ConnectInfo`] (the handlers authenticate by it). Around
//! that:
//!
//! **Connections.** At most [`Http::max_connections`] are open at once:
//! `admin.max_connections`, or fewer when the open-files limit is low, so
//! that a reserve of descriptors ([`fd_reserve`]) always stays for the
//! spool's files, the other sockets and `/health`; and at most
//! `admin.max_connections_per_source` from one address. A connection over
//! a limit takes the place of an *idle* one (waiting for a request: for
//! the per-source limit the one of that source idle longest, for the total
//! the one idle longest of the source with most connections), which is
//! closed; with none idle it is closed at once, before a byte of it is
//! read: it costs no task and no buffer. So a flood of idle connections
//! locks nobody out; connections in the middle of a request (slow headers,
//! say) fill a source's share, or from many sources all, for at most
//! `header_timeout` at a time.
//!
//! **Time.** What a connection is doing sets its deadline, checked by the
//! task that drives it (one timer each):
//!
//! | phase | closed after |
//! |---|---|
//! | idle: waiting for a request (a new connection, or between two) | `idle_timeout` |
//! | head: a request's first byte came, its headers are not complete | `header_timeout` from that byte |
//! | handling, the request's body not all received | `idle_timeout` from its headers |
//! | handling, body received (the handler works; long polls end by themselves) | — |
//! | writing a stream ([`Streaming`]: server-sent events) | `idle_timeout` from the last piece the client took room for |
//! | upgraded (a WebSocket) | — (the handler keeps its own time: pings, a timeout on each send) |
//! | writing: the answer is out of the handler, not all taken by the client | `idle_timeout` |
//!
//! hyper's own `header_read_timeout` starts when hyper starts waiting for a
//! request, so on a kept-alive connection it is an idle timeout and cannot
//! tell a quiet client from a slow one: it is set to `header_timeout +
//! idle_timeout`, a backstop only.
//!
//! **Pages.** Routes that answer pages of messages (records, dead letters,
//! fetch) take one of `admin.max_page_requests` turns
//! ([`Http::page_permit`]) and hold it until their answer is written out,
//! a slice at a time ([`page_answer`]): what pages hold at once is bounded
//! by `page_bytes × max_page_requests` (×~1.4 for base64 and JSON). A
//! request that waits more than [`PAGE_WAIT`] for a turn is answered 503
//! with `Retry-After`.
//!
//! **Stop.** [`AdminServer::shutdown`] stops accepting, lets answers in
//! progress finish (no keep-alive) for up to [`STOP_GRACE`], then closes
//! what is left.
//!
//! **HTTPS** (`admin.tls`). The TLS handshake runs in the connection's own
//! task, never in the accept loop (a slow one must not stop accepting),
//! under the same deadlines: nothing sent for `idle_timeout` (an idle
//! connection, which a new one may take the place of), or the handshake
//! not done `header_timeout` after its first byte. Then HTTP runs over the
//! TLS stream exactly as over a plain socket: the limits, the phases (the
//! bytes counted are the socket's, below TLS) and the peer's address are
//! the same. A connection whose first byte is not a TLS handshake record
//! (plain HTTP sent to the HTTPS port) is answered a 400 in clear saying
//! so, and closed. Failed handshakes are counted by reason and logged a
//! few a second.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use tracing::{info, warn};

use super::error::ApiError;
use crate::log_limit::LogLimit;
use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

/// The admin endpoint's limits (`[admin]`), checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub page_bytes: u64,
    pub max_page_requests: usize,
}

/// Longest a page-returning request waits for its turn before a 503.
pub const PAGE_WAIT: Duration = Duration::from_secs(5);
/// How long a stop lets answers in progress finish.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// A page's answer is handed to the connection in slices of this size, so
/// that its turn ends when the client has taken (nearly) all of it.
const PAGE_SLICE: usize = 64 << 10;
/// hyper's read and write buffers of one connection, at most (headers
/// larger than this are refused).
const MAX_BUF: usize = 64 << 10;
/// Connections closed to make room whose sockets may still be open (their
/// tasks have not run yet): past this many, accepting waits for them.
/// Descriptors stay within `max_connections + CLOSING` however fast
/// connections come.
const CLOSING: usize = 64;

/// File descriptors kept out of the admin port's reach, for a daemon whose
/// open-files limit is `nofile`: a quarter of it, and at least 512.
pub fn fd_reserve(nofile: u64) -> u64 {
    (nofile / 4).max(512)
}

/// The soft limit on open files now.
pub fn open_files_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `l`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    l.rlim_cur
}

/// What a connection is doing: it sets its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Handling {
        body_done: bool,
    },
    Writing,
    /// Switched protocols (a WebSocket): the socket is the handler's, which
    /// times it; it still counts against the limits until it is closed.
    Upgraded,
}

/// Why a connection is told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Its place went to a new connection (it was idle).
    Evict,
    /// The daemon stops: finish the answer in progress, then close.
    Stop,
}

/// Deadlines a connection can miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    Idle,
    Header,
    Body,
    Write,
}

impl Timeout {
    const ALL: [Timeout; 4] = [
        Timeout::Idle,
        Timeout::Header,
        Timeout::Body,
        Timeout::Write,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Timeout::Idle => "idle_timeout",
            Timeout::Header => "header_timeout",
            Timeout::Body => "body_timeout",
            Timeout::Write => "write_timeout",
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsFailure {
    /// The first byte was not a TLS handshake record (plain HTTP, say).
    NotTls,
    /// rustls refused what came (garbage, no common cipher, ...).
    Error,
    /// Nothing for `idle_timeout`, or not done `header_timeout` after its
    /// first byte.
    Timeout,
}

impl TlsFailure {
    const ALL: [TlsFailure; 3] = [TlsFailure::NotTls, TlsFailure::Error, TlsFailure::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Error => "error",
            TlsFailure::Timeout => "timeout",
        }
    }
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-HTTP request to the HTTPS port is answered, in clear: a
/// client (curl, a script) then says why instead of "connection reset".
const PLAIN_TO_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain\r\n\
connection: close\r\n\
content-length: 56\r\n\
\r\n\
this port serves HTTPS (admin.tls): use https:// instead\n";

/// A limit a new connection was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Total,
    Source,
}

struct ConnState {
    phase: Phase,
    since: Instant,
    close: Option<Close>,
    /// The driving task, woken when it is told to close.
    waker: Option<Waker>,
}

/// One connection, as the registry and its driving task share it.
struct Conn {
    id: u64,
    source: IpAddr,
    state: Mutex<ConnState>,
}

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap()
    }

    fn enter(&self, phase: Phase) {
        let mut s = self.state();
        s.phase = phase;
        s.since = Instant::now();
    }

    /// Bytes came: an idle connection starts a request.
    fn read_some(&self) {
        let mut s = self.state();
        if s.phase == Phase::Idle {
            s.phase = Phase::Head;
            s.since = Instant::now();
        }
    }

    fn body_done(&self) {
        let mut s = self.state();
        if s.phase == (Phase::Handling { body_done: false }) {
            s.phase = Phase::Handling { body_done: true };
        }
    }

    /// The answer went to the client in full (or was dropped).
    fn answer_sent(&self) {
        let mut s = self.state();
        if s.phase == Phase::Writing {
            s.phase = Phase::Idle;
            s.since = Instant::now();
        }
    }

    fn close(&self, why: Close) {
        let mut s = self.state();
        if s.close != Some(Close::Evict) {
            s.close = Some(why);
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Since when it has been idle, if it is (and not closing).
    fn idle_since(&self) -> Option<Instant> {
        let s = self.state();
        (s.phase == Phase::Idle && s.close.is_none()).then_some(s.since)
    }
}

impl ConnState {
    fn deadline(&self, l: &AdminLimits) -> Option<(Instant, Timeout)> {
        match self.phase {
            Phase::Idle => Some((self.since + l.idle_timeout, Timeout::Idle)),
            Phase::Head => Some((self.since + l.header_timeout, Timeout::Header)),
            Phase::Handling { body_done: false } => {
                Some((self.since + l.idle_timeout, Timeout::Body))
            }
            Phase::Handling { body_done: true } => None,
            Phase::Writing => Some((self.since + l.idle_timeout, Timeout::Write)),
            Phase::Upgraded => None,
        }
    }
}

struct Entry {
    conn: Arc<Conn>,
    abort: Option<AbortHandle>,
    /// Told to close to make room; no longer counted against the limits,
    /// but its socket may be open until its task runs.
    closing: bool,
}

/// The connections open: each counted against the limits (in all and by
/// source) until it is told to close, and as a socket until its task ends.
#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Entry>,
    by_source: HashMap<IpAddr, usize>,
    closing: usize,
}

impl Registry {
    fn uncount_source(&mut self, source: IpAddr) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }

    /// Counted against the limits.
    fn live(&self) -> usize {
        self.conns.len() - self.closing
    }

    /// Tells `id` to close to make room.
    fn evict(&mut self, id: u64) -> bool {
        let Some(e) = self.conns.get_mut(&id) else {
            return false;
        };
        if e.closing {
            return false;
        }
        e.closing = true;
        e.conn.close(Close::Evict);
        let source = e.conn.source;
        self.closing += 1;
        self.uncount_source(source);
        true
    }

    /// Its task ended.
    fn remove(&mut self, id: u64) {
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        if e.closing {
            self.closing -= 1;
        } else {
            self.uncount_source(e.conn.source);
        }
    }

    /// The connection to close for a new one from `source`: the one idle
    /// longest from the same source (`same_source`), else from the
    /// source with most connections.
    fn victim(&self, source: IpAddr, same_source: bool) -> Option<u64> {
        self.conns
            .values()
            .filter(|e| !e.closing && (!same_source || e.conn.source == source))
            .filter_map(|e| {
                let since = e.conn.idle_since()?;
                let n = self.by_source.get(&e.conn.source).copied().unwrap_or(0);
                Some((n, std::cmp::Reverse(since), e.conn.id))
            })
            .max()
            .map(|(_, _, id)| id)
    }
}

#[derive(Default)]
struct Stats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_total: AtomicU64,
    refused_source: AtomicU64,
    evicted: AtomicU64,
    timed_out: [AtomicU64; 4],
    pages_busy: AtomicU64,
    /// By [`TlsFailure::ALL`].
    tls_failed: [AtomicU64; 3],
}

/// The admin port's limits and what they did; shared by the accept loop,
/// the connections, the page-returning handlers and `/metrics`.
pub struct Http {
    pub limits: AdminLimits,
    max_connections: usize,
    nofile: u64,
    pages: Arc<Semaphore>,
    stats: Stats,
    registry: Mutex<Registry>,
    /// Told when a connection's task ends.
    freed: Notify,
    next_id: AtomicU64,
    /// Failed TLS handshakes are a stranger's to make: a few a second are
    /// logged.
    tls_log: Mutex<LogLimit>,
}

/// A page-returning request's turn; it ends when dropped.
pub struct PagePermit {
    _permit: OwnedSemaphorePermit,
}

impl Http {
    pub fn new(limits: AdminLimits) -> Http {
        let nofile = open_files_limit();
        let by_fds = nofile.saturating_sub(fd_reserve(nofile)).max(1);
        Http {
            max_connections: limits
                .max_connections
                .min(usize::try_from(by_fds).unwrap_or(usize::MAX)),
            limits,
            nofile,
            pages: Arc::new(Semaphore::new(limits.max_page_requests)),
            stats: Stats::default(),
            registry: Mutex::new(Registry::default()),
            freed: Notify::new(),
            next_id: AtomicU64::new(1),
            tls_log: Mutex::new(LogLimit::new(5)),
        }
    }

    /// Connections open at once, at most: `admin.max_connections`, or
    /// fewer to keep the reserve of file descriptors.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Most payload bytes of one page (one message always fits).
    pub fn page_bytes(&self) -> u64 {
        self.limits.page_bytes
    }

    /// Connections open now (sockets: those closing included).
    pub fn open(&self) -> usize {
        self.registry.lock().unwrap().conns.len()
    }

    /// Whether few enough sockets are open to accept one more.
    fn has_room(&self) -> bool {
        self.open() < self.max_connections + CLOSING
    }

    /// Waits until [`has_room`](Self::has_room).
    async fn room(&self) {
        loop {
            let mut freed = pin!(self.freed.notified());
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }

    /// A turn to build and send a page: waits up to [`PAGE_WAIT`] for one,
    /// else the answer to give (503, `Retry-After: 1`).
    pub async fn page_permit(&self) -> Result<PagePermit, ApiError> {
        match tokio::time::timeout(PAGE_WAIT, self.pages.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(PagePermit { _permit: p }),
            _ => {
                self.stats.pages_busy.fetch_add(1, Relaxed);
                Err(ApiError::busy(
                    format!(
                        "busy: {} page requests are being answered (admin.max_page_requests); try again",
                        self.limits.max_page_requests
                    ),
                    1,
                ))
            }
        }
    }

    /// Takes a new connection from `source` in, making room by closing an
    /// idle one if it must.
    fn admit(&self, source: IpAddr) -> Result<Arc<Conn>, Refused> {
        let mut r = self.registry.lock().unwrap();
        let from_source = r.by_source.get(&source).copied().unwrap_or(0);
        let victim = if from_source >= self.limits.max_connections_per_source {
            // Closing one of the same source also makes room in all.
            Some(r.victim(source, true).ok_or(Refused::Source)?)
        } else if r.live() >= self.max_connections {
            Some(r.victim(source, false).ok_or(Refused::Total)?)
        } else {
            None
        };
        if let Some(id) = victim {
            if r.evict(id) {
                self.stats.evicted.fetch_add(1, Relaxed);
            }
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Relaxed),
            source,
            state: Mutex::new(ConnState {
                phase: Phase::Idle,
                since: Instant::now(),
                close: None,
                waker: None,
            }),
        });
        r.conns.insert(
            conn.id,
            Entry {
                conn: conn.clone(),
                abort: None,
                closing: false,
            },
        );
        *r.by_source.entry(source).or_insert(0) += 1;
        self.stats.open.store(r.conns.len() as u64, Relaxed);
        Ok(conn)
    }

    fn set_abort(&self, id: u64, abort: AbortHandle) {
        if let Some(e) = self.registry.lock().unwrap().conns.get_mut(&id) {
            e.abort = Some(abort);
        }
    }

    /// A connection's task ended.
    fn forget(&self, id: u64) {
        let mut r = self.registry.lock().unwrap();
        r.remove(id);
        self.stats.open.store(r.conns.len() as u64, Relaxed);
        drop(r);
        self.freed.notify_waiters();
    }

    /// Counts a failed TLS handshake, and logs it unless a few were
    /// logged this second already.
    fn tls_failed(&self, why: TlsFailure, peer: SocketAddr, error: &dyn std::fmt::Display) {
        let i = TlsFailure::ALL
            .iter()
            .position(|&f| f == why)
            .expect("listed");
        self.stats.tls_failed[i].fetch_add(1, Relaxed);
        let logged = self
            .tls_log
            .lock()
            .unwrap()
            .allow(std::time::Instant::now());
        if let Some(suppressed) = logged {
            warn!(%peer, reason = why.as_str(), %error, suppressed, "admin endpoint: TLS handshake failed");
        }
    }

    fn close_all(&self, why: Close) {
        for e in self.registry.lock().unwrap().conns.values() {
            e.conn.close(why);
        }
    }

    fn abort_all(&self) {
        let mut r = self.registry.lock().unwrap();
        for (_, e) in r.conns.drain() {
            if let Some(a) = e.abort {
                a.abort();
            }
        }
        r.by_source.clear();
        r.closing = 0;
        self.stats.open.store(0, Relaxed);
    }
}

/// The admin port being served; [`shutdown`](Self::shutdown) stops it.
pub struct AdminServer {
    http: Arc<Http>,
    stop: watch::Sender<bool>,
    accepting: Option<JoinHandle<()>>,
}

/// Serves `router` on `listener` within `http`'s limits, over TLS if
/// `tls` is given, until [`AdminServer::shutdown`].
pub fn serve(
    listener: TcpListener,
    router: Router,
    http: Arc<Http>,
    tls: Option<TlsAcceptor>,
) -> AdminServer {
    let l = &http.limits;
    info!(
        https = tls.is_some(),
        max_connections = http.max_connections,
        configured = l.max_connections,
        per_source = l.max_connections_per_source,
        open_files_limit = http.nofile,
        fd_reserve = fd_reserve(http.nofile),
        header_timeout = ?l.header_timeout,
        idle_timeout = ?l.idle_timeout,
        page_bytes = l.page_bytes,
        max_page_requests = l.max_page_requests,
        "admin endpoint limits"
    );
    if http.max_connections < l.max_connections {
        warn!(
            max_connections = http.max_connections,
            configured = l.max_connections,
            open_files_limit = http.nofile,
            "the open-files limit leaves room for fewer admin connections than admin.max_connections; raise the limit (LimitNOFILE= under systemd)"
        );
    }
    let (stop, stopped) = watch::channel(false);
    let accepting = tokio::spawn(accept_loop(listener, router, http.clone(), tls, stopped));
    AdminServer {
        http,
        stop,
        accepting: Some(accepting),
    }
}

impl AdminServer {
    /// Stops accepting, lets answers in progress finish for up to
    /// [`STOP_GRACE`], then closes every connection left.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.accepting.take() {
            let _ = t.await;
        }
        self.http.close_all(Close::Stop);
        let deadline = Instant::now() + STOP_GRACE;
        while self.http.open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.http.abort_all();
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.accepting.take() {
            t.abort();
        }
        self.http.abort_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    http: Arc<Http>,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut said_out_of_fds: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = http.room() => {}
            _ = stopped.changed() => return,
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    if said_out_of_fds.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warn!(error = %e, "admin endpoint: out of file descriptors; not accepting for a moment");
                        said_out_of_fds = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        http.stats.accepted.fetch_add(1, Relaxed);
        let conn = match http.admit(peer.ip()) {
            Ok(c) => c,
            Err(why) => {
                // Closed before a byte is read: no task, no buffer.
                drop(stream);
                let n = match why {
                    Refused::Total => &http.stats.refused_total,
                    Refused::Source => &http.stats.refused_source,
                };
                n.fetch_add(1, Relaxed);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = conn.id;
        let task = tokio::spawn(drive(
            stream,
            peer,
            conn,
            router.clone(),
            http.clone(),
            tls.clone(),
        ));
        http.set_abort(id, task.abort_handle());
    }
}

/// Forgets a connection when its task ends (or is aborted).
struct Registered {
    http: Arc<Http>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.http.forget(self.id);
    }
}

/// Why a connection's task ended before its work did.
enum End {
    Evicted,
    Stopped,
    TimedOut(Timeout),
    /// The TLS handshake failed (counted where it failed).
    Refused,
}

/// Serves one connection until it ends, is told to close, or misses its
/// deadline: over TLS if `tls` is given, after the handshake.
async fn drive(
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<Conn>,
    router: Router,
    http: Arc<Http>,
    tls: Option<TlsAcceptor>,
) {
    // The guard goes with the socket: a connection upgraded to a WebSocket
    // outlives this task (hyper hands its socket to the handler), and
    // counts against the limits until that socket is closed.
    let registered = Registered {
        http: http.clone(),
        id: conn.id,
    };
    let end = match tls {
        None => {
            let socket = Watched {
                io: stream,
                conn: conn.clone(),
                _registered: registered,
            };
            serve_http(socket, peer, &conn, router, &http).await
        }
        Some(tls) => match handshake(&tls, stream, registered, peer, &conn, &http).await {
            Ok(stream) => serve_http(stream, peer, &conn, router, &http).await,
            Err(end) => Err(end),
        },
    };
    if let Err(End::TimedOut(why)) = end {
        let i = Timeout::ALL.iter().position(|&t| t == why).expect("listed");
        http.stats.timed_out[i].fetch_add(1, Relaxed);
    }
}

/// Drives `work` under the connection's deadlines: its output, or why it
/// was cut short (the connection evicted, stopped, or past its deadline).
/// On a stop, `on_stop` is called once: `true` if the work will then end by
/// itself soon (an answer in progress finishing), `false` to end it now.
async fn supervise<F: Future>(
    conn: &Conn,
    l: &AdminLimits,
    mut work: Pin<&mut F>,
    mut on_stop: impl FnMut(Pin<&mut F>) -> bool,
) -> Result<F::Output, End> {
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    let mut stopping = false;
    poll_fn(|cx: &mut Context<'_>| loop {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let (close, deadline) = {
            let mut s = conn.state();
            s.waker = Some(cx.waker().clone());
            (s.close, s.deadline(l))
        };
        match close {
            Some(Close::Evict) => return Poll::Ready(Err(End::Evicted)),
            Some(Close::Stop) if !stopping => {
                stopping = true;
                if !on_stop(work.as_mut()) {
                    return Poll::Ready(Err(End::Stopped));
                }
                continue;
            }
            _ => {}
        }
        let Some((at, why)) = deadline else {
            return Poll::Pending;
        };
        if armed != Some(at) {
            armed = Some(at);
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(End::TimedOut(why)));
        }
        return Poll::Pending;
    })
    .await
}

/// HTTP/1.1 on `io` (a socket, or a TLS stream over one) until the
/// connection ends.
async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    router: Router,
    http: &Http,
) -> Result<(), End>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_service = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let conn = for_service.clone();
        let mut router = router.clone();
        async move {
            conn.enter(Phase::Handling {
                body_done: req.body().is_end_stream(),
            });
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let body = RequestBody {
                inner: body,
                conn: Some(conn.clone()),
            };
            let answer = match router.call(Request::from_parts(parts, body)).await {
                Ok(a) => a,
                Err(never) => match never {},
            };
            if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
                conn.enter(Phase::Upgraded);
            } else {
                conn.enter(Phase::Writing);
            }
            let streaming = answer.extensions().get::<Streaming>().is_some();
            Ok::<_, Infallible>(answer.map(|inner| ResponseBody {
                inner,
                conn,
                streaming,
            }))
        }
    });
    let l = http.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_timeout + l.idle_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_BUF);
    let connection = pin!(builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());
    // A stop lets the answer in progress finish, with no keep-alive.
    supervise(conn, &l, connection, |c| {
        c.graceful_shutdown();
        true
    })
    .await
    // hyper's own errors (a client gone, a malformed request) end the
    // connection; it has answered what it could.
    .map(|_| ())
}

/// The TLS handshake of a new connection, under its deadlines; a failure
/// is counted and logged (a few a second).
async fn handshake(
    tls: &TlsAcceptor,
    stream: TcpStream,
    registered: Registered,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    http: &Http,
) -> Result<tokio_rustls::server::TlsStream<Watched>, End> {
    let l = &http.limits;
    // The first byte, left in the socket: a ClientHello starts with a
    // handshake record; anything else is not TLS. Waiting for it is the
    // idle phase (no byte yet), as on a plain connection.
    let mut first = [0u8; 1];
    let peeked = supervise(conn, l, pin!(stream.peek(&mut first)), |_| false).await;
    let failed = |why, error: &dyn std::fmt::Display| http.tls_failed(why, peer, error);
    match peeked {
        // Closed before a byte: a port check, not a failed handshake.
        Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Refused),
        Ok(Ok(_)) => {}
        // No ClientHello within idle_timeout: for TLS, a handshake not
        // done in time.
        Err(End::TimedOut(why)) => {
            failed(TlsFailure::Timeout, &why.as_str());
            return Err(End::TimedOut(why));
        }
        Err(end) => return Err(end),
    }
    // Peeked bytes are not read through `Watched`: the head starts now.
    conn.read_some();
    let mut socket = Watched {
        io: stream,
        conn: conn.clone(),
        _registered: registered,
    };
    if first[0] != TLS_HANDSHAKE_RECORD {
        failed(
            TlsFailure::NotTls,
            &format_args!("first byte {:#04x}", first[0]),
        );
        if first[0].is_ascii_uppercase() {
            // Plain HTTP: take the request in (closing with it unread
            // would reset the connection before the answer is read), then
            // say why in clear. Bounded like any request head.
            let answer = async {
                let mut head = [0u8; 2048];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut head).await;
                socket.write_all(PLAIN_TO_TLS).await?;
                socket.shutdown().await
            };
            let _ = supervise(conn, l, pin!(answer), |_| false).await;
        }
        return Err(End::Refused);
    }
    match supervise(conn, l, pin!(tls.accept(socket)), |_| false).await {
        Ok(Ok(stream)) => {
            // Done: waiting for the first request is idle time, as on a
            // plain connection (and such a connection may make room).
            conn.enter(Phase::Idle);
            Ok(stream)
        }
        Ok(Err(e)) => {
            failed(TlsFailure::Error, &e);
            Err(End::Refused)
        }
        Err(End::TimedOut(why)) => {
            failed(TlsFailure::Timeout, &why.as_str());
            Err(End::TimedOut(why))
        }
        Err(end) => Err(end),
    }
}

/// The connection's socket, telling its connection when bytes come.
struct Watched {
    io: TcpStream,
    conn: Arc<Conn>,
    _registered: Registered,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request's body, telling its connection when it is all in.
struct RequestBody {
    inner: Incoming,
    conn: Option<Arc<Conn>>,
}

impl RequestBody {
    fn done(&mut self) {
        if let Some(c) = self.conn.take() {
            c.body_done();
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None | Some(Err(_))) => self.done(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks an answer that streams for as long as the client stays
/// (server-sent events), as a response extension: its write deadline
/// counts from the last piece of it the connection took, not from its
/// start. A client that stops reading stops the connection from taking
/// pieces, and is closed `idle_timeout` later; the stream must send
/// something (a heartbeat) more often than that.
#[derive(Clone, Copy, Debug)]
pub struct Streaming;

/// An answer's body, telling its connection when it is all sent.
struct ResponseBody {
    inner: axum::body::Body,
    conn: Arc<Conn>,
    /// A [`Streaming`] answer: each piece moves the write deadline.
    streaming: bool,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper asks for the next piece only once the last has gone into
        // its buffer: progress of the client.
        if self.streaming && matches!(r, Poll::Ready(Some(Ok(_)))) {
            self.conn.enter(Phase::Writing);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.conn.answer_sent();
    }
}

/// A page's JSON as an answer that holds `permit` until the client has
/// taken it (all but the last slice).
pub fn page_answer(json: Vec<u8>, permit: Option<PagePermit>) -> Response {
    let body = PageBody {
        left: Bytes::from(json),
        permit,
    };
    let mut r = Response::new(axum::body::Body::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

struct PageBody {
    left: Bytes,
    permit: Option<PagePermit>,
}

impl HttpBody for PageBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left.is_empty() {
            self.permit = None;
            return Poll::Ready(None);
        }
        let n = self.left.len().min(PAGE_SLICE);
        let slice = self.left.split_to(n);
        if self.left.is_empty() {
            self.permit = None;
        }
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.left.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left.len() as u64)
    }
}

/// The admin port's families for `/metrics`.
impl Collect for Http {
    fn collect(&self, e: &mut Exposition) {
        render(e, self);
    }
}

fn render(e: &mut Exposition, http: &Http) {
    let s = &http.stats;
    let name = "sluice_admin_connections";
    e.family(name, Kind::Gauge, "Connections open on the admin port.")
        .sample(name, &[], s.open.load(Relaxed));
    let idle = {
        let r = http.registry.lock().unwrap();
        r.conns
            .values()
            .filter(|e| !e.closing && e.conn.idle_since().is_some())
            .count() as u64
    };
    let name = "sluice_admin_connections_idle";
    e.family(
        name,
        Kind::Gauge,
        "Connections open on the admin port waiting for a request (a new one over a limit takes the place of one of these).",
    )
    .sample(name, &[], idle);
    let name = "sluice_admin_connections_max";
    e.family(
        name,
        Kind::Gauge,
        "Most connections the admin port keeps open: admin.max_connections, or fewer to keep a reserve of file descriptors.",
    )
    .sample(name, &[], http.max_connections as u64);
    let name = "sluice_admin_connections_accepted_total";
    e.family(
        name,
        Kind::Counter,
        "Connections accepted on the admin port (including those closed at once).",
    )
    .sample(name, &[], s.accepted.load(Relaxed));
    let name = "sluice_admin_connections_refused_total";
    e.family(
        name,
        Kind::Counter,
        "Connections closed at once, by the limit they were over (none idle to make room).",
    );
    e.sample(name, &[("reason", "total")], s.refused_total.load(Relaxed));
    e.sample(
        name,
        &[("reason", "source")],
        s.refused_source.load(Relaxed),
    );
    let name = "sluice_admin_connections_closed_total";
    e.family(
        name,
        Kind::Counter,
        "Connections the daemon closed: idle ones whose place a new one took (evicted), and those past a deadline.",
    );
    e.sample(name, &[("reason", "evicted")], s.evicted.load(Relaxed));
    for (t, n) in Timeout::ALL.iter().zip(&s.timed_out) {
        e.sample(name, &[("reason", t.as_str())], n.load(Relaxed));
    }
    let name = "sluice_admin_page_requests";
    e.family(
        name,
        Kind::Gauge,
        "Page-returning requests (records, dead letters, fetch) holding a turn now.",
    )
    .sample(
        name,
        &[],
        (http.limits.max_page_requests - http.pages.available_permits()) as u64,
    );
    let name = "sluice_admin_page_requests_refused_total";
    e.family(
        name,
        Kind::Counter,
        "Page-returning requests answered 503 after waiting for a turn.",
    )
    .sample(name, &[], s.pages_busy.load(Relaxed));
    let name = "sluice_admin_tls_handshake_failures_total";
    e.family(
        name,
        Kind::Counter,
        "TLS handshakes on the admin port (admin.tls) that failed: not TLS at all (plain HTTP: answered 400), refused by rustls, or not done in time.",
    );
    for (f, n) in TlsFailure::ALL.iter().zip(&s.tls_failed) {
        e.sample(name, &[("reason", f.as_str())], n.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> AdminLimits {
        AdminLimits {
            max_connections: total,
            max_connections_per_source: per_source,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            page_bytes: 1 << 20,
            max_page_requests: 2,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn over_a_limit_an_idle_connection_makes_room_else_the_new_one_is_refused() {
        let http = Http::new(limits(3, 2));
        let a1 = http.admit(ip(1)).unwrap();
        let a2 = http.admit(ip(1)).unwrap();
        // a1 starts a request: only a2 is idle.
        a1.read_some();
        let a3 = http.admit(ip(1)).unwrap();
        assert_eq!(a2.state().close, Some(Close::Evict), "the idle one goes");
        assert_eq!(a1.state().close, None);
        a3.read_some();
        assert_eq!(http.admit(ip(1)).err(), Some(Refused::Source));
        // Room in all for one more, then the total is reached: the idle
        // one of the busiest source goes.
        let b1 = http.admit(ip(2)).unwrap();
        let live = || http.registry.lock().unwrap().live();
        assert_eq!((live(), http.open()), (3, 4), "a2 is closing");
        assert!(http.has_room());
        let c1 = http.admit(ip(3)).unwrap();
        assert_eq!(b1.state().close, Some(Close::Evict));
        c1.read_some();
        assert_eq!(http.admit(ip(4)).err(), Some(Refused::Total));
        http.forget(a1.id);
        assert!(http.admit(ip(4)).is_ok());
        assert_eq!(http.stats.evicted.load(Relaxed), 2);
        // The tasks of the evicted ones end: their sockets are counted
        // until then.
        assert_eq!(http.open(), 5);
        http.forget(a2.id);
        http.forget(b1.id);
        assert_eq!((live(), http.open()), (3, 3));
        assert_eq!(
            http.registry.lock().unwrap().by_source.get(&ip(1)),
            Some(&1)
        );
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let l = limits(1, 1);
        let http = Http::new(l);
        let c = http.admit(ip(1)).unwrap();
        let at = |c: &Conn| {
            let s = c.state();
            s.deadline(&l).map(|(t, w)| (t - s.since, w))
        };
        assert_eq!(at(&c), Some((l.idle_timeout, Timeout::Idle)));
        c.read_some();
        assert_eq!(at(&c), Some((l.header_timeout, Timeout::Header)));
        c.enter(Phase::Handling { body_done: false });
        assert_eq!(at(&c), Some((l.idle_timeout, Timeout::Body)));
        c.body_done();
        assert_eq!(at(&c), None, "a handler at work is not timed");
        c.enter(Phase::Writing);
        assert_eq!(at(&c), Some((l.idle_timeout, Timeout::Write)));
        c.answer_sent();
        assert_eq!(at(&c), Some((l.idle_timeout, Timeout::Idle)));
        // A WebSocket: its handler keeps its own time; the 101's body
        // ending does not make it idle (a new connection cannot take its
        // place).
        c.enter(Phase::Upgraded);
        c.answer_sent();
        assert_eq!(at(&c), None, "an upgraded socket is the handler's to time");
        assert_eq!(c.idle_since(), None);
    }

    #[test]
    fn the_reserve_of_descriptors_caps_the_connections() {
        assert_eq!(fd_reserve(1024), 512);
        assert_eq!(fd_reserve(1 << 20), 1 << 18);
        let http = Http::new(limits(usize::MAX, 1));
        let nofile = open_files_limit();
        assert_eq!(
            http.max_connections() as u64,
            nofile.saturating_sub(fd_reserve(nofile)).max(1)
        );
    }
}
