//! `sluice-bench ingest`'s flags, and the command itself: run, print the
//! table, write the JSON. `--path xdp` hands over to `sluice-bench xdp
//! --part durable` (root), which measures sluiced's AF_XDP path against its
//! socket path over a veth pair.

use std::process::ExitCode;

use clap::Parser;

use super::config::{interval_for, IngestConfig, Length, PathKind};
use crate::progress::Progress;
use crate::sizes;

/// `sluice-bench ingest`'s flags (no `Debug`: it holds the token).
#[derive(Clone, clap::Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub load: crate::args::LoadArgs,
    #[command(flatten)]
    pub out: crate::args::Output,
    #[command(flatten)]
    pub sluiced: crate::args::DaemonArgs,
    /// Concurrent producers (one session each).
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Message payload size, bytes.
    #[arg(long, default_value_t = 128, conflicts_with = "sizes")]
    pub size: usize,
    /// Instead of --size: a size mix, drawn per message, as size:weight
    /// pairs with relative weights, e.g. 64:50,1024:40,65536:10. MB/s then
    /// counts the real bytes, and the report gives the mean payload.
    #[arg(long, value_name = "SIZE:WEIGHT,...")]
    pub sizes: Option<String>,
    /// Seeds the --sizes draws (the same seed offers the same sizes in the
    /// same order).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs (warm-up and window each) on the same daemon, with new
    /// producers each time; the table shows the median with [min–max] and
    /// the JSON keeps every run [default: 3 with --seconds, 1 with --count].
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Spread the producers over this many streams (one spool writer each).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// The producers' largest datagram (UDP payload), bytes.
    #[arg(long, default_value_t = 1452)]
    pub datagram: usize,
    /// The path: `fast` (authenticate over QUIC, sealed raw UDP), `quic`
    /// (everything over QUIC), `udp` (raw, unsealed: the started daemon
    /// gets insecure_lan), `http` (POST /streams/{stream}/messages on the
    /// admin address: --batch 1 one message per request, more a frames
    /// batch; --in-flight connections per producer, 1 by default: producer
    /// seqs, more: an Idempotency-Key per request), `grpc` (one
    /// PublishStream per producer on the gRPC address, or --daemon's:
    /// --batch messages per batch, --in-flight batches pipelined within
    /// the credit), or `xdp` (root: hands
    /// over to `sluice-bench xdp --part durable`, sluiced on AF_XDP over a
    /// veth pair against its socket path, with --producers, --seconds,
    /// --size, --dir and --json).
    #[arg(long, default_value = "fast", value_parser = ["fast", "quic", "udp", "http", "grpc", "xdp"])]
    pub path: String,
    /// Producers send datagram by datagram, without UDP segmentation
    /// offload (GSO): the comparison for what it gives on the UDP paths.
    #[arg(long)]
    pub no_gso: bool,
    /// No progress line on stderr (it is shown only on a terminal anyway).
    #[arg(long, short)]
    pub quiet: bool,
}

impl IngestArgs {
    /// The run's configuration (not for `--path xdp`).
    pub fn config(&self) -> Result<IngestConfig, String> {
        let length = match self.load.count {
            Some(n) => Length::CountPerProducer(n),
            None => Length::Seconds(self.load.seconds.unwrap_or(5.0)),
        };
        let (default_warmup, default_repeat) = match length {
            Length::Seconds(_) => (1.0, 3),
            Length::CountPerProducer(_) => (0.0, 1),
        };
        let sizes = match &self.sizes {
            Some(s) => sizes::parse_mix(s).map_err(|e| format!("--sizes {s}: {e}"))?,
            None => Vec::new(),
        };
        Ok(IngestConfig {
            producers: self.producers,
            size: self.size,
            sizes,
            seed: self.seed,
            length,
            warmup: self.load.warmup.unwrap_or(default_warmup),
            repeat: self.repeat.unwrap_or(default_repeat),
            rate: self.load.rate,
            fsync: self.sluiced.fsync.clone(),
            batch: self.load.batch(),
            // HTTP: one connection per producer, the fast path's seqs (see
            // crate::publisher).
            in_flight: match self.path.as_str() {
                "http" => self.load.in_flight.unwrap_or(1),
                _ => self.load.in_flight(),
            },
            streams: self.streams,
            datagram: self.datagram,
            gso: !self.no_gso,
            dir: self.out.dir.clone(),
            path: match self.path.as_str() {
                "quic" => PathKind::Quic,
                "udp" => PathKind::Udp,
                "fast" => PathKind::Fast,
                "http" => PathKind::Http,
                "grpc" => PathKind::Grpc,
                other => return Err(format!("--path {other}: not a loopback path")),
            },
            external: self.sluiced.external(),
            sluiced_args: self.sluiced.sluiced_args.clone(),
            baseline_seconds: self.sluiced.baseline_seconds(),
            interval: interval_for(length),
        })
    }
}

