//! sluice: the command-line client. See `sluice --help`.

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_daemon::spool::fs::RealFs;
use sluice_daemon::spool::{LogConfig, StreamLog};
use sluice_transport::client::{Producer, ProducerOptions};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Publish to, read from and watch a sluiced"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish messages: lines of stdin (default), a file's lines, or
    /// --count generated messages of --size bytes. Each is acked durable.
    Publish {
        /// sluiced's data address.
        #[arg(long, default_value = "127.0.0.1:7401", env = "SLUICE_ADDR")]
        to: SocketAddr,
        #[arg(long, short)]
        stream: String,
        /// Stable id of this producer (the key of exactly-once).
        #[arg(long, default_value_t = std::process::id() as u64)]
        producer: u64,
        /// Publish the lines of this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Generate this many messages instead of reading input.
        #[arg(long)]
        count: Option<u64>,
        /// Size of generated messages, bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Messages per batch handed to the producer.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Print a stream's records from a data folder: offset, time, producer,
    /// seq, payload.
    Read {
        /// sluiced's spool folder.
        #[arg(long, default_value = "./sluice-data")]
        data_dir: PathBuf,
        #[arg(long, short)]
        stream: String,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Watch a running sluiced: message rates, acks, duplicates, drops,
    /// credit and fsync latency, refreshed every second.
    Stat {
        /// sluiced's admin address.
        #[arg(long, default_value = "127.0.0.1:7480", env = "SLUICE_ADMIN")]
        admin: SocketAddr,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Publish {
            to,
            stream,
            producer,
            file,
            count,
            size,
            batch,
        } => publish(to, &stream, producer, file, count, size, batch.max(1)),
        Cmd::Read {
            data_dir,
            stream,
            from,
            limit,
        } => read(&data_dir, &stream, from, limit),
        Cmd::Stat { admin, count } => stat(admin, count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn publish(
    to: SocketAddr,
    stream: &str,
    producer: u64,
    file: Option<PathBuf>,
    count: Option<u64>,
    size: usize,
    batch: usize,
) -> Res {
    let rt = tokio::runtime::Runtime::new()?;
    let messages: Box<dyn Iterator<Item = Bytes>> = match (count, file) {
        (Some(n), _) => Box::new((0..n).map(move |i| {
            let mut v = format!("{i} ").into_bytes();
            v.resize(size.max(v.len()), b'x');
            Bytes::from(v)
        })),
        (None, Some(path)) => {
            let f = std::io::BufReader::new(std::fs::File::open(&path)?);
            Box::new(f.lines().map_while(Result::ok).map(Bytes::from))
        }
        (None, None) => Box::new(
            std::io::stdin()
                .lock()
                .lines()
                .map_while(Result::ok)
                .map(Bytes::from),
        ),
    };
    let bar = ProgressBar::new(count.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} acked durable  {per_sec}  {elapsed}")
            .expect("template"),
    );
    let started = Instant::now();
    let (acked, bytes) = rt.block_on(async {
        let p = Producer::connect(to, stream, producer, ProducerOptions::default()).await?;
        let (mut acked, mut bytes) = (0u64, 0u64);
        let mut chunk = Vec::with_capacity(batch);
        let mut it = messages.peekable();
        while it.peek().is_some() {
            chunk.extend(it.by_ref().take(batch));
            bytes += chunk.iter().map(|b| b.len() as u64).sum::<u64>();
            let n = chunk.len() as u64;
            p.send_batch(std::mem::take(&mut chunk)).await?;
            acked += n;
            bar.inc(n);
        }
        p.close().await?;
        Ok::<_, Box<dyn std::error::Error>>((acked, bytes))
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {acked} messages ({bytes} bytes) to {stream} as producer {producer}: \
         all durable, {:.0} msgs/s",
        acked as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn read(dir: &std::path::Path, stream: &str, from: u64, limit: Option<u64>) -> Res {
    let path = dir.join("streams").join(stream);
    if !path.exists() {
        return Err(format!("no stream {stream:?} in {}", dir.display()).into());
    }
    let log = StreamLog::open(Arc::new(RealFs), &path, stream, LogConfig::default())?;
    let mut r = log.reader(from);
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    while let Some((offset, rec)) = r.next_record()? {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let when = humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH + Duration::from_micros(rec.timestamp_us),
        );
        writeln!(
            out,
            "{offset}\t{when}\tproducer={}\tseq={}\t{}",
            rec.producer,
            rec.seq,
            String::from_utf8_lossy(&rec.payload).escape_debug()
        )?;
        n += 1;
    }
    Ok(())
}

/// Fetches /metrics and returns (name{labels}, value) pairs.
fn scrape(admin: SocketAddr) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error>> {
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: sluiced\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

fn stat(admin: SocketAddr, count: Option<u64>) -> Res {
    let mut prev = scrape(admin)?;
    let mut t = Instant::now();
    let mut n = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = scrape(admin)?;
        let secs = t.elapsed().as_secs_f64();
        t = Instant::now();
        println!("--- sluiced at {admin}");
        for (k, v) in &now {
            let before = prev.iter().find(|(pk, _)| pk == k).map_or(0.0, |p| p.1);
            if k.contains("_total") {
                println!("{k:<60} {v:>14.0}  {:>12.0}/s", (v - before) / secs);
            } else {
                println!("{k:<60} {v:>14}");
            }
        }
        prev = now;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}
