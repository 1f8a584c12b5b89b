//! The admin port's limits against real daemons (issue 17, points 3 and
//! 4).
//!
//! Pages (records, dead letters, fetch) are capped in payload bytes as
//! well as in count, one message larger than the cap still comes (alone),
//! only a few pages are built at once, and `next` pages through everything
//! (`sluice read` and `sluice dlq list` too). The port caps its
//! connections in all and per source address (an idle connection makes
//! room for a new one; busy ones do not), closes slow headers, slow bodies
//! and idle connections in time, and keeps a reserve of file descriptors:
//! under a flood of 20,000 connections `/health` answers, producers publish,
//! consumers consume and new streams are created.
//!
//! The daemon's resident memory and open descriptors before, during and
//! after each attack are printed (`cargo test -- --nocapture`). The tests
//! take turns: their timings and memory figures would disturb each other on
//! a small machine.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;
use sluice_tests::consume::{get, post, publish, succeeded, Answer};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::{sluice_bin, sluiced_bin};
use sluice_transport::client::{Producer, ProducerOptions, Transport};

const MIB: u64 = 1 << 20;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(dir: &Path, args: &[&str]) -> DaemonSpec {
    let mut spec = DaemonSpec::new(sluiced_bin!(), dir);
    for a in args {
        spec = spec.arg(*a);
    }
    spec
}

/// Waits (up to 5 s) until the only admin connection `d` has open is the
/// one asking, then a moment more for that one to go: the connections of
/// its start and of earlier checks are gone, so that a test's own are all
/// it counts. (One left over from the start, idle, made the 24th of a
/// test's connections take the place of a new one of its own.)
fn settled(d: &Daemon) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let open = d.metrics().value("sluice_admin_connections", &[]);
        if open <= 1.0 {
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        assert!(Instant::now() < until, "{open} admin connections stay open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// The highest resident memory and descriptor count of `d` seen while
/// `f` runs (sampled every 5 ms), and what `f` returned.
fn watching<T: Send>(d: &Daemon, f: impl FnOnce() -> T + Send) -> (T, u64, usize) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut rss, mut fds) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                rss = rss.max(d.rss());
                fds = fds.max(d.open_fds());
                std::thread::sleep(Duration::from_millis(5));
            }
            (rss, fds)
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        let (rss, fds) = sampler.join().expect("sampler");
        (out, rss, fds)
    })
}

// ---------------------------------------------------------------------------
// Pages

/// Message `i` of the large-page test: `len` bytes, its number first.
fn big(i: usize, len: usize) -> Bytes {
    let mut v = vec![b'a' + (i % 26) as u8; len];
    let tag = format!("message {i:07};");
    v[..tag.len()].copy_from_slice(tag.as_bytes());
    Bytes::from(v)
}

fn publish_big(spec: &DaemonSpec, stream: &str, payloads: &[Bytes]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let options = ProducerOptions {
            transport: Transport::Quic(spec.quic_options(None)),
            ..ProducerOptions::default()
        };
        let p = Producer::connect(spec.quic, stream, 7, options)
            .await
            .expect("connect the producer");
        for batch in payloads.chunks(4) {
            p.send_batch(batch.to_vec()).await.expect("published");
        }
        p.close().await.expect("closed");
    });
}

fn decode(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 payload"))
        .expect("base64")
}

fn ok(a: Answer) -> Value {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// An answer of any size (pages reach 16 MiB; ureq's `into_string` stops
/// at 10).
fn big_answer(r: Result<ureq::Response, ureq::Error>, what: &str) -> Value {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            panic!("{what}: {code} {}", r.into_string().unwrap_or_default())
        }
        Err(e) => panic!("{what}: {e}"),
    };
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).expect("the body");
    serde_json::from_slice(&body).expect("JSON")
}

fn get_page(admin: SocketAddr, path: &str) -> Value {
    big_answer(
        ureq::get(&format!("http://{admin}{path}"))
            .timeout(Duration::from_secs(60))
            .call(),
        path,
    )
}

