//! `sluice stream ls|info`: the daemon's streams, through its admin HTTP
//! API (`GET /streams`, `GET /streams/{s}`).

use std::fmt::Write as _;

use clap::Subcommand;
use sluice_daemon::api::{StreamDetail, StreamList};

use crate::stat::{bytes, render_groups};
use crate::{AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: StreamCmd,
}

#[derive(Subcommand)]
enum StreamCmd {
    /// Every stream the token may consume: first and end offsets, records,
    /// damage found.
    Ls(LsArgs),
    /// One stream in full: offsets, records, bytes on disk, segments, the
    /// producers it knows (highest seq stored, connected now), its
    /// consumer groups, retention and fsync policy.
    Info(InfoArgs),
}

#[derive(clap::Args)]
struct LsArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// Print the daemon's JSON, one stream a line, instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct InfoArgs {
    #[command(flatten)]
    stream: crate::stream_arg::StreamArg,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print the daemon's JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Res {
    match a.cmd {
        StreamCmd::Ls(a) => ls(a),
        StreamCmd::Info(a) => info(a),
    }
}

fn ls(a: LsArgs) -> Res {
    let list: StreamList = serde_json::from_str(&a.admin.get("/streams")?)?;
    if a.json {
        for s in &list.streams {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(());
    }
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>7}",
        "stream", "first", "end", "records", "damage"
    );
    for s in &list.streams {
        let (first, end) = (s.first_offset.unwrap_or(0), s.durable_end.unwrap_or(0));
        println!(
            "{:<24} {:>12} {:>12} {:>12} {:>7}",
            s.name,
            first,
            end,
            end.saturating_sub(first),
            s.damage.len()
        );
    }
    Ok(())
}

fn info(a: InfoArgs) -> Res {
    let path = format!("/streams/{}", a.stream.name());
    let body = a.admin.get(&path)?;
    let d: StreamDetail = serde_json::from_str(&body)?;
    if a.json {
        println!("{}", serde_json::to_string(&d)?);
        return Ok(());
    }
    print!("{}", render(&d));
    Ok(())
}

/// `sluice stream info`'s text.
fn render(d: &StreamDetail) -> String {
    let mut o = String::new();
    let retention = match (d.retention_bytes, d.retention_age_seconds) {
        (None, None) => "none: every record is kept".to_owned(),
        (b, a) => [
            b.map(|b| format!("{} at most", bytes(b as f64))),
            a.map(|a| format!("{a:.0} s at most")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", "),
    };
    let _ = writeln!(o, "stream     {}", d.name);
    let _ = writeln!(
        o,
        "offsets    {} .. {} ({} records)",
        d.first_offset, d.durable_end, d.records
    );
    let _ = writeln!(
        o,
        "size       {} of records, {} on disk in {} segment(s) of up to {}",
        bytes(d.bytes as f64),
        bytes(d.bytes_on_disk as f64),
        d.segments,
        bytes(d.segment_bytes as f64)
    );
    if d.last_append_us > 0 {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(d.last_append_us);
        let _ = writeln!(o, "last       {}", humantime::format_rfc3339_millis(at));
    }
    let _ = writeln!(o, "fsync      {}", d.fsync);
    let _ = writeln!(o, "retention  {retention}");
    for dmg in &d.damage {
        let _ = writeln!(
            o,
            "  ! damage: {}",
            serde_json::to_string(dmg).unwrap_or_default()
        );
    }
    let _ = writeln!(o, "producers  {}", d.producer_count);
    for p in &d.producers {
        let _ = writeln!(
            o,
            "  {:>20}  highest seq {:>12}{}",
            p.producer,
            p.highest_seq,
            if p.connected { "  connected" } else { "" }
        );
    }
    if d.producers.len() < d.producer_count {
        let _ = writeln!(o, "  ... and {} more", d.producer_count - d.producers.len());
    }
    let _ = writeln!(o, "groups     {}", d.groups.len());
    render_groups(&mut o, &d.groups);
    o
}
