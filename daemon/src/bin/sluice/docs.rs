//! `sluice completions SHELL` and `sluice man [sluice|sluiced]`: shell
//! completions and roff manual pages made from the very clap commands
//! that parse the arguments, so they never fall behind the flags.

use std::io::Write;
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Res;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: Shell,
}

/// Prints the completion script of `shell` for `sluice` on stdout.
pub fn completions(a: CompletionsArgs) -> Res {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "sluice", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Whose manual page: the CLI's, or the daemon's (all its options,
    /// with the configuration keys and variables they stand for).
    #[arg(default_value = "sluice", value_parser = ["sluice", "sluiced"])]
    program: String,
    /// Write the pages into this folder instead of printing one: for
    /// `sluice`, also a page for each subcommand (`sluice-publish.1`, ...).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the manual page (section 1) of `sluice` or `sluiced`, or writes
/// the pages into `--dir`.
pub fn man(a: ManArgs) -> Res {
    let cmd = match a.program.as_str() {
        "sluiced" => sluice_daemon::config::Args::command(),
        _ => crate::Cli::command(),
    };
    match a.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| format!("cannot write manual pages into {}: {e}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::stdout().lock().write_all(&out)?;
        }
    }
    Ok(())
}
