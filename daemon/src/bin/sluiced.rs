//! sluiced: the sluice daemon. See `sluiced --help`.
//!
//! Exit codes: 0 after a clean stop, 1 when it could not run (spool, socket),
//! 2 for a bad configuration.

use std::process::ExitCode;

use clap::Parser;
use sluice_daemon::config::{Args, Config};
use sluice_daemon::server::{self, ServerError};
use tracing::error;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluiced: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluiced: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(server::run(config, wait_for_stop(), |_| {})) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("sluiced: {e}");
            ExitCode::from(match e {
                ServerError::Config(_) => 2,
                _ => 1,
            })
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGTERM (service managers) or SIGINT (Ctrl-C).
async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
