//! sluiced: the sluice daemon. See `sluiced --help`.
//!
//! Exit codes: 0 after a clean stop, 1 when it could not run (spool, socket),
//! 2 for a bad configuration.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice_daemon::admin::{self, AdminState};
use sluice_daemon::config::{Args, Config};
use sluice_daemon::ingest::Ingest;
use sluice_daemon::metrics::Metrics;
use sluice_daemon::spool::Spool;
use sluice_transport::proto::ReceiverConfig;
use sluice_transport::udp::{self, ServeStats, SocketOptions};
use tracing::{error, info, warn};

/// How long a stop may take to finish the batches in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("sluiced: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

struct Admin {
    metrics: Arc<Metrics>,
    socket: Arc<ServeStats>,
    spool: Arc<Spool>,
}

impl AdminState for Admin {
    fn metrics(&self) -> String {
        self.metrics.render(|out| {
            use std::fmt::Write;
            use std::sync::atomic::Ordering::Relaxed;
            let s = &self.socket;
            for (name, help, v) in [
                ("sluice_datagrams_in_total", "Datagrams received on the data port.", s.datagrams_in.load(Relaxed)),
                ("sluice_datagrams_out_total", "Datagrams sent from the data port.", s.datagrams_out.load(Relaxed)),
                ("sluice_datagrams_dropped_total", "Datagrams dropped (malformed, unknown session, ...).", s.dropped.load(Relaxed)),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
            }
            let _ = writeln!(out, "# HELP sluice_spool_fsync_seconds Duration of the last group commit's fdatasync.\n# TYPE sluice_spool_fsync_seconds gauge");
            for st in self.spool.open_streams() {
                let h = st.health();
                let _ = writeln!(out, "sluice_spool_fsync_seconds{{stream=\"{}\"}} {}", st.name(), h.last_sync_us as f64 / 1e6);
                let _ = writeln!(out, "sluice_spool_backlog_bytes{{stream=\"{}\"}} {}", st.name(), h.backlog_bytes);
                let _ = writeln!(out, "sluice_spool_disk_full{{stream=\"{}\"}} {}", st.name(), h.disk_full as u8);
            }
        })
    }

    fn health(&self) -> Result<String, String> {
        let full: Vec<String> = self
            .spool
            .open_streams()
            .iter()
            .filter(|s| s.health().disk_full)
            .map(|s| s.name().to_owned())
            .collect();
        if full.is_empty() {
            Ok("accepting".into())
        } else {
            Err(format!("disk full, acks held for: {}", full.join(", ")))
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let spool = Arc::new(Spool::open(&config.spool.dir, config.spool_config()?)?);
    for name in &config.streams.names {
        spool.stream(name)?;
    }
    let socket = udp::bind(
        config.data.listen,
        &SocketOptions {
            recv_buffer: (config.data.recv_buffer > 0).then_some(config.data.recv_buffer),
            send_buffer: None,
        },
    )?;
    let admin_listener = admin::bind(config.admin.listen).await?;
    let metrics = Arc::new(Metrics::default());
    let ingest = Ingest::new(
        spool.clone(),
        config.streams.auto_create,
        config.data.credit,
        metrics.clone(),
    );
    let credits = ingest.credits();
    let receiver = ReceiverConfig {
        max_datagram: config.data.max_datagram,
        ..ReceiverConfig::default()
    };
    let server = udp::serve(socket, receiver, ingest);
    let credit_task = credits.spawn(server.control(), Duration::from_millis(50));
    let admin_state = Arc::new(Admin {
        metrics,
        socket: server.stats(),
        spool: spool.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state));
    info!(
        data = %server.local_addr(),
        admin = %config.admin.listen,
        spool = %config.spool.dir.display(),
        fsync = %config.spool.fsync,
        "sluiced ready"
    );

    wait_for_stop().await;
    info!("stopping: no new data; finishing the batches in flight");
    credit_task.abort();
    admin_task.abort();
    server.stop().await;
    let spool_done = tokio::task::spawn_blocking(move || spool.shutdown());
    match tokio::time::timeout(DRAIN_TIMEOUT, spool_done).await {
        Ok(_) => info!("stopped cleanly"),
        Err(_) => warn!("gave up waiting for the spool after {DRAIN_TIMEOUT:?}"),
    }
    Ok(())
}

async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
