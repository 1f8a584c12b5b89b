//! The scrub: sealed segments read again in the background, every commit
//! and record checked, at a bounded rate; and the same check of a live
//! stream at full speed when an operator asks (`sluice spool verify`
//! through the daemon).
//!
//! A start does not read sealed segments (their index says what is in
//! them), and readers meet damage only where they read: the scrub finds
//! damage in what nobody reads. It reports to the stream
//! ([`Stream::report_damage`]): a log line, `/health`, `/streams` and
//! `/metrics`. It changes nothing: repairing is `sluiced --repair`.
//!
//! It reads a commit at a time (memory: one commit), sleeping between
//! reads so as not to pass `bytes_per_sec`, and holds no stream handle
//! while it sleeps (a stream's writer ends when its last handle goes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::info;

use super::config::LogConfig;
use super::error::{Damage, SpoolError};
use super::fs::SpoolFs;
use super::index::SegmentMeta;
use super::segment::{self, SegmentHeader, COMMIT_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::writer::{Spool, Stream};

/// How the background scrub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Most bytes read per second (0: no background scrub).
    pub bytes_per_sec: u64,
    /// A pass starts at most this often.
    pub interval: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            bytes_per_sec: 16 << 20,
            interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Keeps reads under a rate; `wait` returns false once `stop` is set.
pub struct Pace<'a> {
    bytes_per_sec: u64,
    started: Instant,
    bytes: u64,
    stop: &'a AtomicBool,
}

impl<'a> Pace<'a> {
    pub fn new(bytes_per_sec: u64, stop: &'a AtomicBool) -> Self {
        Pace {
            bytes_per_sec,
            started: Instant::now(),
            bytes: 0,
            stop,
        }
    }

    /// Counts `n` bytes read and sleeps (in short naps, watching `stop`)
    /// until they fit the rate.
    fn read(&mut self, n: u64) -> bool {
        self.bytes += n;
        if self.bytes_per_sec == 0 {
            return !self.stop.load(Ordering::Relaxed);
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let ahead = due.saturating_sub(self.started.elapsed());
            if ahead.is_zero() {
                return true;
            }
            std::thread::sleep(ahead.min(Duration::from_millis(100)));
        }
    }
}

/// What checking one segment found.
#[derive(Debug)]
pub enum Checked {
    /// Whole: this many bytes and records.
    Whole {
        bytes: u64,
        records: u64,
    },
    Damaged(Damage),
    /// Gone meanwhile (retention), or the check was stopped.
    Skipped,
}

/// Checks the first `meta.len` bytes of a segment commit by commit: its
/// header, every commit's header, records and checksum, and that it holds
/// exactly `meta.count` records from `meta.base` on.
pub fn check_segment(
    fs: &dyn SpoolFs,
    stream: &str,
    meta: &SegmentMeta,
    config: &LogConfig,
    pace: &mut Pace,
) -> Result<Checked, SpoolError> {
    let damaged = |byte: u64, from: u64, reason: String| {
        Checked::Damaged(Damage {
            stream: stream.to_owned(),
            file: meta.path.clone(),
            byte,
            from,
            to: Some(meta.end()),
            reason,
        })
    };
    let f = match fs.open(&meta.path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checked::Skipped),
        Err(e) => return Err(SpoolError::io("open", &meta.path)(e)),
    };
    let read = |buf: &mut [u8], at: u64| -> Result<(), SpoolError> {
        f.read_exact_at(buf, at)
            .map_err(SpoolError::io("read", &meta.path))
    };
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    read(&mut head, 0)?;
    let header = match SegmentHeader::decode(&head) {
        Ok(h) if h.base == meta.base => h,
        Ok(h) => {
            return Ok(damaged(
                0,
                meta.base,
                format!(
                    "the segment header says offset {}, its name {}",
                    h.base, meta.base
                ),
            ))
        }
        Err(why) => return Ok(damaged(0, meta.base, format!("segment header: {why}"))),
    };
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut next = meta.base;
    let mut buf = Vec::new();
    while pos < meta.len {
        let mut ch = [0u8; COMMIT_HEADER_LEN];
        if pos + COMMIT_HEADER_LEN as u64 > meta.len {
            return Ok(damaged(
                pos,
                next,
                "the segment ends inside a commit header".into(),
            ));
        }
        read(&mut ch, pos)?;
        let h = match segment::CommitHeader::decode(&ch, header.stream_id) {
            Ok(h) => h,
            Err(why) => return Ok(damaged(pos, next, why.to_owned())),
        };
        let total = h.total_len();
        if pos + total > meta.len || total > config.max_commit_bytes() {
            return Ok(damaged(
                pos,
                next,
                format!("a commit of {total} bytes runs past the segment's end"),
            ));
        }
        buf.resize(total as usize, 0);
        read(&mut buf, pos)?;
        if let Err(bad) =
            segment::check_one_commit(&buf, header.stream_id, next, config.max_commit_bytes())
        {
            // Where the damage is: the first bad record, past the good ones.
            let at = pos + bad.at as u64;
            return Ok(damaged(at, next + bad.good as u64, bad.reason));
        }
        pos += total;
        next = h.end();
        if !pace.read(total) {
            return Ok(Checked::Skipped);
        }
    }
    if next != meta.end() {
        return Ok(damaged(
            pos,
            next,
            format!(
                "the segment holds offsets up to {next}, its index says {}",
                meta.end()
            ),
        ));
    }
    Ok(Checked::Whole {
        bytes: meta.len,
        records: meta.count,
    })
}

/// Checks a running stream's durable segments (the sealed ones only, or
/// all of them), reporting damage to the stream. Returns what it checked
/// and the damage found.
pub fn check_stream(
    stream: &Stream,
    sealed_only: bool,
    pace: &mut Pace,
) -> Result<(u64, u64, Vec<Damage>), SpoolError> {
    let mut segments = stream.segments();
    if sealed_only {
        segments.pop();
    }
    let (mut bytes, mut records, mut found) = (0, 0, Vec::new());
    for meta in &segments {
        match check_segment(
            &**stream.fs(),
            stream.name(),
            meta,
            stream.log_config(),
            pace,
        )? {
            Checked::Whole {
                bytes: b,
                records: r,
            } => {
                bytes += b;
                records += r;
                stream.count_scrubbed(b);
            }
            Checked::Damaged(d) => {
                stream.report_damage(&d);
                found.push(d);
            }
            Checked::Skipped => {}
        }
    }
    Ok((bytes, records, found))
}

/// Starts the background scrub over every open stream of `spool`; it ends
/// when `stop` is set or the spool is gone.
pub fn start(spool: Weak<Spool>, config: ScrubConfig, stop: Arc<AtomicBool>) {
    if config.bytes_per_sec == 0 {
        return;
    }
    let run = move || {
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let Some(names) = spool.upgrade().map(|s| s.open_stream_names()) else {
                return;
            };
            let mut pace = Pace::new(config.bytes_per_sec, &stop);
            let (mut bytes, mut damage) = (0, 0);
            for name in names {
                // A handle only while checking: none is held across a
                // whole pass.
                let Some(stream) = spool.upgrade().and_then(|s| s.open_stream(&name)) else {
                    continue;
                };
                match check_stream(&stream, true, &mut pace) {
                    Ok((b, _, d)) => {
                        bytes += b;
                        damage += d.len();
                        stream.count_scrub_pass();
                    }
                    Err(e) => tracing::warn!(stream = %name, error = %e, "scrub: reading failed"),
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            info!(bytes, damage, took = ?started.elapsed(), "scrub pass done");
            while started.elapsed() < config.interval {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name("spool-scrub".into())
        .spawn(run);
}
