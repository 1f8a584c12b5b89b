//! `sluice stream ls|info|create|delete|purge`: the daemon's streams,
//! through its admin HTTP API (`GET /streams`, `GET /streams/{s}`, `PUT
//! /streams/{s}`, `DELETE /streams/{s}`, `POST /streams/{s}/purge`).

use std::fmt::Write as _;

use clap::Subcommand;
use sluice_daemon::api::lifecycle::StreamChange;
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
    /// Create an empty stream now (the way to make one when
    /// streams.auto_create is off). Fails if it exists.
    Create(ChangeArgs),
    /// Delete a stream: its records, its dead-letter stream, its consumer
    /// groups' state, its files (a mistyped name made by a publish goes
    /// this way). Refused while producers are connected or groups have
    /// members, a backlog or a forward, unless --force. The name can then
    /// be used again for a fresh stream.
    Delete(ForceArgs),
    /// Remove every record of a stream: its first offset moves to its end
    /// (offsets are never reused) and its idempotence table stays (a
    /// producer's resend is still a duplicate). Refused while in use, as
    /// delete, unless --force.
    Purge(ForceArgs),
}

#[derive(clap::Args)]
struct ChangeArgs {
    #[command(flatten)]
    stream: crate::stream_arg::StreamArg,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print the daemon's JSON answer instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ForceArgs {
    #[command(flatten)]
    change: ChangeArgs,
    /// Go ahead although producers, consumer groups or forwards use the
    /// stream.
    #[arg(long)]
    force: bool,
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
        StreamCmd::Create(a) => {
            let path = format!("/streams/{}", a.stream.name());
            change(&a, a.admin.put(&path)?)
        }
        StreamCmd::Delete(a) => {
            let path = format!("/streams/{}?force={}", a.change.stream.name(), a.force);
            change(&a.change, a.change.admin.delete(&path)?)
        }
        StreamCmd::Purge(a) => {
            let path = format!(
                "/streams/{}/purge?force={}",
                a.change.stream.name(),
                a.force
            );
            let body = a.change.admin.post(&path, &serde_json::json!({}))?;
            change(&a.change, body)
        }
    }
}

/// Prints what a create, delete or purge did.
fn change(a: &ChangeArgs, body: String) -> Res {
    let c: StreamChange = serde_json::from_str(&body)?;
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    match c.done.as_str() {
        "created" => println!("created stream {}", c.stream),
        "purged" => println!(
            "purged stream {}: {} record(s) removed; it now starts at offset {}",
            c.stream,
            c.removed,
            c.first_offset.unwrap_or_default()
        ),
        _ => println!(
            "deleted stream {} (and its dead letters and groups)",
            c.stream
        ),
    }
    for what in &c.forced_past {
        eprintln!("forced past: {what}");
    }
    Ok(())
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
