//! What `sluiced`'s `main` does, for every program that runs the daemon
//! (the binary, and the load harness's daemon process): configuration from
//! arguments, logging, the runtime, signals and exit codes.
//!
//! Signals: SIGTERM and SIGINT stop the daemon cleanly (a drain); SIGHUP
//! reloads the configuration (`crate::reload`: what changes, what needs a
//! restart) and never stops it. The service manager hears each step when
//! `$NOTIFY_SOCKET` is set (`crate::notify`).
//!
//! Exit codes: 0 after a clean stop, 1 when it could not run (spool,
//! socket), 2 for a bad configuration (configured certificate files that
//! cannot be read too: systemd does not restart it), 3 when the spool is damaged (a
//! stream's files or a consumer group's state: the message names the
//! file, the byte and the offsets; `--repair` sets the damage aside).

use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::config::{Args, Checked, Config};
use crate::notify::Notifier;
use crate::reload::{Live, Reloader};
use crate::server::{self, Bound, Running, ServerError};

/// The exit status of a start refused for damage in the spool.
pub const EXIT_DAMAGED: u8 = 3;

/// Runs the daemon configured by `args` until SIGTERM, SIGINT or
/// `also_stop` resolves; `ready` learns the bound addresses.
pub fn main(
    args: Args,
    also_stop: impl Future<Output = ()>,
    ready: impl FnOnce(Bound),
) -> ExitCode {
    // Until the handler is installed (in the runtime, below), a SIGHUP
    // would end the process by its default action; from here it is held
    // off, and a reload asked for before the daemon is ready happens once
    // it is.
    // SAFETY: signal(2) with SIG_IGN installs no code of ours.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
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
    let log = crate::logging::init(logging);
    for said in crate::config::unknown_variables(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!("{said}");
    }
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
    let reloader = Reloader::new(args, config.clone(), log);
    let run = async move {
        let notifier = Notifier::from_env();
        notifier.spawn_watchdog();
        let (running_tx, running_rx) = oneshot::channel();
        let control = control(also_stop, running_rx, reloader, notifier.clone())?;
        server::run(config, settings, control, move |running: Running| {
            let bound = running.bound;
            let _ = running_tx.send(Live {
                gate: running.gate,
                consumers: running.consumers,
                forwarders: running.forwarders,
            });
            notifier.ready();
            ready(bound);
        })
        .await
    };
    match rt.block_on(run) {
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

/// What the daemon runs until: resolves (after `STOPPING=1`) on SIGTERM,
/// SIGINT or `also`; reloads on each SIGHUP meanwhile, between
/// `RELOADING=1` and `READY=1`. A SIGHUP before the daemon is ready is
/// remembered and served once it is (`running` brings what a reload
/// changes).
fn control(
    also: impl Future<Output = ()>,
    running: oneshot::Receiver<Live>,
    mut reloader: Reloader,
    notifier: Notifier,
) -> Result<impl Future<Output = ()>, ServerError> {
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| {
            ServerError::Admin(std::io::Error::other(format!(
                "cannot install the {name} handler: {e}"
            )))
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    Ok(async move {
        tokio::pin!(also);
        let mut running = Some(running);
        let mut live: Option<Live> = None;
        let mut pending = false;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                _ = int.recv() => { tracing::info!("SIGINT received"); break }
                _ = &mut also => break,
                got = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                    running = None;
                    // Err: the daemon stopped before it was ready; the
                    // stop comes with its error.
                    live = got.ok();
                    if pending && live.is_some() {
                        pending = false;
                        tracing::info!("serving the SIGHUP received during start-up");
                    } else {
                        continue;
                    }
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    if live.is_none() {
                        pending = true;
                        continue;
                    }
                }
            }
            // A reload, now that the daemon is ready to apply it.
            if let Some(g) = &live {
                notifier.reloading();
                // Errors are logged by the reloader; the daemon runs on.
                // Signals wait meanwhile: a SIGTERM during a reload stops
                // the daemon once the reload is done.
                let _ = reloader.reload(g).await;
                notifier.ready();
            }
        }
        notifier.stopping();
    })
}