fn post_page(admin: SocketAddr, path: &str, body: &str) -> Value {
    big_answer(
        ureq::post(&format!("http://{admin}{path}"))
            .timeout(Duration::from_secs(60))
            .send_string(body),
        path,
    )
}

/// Offsets and payload bytes of a page's items (`records`,
/// `dead_letters` or `messages`), checking each payload against what was
/// published at its offset (`source` names the field holding it).
fn items(page: &Value, key: &str, source: &str, sent: &[Bytes]) -> (Vec<u64>, u64) {
    let list = page[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in the page"));
    let mut bytes = 0;
    let offsets = list
        .iter()
        .map(|r| {
            let at = r[source].as_u64().expect("an offset");
            let p = decode(&r["payload"]);
            assert!(p == sent[at as usize], "the payload of offset {at} differs");
            bytes += p.len() as u64;
            r["offset"].as_u64().expect("an offset")
        })
        .collect();
    (offsets, bytes)
}

/// The page rule: at most `cap` bytes of payload, or a single item.
fn within(cap: u64, n: usize, bytes: u64) -> bool {
    bytes <= cap || n == 1
}

/// Follows `next` from offset 0 through `route`'s pages (asking for 10,000
/// a page) until one is empty; each page's `(list, source)` offsets, every
/// page checked to be within `cap` bytes (or one item).
fn page_through(
    admin: SocketAddr,
    route: &str,
    (list, source): (&str, &str),
    sent: &[Bytes],
    cap: u64,
) -> Vec<Vec<u64>> {
    let (mut from, mut pages) = (0, Vec::new());
    loop {
        let page = get_page(admin, &format!("{route}?from={from}&limit=10000"));
        let (offsets, bytes) = items(&page, list, source, sent);
        if offsets.is_empty() {
            return pages;
        }
        assert!(within(cap, offsets.len(), bytes), "{offsets:?}: {bytes}");
        pages.push(offsets);
        from = page["next"].as_u64().expect("next");
    }
}

#[test]
fn pages_are_capped_in_bytes_a_few_at_a_time_and_page_through_everything() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let cap = 8 * MIB;
    let spec = spec(
        dir.path(),
        &[
            "--admin-page-bytes",
            &cap.to_string(),
            "--admin-max-page-requests",
            "2",
            "--consumers-max-deliveries",
            "1",
        ],
    );
    let d = spec.start();
    // 3 MiB messages (two fit a page, three do not), and one of 12 MiB:
    // larger than a page, it must come alone.
    let sent: Vec<Bytes> = (0..33)
        .map(|i| big(i, if i == 16 { 12 << 20 } else { 3 << 20 }))
        .collect();
    let total: u64 = sent.iter().map(|p| p.len() as u64).sum();
    let started = Instant::now();
    publish_big(&spec, "big", &sent);
    eprintln!(
        "large pages: published {} messages, {:.0} MiB, in {:?}",
        sent.len(),
        mib(total),
        started.elapsed()
    );

    // Four whole-stream requests at once.
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = d.rss();
    let turns = AtomicUsize::new(0);
    let (pages, rss_peak, _) = watching(&d, || {
        std::thread::scope(|s| {
            let asks: Vec<_> = (0..4)
                .map(|_| s.spawn(|| get_page(d.admin, "/streams/big/records?from=0&limit=10000")))
                .collect();
            while !asks.iter().all(|a| a.is_finished()) {
                let now = d.metrics().value("sluice_admin_page_requests", &[]) as usize;
                turns.fetch_max(now, Ordering::Relaxed);
            }
            asks.into_iter()
                .map(|a| a.join().expect("request"))
                .collect::<Vec<_>>()
        })
    });
    let turns = turns.into_inner();
    assert!((1..=2).contains(&turns), "{turns} pages at once (max 2)");
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = d.rss();
    for page in &pages {
        let (offsets, bytes) = items(page, "records", "offset", &sent);
        assert_eq!(offsets, [0, 1], "two 3 MiB records fit 8 MiB, three do not");
        assert!(within(cap, offsets.len(), bytes));
        assert_eq!(page["next"], 2);
    }
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "large pages: 4 concurrent GET /records?limit=10000 over {:.0} MiB: daemon RSS before {:.1} MiB, peak during {:.1} MiB (+{:.1}), after {:.1} MiB",
        mib(total),
        mib(rss_before),
        mib(rss_peak),
        mib(growth),
        mib(rss_after)
    );
    // Two turns of at most a page (or one 12 MiB record) each, as JSON
    // (base64: ×4/3), plus the record being read: about 2 × 26 MiB. Without
    // caps the four pages were each the whole stream (~4 × 400 MiB).
    let bound = 2 * (12 * MIB * 4 / 3 + 12 * MIB) + 48 * MIB;
    assert!(
        growth < bound,
        "RSS grew by {:.0} MiB (bound {:.0} MiB)",
        mib(growth),
        mib(bound)
    );

    // Paging with `next` reads every record once, in order; the 12 MiB
    // one comes alone.
    let pages = page_through(
        d.admin,
        "/streams/big/records",
        ("records", "offset"),
        &sent,
        cap,
    );
    for offsets in &pages {
        if offsets.contains(&16) {
            assert_eq!(offsets, &[16], "the record larger than a page comes alone");
        }
    }
    assert_eq!(pages.concat(), (0..33).collect::<Vec<u64>>());
    // `sluice read` pages the same way.
    let read = succeeded(
        &Command::new(sluice_bin!())
            .args(["read", "-s", "big", "--format", "json"])
            .args(["--admin", &d.admin.to_string()])
            .env_remove("SLUICE_TOKEN")
            .output()
            .expect("run sluice read"),
    );
    let offsets: Vec<u64> = read
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, (0..33).collect::<Vec<u64>>());

    // Fetches hand out about a page at a time; the rest stays with the
    // group (each message is handed out once).
    let (mut fetched, mut fetches) = (Vec::new(), 0);
    loop {
        let page = post_page(d.admin, "/streams/big/groups/g/fetch", r#"{"max": 10000}"#);
        let (offsets, bytes) = items(&page, "messages", "offset", &sent);
        if offsets.is_empty() {
            break;
        }
        fetches += 1;
        // Slices are sized by the largest message seen so far: only one
        // larger than those before it can take a page past the cap.
        assert!(
            within(cap, offsets.len(), bytes) || offsets.contains(&16) && bytes <= cap + 12 * MIB,
            "fetch {offsets:?}: {bytes} bytes"
        );
        for m in page["messages"].as_array().unwrap() {
            assert_eq!(m["delivery"], 1, "handed out once");
        }
        fetched.extend(offsets);
        assert!(fetches < 40, "fetches do not end");
    }
    fetched.sort_unstable();
    assert_eq!(fetched, (0..33).collect::<Vec<u64>>());
    eprintln!("large pages: {fetches} fetches of max 10000 handed out the 33 messages");

    // Nacked once (max_deliveries = 1), every message is dead-lettered;
    // the list pages the same way.
    let nack = serde_json::json!({ "offsets": fetched, "delay_ms": 0 }).to_string();
    ok(post(d.admin, "/streams/big/groups/g/nack", &nack, None));
    let limit = Instant::now() + Duration::from_secs(20);
    while ok(get(d.admin, "/streams/big/dlq?limit=1", None))["durable_end"] != 33 {
        assert!(Instant::now() < limit, "the dead letters are not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pages = page_through(
        d.admin,
        "/streams/big/dlq",
        ("dead_letters", "source_offset"),
        &sent,
        cap,
    );
    assert_eq!(pages.concat(), (0..33).collect::<Vec<u64>>());
    let listed = succeeded(
        &Command::new(sluice_bin!())
            .args(["dlq", "list", "big", "--json"])
            .args(["--admin", &d.admin.to_string()])
            .env_remove("SLUICE_TOKEN")
            .output()
            .expect("run sluice dlq list"),
    );
    assert_eq!(listed.lines().count(), 33);
    let m = d.metrics();
    assert_eq!(m.value("sluice_admin_page_requests", &[]), 0.0);
}

#[test]
fn a_reader_that_does_not_read_holds_its_page_turn_only_until_the_write_timeout() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    // One turn; a page of 15 MiB (20 MiB as JSON: more than the sockets
    // buffer) for a client that never reads it.
    let spec = spec(
        dir.path(),
        &[
            "--admin-page-bytes",
            &(16 * MIB).to_string(),
            "--admin-max-page-requests",
            "1",
            "--admin-idle-timeout",
            "7s",
        ],
    );
    let d = spec.start();
    let sent: Vec<Bytes> = (0..5).map(|i| big(i, 3 << 20)).collect();
    publish_big(&spec, "big", &sent);
    let mut stuck = connect_from(Ipv4Addr::new(127, 0, 0, 10), d.admin).expect("connect");
    stuck
        .write_all(b"GET /streams/big/records?limit=10000 HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.metrics().value("sluice_admin_page_requests", &[]), 1.0);
    // Another page waits for the turn, then is told to come back.
    let r = ureq::get(&format!("http://{}/streams/big/records?limit=1", d.admin))
        .timeout(Duration::from_secs(20))
        .call();
    let waited = t0.elapsed();
    let Err(ureq::Error::Status(503, r)) = r else {
        panic!("a page without a turn: {r:?}")
    };
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.into_string().unwrap().contains("busy"));
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    // `sluice read` waits and tries again; the stuck reader loses its
    // connection (and the turn) at the write timeout.
    let read = succeeded(
        &Command::new(sluice_bin!())
            .args(["read", "-s", "big", "--format", "json"])
            .args(["--admin", &d.admin.to_string()])
            .env_remove("SLUICE_TOKEN")
            .output()
            .expect("run sluice read"),
    );
    let served = t0.elapsed();
    assert_eq!(read.lines().count(), 5);
    assert!(
        (Duration::from_secs(6)..Duration::from_secs(12)).contains(&served),
        "served after {served:?}"
    );
    assert!(closed(&mut stuck, Duration::from_secs(1)));
    let m = d.metrics();
    assert_eq!(
        m.value(
            "sluice_admin_connections_closed_total",
            &[("reason", "write_timeout")]
        ),
        1.0
    );
    assert!(m.value("sluice_admin_page_requests_refused_total", &[]) >= 1.0);
    assert_eq!(m.value("sluice_admin_page_requests", &[]), 0.0);
    eprintln!(
        "slow reader: a page waited {waited:?} for the turn (503), sluice read was served after {served:?}"
    );
}

