//! `sluice read`: a stream's durable records, through the daemon or from
//! its files.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use sluice_daemon::api::{RecordJson, RecordsPage, MAX_RECORDS_PER_REQUEST};
use sluice_daemon::spool::fs::RealFs;
use sluice_daemon::spool::{DirLock, LogConfig, Recovery, StreamLog};

use crate::{existing, AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stream: crate::stream_arg::StreamArg,
    #[command(flatten)]
    admin: AdminAddr,
    /// Read the files of this data folder instead of asking a running
    /// sluiced (refused while one runs on the folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// First offset to print.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Print at most this many records.
    #[arg(long, short = 'n')]
    limit: Option<u64>,
    /// Keep printing records as they become durable (through the daemon).
    #[arg(long, conflicts_with = "data_dir")]
    follow: bool,
    /// `text`: offset, time, producer, seq and payload, tab-separated, the
    /// payload as escaped text; `json`: one object a line, payload in base64.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

pub fn run(a: Args) -> Res {
    let mut out = std::io::stdout().lock();
    let json = a.format == "json";
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut print = |r: &RecordJson| -> Res {
        if json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        } else {
            let payload = base64::engine::general_purpose::STANDARD.decode(&r.payload)?;
            let when = humantime::format_rfc3339_micros(
                UNIX_EPOCH + Duration::from_micros(r.timestamp_us),
            );
            writeln!(
                out,
                "{}\t{when}\tproducer={}\tseq={}\t{}",
                r.offset,
                r.producer,
                r.seq,
                String::from_utf8_lossy(&payload).escape_debug()
            )?;
        }
        Ok(())
    };
    match &a.data_dir {
        Some(dir) => from_files(dir, a.stream.name(), a.from, &mut left, &mut print),
        None => through_daemon(&a, &mut left, &mut print),
    }
}

fn through_daemon(a: &Args, left: &mut u64, print: &mut impl FnMut(&RecordJson) -> Res) -> Res {
    let mut from = a.from;
    while *left > 0 {
        let want = (*left).min(MAX_RECORDS_PER_REQUEST as u64);
        let body = get_page(
            &a.admin,
            &format!(
                "/streams/{}/records?from={from}&limit={want}",
                a.stream.name()
            ),
        )?;
        let page: RecordsPage = serde_json::from_str(&body)?;
        for r in &page.records {
            print(r)?;
        }
        *left -= page.records.len() as u64;
        from = page.next;
        if page.records.is_empty() {
            if !a.follow {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// GETs a page (records, dead letters): as [`AdminAddr::get`], but with
/// no limit on the body's size (a page holds up to `admin.page_bytes` of
/// payload in base64, a larger record alone: more than ureq's 10 MB for
/// a string), and trying again when the daemon is busy (503 with
/// `Retry-After`: all its page turns are taken).
pub(crate) fn get_page(
    admin: &AdminAddr,
    path: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut tries = 0;
    loop {
        match admin.request(path, Duration::from_secs(60))?.call() {
            Ok(r) => {
                let mut body = String::new();
                std::io::Read::read_to_string(&mut r.into_reader(), &mut body)?;
                return Ok(body);
            }
            Err(ureq::Error::Status(503, r)) if tries < 10 && r.header("retry-after").is_some() => {
                let wait = r
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                std::thread::sleep(Duration::from_secs(wait));
                tries += 1;
            }
            Err(e) => return admin.answer(Err(e)),
        }
    }
}

fn from_files(
    dir: &std::path::Path,
    stream: &str,
    from: u64,
    left: &mut u64,
    print: &mut impl FnMut(&RecordJson) -> Res,
) -> Res {
    existing(dir)?;
    let path = dir.join("streams").join(stream);
    if !path.exists() {
        return Err(format!("no stream {stream:?} in {}", dir.display()).into());
    }
    // Read-only: nothing is cut or repaired (a torn tail is not read). The
    // lock keeps a daemon from writing (or starting) meanwhile.
    let _lock = DirLock::acquire(dir)
        .map_err(|e| format!("{e}; read through the running daemon instead (drop --data-dir)"))?;
    let config = LogConfig {
        recovery: Recovery::ReadOnly,
        ..LogConfig::default()
    };
    let log = StreamLog::open(Arc::new(RealFs), &path, stream, config)?;
    let mut r = log.reader(from);
    while *left > 0 {
        let Some((offset, rec)) = r.next_record()? else {
            break;
        };
        print(&RecordJson {
            offset,
            timestamp_us: rec.timestamp_us,
            producer: rec.producer,
            seq: rec.seq,
            payload: base64::engine::general_purpose::STANDARD.encode(&rec.payload),
        })?;
        *left -= 1;
    }
    Ok(())
}
