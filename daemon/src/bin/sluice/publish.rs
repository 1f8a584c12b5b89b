//! `sluice publish`: messages in, durable acks back.

mod input;

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_transport::client::{Producer, ProducerError};

use crate::connect::ConnectArgs;
use crate::{existing, Res};

/// Batches handed to the producer before the first is acked.
const BATCHES_IN_FLIGHT: usize = 16;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stream: crate::stream_arg::StreamArg,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Stable id of this producer. Publishing again with the same id
    /// continues its sequence, and a message resent after a failure is
    /// stored once. Default: the process id.
    #[arg(long)]
    producer: Option<u64>,
    /// Publish the messages of these files (in order) instead of stdin's.
    #[arg(long = "file", short = 'f')]
    files: Vec<PathBuf>,
    /// How the input holds messages (any bytes, not only UTF-8): `lines`,
    /// a message per line (without its newline); `raw`, all of stdin as
    /// one message, or each --file as one; `length-prefixed`, each as a
    /// u32 big-endian length, then its bytes.
    #[arg(long, value_enum, default_value = "lines", conflicts_with = "count")]
    format: input::Format,
    /// Publish this many generated messages instead of reading input.
    #[arg(long, conflicts_with = "files")]
    count: Option<u64>,
    /// Size in bytes of generated messages (each starts with its number).
    #[arg(long, default_value_t = 128, requires = "count")]
    size: usize,
    /// Messages handed to the producer at a time (with `--transport
    /// http`: messages per request).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// With `--transport http`: sluiced's HTTP address, HOST:PORT or a
    /// base URL (http://HOST:PORT, https://HOST:PORT for admin.tls).
    #[arg(long, default_value = "127.0.0.1:7480", env = "SLUICE_ADMIN")]
    admin: crate::admin::AdminUrl,
    #[command(flatten)]
    admin_cert: crate::admin::AdminCert,
    /// Print the summary as one JSON object on stdout (stream, messages,
    /// bytes, producer, first and last seq, seconds, rates) instead of a
    /// sentence on stderr.
    #[arg(long)]
    json: bool,
}

/// What a publish did, for its summary.
struct Summary<'a> {
    stream: &'a str,
    acked: u64,
    bytes: u64,
    /// The producer id and the seqs it used (not over HTTP).
    producer: Option<(u64, Option<(u64, u64)>)>,
    started: Instant,
}

pub fn run(a: Args) -> Res {
    for f in &a.files {
        existing(f)?;
    }
    let producer = a.producer.unwrap_or(std::process::id() as u64);
    let size = a.size;
    let messages: Box<dyn Iterator<Item = std::io::Result<Bytes>>> = match a.count {
        Some(n) => Box::new((0..n).map(move |i| {
            let mut v = format!("{i} ").into_bytes();
            v.resize(size.max(v.len()), b'x');
            Ok(Bytes::from(v))
        })),
        None if !a.files.is_empty() => input::files(a.format, a.files.clone()),
        None => input::stdin(a.format),
    };
    let bar = match a.count {
        Some(n) => ProgressBar::new(n).with_style(ProgressStyle::with_template(
            "{bar:30} {pos}/{len} durable  {per_sec}  eta {eta}",
        )?),
        None => ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
            "{spinner} {pos} durable  {per_sec}",
        )?),
    };
    if a.connect.transport == "http" {
        let token = a.connect.quic.token()?;
        return http::publish(&a, token, messages, bar);
    }
    let (addrs, options) = a.connect.resolve()?;
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new()?;
    let (acked, bytes, seqs) = rt.block_on(async {
        let p = Producer::connect_any(&addrs, a.stream.name(), producer, options).await?;
        let mut status = p.watch_status();
        // Say so when the producer moves to another daemon.
        let watch_bar = bar.clone();
        tokio::spawn(async move {
            let mut told = 0;
            while status.changed().await.is_ok() {
                let s = status.borrow_and_update().clone();
                if s.failovers == told {
                    continue;
                }
                told = s.failovers;
                if let Some(f) = s.last_failover {
                    watch_bar.println(format!(
                        "sluice: failed over from {} to {} ({}); {} unacked messages sent again",
                        f.from, f.to, f.reason, f.resent
                    ));
                }
            }
        });
        let (mut acked, mut bytes) = (0u64, 0u64);
        let mut seqs: Option<(u64, u64)> = None;
        // Several batches in flight, so the next is on the wire while the
        // last is being synced; they are acked in order.
        let mut in_flight = std::collections::VecDeque::new();
        let mut it = messages.peekable();
        loop {
            if in_flight.len() >= BATCHES_IN_FLIGHT
                || (it.peek().is_none() && !in_flight.is_empty())
            {
                let (n, sent): (
                    u64,
                    tokio::task::JoinHandle<Result<std::ops::Range<u64>, ProducerError>>,
                ) = in_flight.pop_front().expect("not empty");
                let r = sent.await??;
                if !r.is_empty() {
                    let first = seqs.map_or(r.start, |s| s.0);
                    seqs = Some((first, r.end - 1));
                }
                acked += n;
                bar.inc(n);
                continue;
            }
            if it.peek().is_none() {
                break;
            }
            let mut chunk = Vec::with_capacity(a.batch.max(1));
            for m in it.by_ref().take(a.batch.max(1)) {
                chunk.push(m?);
            }
            bytes += chunk.iter().map(|b| b.len() as u64).sum::<u64>();
            let n = chunk.len() as u64;
            // Queued in order now; awaited in order above.
            in_flight.push_back((n, tokio::spawn(p.send_batch(chunk))));
        }
        p.close().await?;
        Ok::<_, Box<dyn std::error::Error>>((acked, bytes, seqs))
    })?;
    bar.finish_and_clear();
    report(
        &Summary {
            stream: a.stream.name(),
            acked,
            bytes,
            producer: Some((producer, seqs)),
            started,
        },
        a.json,
    );
    Ok(())
}