// ---------------------------------------------------------------------------
// Connections

/// A TCP connection to `to` from address `from` (any loopback address
/// works on Linux), with a 2 s bound on the connect.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns (the
    // TcpStream takes it over at once); the addresses outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let local = sockaddr(from, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(*to.ip(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Whether the daemon has closed `s` (EOF or reset), waiting up to `wait`.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // An answer (to a request sent before): read on.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends `GET path` on `s` and reads the answer: its status.
fn get_on(s: &mut TcpStream, path: &str) -> io::Result<u16> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: sluice\r\n\r\n")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = s.read(&mut b)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
                return status.ok_or_else(|| io::ErrorKind::InvalidData.into());
            }
        }
    }
}

/// `/health` from 127.0.0.1 through ureq (a connection of its own):
/// whether it answered 200 within 2 s, with one more try.
fn health(admin: SocketAddr) -> bool {
    (0..2).any(|_| {
        ureq::get(&format!("http://{admin}/health"))
            .timeout(Duration::from_secs(2))
            .call()
            .is_ok_and(|r| r.status() == 200)
    })
}

/// Raises this process's open-files limit to `want` (root may raise the
/// hard limit); returns the soft limit it has then.
fn raise_own_nofile(want: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a struct that outlives the calls.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: l.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                l.rlim_cur = l.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}