/// `sluice-bench ingest`: runs, prints the table, writes the JSON. Exit
/// status 1 when the run failed or a message was not acked, 2 for flags
/// that do not fit together.
pub fn main(a: &IngestArgs) -> ExitCode {
    if a.path == "xdp" {
        return xdp(a);
    }
    let config = match a.config().and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-bench ingest: {e}");
            return ExitCode::from(2);
        }
    };
    let progress = Progress::new("ingest", a.quiet);
    let report = match super::run_with(&config, &progress) {
        Ok(r) => r,
        Err(e) => {
            progress.finish();
            return crate::args::fail("ingest", e);
        }
    };
    super::print(&report);
    if let Err(e) = a.out.save(&report, &report.head, &report.plots) {
        return crate::args::fail("ingest", e);
    }
    super::check(&report)
}

/// `--path xdp`: the AF_XDP path needs network namespaces and a veth pair,
/// which `sluice-bench xdp` makes; its durable part is ingest through
/// sluiced over AF_XDP (closed loop, fsync = always, 256 x 16 in flight),
/// so it runs that with the flags that carry over and refuses the rest.
fn xdp(a: &IngestArgs) -> ExitCode {
    let command = "sluice-bench xdp --part durable";
    if !sluice_testkit::testnet::is_root() {
        eprintln!(
            "sluice-bench ingest --path xdp: needs root (it makes two network namespaces and a \
             veth pair, loads an XDP program and opens AF_XDP sockets); run it with sudo, or run \
             `sudo {command}` directly"
        );
        return ExitCode::from(2);
    }
    let mut refused = Vec::new();
    let mut refuse = |given: bool, flag: &str| {
        if given {
            refused.push(flag.to_owned());
        }
    };
    refuse(a.sizes.is_some(), "--sizes");
    refuse(a.load.count.is_some(), "--count");
    refuse(a.load.warmup.is_some(), "--warmup");
    refuse(a.repeat.is_some_and(|n| n != 1), "--repeat");
    refuse(a.load.rate != 0.0, "--rate");
    refuse(a.sluiced.fsync != "always", "--fsync");
    refuse(a.load.batch.is_some(), "--batch");
    refuse(a.load.in_flight.is_some_and(|n| n != 16), "--in-flight");
    refuse(a.streams != 1, "--streams");
    refuse(a.datagram != 1452, "--datagram");
    refuse(a.sluiced.daemon.is_some(), "--daemon");
    refuse(!a.sluiced.sluiced_args.is_empty(), "--sluiced-arg");
    refuse(a.out.plot.is_some(), "--plot");
    if !refused.is_empty() {
        eprintln!(
            "sluice-bench ingest --path xdp: runs `{command}` (closed loop, fsync = always, one \
             run), which takes --producers, --seconds, --size, --dir and --json only; not {}",
            refused.join(", ")
        );
        return ExitCode::from(2);
    }
    let mut argv: Vec<String> = ["xdp", "--part", "durable"].map(String::from).to_vec();
    argv.extend(["--producers".into(), a.producers.to_string()]);
    argv.extend([
        "--seconds".into(),
        a.load.seconds.unwrap_or(5.0).to_string(),
    ]);
    argv.extend(["--sizes".into(), a.size.to_string()]);
    argv.extend(["--dir".into(), a.out.dir.display().to_string()]);
    if let Some(j) = &a.out.json {
        argv.extend(["--json".into(), j.display().to_string()]);
    }
    eprintln!(
        "sluice-bench ingest --path xdp: running `sluice-bench {}`",
        argv.join(" ")
    );
    // Parsed as the xdp command's own flags, so that its defaults apply.
    #[derive(Parser)]
    struct Xdp {
        #[command(flatten)]
        args: crate::xdp::XdpArgs,
    }
    match Xdp::try_parse_from(&argv) {
        Ok(x) => crate::xdp::main(&x.args),
        Err(e) => {
            eprintln!("sluice-bench ingest --path xdp: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<IngestConfig, String> {
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            args: IngestArgs,
        }
        let argv = std::iter::once("ingest").chain(args.iter().copied());
        let c = Cmd::try_parse_from(argv).map_err(|e| e.to_string())?;
        let config = c.args.config()?;
        config.validate().map(|()| config)
    }

    #[test]
    fn http_takes_one_connection_per_producer_unless_told() {
        let c = config(&["--path", "http"]).unwrap();
        assert_eq!(c.path, PathKind::Http);
        assert_eq!((c.in_flight, c.batch), (1, 256));
        let c = config(&["--path", "http", "--rate", "1000", "--in-flight", "4"]).unwrap();
        assert_eq!((c.in_flight, c.batch), (4, 1));
        // The other paths keep their 16 calls in flight.
        assert_eq!(config(&[]).unwrap().in_flight, 16);
        // 8 x 8 connections are more than sluiced keeps for one client.
        let e = config(&["--path", "http", "--in-flight", "8"]).unwrap_err();
        assert!(e.contains("max_connections_per_source"), "{e}");
        assert!(config(&["--path", "http", "--in-flight", "7"]).is_ok());
    }
}
