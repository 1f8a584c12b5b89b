//! What `sluiced`'s `main` does, for every program that runs the daemon
//! (the binary, and the load harness's daemon process): configuration from
//! arguments, logging, the runtime, stopping on SIGTERM or SIGINT, and exit
//! codes.
//!
//! Exit codes: 0 after a clean stop, 1 when it could not run (spool,
//! socket), 2 for a bad configuration, 3 when the spool is damaged (a
//! stream's files or a consumer group's state: the message names the
//! file, the byte and the offsets; `--repair` sets the damage aside).

use std::future::Future;
use std::process::ExitCode;

use crate::config::{Args, Checked, Config, Logging};
use crate::server::{self, Bound, ServerError};

/// The exit status of a start refused for damage in the spool.
pub const EXIT_DAMAGED: u8 = 3;

/// Runs the daemon configured by `args` until SIGTERM, SIGINT or
/// `also_stop` resolves; `ready` learns the bound addresses.
pub fn main(
    args: Args,
    also_stop: impl Future<Output = ()>,
    ready: impl FnOnce(Bound),
) -> ExitCode {
    let (config, Checked { settings, logging }) = match Config::load(&args) {
        Ok(loaded) => loaded,
        // As JSON if the flag, variable or file asked for it (fatal.rs).
        Err(e) => return crate::fatal::report(crate::fatal::asked_json(&args), &e, 2),
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let json = logging.json;
    init_tracing(logging);
    raise_open_files();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("cannot start the async runtime: {e}");
            return crate::fatal::report(json, &e, 1);
        }
    };
    match rt.block_on(server::run(config, settings, stop(also_stop), ready)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match e {
                ServerError::Config(_) => 2,
                ref e if e.is_damage() => EXIT_DAMAGED,
                _ => 1,
            };
            // In text, a log line and the last line of the output; in
            // JSON, one line (the log's own format).
            if !json {
                tracing::error!("{e}");
            }
            crate::fatal::report(json, &e, code)
        }
    }
}

fn init_tracing(logging: Logging) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(logging.filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // `try_init`: a host program may have set up logging already.
    let _ = if logging.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Raises the soft limit on open files to the hard one, where allowed:
/// connections, segment files and group journals all take descriptors,
/// and a soft limit of 1024 (a common default) is soon reached. The admin
/// port keeps a reserve of them (`api::serve::fd_reserve`) whatever the
/// limit is; this only makes more room. Logs what it got.
fn raise_open_files() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `l`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-files limit");
        return;
    }
    let soft = l.rlim_cur;
    if soft >= l.rlim_max {
        tracing::info!(open_files = soft, "open-files limit (soft = hard)");
        return;
    }
    // An unlimited hard limit is refused as a soft one: the kernel's
    // ceiling (fs.nr_open) is the most a process can have.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(l.rlim_max);
    l.rlim_cur = l.rlim_max.min(ceiling);
    // SAFETY: setrlimit reads `l`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } == 0 {
        tracing::info!(
            from = soft,
            to = l.rlim_cur,
            "raised the soft open-files limit to the hard limit"
        );
    } else {
        tracing::warn!(
            soft,
            hard = l.rlim_max,
            error = %std::io::Error::last_os_error(),
            "cannot raise the soft open-files limit; the admin port keeps fewer connections"
        );
    }
}

/// SIGTERM (service managers), SIGINT (Ctrl-C), or `also`.
async fn stop(also: impl Future<Output = ()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = also => {}
    }
}