/// Whether the daemon has closed `c` (a non-blocking socket).
fn gone(c: &mut TcpStream) -> bool {
    match c.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// What a flood of connections saw.
struct Flood {
    /// Connections the daemon has not closed (the flood keeps them).
    held: Vec<TcpStream>,
    failed: usize,
    /// Connections the daemon closed (the flood closed its end then).
    closed: usize,
    took: Duration,
}

/// Opens `n` connections from `from` to `admin` on 4 threads (at most
/// `within`), keeping each open until the daemon closes it (checked every
/// 500: a flood's own descriptors stay few); `opened` counts them.
fn flood(
    admin: SocketAddr,
    from: Ipv4Addr,
    n: usize,
    within: Duration,
    opened: &AtomicUsize,
) -> Flood {
    let started = Instant::now();
    let parts: Vec<Flood> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut f = Flood {
                        held: Vec::new(),
                        failed: 0,
                        closed: 0,
                        took: Duration::ZERO,
                    };
                    for i in 0..n / 4 {
                        if started.elapsed() > within {
                            break;
                        }
                        match connect_from(from, admin) {
                            Ok(c) => {
                                c.set_nonblocking(true).unwrap();
                                f.held.push(c);
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => f.failed += 1,
                        }
                        if i % 500 == 499 {
                            let before = f.held.len();
                            f.held.retain_mut(|c| !gone(c));
                            f.closed += before - f.held.len();
                        }
                    }
                    f
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("flood"))
            .collect()
    });
    let mut all = Flood {
        held: Vec::new(),
        failed: 0,
        closed: 0,
        took: started.elapsed(),
    };
    for p in parts {
        all.held.extend(p.held);
        all.failed += p.failed;
        all.closed += p.closed;
    }
    all
}

