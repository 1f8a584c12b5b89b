//! `sluice group list|reset|delete`: consumer groups, through the daemon's
//! admin HTTP API (`GET /groups`, `POST /streams/{s}/groups/{g}/reset`,
//! `DELETE /streams/{s}/groups/{g}`).

use clap::Subcommand;
use sluice_daemon::api::consume::{GroupChange, GroupList};

use crate::{AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: GroupCmd,
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Print every consumer group (of STREAM, if given): backlog, age of
    /// the oldest unacked message, members, credit, what is out with them,
    /// redeliveries and dead letters since the daemon started.
    List(ListArgs),
    /// Move a group to --start, as if it were created there now: what is
    /// below counts as acked, the rest is delivered again. To replay a
    /// stream for a group (`--start earliest`), or to skip a backlog
    /// (`--start latest`). The group must have no members connected.
    Reset(ResetArgs),
    /// Delete a group: its position and ack state. A later consumer of the
    /// same name starts a new group (at its --start). The group must have
    /// no members connected, and not be configured in [[consumers.groups]]
    /// (remove it from the configuration first).
    Delete(Target),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Only the groups of this stream.
    #[command(flatten)]
    stream: crate::stream_arg::MaybeStream,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print the daemon's JSON, one group a line, instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Target {
    /// The group's stream, then the group (either may be given with
    /// -s/--stream or -g/--group instead).
    #[arg(value_name = "STREAM GROUP", num_args = 0..=2)]
    names: Vec<String>,
    /// The group's stream.
    #[arg(short = 's', long = "stream", value_name = "STREAM")]
    stream: Option<String>,
    /// The group.
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    group: Option<String>,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print the daemon's JSON answer instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ResetArgs {
    #[command(flatten)]
    target: Target,
    /// Where the group goes: earliest, latest, offset:N or time:RFC3339
    /// (the first message stored at or after that time).
    #[arg(long)]
    start: String,
}

pub fn run(a: Args) -> Res {
    match a.cmd {
        GroupCmd::List(a) => list(a),
        GroupCmd::Reset(a) => reset(a),
        GroupCmd::Delete(a) => delete(a),
    }
}

fn list(a: ListArgs) -> Res {
    let mut groups: GroupList = serde_json::from_str(&a.admin.get("/groups")?)?;
    if let Some(s) = a.stream.name() {
        groups.groups.retain(|g| g.stream == s);
    }
    if a.json {
        for g in &groups.groups {
            println!("{}", serde_json::to_string(g)?);
        }
        return Ok(());
    }
    let mut out = String::new();
    crate::stat::render_groups(&mut out, &groups.groups);
    print!("{out}");
    eprintln!(
        "{} consumer group{}",
        groups.groups.len(),
        if groups.groups.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

impl Target {
    /// The stream and the group, from the arguments and flags together: a
    /// usage error (exit 2) unless each is given exactly once.
    fn stream_and_group(&self) -> (String, String) {
        let mut names = self.names.iter().cloned();
        let stream = self.stream.clone().or_else(|| names.next());
        let group = self.group.clone().or_else(|| names.next());
        match (stream, group, names.next()) {
            (Some(s), Some(g), None) => (s, g),
            (_, _, Some(extra)) => usage(&format!(
                "{extra:?} is one name too many: give STREAM GROUP, or -s STREAM and/or -g GROUP for either"
            )),
            _ => usage("give the group's STREAM and GROUP (as arguments, or with -s and -g)"),
        }
    }
}

/// Ends with clap's usage error (exit status 2).
fn usage(msg: &str) -> ! {
    clap::Error::raw(
        clap::error::ErrorKind::MissingRequiredArgument,
        format!("{msg}\n"),
    )
    .exit()
}

fn reset(a: ResetArgs) -> Res {
    // Checked here too, so that a typo is a usage error before any request.
    sluice_daemon::consume::service::parse_start(&a.start).map_err(|e| format!("--start: {e}"))?;
    let t = &a.target;
    let (stream, group) = t.stream_and_group();
    let body = t.admin.post(
        &format!("/streams/{stream}/groups/{group}/reset"),
        &serde_json::json!({ "start": a.start }),
    )?;
    let r: GroupChange = serde_json::from_str(&body)?;
    if t.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "group {} of {} now starts at offset {}",
            r.group,
            r.stream,
            r.floor.unwrap_or_default()
        );
    }
    Ok(())
}

fn delete(t: Target) -> Res {
    let (stream, group) = t.stream_and_group();
    let body = t
        .admin
        .delete(&format!("/streams/{stream}/groups/{group}"))?;
    let r: GroupChange = serde_json::from_str(&body)?;
    if t.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("deleted group {} of {}", r.group, r.stream);
    }
    Ok(())
}
