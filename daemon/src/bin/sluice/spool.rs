//! `sluice spool verify`: check every record of every segment, the
//! checkpoints, the cursors and the consumer groups' state, and say what
//! was found. Offline on a data folder (`--data-dir`, refused while a
//! sluiced runs on it; nothing is changed), or through a running daemon
//! (`POST /spool/verify`: its durable segments, read while it runs).

use std::path::PathBuf;

use clap::Subcommand;
use sluice_daemon::spool::DirLock;
use sluice_daemon::verify::{self, Report};

use crate::{existing, AdminAddr, Res};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: SpoolCmd,
}

#[derive(Subcommand)]
enum SpoolCmd {
    /// Read every record of every segment and check it (checksums, commit
    /// framing, segments continuing each other), with the checkpoints, the
    /// consumer groups' cursors and state. Prints a paragraph per stream;
    /// exit status 0 when nothing is damaged, 1 when something is. A torn
    /// tail left by a crash is not damage: the next start sets it aside and
    /// cuts it.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Check the files of this data folder instead of asking a running
    /// sluiced (refused while one runs on the folder; nothing is changed).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only this stream.
    #[arg(long, short)]
    stream: Option<String>,
    #[command(flatten)]
    admin: AdminAddr,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Res {
    match a.cmd {
        SpoolCmd::Verify(v) => verify(v),
    }
}

fn verify(a: VerifyArgs) -> Res {
    let report = match &a.data_dir {
        Some(dir) => {
            existing(dir)?;
            // A verify while sluiced writes would take its unsynced tail for
            // a torn one: one process at a time.
            let _lock = DirLock::acquire(dir).map_err(|e| {
                format!("{e}; verify through the running daemon instead (drop --data-dir)")
            })?;
            verify::data_folder(dir, a.stream.as_deref())?
        }
        None => {
            let path = match &a.stream {
                Some(s) => format!("/spool/verify?stream={s}"),
                None => "/spool/verify".to_owned(),
            };
            let r = a
                .admin
                .request_with("POST", &path, std::time::Duration::from_secs(24 * 3600))?
                .call();
            let body = a.admin.answer(r)?;
            serde_json::from_str::<Report>(&body)?
        }
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        use std::io::Write;
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        report.print(&mut out)?;
    }
    if report.damaged() {
        let n: usize = report
            .streams
            .iter()
            .map(|s| s.damage.len() + s.groups.iter().filter(|g| !g.ok).count())
            .sum();
        return Err(format!(
            "the spool is damaged ({n} finding(s)): restore the files, or start sluiced with \
             --repair to set the damage aside"
        )
        .into());
    }
    Ok(())
}