#[test]
fn a_flood_of_20000_connections_leaves_the_daemon_serving() {
    let _t = turn();
    raise_own_nofile(8192);
    let n = 20_000usize;
    let dir = tempfile::tempdir().unwrap();
    // One source may take every connection: the cap that bites is the
    // descriptors'. With 1024 open files (soft and hard), the admin port
    // keeps 512 in reserve and accepts 512 connections at most.
    let spec = spec(
        dir.path(),
        &["--admin-max-connections-per-source", "100000"],
    );
    let line = spec.command_line();
    let mut cmd = Command::new(&line[0]);
    cmd.args(&line[1..]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the
    // child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = spec.start_with(&mut cmd);
    let nofile = 1024usize;
    assert_eq!(
        d.metrics().value("sluice_admin_connections_max", &[]),
        512.0
    );
    publish(sluice_bin!(), &spec, "warm", 1, &["a"], None);
    std::thread::sleep(Duration::from_millis(200));
    let (rss_before, fds_before) = (d.rss(), d.open_fds());

    let opened = AtomicUsize::new(0);
    let flood_done = AtomicBool::new(false);
    let ((f, checks), rss_peak, fds_peak) = watching(&d, || {
        std::thread::scope(|s| {
            let flooding = s.spawn(|| {
                let f = flood(
                    d.admin,
                    Ipv4Addr::new(127, 0, 0, 2),
                    n,
                    Duration::from_secs(30),
                    &opened,
                );
                flood_done.store(true, Ordering::Relaxed);
                f
            });
            let limit = Instant::now() + Duration::from_secs(20);
            while opened.load(Ordering::Relaxed) < 1000 && !flood_done.load(Ordering::Relaxed) {
                assert!(Instant::now() < limit, "the flood does not start");
                std::thread::sleep(Duration::from_millis(5));
            }
            // Meanwhile: /health, a producer on a new stream, a consumer,
            // and records over HTTP.
            let mut checks = vec![health(d.admin)];
            publish(sluice_bin!(), &spec, "fresh", 2, &["x", "y", "z"], None);
            checks.push(health(d.admin));
            let consumed = succeeded(
                &Command::new(sluice_bin!())
                    .args(["consume", "fresh", "-g", "g", "--count", "3"])
                    .args(["--to", &spec.quic.to_string()])
                    .args(["--server-cert", &spec.server_cert().display().to_string()])
                    .env_remove("SLUICE_TOKEN")
                    .env_remove("SLUICE_ADDR")
                    .stdin(Stdio::null())
                    .output()
                    .expect("run sluice consume"),
            );
            assert_eq!(consumed, "x\ny\nz\n");
            let page = ok(get(d.admin, "/streams/fresh/records", None));
            assert_eq!(page["records"].as_array().map(Vec::len), Some(3));
            let during = opened.load(Ordering::Relaxed);
            while !flood_done.load(Ordering::Relaxed) {
                checks.push(health(d.admin));
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "flood: the new stream was published to, consumed and read while {during} connections had come"
            );
            let mut f = flooding.join().expect("flood");
            // With what is left of the flood held: still served.
            for _ in 0..5 {
                checks.push(health(d.admin));
            }
            publish(sluice_bin!(), &spec, "fresher", 3, &["w"], None);
            let before = f.held.len();
            f.held.retain_mut(|c| !gone(c));
            f.closed += before - f.held.len();
            (f, checks)
        })
    });
    let m = d.metrics();
    let open_now = m.value("sluice_admin_connections", &[]);
    let evicted = m.value(
        "sluice_admin_connections_closed_total",
        &[("reason", "evicted")],
    );
    let (opened, still) = (opened.load(Ordering::Relaxed), f.held.len());
    drop(f.held);
    let limit = Instant::now() + Duration::from_secs(5);
    while d.open_fds() > fds_before + 8 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss_after, fds_after) = (d.rss(), d.open_fds());
    eprintln!(
        "flood: {opened} connections opened ({} failed) from one source in {:?}; the daemon (1024 open files) closed {} of them ({evicted} evicted) and kept {still} ({open_now} open on its side); {} /health checks, all answered: {}",
        f.failed,
        f.took,
        f.closed,
        checks.len(),
        checks.iter().all(|&c| c)
    );
    eprintln!(
        "flood: daemon fds before {fds_before}, peak during {fds_peak}, after {fds_after}; RSS before {:.1} MiB, peak during {:.1} MiB, after {:.1} MiB",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after)
    );
    assert!(
        checks.iter().all(|&c| c),
        "/health failed during the flood: {checks:?}"
    );
    assert!(
        opened + f.failed >= n,
        "the flood opened {opened} of {n} in {:?}",
        f.took
    );
    assert!(fds_peak < nofile, "the daemon reached its open-files limit");
    // 512 connections, up to 64 more closing (their tasks have not run
    // yet), and what the spool, the producers and the consumer take.
    assert!(
        fds_peak <= fds_before + 512 + 64 + 24,
        "{fds_peak} descriptors open (before: {fds_before})"
    );
    assert!(open_now <= 512.0, "{open_now} connections kept");
    assert!(still <= 512, "{still} flood connections left open");
    assert!(fds_after <= fds_before + 8, "{fds_after} descriptors after");
    // The spool still takes new streams (their files need descriptors).
    publish(sluice_bin!(), &spec, "after", 4, &["v"], None);
    assert!(
        rss_peak < rss_before + 256 * MIB,
        "RSS {:.0} MiB during the flood",
        mib(rss_peak)
    );
}

