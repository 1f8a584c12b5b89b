//! `sluice-bench forward`'s command line.

use std::process::ExitCode;

use super::{ForwardConfig, Storage};

#[derive(clap::Args, Debug, Clone)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub out: crate::args::Output,
    /// Concurrent producers: sluice producers (one session each), and as
    /// many publishing tasks of the NATS client.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Messages in all, per phase (rounded down to a multiple of
    /// --producers).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Message payload size, bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Nodes of the JetStream cluster this run starts (nats-server on
    /// loopback).
    #[arg(long, default_value_t = 3, conflicts_with = "servers")]
    pub nodes: usize,
    /// Use a running JetStream cluster instead: its client URLs
    /// (nats://HOST:PORT,...). The run's streams are deleted at the end.
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Replicas of every stream [default: the started cluster's nodes; 3
    /// with --servers].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Storage of every stream.
    #[arg(long, value_enum, default_value_t = Storage::File)]
    pub storage: Storage,
    /// The NATS client's async publishes: PubAcks outstanding per task.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Direct publishes one at a time (each PubAck awaited), for the
    /// PubAck latency without load.
    /// Also the messages of each ack-latency run (`ack = "replicated"`
    /// and `"local"`, one at a time and --latency-window in flight).
    #[arg(long, default_value_t = 2000)]
    pub latency_messages: u64,
    /// Messages in flight of the second ack-latency runs (and of a direct
    /// publisher next to them); 1: one at a time only.
    #[arg(long, default_value_t = 16)]
    pub latency_window: usize,
    /// The started daemon's fsync policy.
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// An extra flag for the started daemon (repeatable).
    #[arg(long = "sluiced-arg", allow_hyphen_values = true)]
    pub sluiced_args: Vec<String>,
    /// sluice producers: messages per send_batch call.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// sluice producers: calls outstanding per producer.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// sluice producers: the largest datagram (UDP payload), bytes.
    #[arg(long, default_value_t = 1452)]
    pub datagram: usize,
    /// Most seconds a phase may take (forwarding included).
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// With --servers: leave the run's streams in the cluster (else they
    /// are deleted at the end).
    #[arg(long, requires = "servers")]
    pub keep: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl ForwardArgs {
    pub fn config(&self) -> ForwardConfig {
        let replicas = self.replicas.unwrap_or(if self.servers.is_empty() {
            self.nodes
        } else {
            3
        });
        ForwardConfig {
            producers: self.producers,
            messages: self.messages,
            size: self.size,
            nodes: self.nodes,
            servers: self.servers.clone(),
            replicas,
            storage: self.storage,
            window: self.window,
            latency_messages: self.latency_messages,
            latency_window: self.latency_window,
            fsync: self.fsync.clone(),
            sluiced_args: self.sluiced_args.clone(),
            batch: self.batch,
            in_flight: self.in_flight,
            datagram: self.datagram,
            dir: self.out.dir.clone(),
            timeout: self.timeout,
            keep: self.keep,
            quiet: self.quiet,
        }
    }
}

/// `sluice-bench forward`.
pub fn main(a: &ForwardArgs) -> ExitCode {
    let report = match super::run(&a.config()) {
        Ok(r) => r,
        Err(e) => return crate::args::fail("forward", e),
    };
    super::print(&report);
    if let Err(e) = a.out.save(&report, &report.head, &report.plots) {
        return crate::args::fail("forward", e);
    }
    if !report.short.is_empty() {
        eprintln!(
            "sluice-bench forward: not exactly the messages sent in: {}",
            report.short.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
