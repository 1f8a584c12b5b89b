//! `sluice dlq list|replay|purge STREAM`: a stream's dead letters, through
//! the daemon's admin HTTP API (`GET /streams/{s}/dlq`, `POST
//! /streams/{s}/dlq/replay`, `POST /streams/{s}/dlq/purge`).

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use clap::Subcommand;
use sluice_daemon::api::consume::{
    DeadLetterJson, DeadLetterPage, PurgeAnswer, ReplayAnswer, MAX_DEAD_LETTERS_PER_REQUEST,
};

use crate::{AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: DlqCmd,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// Print the dead letters of STREAM not purged yet: where each came
    /// from, which group gave up on it and why, its delivery history and
    /// its payload.
    List(ListArgs),
    /// Append every dead letter not purged back to STREAM (as the replay
    /// producer: replaying twice stores each once); every group of the
    /// stream receives them again.
    Replay(ReplayArgs),
    /// Drop the dead letters of STREAM from view: later lists and replays
    /// start after them, and retention may delete them.
    Purge(Common),
}

#[derive(clap::Args)]
struct Common {
    /// The stream whose dead letters (in STREAM.dlq) to handle.
    #[command(flatten)]
    stream: crate::stream_arg::StreamArg,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print JSON (list: one dead letter a line; replay, purge: the
    /// daemon's answer) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// First dead-letter offset to print (the purge mark if lower).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Print at most this many.
    #[arg(long, short = 'n')]
    limit: Option<u64>,
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// Purge what was replayed, once it is durable in the stream.
    #[arg(long)]
    purge: bool,
}

pub fn run(a: Args) -> Res {
    match a.cmd {
        DlqCmd::List(a) => list(a),
        DlqCmd::Replay(a) => replay(a),
        DlqCmd::Purge(a) => purge(a),
    }
}

fn list(a: ListArgs) -> Res {
    let c = &a.common;
    let mut out = std::io::stdout().lock();
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut from = a.from;
    let (mut shown, mut purged_to, mut dlq) = (0u64, 0, String::new());
    while left > 0 {
        let want = left.min(MAX_DEAD_LETTERS_PER_REQUEST as u64);
        let page: DeadLetterPage = serde_json::from_str(&crate::read::get_page(
            &c.admin,
            &format!("/streams/{}/dlq?from={from}&limit={want}", c.stream.name()),
        )?)?;
        (purged_to, dlq) = (page.purged_to, page.dlq);
        for d in &page.dead_letters {
            if c.json {
                writeln!(out, "{}", serde_json::to_string(d)?)?;
            } else {
                write!(out, "{}", describe(c.stream.name(), d))?;
            }
        }
        for s in &page.skipped {
            eprintln!(
                "sluice: {dlq} offset {} is not a dead letter: {}",
                s.offset, s.error
            );
        }
        let n = (page.dead_letters.len() + page.skipped.len()) as u64;
        shown += page.dead_letters.len() as u64;
        left = left.saturating_sub(n);
        if n == 0 || page.next <= from {
            break;
        }
        from = page.next;
    }
    if !c.json {
        eprintln!(
            "{shown} dead letter{} in {dlq} (purged below offset {purged_to})",
            if shown == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn replay(a: ReplayArgs) -> Res {
    let c = &a.common;
    let body = c.admin.post(
        &format!("/streams/{}/dlq/replay", c.stream.name()),
        &serde_json::json!({ "purge": a.purge }),
    )?;
    let r: ReplayAnswer = serde_json::from_str(&body)?;
    if c.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "replayed {} dead letter{} into {} ({} replayed before, not stored again){}",
        r.replayed,
        if r.replayed == 1 { "" } else { "s" },
        c.stream.name(),
        r.duplicates,
        if a.purge {
            format!("; purged below offset {}", r.purged_to)
        } else {
            String::new()
        }
    );
    if r.skipped > 0 {
        eprintln!(
            "sluice: {} record{} of {}.dlq {} not a dead letter (skipped)",
            r.skipped,
            if r.skipped == 1 { "" } else { "s" },
            c.stream.name(),
            if r.skipped == 1 { "is" } else { "are" },
        );
    }
    Ok(())
}

fn purge(c: Common) -> Res {
    let body = c.admin.post(
        &format!("/streams/{}/dlq/purge", c.stream.name()),
        &serde_json::json!({}),
    )?;
    let r: PurgeAnswer = serde_json::from_str(&body)?;
    if c.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "purged {} dead letter{} of {}; the purge mark is at offset {}",
            r.purged,
            if r.purged == 1 { "" } else { "s" },
            c.stream.name(),
            r.purged_to
        );
    }
    Ok(())
}

fn when(us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// One dead letter as a block of text, ending with an empty line.
fn describe(stream: &str, d: &DeadLetterJson) -> String {
    let mut s = format!(
        "dead letter {}\n  message     {stream} offset {}, producer {} seq {}, stored {}\n  \
         group       {}\n  reason      {}\n  deliveries  {}, dead-lettered {}\n",
        d.offset,
        d.source_offset,
        d.producer,
        d.seq,
        when(d.timestamp_us),
        d.group,
        d.reason,
        d.deliveries,
        when(d.dead_at_us),
    );
    if !d.history.is_empty() {
        s.push_str("  history\n");
        for a in &d.history {
            s.push_str(&format!(
                "    {}  {:<16}  {}\n",
                when(a.at_us),
                a.outcome,
                a.member
            ));
        }
    }
    let (kind, shown) = payload_text(&d.payload);
    s.push_str(&format!("  payload     ({kind}) {shown}\n\n"));
    s
}

/// The payload as text if it is UTF-8 (escaped), else hex (short ones) or
/// base64; with what it is shown as.
fn payload_text(b64: &str) -> (String, String) {
    let Ok(b) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return ("base64".into(), b64.to_owned());
    };
    match std::str::from_utf8(&b) {
        Ok(t) => (
            format!("{} bytes, text", b.len()),
            t.escape_debug().to_string(),
        ),
        Err(_) if b.len() <= 64 => (
            format!("{} bytes, hex", b.len()),
            b.iter().map(|x| format!("{x:02x}")).collect(),
        ),
        Err(_) => (format!("{} bytes, base64", b.len()), b64.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_show_as_text_hex_or_base64() {
        let e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(
            payload_text(&e(b"hi\n")),
            ("3 bytes, text".into(), "hi\\n".into())
        );
        assert_eq!(
            payload_text(&e(&[0xff, 0x00])),
            ("2 bytes, hex".into(), "ff00".into())
        );
        let big = vec![0xffu8; 100];
        assert_eq!(
            payload_text(&e(&big)),
            ("100 bytes, base64".into(), e(&big))
        );
    }
}
