//! `sluice-bench e2e`'s command line (also reachable as `consume`, its
//! first name).

use std::process::ExitCode;

use super::{ConsumeConfig, ConsumePath, Part};
use crate::ingest::PathKind;

#[derive(clap::Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub out: crate::args::Output,
    #[command(flatten)]
    pub sluiced: crate::args::DaemonArgs,
    /// Which parts to run (the delivery ratios need `ingest`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Ingest, Part::Delivery, Part::Latency])]
    pub parts: Vec<Part>,
    /// Concurrent producers (one session each), in every part.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Message payload size, bytes (at least 8: the latency part puts the
    /// send time in the first 8).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds measured per phase, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds at the start of each phase not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Numbers of consumer groups (one consumer each) to measure delivery
    /// to, one phase each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    pub groups: Vec<usize>,
    /// Latency part: total messages/s, sent at their due times (open loop).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Latency part: consumer groups.
    #[arg(long, default_value_t = 1)]
    pub latency_groups: usize,
    /// Delivery phases: producers make no new call while more than this
    /// many messages sent have not reached the slowest group, so that no
    /// backlog builds up (0: producers run free and the groups fall behind
    /// as they may; the drain then shows the consumers' own speed).
    #[arg(long, default_value_t = 65_536)]
    pub max_ahead: u64,
    /// Each consumer's credit: messages delivered and not yet acked.
    #[arg(long, default_value_t = 4096)]
    pub max_messages: u32,
    /// Each consumer's credit: payload bytes delivered and not yet acked.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_bytes: u64,
    /// Closed loop: messages per send_batch call.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Closed loop: send_batch calls outstanding per producer.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// The producers' path: `fast` (sealed raw UDP) or `quic`.
    #[arg(long, default_value = "fast", value_parser = ["fast", "quic"])]
    pub path: String,
    /// The consumers' path: `quic` (a QUIC session), `ws` (the admin
    /// port's WebSocket, binary frames) or `sse` (its event stream, acks
    /// over POST) or `grpc` (the gRPC port's StreamingPull, acks in later
    /// requests); the credit is --max-messages / --max-bytes on each.
    #[arg(long, value_enum, default_value_t = ConsumePath::Quic)]
    pub consume_path: ConsumePath,
    /// The running daemon's gRPC address (with --daemon and
    /// --consume-path grpc).
    #[arg(long, requires = "daemon")]
    pub daemon_grpc: Option<std::net::SocketAddr>,
    /// The producers' largest datagram (UDP payload), bytes.
    #[arg(long, default_value_t = 1452)]
    pub datagram: usize,
    /// Most seconds the groups get to receive everything after a phase.
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,
    /// Run every phase this many times (one daemon, a fresh stream each
    /// time): the headline figures are then given as min / median / max;
    /// the detailed tables and the pictures are of the first repetition.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

impl ConsumeArgs {
    pub fn config(&self) -> ConsumeConfig {
        ConsumeConfig {
            parts: self.parts.clone(),
            producers: self.producers,
            size: self.size,
            seconds: self.seconds,
            warmup: self.warmup,
            groups: self.groups.clone(),
            rate: self.rate,
            latency_groups: self.latency_groups,
            max_ahead: self.max_ahead,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            fsync: self.sluiced.fsync.clone(),
            batch: self.batch,
            in_flight: self.in_flight,
            path: if self.path == "quic" {
                PathKind::Quic
            } else {
                PathKind::Fast
            },
            consume_path: self.consume_path,
            datagram: self.datagram,
            dir: self.out.dir.clone(),
            external: self.sluiced.external(),
            external_grpc: self.daemon_grpc,
            sluiced_args: self.sluiced.sluiced_args.clone(),
            baseline_seconds: self.sluiced.baseline_seconds(),
            drain_timeout: self.drain_timeout,
            repeat: self.repeat,
        }
    }
}

/// `sluice-bench e2e` (alias `consume`).
pub fn main(a: &ConsumeArgs) -> ExitCode {
    if a.sluiced.daemon.is_some() && a.sluiced.server_cert.is_none() {
        eprintln!("sluice-bench e2e: --daemon needs --server-cert");
        return ExitCode::from(2);
    }
    let report = match super::run(&a.config()) {
        Ok(r) => r,
        Err(e) => return crate::args::fail("e2e", e),
    };
    super::print(&report);
    if let Err(e) = a.out.save(&report, &report.head, &report.plots) {
        return crate::args::fail("e2e", e);
    }
    if report.errors > 0 || report.groups_short > 0 {
        eprintln!(
            "sluice-bench e2e: {} errors; {} group(s) did not receive every published message",
            report.errors, report.groups_short
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        e2e: ConsumeArgs,
    }

    fn path(args: &[&str]) -> Result<ConsumePath, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("e2e").chain(args.iter().copied()))?;
        Ok(cli.e2e.config().consume_path)
    }

    #[test]
    fn consumers_take_quic_unless_told() {
        assert_eq!(path(&[]).unwrap(), ConsumePath::Quic);
        assert_eq!(path(&["--consume-path", "ws"]).unwrap(), ConsumePath::Ws);
        assert_eq!(path(&["--consume-path", "sse"]).unwrap(), ConsumePath::Sse);
        assert_eq!(
            path(&["--consume-path", "grpc"]).unwrap(),
            ConsumePath::Grpc
        );
        assert!(path(&["--consume-path", "udp"]).is_err());
    }
}