/// Says what was published: a sentence on stderr, or (`--json`) one JSON
/// object on stdout.
fn report(s: &Summary, json: bool) {
    let secs = s.started.elapsed().as_secs_f64().max(1e-9);
    let (rate, mbps) = (s.acked as f64 / secs, s.bytes as f64 / secs / 1e6);
    if json {
        let (producer, seqs) = s.producer.unzip();
        let seqs = seqs.flatten();
        println!(
            "{}",
            serde_json::json!({
                "stream": s.stream,
                "messages": s.acked,
                "bytes": s.bytes,
                "producer": producer,
                "first_seq": seqs.map(|r| r.0),
                "last_seq": seqs.map(|r| r.1),
                "seconds": secs,
                "messages_per_sec": rate,
                "mb_per_sec": mbps,
            })
        );
        return;
    }
    let who = match s.producer {
        Some((p, seqs)) => {
            let range = seqs.map_or("none".to_owned(), |(a, b)| format!("{a}..={b}"));
            format!("as producer {p}, seqs {range}")
        }
        None => "over HTTP".to_owned(),
    };
    eprintln!(
        "published {} messages ({} bytes) to {} {who}: all durable; {rate:.0} msgs/s, {mbps:.1} MB/s",
        s.acked, s.bytes, s.stream
    );
}

/// `--transport http`: each batch is one request (length-prefixed frames)
/// under an Idempotency-Key of its own, sent again with the same key
/// after a 503 or a lost connection, so it is stored once however often
/// it is sent.
mod http {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use indicatif::ProgressBar;
    use sluice_daemon::publish::batch::{encode_frames, FRAMES};

    use super::{report, Args, Summary};

    /// How long one batch is retried before giving up.
    const RETRY_FOR: Duration = Duration::from_secs(60);

    pub fn publish(
        a: &Args,
        token: Option<String>,
        messages: Box<dyn Iterator<Item = std::io::Result<Bytes>>>,
        bar: ProgressBar,
    ) -> crate::Res {
        let admin = crate::admin::Admin::new(&a.admin, a.admin_cert.path.as_deref())?;
        let url = format!("{}/streams/{}/messages", admin.base, a.stream.name());
        let started = Instant::now();
        // Unique to this run: keys of another run never collide with ours.
        let run = format!("{:x}-{:x}", std::process::id(), rand::random::<u64>());
        let (mut acked, mut bytes, mut batch_no) = (0u64, 0u64, 0u64);
        let mut it = messages.peekable();
        while it.peek().is_some() {
            let chunk = it
                .by_ref()
                .take(a.batch.max(1))
                .collect::<std::io::Result<Vec<Bytes>>>()?;
            let n = chunk.len() as u64;
            bytes += chunk.iter().map(|m| m.len() as u64).sum::<u64>();
            let body = encode_frames(chunk.iter().map(|m| &m[..]));
            let key = format!("sluice-cli-{run}-{batch_no}");
            batch_no += 1;
            send(&admin.agent, &url, token.as_deref(), &key, &body)?;
            acked += n;
            bar.inc(n);
        }
        bar.finish_and_clear();
        report(
            &Summary {
                stream: a.stream.name(),
                acked,
                bytes,
                producer: None,
                started,
            },
            a.json,
        );
        Ok(())
    }

    fn send(
        agent: &ureq::Agent,
        url: &str,
        token: Option<&str>,
        key: &str,
        body: &[u8],
    ) -> crate::Res {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let mut req = agent
                .post(url)
                .timeout(Duration::from_secs(60))
                .set("content-type", FRAMES)
                .set("idempotency-key", key);
            if let Some(t) = token {
                req = req.set("authorization", &format!("Bearer {t}"));
            }
            let wait = match req.send_bytes(body) {
                Ok(_) => return Ok(()),
                Err(ureq::Error::Status(503, r)) => {
                    let secs = r
                        .header("retry-after")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1);
                    Duration::from_secs(secs)
                }
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    let msg = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or(body);
                    return Err(format!("{url} answered {code}: {msg}").into());
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("publish request failed ({e}); sending it again with its key");
                    Duration::from_millis(500)
                }
                Err(e) => return Err(format!("{url}: {e}").into()),
            };
            if Instant::now() + wait > deadline {
                return Err(format!("{url}: busy for {RETRY_FOR:?}, giving up").into());
            }
            std::thread::sleep(wait);
        }
    }
}
