//! Appends to a spool with fsync = always and prints each acked seq, one per
//! line, as soon as its ack arrives. The kill -9 test runs it, kills it at
//! random moments, and checks that every printed seq survived exactly once.
//!
//! usage: spool-appender DATA_DIR PRODUCER_ID COUNT

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use sluice_daemon::spool::{Spool, SpoolConfig};

/// Appends kept in flight at once, as a producer under credit would.
const IN_FLIGHT: u64 = 32;

fn payload(seq: u64) -> Bytes {
    Bytes::from(format!("record {seq} ").repeat(1 + (seq % 7) as usize))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: spool-appender DATA_DIR PRODUCER_ID COUNT");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let producer: u64 = args[2].parse().expect("PRODUCER_ID is a number");
    let count: u64 = args[3].parse().expect("COUNT is a number");
    let config = SpoolConfig {
        min_free_bytes: 0,
        ..SpoolConfig::default()
    };
    let spool = Spool::open(&dir, config).unwrap_or_else(|e| {
        eprintln!("spool-appender: {e}");
        std::process::exit(1);
    });
    let stream = spool.stream("crash").expect("open stream");
    let start = stream.highest_seq(producer).unwrap_or(0) + 1;
    let mut out = std::io::stdout().lock();
    let mut pending = std::collections::VecDeque::new();
    let mut next = start;
    while next < start + count || !pending.is_empty() {
        while next < start + count && (pending.len() as u64) < IN_FLIGHT {
            pending.push_back((next, stream.append(producer, next, payload(next))));
            next += 1;
        }
        let (seq, ack) = pending.pop_front().expect("in flight");
        match ack.blocking_recv() {
            Ok(Ok(_)) => {
                writeln!(out, "{seq}").expect("stdout");
                out.flush().expect("stdout");
            }
            other => {
                eprintln!("spool-appender: append {seq} failed: {other:?}");
                std::process::exit(1);
            }
        }
    }
}
