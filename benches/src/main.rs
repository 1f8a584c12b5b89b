//! sluice-bench: the load harness. Every figure is printed next to the
//! machine's own limits measured in the same run, as a ratio, because these
//! machines are noisy and absolute numbers travel badly.
//!
//!   sluice-bench baseline [--dir D] [--seconds 2] [--repeat N] [--json FILE] [--plot DIR]
//!   sluice-bench spool [--dir D] [--appenders 1,8,64] [--sizes 128,1024,65536]
//!                      [--batches 1,64] [--latency-at RATES] [--json FILE] [--plot DIR]
//!   sluice-bench ingest [--producers 8] [--size 128 | --sizes 64:50,1024:40,65536:10]
//!                       [--seconds 5 | --count N] [--repeat 3] [--rate MSGS_PER_SEC]
//!                       [--fsync always] [--batch N] [--path fast|quic|udp|xdp]
//!                       [--json FILE] [--plot DIR] [--quiet]
//!   sluice-bench e2e (alias consume) [--producers 4] [--size 128] [--seconds 5]
//!                        [--groups 1,4] [--max-ahead 65536] [--rate 20000]
//!                        [--latency-groups 1] [--max-messages 4096] [--fsync always]
//!                        [--parts ingest,delivery,latency] [--warmup 1] [--repeat N]
//!                        [--daemon ADDR --admin ADDR --server-cert FILE] [--json FILE]
//!                        [--plot DIR]
//!   sluice-bench xdp [--part datapath|durable|all] [--seconds 3] [--sizes 64,1400]
//!                    [--rate 100000] [--producers 4] [--dir D] [--json FILE]   (root)
//!   sluice-bench forward [--producers 4] [--messages 200000] [--size 128] [--nodes 3 |
//!                        --servers URL,..] [--replicas N] [--window 1024] [--json FILE]
//!   sluice-bench plot REPORT.json [--out DIR]
//!   sluice-bench compare A.json B.json [--json FILE]   (or: sluice-bench --compare A B)

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Measure sluice on this machine"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Compare two saved reports: the same as `sluice-bench compare A.json
    /// B.json` (see `sluice-bench compare --help`).
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    compare: Option<Vec<PathBuf>>,
}

#[derive(Subcommand)]
enum Scenario {
    /// The machine's limits, which the other scenarios divide by: raw 1 MiB
    /// write+fdatasync MB/s and 4 KiB fdatasync/s (and its latency) on the
    /// file system of --dir, and UDP loopback datagrams/s of a plain socket
    /// loop.
    Baseline(sluice_bench::baseline_scenario::BaselineArgs),
    /// The spool alone: appends with fsync = always from concurrent
    /// appenders, as throughput and ack latency, against the raw baseline.
    Spool(sluice_bench::spool_scenario::SpoolArgs),
    /// End-to-end durable ingest on loopback: producers in this process, a
    /// `sluiced` in another (started from this binary), acked msgs/s, ack
    /// latency and CPU per message, against a plain UDP loop and raw
    /// fdatasync measured in the same run.
    Ingest(Box<sluice_bench::ingest::IngestArgs>),
    /// End to end with consumer groups, publish -> consumer on loopback
    /// (a started `sluiced` or a running one): durable ingest alone, then delivery
    /// throughput to 1 and 4 consumer groups while producers publish as
    /// fast as the groups keep up (÷ ingest alone), then publish -> delivery
    /// latency at a steady rate next to the durable-ack latency of the same
    /// messages.
    #[command(visible_alias = "consume")]
    E2e(Box<sluice_bench::consume::ConsumeArgs>),
    /// The AF_XDP path against the socket path over a veth pair between two
    /// network namespaces (root): raw packets/s and receiver CPU per packet,
    /// AF_XDP TX against sendmmsg, and durable ingest through `sluiced`.
    Xdp(Box<sluice_bench::xdp::XdpArgs>),
    /// Durable ingest under loss: one row per loss rate (default 0,1,5,10
    /// %), goodput and ack latency ÷ the 0 % row, the repairs the daemon
    /// made, and a check that every message was acked and stored once.
    /// Through the impairment relay on loopback (loss, reordering,
    /// duplication, delay), or with --netns (root) by nftables random drop
    /// on a veth pair between two namespaces it creates.
    Loss(Box<sluice_bench::loss::LossArgs>),
    /// sluice -> NATS JetStream (issue 21): a `sluiced` forwarding one
    /// stream into a JetStream cluster (started here, or running), msgs/s
    /// from the first send until JetStream holds them all, next to the NATS
    /// client alone publishing the same messages to the same cluster (async
    /// publishes, fast-ingest batches) in the same run; and the direct
    /// PubAck latency.
    Forward(Box<sluice_bench::forward::ForwardArgs>),
    /// Draw the pictures of a saved report (its `plots`) again, as SVG:
    /// REPORT-latency.svg and REPORT-throughput.svg.
    Plot(sluice_bench::plot::PlotArgs),
    /// Ratios of two saved reports, figure by figure (B ÷ A), with changes
    /// past ±5 % marked.
    Compare(sluice_bench::compare::CompareArgs),
    /// Runs a `sluiced` (the harness starts its daemon this way):
    /// `sluice-bench daemon -- <sluiced flags>`.
    #[command(hide = true)]
    Daemon {
        /// Stop when stdin reaches EOF (the harness is gone).
        #[arg(long)]
        stop_on_stdin_eof: bool,
        /// `sluiced`'s flags (see `sluiced --help`).
        #[arg(last = true)]
        sluiced: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let scenario = match (cli.scenario, cli.compare) {
        (Some(s), _) => s,
        (None, Some(f)) => {
            let [a, b] = <[PathBuf; 2]>::try_from(f).expect("clap takes two files");
            return sluice_bench::compare::main(&sluice_bench::compare::CompareArgs::files(a, b));
        }
        (None, None) => <Cli as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "name a scenario (e.g. `sluice-bench ingest`), or compare two reports with \
                 `sluice-bench --compare A.json B.json`; see --help",
            )
            .exit(),
    };
    match scenario {
        Scenario::Baseline(a) => sluice_bench::baseline_scenario::main(&a),
        Scenario::Spool(a) => sluice_bench::spool_scenario::main(&a),
        Scenario::Ingest(a) => sluice_bench::ingest::main(&a),
        Scenario::E2e(a) => sluice_bench::consume::main(&a),
        Scenario::Xdp(a) => sluice_bench::xdp::main(&a),
        Scenario::Loss(a) => sluice_bench::loss::main(&a),
        Scenario::Forward(a) => sluice_bench::forward::main(&a),
        Scenario::Plot(a) => sluice_bench::plot::main(&a),
        Scenario::Compare(a) => sluice_bench::compare::main(&a),
        Scenario::Daemon {
            stop_on_stdin_eof,
            sluiced,
        } => sluice_testkit::daemon::serve(stop_on_stdin_eof, sluiced),
    }
}