/// Writes `bytes` to each open connection of `conns` that the daemon has
/// not closed yet, and notes when it finds one closed: (started, closed).
fn drip(conns: &mut [(TcpStream, Instant, Option<Instant>)], bytes: &[u8]) {
    for (c, _, end) in conns.iter_mut().filter(|(_, _, e)| e.is_none()) {
        if c.write_all(bytes).is_err() || closed(c, Duration::from_millis(1)) {
            *end = Some(Instant::now());
        }
    }
}

fn took(conns: &[(TcpStream, Instant, Option<Instant>)]) -> Vec<Duration> {
    conns
        .iter()
        .map(|(_, start, end)| end.map_or(Duration::MAX, |e| e - *start))
        .collect()
}

fn range(ds: &[Duration]) -> (Duration, Duration) {
    (
        ds.iter().copied().min().unwrap_or_default(),
        ds.iter().copied().max().unwrap_or_default(),
    )
}

#[test]
fn slow_headers_slow_bodies_and_idle_connections_are_closed_in_time() {
    let _t = turn();
    raise_own_nofile(4096);
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        &["--admin-header-timeout", "1s", "--admin-idle-timeout", "2s"],
    );
    let d = spec.start();
    publish(sluice_bin!(), &spec, "s", 1, &["a"], None);
    let (rss_before, fds_before) = (d.rss(), d.open_fds());
    let from = |last| Ipv4Addr::new(127, 0, 0, last);
    let connect = |last| connect_from(from(last), d.admin).expect("connect");

    // Slowloris: a header line, then a byte every 200 ms, never done.
    let mut slow: Vec<_> = (0..50)
        .map(|_| {
            let mut c = connect(3);
            c.write_all(b"GET /health HTTP/1.1\r\nHost: sluice\r\nX-Slow: ")
                .unwrap();
            (c, Instant::now(), None)
        })
        .collect();
    // Idle: nothing at all.
    let mut idle: Vec<_> = (0..20)
        .map(|_| (connect(4), Instant::now(), None))
        .collect();
    // Kept alive after an answer, then quiet.
    let mut kept = connect(5);
    assert_eq!(get_on(&mut kept, "/health").unwrap(), 200);
    let mut kept = vec![(kept, Instant::now(), None)];
    // A body that trickles in after complete headers.
    let mut body = connect(5);
    body.write_all(
        b"POST /streams/s/groups/g/ack HTTP/1.1\r\nHost: sluice\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    let mut body = vec![(body, Instant::now(), None)];

    let (_, rss_peak, fds_peak) = watching(&d, || {
        std::thread::scope(|s| {
            // A long poll outlasts the idle timeout: handlers are not timed.
            let poll = s.spawn(|| {
                let asked = Instant::now();
                let a = post(
                    d.admin,
                    "/streams/s/groups/g/fetch",
                    r#"{"max": 1, "wait_ms": 3000, "start": "latest"}"#,
                    None,
                );
                (a, asked.elapsed())
            });
            let limit = Instant::now() + Duration::from_secs(8);
            let mut healthy = Vec::new();
            let mut tick = 0;
            while Instant::now() < limit
                && [&slow, &idle, &kept, &body]
                    .iter()
                    .any(|v| v.iter().any(|(_, _, e)| e.is_none()))
            {
                drip(&mut slow, b"a");
                drip(&mut body, b" ");
                drip(&mut idle, b"");
                drip(&mut kept, b"");
                if tick % 10 == 0 {
                    healthy.push(health(d.admin));
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(healthy.iter().all(|&h| h), "/health failed: {healthy:?}");
            let (a, waited) = poll.join().expect("long poll");
            assert_eq!(a.status, 200, "{}", a.body);
            assert!(waited >= Duration::from_millis(2900), "{waited:?}");
        })
    });
    let (slow_t, idle_t, kept_t, body_t) = (took(&slow), took(&idle), took(&kept), took(&body));
    eprintln!(
        "timeouts (header 1s, idle 2s): 50 slow headers closed after {:?}, 20 idle after {:?}, kept-alive after {:?}, slow body after {:?}",
        range(&slow_t),
        range(&idle_t),
        range(&kept_t),
        range(&body_t)
    );
    eprintln!(
        "timeouts: daemon fds before {fds_before}, peak {fds_peak}; RSS before {:.1} MiB, peak {:.1} MiB",
        mib(rss_before),
        mib(rss_peak)
    );
    let within = |ds: &[Duration], lo: u64, hi: u64, what: &str| {
        for t in ds {
            assert!(
                (Duration::from_millis(lo)..=Duration::from_millis(hi)).contains(t),
                "{what} closed after {t:?}, not within {lo}..={hi} ms"
            );
        }
    };
    within(&slow_t, 900, 2_500, "a slow header");
    within(&idle_t, 1_900, 3_500, "an idle connection");
    within(&kept_t, 1_900, 3_500, "a kept-alive connection");
    within(&body_t, 1_900, 3_500, "a slow body");
    let m = d.metrics();
    let closed = |reason| {
        m.value(
            "sluice_admin_connections_closed_total",
            &[("reason", reason)],
        )
    };
    assert!(closed("header_timeout") >= 50.0);
    assert!(closed("idle_timeout") >= 21.0);
    assert!(closed("body_timeout") >= 1.0);
    drop((slow, idle, kept, body));
    let limit = Instant::now() + Duration::from_secs(5);
    while d.open_fds() > fds_before + 2 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.open_fds() <= fds_before + 2);
}

#[test]
fn connections_are_capped_per_source_and_in_all() {
    let _t = turn();
    raise_own_nofile(4096);
    let from = |last| Ipv4Addr::new(127, 0, 0, last);
    // Busy connections: a request's first line, no more.
    let busy = |d: &Daemon, last| {
        let mut c = connect_from(from(last), d.admin).expect("connect");
        c.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
        c
    };

    // Per source: 16.
    let dir = tempfile::tempdir().unwrap();
    let d = spec(dir.path(), &["--admin-max-connections-per-source", "16"]).start();
    settled(&d);
    let mut full: Vec<_> = (0..16).map(|_| busy(&d, 6)).collect();
    // Time for the daemon to read each one's first bytes (so it is not
    // idle), on a loaded machine too; well within the header timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let mut over = connect_from(from(6), d.admin).expect("connect");
    assert!(
        closed(&mut over, Duration::from_secs(1)),
        "a 17th busy connection from one source is closed at once"
    );
    assert!(full
        .iter_mut()
        .all(|c| !closed(c, Duration::from_millis(1))));
    assert!(health(d.admin), "other sources are served");
    // Idle ones make room: the oldest goes, the new one is served.
    let mut idle: Vec<_> = (0..16)
        .map(|_| {
            let c = connect_from(from(7), d.admin).expect("connect");
            std::thread::sleep(Duration::from_millis(5));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut newer = connect_from(from(7), d.admin).expect("connect");
    assert_eq!(get_on(&mut newer, "/health").unwrap(), 200);
    assert!(
        closed(&mut idle[0], Duration::from_secs(1)),
        "the oldest idle one is closed"
    );
    assert!(idle[1..]
        .iter_mut()
        .all(|c| !closed(c, Duration::from_millis(1))));
    let m = d.metrics();
    assert_eq!(
        m.value(
            "sluice_admin_connections_refused_total",
            &[("reason", "source")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "sluice_admin_connections_closed_total",
            &[("reason", "evicted")]
        ),
        1.0
    );
    drop((full, idle, newer, over, d));

    // In all: 24.
    let dir = tempfile::tempdir().unwrap();
    let d = spec(
        dir.path(),
        &[
            "--admin-max-connections",
            "24",
            "--admin-max-connections-per-source",
            "1000",
        ],
    )
    .start();
    settled(&d);
    let fds_before = d.open_fds();
    let mut full: Vec<_> = (0..24).map(|_| busy(&d, 8)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..3 {
        let mut over = connect_from(from(9), d.admin).expect("connect");
        if !closed(&mut over, Duration::from_secs(1)) {
            drop(full.pop());
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "connection {i} over the total is not closed at once (none is idle): {}",
                d.get("/metrics")
                    .lines()
                    .filter(|l| l.contains("admin_conn"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    let fds_full = d.open_fds();
    // One request completes: that connection is idle now, and makes room.
    full[0].write_all(b"Host: sluice\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut newer = connect_from(from(9), d.admin).expect("connect");
    assert_eq!(get_on(&mut newer, "/health").unwrap(), 200);
    assert!(closed(&mut full[0], Duration::from_secs(1)));
    drop(newer);
    std::thread::sleep(Duration::from_millis(200));
    let m = d.metrics();
    eprintln!(
        "caps: per source 16 and in all 24 held; daemon fds {fds_before} before, {fds_full} with the port full"
    );
    assert_eq!(
        m.value(
            "sluice_admin_connections_refused_total",
            &[("reason", "total")]
        ),
        3.0
    );
    assert_eq!(m.value("sluice_admin_connections_max", &[]), 24.0);
    assert!(m.value("sluice_admin_connections", &[]) <= 24.0);
    assert!(fds_full <= fds_before + 24 + 2, "{fds_full} descriptors");
    // A stop does not wait on connections in the middle of a request.
    let asked = Instant::now();
    assert!(d.terminate(Duration::from_secs(10)).success());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    drop(full);
}
